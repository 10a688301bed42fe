"""Issue 15 D2: model copies whose ``.marisa`` files are crafted (bytes flipped, the
manifest's checksums recomputed) never kill the process that loads and asks them.

Every copy is loaded and asked in a child process, so a signal (a segfault inside
marisa-trie) is seen as a failure here instead of killing the test run.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import marisa_trie
import numpy as np
import pytest

from qac.complete import Completer
from qac.errors import ModelFormatError
from qac.retrieve import Retriever, default_config
from qac.storage import open_model_dir, save_model_dir

COPIES = 30

# Loads each copy and asks it; prints one line per copy ("ok" or "format: ..."), so
# the parent knows which copy was being asked if the child dies.
CHILD = r"""
import sys
import qac.storage
from qac.complete import Completer
from qac.retrieve import Retriever
from qac.errors import ModelFormatError

qac.storage.TRIE_CHILD_TIMEOUT = 3.0
kind = sys.argv[1]
for d in sys.argv[2:]:
    print("start", d, flush=True)
    try:
        if kind == "completer":
            c = Completer.load(d)
            for p in ["", "p", "pl", "pla", "new", "ne", "n", "z", "game c",
                      "plant care tips", "rose of j", "q\u00e9", "\U0001f600"]:
                c.complete(p, previous="game console", k=5)
                c.complete(p, k=50, history=["plant"], session=[("pizza", 1.0)])
            c.mpc.complete("p", k=100)
            c.tables.words.complete("", k=100)
        else:
            r = Retriever.load(d)
            for q in ["shoes", "red", "x", ""]:
                r.search(q, k=20)
            [r.items.restore_key(i) for i in range(len(r.items))]
        print("ok", d, flush=True)
    except ModelFormatError as exc:
        print("format", d, str(exc).replace("\n", " ")[:200], flush=True)
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _craft(src: Path, dst: Path, rng: random.Random, legacy: bool = False) -> None:
    """A copy of ``src`` whose ``.marisa`` files have 1-8 bits flipped each, the
    manifest's sizes and SHA-256s recomputed as save_model_dir writes them (so the
    checksum check passes). ``legacy``: the keys arrays left out, as a directory
    written before they were saved."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    files = manifest["files"]
    tries = sorted(f for f in files if f.endswith(".marisa"))
    assert tries
    if legacy:
        for f in tries:
            keys = f[: -len(".marisa")] + ".keys.npy"
            (dst / keys).unlink()
            del files[keys]
    for f in tries:
        data = bytearray((dst / f).read_bytes())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        (dst / f).write_bytes(bytes(data))
        files[f] = {"bytes": len(data), "sha256": _sha256(dst / f)}
    (dst / "manifest.json").write_text(json.dumps(manifest))


def _ask_copies(kind: str, dirs: list[Path]) -> dict[str, str]:
    """Run CHILD on ``dirs``; fail naming the copy if it dies (a signal) or errs."""
    done = subprocess.run([sys.executable, "-c", CHILD, kind, *map(str, dirs)],
                          capture_output=True, text=True, timeout=600)
    lines = done.stdout.splitlines()
    if done.returncode != 0:
        current = next((ln.split(" ", 1)[1] for ln in reversed(lines)
                        if ln.startswith("start ")), "?")
        how = (f"killed by signal {-done.returncode}" if done.returncode < 0
               else f"exit {done.returncode}")
        pytest.fail(f"{kind} child {how} on {current}:\n{done.stderr[-2000:]}")
    results = {}
    for ln in lines:
        verdict, d, *_ = ln.split(" ", 2)
        if verdict != "start":
            results[d] = verdict
    assert set(results) == set(map(str, dirs))
    return results


@pytest.fixture(scope="module")
def retriever_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "retriever"
    words = ["red", "blue", "shoes", "shirt", "socks", "hat", "green", "boots"]
    pairs = [(f"item{i % 40}", f"{words[i % 8]} {words[(i * 3) % 8]}") for i in range(200)]
    Retriever.train(pairs, config=default_config(threads=1)).save(path)
    return path


def test_thirty_crafted_completer_copies_never_kill_the_process(
        completer_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(15)
    dirs = [tmp_path / f"copy{i}" for i in range(COPIES)]
    for d in dirs:
        _craft(completer_dir, d, rng)
    results = _ask_copies("completer", dirs)
    # the tries are built from their checked keys, so every copy answers
    assert sorted(set(results.values())) == ["ok"]


def test_crafted_retriever_copies_never_kill_the_process(
        retriever_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(16)
    dirs = [tmp_path / f"copy{i}" for i in range(COPIES)]
    for d in dirs:
        _craft(retriever_dir, d, rng)
    assert sorted(set(_ask_copies("retriever", dirs).values())) == ["ok"]


def test_crafted_copies_without_keys_are_read_in_a_child(
        completer_dir: Path, tmp_path: Path) -> None:
    """A directory written before the keys were saved: its keys are read out of the
    ``.marisa`` files by a child, so a crafted one costs a ModelFormatError at most."""
    rng = random.Random(17)
    dirs = [tmp_path / f"copy{i}" for i in range(12)]
    for d in dirs:
        _craft(completer_dir, d, rng, legacy=True)
    results = _ask_copies("completer", dirs)
    assert set(results.values()) <= {"ok", "format"}
    assert "format" in results.values()  # most flips break the file


def test_a_directory_without_keys_still_loads_and_answers_the_same(
        completer_dir: Path, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(completer_dir, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    for f in [f for f in manifest["files"] if f.endswith(".marisa")]:
        keys = f[: -len(".marisa")] + ".keys.npy"
        (legacy / keys).unlink()
        del manifest["files"][keys]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    a, b = Completer.load(completer_dir), Completer.load(legacy)
    for p in ("", "p", "pl", "new", "ro"):
        assert a.complete(p, previous="game console") == b.complete(p, previous="game console")


def _save_trie(path: Path, keys: list[str]) -> Path:
    trie = marisa_trie.Trie(keys)
    counts = np.zeros(len(trie), dtype=np.int64)
    return save_model_dir(path, "test", {}, {"counts": counts}, {"t": trie})


def _rewrite(path: Path, file: str, data: bytes | np.ndarray) -> None:
    """Replace ``file`` and recompute its manifest entry (a crafted copy)."""
    if isinstance(data, np.ndarray):
        np.save(path / file, data, allow_pickle=False)
    else:
        (path / file).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][file].update(bytes=(path / file).stat().st_size,
                                   sha256=_sha256(path / file))
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_trie_round_trips_with_its_ids_and_is_mapped_when_its_bytes_are_the_built_ones(
        tmp_path: Path) -> None:
    keys = ["", "a", "ab", "b", "caf\u00e9", "\U0001f600 x", "zz"]
    trie = marisa_trie.Trie(keys)
    path = _save_trie(tmp_path / "m", keys)
    got = open_model_dir(path).trie("t")
    assert [got.restore_key(i) for i in range(len(got))] == [
        trie.restore_key(i) for i in range(len(trie))]
    maps = Path("/proc/self/maps").read_text()
    assert str(path / "t.marisa") in maps  # shared pages, not a private copy


def test_an_altered_marisa_file_is_replaced_by_the_trie_its_keys_build(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = ["apple", "apricot", "banana"]
    path = _save_trie(tmp_path / "m", keys)
    data = bytearray((path / "t.marisa").read_bytes())
    data[len(data) // 2] ^= 0xFF
    _rewrite(path, "t.marisa", bytes(data))
    got = open_model_dir(path).trie("t")
    assert sorted(got.keys()) == keys
    assert "not the trie its keys build" in caplog.text


@pytest.mark.parametrize(("keys", "says"), [
    (b"a\nb", "not followed by a newline"),
    (b"a\n\xff\n", "not UTF-8 at byte 2"),
    (b"a\na\n", "keys repeat"),
    (b"b\na\nc\n", "not in the trie's key-id order"),
])
def test_a_crafted_keys_array_is_a_model_format_error(tmp_path: Path, keys: bytes,
                                                      says: str) -> None:
    path = _save_trie(tmp_path / "m", ["a", "b", "c"] if says != "keys repeat" else ["a", "b"])
    _rewrite(path, "t.keys.npy", np.frombuffer(keys, dtype=np.uint8))
    with pytest.raises(ModelFormatError, match=says) as info:
        open_model_dir(path).trie("t")
    assert info.value.path == str(path / "t.keys.npy")


def test_a_two_dimensional_keys_array_is_a_model_format_error(tmp_path: Path) -> None:
    path = _save_trie(tmp_path / "m", ["a", "b"])
    _rewrite(path, "t.keys.npy", np.frombuffer(b"a\nb\n", dtype=np.uint8).reshape(2, 2))
    with pytest.raises(ModelFormatError, match="a 1-d uint8 array needed"):
        open_model_dir(path).trie("t")


def test_a_key_with_a_newline_cannot_be_saved(tmp_path: Path) -> None:
    from qac.errors import InputError

    with pytest.raises(InputError, match="holds a newline"):
        _save_trie(tmp_path / "m", ["a\nb"])


def test_a_server_asked_to_reload_twelve_crafted_copies_stays_up(
        completer_dir: Path, tmp_path: Path) -> None:
    """Each crafted copy is loaded (and smoke-queried in a child) before a swap: a copy
    that loads answers, one that does not is refused with a 4xx; either way the server
    keeps answering, and the original model reloads at the end."""
    from starlette.testclient import TestClient

    from qac.server import ServerConfig, create_app

    token = "crafted-reload-token"
    rng = random.Random(12)
    cfg = ServerConfig(model_dir=str(completer_dir), admin_token=token)
    with TestClient(create_app(cfg)) as client:
        auth = {"Authorization": f"Bearer {token}"}
        for i in range(12):
            copy = tmp_path / f"copy{i}"
            _craft(completer_dir, copy, rng)
            r = client.post("/v1/admin/reload", json={"model_dir": str(copy)}, headers=auth)
            assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
            got = client.get("/v1/complete", params={"q": "pl"})
            assert got.status_code == 200 and got.json()["completions"], got.text
        r = client.post("/v1/admin/reload", json={"model_dir": str(completer_dir)},
                        headers=auth)
        assert r.status_code == 200, r.text
        assert client.get("/v1/complete", params={"q": "pl"}).json()["completions"]

import json
import os
from pathlib import Path

import marisa_trie
import numpy as np
import pytest

from qac.errors import ModelFormatError
from qac.storage import FORMAT_VERSION, MANIFEST, open_model_dir, save_model_dir


def _save(path: Path, value: int = 1) -> None:
    save_model_dir(
        path, "test", {"value": value},
        {"a": np.arange(10, dtype=np.int32) * value, "b.c": np.ones(3, dtype=np.float32)},
        {"labels": marisa_trie.Trie(["x", "y"])},
    )


def test_round_trip_memory_maps_arrays(tmp_path: Path) -> None:
    _save(tmp_path / "m")
    md = open_model_dir(tmp_path / "m", kind="test")
    assert md.config == {"value": 1}
    a = md.array("a")
    assert isinstance(a, np.memmap)
    assert a.tolist() == list(range(10))
    assert md.arrays("b.") == {"c": pytest.approx(np.ones(3))}
    assert set(md.trie("labels").keys()) == {"x", "y"}


def test_wrong_kind_is_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "m")
    with pytest.raises(ModelFormatError, match="expected 'retriever'"):
        open_model_dir(tmp_path / "m", kind="retriever")


@pytest.mark.parametrize("damage", ["missing", "truncated", "altered"])
def test_damaged_file_is_named(tmp_path: Path, damage: str) -> None:
    _save(tmp_path / "m")
    f = tmp_path / "m" / "a.npy"
    if damage == "missing":
        f.unlink()
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[:-4])
    else:
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError) as info:
        open_model_dir(tmp_path / "m")
    assert info.value.path == str(f)
    assert "a.npy" in str(info.value)


@pytest.mark.parametrize("content", [None, "{not json", '{"format": "other"}',
                                     '{"format": "qac-model", "format_version": 99}'])
def test_bad_manifest_is_named(tmp_path: Path, content: str | None) -> None:
    _save(tmp_path / "m")
    m = tmp_path / "m" / MANIFEST
    if content is None:
        m.unlink()
    else:
        m.write_text(content)
    with pytest.raises(ModelFormatError) as info:
        open_model_dir(tmp_path / "m")
    assert info.value.path == str(m)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="not found"):
        open_model_dir(tmp_path / "nope")


def test_interrupted_save_keeps_the_old_model(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path / "m", value=1)

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", boom)  # dies after the arrays, before the manifest
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "m", value=2)
    monkeypatch.undo()
    md = open_model_dir(tmp_path / "m")
    assert md.config == {"value": 1}
    assert md.array("a").tolist() == list(range(10))
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary left behind


def test_save_replaces_an_existing_model(tmp_path: Path) -> None:
    _save(tmp_path / "m", value=1)
    _save(tmp_path / "m", value=3)
    md = open_model_dir(tmp_path / "m")
    assert md.config == {"value": 3}
    assert md.array("a")[1] == 3


@pytest.mark.parametrize(("version", "says"), [
    (1, "built by an older qac: retrain it"),
    (4, "built by an older qac: retrain it"),
    (6, "built by a newer qac"),
    ("5", "not a version this qac knows"),
])
def test_another_format_version_says_what_to_do(tmp_path: Path, version: object,
                                                says: str) -> None:
    _save(tmp_path / "m")
    m = tmp_path / "m" / MANIFEST
    manifest = json.loads(m.read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 5
    m.write_text(json.dumps({**manifest, "format_version": version}))
    with pytest.raises(ModelFormatError, match=says) as info:
        open_model_dir(tmp_path / "m")
    assert info.value.path == str(m)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep", "null-entry", "traversal", "huge"])
def test_a_hostile_manifest_is_a_clean_model_format_error(tmp_path: Path, kind: str) -> None:
    """Issue 15 D7: the manifest is read only from a regular file of bounded size, and
    every entry is checked: no hang, no unbounded read, no RecursionError or
    AttributeError."""
    import time

    from qac.storage import MAX_MANIFEST_BYTES

    m = tmp_path / kind
    m.mkdir()
    path = m / "manifest.json"
    head = {"format": "qac-model", "format_version": FORMAT_VERSION, "kind": "completer",
            "config": {}}
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "deep":
        path.write_text("[" * 200_000)
    elif kind == "null-entry":
        path.write_text(json.dumps({**head, "files": {"a.npy": None}}))
    elif kind == "traversal":
        path.write_text(json.dumps({**head, "files": {"../x.npy": {"bytes": 1, "sha256": "0"}}}))
    else:
        with open(path, "wb") as f:
            f.truncate(MAX_MANIFEST_BYTES + 1)
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match="manifest.json"):
        open_model_dir(m)
    assert time.monotonic() - t0 < 10

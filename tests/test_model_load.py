"""Issue 15 D6: every config value and array of a model directory is checked at load
with the validators training uses; a bad one is a ModelFormatError naming the file
and the field, never an error on every later keystroke."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qac.complete import Completer, CompleterConfig
from qac.errors import ModelFormatError
from qac.retrieve import Retriever, default_config


@pytest.fixture(scope="module")
def retriever_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "retriever"
    pairs = [(f"item{i % 9}", f"word{i % 7} thing{i % 5}") for i in range(60)]
    Retriever.train(pairs, config=default_config(threads=1)).save(path)
    return path


def _copy(src: Path, dst: Path, config: Callable[[dict[str, Any]], None] | None = None,
          array: tuple[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> Path:
    """A copy of ``src`` with its config edited and/or one array replaced, the manifest's
    sizes and checksums recomputed (so only the value checks can catch it)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    if config is not None:
        config(manifest["config"])
    if array is not None:
        name, change = array
        file = f"{name}.npy"
        np.save(dst / file, change(np.load(dst / file)), allow_pickle=False)
        data = (dst / file).read_bytes()
        manifest["files"][file].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        obj = config
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit


CONFIG_CASES = [
    # (where in config, value, what the message names)
    (("completer", "beam"), 1e9, "CompleterConfig.beam"),
    (("completer", "beam"), 10**9, "CompleterConfig.beam"),
    (("completer", "sources", "mpc"), 10**9, "SourcesConfig"),   # candidates per source
    (("completer", "sources", "model"), "x", "SourcesConfig.model"),
    (("completer", "popularity"), "x", "unknown keys ['popularity']"),
    (("completer", "prefix_weight"), "x", "CompleterConfig.prefix_weight"),
    (("completer", "generators"), ["x"], "generators"),
    (("completer", "sources"), None, "sources must be a mapping"),
    (("engine", "beam"), 1e9, "EngineConfig.beam"),
    (("engine", "beam"), 10**12, "EngineConfig.beam"),
    (("engine", "beam"), 1.5, "EngineConfig.beam"),
    (("engine", "threads"), 10**9, "EngineConfig.threads"),
    (("engine", "branching"), 3, "EngineConfig.branching"),
    (("engine", "popularity"), "x", "unknown keys ['popularity']"),
    (("engine", "blocks"), "x", "blocks must be a list"),
    (("engine", "train", "Cp"), "x", "TrainConfig.Cp"),
]


@pytest.mark.parametrize(("path", "value", "names"), CONFIG_CASES)
def test_a_bad_config_value_is_a_model_format_error_naming_manifest_and_field(
        completer_dir: Path, tmp_path: Path, path: tuple[str, ...], value: Any,
        names: str) -> None:
    bad = _copy(completer_dir, tmp_path / "m", config=_set(*path, value=value))
    with pytest.raises(ModelFormatError) as info:
        Completer.load(bad)
    msg = str(info.value)
    assert f"manifest.json: config.{path[0]}" in msg and names in msg, msg
    assert info.value.path == str(bad / "manifest.json")


@pytest.mark.parametrize(("path", "value", "names"),
                         [c for c in CONFIG_CASES if c[0][0] == "engine"])
def test_a_bad_engine_config_fails_a_retriever_at_load(
        retriever_dir: Path, tmp_path: Path, path: tuple[str, ...], value: Any,
        names: str) -> None:
    bad = _copy(retriever_dir, tmp_path / "m", config=_set(*path, value=value))
    with pytest.raises(ModelFormatError, match=f"manifest.json: config.engine: .*{names[:12]}"):
        Retriever.load(bad)


def _int_at(i: int, value: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[i] = value
        return a
    return change


ARRAY_CASES = [
    ("labels.popularity", lambda a: a.reshape(1, -1), "labels.popularity.npy"),
    ("labels.popularity", lambda a: a.astype(np.float64), "labels.popularity.npy"),
    ("labels.counts", _int_at(0, -5), "labels.counts.npy"),
    ("labels.popcum", _int_at(-1, 10**15), "labels.popcum.npy"),
    ("labels.offsets", _int_at(1, 10**9), "labels.offsets.npy"),
    ("labels.text", lambda a: a[:-3], "labels.offsets.npy"),
    ("labels.text", lambda a: np.where(a == ord("\n"), ord("x"), a).astype(np.uint8),
     "labels.text.npy"),
    ("labels.child_table", lambda a: a[:-1], "labels.child_table.npy"),
    ("labels.child_table", _int_at(-1, 1), "completer data inconsistent"),  # a bad link
    ("mpc.counts", _int_at(0, -1), "mpc.counts.npy"),
    ("mpc.heavy_top", lambda a: a.reshape(-1), "mpc.heavy_top.npy"),
    ("tables.words.counts", _int_at(0, -1), "tables.words.counts.npy"),
    ("tables.suffixes.heavy_top", lambda a: a + 10**6, "tables.suffixes.heavy_top.npy"),
    ("ranker.feature", lambda a: a.astype(np.float64), "ranker: feature must hold integers"),
    ("ranker.left", _int_at(0, 10**6), "Forest.left"),
    ("ranker.roots", _int_at(0, -(10**6)), "Forest.roots"),
    ("ranker.threshold", lambda a: a * np.nan, "Forest.threshold"),
    ("ranker.leaf", lambda a: a * np.inf, "Forest.threshold/leaf"),
]


@pytest.mark.parametrize(("name", "change", "names"), ARRAY_CASES)
def test_a_bad_array_is_a_model_format_error_naming_it(
        completer_dir: Path, tmp_path: Path, name: str,
        change: Callable[[np.ndarray], np.ndarray], names: str) -> None:
    bad = _copy(completer_dir, tmp_path / "m", array=(name, change))
    with pytest.raises(ModelFormatError) as info:
        Completer.load(bad)
    assert names in str(info.value), str(info.value)


def test_a_bad_ranker_column_is_refused_before_any_allocation(
        completer_dir: Path, tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        feats = config["ranker"]["features"]
        feats[next(iter(feats))] = 10**12

    bad = _copy(completer_dir, tmp_path / "m", config=edit)
    with pytest.raises(ModelFormatError, match="ranker: bad column 1000000000000"):
        Completer.load(bad)


def test_an_untouched_copy_loads_and_answers(completer_dir: Path, tmp_path: Path) -> None:
    same = _copy(completer_dir, tmp_path / "m", config=lambda c: None)
    assert Completer.load(same).complete("pl", previous="game console")


# -- what tests/fuzz/fuzz_loader.py found (each also kept in tests/fuzz/corpus/loader) --

def _replace_file(path: Path, file: str, data: bytes) -> None:
    (path / file).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][file].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("data", [
    b"",                                                   # EOFError from numpy
    b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8', (\n",      # tokenize.TokenError
    b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8' +}\n",      # SyntaxError
    b"\x93NUMPY\x09\x00",                                  # unknown version
])
def test_a_mangled_npy_file_is_a_model_format_error(completer_dir: Path, tmp_path: Path,
                                                    data: bytes) -> None:
    bad = _copy(completer_dir, tmp_path / "m")
    _replace_file(bad, "labels.counts.npy", data)
    with pytest.raises(ModelFormatError, match="labels.counts.npy: not a valid .npy"):
        Completer.load(bad)


def test_a_retriever_whose_items_and_labels_differ_in_number(retriever_dir: Path,
                                                             tmp_path: Path) -> None:
    bad = _copy(retriever_dir, tmp_path / "m", array=("items.keys", lambda a: a[:0]))
    with pytest.raises(ModelFormatError, match="items.keys.npy: 0 items, the engine has"):
        Retriever.load(bad)


@pytest.mark.parametrize("name", ["mpc.counts", "tables.words.counts",
                                  "tables.suffixes.counts"])
def test_counts_of_another_dtype_are_refused(completer_dir: Path, tmp_path: Path,
                                             name: str) -> None:
    """uint8 counts used to load, and then every keystroke failed (negated counts
    wrapped around)."""
    bad = _copy(completer_dir, tmp_path / "m", array=(name, lambda a: a.astype(np.uint8)))
    with pytest.raises(ModelFormatError, match=f"{name}.npy: 1-D int64"):
        Completer.load(bad)


def test_label_text_that_is_not_utf8_is_refused(completer_dir: Path, tmp_path: Path) -> None:
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[0] = 0xFF
        return a

    bad = _copy(completer_dir, tmp_path / "m", array=("labels.text", change))
    with pytest.raises(ModelFormatError, match="labels.text.npy: not UTF-8 at byte 0"):
        Completer.load(bad)


def test_a_directory_swapped_mid_load_is_refused_then_loads(
        completer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that swaps a new model in while a load runs: the load is refused (it may
    have read files of both), and the next load gets the new model whole."""
    from sessionlog import weeks_log

    live = tmp_path / "live"
    shutil.copytree(completer_dir, live)
    other = Completer.train(weeks_log(1).events, CompleterConfig(trie_depth=1, fit_days=0))
    real = Completer.__init__

    def swapping(self: Completer, *args: Any, **kwargs: Any) -> None:
        other.save(live)  # what `qac train --out live` does meanwhile, after every read
        real(self, *args, **kwargs)

    monkeypatch.setattr(Completer, "__init__", swapping)
    with pytest.raises(ModelFormatError, match="replaced while it was being loaded"):
        Completer.load(live, verify=False)
    monkeypatch.undo()
    assert Completer.load(live).complete("p") == other.complete("p")

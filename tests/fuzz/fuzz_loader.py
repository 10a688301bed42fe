"""Fuzz target: the model loader (qac.storage, Completer.load, Retriever.load) on
mutated copies of a tiny trained model, every mutated file's size and SHA-256
recomputed in the manifest so only the loader's own checks stand in the way.

A mutation is one or more of: a config value replaced (by a number, a huge or
negative int, a string, null, a list, a dict) or a key deleted; an array rewritten
with another dtype or shape or its values changed; bytes of any file flipped or cut
(the ``.npy`` headers, the tries, their keys). Loading must succeed or raise
ModelFormatError; a model that loads must then answer without any error.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import Input, fuzz_main, import_qac, model_cache, small_models

m: dict[str, Any] = {}


def setup() -> None:
    def load() -> dict[str, Any]:
        import numpy as np

        from qac.complete import Completer
        from qac.errors import ModelFormatError
        from qac.retrieve import Retriever
        return {"np": np, "Completer": Completer, "Retriever": Retriever,
                "ModelFormatError": ModelFormatError}

    m.update(import_qac(load))
    m["dirs"] = small_models(model_cache())
    m["manifests"] = {k: json.loads((d / "manifest.json").read_text())
                      for k, d in m["dirs"].items()}
    m["work"] = Path(tempfile.mkdtemp(prefix="qac-fuzz-loader-"))
    atexit.register(shutil.rmtree, m["work"], True)


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _leaves(v, (*path, i))
    return out


def _value(inp: Input) -> Any:
    return inp.choice([0, -1, 1, 2, 1.5, 1e9, 10**9, 10**18, -(10**18), float("nan"), "x", "",
                       None, True, [], {}, [1, 2], {"a": 1}, inp.int(-1000, 1000),
                       inp.text(16)])


def _mutate_array(inp: Input, path: Path) -> None:
    np = m["np"]
    try:
        a = np.load(path)
    except Exception:  # already mangled by an earlier mutation of this input
        _flip(inp, path)
        return
    how = inp.byte() % 6
    if how == 0 and a.size:
        flat = a.reshape(-1).copy()
        for _ in range(1 + inp.byte() % 4):
            i = inp.int(0, flat.size - 1)
            if flat.dtype.kind in "iu":
                info = np.iinfo(flat.dtype)
                value = inp.choice([info.min, info.max, -1, 0, 1, flat.size, flat.size + 1,
                                    inp.int(-100, 100)])
                flat[i] = max(int(info.min), min(int(info.max), int(value)))
            elif flat.dtype.kind == "f":
                flat[i] = inp.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, inp.float()])
            elif flat.dtype.kind == "U":
                flat[i] = inp.text(8)
        a = flat.reshape(a.shape)
    elif how == 1:
        a = a.reshape(-1)[: inp.int(0, max(0, a.size))]
    elif how == 2:
        a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(-1)
    elif how == 3 and a.dtype.kind != "U":
        a = a.astype(inp.choice([np.int32, np.int64, np.float32, np.float64, np.uint8,
                                 np.int16]))
    elif how == 4:
        a = np.concatenate([a.reshape(-1), a.reshape(-1)[: inp.int(0, 3)]])
    else:
        _flip(inp, path)
        return
    np.save(path, a, allow_pickle=False)


def _flip(inp: Input, path: Path) -> None:
    data = bytearray(path.read_bytes())
    if not data:
        return
    if inp.byte() % 4 == 0:
        del data[inp.int(0, len(data) - 1):]
    else:
        for _ in range(1 + inp.byte() % 8):
            data[inp.int(0, len(data) - 1)] ^= 1 << (inp.byte() % 8)
    path.write_bytes(bytes(data))


def one_input(data: bytes) -> None:
    if not m:
        setup()
    inp = Input(data)
    kind = "completer" if inp.byte() % 4 else "retriever"
    src: Path = m["dirs"][kind]
    manifest = json.loads(json.dumps(m["manifests"][kind]))
    dst: Path = m["work"] / "m"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    for f in manifest["files"]:
        os.symlink(src / f, dst / f)
    files = sorted(manifest["files"])
    changed: set[str] = set()
    for _ in range(1 + inp.byte() % 3):
        op = inp.byte() % 4
        if op == 0:
            leaves = _leaves(manifest["config"])
            if not leaves:
                continue
            path = inp.choice(leaves)
            obj = manifest["config"]
            for key in path[:-1]:
                obj = obj[key]
            if inp.byte() % 5 == 0 and isinstance(obj, dict):
                del obj[path[-1]]
            else:
                obj[path[-1]] = _value(inp)
        else:
            f = inp.choice(files)
            target = dst / f
            if target.is_symlink():
                target.unlink()
                shutil.copyfile(src / f, target)
            if op == 1 and f.endswith(".npy"):
                _mutate_array(inp, target)
            else:
                _flip(inp, target)
            changed.add(f)
    for f in changed:
        body = (dst / f).read_bytes()
        manifest["files"][f].update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    (dst / "manifest.json").write_text(json.dumps(manifest))
    try:
        model = (m["Completer"] if kind == "completer" else m["Retriever"]).load(dst)
    except m["ModelFormatError"]:
        return
    if kind == "completer":
        for p in ("", "p", "pl", "new y", "zz", "plant care tips"):
            model.complete(p, previous="game console", k=5, history=["plant"],
                           session=[("pizza", 1.0)])
    else:
        for q in ("red", "shoes hat", "zz"):
            model.search(q, k=5)


if __name__ == "__main__":
    fuzz_main(setup, one_input)
    sys.exit(0)

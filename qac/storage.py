"""Model directories: a manifest, memory-mapped .npy arrays and marisa-trie files.

Layout of a model directory::

    manifest.json      format name and version, kind, config, and for every other
                       file its size and SHA-256
    <name>.npy         numpy arrays, loaded with ``mmap_mode="r"`` so worker
                       processes share one copy of the pages
    <name>.marisa      marisa-trie files (label strings), memory-mapped

Saving builds the whole directory beside the target (``<dir>.tmp-<pid>``) and then
swaps it in with two renames, so an interrupted save never damages the model that
was there. Loading checks the format version, each file's size and checksum, and
raises :class:`ModelFormatError` naming the first bad file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import marisa_trie
import numpy as np

from qac.errors import ModelFormatError

FORMAT = "qac-model"
#: 2: packed weights (int32 relative row ends, local child ids, float16 values), the
#: featurizer's vocabulary directory and the tree's label-id spans saved as arrays;
#: the completer's one answer path (labels with offsets and popularity sums, the pool
#: ranker's forest, the blocklist in the manifest)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    """A loaded model directory: its manifest plus lazily opened files."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest["config"])

    def names(self, prefix: str) -> list[str]:
        """Names of the arrays whose name starts with ``prefix`` (without ``.npy``)."""
        return sorted(
            name[: -len(".npy")]
            for name in self.manifest["files"]
            if name.startswith(prefix) and name.endswith(".npy")
        )

    def array(self, name: str) -> np.ndarray:
        """Memory-map ``<name>.npy`` read-only."""
        file = f"{name}.npy"
        if file not in self.manifest["files"]:
            raise ModelFormatError(f"{self.path / file}: not listed in the manifest", str(file))
        try:
            arr = np.load(self.path / file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"{self.path / file}: not a valid .npy file ({exc})",
                                   str(self.path / file)) from exc
        return arr

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """All arrays under ``prefix``, keyed by the rest of their name."""
        return {name[len(prefix):]: self.array(name) for name in self.names(prefix)}

    def trie(self, name: str) -> marisa_trie.Trie:
        """Memory-map ``<name>.marisa``."""
        path = self.path / f"{name}.marisa"
        trie = marisa_trie.Trie()
        try:
            trie.mmap(str(path))
        except Exception as exc:  # marisa raises plain Exception subclasses
            raise ModelFormatError(f"{path}: not a valid marisa-trie file ({exc})",
                                   str(path)) from exc
        return trie


def save_model_dir(
    path: str | os.PathLike[str],
    kind: str,
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    tries: Mapping[str, marisa_trie.Trie] | None = None,
) -> Path:
    """Write a model directory atomically (see the module docstring)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, arr in arrays.items():
            file = f"{name}.npy"
            a = np.ascontiguousarray(arr)
            np.save(tmp / file, a, allow_pickle=False)
            files[file] = {"dtype": a.dtype.str, "shape": list(a.shape)}
        for name, trie in (tries or {}).items():
            file = f"{name}.marisa"
            trie.save(str(tmp / file))
            files[file] = {}
        for file, meta in files.items():
            meta["bytes"] = (tmp / file).stat().st_size
            meta["sha256"] = _sha256(tmp / file)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": dict(config),
            "files": files,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


#: the largest manifest a model directory may have (a real one is a few KiB)
MAX_MANIFEST_BYTES = 16 << 20


def _read_manifest(path: Path) -> str:
    """The manifest's text, read only from a regular file of bounded size: a FIFO, a
    device (a link to /dev/zero) or a huge file is refused without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file (mode {stat.filemode(st.st_mode)})")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise OSError(f"{st.st_size} bytes, more than a manifest's {MAX_MANIFEST_BYTES}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise OSError(f"more than a manifest's {MAX_MANIFEST_BYTES} bytes")
    return data.decode("utf-8")


def open_model_dir(
    path: str | os.PathLike[str], kind: str | None = None, verify: bool = True
) -> ModelDir:
    """Open and check a model directory.

    ``verify`` checks every file's SHA-256 (reads each file once; turn it off only
    for directories you just checked, e.g. in forked workers).
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelFormatError(f"{root}: model directory not found", str(root))
    mpath = root / MANIFEST
    try:
        manifest = json.loads(_read_manifest(mpath))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{mpath}: missing", str(mpath)) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{mpath}: unreadable ({exc})", str(mpath)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{mpath}: not a qac model manifest", str(mpath))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        if not isinstance(version, int) or isinstance(version, bool):
            why = "not a version this qac knows"
        elif version < FORMAT_VERSION:
            why = "it was built by an older qac: retrain it with this version"
        else:
            why = "it was built by a newer qac: upgrade qac to read it"
        raise ModelFormatError(
            f"{mpath}: model format version {version!r}, this qac reads {FORMAT_VERSION}: "
            f"{why}",
            str(mpath),
        )
    if kind is not None and manifest.get("kind") != kind:
        raise ModelFormatError(
            f"{mpath}: a {manifest.get('kind')!r} model, expected {kind!r}", str(mpath)
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("config"), dict):
        raise ModelFormatError(f"{mpath}: malformed manifest", str(mpath))
    for file, meta in files.items():
        if (not isinstance(file, str) or Path(file).name != file or file in (".", "..")
                or file == MANIFEST or not isinstance(meta, dict)
                or not isinstance(meta.get("bytes"), int)
                or not isinstance(meta.get("sha256"), str)):
            raise ModelFormatError(f"{mpath}: malformed entry for {file!r} in files",
                                   str(mpath))
        fpath = root / file
        if not fpath.is_file():
            raise ModelFormatError(f"{fpath}: missing", str(fpath))
        size = fpath.stat().st_size
        if size != meta.get("bytes"):
            raise ModelFormatError(
                f"{fpath}: {size} bytes, the manifest says {meta.get('bytes')} (truncated?)",
                str(fpath),
            )
        if verify and _sha256(fpath) != meta.get("sha256"):
            raise ModelFormatError(f"{fpath}: checksum mismatch (altered or corrupt)", str(fpath))
    return ModelDir(root, manifest)

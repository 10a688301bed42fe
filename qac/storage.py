"""Model directories: a manifest, memory-mapped .npy arrays and marisa-trie files.

Layout of a model directory::

    manifest.json      format name and version, kind, config, and for every other
                       file its size and SHA-256
    <name>.npy         numpy arrays, loaded with ``mmap_mode="r"`` so worker
                       processes share one copy of the pages
    <name>.marisa      marisa-trie files (label strings)
    <name>.keys.npy    the same trie's keys, uint8: each key's UTF-8 followed by
                       "\n", in key-id order

A trie is never read from its ``.marisa`` bytes alone: marisa-trie trusts them, and a
crafted file (checksums recomputed) can crash the process on load or on a later
lookup. :meth:`ModelDir.trie` checks the keys (UTF-8, distinct), builds the trie from
them, checks that every key has the id the model's arrays index it by, and then
maps the ``.marisa`` file only if its bytes are exactly the built trie's (so forked
workers share its pages); otherwise the built trie is used. A directory written
before the keys were saved has its keys read out of the ``.marisa`` file by a child
process, so a crafted file kills the child, not the caller.

Saving builds the whole directory beside the target (``<dir>.tmp-<pid>``) and then
swaps it in with two renames, so an interrupted save never damages the model that
was there. Loading checks the format version, each file's size and checksum, and
raises :class:`ModelFormatError` naming the first bad file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import marisa_trie
import numpy as np

from qac.errors import InputError, ModelFormatError

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "qac-model"
#: 2: packed weights (int32 relative row ends, local child ids, float16 values), the
#: featurizer's vocabulary directory and the tree's label-id spans saved as arrays;
#: the completer's one answer path (labels with offsets and popularity sums, the pool
#: ranker's forest, the blocklist in the manifest); 3: the completer's word-start
#: index saved with its labels; 4: the retriever's known variants; 5: the completer's
#: child table (the typo search's trie) saved with its labels
FORMAT_VERSION = 5
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
    """A loaded model directory: its manifest plus lazily opened files.

    ``ident``: the directory's identity when it was opened (see :meth:`check_same`).
    """

    path: Path
    manifest: dict[str, Any]
    ident: tuple[int, int, str] | None = None

    def check_same(self) -> None:
        """Raise ModelFormatError if the directory was replaced since it was opened.

        A save swaps a whole new directory in (two renames); a load that straddles
        one has read some files of each model, which may fit together well enough to
        pass every other check. Loaders call this last: a load either read one whole
        model or is refused (and can simply be retried). The identity is the
        directory's device and inode and the manifest's SHA-256 (an inode number can
        be reused by a later save; its manifest differs).
        """
        if self.ident is None:
            return
        try:
            now = _identity(self.path)
        except OSError:
            now = None
        if now != self.ident:
            raise ModelFormatError(f"{self.path}: replaced while it was being loaded (a "
                                   "save swapped a new model in); load it again",
                                   str(self.path))

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest["config"])

    def parse_config(self, key: str, parse: Callable[[Any], T]) -> T:
        """``parse(config[key])``, where ``parse`` is the validator training uses (a
        config class's ``from_dict``): a missing key or a value it refuses is a
        :class:`ModelFormatError` naming the manifest and the key."""
        mpath = self.path / MANIFEST
        try:
            return parse(self.manifest["config"][key])
        except KeyError as exc:
            raise ModelFormatError(f"{mpath}: config.{key}: missing {exc}", str(mpath)) from None
        except (InputError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise ModelFormatError(f"{mpath}: config.{key}: {exc}", str(mpath)) from None

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
        # numpy's header parser raises what it meets: EOFError for a cut file,
        # SyntaxError or tokenize.TokenError for a mangled header (all found by
        # tests/fuzz/fuzz_loader.py); any of them means the file is not a valid .npy
        except Exception as exc:
            raise ModelFormatError(f"{self.path / file}: not a valid .npy file ({exc})",
                                   str(self.path / file)) from exc
        return arr

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """All arrays under ``prefix``, keyed by the rest of their name."""
        return {name[len(prefix):]: self.array(name) for name in self.names(prefix)}

    def trie(self, name: str) -> marisa_trie.Trie:
        """The trie ``<name>``, built from its checked keys (see the module docstring):
        a key's id is its position in ``<name>.keys.npy``."""
        files = self.manifest["files"]
        path = self.path / f"{name}.marisa"
        if f"{name}{_KEYS}.npy" in files:
            where = self.path / f"{name}{_KEYS}.npy"
            keys = _decode_keys(self.array(f"{name}{_KEYS}"), where)
        elif f"{name}.marisa" in files:
            where = path
            keys = _keys_in_child(path)
        else:
            raise ModelFormatError(f"{path}: not listed in the manifest", str(path))
        trie = _build_trie(keys, where)
        if f"{name}.marisa" in files:
            trie = _mapped_if_same(trie, path)
        del keys
        give_back_heap()
        return trie


#: a trie's keys are saved as the array ``<name>.keys``
_KEYS = ".keys"
#: seconds a child may take to read the keys out of a ``.marisa`` file: this much,
#: plus TRIE_CHILD_SECONDS_PER_MIB per MiB of the file (a crafted file can make
#: marisa-trie loop; a real one of 1.3 MiB, 140,000 keys, takes 0.2 s)
TRIE_CHILD_TIMEOUT = 10.0
TRIE_CHILD_SECONDS_PER_MIB = 4.0
# The child of _keys_in_child: the number of keys, then every key in key-id order,
# each followed by "\n"; it gives up past a byte budget (a crafted file may claim
# more keys, or longer ones, than it holds).
_DUMP_KEYS = """\
import sys
import marisa_trie
t = marisa_trie.Trie()
t.mmap(sys.argv[1])
budget = int(sys.argv[2])
out = sys.stdout.buffer
out.write(b"%d\\n" % len(t))
for i in range(len(t)):
    key = t.restore_key(i).encode("utf-8")
    budget -= len(key) + 1
    if budget < 0:
        sys.exit("more key bytes than the file can hold")
    out.write(key + b"\\n")
"""


def _decode_keys(arr: np.ndarray, where: Path) -> list[str]:
    """The keys of ``<name>.keys.npy``: strict UTF-8, each key followed by a newline."""
    if arr.ndim != 1 or arr.dtype != np.uint8:
        raise ModelFormatError(f"{where}: a 1-d uint8 array needed, got {arr.dtype} "
                               f"{arr.shape}", str(where))
    raw = arr.tobytes()
    if raw and not raw.endswith(b"\n"):
        raise ModelFormatError(f"{where}: the last key is not followed by a newline",
                               str(where))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{where}: not UTF-8 at byte {exc.start}", str(where)) from None
    return text.split("\n")[:-1] if text else []


def _keys_in_child(path: Path) -> list[str]:
    """The keys of a ``.marisa`` file in key-id order, read by a child process: the
    file is not trusted, and a crash or hang there costs only the child."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFormatError(f"{path}: unreadable ({exc})", str(path)) from exc
    # a key costs the trie at least one bit; allow generously more for its text
    budget = 64 * size + (1 << 20)
    timeout = TRIE_CHILD_TIMEOUT + TRIE_CHILD_SECONDS_PER_MIB * size / (1 << 20)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run([sys.executable, "-c", _DUMP_KEYS, str(path), str(budget)],
                              capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ModelFormatError(f"{path}: reading its keys took more than {timeout:.0f} s "
                               "(corrupt trie?)", str(path)) from None
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        why = (f"killed by signal {-done.returncode}" if done.returncode < 0 else
               last[0][:200] if last else f"exit status {done.returncode}")
        raise ModelFormatError(f"{path}: not a valid marisa-trie file ({why})", str(path))
    head, _, body = done.stdout.partition(b"\n")
    try:
        n = int(head)
        text = body.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise ModelFormatError(f"{path}: not a valid marisa-trie file", str(path)) from None
    keys = text.split("\n")[:-1] if text else []
    if len(keys) != n:
        raise ModelFormatError(f"{path}: its keys hold newlines or are cut short", str(path))
    return keys


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def give_back_heap() -> None:
    """Hand the heap freed while a model was loaded back to the OS (glibc's
    ``malloc_trim``): a trie's keys as Python strings and marisa's build buffers, many
    times the mapped trie (left in the heap, about 15 MiB stayed private to every
    worker on the AOL completer); the copy of the child table the answerer builds to
    check the saved one (2.1 MiB there). A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _build_trie(keys: list[str], where: Path) -> marisa_trie.Trie:
    """The trie of ``keys``, refused unless key ``keys[i]`` gets the id i (the model's
    arrays are indexed by those ids)."""
    if len(set(keys)) != len(keys):
        raise ModelFormatError(f"{where}: keys repeat", str(where))
    trie = marisa_trie.Trie(keys)
    for key, i in trie.iteritems():
        if keys[i] != key:
            raise ModelFormatError(f"{where}: keys are not in the trie's key-id order "
                                   f"(key {i})", str(where))
    return trie


def _mapped_if_same(trie: marisa_trie.Trie, path: Path) -> marisa_trie.Trie:
    """``path`` memory-mapped if its bytes are exactly ``trie``'s (so processes share
    the pages), else ``trie`` itself. The file is compared and mapped through one open
    descriptor, so a file swapped in between is never mapped."""
    built = trie.tobytes()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        log.warning("%s: unreadable (%s); using the trie built from its keys", path, exc)
        return trie
    try:
        st = os.fstat(fd)
        same = stat.S_ISREG(st.st_mode) and st.st_size == len(built)
        if same:
            with os.fdopen(fd, "rb", closefd=False) as f:
                same = f.read(len(built) + 1) == built
        if not same:
            log.warning("%s: not the trie its keys build (another marisa-trie version, or "
                        "altered); using the trie built from its keys", path)
            return trie
        mapped = marisa_trie.Trie()
        try:
            mapped.mmap(f"/proc/self/fd/{fd}")
        except Exception:  # no /proc: the built trie is just as good, only not shared
            return trie
        return mapped
    finally:
        os.close(fd)


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
            keys = _encode_keys(trie, name)
            file = f"{name}{_KEYS}.npy"
            if file in files:
                raise InputError(f"save_model_dir: array {name}{_KEYS} would hide the keys "
                                 f"of trie {name}")
            np.save(tmp / file, keys, allow_pickle=False)
            files[file] = {"dtype": keys.dtype.str, "shape": list(keys.shape)}
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


def _encode_keys(trie: marisa_trie.Trie, name: str) -> np.ndarray:
    """``trie``'s keys as ``<name>.keys.npy`` holds them (see the module docstring)."""
    keys = [trie.restore_key(i) for i in range(len(trie))]
    bad = next((k for k in keys if "\n" in k), None)
    if bad is not None:
        raise InputError(f"trie {name}: key {bad[:40]!r} holds a newline")
    try:
        raw = "".join(k + "\n" for k in keys).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"trie {name}: a key is not encodable as UTF-8 ({exc})") from None
    return np.frombuffer(raw, dtype=np.uint8)


def _identity(root: Path) -> tuple[int, int, str]:
    """(device, inode, manifest SHA-256) of a model directory, for ModelDir.check_same.
    The manifest is hashed through a descriptor opened in the directory that was
    stat'ed, so the two belong to the same directory."""
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = os.fstat(dfd)
        try:
            fd = os.open(MANIFEST, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dfd)
        except FileNotFoundError:
            return st.st_dev, st.st_ino, ""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return st.st_dev, st.st_ino, ""
            with os.fdopen(fd, "rb", closefd=False) as f:
                digest = hashlib.sha256(f.read(MAX_MANIFEST_BYTES + 1)).hexdigest()
        finally:
            os.close(fd)
        return st.st_dev, st.st_ino, digest
    finally:
        os.close(dfd)


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
        ident = _identity(root)
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
        try:
            if not fpath.is_file():
                raise FileNotFoundError(file)
            size = fpath.stat().st_size
            digest = _sha256(fpath) if verify else None
        except OSError as exc:  # missing, or gone since (the directory was replaced)
            raise ModelFormatError(f"{fpath}: missing or unreadable ({exc})", str(fpath)) from None
        if size != meta.get("bytes"):
            raise ModelFormatError(
                f"{fpath}: {size} bytes, the manifest says {meta.get('bytes')} (truncated?)",
                str(fpath),
            )
        if verify and digest != meta.get("sha256"):
            raise ModelFormatError(f"{fpath}: checksum mismatch (altered or corrupt)", str(fpath))
    return ModelDir(root, manifest, ident)

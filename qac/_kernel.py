"""The only importer of the compiled ``qac._native`` module.

Every other module calls the plain functions and classes here, which take and
return numpy arrays. Shapes and dtypes are checked once at this boundary; a
non-zero status from C becomes a typed exception from :mod:`qac.errors`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qac.errors import InputError, KernelError, QacError

try:
    from qac._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a built extension
    raise QacError(
        "qac's C kernel is not built: install the package with `pip install .` "
        "(or `python native/build_ffi.py` in a source checkout)"
    ) from exc

ABI_VERSION = 1


def check(code: int, what: str) -> None:
    """Raise the exception matching a C status code (0 is success)."""
    if code == 0:
        return
    text = ffi.string(lib.qac_strerror(code)).decode()
    if code in (lib.QAC_E_INPUT, lib.QAC_E_UTF8):
        raise InputError(f"{what}: {text}")
    if code == lib.QAC_E_NOMEM:
        raise MemoryError(f"{what}: {text}")
    raise KernelError(f"{what}: {text} (code {code})", code)


def abi_version() -> int:
    return int(lib.qac_abi_version())


if abi_version() != ABI_VERSION:  # pragma: no cover - stale build
    raise QacError(
        f"qac._native has ABI {abi_version()}, Python side expects {ABI_VERSION}: rebuild it"
    )


def as_c(arr: np.ndarray, dtype: Any, name: str) -> np.ndarray:
    """Return ``arr`` as a C-contiguous array of ``dtype`` (copying only if needed)."""
    out = np.ascontiguousarray(arr, dtype=dtype)
    if out.ndim != 1:
        raise InputError(f"{name}: expected a 1-d array, got shape {arr.shape}")
    return out


def ptr(arr: np.ndarray, ctype: str) -> Any:
    """A typed cffi pointer into a C-contiguous numpy array (no copy)."""
    return ffi.cast(ctype, ffi.from_buffer(arr))


# --- features ---
# Thin wrappers over native/features.c (see native/qac_features.h for the ABI).
# Text goes in as UTF-8 bytes: one row as a list of per-field bytes, many rows as
# one concatenated buffer per field plus int64 offsets (n_rows + 1).

_FEAT_SPEC_FIELDS = (
    "kind", "field", "ngram_min", "ngram_max", "sublinear_tf", "open_end",
    "position_decay", "weight", "n_features",
)


def _feat_specs(specs: Any) -> Any:
    rows = []
    for s in specs:
        missing = [k for k in _FEAT_SPEC_FIELDS if k not in s]
        if missing:
            raise InputError(f"block spec: missing {missing}")
        rows.append({k: s[k] for k in _FEAT_SPEC_FIELDS})
    return ffi.new("qac_block_spec_t[]", rows)


def featurizer_new(specs: Any, keys: np.ndarray, idf: np.ndarray) -> Any:
    """Build a ``qac_featurizer_t *`` (freed by the garbage collector).

    ``specs``: mappings with the ``qac_block_spec_t`` fields; ``keys`` uint64 and
    ``idf`` float32 of length n_features (read-only / memory-mapped arrays are
    read in place, the C side copies them into its hash table).
    """
    c_specs = _feat_specs(specs)
    keys = as_c(keys, np.uint64, "keys")
    idf = as_c(idf, np.float32, "idf")
    if keys.shape != idf.shape:
        raise InputError(f"keys/idf: lengths differ ({keys.size} != {idf.size})")
    out = ffi.new("qac_featurizer_t **")
    check(
        lib.qac_featurizer_new(
            c_specs, len(c_specs), ptr(keys, "uint64_t *"), ptr(idf, "float *"), keys.size, out
        ),
        "qac_featurizer_new",
    )
    return ffi.gc(out[0], lib.qac_featurizer_free)


def featurize_max_capacity(handle: Any) -> int:
    cap = ffi.new("size_t *")
    check(lib.qac_featurize_max_capacity(handle, cap), "qac_featurize_max_capacity")
    return int(cap[0])


class RowFeaturizer:
    """Per-thread reusable output buffers for ``qac_featurize`` on one handle.

    ``__call__(text, context)`` featurizes one two-field row (UTF-8 bytes) and
    returns fresh (int32 ids, float32 values) arrays. Not thread-safe itself:
    keep one per thread (``Vectorizer`` does).
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.cap = featurize_max_capacity(handle)
        self.idx = np.empty(max(self.cap, 1), dtype=np.int32)
        self.val = np.empty(max(self.cap, 1), dtype=np.float32)
        self._idx_p = ptr(self.idx, "int32_t *")
        self._val_p = ptr(self.val, "float *")
        self._nnz = ffi.new("size_t *")

    def __call__(self, text: bytes, context: bytes) -> tuple[np.ndarray, np.ndarray]:
        code = lib.qac_featurize2(
            self.handle, text, len(text), context, len(context),
            self._idx_p, self._val_p, self.cap, self._nnz,
        )
        if code:
            check(code, "qac_featurize")
        n = self._nnz[0]
        return self.idx[:n].copy(), self.val[:n].copy()


def featurize_raw(
    handle: Any, fields: list[bytes], lens: list[int], cap: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """``qac_featurize`` with caller-chosen lengths/capacity (tests: bad bytes, small cap)."""
    idx = np.empty(max(cap, 1), dtype=np.int32)
    val = np.empty(max(cap, 1), dtype=np.float32)
    nnz = ffi.new("size_t *")
    bufs = [ffi.from_buffer(f) for f in fields]
    c_fields = ffi.new("char *[]", [ffi.cast("char *", b) for b in bufs] or [ffi.NULL])
    code = lib.qac_featurize(
        handle, c_fields, lens, len(fields), ptr(idx, "int32_t *"), ptr(val, "float *"), cap,
        nnz,
    )
    return int(code), idx[: nnz[0]].copy(), val[: nnz[0]].copy()


def _columns(columns: list[tuple[bytes, np.ndarray]], n_rows: int) -> tuple[Any, Any, list[Any]]:
    keep: list[Any] = []
    bufs = ffi.new("char *[]", max(len(columns), 1))
    offs = ffi.new("int64_t *[]", max(len(columns), 1))
    for i, (buf, off) in enumerate(columns):
        off = as_c(off, np.int64, f"offsets[{i}]")
        if off.size != n_rows + 1:
            raise InputError(f"offsets[{i}]: expected {n_rows + 1} entries, got {off.size}")
        if off[0] < 0 or off[-1] > len(buf):
            raise InputError(f"offsets[{i}]: outside the {len(buf)}-byte buffer")
        b = ffi.from_buffer(buf)
        keep += [b, off]
        bufs[i] = ffi.cast("char *", b)
        offs[i] = ptr(off, "int64_t *")
    return bufs, offs, keep


def featurize_batch(
    handle: Any, columns: list[tuple[bytes, np.ndarray]], n_rows: int, n_threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr int64, indices int32, data float32) of many rows, two passes in C.

    ``columns[i] = (buffer, offsets)``: field i of row r is
    ``buffer[offsets[r]:offsets[r+1]]``.
    """
    bufs, offs, keep = _columns(columns, n_rows)
    indptr = np.empty(n_rows + 1, dtype=np.int64)
    check(
        lib.qac_featurize_batch_count(
            handle, bufs, offs, len(columns), n_rows, n_threads, ptr(indptr, "int64_t *")
        ),
        "qac_featurize_batch_count",
    )
    nnz = int(indptr[-1])
    idx = np.empty(max(nnz, 1), dtype=np.int32)
    val = np.empty(max(nnz, 1), dtype=np.float32)
    check(
        lib.qac_featurize_batch(
            handle, bufs, offs, len(columns), n_rows, n_threads, ptr(indptr, "int64_t *"),
            ptr(idx, "int32_t *"), ptr(val, "float *"), nnz,
        ),
        "qac_featurize_batch",
    )
    del keep
    return indptr, idx[:nnz], val[:nnz]


def extract_keys(
    spec: Any, block_index: int, buf: bytes, offsets: np.ndarray, n_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct n-gram keys of each row for one block: (keys uint64, row_ptr int64)."""
    c_spec = _feat_specs([spec])
    offsets = as_c(offsets, np.int64, "offsets")
    n_rows = offsets.size - 1
    if n_rows < 0 or offsets[0] < 0 or offsets[-1] > len(buf):
        raise InputError(f"offsets: need >= 1 entries inside the {len(buf)}-byte buffer")
    cap = ffi.new("size_t *")
    check(
        lib.qac_extract_capacity(c_spec, ptr(offsets, "int64_t *"), n_rows, cap),
        "qac_extract_capacity",
    )
    keys = np.empty(max(int(cap[0]), 1), dtype=np.uint64)
    row_ptr = np.empty(n_rows + 1, dtype=np.int64)
    b = ffi.from_buffer(buf)
    check(
        lib.qac_extract_keys(
            c_spec, block_index, ffi.cast("char *", b), ptr(offsets, "int64_t *"), n_rows,
            n_threads, ptr(keys, "uint64_t *"), int(cap[0]), ptr(row_ptr, "int64_t *"),
        ),
        "qac_extract_keys",
    )
    return keys[: int(row_ptr[-1])], row_ptr

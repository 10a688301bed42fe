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


# --- index ---


def split_clusters(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    n_cols: int,
    order: np.ndarray,
    cluster_ptr: np.ndarray,
    seed: int,
    max_iter: int,
    threads: int,
) -> None:
    """One binary level of balanced spherical 2-means, in place on ``order``.

    CSR embedding (indptr int64 [L+1], indices int32, data float32) of L labels.
    ``order`` (int32, C-contiguous, modified in place) lists labels cluster by
    cluster as delimited by ``cluster_ptr`` (int64 [C+1]); afterwards cluster c's
    first ceil(n/2) members form child 2c and the rest child 2c+1.
    """
    indptr = as_c(indptr, np.int64, "indptr")
    indices = as_c(indices, np.int32, "indices")
    data = as_c(data, np.float32, "data")
    cluster_ptr = as_c(cluster_ptr, np.int64, "cluster_ptr")
    if order.dtype != np.int32 or order.ndim != 1 or not order.flags.c_contiguous:
        raise InputError("order: expected a C-contiguous 1-d int32 array")
    if not order.flags.writeable:
        raise InputError("order: must be writeable")
    n_rows = indptr.shape[0] - 1
    if n_rows < 0 or indices.shape[0] != data.shape[0] or cluster_ptr.shape[0] < 1:
        raise InputError(
            f"split_clusters: inconsistent shapes indptr {indptr.shape}, "
            f"indices {indices.shape}, data {data.shape}, cluster_ptr {cluster_ptr.shape}"
        )
    if int(indptr[-1]) != indices.shape[0]:
        raise InputError(f"indptr[-1] = {int(indptr[-1])} but nnz = {indices.shape[0]}")
    code = lib.qac_split_clusters(
        ptr(indptr, "int64_t *"),
        ptr(indices, "int32_t *"),
        ptr(data, "float *"),
        n_rows,
        n_cols,
        indices.shape[0],
        ptr(order, "int32_t *"),
        order.shape[0],
        ptr(cluster_ptr, "int64_t *"),
        cluster_ptr.shape[0] - 1,
        seed & 0xFFFFFFFFFFFFFFFF,
        max_iter,
        threads,
    )
    check(code, "qac_split_clusters")

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

"""qac: session-aware query autocomplete and product retrieval with XR-Linear."""

from __future__ import annotations

from qac.errors import InputError, KernelError, ModelFormatError, QacError, StoreUnavailable

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "KernelError",
    "ModelFormatError",
    "QacError",
    "StoreUnavailable",
    "__version__",
]

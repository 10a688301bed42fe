"""qac: session-aware query autocomplete and product retrieval with XR-Linear."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qac.errors import InputError, KernelError, ModelFormatError, QacError, StoreUnavailable

if TYPE_CHECKING:
    from qac.complete import Completer, Completion, train_completer
    from qac.retrieve import Retriever

__version__ = "0.1.0"

__all__ = [
    "Completer",
    "Completion",
    "InputError",
    "KernelError",
    "ModelFormatError",
    "QacError",
    "Retriever",
    "StoreUnavailable",
    "__version__",
    "train_completer",
]

_LAZY = {
    "Completer": "qac.complete",
    "Completion": "qac.complete",
    "train_completer": "qac.complete",
    "Retriever": "qac.retrieve",
}


def __getattr__(name: str) -> Any:
    # The engine pulls in numpy/scipy and the C kernel; import it on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qac' has no attribute {name!r}")

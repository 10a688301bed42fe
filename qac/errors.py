"""The error hierarchy of qac: every failure a caller can act on has a type here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class QacError(Exception):
    """Base class of every error qac raises on purpose."""


class InputError(QacError, ValueError):
    """A caller passed text, ids or options qac cannot use (the message says which)."""


class ModelFormatError(QacError):
    """A model directory is missing a file, has a corrupt one, or has the wrong version.

    ``path`` names the offending file.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreUnavailable(QacError):
    """The session store (Redis) could not be reached or timed out."""


class KernelError(QacError):
    """The C kernel reported an error; ``code`` is its negative QAC_E_* status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def check_fields(cls: Any, d: Any, what: str) -> None:
    """Raise :class:`InputError` (its message starting with ``what``) unless ``d`` is a
    mapping whose keys are all fields of the dataclass ``cls``: what every config's
    ``from_dict`` checks first."""
    if not isinstance(d, Mapping):
        raise InputError(f"{what}: a mapping needed, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise InputError(f"{what}: unknown keys {unknown}")

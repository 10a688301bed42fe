"""BlockConfig: the configuration of one TF-IDF feature block (see qac.features)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from qac.errors import InputError, check_fields

Kind = Literal["word", "char", "prefix_char"]
KINDS: tuple[str, ...] = ("word", "char", "prefix_char")
DEFAULT_NGRAM_RANGE: dict[str, tuple[int, int]] = {
    "word": (1, 2),
    "char": (3, 3),
    "prefix_char": (1, 3),
}
MAX_N = 16  # QAC_FEAT_MAX_N
N_FIELDS = 2  # field 0 = text, field 1 = context


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class BlockConfig:
    """One feature block: which n-grams of which field, and how they are weighted.

    ``ngram_range=None`` takes the kind's default (word (1, 2), char (3, 3),
    prefix_char (1, 3)); after creation it is always a tuple. ``position_decay``
    only applies to prefix_char, ``open_end`` only to the char kinds.
    """

    kind: Kind
    ngram_range: tuple[int, int] | None = None
    field: int = 0
    weight: float = 1.0
    min_df: int = 1
    max_features: int | None = None
    sublinear_tf: bool = False
    position_decay: float = 1.0
    open_end: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"BlockConfig.kind: expected one of {KINDS}, got {self.kind!r}")
        rng: Any = self.ngram_range
        if rng is None:
            rng = DEFAULT_NGRAM_RANGE[self.kind]
        if (
            not isinstance(rng, tuple | list)
            or len(rng) != 2
            or not all(_is_int(v) for v in rng)
            or not 1 <= rng[0] <= rng[1] <= MAX_N
        ):
            raise InputError(
                f"BlockConfig.ngram_range: expected (lo, hi) ints with 1 <= lo <= hi <= {MAX_N}, "
                f"got {self.ngram_range!r}"
            )
        object.__setattr__(self, "ngram_range", (int(rng[0]), int(rng[1])))
        if not _is_int(self.field) or not 0 <= self.field < N_FIELDS:
            raise InputError(
                f"BlockConfig.field: expected 0 (text) or 1 (context), got {self.field!r}"
            )
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or not math.isfinite(self.weight)
            or self.weight <= 0
        ):
            raise InputError(
                f"BlockConfig.weight: expected a finite number > 0, got {self.weight!r}"
            )
        if not _is_int(self.min_df) or self.min_df < 1:
            raise InputError(f"BlockConfig.min_df: expected an int >= 1, got {self.min_df!r}")
        if self.max_features is not None and (
            not _is_int(self.max_features) or self.max_features < 1
        ):
            raise InputError(
                f"BlockConfig.max_features: expected None or an int >= 1, got {self.max_features!r}"
            )
        if not isinstance(self.sublinear_tf, bool):
            raise InputError(
                f"BlockConfig.sublinear_tf: expected a bool, got {self.sublinear_tf!r}"
            )
        if not isinstance(self.open_end, bool):
            raise InputError(f"BlockConfig.open_end: expected a bool, got {self.open_end!r}")
        if self.open_end and self.kind == "word":
            raise InputError("BlockConfig.open_end: only char and prefix_char blocks, not 'word'")
        d = self.position_decay
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d < 0:
            raise InputError(
                f"BlockConfig.position_decay: expected a finite number >= 0, got {d!r}"
            )
        if self.kind != "prefix_char" and d != 1.0:
            raise InputError(
                f"BlockConfig.position_decay: only applies to kind 'prefix_char', "
                f"got {d!r} for kind {self.kind!r}"
            )
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "position_decay", float(d))

    @property
    def ngrams(self) -> tuple[int, int]:
        """``ngram_range`` as a definite tuple (for type checkers)."""
        assert self.ngram_range is not None
        return self.ngram_range

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["ngram_range"] = list(self.ngrams)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> BlockConfig:
        check_fields(cls, data, "BlockConfig")
        if "kind" not in data:
            raise InputError("BlockConfig: missing key 'kind'")
        args = dict(data)
        if isinstance(args.get("ngram_range"), list):
            args["ngram_range"] = tuple(args["ngram_range"])
        return cls(**args)

"""Matching what people actually type: typos, word prefixes, highlights.

The candidates themselves are found in C, in the same call as the rest of the
keystroke (``qac_match_view`` in native/qac_answer.h): labels and past queries
within a few edits of the prefix, found by walking the trie the sorted labels imply,
and those whose successive words start with the typed words. Accents, typographic
quotes and dashes are folded by the normalization every query and prefix goes
through (:func:`qac.text.normalize`). This module holds the options
(:class:`MatchConfig`); the highlight spans of each answer come from the same call
(``qac_answer_out.spans``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qac.errors import InputError, check_fields


@dataclass(frozen=True)
class MatchConfig:
    """How a keystroke is matched beyond the labels that start with it.

    These run only when the prefix's own answers are fewer than asked for, and
    their answers always come after those (see ``qac_match_view``):

    words:          word-prefix matches: "app wat" -> "apple watch", "york" -> "new
                    york times".
    typos:          the most edits a correction may make (0: none, at most 2;
                    Damerau: a swap of neighbours is one edit).
    one_typo_chars: prefixes shorter than this many characters are not corrected.
    two_typo_chars: prefixes shorter than this allow one edit, longer ones ``typos``.
    first_char:     whether the first character may be corrected.
    fuzzy:          labels each of the two adds at most.
    max_visits:     trie nodes one typo search visits at most (bounds its time).
    """

    words: bool = True
    typos: int = 2
    one_typo_chars: int = 3
    two_typo_chars: int = 8
    first_char: bool = False
    fuzzy: int = 10
    max_visits: int = 20000

    def __post_init__(self) -> None:
        for name in ("words", "first_char"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"MatchConfig.{name}: a bool, got {getattr(self, name)!r}")
        for name, lo, hi in (("typos", 0, 2), ("one_typo_chars", 1, 1024),
                             ("two_typo_chars", 1, 1024), ("fuzzy", 0, 1000),
                             ("max_visits", 1, 10_000_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"MatchConfig.{name}: an int {lo}..{hi}, got {v!r}")

    @classmethod
    def from_dict(cls, d: Any) -> MatchConfig:
        check_fields(cls, d, "completer config: match")
        return cls(**d)

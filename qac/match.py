"""Matching what people actually type: typos, word prefixes, highlights.

The candidates themselves are found in C, in the same call as the rest of the
keystroke (``qac_match_view`` in native/qac_answer.h): labels and past queries
within a few edits of the prefix, found by walking the trie the sorted labels imply,
and those whose successive words start with the typed words. Accents, typographic
quotes and dashes are folded by the normalization every query and prefix goes
through (:func:`qac.text.normalize`). This module holds the options
(:class:`MatchConfig`) and the highlight spans of an answer (:func:`spans`),
computed from that same normalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qac.errors import InputError, check_fields
from qac.text import fold


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


def prefix_alignment(prefix: str, text: str) -> tuple[int, list[int]]:
    """How ``prefix`` best matches a beginning of ``text`` (Damerau, optimal string
    alignment over characters): (edits, the positions of ``text`` whose character
    equals the typed one it is aligned with)."""
    m = len(prefix)
    n = min(len(text), m + 4)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        d[i][0] = i
        for j in range(1, m + 1):
            v = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                    d[i - 1][j - 1] + (text[i - 1] != prefix[j - 1]))
            if i > 1 and j > 1 and text[i - 1] == prefix[j - 2] and text[i - 2] == prefix[j - 1]:
                v = min(v, d[i - 2][j - 2] + 1)
            d[i][j] = v
    end = min(range(n + 1), key=lambda i: (d[i][m], -i))
    best = d[end][m]
    kept: list[int] = []
    i, j = end, m
    while i > 0 and j > 0:
        if text[i - 1] == prefix[j - 1] and d[i][j] == d[i - 1][j - 1]:
            kept.append(i - 1)
            i, j = i - 1, j - 1
        elif i > 1 and j > 1 and text[i - 1] == prefix[j - 2] and \
                text[i - 2] == prefix[j - 1] and d[i][j] == d[i - 2][j - 2] + 1:
            i, j = i - 2, j - 2
        elif d[i][j] == d[i - 1][j - 1] + 1:
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    kept.reverse()
    return best, kept


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def _word_spans(tokens: list[str], text: str) -> list[tuple[int, int]]:
    """Spans of the first run of successive words of ``text`` that start with the
    tokens, or none."""
    starts = [i for i, ch in enumerate(text) if ch != " " and (i == 0 or text[i - 1] == " ")]
    words = [(s, text.find(" ", s) if " " in text[s:] else len(text)) for s in starts]
    for a in range(len(words) - len(tokens) + 1):
        if all(text.startswith(t, words[a + i][0]) for i, t in enumerate(tokens)):
            return [(words[a + i][0], words[a + i][0] + len(t)) for i, t in enumerate(tokens)]
    return []


def spans(prefix: str, text: str, edits: int = 0) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` (character offsets into ``text``) of ``text`` that match
    what was typed, ``prefix`` as normalized (:func:`qac.text.normalize_prefix`):

    - a text that starts with the (folded) prefix: one span over it;
    - a word-prefix match: one span per typed word, over the start of its word;
    - a corrected text (``edits`` > 0): the characters that equal the typed ones
      they align with, so the corrected ones are not highlighted;
    - else none (an empty prefix, a next-query suggestion).
    """
    p = prefix.rstrip(" ")
    if not p:
        return []
    t = fold(text)  # a stored text from before folding: match as its prefix was
    if len(t) != len(text):  # folding changed the length: offsets would not line up
        return []
    if t.startswith(prefix):  # a finished word keeps its space
        return [(0, len(prefix))]
    if t.startswith(p):
        return [(0, len(p))]
    if edits <= 0:
        return _word_spans(p.split(), t)
    _, kept = prefix_alignment(p, t)
    return _runs(kept)

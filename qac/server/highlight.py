"""Highlight spans: which characters of a completion match what was typed.

Computed on the server from the same normalization the completer uses, so a page
never re-implements it: "New  Y" (capitals, two spaces) normalizes to "new y", and
the span covers "new y" in "new york". One function, so that matches which are not
a plain prefix (typo-corrected, infix) can later report their own spans here.
"""

from __future__ import annotations


def highlight(normalized_prefix: str, text: str) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` (character offsets into ``text``) of ``text`` that match
    ``normalized_prefix`` (the output of :func:`qac.text.normalize_prefix`).

    Today a completion matches only as a prefix: one span ``(0, len(prefix))`` when
    ``text`` starts with the prefix, none otherwise (an empty prefix, or a text the
    prefix does not start, such as a next-query suggestion).
    """
    if normalized_prefix and text.startswith(normalized_prefix):
        return [(0, len(normalized_prefix))]
    return []

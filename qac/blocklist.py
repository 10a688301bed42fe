"""Blocklist: suggestions containing a listed word are never shown.

File format (``qac/data/blocklist.txt`` is the default): one entry per line; ``stem*``
matches every word starting with ``stem``; blank lines and lines starting with ``#``
are ignored. Entries are normalized like queries (:func:`qac.text.normalize`) and must
be one word: a run of letters and digits, as the text is tokenized the same way
(so ``x-rated`` can never match and is rejected rather than silently ignored).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from qac.errors import InputError
from qac.text import normalize

# A word: a run of letters or digits (\w without the underscore).
_CHAR = r"[^\W_]"
_WORD = re.compile(_CHAR + "+")


def _entry(text: object, where: str, shown: object) -> str:
    """One entry, normalized: a single word of letters and digits."""
    if not isinstance(text, str):
        raise InputError(f"{where}: blocklist entry {shown!r} is not a string")
    entry = normalize(text)
    if not _WORD.fullmatch(entry):
        raise InputError(f"{where}: blocklist entry {shown!r} is not one word "
                         "(letters and digits, optionally ending in *)")
    return entry


class Blocklist:
    """A set of blocked words and word stems; :meth:`blocks` tests one text."""

    def __init__(self, words: Iterable[str] = (), stems: Iterable[str] = ()) -> None:
        """``words`` block exact word tokens, ``stems`` block words starting with them.

        Both are taken as given (already normalized, one word each).
        """
        self.words = frozenset(words)
        self.stems = frozenset(stems)
        # One regex search over the text instead of a loop over its tokens: about 3x
        # faster. "Not preceded (followed) by a letter or digit" = a token boundary.
        alts = []
        if self.words:
            alts.append(f"(?:{'|'.join(map(re.escape, sorted(self.words)))})(?!{_CHAR})")
        if self.stems:
            alts.append(f"(?:{'|'.join(map(re.escape, sorted(self.stems)))})")
        self._re = re.compile(f"(?<!{_CHAR})(?:{'|'.join(alts)})") if alts else None

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<lines>") -> Blocklist:
        """Parse entries in the file format; errors name ``source:line``."""
        words: set[str] = set()
        stems: set[str] = set()
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            stem = line.endswith("*")
            (stems if stem else words).add(_entry(line[:-1] if stem else line,
                                                  f"{source}:{lineno}", line))
        return cls(words, stems)

    @classmethod
    def from_entries(cls, words: Iterable[str], stems: Iterable[str]) -> Blocklist:
        """Words and stems as saved in a model (each checked as one normalized word)."""
        if isinstance(words, str) or isinstance(stems, str):
            raise InputError("blocklist: words and stems must be lists of words")
        return cls((_entry(w, "blocklist word", w) for w in words),
                   (_entry(w, "blocklist stem", w) for w in stems))

    @classmethod
    def from_file(cls, path: str | Path) -> Blocklist:
        """Read a blocklist file (UTF-8)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read blocklist ({exc})") from exc
        return cls.from_lines(text.splitlines(), str(path))

    @classmethod
    @functools.cache
    def default(cls) -> Blocklist:
        """The blocklist shipped with qac (``qac/data/blocklist.txt``)."""
        res = resources.files("qac").joinpath("data/blocklist.txt")
        return cls.from_lines(res.read_text(encoding="utf-8").splitlines(),
                              "qac/data/blocklist.txt")

    @classmethod
    def empty(cls) -> Blocklist:
        """A blocklist that blocks nothing."""
        return cls()

    def __len__(self) -> int:
        return len(self.words) + len(self.stems)

    def blocks(self, text: str) -> bool:
        """Whether any word of ``normalize(text)`` is a listed word or starts with a stem.

        Words are runs of letters and digits.
        """
        return self.blocks_normalized(normalize(text))

    def blocks_normalized(self, text: str) -> bool:
        """:meth:`blocks` of text already normalized (the per-keystroke callers'
        candidates are built from normalized pieces)."""
        return self._re is not None and self._re.search(text) is not None

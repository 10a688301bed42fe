"""Text normalization: the one definition of "the same query" in qac.

``normalize`` applies, in order:

1. bytes are decoded as UTF-8; invalid sequences become U+FFFD (the replacement
   character) rather than an error (the HTTP service refuses a query string that is
   not UTF-8 with a 400 before it gets here; bytes given to the Python API and log
   lines are decoded this way);
2. Unicode NFKC (full-width forms, ligatures and compatibility characters fold to
   their plain forms);
3. ``str.casefold`` (stronger than lower(): "ß" -> "ss");
4. folding (:func:`fold`): the diacritics of Latin, Greek and Cyrillic letters go
   (the combining marks U+0300..U+036F: "wéather" ->
   "weather"), typographic quotes and dashes become plain ones, and letters that
   do not decompose are spelled out ("æ" -> "ae"), so what people type matches
   however they type it;
5. control, format, surrogate, private-use and unassigned characters (Unicode
   categories Cc, Cf, Cs, Co, Cn) and the replacement character become spaces;
6. runs of whitespace collapse to one space; leading and trailing spaces go.

Text longer than ``MAX_TEXT_CHARS`` after step 1 raises :class:`InputError`:
nobody types a 1,000-character query, and the limit bounds the work of one call.
"""

from __future__ import annotations

import re
import unicodedata

from qac.errors import InputError

MAX_TEXT_CHARS = 1024

_DROP = {"Cc", "Cf", "Cs", "Co", "Cn"}
_SPACES = re.compile(r"\s+")


# Typographic characters people paste, as the plain ones they stand for. NFKC (in
# qac.text.normalize) has already mapped full-width forms; casefold maps "ß" to "ss".
_PUNCT = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
    "\u2015": "-", "\u2212": "-",
    "\u00e6": "ae", "\u0153": "oe", "\u00f8": "o", "\u0142": "l", "\u0111": "d",
    "\u00f0": "d", "\u00fe": "th", "\u0131": "i",
})


_ACCENTS = re.compile("[\u0300-\u036f]+")  # the combining diacritical marks


def fold(text: str) -> str:
    """Step 4 of :func:`normalize` alone, for text already through steps 1-3: the
    diacritics of Latin, Greek and Cyrillic letters go (only U+0300..U+036F, so the
    vowel signs of other scripts stay), the characters of ``_PUNCT`` are replaced.
    ASCII text is returned as it is, at no cost."""
    if text.isascii():
        return text
    # decompose first, so a letter with an accent ("ǽ") meets the table as its base
    t = _ACCENTS.sub("", unicodedata.normalize("NFD", text)).translate(_PUNCT)
    return unicodedata.normalize("NFC", t)


def _clean_char(ch: str) -> str:
    if ch == "\ufffd" or unicodedata.category(ch) in _DROP:
        return " "
    return ch


def normalize(text: str | bytes, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Normalize one query; see the module docstring for the exact steps."""
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise InputError(f"text must be str or bytes, got {type(text).__name__}")
    if len(text) > max_chars:
        raise InputError(f"text is {len(text)} characters long; the limit is {max_chars}")
    if text.isascii() and text.isprintable():
        return " ".join(text.lower().split())
    text = fold(unicodedata.normalize("NFKC", text).casefold())
    if not text.isprintable():
        text = "".join(_clean_char(ch) for ch in text)
    elif "\ufffd" in text:
        text = text.replace("\ufffd", " ")
    return _SPACES.sub(" ", text).strip()


def normalize_prefix(prefix: str) -> str:
    """Normalize a typed prefix, keeping one trailing space if the user typed one.

    ``normalize`` strips trailing whitespace, but for a prefix it is information:
    "new " has finished the word "new" and must not complete to "newton".
    """
    p = normalize(prefix)
    if p and prefix[-1:].isspace():
        p += " "
    return p

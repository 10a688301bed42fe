"""Fuzz target: text normalization (qac.text) and the session store's query checks.

Checks, for any str or bytes: ``normalize`` returns text or raises InputError (over
the length limit only); its result is normalized (idempotent), holds no control,
format, surrogate or unassigned character and no U+FFFD, no leading, trailing or
double space; ``normalize_prefix`` is ``normalize`` plus at most one space.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from _harness import Input, fuzz_main, import_qac

qac: Any = None


def setup() -> None:
    global qac

    def load() -> Any:
        import qac.errors
        import qac.session
        import qac.text
        return qac

    qac = import_qac(load)


def check_normalized(n: str) -> None:
    assert n == n.strip() and "  " not in n, repr(n)
    assert "\ufffd" not in n, repr(n)
    bad = [ch for ch in n if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")]
    assert not bad, (n, bad)


def one_input(data: bytes) -> None:
    if qac is None:
        setup()
    text, errors = qac.text, qac.errors
    inp = Input(data)
    mode = inp.byte() % 3
    raw = inp.rest()
    value: str | bytes = (raw if mode == 0 else raw.decode("utf-8", "surrogateescape")
                          if mode == 1 else raw.decode("utf-8", "replace"))
    try:
        n = text.normalize(value)
    except errors.InputError:
        assert len(value) > text.MAX_TEXT_CHARS
        return
    check_normalized(n)
    assert text.normalize(n) == n, (value, n, text.normalize(n))
    if isinstance(value, str):
        p = text.normalize_prefix(value)
        assert p == n or p == n + " ", (value, n, p)
        try:
            q = qac.session.clean_query(value)
        except errors.InputError:  # refused cleanly: nothing more to check
            return
        assert isinstance(q, str) and q == text.normalize(q)


if __name__ == "__main__":
    fuzz_main(setup, one_input)
    sys.exit(0)

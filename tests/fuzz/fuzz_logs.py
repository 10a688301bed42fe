"""Fuzz target: the training-file readers (qac.logs.read_log, qac.retrieve.read_tsv,
qac.blocklist.Blocklist.from_file) on arbitrary file bytes, plain or gzipped.

Each returns or raises InputError; every event it returns holds a normalized,
non-empty query without a newline, and a session id.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import Input, fuzz_main, import_qac

mods: Any = None
work: Path | None = None


def setup() -> None:
    global mods, work

    def load() -> Any:
        import qac.blocklist
        import qac.errors
        import qac.logs
        import qac.retrieve
        import qac.text
        return qac

    mods = import_qac(load)
    work = Path(tempfile.mkdtemp(prefix="qac-fuzz-logs-"))
    atexit.register(shutil.rmtree, work, True)


# Seed-like pieces the input may start a file with, so the fuzzer reaches the TSV
# paths without having to guess a header first.
HEADERS = [b"", b"AnonID\tSessionID\tQuery\tQueryTime\tClickURLs\n", b"Query\n",
           b"user\tquery\ttime\n", b"session\tquery\n", b"\xef\xbb\xbfAnonID\tQuery\n"]


def one_input(data: bytes) -> None:
    if mods is None:
        setup()
    assert work is not None
    inp = Input(data)
    how = inp.byte()
    body = inp.choice(HEADERS) + inp.rest()
    gz = how & 1
    path = work / ("log.tsv.gz" if gz else "log.tsv")
    if gz and how & 2:
        body = gzip.compress(body)  # else: bytes that claim to be gzip
    path.write_bytes(body)
    errors = mods.errors.InputError
    try:
        events = mods.logs.read_log(path, errors="skip" if how & 4 else "raise")
    except errors:
        events = []
    for e in events:
        assert e.query and "\n" not in e.query, e
        assert mods.text.normalize(e.query) == e.query, e
        assert isinstance(e.session, str), e
    if not gz:
        try:
            rows = mods.retrieve.read_tsv(path)
        except errors:
            rows = []
        for key, text in rows:
            assert key and "\n" not in key and "\n" not in text
        with contextlib.suppress(errors):  # a clean error is an answer too
            mods.blocklist.Blocklist.from_file(path)


if __name__ == "__main__":
    fuzz_main(setup, one_input)
    sys.exit(0)

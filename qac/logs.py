"""Query logs: read a search log into session-tagged, normalized query events.

Two input shapes are understood (``.gz`` files are decompressed transparently):

* **TSV with a header** naming its columns (case-insensitive). Known names:
  ``anonid|user|user_id`` (user), ``sessionid|session|session_id`` (session),
  ``query`` (required), ``querytime|time|timestamp`` (time, ISO 8601 such as
  ``2006-03-01 07:17:12``). Other columns (e.g. AOL's ``ClickURLs``) are ignored.
  Sessions are, in order of preference:

  - (user, session) when both columns exist (AOL: ``AnonID  SessionID ...``);
    the session id is ``"<user>/<session>"``;
  - the session column alone;
  - with user and time but no session: each user's events split where more than
    :data:`SESSION_GAP` (30 minutes) passes between two of them; ids ``"<user>/<n>"``
    (``n`` counts from 0). Events are taken to be in time order per user;
  - with only one of user or time, or neither: the user's events, or with time the
    whole file split at 30-minute gaps, or else the whole file as one session.

  A one-column file whose first line is ``query`` (any case) is such a TSV: one
  session, as AOL's query-only cut ``aol_queries_dev.txt.gz``.
* **Plain text**, one query per line (the first line has no tab and is not a known
  header). Consecutive lines form one session; a blank line ends it (session ids
  ``"0"``, ``"1"``, ...). A file without blank lines is one long session.

Every query goes through :func:`qac.text.normalize`; empty results are dropped, and
so is an event repeating the previous event's query in the same session (in AOL
that is the same search with another click).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from qac.errors import InputError
from qac.text import normalize

log = logging.getLogger(__name__)

SESSION_GAP = timedelta(minutes=30)

_ALIASES = {
    "anonid": "user",
    "user": "user",
    "user_id": "user",
    "sessionid": "session",
    "session": "session",
    "session_id": "session",
    "query": "query",
    "querytime": "time",
    "time": "time",
    "timestamp": "time",
}


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One search: its session id, normalized query, time (if known) and user (if known)."""

    session: str
    query: str
    time: datetime | None
    user: str | None


#: bytes looked at to tell a file whose lines end in a lone CR (old Mac style)
_SNIFF = 1 << 16


def _open_text(path: Path) -> io.TextIOBase:
    """``path`` as text. Invalid UTF-8 becomes U+FFFD, which normalize() turns into a
    space; a UTF-8 byte order mark is dropped (else it would be part of the first
    column's name, and the header would lose that column). Lines end at "\\n" (a
    "\\r" before it is stripped by the reader), or at a lone "\\r" in a file whose
    first 64 KiB hold a "\\r" and no "\\n"."""
    raw: gzip.GzipFile | io.BufferedReader = (
        gzip.GzipFile(path, "rb") if path.suffix == ".gz"
        else io.BufferedReader(io.FileIO(path, "rb"), buffer_size=_SNIFF))
    try:
        head = raw.peek(_SNIFF)[:_SNIFF]
    except (OSError, EOFError):
        head = b""  # reading fails again, and is reported, where the lines are read
    newline = "\r" if b"\r" in head and b"\n" not in head else "\n"
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline=newline)


def _lines(f: io.TextIOBase) -> Iterator[str]:
    for line in f:
        yield line.rstrip("\r\n")


def _header_roles(first: str, where: str) -> dict[str, int] | None:
    """Column index of each role, or None when ``first`` is not a header."""
    names = [c.strip().lower() for c in first.split("\t")]
    if "\t" not in first and names[0] != "query":
        return None
    roles: dict[str, int] = {}
    for i, name in enumerate(names):
        role = _ALIASES.get(name)
        if role is None:
            continue
        if role in roles:
            raise InputError(f"{where}: header names the {role} column twice")
        roles[role] = i
    if "query" not in roles:
        raise InputError(
            f"{where}: header {names!r} has no query column (expected one of "
            "query, and optionally anonid|user|user_id, sessionid|session|session_id, "
            "querytime|time|timestamp)")
    return roles


def read_log(
    path: str | os.PathLike[str],
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    errors: Literal["raise", "skip"] = "raise",
) -> list[LogEvent]:
    """Read a search log (see the module docstring for formats) in log order.

    ``since`` is inclusive and ``until`` exclusive; both need a time column.
    Consecutive-repeat removal happens before the time filter, so a repeat just
    inside the window of a search just outside it is still dropped.
    Malformed rows (wrong column count, bad time, over-long query) raise
    :class:`InputError` naming ``file:line``; with ``errors="skip"`` they are
    counted, logged and skipped.
    """
    if errors not in ("raise", "skip"):
        raise InputError(f"errors must be 'raise' or 'skip', got {errors!r}")
    path = Path(path)
    try:
        f = _open_text(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot open log ({exc})") from exc
    with f:
        lines = _lines(f)
        try:
            first = next(lines)
        except StopIteration:
            first = None
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read log ({exc})") from exc
        if first is None:
            if since is not None or until is not None:
                raise InputError(f"{path}: since/until given but the log is empty")
            return []
        roles = _header_roles(first, f"{path}:1")
        try:
            if roles is None:
                events, bad = _read_plain(path, first, lines, errors == "skip")
            else:
                events, bad = _read_tsv(path, roles, len(first.split("\t")), lines,
                                        errors == "skip")
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"{path}: cannot read log ({exc})") from exc
    has_time = roles is not None and "time" in roles
    if since is not None or until is not None:
        if not has_time:
            raise InputError(f"{path}: since/until given but the log has no time column")
        try:
            events = [e for e in events if e.time is not None
                      and (since is None or e.time >= since)
                      and (until is None or e.time < until)]
        except TypeError as exc:  # naive vs aware datetimes
            raise InputError(f"{path}: since/until cannot be compared with the log's "
                             f"times ({exc})") from None
    if bad:
        log.warning("%s: skipped %d malformed rows", path, bad)
    return events


def _malformed(path: Path, lineno: int, exc: InputError, skip: bool, bad: int) -> int:
    """A malformed row: raise naming file:line, or (skip) count it, logging the first 5."""
    if not skip:
        raise InputError(f"{path}:{lineno}: {exc}") from None
    if bad < 5:
        log.warning("%s:%d: skipped: %s", path, lineno, exc)
    return bad + 1


def _read_plain(path: Path, first: str, lines: Iterable[str],
                skip: bool) -> tuple[list[LogEvent], int]:
    events: list[LogEvent] = []
    session = 0
    prev: str | None = None
    started = False
    bad = 0
    for lineno, line in enumerate(_chain(first, lines), start=1):
        try:
            q = normalize(line)
        except InputError as exc:
            bad = _malformed(path, lineno, exc, skip, bad)
            continue
        if not q:
            if not line.strip() and started:
                session += 1
                started = False
                prev = None
            continue
        if q == prev:
            continue
        events.append(LogEvent(str(session), q, None, None))
        prev = q
        started = True
    return events, bad


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _read_tsv(path: Path, roles: dict[str, int], ncols: int, lines: Iterable[str],
              skip: bool) -> tuple[list[LogEvent], int]:
    qi = roles["query"]
    ui = roles.get("user")
    si = roles.get("session")
    ti = roles.get("time")
    split_by_gap = si is None and ti is not None
    events: list[LogEvent] = []
    last_query: dict[str, str] = {}
    # per user (or None): (time of last event, session number)
    gap_state: dict[str | None, tuple[datetime, int]] = {}
    fromiso = datetime.fromisoformat
    bad = 0
    for lineno, line in enumerate(lines, start=2):
        cols = line.split("\t")
        try:
            if len(cols) != ncols:
                if not line.strip():
                    continue
                raise InputError(f"expected {ncols} tab-separated columns, got {len(cols)}")
            q = normalize(cols[qi])
            t = None
            if ti is not None:
                raw = cols[ti].strip()
                try:
                    t = fromiso(raw)
                except ValueError:
                    raise InputError(f"bad time {raw[:40]!r}") from None
        except InputError as exc:
            bad = _malformed(path, lineno, exc, skip, bad)
            continue
        user = cols[ui] if ui is not None else None
        if si is not None:
            session = cols[si] if user is None else f"{user}/{cols[si]}"
        elif split_by_gap:
            assert t is not None
            state = gap_state.get(user)
            if state is None:
                n = 0
            else:
                n = state[1] + 1 if t - state[0] > SESSION_GAP else state[1]
            gap_state[user] = (t, n)
            session = f"{user}/{n}" if user is not None else str(n)
        else:
            session = user if user is not None else "0"
        if not q or last_query.get(session) == q:
            continue
        last_query[session] = q
        events.append(LogEvent(session, q, t, user))
    return events, bad


def previous_queries(events: Iterable[LogEvent]) -> list[str | None]:
    """The previous query of each event: the query of the last earlier event of the
    same session, or None. The one definition of "the previous query" that training,
    evaluation, replay and tuning share; it needs each session's events in time order,
    not the sessions apart, so a log sorted by time (users interleaved, as a live
    service writes it) gives the same answers as one sorted by user."""
    last: dict[str, str] = {}
    out: list[str | None] = []
    for e in events:
        out.append(last.get(e.session))
        last[e.session] = e.query
    return out


def pairs(events: Iterable[LogEvent]) -> list[tuple[str | None, str]]:
    """(previous query in the same session or None, query) for every event, in log order."""
    events = list(events)
    return list(zip(previous_queries(events), (e.query for e in events), strict=True))


def query_counts(events: Iterable[LogEvent]) -> Counter[str]:
    """How often each (normalized) query occurs among the events."""
    return Counter(e.query for e in events)

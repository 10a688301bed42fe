"""Session stores: what a keystroke knows of its user, read in one round trip.

Per session id (use a stable user or device id, e.g. a first-party cookie, for the
history to be *personal*: it lives as long as its id does) a store keeps:

- the session's **recent** queries: the last ``max_queries`` (10) submitted queries
  with their Unix times, most recent first, kept ``ttl_seconds`` (30 min) after the
  last write; the head is the *previous query*;
- the user's **history**: up to ``history_size`` (200; 0 turns it off) DISTINCT
  queries, each with how many times it was submitted (``count``) and when last
  (``last``, Unix seconds), kept ``history_ttl_seconds`` (30 days) after the last
  write; when it is full, the least recently issued query is evicted first.

:meth:`SessionStore.record` ``(session, query, time=None)`` adds a submitted query to
both, atomically; the session's last query again within
:data:`~qac.history.REPEAT_SECONDS` is the same search and writes nothing (a retried
submit counts once, as the logs training reads count it).
:meth:`SessionStore.context` ``(session, prefix, n)`` returns a
:class:`~qac.history.SessionContext` for one keystroke: the previous query, the recent
list, and up to ``n`` history entries that START WITH the (normalized) prefix, most
recently issued first (for the empty prefix: the ``n`` most recently issued). Only
those entries travel: a keystroke never moves the whole history.

Two stores, one interface and the same semantics:

- :class:`MemorySessionStore`: in-process, bounded (LRU over at most ``max_sessions``
  sessions + the two TTLs), with a synchronous API for in-process simulation.
- :class:`RedisSessionStore`: Redis or Redis Cluster. Keys, all in the session's hash
  slot thanks to the braces (:func:`session_keys`)::

      qac:{<id>}:recent     list   "<unix time>\\t<query>", most recent first, capped
      qac:{<id>}:hist       hash   query -> count
      qac:{<id>}:hist:lex   zset   query, score 0: ZRANGEBYLEX [p [p\\xff finds a prefix
      qac:{<id>}:hist:time  zset   query, score = last time: eviction order, empty prefix

  A write is one Lua script (EVALSHA; atomic: all of it or nothing), a read another
  (one round trip). Failures:

  - Redis down, hung or unreachable: ``context`` returns an empty context and
    ``record`` raises :class:`~qac.errors.StoreUnavailable` (nothing written). The
    error is counted (:meth:`~SessionStore.stats`), logged at most once per
    ``log_interval``, and Redis is skipped for ``backoff_seconds`` so a dead Redis
    costs nothing per request; the first call after the back-off tries again.
  - Redis answers with an error (a refused write: OOM, read-only replica): that call
    fails (``record`` raises StoreUnavailable, so the caller knows the query was not
    recorded), it is counted as ``refused``, and nothing backs off: Redis is up.
  - Bad data under one session's keys (a key of the wrong type, bytes that are not
    UTF-8, an oversized or malformed entry): it costs only that session's context.
    A key of the wrong type is deleted (by the read or the next write, which then
    succeeds); a malformed entry is ignored; both are counted (``bad_keys``,
    ``bad_entries``) and never trip the back-off. Values longer than a stored query
    can be are cut off inside Redis, so they never cross the network.

:func:`make_store` picks one from a URL.

Inputs are checked at the edge: a session id is 1..64 characters of ``[A-Za-z0-9_-]``
(:data:`MAX_SESSION_CHARS`); a submitted query must be valid Unicode (no lone
surrogates), is normalized with :func:`qac.text.normalize` (an empty result is not
recorded) and must then be at most :data:`MAX_QUERY_CHARS` characters; ``time`` is
finite and >= 0. Each is an :class:`~qac.errors.InputError`, raised before anything is
written. Keys derive only from the validated id, so one session can never read
another's queries.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import collections
import hashlib
import logging
import math
import re
import threading
import time as _time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit, urlunsplit

from qac.errors import InputError, StoreUnavailable
from qac.history import REPEAT_SECONDS, Past, SessionContext
from qac.text import normalize, normalize_prefix

log = logging.getLogger(__name__)

MAX_SESSION_CHARS = 64
#: Most history entries one completion looks at, and the largest ``history_size``.
MAX_HISTORY = 1000
#: Bounds one stored query, hence the memory store at max_sessions x (max_queries +
#: history_size) x 256 characters and every Redis value at 256 characters.
MAX_QUERY_CHARS = 256
#: Defaults: recent queries kept per session and their TTL (30 min); history entries
#: kept per user and their TTL (30 days).
RECENT_SIZE = 10
RECENT_TTL_SECONDS = 1800
HISTORY_SIZE = 200
HISTORY_TTL_SECONDS = 30 * 86400
#: Latest accepted ``time`` (Unix seconds; year 36812): a bound, not a policy.
MAX_TIME = float(2**40)
_SESSION_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_SESSION_CHARS}}}")
#: The longest stored value in bytes: a time (<= 24 bytes), a tab and a query of
#: MAX_QUERY_CHARS characters of up to 4 UTF-8 bytes each. Longer values stay in Redis.
_MAX_VALUE_BYTES = 32 + 4 * MAX_QUERY_CHARS

#: URL schemes that select Redis Cluster in :func:`make_store` / :class:`RedisSessionStore`.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}

EMPTY = SessionContext()


class SessionKeys(NamedTuple):
    """The Redis keys of one session (one Cluster hash slot: the braces)."""

    recent: str
    counts: str
    lex: str
    times: str


def check_session(session: str) -> str:
    """Return ``session`` if it is a valid session id, else raise :class:`InputError`."""
    if not isinstance(session, str):
        raise InputError(f"session id must be a str, got {type(session).__name__}")
    if _SESSION_RE.fullmatch(session) is None:
        shown = session if len(session) <= 80 else session[:80] + "..."
        raise InputError(
            f"session id must be 1..{MAX_SESSION_CHARS} characters of [A-Za-z0-9_-], "
            f"got {shown!r} ({len(session)} characters)"
        )
    return session


def session_keys(session: str) -> SessionKeys:
    """The Redis keys of a session (validates the id)."""
    base = f"qac:{{{check_session(session)}}}:"
    return SessionKeys(base + "recent", base + "hist", base + "hist:lex", base + "hist:time")


def clean_query(query: str) -> str:
    """Normalize a submitted query; ``""`` means "nothing to record".

    Raises :class:`InputError` for a non-string, text that is not valid Unicode (a lone
    surrogate, which JSON can carry) or a query longer than :data:`MAX_QUERY_CHARS`
    after normalization.
    """
    if not isinstance(query, str):
        raise InputError(f"query must be a str, got {type(query).__name__}")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"query is not valid Unicode: a lone surrogate U+{ord(query[exc.start]):04X} "
            f"at character {exc.start}"
        ) from None
    q = normalize(query)
    if len(q) > MAX_QUERY_CHARS:
        raise InputError(
            f"query is {len(q)} characters long after normalization; "
            f"the session store keeps at most {MAX_QUERY_CHARS}"
        )
    return q


def clean_prefix(prefix: str) -> str:
    """The typed prefix as history entries are matched against it
    (:func:`qac.text.normalize_prefix`; raises InputError for text it cannot use)."""
    if not isinstance(prefix, str):
        raise InputError(f"prefix must be a str, got {type(prefix).__name__}")
    if not prefix:
        return ""
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        prefix = prefix.encode("utf-8", "replace").decode("utf-8")
    return normalize_prefix(prefix)


def check_time(time: float | None, clock: Callable[[], float]) -> float:
    """``time`` (Unix seconds) validated, or ``clock()`` when None."""
    if time is None:
        return float(clock())
    if isinstance(time, bool) or not isinstance(time, int | float):
        raise InputError(f"time must be Unix seconds (a number), got {time!r}")
    t = float(time)
    if not (math.isfinite(t) and 0 <= t <= MAX_TIME):
        raise InputError(f"time must be finite Unix seconds in 0..{MAX_TIME:.0f}, got {time!r}")
    return t


def _check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"{name} must be an int >= 0, got {n!r}")
    return n


def _check_history_size(history_size: int) -> int:
    if (isinstance(history_size, bool) or not isinstance(history_size, int)
            or not 0 <= history_size <= MAX_HISTORY):
        raise InputError(f"history_size must be an int in 0..{MAX_HISTORY} (0: no history), "
                         f"got {history_size!r}")
    return history_size


def _most_recent_first(entries: Sequence[Past], n: int) -> tuple[Past, ...]:
    """The ``n`` most recently issued entries, most recent first (ties: query, descending,
    as Redis's ZREVRANGE orders equal scores)."""
    ordered = sorted(entries, key=lambda e: (e.last, e.query), reverse=True)
    return tuple(ordered[:n])


class SessionStore(abc.ABC):
    """Where sessions' submitted queries live.

    ``record`` raises :class:`InputError` for a bad session id, query or time (before
    writing anything) and :class:`StoreUnavailable` when the query could not be
    recorded; ``context`` raises InputError for bad arguments and nothing else: a
    backend failure or bad stored data degrades to less context (see ``stats``).
    """

    @abc.abstractmethod
    async def record(self, session: str, query: str, time: float | None = None) -> str:
        """Record a submitted query at ``time`` (Unix seconds; default now).

        Returns the normalized query that was recorded, or ``""`` when nothing was (the
        query is empty after normalization)."""

    @abc.abstractmethod
    async def context(self, session: str, prefix: str = "", n: int = 0) -> SessionContext:
        """A keystroke's context: the previous query, the session's recent queries with
        their times, and up to ``n`` (at most ``history_size``) history entries that
        start with ``prefix`` after :func:`clean_prefix`, most recently issued first
        (for the empty prefix: the ``n`` most recently issued)."""

    async def previous(self, session: str) -> str | None:
        """The session's last submitted query, or None."""
        return (await self.context(session)).previous

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: at least ``backend``, ``available``, ``errors``,
        ``last_error``; numbers become ``qac_session_store{stat=...}`` in /metrics."""


# --------------------------------------------------------------------------- memory


class _Entry:
    """One session in the memory store."""

    __slots__ = ("history_until", "order", "past", "recent", "recent_until")

    def __init__(self, max_queries: int) -> None:
        self.recent: collections.deque[tuple[str, float]] = collections.deque(
            maxlen=max_queries)
        self.recent_until = float("-inf")
        self.past: dict[str, Past] = {}
        self.order: list[str] = []  # the history's queries, sorted: a prefix is a range
        self.history_until = float("-inf")

    @property
    def until(self) -> float:
        """When the whole session expires (both parts)."""
        return max(self.recent_until, self.history_until)

    def clear_history(self) -> None:
        self.past.clear()
        self.order.clear()


class MemorySessionStore(SessionStore):
    """In-process store: at most ``max_sessions`` sessions (least recently used evicted
    first). Each keeps its last ``max_queries`` queries for ``ttl_seconds`` and up to
    ``history_size`` distinct queries (0: none) for ``history_ttl_seconds`` after its
    last write (reads extend neither, as in Redis); a session is dropped when both have
    expired.

    Memory: a session with one query costs about 1.2 KB; a heavy one (200 distinct
    queries of ~20 characters) about 40 KB (each history entry is a string, a
    :class:`~qac.history.Past` and a slot in a dict and a sorted list). So
    ``max_sessions`` bounds memory at roughly max_sessions x 40 KB when every session
    is a heavy user: size it for the memory you have, turn history down
    (``history_size``; 0 when unused), or use Redis.

    Thread-safe. ``record`` is O(history_size) (a new query is inserted into the sorted
    list; a full history finds its least recent entry), ``context`` O(log h + matches).
    ``clock`` (monotonic seconds, for the TTLs) and ``wall`` (Unix seconds, the default
    ``time`` of a record) are injectable for tests.
    """

    def __init__(
        self,
        max_sessions: int = 100_000,
        max_queries: int = RECENT_SIZE,
        ttl_seconds: float = RECENT_TTL_SECONDS,
        *,
        history_size: int = HISTORY_SIZE,
        history_ttl_seconds: float = HISTORY_TTL_SECONDS,
        clock: Callable[[], float] = _time.monotonic,
        wall: Callable[[], float] = _time.time,
    ) -> None:
        for name, v in (
            ("max_sessions", max_sessions),
            ("max_queries", max_queries),
            ("ttl_seconds", ttl_seconds),
            ("history_ttl_seconds", history_ttl_seconds),
        ):
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise InputError(f"{name} must be a positive number, got {v!r}")
        _check_history_size(history_size)
        self.max_sessions = int(max_sessions)
        self.max_queries = int(max_queries)
        self.ttl_seconds = float(ttl_seconds)
        self.history_size = history_size
        self.history_ttl_seconds = float(history_ttl_seconds)
        self._clock = clock
        self._wall = wall
        # session -> its entry; order = least recently used first
        self._data: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._evicted = 0
        self._expired = 0

    def record_sync(self, session: str, query: str, time: float | None = None) -> str:
        """Synchronous :meth:`record`."""
        check_session(session)
        q = clean_query(query)
        t = check_time(time, self._wall)
        if not q:
            return ""
        now = self._clock()
        with self._lock:
            entry = self._data.get(session)
            if entry is None or entry.until <= now:
                entry = _Entry(self.max_queries)
            elif entry.recent_until <= now:
                entry.recent.clear()  # the history lives on
            elif entry.recent and _repeat(entry.recent[0], q, t):
                return q  # the same search (a retried submit): recorded already
            entry.recent.appendleft((q, t))
            entry.recent_until = now + self.ttl_seconds
            if self.history_size:
                self._add_past(entry, q, t, now)
            self._data[session] = entry
            self._data.move_to_end(session)
            self._drop_stale(now)
        return q

    def _add_past(self, entry: _Entry, q: str, t: float, now: float) -> None:
        if entry.history_until <= now:
            entry.clear_history()
        old = entry.past.get(q)
        if old is None:
            entry.past[q] = Past(q, 1, t)
            bisect.insort(entry.order, q)
            if len(entry.past) > self.history_size:  # evict the least recently issued
                victim = min(entry.past.values(), key=lambda e: (e.last, e.query)).query
                del entry.past[victim]
                del entry.order[bisect.bisect_left(entry.order, victim)]
        else:
            entry.past[q] = Past(q, old.count + 1, max(old.last, t))
        entry.history_until = now + self.history_ttl_seconds

    def _live(self, session: str, now: float) -> _Entry | None:
        # under the lock: the session's entry if any part of it is alive (then it
        # becomes the most recently used), else None (an expired one is dropped)
        entry = self._data.get(session)
        if entry is None:
            return None
        if entry.until <= now:
            del self._data[session]
            self._expired += 1
            return None
        self._data.move_to_end(session)
        return entry

    def context_sync(self, session: str, prefix: str = "", n: int = 0) -> SessionContext:
        """Synchronous :meth:`context`."""
        check_session(session)
        p = clean_prefix(prefix)
        n = min(_check_n(n), self.history_size)
        now = self._clock()
        with self._lock:
            entry = self._live(session, now)
            if entry is None:
                return EMPTY
            recent: tuple[tuple[str, float], ...] = ()
            if entry.recent_until > now:
                recent = tuple(entry.recent)
            history: tuple[Past, ...] = ()
            if n and entry.history_until > now and entry.past:
                past, order = entry.past, entry.order
                if p:
                    i = bisect.bisect_left(order, p)
                    matches = []
                    while i < len(order) and order[i].startswith(p):
                        matches.append(past[order[i]])
                        i += 1
                    history = _most_recent_first(matches, n)
                else:
                    history = _most_recent_first(list(past.values()), n)
        return SessionContext(recent[0][0] if recent else None, recent, history)

    def previous_sync(self, session: str) -> str | None:
        """Synchronous :meth:`previous`."""
        return self.context_sync(session).previous

    def _drop_stale(self, now: float) -> None:
        # Over capacity: evict the least recently used. Also drop a few expired entries
        # from the cold end, so expired sessions do not hold memory until evicted.
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)
            self._evicted += 1
        for _ in range(2):
            if not self._data:
                break
            oldest = next(iter(self._data))
            if self._data[oldest].until > now:
                break
            del self._data[oldest]
            self._expired += 1

    async def record(self, session: str, query: str, time: float | None = None) -> str:
        return self.record_sync(session, query, time)

    async def context(self, session: str, prefix: str = "", n: int = 0) -> SessionContext:
        return self.context_sync(session, prefix, n)

    async def close(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "available": True,
            "errors": 0,
            "last_error": None,
            "sessions": len(self._data),
            "evicted": self._evicted,
            "expired": self._expired,
        }


# --------------------------------------------------------------------------- Redis

# Both scripts take KEYS = session_keys(session) (recent, counts, lex, times).
# They never raise on bad data: a key of the wrong type is deleted and reported, and
# every value is checked where it is used.

# the write script's check of each key (writes are rare: a TYPE per key is cheap there)
_TYPES = """
local bad = {}
local function usable(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t == want then return true end
  if t ~= 'none' then
    redis.call('DEL', key)
    bad[#bad + 1] = key
  end
  return false
end
"""

#: ARGV: prefix, n, recent entries, lex scan limit, longest value (bytes).
#: Returns {bad keys, recent values, history queries, counts, times}: the history
#: entries that start with the prefix (the n most recently issued if there are more;
#: for the empty prefix the n most recent), in no particular order. A value longer
#: than the limit comes back as "" (it was not written by record). Each read is a
#: pcall: a key of the wrong type answers WRONGTYPE, and is then deleted and reported
#: (cheaper than a TYPE per key and keystroke). Times and counts of all the matches
#: come in one ZMSCORE and one HMGET.
READ_SCRIPT = r"""
local bad = {}
local gone = {}
local function get(key, ...)
  if gone[key] then return false end
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(r.err) end
    redis.call('DEL', key)
    bad[#bad + 1] = key
    gone[key] = true
    return false
  end
  return r
end
local maxlen = tonumber(ARGV[5])
local recent = {}
local nrecent = tonumber(ARGV[3])
if nrecent > 0 then
  recent = get(KEYS[1], 'LRANGE', KEYS[1], 0, nrecent - 1) or {}
  for i, v in ipairs(recent) do
    if #v > maxlen then recent[i] = '' end
  end
end
local qs, counts, times = {}, {}, {}
local n = tonumber(ARGV[2])
if n > 0 then
  local ms, ts = {}, {}
  local p = ARGV[1]
  if p == '' then
    local got = get(KEYS[4], 'ZREVRANGE', KEYS[4], 0, n - 1, 'WITHSCORES') or {}
    for i = 1, #got, 2 do
      ms[#ms + 1] = got[i]
      ts[#ts + 1] = got[i + 1]
    end
  else
    ms = get(KEYS[3], 'ZRANGEBYLEX', KEYS[3], '[' .. p, '[' .. p .. '\255',
             'LIMIT', 0, tonumber(ARGV[4])) or {}
    if #ms > 0 then ts = get(KEYS[4], 'ZMSCORE', KEYS[4], unpack(ms)) or {} end
    if #ms > n then  -- the n most recently issued (ZREVRANGE's order)
      local order = {}
      for i = 1, #ms do order[i] = {ms[i], ts[i] or '', tonumber(ts[i]) or -1} end
      table.sort(order, function(a, b)
        if a[3] ~= b[3] then return a[3] > b[3] end
        return a[1] > b[1]
      end)
      ms, ts = {}, {}
      for i = 1, n do
        ms[i] = order[i][1]
        ts[i] = order[i][2]
      end
    end
  end
  local cs = {}
  if #ms > 0 then cs = get(KEYS[2], 'HMGET', KEYS[2], unpack(ms)) or {} end
  for i = 1, #ms do
    if #ms[i] > maxlen then
      qs[i], counts[i] = '', ''
    else
      qs[i] = ms[i]
      counts[i] = cs[i] or ''
      if #counts[i] > 32 then counts[i] = '' end
    end
    times[i] = ts[i] or ''
  end
end
return {bad, recent, qs, counts, times}
"""

#: ARGV: query, time, recent entry, max_queries, ttl, history_size, history ttl,
#: repeat seconds. Reads and repairs first; after the first write nothing can fail,
#: so a write is all or nothing (Redis refuses an out-of-memory script at its first
#: write). A session repeating its last query within the repeat seconds writes
#: nothing (see :data:`qac.history.REPEAT_SECONDS`).
#: Returns {repaired keys, the query's count}.
WRITE_SCRIPT = _TYPES + r"""
local okr = usable(KEYS[1], 'list')
local q, t = ARGV[1], ARGV[2]
local size = tonumber(ARGV[6])
local count = 0
if size > 0 then
  usable(KEYS[2], 'hash')
  usable(KEYS[3], 'zset')
  usable(KEYS[4], 'zset')
  count = tonumber(redis.call('HGET', KEYS[2], q) or '0')
  if count == nil or count < 0 or count ~= math.floor(count) or count > 1e15 then
    count = 0
  end
  local old = redis.call('ZSCORE', KEYS[4], q)
  if old and tonumber(old) > tonumber(t) then t = old end
end
if okr then  -- the same search again: nothing to write
  local head = redis.call('LINDEX', KEYS[1], 0)
  local tab = head and string.find(head, '\t', 1, true)
  local last = tab and tonumber(string.sub(head, 1, tab - 1))
  if last and string.sub(head, tab + 1) == q and
      math.abs(tonumber(ARGV[2]) - last) < tonumber(ARGV[8]) then
    return {bad, count}
  end
end
redis.call('LPUSH', KEYS[1], ARGV[3])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
if size > 0 then
  count = count + 1
  redis.call('HSET', KEYS[2], q, string.format('%d', count))
  redis.call('ZADD', KEYS[3], 0, q)
  redis.call('ZADD', KEYS[4], t, q)
  -- evict the least recently issued beyond the cap (a bounded number per write)
  local over = math.min(redis.call('ZCARD', KEYS[4]) - size, 1000)
  if over > 0 then
    local victims = redis.call('ZRANGE', KEYS[4], 0, over - 1)
    for i = 1, #victims, 100 do
      local chunk = {}
      for j = i, math.min(i + 99, #victims) do chunk[#chunk + 1] = victims[j] end
      redis.call('ZREM', KEYS[4], unpack(chunk))
      redis.call('ZREM', KEYS[3], unpack(chunk))
      redis.call('HDEL', KEYS[2], unpack(chunk))
    end
  end
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
end
return {bad, count}
"""


def _repeat(last: tuple[str, float], q: str, t: float) -> bool:
    """Whether recording ``q`` at ``t`` after the session's ``last`` (query, time) is
    the same search again (:data:`qac.history.REPEAT_SECONDS`)."""
    return last[0] == q and abs(t - last[1]) < REPEAT_SECONDS


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _answered(exc: BaseException) -> bool:
    """Whether Redis itself answered with this error (it is up: no back-off), as opposed
    to a connection failure, a timeout or a cluster that cannot serve the slot."""
    from redis.exceptions import ClusterError, ResponseError, TryAgainError

    return isinstance(exc, ResponseError) and not isinstance(exc, ClusterError | TryAgainError)


def _decode_query(raw: Any) -> str | None:
    """A stored query, or None if ``raw`` is not one ``record`` could have written."""
    if raw.__class__ is not bytes:
        return None
    try:
        q: str = raw.decode()  # strict UTF-8: invalid bytes and surrogates are refused
    except UnicodeDecodeError:
        return None
    # normalized text is printable (no control, format or unassigned character), with
    # single spaces inside only
    if (not q or len(q) > MAX_QUERY_CHARS or not q.isprintable() or q[0] == " "
            or q[-1] == " " or "  " in q):
        return None
    return q


def _decode_time(raw: Any) -> float | None:
    try:
        t = float(raw)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and 0 <= t <= MAX_TIME else None


class _Pipe(asyncio.Protocol):
    """One pipelined RESP2 connection to a single Redis: commands are written as they
    come and answered in order (a FIFO of futures), replies parsed by hiredis.

    The per-keystroke path: about a fifth of redis-py's CPU per call (its connection
    pool, retry wrapper and stream reader cost ~100 us a call on this machine). A
    timed-out call leaves its future in the queue, so later replies still meet their
    callers; the store closes the connection after a timeout, failing what waits.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except Exception as exc:  # noqa: BLE001 - a protocol error ends the connection
                self.close(exc)
                return
            if reply is False:
                return
            if not self.waiting:
                self.close(ConnectionError("reply with no request"))
                return
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.lost = RedisConnectionError(f"connection lost: {exc or 'closed by Redis'}")
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)

    def close(self, why: BaseException | None = None) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails what still waits
        if self.lost is None:
            self.lost = why or ConnectionError("closed")

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise self.lost or ConnectionError("not connected")
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.transport.write(packed)
        return fut


def _pack(*args: Any) -> bytes:
    """A RESP2 command."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _reply_error(message: str) -> Exception:
    """redis-py's exception for an error reply (so failures are classified alike)."""
    from redis.exceptions import (
        BusyLoadingError,
        NoScriptError,
        OutOfMemoryError,
        ReadOnlyError,
        ResponseError,
    )

    code = message.split(" ", 1)[0]
    kind = {"NOSCRIPT": NoScriptError, "OOM": OutOfMemoryError, "READONLY": ReadOnlyError,
            "LOADING": BusyLoadingError}.get(code, ResponseError)
    return kind(message)


class _Lean:
    """A minimal client for the store's scripts on one Redis (not a cluster, not TLS):
    one pipelined connection, opened on first use and again after any failure."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        import hiredis

        parts = urlsplit(url)
        self._hiredis = hiredis
        self.unix = parts.scheme == "unix"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.path = parts.path
        db = parts.path.lstrip("/") if not self.unix else ""
        if self.unix:
            from urllib.parse import parse_qs

            db = (parse_qs(parts.query).get("db") or [""])[0]
        self.db = int(db) if db else 0
        self.username = parts.username
        self.password = parts.password
        self.connect_timeout = connect_timeout
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None

    async def _connect(self) -> _Pipe:
        from redis.exceptions import ConnectionError as RedisConnectionError

        loop = asyncio.get_running_loop()
        reader = self._hiredis.Reader(replyError=self._hiredis.ReplyError)
        where = self.path if self.unix else f"{self.host}:{self.port}"
        async with asyncio.timeout(self.connect_timeout):
            try:
                if self.unix:
                    _, pipe = await loop.create_unix_connection(lambda: _Pipe(reader),
                                                                self.path)
                else:
                    _, pipe = await loop.create_connection(lambda: _Pipe(reader), self.host,
                                                           self.port)
            except OSError as exc:
                raise RedisConnectionError(f"connecting to {where}: {exc}") from None
            if self.password is not None or self.db:
                hello = []
                if self.password is not None:
                    auth = ((self.username, self.password) if self.username
                            else (self.password,))
                    hello.append(pipe.call(_pack("AUTH", *auth)))
                if self.db:
                    hello.append(pipe.call(_pack("SELECT", self.db)))
                for reply in await asyncio.gather(*hello):
                    if isinstance(reply, self._hiredis.ReplyError):
                        pipe.close()
                        raise _reply_error(str(reply))
        return pipe

    async def _get(self) -> _Pipe:
        pipe = self._pipe
        if pipe is not None and pipe.lost is None:
            return pipe
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            pipe = await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
        self._pipe = pipe
        return pipe

    async def call(self, *args: Any) -> Any:
        pipe = await self._get()
        reply = await pipe.call(_pack(*args))
        if isinstance(reply, self._hiredis.ReplyError):
            raise _reply_error(str(reply))
        return reply

    def drop(self) -> None:
        """Close the connection (after a timeout: its queue may be stuck behind a hang)."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    async def aclose(self) -> None:
        self.drop()
        if self._connecting is not None:
            self._connecting.cancel()


def _cluster_url(url: str, cluster: bool | None) -> tuple[str, bool]:
    """Map ``redis+cluster://`` to ``redis://`` and decide whether ``url`` is a cluster."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        if cluster is False:
            raise InputError(f"URL {url!r} names a Redis Cluster but cluster=False was given")
        return urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[scheme])), True
    if scheme not in _REDIS_SCHEMES:
        raise InputError(
            f"Redis URL must start with redis://, rediss://, unix://, redis+cluster:// or "
            f"rediss+cluster://, got {url!r}"
        )
    if cluster and scheme == "unix":
        raise InputError(f"Redis Cluster needs a TCP URL, got {url!r}")
    return url, bool(cluster)


class RedisSessionStore(SessionStore):
    """Sessions in Redis or Redis Cluster (``redis.asyncio``; hiredis parses replies
    when installed). See the module docstring for the keys and the failure modes.

    ``url``: ``redis://[user:pass@]host:port[/db]``, ``rediss://...`` (TLS),
    ``unix:///path/redis.sock``, or for Redis Cluster ``redis+cluster://host:port`` /
    ``rediss+cluster://host:port`` (any node; the others are discovered), or a plain
    ``redis://`` URL with ``cluster=True``.

    Each call is one EVALSHA (the script is sent with EVAL once per Redis process that
    lacks it, e.g. after a restart). Timeouts: connect and socket timeouts are
    ``socket_timeout`` seconds, redis-py's own retries are off, and one call is cut off
    after ``deadline_seconds`` in all (default ``3 * socket_timeout``). After a failure
    to reach Redis every call skips it for ``backoff_seconds``. ``log_interval``: at
    most one warning per that many seconds for each kind of trouble. ``clock``
    (monotonic seconds) and ``wall`` (Unix seconds, the default ``time`` of a record)
    are injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        max_queries: int = RECENT_SIZE,
        ttl_seconds: int = RECENT_TTL_SECONDS,
        history_size: int = HISTORY_SIZE,
        history_ttl_seconds: int = HISTORY_TTL_SECONDS,
        socket_timeout: float = 0.05,
        cluster: bool | None = None,
        deadline_seconds: float | None = None,
        backoff_seconds: float = 0.2,
        log_interval: float = 10.0,
        clock: Callable[[], float] = _time.monotonic,
        wall: Callable[[], float] = _time.time,
    ) -> None:
        if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
            raise InputError(f"max_queries must be an int >= 1, got {max_queries!r}")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise InputError(f"ttl_seconds must be an int >= 1 (Redis EXPIRE), got {ttl_seconds!r}")
        _check_history_size(history_size)
        if (isinstance(history_ttl_seconds, bool) or not isinstance(history_ttl_seconds, int)
                or history_ttl_seconds < 1):
            raise InputError("history_ttl_seconds must be an int >= 1 (Redis EXPIRE), "
                             f"got {history_ttl_seconds!r}")
        if not socket_timeout > 0:
            raise InputError(f"socket_timeout must be > 0 seconds, got {socket_timeout!r}")
        if not backoff_seconds >= 0 or not log_interval >= 0:
            raise InputError("backoff_seconds and log_interval must be >= 0")
        self.max_queries = max_queries
        self.ttl_seconds = ttl_seconds
        self.history_size = history_size
        self.history_ttl_seconds = history_ttl_seconds
        self.socket_timeout = float(socket_timeout)
        self.deadline_seconds = (
            3 * self.socket_timeout if deadline_seconds is None else float(deadline_seconds)
        )
        self.backoff_seconds = float(backoff_seconds)
        self.log_interval = float(log_interval)
        self._clock = clock
        self._wall = wall
        client_url, self.cluster = _cluster_url(url, cluster)
        self._client = self._make_client(client_url)
        # the per-keystroke calls go through a lean pipelined connection where it can
        # serve (one Redis, no TLS, hiredis installed); a cluster, TLS or a missing
        # hiredis use redis-py's client for everything
        self._lean = (_Lean(client_url, self.socket_timeout)
                      if not self.cluster and urlsplit(client_url).scheme in ("redis", "unix")
                      and _hiredis() else None)
        parsed = urlsplit(url)  # for logs and stats: never the password
        where = f"{parsed.hostname}:{parsed.port or 6379}" if parsed.hostname else parsed.path
        self._where = f"{parsed.scheme}://{where}"
        self._scripts = {READ_SCRIPT: _sha1(READ_SCRIPT), WRITE_SCRIPT: _sha1(WRITE_SCRIPT)}
        # the lex scan of a prefix reads at most this many members (all of a full history)
        self._scan = max(self.history_size, 1)

        self._skip_until = float("-inf")
        self._available = True
        self._errors = 0
        self._refused = 0
        self._skipped = 0
        self._ops = 0
        self._bad_keys = 0
        self._bad_entries = 0
        self._last_error: str | None = None
        self._last_log: dict[str, float] = {}
        self._unlogged: collections.Counter[str] = collections.Counter()

    def _make_client(self, url: str) -> Any:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Retries are ours (back-off, then try again); redis-py's would multiply the
        # worst-case latency of a request by the retry count. Replies stay bytes: each
        # value is decoded (and checked) on its own, so bad bytes cost only their entry.
        common: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "decode_responses": False,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(url, **common)
        from redis.asyncio import Redis

        return Redis.from_url(url, retry_on_timeout=False, **common)

    @property
    def client(self) -> Any:
        """The underlying ``redis.asyncio`` client (``Redis`` or ``RedisCluster``)."""
        return self._client

    async def _run(self, script: str, keys: SessionKeys, args: Sequence[Any]) -> Any:
        """One script call: EVALSHA, or EVAL when this Redis does not hold the script."""
        from redis.exceptions import NoScriptError

        lean = self._lean
        try:
            if lean is not None:
                return await lean.call("EVALSHA", self._scripts[script], len(keys), *keys,
                                       *args)
            return await self._client.evalsha(self._scripts[script], len(keys), *keys, *args)
        except NoScriptError:
            if lean is not None:
                return await lean.call("EVAL", script, len(keys), *keys, *args)
            return await self._client.eval(script, len(keys), *keys, *args)

    def _skip(self) -> bool:
        if self._clock() < self._skip_until:
            self._skipped += 1
            return True
        return False

    def _ok(self) -> None:
        self._ops += 1
        if not self._available:
            log.info("session store %s reachable again", self._where)
        self._available = True

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message`` at most once per ``log_interval`` per ``kind``."""
        now = self._clock()
        self._unlogged[kind] += 1
        if now - self._last_log.get(kind, float("-inf")) >= self.log_interval:
            log.warning(message + " (%d time(s) since the last report)",
                        *args, self._unlogged[kind])
            self._last_log[kind] = now
            self._unlogged[kind] = 0

    def _fail(self, op: str, exc: BaseException) -> str:
        """Count a failed call; back off if Redis could not be reached. Returns why."""
        why = f"{op}: {type(exc).__name__}: {exc}"
        self._last_error = why
        if self._lean is not None and not _answered(exc):
            self._lean.drop()  # a new connection next time, not a queue behind a hang
        if _answered(exc):
            self._refused += 1
            self._warn("refused", "session store %s refused a call (Redis is up, no "
                       "back-off): %s", self._where, why)
            return why
        self._errors += 1
        self._available = False
        self._skip_until = self._clock() + self.backoff_seconds
        self._warn("down", "session store %s unavailable (%d error(s) in all); serving "
                   "without session context; last: %s", self._where, self._errors, why)
        return why

    def _bad(self, session: str, keys: int, entries: int) -> None:
        self._bad_keys += keys
        self._bad_entries += entries
        self._warn("bad", "session %s: %d key(s) of the wrong type deleted, %d malformed "
                   "entr(y/ies) ignored; that session answers without them",
                   session, keys, entries)

    async def record(self, session: str, query: str, time: float | None = None) -> str:
        keys = session_keys(session)
        q = clean_query(query)
        t = check_time(time, self._wall)
        if not q:
            return ""
        if self._skip():
            raise StoreUnavailable(f"session store {self._where} unavailable (backing off "
                                   f"after: {self._last_error}); the query was not recorded")
        stamp = repr(t)
        args = (q, stamp, f"{stamp}\t{q}", self.max_queries, self.ttl_seconds,
                self.history_size, self.history_ttl_seconds, REPEAT_SECONDS)
        try:
            async with asyncio.timeout(self.deadline_seconds):
                got = await self._run(WRITE_SCRIPT, keys, args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes StoreUnavailable
            why = self._fail("record", exc)
            raise StoreUnavailable(f"session store {self._where} did not record the "
                                   f"query ({why})") from None
        self._ok()
        try:
            repaired = len(got[0])
        except (TypeError, IndexError):
            repaired = 0
        if repaired:
            self._bad(session, repaired, 0)
        return q

    async def context(self, session: str, prefix: str = "", n: int = 0) -> SessionContext:
        keys = session_keys(session)
        p = clean_prefix(prefix)
        n = min(_check_n(n), self.history_size)
        if len(p) > MAX_QUERY_CHARS:
            n = 0  # no stored query starts with it
        if self._skip():
            return EMPTY
        args = (p, n, self.max_queries, self._scan, _MAX_VALUE_BYTES)
        try:
            async with asyncio.timeout(self.deadline_seconds):
                got = await self._run(READ_SCRIPT, keys, args)
        except Exception as exc:  # noqa: BLE001 - any failure must only cost context
            self._fail("context", exc)
            return EMPTY
        self._ok()
        return self._parse(session, got)

    def _parse(self, session: str, got: Any) -> SessionContext:
        """The script's reply as a context, entry by entry: what is malformed is left
        out and counted. (Inlined loops: this runs on every keystroke.)"""
        decode_query, decode_time = _decode_query, _decode_time
        try:
            bad_keys, raw_recent, raw_qs, raw_counts, raw_times = got
            bad = 0
            recent: list[tuple[str, float]] = []
            previous: str | None = None
            for i, raw in enumerate(raw_recent):
                q = t = None
                if raw.__class__ is bytes:
                    stamp, tab, rq = raw.partition(b"\t")
                    if tab:
                        q, t = decode_query(rq), decode_time(stamp)
                if q is None or t is None:
                    bad += 1
                    continue
                if i == 0:
                    previous = q
                recent.append((q, t))
            history: list[Past] = []
            for rq, rc, rt in zip(raw_qs, raw_counts, raw_times, strict=True):
                q, t = decode_query(rq), decode_time(rt)
                try:
                    c = int(rc)
                except (TypeError, ValueError):
                    c = 0
                if q is None or t is None or c < 1:
                    bad += 1
                    continue
                history.append(Past(q, c, t))
        except (TypeError, ValueError) as exc:  # not the script's reply shape at all
            self._bad(session, 0, 1)
            log.debug("session %s: unexpected reply %r (%s)", session, got, exc)
            return EMPTY
        if bad_keys or bad:
            self._bad(session, len(bad_keys), bad)
        if len(history) > 1:  # most recently issued first (the script sorts only a cut)
            history.sort(key=lambda e: (e.last, e.query), reverse=True)
        return SessionContext(previous, tuple(recent), tuple(history))

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        try:
            await self._client.aclose()
        except Exception as exc:  # noqa: BLE001 - closing a dead connection may fail
            log.debug("closing session store %s: %s", self._where, exc)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis-cluster" if self.cluster else "redis",
            "url": self._where,
            "available": self._available,
            "errors": self._errors,
            "refused": self._refused,
            "skipped": self._skipped,
            "ok": self._ops,
            "bad_keys": self._bad_keys,
            "bad_entries": self._bad_entries,
            "last_error": self._last_error,
            "parser": "hiredis" if _hiredis() else "python",
            "client": "lean" if self._lean is not None else "redis-py",
        }


def _hiredis() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


def make_store(url: str | None, **options: Any) -> SessionStore:
    """The session store for ``url``: None or "" -> :class:`MemorySessionStore`;
    ``redis://``, ``rediss://``, ``unix://`` -> :class:`RedisSessionStore`;
    ``redis+cluster://`` / ``rediss+cluster://`` -> a Redis Cluster store.

    ``options`` go to the store's constructor.
    """
    if not url:
        return MemorySessionStore(**options)
    return RedisSessionStore(url, **options)

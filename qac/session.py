"""Session context: a session's last few queries and its longer query history.

Each session id has two lists, most recent first:

- ``recent``: the last ``max_queries`` (10) submitted queries, kept ``ttl_seconds``
  (30 min) after the session's last write; its head is the *previous query* a
  completion is conditioned on.
- ``history``: the session's last ``history_size`` (200; 0 turns it off) DISTINCT
  queries (a repeated query moves to the front), kept ``history_ttl_seconds``
  (30 days) after the last write; completion's long-tail ``history`` generator
  suggests the user's own past queries from it. For that to be *personal* history,
  the session id must be a stable user or device id (e.g. a first-party cookie), not
  a per-visit one: history lives as long as its id does.

:meth:`SessionStore.context` reads both (previous query + up to ``n`` history entries)
in one call, one Redis round trip. Two stores share one async interface,
:class:`SessionStore`:

- :class:`MemorySessionStore`: in-process, bounded (LRU over at most ``max_sessions``
  sessions + the two TTLs); the embedded default, with a synchronous API for
  in-process simulation. Memory: at most ``max_sessions x (max_queries +
  history_size)`` stored queries of <= :data:`MAX_QUERY_CHARS` characters (a query in
  both lists is one string); see the class for measured figures.
- :class:`RedisSessionStore`: per session, the capped lists ``qac:{<session>}:recent``
  and ``qac:{<session>}:history`` in Redis (or Redis Cluster; the braces put both keys
  in one hash slot). A write updates both in one pipeline and a read is one pipeline:
  one round trip each. It never fails or stalls a completion: on any Redis error or
  timeout ``recent`` returns ``[]``, ``context`` returns ``(None, [])`` and ``record``
  drops the write, the error is counted (:meth:`SessionStore.stats`) and logged at
  most once per ``log_interval``, and after a failure Redis is skipped for
  ``backoff_seconds`` so a dead Redis costs nothing per request; the first call after
  the back-off tries again, so context comes back by itself shortly after Redis does.

:func:`make_store` picks one from a URL.

Inputs are checked at the edge: a session id is 1..64 characters of ``[A-Za-z0-9_-]``
(:data:`MAX_SESSION_CHARS`), and a query is normalized with :func:`qac.text.normalize`
(an empty result is not recorded; longer than :data:`MAX_QUERY_CHARS` after
normalization is an :class:`~qac.errors.InputError`). Keys derive only from the
validated id, so one session can never read another's queries.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from qac.errors import InputError
from qac.text import normalize

log = logging.getLogger(__name__)

MAX_SESSION_CHARS = 64
#: Most history entries one completion looks at (and the largest history a store keeps
#: per session that a completion can use).
MAX_HISTORY = 1000
#: Bounds one stored query, hence the memory store at max_sessions x (max_queries +
#: history_size) x 256 characters and every Redis list at its cap x 256 characters.
MAX_QUERY_CHARS = 256
#: Defaults of the history list: entries kept per session, and its TTL (30 days).
HISTORY_SIZE = 200
HISTORY_TTL_SECONDS = 30 * 86400
_SESSION_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_SESSION_CHARS}}}")

#: URL schemes that select Redis Cluster in :func:`make_store` / :class:`RedisSessionStore`.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}


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


def clean_query(query: str) -> str:
    """Normalize a submitted query; ``""`` means "nothing to record".

    Raises :class:`InputError` for a non-string or a query longer than
    :data:`MAX_QUERY_CHARS` after normalization.
    """
    q = normalize(query)
    if len(q) > MAX_QUERY_CHARS:
        raise InputError(
            f"query is {len(q)} characters long after normalization; "
            f"the session store keeps at most {MAX_QUERY_CHARS}"
        )
    return q


def session_key(session: str) -> str:
    """The Redis key of a session's recent queries (braces: one Cluster hash slot)."""
    return f"qac:{{{check_session(session)}}}:recent"


def history_key(session: str) -> str:
    """The Redis key of a session's query history (same hash slot as :func:`session_key`)."""
    return f"qac:{{{check_session(session)}}}:history"


def _check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"{name} must be an int >= 0, got {n!r}")
    return n


def _check_history_size(history_size: int) -> int:
    if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
        raise InputError(f"history_size must be an int >= 0 (0: no history), got {history_size!r}")
    return history_size


class SessionStore(abc.ABC):
    """Where a session's submitted queries live; every method is safe on any input.

    ``record``, ``recent`` and ``context`` raise :class:`InputError` for a bad session
    id, query or count and nothing else: a backend failure degrades to "no context"
    (see ``stats``).
    """

    @abc.abstractmethod
    async def record(self, session: str, query: str) -> None:
        """Remember a submitted query (normalized; an empty one is ignored): at the
        front of the recent list, and moved to the front of the history list."""

    @abc.abstractmethod
    async def recent(self, session: str, n: int = 5) -> list[str]:
        """Up to ``n`` of the session's queries, most recent first."""

    @abc.abstractmethod
    async def context(self, session: str, history: int) -> tuple[str | None, list[str]]:
        """What a completion needs, in one call: ``(previous query or None, up to
        history distinct past queries, most recent first)``."""

    async def previous(self, session: str) -> str | None:
        """The session's last submitted query, or None."""
        got = await self.recent(session, 1)
        return got[0] if got else None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: at least ``backend``, ``available``, ``errors``,
        ``last_error``."""


class _Entry:
    """One session in the memory store: both lists and the time each expires."""

    __slots__ = ("history", "history_until", "recent", "recent_until")

    def __init__(self, max_queries: int, history: bool) -> None:
        self.recent: collections.deque[str] = collections.deque(maxlen=max_queries)
        self.recent_until = float("-inf")
        # a list, not a deque: an empty deque costs ~600 bytes, a list 56 (+8 per entry),
        # and moving a query to the front of <= history_size entries is a short memmove
        self.history: list[str] | None = [] if history else None
        self.history_until = float("-inf")

    @property
    def until(self) -> float:
        """When the whole session expires (both lists)."""
        return max(self.recent_until, self.history_until)


class MemorySessionStore(SessionStore):
    """In-process store: at most ``max_sessions`` sessions (least recently used evicted
    first). Each keeps its last ``max_queries`` queries for ``ttl_seconds`` and its last
    ``history_size`` distinct queries (0: none) for ``history_ttl_seconds`` after its
    last write (reads do not extend either, as in Redis); a session is dropped when
    both have expired.

    Memory (measured, CPython 3.11): a session with one query costs ~1.1 KB (~1.2 KB
    with history on); each further query adds 8 bytes per list it is in plus one
    string (~50 bytes + 1 per ASCII character; a query in both lists is one string).
    With the defaults a heavy session (200 distinct queries of ~20 characters) is ~17
    KB, the worst case (210 queries of :data:`MAX_QUERY_CHARS` characters) ~64 KB. So
    ``max_sessions`` bounds memory at roughly max_sessions x 17 KB when every session
    is a heavy user (100,000 -> ~1.7 GB; ~6.4 GB worst case): size it for the memory
    you have, turn history down (``history_size``; 0 when unused), or use Redis.

    Thread-safe; ``record`` is O(history_size) (a repeated query is moved to the front
    of the history), the rest O(1) amortized or O(entries read). ``clock`` (seconds,
    monotonic) is injectable for tests.
    """

    def __init__(
        self,
        max_sessions: int = 100_000,
        max_queries: int = 10,
        ttl_seconds: float = 1800,
        *,
        history_size: int = HISTORY_SIZE,
        history_ttl_seconds: float = HISTORY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
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
        # session -> its lists; order = least recently used first
        self._data: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._evicted = 0
        self._expired = 0

    def record_sync(self, session: str, query: str) -> None:
        """Synchronous :meth:`record`."""
        check_session(session)
        q = clean_query(query)
        if not q:
            return
        now = self._clock()
        with self._lock:
            entry = self._data.get(session)
            if entry is None or entry.until <= now:
                entry = _Entry(self.max_queries, self.history_size > 0)
            elif entry.recent_until <= now:
                entry.recent.clear()  # the history lives on
            entry.recent.appendleft(q)
            entry.recent_until = now + self.ttl_seconds
            history = entry.history
            if history is not None:
                if entry.history_until <= now:
                    history.clear()
                elif q in history:
                    history.remove(q)  # distinct: a repeat moves to the front
                history.insert(0, q)
                del history[self.history_size:]  # the cap drops the oldest
                entry.history_until = now + self.history_ttl_seconds
            self._data[session] = entry
            self._data.move_to_end(session)
            self._drop_stale(now)

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

    def recent_sync(self, session: str, n: int = 5) -> list[str]:
        """Synchronous :meth:`recent`."""
        check_session(session)
        n = _check_n(n)
        now = self._clock()
        with self._lock:
            entry = self._live(session, now)
            if entry is None or entry.recent_until <= now:
                return []
            return list(itertools.islice(entry.recent, n))

    def previous_sync(self, session: str) -> str | None:
        """Synchronous :meth:`previous`."""
        got = self.recent_sync(session, 1)
        return got[0] if got else None

    def context_sync(self, session: str, history: int) -> tuple[str | None, list[str]]:
        """Synchronous :meth:`context`."""
        check_session(session)
        n = _check_n(history, "history")
        now = self._clock()
        with self._lock:
            entry = self._live(session, now)
            if entry is None:
                return None, []
            previous = entry.recent[0] if entry.recent and entry.recent_until > now else None
            past: list[str] = []
            if n and entry.history is not None and entry.history_until > now:
                past = entry.history[:n]
            return previous, past

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

    async def record(self, session: str, query: str) -> None:
        self.record_sync(session, query)

    async def recent(self, session: str, n: int = 5) -> list[str]:
        return self.recent_sync(session, n)

    async def context(self, session: str, history: int) -> tuple[str | None, list[str]]:
        return self.context_sync(session, history)

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
    """Session lists in Redis (``redis.asyncio``; hiredis parses replies when installed).

    Each session is two lists, ``qac:{<session>}:recent`` and ``qac:{<session>}:history``.
    A write is one pipeline (one round trip; all keys of a session share a hash slot, so
    this also holds on a cluster): LPUSH recent + LTRIM to ``max_queries`` + EXPIRE
    ``ttl_seconds``, then (unless ``history_size`` is 0) LREM history (every equal
    entry) + LPUSH + LTRIM to ``history_size`` + EXPIRE ``history_ttl_seconds``. The
    pipeline is not a transaction: two workers recording the same query for the same
    session at the same instant can leave a duplicate, which the next record of that
    query removes and :meth:`context` never returns. :meth:`recent` is one LRANGE,
    :meth:`context` one pipeline of two LRANGEs.

    ``url``: ``redis://[user:pass@]host:port[/db]``, ``rediss://...`` (TLS),
    ``unix:///path/redis.sock``, or for Redis Cluster ``redis+cluster://host:port`` /
    ``rediss+cluster://host:port`` (any node; the others are discovered), or a plain
    ``redis://`` URL with ``cluster=True``.

    Timeouts: connect and socket timeouts are ``socket_timeout`` seconds, redis-py's own
    retries are off, and one call is cut off after ``deadline_seconds`` in all (default
    ``3 * socket_timeout``), so a hung Redis costs one request at most that long. After a
    failure every call skips Redis for ``backoff_seconds``; the first call after that tries
    again. ``log_interval``: at most one warning per that many seconds, with the number of
    errors since the previous one. ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        max_queries: int = 10,
        ttl_seconds: int = 1800,
        history_size: int = HISTORY_SIZE,
        history_ttl_seconds: int = HISTORY_TTL_SECONDS,
        socket_timeout: float = 0.05,
        cluster: bool | None = None,
        deadline_seconds: float | None = None,
        backoff_seconds: float = 0.2,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
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
        client_url, self.cluster = _cluster_url(url, cluster)
        self._client = self._make_client(client_url)
        parsed = urlsplit(url)  # for logs and stats: never the password
        where = f"{parsed.hostname}:{parsed.port or 6379}" if parsed.hostname else parsed.path
        self._where = f"{parsed.scheme}://{where}"

        self._skip_until = float("-inf")
        self._available = True
        self._errors = 0
        self._skipped = 0
        self._ops = 0
        self._last_error: str | None = None
        self._last_log = float("-inf")
        self._unlogged = 0

    def _make_client(self, url: str) -> Any:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Retries are ours (back-off, then try again); redis-py's would multiply the
        # worst-case latency of a request by the retry count.
        common: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "decode_responses": True,
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

    def _fail(self, op: str, exc: BaseException) -> None:
        now = self._clock()
        self._errors += 1
        self._unlogged += 1
        self._available = False
        self._skip_until = now + self.backoff_seconds
        self._last_error = f"{op}: {type(exc).__name__}: {exc}"
        if now - self._last_log >= self.log_interval:
            log.warning(
                "session store %s unavailable (%d error(s) since last report, %d in all); "
                "serving without session context; last: %s",
                self._where,
                self._unlogged,
                self._errors,
                self._last_error,
            )
            self._last_log = now
            self._unlogged = 0

    async def record(self, session: str, query: str) -> None:
        key = session_key(session)
        q = clean_query(query)
        if not q or self._skip():
            return
        try:
            async with asyncio.timeout(self.deadline_seconds):
                pipe = self._client.pipeline(transaction=False)
                pipe.lpush(key, q)
                pipe.ltrim(key, 0, self.max_queries - 1)
                pipe.expire(key, self.ttl_seconds)
                if self.history_size:
                    hkey = history_key(session)
                    pipe.lrem(hkey, 0, q)
                    pipe.lpush(hkey, q)
                    pipe.ltrim(hkey, 0, self.history_size - 1)
                    pipe.expire(hkey, self.history_ttl_seconds)
                await pipe.execute()
        except Exception as exc:  # any failure must only cost context
            self._fail("record", exc)
            return
        self._ok()

    async def recent(self, session: str, n: int = 5) -> list[str]:
        key = session_key(session)
        n = min(_check_n(n), self.max_queries)
        if n == 0 or self._skip():
            return []
        try:
            async with asyncio.timeout(self.deadline_seconds):
                got = await self._client.lrange(key, 0, n - 1)
        except Exception as exc:  # any failure must only cost context
            self._fail("recent", exc)
            return []
        self._ok()
        return [str(q) for q in got]

    async def context(self, session: str, history: int) -> tuple[str | None, list[str]]:
        key, hkey = session_key(session), history_key(session)
        n = min(_check_n(history, "history"), self.history_size)
        if self._skip():
            return None, []
        try:
            async with asyncio.timeout(self.deadline_seconds):
                pipe = self._client.pipeline(transaction=False)
                pipe.lrange(key, 0, 0)
                if n:
                    pipe.lrange(hkey, 0, n - 1)
                got = await pipe.execute()
        except Exception as exc:  # any failure must only cost context
            self._fail("context", exc)
            return None, []
        self._ok()
        previous = str(got[0][0]) if got[0] else None
        # distinct even after a rare concurrent-record duplicate (see the class)
        past = list(dict.fromkeys(str(q) for q in got[1])) if n else []
        return previous, past

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a dead connection may fail
            log.debug("closing session store %s: %s", self._where, exc)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis-cluster" if self.cluster else "redis",
            "url": self._where,
            "available": self._available,
            "errors": self._errors,
            "skipped": self._skipped,
            "ok": self._ops,
            "last_error": self._last_error,
            "parser": "hiredis" if _hiredis() else "python",
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

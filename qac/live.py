"""Live: the event stream, each process's live overlay and the live blocklist.

A submitted query becomes an **event** ``(session, query, time)``:

- appended to a Redis Stream (:class:`EventStream`, key ``qac:events`` by default,
  capped by length with ``MAXLEN ~`` on every append and by age with ``XTRIM MINID ~``
  at most every ``trim_seconds``); with ``shards`` > 1, to one of ``shards`` streams
  ``<key>:{<i>}`` chosen by the query's CRC-32 (each its own Redis Cluster hash slot,
  so shards spread over the masters; one query's events stay in one shard, in order);
- or, in embedded use (``Completer.observe``) and in ``qac serve`` without Redis,
  handed straight to this process's overlay.

Every serving process tails the stream (:class:`StreamTail`, one background thread:
``XREAD BLOCK`` from its last id per shard, so each event is applied once, in order)
into an :class:`Overlay` bound to the loaded model:

- ``label_live`` float64 [labels]: the time-decayed count of each label's events
  (half-life ``half_life``), kept scaled to a reference time ``t0`` so an event is one
  add and the count now is one multiply (:meth:`Overlay.label_view`), which the C
  answerer adds to the recent_* features (live popularity and trend);
- the **fresh** table: queries the model never saw, each with its decayed count and,
  until it reaches the privacy floor, the distinct sessions that sent it. A fresh
  query is a candidate (source "fresh") for other sessions only once
  ``privacy_floor`` distinct sessions submitted it (observations without a session
  count as one session together). At most ``max_fresh`` are kept: past that, the
  tenth with the lowest decayed counts is dropped.

A consumer that loses Redis keeps serving with the overlay it has and resumes from its
last ids; an entry of the wrong shape is skipped and counted. A new model (a reload)
gets a new overlay, rebuilt from the stream after the last ids its manifest records
(``qac train --log redis://...``; none: the whole stream), so the events the model
learnt from are not counted twice.

The live **blocklist** (:class:`LiveBlocklist`) lives in Redis (a set of entries in
the blocklist file syntax, ``word`` or ``stem*``, under ``qac:{blocklist}``, and a
version counter beside it); every tail checks the version every ``blocklist_poll``
seconds and swaps in the new list. It filters every answer, whatever its source,
beside the model's own blocklist.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import threading
import time as _time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qac.blocklist import Blocklist
from qac.errors import InputError, StoreUnavailable, check_fields
from qac.history import REPEAT_SECONDS
from qac.text import normalize

log = logging.getLogger(__name__)

#: the longest query an event may carry (characters, after normalization)
MAX_EVENT_QUERY = 256
#: the longest session id an event may carry
MAX_EVENT_SESSION = 64
#: the stream id before every entry
START = "0-0"
#: rebase the decayed weights when the reference time is this many half-lives old
_REBASE_HALF_LIVES = 40.0
#: sessions whose last query an overlay remembers (the least recent are forgotten)
_LAST_SESSIONS = 50_000
#: label ids an overlay caches by text, and raw queries a tail caches normalized
#: (each cleared when full: about 15 MB each at most)
_LABEL_CACHE = 100_000


@dataclass(frozen=True)
class LiveConfig:
    """How the live stream and overlay behave.

    half_life:       seconds for a live count to halve (default 6 hours).
    weight:          what one live submission counts for beside the training log's
                     counts; None: a decayed count is a rate over its window
                     (half_life / ln 2) extrapolated to the model's recent window
                     (``recent_days``): recent_days * 86400 * ln 2 / half_life.
    privacy_floor:   distinct sessions before a fresh query is suggested to others.
    max_fresh:       most fresh queries an overlay keeps (bounded memory).
    fresh:           fresh candidates per keystroke.
    key:             the stream's key (``<key>:{<i>}`` per shard when shards > 1).
    shards:          streams the events are spread over (by query).
    maxlen:          entries kept per stream (approximate: ``MAXLEN ~``).
    max_age:         seconds an entry is kept (approximate: ``XTRIM MINID ~``; 0: no limit).
    trim_seconds:    how often an appender trims by age.
    blocklist_key:   the Redis set of live blocklist entries (``<key>:version`` beside it).
    blocklist_poll:  seconds between a tail's checks of the blocklist version.
    block_ms:        how long one XREAD waits for new entries.
    tail_share:      the most of the time a tail spends applying events while its
                     process serves (it rests after each batch in proportion; 1: no
                     limit). Events wait in the stream meanwhile.
    socket_timeout:  seconds a Redis call of the stream may take.
    """

    half_life: float = 6 * 3600.0
    weight: float | None = None
    privacy_floor: int = 3
    max_fresh: int = 200_000
    fresh: int = 8
    key: str = "qac:events"
    shards: int = 1
    maxlen: int = 1_000_000
    max_age: float = 7 * 86400.0
    trim_seconds: float = 10.0
    blocklist_key: str = "qac:{blocklist}"
    blocklist_poll: float = 0.25
    block_ms: int = 200
    tail_share: float = 0.25
    socket_timeout: float = 2.0

    def __post_init__(self) -> None:
        for name in ("half_life", "blocklist_poll", "socket_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (
                    math.isfinite(v) and v > 0):
                raise InputError(f"LiveConfig.{name}: a finite number > 0, got {v!r}")
        if self.weight is not None and (isinstance(self.weight, bool) or not isinstance(
                self.weight, int | float) or not (math.isfinite(self.weight)
                                                  and self.weight > 0)):
            raise InputError(f"LiveConfig.weight: a finite number > 0, got {self.weight!r}")
        if isinstance(self.tail_share, bool) or not isinstance(self.tail_share, int | float) \
                or not 0 < self.tail_share <= 1:
            raise InputError(f"LiveConfig.tail_share: a number in (0, 1], got "
                             f"{self.tail_share!r}")
        for name in ("max_age", "trim_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (
                    math.isfinite(v) and v >= 0):
                raise InputError(f"LiveConfig.{name}: a finite number >= 0, got {v!r}")
        for name, lo in (("privacy_floor", 1), ("max_fresh", 1), ("fresh", 0), ("shards", 1),
                         ("maxlen", 1), ("block_ms", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"LiveConfig.{name}: an int >= {lo}, got {v!r}")
        for name in ("key", "blocklist_key"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v or any(c.isspace() for c in v):
                raise InputError(f"LiveConfig.{name}: a Redis key without spaces, got {v!r}")

    def weight_for(self, recent_days: float) -> float:
        """What one live submission counts for beside a model's counts."""
        if self.weight is not None:
            return float(self.weight)
        return max(recent_days, 1e-3) * 86400.0 * math.log(2.0) / self.half_life

    def stream_keys(self) -> tuple[str, ...]:
        """The stream keys, one per shard."""
        if self.shards == 1:
            return (self.key,)
        return tuple(f"{self.key}:{{{i}}}" for i in range(self.shards))

    def shard_of(self, query: str) -> int:
        return zlib.crc32(query.encode("utf-8", "surrogatepass")) % self.shards

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LiveConfig:
        check_fields(cls, d, "live config")
        return cls(**d)


# -- events ------------------------------------------------------------------------

def clean_event(query: Any, session: Any = None, time: Any = None
                ) -> tuple[str, str, float] | None:
    """An event's fields checked and normalized: (query, session, time), or None when
    it cannot be one (not text, empty after normalization, too long, a bad session or
    time). ``session`` None or "" is the anonymous session ""."""
    if isinstance(query, bytes):
        try:
            query = query.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(query, str) or len(query) > 4 * MAX_EVENT_QUERY:
        return None
    try:
        q = normalize(query)
    except InputError:
        return None
    if not q or len(q) > MAX_EVENT_QUERY or "\n" in q:
        return None
    if isinstance(session, bytes):
        try:
            session = session.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if session is None:
        session = ""
    if not isinstance(session, str) or len(session) > MAX_EVENT_SESSION:
        return None
    if isinstance(time, bytes):
        try:
            time = float(time)
        except ValueError:
            return None
    if time is None:
        t = _time.time()
    elif isinstance(time, bool) or not isinstance(time, int | float):
        return None
    else:
        t = float(time)
    if not math.isfinite(t) or t < 0:
        return None
    return q, session, t


def parse_entry(fields_: Any) -> tuple[str, str, float] | None:
    """A stream entry's fields (``{b"q": query, b"s": session, b"t": time}``) as an
    event, or None for an entry of the wrong shape."""
    if not isinstance(fields_, Mapping):
        return None
    q = fields_.get(b"q", fields_.get("q"))
    if q is None:
        return None
    s = fields_.get(b"s", fields_.get("s"))
    t = fields_.get(b"t", fields_.get("t"))
    if t is None:
        return None
    return clean_event(q, s, t)


def _id_key(stream_id: str) -> tuple[int, int]:
    """A stream id ``ms-seq`` as a tuple that sorts like Redis sorts ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def id_after(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes after ``b``."""
    return _id_key(a) > _id_key(b)


# -- the live blocklist ------------------------------------------------------------

def parse_entries(entries: Any, where: str) -> list[str]:
    """Blocklist entries (file syntax: ``word`` or ``stem*``) checked and normalized;
    :class:`InputError` names the bad one."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise InputError(f"{where}: a list of strings is expected")
    out: list[str] = []
    for e in entries:
        text = e.strip()
        if not text or text.startswith("#") or "\n" in text:
            raise InputError(f"{where}: {e!r} is not a blocklist entry (a word, or a "
                             "stem ending in *)")
        bl = Blocklist.from_lines([text], where)
        out.extend(sorted(bl.words) + [s + "*" for s in sorted(bl.stems)])
    return out


class LiveBlocklist:
    """The live blocklist of this process: entries, the :class:`Blocklist` they make,
    and the version they came with (swapped as one tuple: readers never see a mix)."""

    def __init__(self) -> None:
        self._state: tuple[int, frozenset[str], Blocklist | None] = (0, frozenset(), None)

    def set(self, entries: Iterable[str], version: int) -> bool:
        """Take ``entries`` (already checked) at ``version``; False if not newer."""
        if version < self._state[0]:
            return False
        es = frozenset(entries)
        bl = Blocklist.from_lines(sorted(es), "live blocklist") if es else None
        self._state = (version, es, bl)
        return True

    @property
    def version(self) -> int:
        return self._state[0]

    @property
    def entries(self) -> frozenset[str]:
        return self._state[1]

    @property
    def blocklist(self) -> Blocklist | None:
        """The current list, or None when it is empty."""
        return self._state[2]

    def __len__(self) -> int:
        return len(self._state[1])


# -- the overlay -------------------------------------------------------------------

class _Fresh:
    """One query the model never saw: its decayed weight (scaled to the overlay's t0)
    and, until it reaches the privacy floor, the distinct sessions that sent it."""

    __slots__ = ("sessions", "weight")

    def __init__(self, weight: float, sessions: tuple[str, ...] | None) -> None:
        self.weight = weight
        self.sessions = sessions  # None: the floor is reached (eligible)


class Overlay:
    """One process's live state for one model (see the module docstring).

    ``label_of(text) -> int`` gives a normalized text's label id or -1; ``n_labels``
    the model's label count; ``weight`` what one live submission counts for beside
    the model's counts (:meth:`LiveConfig.weight_for`): every count read comes
    multiplied by it. Events are added by one writer (the stream's tail, or
    :meth:`qac.complete.Completer.observe`); keystrokes read from any thread.
    """

    def __init__(self, label_of: Callable[[str], int], n_labels: int,
                 config: LiveConfig | None = None,
                 blocklist: LiveBlocklist | None = None, weight: float = 1.0,
                 text_of: Callable[[int], str] | None = None) -> None:
        self.config = config or LiveConfig()
        self.weight = float(weight)
        self.blocklist = blocklist if blocklist is not None else LiveBlocklist()
        self._label_of = label_of
        self._text_of = text_of
        self._lam = math.log(2.0) / self.config.half_life
        self._t0: float | None = None
        # (weights scaled to t0, t0), published as one reference: a published array is
        # never written again (the C answerer reads it without the GIL); new events
        # wait in _pending until flush() publishes a copy with them added
        self._labels: tuple[np.ndarray, float] = (np.zeros(n_labels, dtype=np.float64), 0.0)
        self._pending: list[tuple[int, float]] = []
        self._pending_lock = threading.Lock()
        #: whether a read publishes pending events itself (embedded use); a stream tail
        #: turns it off and publishes after every batch
        self.autoflush = True
        self._label_ids: dict[str, int] = {}  # a cache of label_of
        # each session's last (query, time): a session repeating its last query is the
        # same search (the logs' rule), so a retried submit is counted once
        self._last: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._fresh: dict[str, _Fresh] = {}
        self._eligible: list[str] = []   # sorted texts of the fresh queries past the floor
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._version = 0  # bumps when the eligible set changes
        self.events = 0
        self.label_events = 0
        self.fresh_events = 0
        self.repeats = 0
        self.evicted = 0
        self.last_ids: dict[str, str] = {}

    # -- writing ------------------------------------------------------------------
    def add(self, query: str, session: str = "", time: float | None = None) -> bool:
        """Add one event (a normalized query); False when it is not a valid event."""
        ev = clean_event(query, session, time)
        if ev is None:
            return False
        q, s, t = ev
        self._add(q, s, t)
        return True

    def _label(self, q: str) -> int:
        label = self._label_ids.get(q)
        if label is None:
            label = self._label_of(q)
            if label >= 0:  # labels only: the fresh table holds the others already
                if len(self._label_ids) >= _LABEL_CACHE:
                    self._label_ids.clear()
                self._label_ids[q] = label
        return label

    def _add(self, q: str, s: str, t: float) -> None:
        self.events += 1
        if s:
            last = self._last
            prev = last.get(s)
            last[s] = (q, t)
            if prev is not None:
                last.move_to_end(s)  # the most recent: the least recent are forgotten
                if prev[0] == q and abs(t - prev[1]) < REPEAT_SECONDS:
                    self.repeats += 1
                    return
            elif len(last) > _LAST_SESSIONS:
                last.popitem(last=False)
        self._add_weight(q, s, t, 1.0)

    def _add_weight(self, q: str, s: str, t: float, count: float) -> None:
        if self._t0 is None:
            self._t0 = t
            self._labels = (self._labels[0], t)
        t0 = self._labels[1]
        if self._lam * (t - t0) > _REBASE_HALF_LIVES:
            self._rebase(t)
            t0 = self._labels[1]
        w = count * math.exp(self._lam * (t - t0))
        label = self._label(q)
        if label >= 0:
            with self._pending_lock:
                self._pending.append((label, w))
            self.label_events += 1
            return
        self.fresh_events += 1
        self._add_fresh(q, (s,), w)

    def _add_fresh(self, q: str, sessions: tuple[str, ...], w: float,
                   eligible: bool = False) -> None:
        with self._lock:
            f = self._fresh.get(q)
            floor = self.config.privacy_floor
            if eligible or len(sessions) >= floor:
                sessions = ()
                eligible = True
            if f is None:
                f = self._fresh[q] = _Fresh(w, None if eligible else sessions)
                if f.sessions is None:
                    self._make_eligible(q)
                if len(self._fresh) > self.config.max_fresh:
                    self._evict()
                return
            f.weight += w
            if f.sessions is not None and eligible:
                f.sessions = None
                self._make_eligible(q)
            elif f.sessions is not None:
                new = tuple(x for x in sessions if x not in f.sessions)
                if new:
                    f.sessions = (*f.sessions, *new)
                    if len(f.sessions) >= floor:
                        f.sessions = None
                        self._make_eligible(q)

    def flush(self) -> None:
        """Publish the pending label events: a copy of the label array with them added
        (vectorized), swapped in as one reference."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            arr, t0 = self._labels
            idx = np.fromiter((p[0] for p in pending), dtype=np.intp, count=len(pending))
            w = np.fromiter((p[1] for p in pending), dtype=np.float64, count=len(pending))
            new = arr.copy()
            np.add.at(new, idx, w)
            self._labels = (new, t0)

    def carry(self, old: Overlay) -> None:
        """Take over ``old``'s state (an overlay of another model, say before a reload
        without a stream): its decayed counts by text (a label of this model, or a
        fresh query), the fresh queries' sessions and each session's last query. A text
        that was a label of the old model and is none of this one starts with no
        sessions: the privacy floor counts from now."""
        old.flush()
        arr, t0 = old._labels
        if old._t0 is None:
            return
        if self._t0 is None:
            self._t0 = old._t0
            self._labels = (self._labels[0], t0)
        factor = math.exp(self._lam * (t0 - self._labels[1]))
        if old._text_of is not None:
            for i in np.flatnonzero(arr).tolist():
                q = old._text_of(i)
                label = self._label(q)
                if label >= 0:
                    with self._pending_lock:
                        self._pending.append((label, float(arr[i]) * factor))
                else:
                    self._add_fresh(q, (), float(arr[i]) * factor)
        with old._lock:
            items = list(old._fresh.items())
        for q, f in items:
            label = self._label(q)
            if label >= 0:
                with self._pending_lock:
                    self._pending.append((label, f.weight * factor))
            else:
                self._add_fresh(q, f.sessions or (), f.weight * factor, f.sessions is None)
        self._last.update(old._last)
        self.events += old.events
        self.label_events += old.label_events
        self.fresh_events += old.fresh_events
        self.repeats += old.repeats
        self.flush()

    def _make_eligible(self, q: str) -> None:
        bisect.insort(self._eligible, q)
        self._version += 1

    def _evict(self) -> None:
        """Drop the tenth of the fresh queries with the lowest decayed weights."""
        n = max(1, len(self._fresh) // 10)
        drop = heapq.nsmallest(n, self._fresh.items(), key=lambda kv: kv[1].weight)
        gone_eligible = False
        for q, f in drop:
            del self._fresh[q]
            if f.sessions is None:
                i = bisect.bisect_left(self._eligible, q)
                if i < len(self._eligible) and self._eligible[i] == q:
                    del self._eligible[i]
                    gone_eligible = True
        self.evicted += len(drop)
        if gone_eligible:
            self._version += 1

    def _rebase(self, t: float) -> None:
        """Bring every weight to reference time ``t`` (a new array, swapped in)."""
        self.flush()
        arr, t0 = self._labels
        factor = math.exp(-self._lam * (t - t0))
        self._labels = (arr * factor, t)
        with self._lock:
            for f in self._fresh.values():
                f.weight *= factor

    # -- reading (per keystroke) -----------------------------------------------------
    def label_view(self, now: float) -> tuple[np.ndarray, float]:
        """(weights float64 [labels], scale): label i's decayed count at ``now`` is
        weights[i] * scale. The array is never written once returned (pending events
        go to a copy)."""
        if self.autoflush and self._pending:
            self.flush()
        arr, t0 = self._labels
        if self._t0 is None:
            return arr, 0.0
        return arr, self.weight * math.exp(-min(self._lam * (now - t0), 700.0))

    def label_count(self, label: int, now: float) -> float:
        arr, scale = self.label_view(now)
        return float(arr[label] * scale)

    def fresh(self, prefix: str, k: int, now: float,
              blocks: Callable[[str], bool] | None = None) -> tuple[list[str], list[float]]:
        """Up to ``k`` fresh queries past the privacy floor that start with ``prefix``
        (normalized), highest decayed count first, with their counts at ``now``;
        those ``blocks`` or the live blocklist matches are left out."""
        if k <= 0 or not self._eligible:
            return [], []
        key = prefix
        hit = self._cache.get(key)
        # the order is refreshed twice a second; the set as soon as it changes
        stamp = self._version * 1_000_000_000 + int(_time.monotonic() * 2)
        if hit is None or hit[0] != stamp:
            with self._lock:
                el = self._eligible
                lo = bisect.bisect_left(el, prefix)
                hi = bisect.bisect_left(el, prefix + "\U0010ffff") if prefix else len(el)
                fr = self._fresh
                # a tuple, which the cyclic GC stops walking (see Completer._extras)
                texts = tuple(sorted(el[lo:hi], key=lambda q: -fr[q].weight)
                              if hi - lo <= 4 * k else
                              heapq.nlargest(4 * k, el[lo:hi], key=lambda q: fr[q].weight))
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = (stamp, texts)
        else:
            texts = hit[1]
        _, scale = self.label_view(now)
        bl = self.blocklist.blocklist
        out: list[str] = []
        counts: list[float] = []
        fr = self._fresh
        for q in texts:
            f = fr.get(q)
            if f is None or (blocks is not None and blocks(q)) or (
                    bl is not None and bl.blocks_normalized(q)):
                continue
            out.append(q)
            counts.append(f.weight * scale)
            if len(out) == k:
                break
        return out, counts

    def fresh_count(self, query: str, now: float) -> tuple[float, bool]:
        """(decayed count at ``now``, past the floor) of a fresh query ((0, False) if
        unknown)."""
        f = self._fresh.get(query)
        if f is None:
            return 0.0, False
        _, scale = self.label_view(now)
        return f.weight * scale, f.sessions is None

    def nbytes(self) -> int:
        """An estimate of the overlay's memory: the label array, the fresh table's dict,
        texts and entries, and the sorted list of eligible texts."""
        import sys

        n = self._labels[0].nbytes + sys.getsizeof(self._fresh) + sys.getsizeof(self._eligible)
        for q, f in self._fresh.items():
            n += sys.getsizeof(q) + sys.getsizeof(f) + 24  # the weight's float
            if f.sessions is not None:
                n += sys.getsizeof(f.sessions) + sum(sys.getsizeof(s) for s in f.sessions)
        return n

    def stats(self) -> dict[str, Any]:
        return {"events": self.events, "label_events": self.label_events,
                "fresh_events": self.fresh_events, "repeats": self.repeats,
                "fresh": len(self._fresh),
                "fresh_eligible": len(self._eligible), "fresh_evicted": self.evicted}


# -- Redis -------------------------------------------------------------------------

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def redis_client(url: str, socket_timeout: float, asynchronous: bool = False) -> Any:
    """A redis-py client for ``url`` (``redis+cluster://`` for Redis Cluster), replies
    as bytes, no retries of its own."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    cluster = scheme in CLUSTER_SCHEMES
    if cluster:
        url = urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[scheme]))
    elif scheme not in ("redis", "rediss", "unix"):
        raise InputError(f"Redis URL must start with redis://, rediss://, unix:// or "
                         f"redis+cluster://, got {url!r}")
    common: dict[str, Any] = {"socket_timeout": socket_timeout,
                              "socket_connect_timeout": min(socket_timeout, 2.0),
                              "decode_responses": False}
    if asynchronous:
        if cluster:
            from redis.asyncio.cluster import RedisCluster as ARC

            return ARC.from_url(url, **common)
        from redis.asyncio import Redis as AR

        return AR.from_url(url, **common)
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **common)
    from redis import Redis

    return Redis.from_url(url, **common)


def _down(url: str, exc: BaseException) -> StoreUnavailable:
    from urllib.parse import urlsplit

    p = urlsplit(url)
    where = f"{p.scheme}://{p.hostname}:{p.port or 6379}" if p.hostname else p.path
    return StoreUnavailable(f"event stream {where} unavailable ({type(exc).__name__}: {exc})")


class EventStream:
    """Appends events to the stream (sync for ``qac ingest``, async for the server)
    and reads and writes the live blocklist."""

    def __init__(self, url: str, config: LiveConfig | None = None) -> None:
        self.url = url
        self.config = config or LiveConfig()
        self._sync: Any = None
        self._async: Any = None
        self._last_trim = float("-inf")
        self.keys = self.config.stream_keys()

    @property
    def sync(self) -> Any:
        if self._sync is None:
            self._sync = redis_client(self.url, self.config.socket_timeout)
        return self._sync

    @property
    def aio(self) -> Any:
        if self._async is None:
            self._async = redis_client(self.url, self.config.socket_timeout,
                                       asynchronous=True)
        return self._async

    def _fields(self, query: str, session: str, time: float) -> dict[str, Any]:
        return {"q": query.encode("utf-8", "surrogatepass"), "s": session.encode(),
                "t": repr(float(time))}

    def _trim_due(self) -> bool:
        c = self.config
        if not c.max_age:
            return False
        now = _time.monotonic()
        if now - self._last_trim < c.trim_seconds:
            return False
        self._last_trim = now
        return True

    def _minid(self) -> str:
        return str(int((_time.time() - self.config.max_age) * 1000))

    async def publish(self, query: str, session: str, time: float) -> str:
        """Append one event; returns its id. :class:`StoreUnavailable` when Redis is
        down (nothing half-written: one XADD)."""
        c = self.config
        key = self.keys[c.shard_of(query)]
        try:
            got = await self.aio.xadd(key, self._fields(query, session, time),
                                      maxlen=c.maxlen, approximate=True)
            if self._trim_due():
                for k in self.keys:
                    await self.aio.xtrim(k, minid=self._minid(), approximate=True)
        except Exception as exc:  # noqa: BLE001 - every Redis failure is the same to callers
            raise _down(self.url, exc) from None
        return got.decode() if isinstance(got, bytes) else str(got)

    def append(self, events: Iterable[tuple[str, str, float]], batch: int = 1000) -> int:
        """Append many events (already clean), pipelined ``batch`` at a time; returns how
        many. :class:`StoreUnavailable` when Redis is down (the events of the batch
        that failed may or may not be in; those before it are)."""
        c = self.config
        n = 0
        pending: list[tuple[str, str, float]] = []

        def flush() -> None:
            pipe = self.sync.pipeline(transaction=False)
            for q, s, t in pending:
                pipe.xadd(self.keys[c.shard_of(q)], self._fields(q, s, t), maxlen=c.maxlen,
                          approximate=True)
            pipe.execute()
            pending.clear()

        try:
            for ev in events:
                pending.append(ev)
                if len(pending) >= batch:
                    flush()
                    n += batch
            if pending:
                k = len(pending)
                flush()
                n += k
            if self._trim_due():
                for key in self.keys:
                    self.sync.xtrim(key, minid=self._minid(), approximate=True)
        except Exception as exc:  # noqa: BLE001
            raise _down(self.url, exc) from None
        return n

    def last_ids(self) -> dict[str, str]:
        """The last id of every shard now (``0-0`` for an empty one)."""
        out: dict[str, str] = {}
        try:
            for key in self.keys:
                got = self.sync.xrevrange(key, count=1)
                out[key] = got[0][0].decode() if got else START
        except Exception as exc:  # noqa: BLE001
            raise _down(self.url, exc) from None
        return out

    def read(self, since: Mapping[str, str] | None = None, until: Mapping[str, str] | None
             = None, chunk: int = 10_000) -> Iterable[tuple[str, str, str, float]]:
        """Every event after ``since`` (per key; default: all) up to ``until`` (per key,
        inclusive; default: the last ids now), shard by shard, as (id, session, query,
        time); entries of the wrong shape skipped."""
        until = dict(until) if until is not None else self.last_ids()
        for key in self.keys:
            last = (since or {}).get(key, START)
            end = until.get(key, START)
            while id_after(end, last):
                try:
                    got = self.sync.xrange(key, min=f"({last}", max=end, count=chunk)
                except Exception as exc:  # noqa: BLE001
                    raise _down(self.url, exc) from None
                if not got:
                    break
                for raw_id, fields_ in got:
                    last = raw_id.decode()
                    ev = parse_entry(fields_)
                    if ev is not None:
                        yield last, ev[1], ev[0], ev[2]

    # -- the blocklist ----------------------------------------------------------------
    @property
    def blocklist_version_key(self) -> str:
        return f"{self.config.blocklist_key}:version"

    async def update_blocklist(self, add: Sequence[str], remove: Sequence[str]
                               ) -> tuple[list[str], int]:
        """Add and remove entries (checked), atomically with a version bump; returns
        (entries, version)."""
        key, vkey = self.config.blocklist_key, self.blocklist_version_key
        try:
            async with self.aio.pipeline(transaction=True) as pipe:
                if remove:
                    pipe.srem(key, *remove)
                if add:
                    pipe.sadd(key, *add)
                pipe.incr(vkey)
                pipe.smembers(key)
                got = await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            raise _down(self.url, exc) from None
        return sorted(m.decode() for m in got[-1]), int(got[-2])

    def get_blocklist(self) -> tuple[list[str], int]:
        """(entries, version) as stored (sync: the tail's thread)."""
        key, vkey = self.config.blocklist_key, self.blocklist_version_key
        pipe = self.sync.pipeline(transaction=True)
        pipe.get(vkey)
        pipe.smembers(key)
        v, members = pipe.execute()
        entries: list[str] = []
        for m in members:
            try:
                entries.extend(parse_entries([m.decode()], "live blocklist"))
            except (UnicodeDecodeError, InputError):
                log.warning("live blocklist: skipped a stored entry that is not one: %r", m)
        return entries, int(v or 0)

    def blocklist_version(self) -> int:
        v = self.sync.get(self.blocklist_version_key)
        return int(v or 0)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
        if self._sync is not None:
            self._sync.close()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()


def is_stream_url(path: Any) -> bool:
    """Whether a ``--log`` argument names a Redis event stream rather than a file."""
    return isinstance(path, str) and path.split("://", 1)[0].lower() in (
        "redis", "rediss", "unix", *CLUSTER_SCHEMES)


def read_stream_log(url: str, config: LiveConfig | None = None, until: Any = None
                    ) -> tuple[list[Any], dict[str, str]]:
    """The event stream as a training log: (LogEvents in time order, the last id read
    per stream key). The session id is the user too (a server's session ids are
    stable user or device ids). ``until`` (a datetime) keeps the events before it. A
    session repeating its last query within :data:`qac.history.REPEAT_SECONDS` is
    dropped, as the logs drop a repeat and the overlays count it once."""
    from datetime import datetime

    from qac.logs import LogEvent

    stream = EventStream(url, config)
    try:
        tip = stream.last_ids()
        events: list[LogEvent] = []
        for _, session, query, t in stream.read(None, tip):
            when = datetime.fromtimestamp(t)
            if until is not None and when >= until:
                continue
            events.append(LogEvent(session, query, when, session))
    finally:
        stream.close()
    events.sort(key=lambda e: (e.time, e.session))
    # a session repeating its last query is the same search (a retried submit), as
    # the overlays count it
    last: dict[str, tuple[str, float]] = {}
    kept: list[LogEvent] = []
    for e in events:
        t = e.time.timestamp() if e.time is not None else 0.0
        prev = last.get(e.session)
        last[e.session] = (e.query, t)
        if e.session and prev is not None and prev[0] == e.query and \
                abs(t - prev[1]) < REPEAT_SECONDS:
            continue
        kept.append(e)
    return kept, tip


class StreamTail:
    """The background thread that tails the stream into this process's overlay and
    keeps the live blocklist current (see the module docstring).

    :meth:`attach` hands it a new overlay (a new model) with the ids to start after;
    the thread replays the stream into it up to the tip, then makes it the one it
    feeds, and sets the returned event. Counters: ``applied``, ``skipped`` (entries
    of the wrong shape), ``errors`` (Redis calls that failed), ``caught_up``.
    """

    def __init__(self, url: str, blocklist: LiveBlocklist,
                 config: LiveConfig | None = None) -> None:
        self.config = config or LiveConfig()
        self.stream = EventStream(url, self.config)
        self.blocklist = blocklist
        self.overlay: Overlay | None = None
        self.last: dict[str, str] = {}
        self._pending: tuple[Overlay, dict[str, str], threading.Event] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0
        self.skipped = 0
        self.errors = 0
        self.available = True
        self.last_error: str | None = None
        self._last_log = float("-inf")
        self._last_poll = float("-inf")
        self._queries: dict[bytes, str] = {}

    def attach(self, overlay: Overlay, since: Mapping[str, str] | None = None
               ) -> threading.Event:
        """Feed ``overlay`` from now on, after replaying the events after ``since``
        (per stream key; default: the whole stream)."""
        done = threading.Event()
        overlay.autoflush = False  # this thread publishes after every batch
        self._pending = (overlay, dict(since or {}), done)
        return done

    def start(self) -> StreamTail:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qac-stream-tail",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.stream.close()

    def stats(self) -> dict[str, Any]:
        ov = self.overlay
        return {"applied": self.applied, "skipped": self.skipped, "errors": self.errors,
                "available": self.available, **(ov.stats() if ov is not None else {})}

    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.available = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = _time.monotonic()
        if now - self._last_log > 10:
            log.warning("event stream unavailable (%d error(s)); serving with the overlay "
                        "as it is, resuming from the last ids: %s", self.errors,
                        self.last_error)
            self._last_log = now
        self._stop.wait(0.2)
        # a fresh connection next time
        with _suppress():
            self.stream.close()
        self.stream._sync = None

    def _event(self, fields_: Any) -> tuple[str, str, float] | None:
        """A stream entry as an event (see :func:`parse_entry`), the query's
        normalization cached by its raw bytes (the same popular queries recur)."""
        try:
            qb, tb = fields_[b"q"], fields_[b"t"]
            sb = fields_.get(b"s", b"")
        except (KeyError, TypeError, AttributeError):
            return parse_entry(fields_)
        if not (isinstance(qb, bytes) and isinstance(tb, bytes) and isinstance(sb, bytes)):
            return parse_entry(fields_)
        q = self._queries.get(qb)
        if q is None:
            ev = clean_event(qb, "", 0.0)
            q = ev[0] if ev is not None else ""
            if len(self._queries) >= _LABEL_CACHE:
                self._queries.clear()
            self._queries[qb] = q
        if not q or len(sb) > 4 * MAX_EVENT_SESSION:
            return None
        try:
            session = sb.decode("utf-8")
            t = float(tb)
        except (UnicodeDecodeError, ValueError):
            return None
        if len(session) > MAX_EVENT_SESSION or not (math.isfinite(t) and t >= 0):
            return None
        return q, session, t

    def _apply(self, overlay: Overlay, key: str, entries: Any, last: dict[str, str]) -> None:
        """Apply a batch of entries, then publish the overlay's label counts once."""
        add, event = overlay._add, self._event
        sid = last.get(key, START)
        try:
            for i, (raw_id, fields_) in enumerate(entries):
                if i and not i % 128:
                    _time.sleep(0)  # hand the GIL to the event loop: keystrokes come first
                sid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                ev = event(fields_)
                if ev is None:
                    self.skipped += 1
                    continue
                add(ev[0], ev[1], ev[2])
                self.applied += 1
        finally:
            last[key] = sid
            overlay.flush()
            overlay.last_ids = dict(last)

    def _rest(self, cpu: float) -> None:
        """Rest after a batch that took ``cpu`` seconds of this thread's CPU, so the tail
        takes at most ``tail_share`` of the time while the process serves."""
        share = self.config.tail_share
        if share < 1.0 and cpu > 0:
            self._stop.wait(min(1.0, cpu * (1.0 / share - 1.0)))

    def _poll_blocklist(self, force: bool = False) -> None:
        now = _time.monotonic()
        if not force and now - self._last_poll < self.config.blocklist_poll:
            return
        self._last_poll = now
        v = self.stream.blocklist_version()
        if v != self.blocklist.version or force:
            entries, v = self.stream.get_blocklist()
            if self.blocklist.set(entries, v):
                log.info("live blocklist: version %d, %d entries", v, len(entries))

    def _replay(self, overlay: Overlay, last: dict[str, str]) -> dict[str, str]:
        """Replay the events after ``last`` up to the tip into ``overlay``, moving
        ``last`` along (so a replay cut off by a failure resumes where it was, counting
        nothing twice); returns it. Checks the blocklist between chunks."""
        for k in self.stream.keys:
            last.setdefault(k, START)
        tip = self.stream.last_ids()
        for key in self.stream.keys:
            while id_after(tip[key], last[key]) and not self._stop.is_set():
                cpu = _time.thread_time()
                got = self.stream.sync.xrange(key, min=f"({last[key]}", max=tip[key],
                                              count=5000)
                if not got:
                    break
                self._apply(overlay, key, got, last)
                if self.overlay is not None:  # a reload: the old overlay serves meanwhile
                    self._rest(_time.thread_time() - cpu)
                self._poll_blocklist()
        return last

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._poll_blocklist(force=True)
                    first = False
                pending = self._pending
                if pending is not None:
                    overlay, since, done = pending
                    reached = self._replay(overlay, since)
                    if self._pending is pending:
                        self._pending = None
                        self.overlay, self.last = overlay, reached
                        done.set()
                    continue
                self._poll_blocklist()
                current = self.overlay
                if current is None:
                    self._stop.wait(0.05)
                    continue
                keys = self.stream.keys
                block = max(1, self.config.block_ms // len(keys))
                for key in keys:
                    # this thread's CPU time: the reply's parsing counts, waiting not
                    cpu = _time.thread_time()
                    got = self.stream.sync.xread({key: self.last.get(key, START)},
                                                 count=1000, block=block)
                    if not self.available:  # before applying: a reader seeing the
                        # events applied sees the stream reachable
                        log.info("event stream reachable again; resumed after %s",
                                 self.last)
                        self.available = True
                    for _, entries in got or ():
                        self._apply(current, key, entries, self.last)
                    self._rest(_time.thread_time() - cpu)
            except Exception as exc:  # noqa: BLE001 - the tail must outlive any failure
                self._fail(exc)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return True

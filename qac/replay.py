"""Session replay: simulated users type a log's queries keystroke by keystroke.

Each session of a query log is one simulated user. For each of its queries, in
order, the user types the query one character at a time; after every keystroke
it asks for k completions of the prefix typed so far, with the session's
previous query taken from the session store (the in-process
:class:`~qac.session.MemorySessionStore`, or the service's store, e.g. Redis,
over HTTP). In-process, each query is also asked with its user's history: the
user's last ``history`` distinct queries, from the log rows before the session
(rows before ``--since`` included) and the session's own earlier queries, as a
per-user session store would hold them. Over HTTP the history is what the
service's store has recorded during the replay. When the target query is among
the shown completions the user accepts it, and the query is submitted to the
session.

Acceptance policies (:attr:`ReplayConfig.accept`):

- ``"shown"``: accept as soon as the target is anywhere among the k shown;
- ``"top"``: accept only when it is within the first ``top_m``.

Modes (:attr:`ReplayConfig.mode`):

- ``"typed"`` (the simulation): every query of every session; one request per
  keystroke at prefix lengths 1, 2, ... up to acceptance, never at the full
  length (nothing is left to save). So MRR at prefix length n averages over the
  queries the user was still typing at n: the ones accepted earlier drop out, and
  a long query counts at every length it was typed. That is not ``qac eval``'s
  figure, which asks every query at the fixed lengths 1, 2, 3, 5, 8.
- ``"fixed"``: ``qac eval``'s protocol through the replay machinery: only queries
  with a previous query in their session, at ``lengths`` (those shorter than the
  query), no acceptance. With the in-process target it computes exactly
  :func:`qac.evaluate.evaluate`'s figures (the same :class:`CompletionMetrics`, the
  same seen/unseen groups); only the order of summation follows the sessions'
  time order rather than log order, which can move a figure in its last bits.

Metrics per configuration: :class:`~qac.metrics.CompletionMetrics` over every
request (grouped "seen"/"unseen" by the first model's label set, as ``qac eval``)
and over the requests of queries that have a previous query; keystrokes saved
(characters not typed / characters of all queries; the acceptance itself is not
counted as a keystroke); the share of queries completed (accepted) at all;
per-keystroke latency p50/p95/p99 (in-process: the store look-up plus the
completer call; HTTP: the client's round trip, plus the server's ``took_ms``);
throughput (requests per second of wall time).

Sessions run in the time order of their first query. With ``concurrency`` > 1
they are handed to that many workers (threads in-process, coroutines over HTTP)
in that order. ``seed`` fixes the session sample (``sessions`` > 0) and the
keystroke-interval jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from qac.errors import InputError
from qac.evaluate import (
    DEFAULT_HISTORY,
    DEFAULT_LENGTHS,
    CompleterSystem,
    MpcSystem,
    System,
    UserHistory,
)
from qac.logs import LogEvent
from qac.metrics import CompletionMetrics, percentiles
from qac.session import MemorySessionStore

log = logging.getLogger(__name__)

MODES = ("typed", "fixed")
ACCEPT = ("shown", "top")
NO_SESSION = " -session"
NO_LONGTAIL = " -longtail"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: bins (percent) of the keystrokes-saved histogram in the JSON and the plot
SAVED_BINS = tuple(range(0, 101, 5))


@dataclass(frozen=True)
class ReplayConfig:
    """How the simulated users behave.

    k:            completions asked per keystroke.
    mode:         "typed" (simulation) or "fixed" (``qac eval``'s protocol).
    lengths:      prefix lengths of the fixed mode.
    accept:       "shown" (accept at first sight among the k) or "top" (within top_m).
    top_m:        the acceptance window of accept="top".
    from_empty:   typed mode: also ask once before the first keystroke (prefix "")
                  when the session has a previous query (next-query suggestion).
    interval_ms:  pause between a user's keystrokes (uniform in [0.5, 1.5] x this);
                  0 = as fast as answers come.
    concurrency:  simultaneous users (threads in-process, connections over HTTP).
    sessions:     replay this many sessions, sampled with ``seed`` (0 = all).
    seed:         random seed (session sample, interval jitter).
    history:      distinct past queries of the user passed with each request
                  (in-process; 0 = none).
    """

    k: int = 10
    mode: str = "typed"
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    accept: str = "shown"
    top_m: int = 3
    from_empty: bool = False
    interval_ms: float = 0.0
    concurrency: int = 1
    sessions: int = 0
    seed: int = 0
    history: int = DEFAULT_HISTORY

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"ReplayConfig.k: must be >= 1, got {self.k}")
        if self.mode not in MODES:
            raise InputError(f"ReplayConfig.mode: one of {MODES}, got {self.mode!r}")
        if self.accept not in ACCEPT:
            raise InputError(f"ReplayConfig.accept: one of {ACCEPT}, got {self.accept!r}")
        if not 1 <= self.top_m <= self.k:
            raise InputError(f"ReplayConfig.top_m: must be in 1..k={self.k}, got {self.top_m}")
        if not self.lengths or min(self.lengths) < 0:
            raise InputError(f"ReplayConfig.lengths: lengths >= 0 needed, got {self.lengths}")
        if self.interval_ms < 0:
            raise InputError(f"ReplayConfig.interval_ms: must be >= 0, got {self.interval_ms}")
        if self.concurrency < 1:
            raise InputError(f"ReplayConfig.concurrency: must be >= 1, got {self.concurrency}")
        if self.sessions < 0:
            raise InputError(f"ReplayConfig.sessions: must be >= 0, got {self.sessions}")
        if self.history < 0:
            raise InputError(f"ReplayConfig.history: must be >= 0, got {self.history}")

    @property
    def window(self) -> int:
        """How many of the shown completions the user looks at before accepting."""
        return self.k if self.accept == "shown" else self.top_m

    def plan(self, target: str, has_previous: bool) -> Sequence[int]:
        """The prefix lengths at which the user asks for completions of ``target``."""
        if self.mode == "fixed":
            if not has_previous:
                return ()
            out = []
            for n in self.lengths:  # as qac.evaluate: stop at the first too-long length
                if n >= len(target):
                    break
                out.append(n)
            return out
        return range(0 if self.from_empty and has_previous else 1, len(target))


@dataclass(frozen=True)
class Session:
    """One simulated user: its queries in order (normalized), when it started, and
    its user's distinct earlier queries (most recent first) when it started."""

    id: str
    queries: tuple[str, ...]
    start: datetime | None
    history: tuple[str, ...] = ()

    def history_at(self, i: int, size: int = DEFAULT_HISTORY) -> tuple[str, ...]:
        """The user's history when typing query ``i``: this session's earlier
        queries, most recent first, then the history it started with; distinct."""
        if i == 0:
            return self.history[:size]
        got = dict.fromkeys(self.queries[i - 1::-1])
        got.update(dict.fromkeys(self.history))
        return tuple(got)[:size]


def sessions_of(events: Sequence[LogEvent], since: datetime | None = None,
                history: int = DEFAULT_HISTORY) -> list[Session]:
    """Group events by session, sessions in the time order of their first event
    (log order among equal or missing times). Only sessions whose first event is
    at or after ``since`` are kept; earlier events (in log order, as a user's are
    in time order) feed each user's ``history`` of up to that many distinct queries
    (events without a user id count as their session's)."""
    order: dict[str, tuple[int, datetime | None, list[str], tuple[str, ...]]] = {}
    hist = UserHistory(history)
    for i, e in enumerate(events):
        user = hist.user_of(e)
        got = order.get(e.session)
        if got is not None:
            got[2].append(e.query)
        elif since is None or (e.time is not None and e.time >= since):
            order[e.session] = (i, e.time, [e.query], hist.get(user))
        hist.add(user, e.query)
    rows = sorted(order.items(), key=lambda kv: (kv[1][1] is None, kv[1][1] or datetime.min,
                                                 kv[1][0]))
    return [Session(sid, tuple(qs), t, h) for sid, (_, t, qs, h) in rows]


def sample_sessions(sessions: Sequence[Session], n: int, seed: int) -> list[Session]:
    """``n`` sessions drawn with ``seed``, kept in their order (all when n is 0 or more)."""
    if n <= 0 or n >= len(sessions):
        return list(sessions)
    keep = sorted(random.Random(seed).sample(range(len(sessions)), n))
    return [sessions[i] for i in keep]


@dataclass
class _Tally:
    """What one worker measured for one configuration; merged at the end."""

    k: int
    metrics: CompletionMetrics = field(init=False)
    with_previous: CompletionMetrics = field(init=False)
    latency_s: list[float] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)
    # per query: characters, prefix length at acceptance (-1: typed in full), has previous
    q_len: list[int] = field(default_factory=list)
    q_at: list[int] = field(default_factory=list)
    q_prev: list[bool] = field(default_factory=list)
    errors: int = 0
    unrecorded: int = 0

    def __post_init__(self) -> None:
        self.metrics = CompletionMetrics(self.k)
        self.with_previous = CompletionMetrics(self.k)

    def merge(self, other: _Tally) -> None:
        self.metrics.merge(other.metrics)
        self.with_previous.merge(other.with_previous)
        for name in ("latency_s", "took_ms", "q_len", "q_at", "q_prev"):
            getattr(self, name).extend(getattr(other, name))
        self.errors += other.errors
        self.unrecorded += other.unrecorded


@dataclass
class SystemRun:
    """One configuration's replay: the raw measurements and their summary."""

    name: str
    tally: _Tally
    wall_s: float
    mode: str

    def keystrokes(self, only_previous: bool = False) -> dict[str, Any]:
        """Keystrokes saved and completion share (typed mode), over all queries or
        only those with a previous query."""
        t = self.tally
        n = np.asarray(t.q_len, dtype=np.int64)
        at = np.asarray(t.q_at, dtype=np.int64)
        if only_previous:
            sel = np.asarray(t.q_prev, dtype=bool)
            n, at = n[sel], at[sel]
        accepted = at >= 0
        saved = np.where(accepted, n - at, 0)
        chars = int(n.sum())
        pct = np.divide(100.0 * saved, n, out=np.zeros(len(n)), where=n > 0)
        hist, _ = np.histogram(pct, bins=SAVED_BINS)
        return {
            "queries": int(len(n)),
            "characters": chars,
            "saved_characters": int(saved.sum()),
            "saved_pct": 100.0 * float(saved.sum()) / chars if chars else float("nan"),
            "mean_saved_pct_per_query": float(pct.mean()) if len(pct) else float("nan"),
            "completed_share": float(accepted.mean()) if len(n) else float("nan"),
            "saved_pct_hist": {"bins": list(SAVED_BINS), "counts": hist.tolist()},
        }

    def saved_pct_per_query(self) -> np.ndarray:
        n = np.asarray(self.tally.q_len, dtype=np.float64)
        at = np.asarray(self.tally.q_at, dtype=np.float64)
        saved = np.where(at >= 0, n - at, 0.0)
        return np.divide(100.0 * saved, n, out=np.zeros(len(n)), where=n > 0)

    def summary(self) -> dict[str, Any]:
        t = self.tally
        lat = np.asarray(t.latency_s, dtype=np.float64) * 1e3
        requests = int(lat.size)
        out: dict[str, Any] = {
            "metrics": t.metrics.summary(),
            "with_previous": t.with_previous.summary(),
            "latency_ms": percentiles(lat),
            "throughput": {
                "wall_s": self.wall_s,
                "requests": requests,
                "requests_per_s": requests / self.wall_s if self.wall_s > 0 else float("nan"),
                "queries_per_s": len(t.q_len) / self.wall_s if self.wall_s > 0 else float("nan"),
            },
            "errors": t.errors,
            "unrecorded_queries": t.unrecorded,
        }
        if t.took_ms:
            out["server_took_ms"] = percentiles(t.took_ms)
        if self.mode == "typed":
            out["keystrokes"] = self.keystrokes()
            out["keystrokes_with_previous"] = self.keystrokes(only_previous=True)
        return out


# -- the configurations --------------------------------------------------------------


def inprocess_systems(models: dict[str, Any], select: Sequence[str] | None = None
                      ) -> dict[str, tuple[System, bool]]:
    """name -> (system, uses the session) for in-process completers.

    Offered: ``mpc`` (most popular over the first model's training queries, as
    ``qac eval``), ``mpc+bg`` (the first model's own MPC table, when it has a
    background log), and for each model NAME: ``NAME`` (with the session's previous
    query) and ``NAME -session`` (without; ``NAME-nosession`` is accepted too), and
    for a model with long tail on ``NAME -longtail`` (``NAME-nolongtail``): the same
    engine without the long-tail pool.
    ``select`` picks and orders them; default: mpc, then each model without long
    tail (if it has it), with, and without the session.
    """
    from qac.mpc import MostPopular

    if not models:
        raise InputError("at least one model directory is needed")
    first = next(iter(models.values()))
    mpc = MostPopular(dict(zip(first.labels.labels, first.labels.counts.tolist(), strict=True)))
    offered: dict[str, tuple[System, bool]] = {"mpc": (MpcSystem(mpc), False)}
    if len(first.mpc) != len(mpc):
        offered["mpc+bg"] = (MpcSystem(first.mpc), False)
    names = ["mpc"]
    for name, c in models.items():
        if c.longtail is not None and c.config.longtail:
            offered[name + NO_LONGTAIL] = (CompleterSystem(c.with_options(longtail=False)),
                                           True)
            names.append(name + NO_LONGTAIL)
        offered[name] = (CompleterSystem(c), True)
        offered[name + NO_SESSION] = (CompleterSystem(c, session=False), False)
        names += [name, name + NO_SESSION]
    if select is not None:
        names = [_canonical(s) for s in select]
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise InputError(f"unknown configuration(s) {unknown}; offered: {list(offered)}")
    return {n: offered[n] for n in names}


def _canonical(name: str) -> str:
    name = name.strip()
    for short, long in (("-nosession", NO_SESSION), ("-nolongtail", NO_LONGTAIL)):
        if name.endswith(short):
            return name[: -len(short)] + long
    return name


def _jitter(rng: random.Random, interval_s: float) -> float:
    return interval_s * (0.5 + rng.random())


# -- in-process replay -------------------------------------------------------------


def _replay_inprocess(sessions: Sequence[Session], system: System, use_session: bool,
                      cfg: ReplayConfig, seen: Callable[[str], bool] | None,
                      progress: Any) -> _Tally:
    store = MemorySessionStore(max_sessions=max(len(sessions), 1) + 1,
                               max_queries=2, ttl_seconds=86400 * 365, history_size=0)
    feed: Iterator[tuple[int, Session]] = iter(enumerate(sessions))
    lock = threading.Lock()

    def worker(wid: int) -> _Tally:
        tally = _Tally(cfg.k)
        rng = random.Random(cfg.seed * 1_000_003 + wid)
        while True:
            with lock:
                got = next(feed, None)
            if got is None:
                return tally
            i, sess = got
            _user(f"s{i}", sess, system, use_session, store, cfg, seen, tally, rng)
            if progress is not None:
                with lock:
                    progress.update(1)

    if cfg.concurrency == 1:
        return worker(0)
    total = _Tally(cfg.k)
    with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="replay") as pool:
        for t in pool.map(worker, range(cfg.concurrency)):
            total.merge(t)
    return total


def _user(sid: str, sess: Session, system: System, use_session: bool,
          store: MemorySessionStore, cfg: ReplayConfig, seen: Callable[[str], bool] | None,
          tally: _Tally, rng: random.Random) -> None:
    """One simulated user typing its session's queries (the per-keystroke loop)."""
    k, window, typed = cfg.k, cfg.window, cfg.mode == "typed"
    interval = cfg.interval_ms / 1e3
    previous_sync = store.previous_sync
    add, add_prev = tally.metrics.add, tally.with_previous.add
    lat = tally.latency_s.append
    clock = time.perf_counter
    for qi, target in enumerate(sess.queries):
        has_prev = qi > 0
        history = sess.history_at(qi, cfg.history)
        group = ("seen" if seen(target) else "unseen") if seen is not None else None
        at = -1
        for n in cfg.plan(target, has_prev):
            prefix = target[:n]
            t0 = clock()
            prev = previous_sync(sid) if use_session else None
            got = system(prefix, prev, k, history)
            lat(clock() - t0)
            add(n, group, got, target)
            if has_prev:
                add_prev(n, group, got, target)
            if typed and target in got[:window]:
                at = n
                break
            if interval:
                time.sleep(_jitter(rng, interval))
        tally.q_len.append(len(target))
        tally.q_at.append(at)
        tally.q_prev.append(has_prev)
        try:
            store.record_sync(sid, target)
        except InputError:  # longer than the store keeps: the service would refuse it too
            tally.unrecorded += 1


def replay(sessions: Sequence[Session], systems: dict[str, tuple[System, bool]],
           config: ReplayConfig | None = None, seen: Callable[[str], bool] | None = None,
           progress: bool = False) -> list[SystemRun]:
    """Replay ``sessions`` in-process against each configuration in turn (each with a
    fresh session store). ``seen(query)`` groups events "seen"/"unseen" (None: no groups).
    """
    from tqdm import tqdm

    cfg = config or ReplayConfig()
    runs = []
    for name, (system, use_session) in systems.items():
        bar = tqdm(total=len(sessions), desc=name, unit="session", leave=False,
                   disable=not progress) if progress else None
        t0 = time.perf_counter()
        tally = _replay_inprocess(sessions, system, use_session, cfg, seen, bar)
        wall = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        log.info("replay %s: %d requests in %.1f s", name, len(tally.latency_s), wall)
        runs.append(SystemRun(name, tally, wall, cfg.mode))
    return runs


# -- HTTP replay ---------------------------------------------------------------------


def _httpx() -> Any:
    import importlib

    for name in ("httpx", "httpx2"):  # httpx2 has the same API under another name
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise InputError("the HTTP replay needs aiohttp or httpx: pip install 'qac[sim]'")


def check_url(url: str) -> str:
    """``url`` without a trailing slash, if it is http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in _LOOPBACK:
        raise InputError(f"the replay only drives a local service (http://127.0.0.1:PORT), "
                         f"got {url!r}")
    return url.rstrip("/")


class _Http:
    """The two requests of a simulated user, over aiohttp or httpx.

    aiohttp is preferred: it costs the client about a third of httpx's CPU per
    request, and on a shared machine the client's CPU is the server's too. httpx
    serves the tests (an ASGI transport, no sockets) and machines without aiohttp.
    """

    def __init__(self, url: str, concurrency: int, client: str, transport: Any) -> None:
        self.url = url
        self.concurrency = concurrency
        self.kind = client
        self.transport = transport
        self._session: Any = None

    async def __aenter__(self) -> _Http:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                base_url=self.url, timeout=aiohttp.ClientTimeout(total=10),
                connector=aiohttp.TCPConnector(limit=self.concurrency))
        else:
            httpx = _httpx()
            kw: dict[str, Any] = {"base_url": self.url, "timeout": 10.0, "limits": httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency)}
            if self.transport is not None:
                kw["transport"] = self.transport
            self._session = httpx.AsyncClient(**kw)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def complete(self, params: dict[str, Any]) -> Any:
        """GET /v1/complete; the decoded body (raises on a non-2xx status)."""
        if self.kind == "aiohttp":
            async with self._session.get("/v1/complete", params=params) as r:
                r.raise_for_status()
                return await r.json()
        r = await self._session.get("/v1/complete", params=params)
        r.raise_for_status()
        return r.json()

    async def submit(self, session: str, query: str) -> None:
        """POST /v1/sessions/<id>/queries (raises on a non-2xx status)."""
        path = f"/v1/sessions/{session}/queries"
        if self.kind == "aiohttp":
            async with self._session.post(path, json={"query": query}) as r:
                r.raise_for_status()
            return
        r = await self._session.post(path, json={"query": query})
        r.raise_for_status()


def _client_kind(client: str, transport: Any) -> str:
    if transport is not None or client == "httpx":
        return "httpx"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if client == "aiohttp":
            raise InputError("--client aiohttp: aiohttp is not installed") from None
        return "httpx"
    return "aiohttp"


async def _replay_http(url: str, sessions: Sequence[Session], use_session: bool,
                       cfg: ReplayConfig, progress: Any, client: str = "auto",
                       transport: Any = None) -> _Tally:
    # a per-run tag, so runs against the same Redis never see each other's sessions
    run_tag = os.urandom(4).hex()
    feed = iter(enumerate(sessions))
    tallies = [_Tally(cfg.k) for _ in range(cfg.concurrency)]

    async with _Http(url, cfg.concurrency, _client_kind(client, transport), transport) as http:
        async def user(wid: int) -> None:
            tally = tallies[wid]
            rng = random.Random(cfg.seed * 1_000_003 + wid)
            k, window, typed = cfg.k, cfg.window, cfg.mode == "typed"
            interval = cfg.interval_ms / 1e3
            clock = time.perf_counter
            for i, sess in feed:  # one shared iterator: sessions start in time order
                sid = f"r{run_tag}-{i}"
                for qi, target in enumerate(sess.queries):
                    has_prev = qi > 0
                    at = -1
                    for n in cfg.plan(target, has_prev):
                        params: dict[str, Any] = {"q": target[:n], "k": k}
                        if use_session:
                            params["session"] = sid
                        t0 = clock()
                        try:
                            body = await http.complete(params)
                        except Exception as exc:  # counted; the user goes on typing
                            tally.errors += 1
                            if tally.errors <= 3:
                                log.warning("GET /v1/complete: %s", exc)
                            continue
                        tally.latency_s.append(clock() - t0)
                        tally.took_ms.append(float(body.get("took_ms", float("nan"))))
                        got = [c["text"] for c in body["completions"]]
                        tally.metrics.add(n, None, got, target)
                        if has_prev:
                            tally.with_previous.add(n, None, got, target)
                        if typed and target in got[:window]:
                            at = n
                            break
                        if interval:
                            await asyncio.sleep(_jitter(rng, interval))
                    tally.q_len.append(len(target))
                    tally.q_at.append(at)
                    tally.q_prev.append(has_prev)
                    if use_session:
                        try:
                            await http.submit(sid, target)
                        except Exception:
                            tally.unrecorded += 1
                if progress is not None:
                    progress.update(1)

        await asyncio.gather(*(user(w) for w in range(cfg.concurrency)))
    total = tallies[0]
    for t in tallies[1:]:
        total.merge(t)
    return total


def replay_http(url: str, sessions: Sequence[Session], config: ReplayConfig | None = None,
                names: Sequence[str] = ("service", "service -session"), progress: bool = False,
                client: str = "auto", transport: Any = None) -> list[SystemRun]:
    """Replay against a running ``qac serve`` (``url`` on 127.0.0.1), ``concurrency``
    users at once over that many keep-alive connections.

    ``names``: "service" sends the session id (the previous query comes from the
    service's store, e.g. Redis), "service -session" does not. ``client``: "aiohttp",
    "httpx" or "auto" (aiohttp when installed). ``transport`` is for tests (an httpx
    ASGI transport around the app).
    """
    from tqdm import tqdm

    cfg = config or ReplayConfig()
    if transport is None:
        url = check_url(url)
    runs = []
    for name in names:
        name = _canonical(name)
        if name not in ("service", "service" + NO_SESSION):
            raise InputError(f"HTTP configurations are 'service' and 'service -session', "
                             f"got {name!r}")
        bar = tqdm(total=len(sessions), desc=name, unit="session", leave=False) \
            if progress else None
        t0 = time.perf_counter()
        tally = asyncio.run(_replay_http(url, sessions, name == "service", cfg, bar, client,
                                         transport))
        wall = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        runs.append(SystemRun(name, tally, wall, cfg.mode))
    return runs


# -- reports -------------------------------------------------------------------------


def session_effect(summaries: dict[str, dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """For every NAME with a ``NAME -session`` run: the two on queries with a
    previous query (MRR@k, success@k, keystrokes saved), difference and ratio."""
    out = []
    key = f"mrr@{k}"
    for name, s in summaries.items():
        off = summaries.get(name + NO_SESSION)
        if off is None:
            continue
        on_m, off_m = s["with_previous"]["overall"], off["with_previous"]["overall"]
        row: dict[str, Any] = {
            "system": name,
            "mrr_with_session": on_m[key],
            "mrr_without_session": off_m[key],
            "mrr_delta": on_m[key] - off_m[key],
            "mrr_ratio": on_m[key] / off_m[key] if off_m[key] else float("nan"),
            "success_with_session": on_m[f"success@{k}"],
            "success_without_session": off_m[f"success@{k}"],
        }
        on_l, off_l = s["with_previous"]["by_length"], off["with_previous"]["by_length"]
        if 1 in on_l and 1 in off_l:  # every query is asked at length 1: no survivor bias
            row["mrr_at_length_1_with_session"] = on_l[1][key]
            row["mrr_at_length_1_without_session"] = off_l[1][key]
        if "keystrokes_with_previous" in s:
            row["saved_pct_with_session"] = s["keystrokes_with_previous"]["saved_pct"]
            row["saved_pct_without_session"] = off["keystrokes_with_previous"]["saved_pct"]
        out.append(row)
    return out


def build_report(runs: Sequence[SystemRun], config: ReplayConfig, sessions: Sequence[Session],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: configuration, per-configuration figures, session effect."""
    summaries = {r.name: r.summary() for r in runs}
    n_queries = sum(len(s.queries) for s in sessions)
    return {
        "format": "qac-replay/1",
        "config": {**asdict(config), "lengths": list(config.lengths), **meta},
        "sessions": len(sessions),
        "queries": n_queries,
        "queries_with_previous": n_queries - len(sessions),
        "systems": summaries,
        "session_effect": session_effect(summaries, config.k),
    }


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def markdown(report: dict[str, Any], max_len: int = 12) -> str:
    """A Markdown report of :func:`build_report`'s document."""
    cfg = report["config"]
    k = cfg["k"]
    mrr = f"mrr@{k}"
    systems = report["systems"]
    lines = [
        "# Session replay",
        "",
        f"- target: {cfg.get('target', '?')}; log: `{cfg.get('log', '?')}`"
        + (f" from {cfg['since']}" if cfg.get("since") else "")
        + (f" until {cfg['until']}" if cfg.get("until") else ""),
        f"- {report['sessions']:,} sessions, {report['queries']:,} queries "
        f"({report['queries_with_previous']:,} with a previous query in their session)",
        f"- mode {cfg['mode']}, k={k}, acceptance "
        + (f"at first sight among the {k} shown" if cfg["accept"] == "shown"
           else f"within the top {cfg['top_m']}")
        + f", concurrency {cfg['concurrency']}, keystroke interval {cfg['interval_ms']} ms, "
        f"seed {cfg['seed']}" + (", from the empty prefix" if cfg["from_empty"] else ""),
    ]
    if cfg.get("command"):
        lines.append(f"- command: `{cfg['command']}`")
    if cfg.get("wall_s") is not None:
        lines.append(f"- wall time of the whole run: {cfg['wall_s']:.1f} s")
    lines += ["", "## Summary", "",
              f"MRR@{k}, s@1, s@{k}: over every request; \"w/ prev\": requests of queries "
              "with a previous query in their session; \"seen\": requests whose target is "
              "in the first model's label set; \"completed\": share of queries accepted "
              "from a suggestion; \"saved %\": characters not typed / all characters.", ""]
    typed = cfg["mode"] == "typed"
    head = ["system", "requests", f"MRR@{k}", "s@1", f"s@{k}", f"MRR@{k} w/ prev", "seen"]
    if typed:
        head += ["completed", "saved %", "saved % w/ prev"]
    head += ["p50 ms", "p95 ms", "p99 ms", "req/s", "errors"]
    lines += ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, s in systems.items():
        ov, wp, lat = s["metrics"]["overall"], s["with_previous"]["overall"], s["latency_ms"]
        row = [name, f"{s['throughput']['requests']:,}", _f(ov[mrr]), _f(ov["success@1"]),
               _f(ov[f"success@{k}"]), _f(wp[mrr]),
               _f(s["metrics"]["by_group"].get("seen", {}).get(mrr))]
        if typed:
            ks, kp = s["keystrokes"], s["keystrokes_with_previous"]
            row += [_f(ks["completed_share"], 3), _f(ks["saved_pct"], 1), _f(kp["saved_pct"], 1)]
        row += [_f(lat["p50"], 3), _f(lat["p95"], 3), _f(lat["p99"], 3),
                f"{s['throughput']['requests_per_s']:,.0f}", str(s["errors"])]
        lines.append("| " + " | ".join(row) + " |")
    if any("server_took_ms" in s for s in systems.values()):
        lines += ["", "Server-side time (`took_ms` of each answer), ms:", "",
                  "| system | p50 | p95 | p99 |", "| --- | ---: | ---: | ---: |"]
        for name, s in systems.items():
            if "server_took_ms" in s:
                t = s["server_took_ms"]
                lines.append(f"| {name} | {_f(t['p50'], 3)} | {_f(t['p95'], 3)} | "
                             f"{_f(t['p99'], 3)} |")
    if report["session_effect"]:
        lines += ["", "## Session effect (queries with a previous query)", ""]
        for e in report["session_effect"]:
            text = (f"- **{e['system']}**: MRR@{k} {e['mrr_with_session']:.4f} with the "
                    f"session vs {e['mrr_without_session']:.4f} without "
                    f"({e['mrr_delta']:+.4f}, x{e['mrr_ratio']:.2f}); success@{k} "
                    f"{e['success_with_session']:.4f} vs {e['success_without_session']:.4f}")
            if "mrr_at_length_1_with_session" in e:
                text += (f"; at prefix length 1 MRR@{k} {e['mrr_at_length_1_with_session']:.4f}"
                         f" vs {e['mrr_at_length_1_without_session']:.4f}")
            if "saved_pct_with_session" in e:
                text += (f"; keystrokes saved {e['saved_pct_with_session']:.1f}% vs "
                         f"{e['saved_pct_without_session']:.1f}%")
            lines.append(text)
    # by prefix length
    lengths = sorted({int(n) for s in systems.values() for n in s["metrics"]["by_length"]})
    lengths = [n for n in lengths if n <= max_len]
    if lengths:
        lines += ["", f"## MRR@{k} by prefix length", ""]
        if typed:
            lines += ["Every keystroke the user actually typed counts, until acceptance: at "
                      "length n the queries still being typed (those accepted earlier drop "
                      "out). `qac eval` (and `--mode fixed`) asks every query at fixed lengths "
                      "instead, so these are not its figures. Past length 1 a system that "
                      "gets more queries accepted early leaves the harder ones to the later "
                      "lengths, so a better system can show a lower MRR there: compare the "
                      "overall, length-1 and keystrokes-saved figures, or run `--mode fixed`.",
                      ""]
        lines += ["| system | " + " | ".join(f"n={n}" for n in lengths) + " |",
                  "| --- |" + " ---: |" * len(lengths)]
        for name, s in systems.items():
            bl = {int(n): v for n, v in s["metrics"]["by_length"].items()}
            lines.append(f"| {name} | " + " | ".join(
                _f(bl[n][mrr]) if n in bl else "-" for n in lengths) + " |")
        lines += ["", f"success@{k} by prefix length:", "",
                  "| system | " + " | ".join(f"n={n}" for n in lengths) + " |",
                  "| --- |" + " ---: |" * len(lengths)]
        for name, s in systems.items():
            bl = {int(n): v for n, v in s["metrics"]["by_length"].items()}
            lines.append(f"| {name} | " + " | ".join(
                _f(bl[n][f"success@{k}"]) if n in bl else "-" for n in lengths) + " |")
        first = next(iter(systems.values()))
        bl = {int(n): v for n, v in first["metrics"]["by_length"].items()}
        lines += ["", "requests at each length (first system): " + ", ".join(
            f"n={n}: {bl[n]['count']:,}" for n in lengths if n in bl)]
    lines += ["", "Plots: `mrr_by_prefix.png`, `latency_cdf.png`"
              + (", `keystrokes_saved.png`" if typed else "") + "."]
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[SystemRun], report: dict[str, Any], out: Path,
         max_len: int = 20, min_count: int = 30) -> list[Path]:
    """The PNG plots (matplotlib, Agg): MRR by prefix length, latency CDF, and in
    typed mode the keystrokes-saved histogram. Lengths with fewer than ``min_count``
    requests are left out of the MRR plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["config"]["k"]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        bl = report["systems"][r.name]["metrics"]["by_length"]
        xs = sorted(int(n) for n, v in bl.items() if int(n) <= max_len
                    and v["count"] >= min_count)
        ax.plot(xs, [bl[n][f"mrr@{k}"] for n in xs], marker="o", ms=3, label=r.name)
    ax.set_xlabel("prefix length (characters typed)")
    ax.set_ylabel(f"MRR@{k}")
    ax.set_title(f"MRR@{k} by prefix length ({report['config']['mode']} mode)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "mrr_by_prefix.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        lat = np.sort(np.asarray(r.tally.latency_s, dtype=np.float64) * 1e3)
        if lat.size:
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=r.name)
    ax.set_xscale("log")
    ax.set_xlabel("latency per keystroke (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "latency_cdf.png"))

    if report["config"]["mode"] == "typed":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in runs:
            ax.hist(r.saved_pct_per_query(), bins=SAVED_BINS, histtype="step", lw=1.5,
                    label=r.name)
        ax.set_xlabel("keystrokes saved per query (%)")
        ax.set_ylabel("queries")
        ax.set_yscale("log")
        ax.set_title("Keystrokes saved (0 = typed in full)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "keystrokes_saved.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jsonable(obj: Any) -> Any:
    """NaN -> None, so the file is strict JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def write_outputs(runs: Sequence[SystemRun], report: dict[str, Any], out: str | os.PathLike[str],
                  plots: bool = True) -> list[Path]:
    """Write ``replay.json``, ``replay.md`` and the PNGs into ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "replay.json", out / "replay.md"]
    tmp = out / ".replay.json.tmp"
    tmp.write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, paths[0])
    paths[1].write_text(markdown(report))
    if plots:
        paths += plot(runs, report, out)
    return paths


# -- command line (``qac replay`` / ``python sim/replay.py``) ---------------------------


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2006-05-18, got {text!r}"
                                         ) from None


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``qac replay`` options."""
    parser.add_argument("--log", required=True, help="query log (AOL TSV, or TSV with session "
                        "id and timestamp columns; see qac.logs)")
    parser.add_argument("--since", type=_date, help="replay rows from this date on")
    parser.add_argument("--until", type=_date, help="replay rows before this date")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", action="append", metavar="[NAME=]DIR",
                       help="completer model directory, in-process (repeatable)")
    where.add_argument("--url", help="a running `qac serve` on 127.0.0.1, e.g. "
                       "http://127.0.0.1:8000")
    parser.add_argument("--client", choices=("auto", "aiohttp", "httpx"), default="auto",
                        help="HTTP client of --url (auto: aiohttp when installed)")
    parser.add_argument("--systems", help="comma-separated configurations: mpc, mpc+bg, "
                        "NAME, NAME-nosession, NAME-nolongtail (in-process; default mpc and "
                        "every model without long tail, with and without session); service, "
                        "service-nosession (HTTP; default both)")
    parser.add_argument("--sessions", type=int, default=0,
                        help="replay this many sessions, sampled with --seed (0 = all)")
    parser.add_argument("--concurrency", type=int, default=1, help="simultaneous users")
    parser.add_argument("--interval-ms", type=float, default=0.0,
                        help="pause between keystrokes (jittered 0.5-1.5x; 0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                        help="in-process: distinct past queries of the user sent with "
                        f"each request (default {DEFAULT_HISTORY}; 0: none)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--mode", choices=MODES, default="typed",
                        help="typed: simulation; fixed: qac eval's lengths, no acceptance")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="prefix lengths of --mode fixed")
    parser.add_argument("--accept", choices=ACCEPT, default="shown",
                        help="shown: accept at first sight among the k; top: within --top-m")
    parser.add_argument("--top-m", type=int, default=3)
    parser.add_argument("--from-empty", action="store_true",
                        help="also ask before the first keystroke when there is a previous "
                        "query")
    parser.add_argument("--out", default="replay-out", help="output directory")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_replay(args: argparse.Namespace) -> int:
    """Run ``qac replay`` from parsed arguments; prints where the outputs went."""
    import sys

    from qac.logs import read_log

    try:
        lengths = tuple(int(x) for x in str(args.lengths).split(",") if x.strip())
    except ValueError:
        raise InputError(f"--lengths: comma-separated integers, got {args.lengths!r}") from None
    cfg = ReplayConfig(k=args.k, mode=args.mode, lengths=lengths, accept=args.accept,
                       top_m=args.top_m, from_empty=args.from_empty,
                       interval_ms=args.interval_ms, concurrency=args.concurrency,
                       sessions=args.sessions, seed=args.seed, history=args.history)
    t_start = time.perf_counter()
    # the whole log up to --until: rows before --since feed the users' histories
    events = read_log(args.log, until=args.until)
    sessions = sample_sessions(sessions_of(events, args.since, cfg.history), cfg.sessions,
                               cfg.seed)
    select = [s for s in args.systems.split(",") if s.strip()] if args.systems else None
    progress = not args.quiet
    if args.url:
        runs = replay_http(args.url, sessions, cfg, names=select or
                           ("service", "service" + NO_SESSION), progress=progress,
                           client=args.client)
        target = (f"HTTP {args.url} ({_client_kind(args.client, None)}; latency measured "
                  "by the client)")
    else:
        from qac.complete import Completer

        models: dict[str, Any] = {}
        for spec in args.model:
            name, _, path = spec.rpartition("=")
            models[name or Path(path).name] = (path, Completer.load(path))
        systems = inprocess_systems({n: c for n, (_, c) in models.items()}, select)
        first = next(iter(models.values()))[1]
        runs = replay(sessions, systems, cfg, seen=first.labels.__contains__,
                      progress=progress)
        target = "in-process " + ", ".join(f"{n}={p}" for n, (p, _) in models.items())
    meta = {"target": target, "log": str(args.log),
            "since": args.since.date().isoformat() if args.since else None,
            "until": args.until.date().isoformat() if args.until else None,
            "command": " ".join(sys.argv), "wall_s": time.perf_counter() - t_start}
    report = build_report(runs, cfg, sessions, meta)
    paths = write_outputs(runs, report, args.out, plots=not args.no_plots)
    if args.json:
        print(json.dumps(_jsonable(report), indent=1))
    else:
        print(markdown(report))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0

"""Who the simulated users are and how they behave: the replay's configuration
(:class:`ReplayConfig`) and the log's sessions (:class:`Session`), in time order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from qac.errors import InputError
from qac.evaluate import DEFAULT_HISTORY, DEFAULT_LENGTHS, Case
from qac.history import Past, UserLog
from qac.logs import LogEvent

MODES = ("typed", "fixed")
ACCEPT = ("shown", "top")


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
    """One simulated user: its queries in order (normalized) with their Unix times
    (0.0: unknown), when it started, and its user's past queries when it started
    (most recently issued first)."""

    id: str
    queries: tuple[str, ...]
    start: datetime | None
    history: tuple[Past, ...] = ()
    times: tuple[float, ...] = ()

    def case(self, i: int, size: int = DEFAULT_HISTORY) -> Case:
        """Query ``i`` and its context: the previous query, this session's earlier
        queries (most recent first), and the user's history with them folded in (as
        the store holds it then: at most ``size`` distinct queries)."""
        times = self.times or (0.0,) * len(self.queries)
        earlier = list(zip(self.queries[:i], times[:i], strict=True))
        hist: dict[str, Past] = {h.query: h for h in reversed(self.history[:size])}
        for q, t in earlier:
            old = hist.pop(q, None)
            hist[q] = Past(q, 1 if old is None else old.count + 1, t)
        while len(hist) > size:
            del hist[next(iter(hist))]
        return Case(self.queries[i], self.queries[i - 1] if i else None,
                    tuple(reversed(hist.values())), tuple(reversed(earlier))[:10], times[i])


def sessions_of(events: Sequence[LogEvent], since: datetime | None = None,
                history: int = DEFAULT_HISTORY) -> list[Session]:
    """Group events by session, sessions in the time order of their first event
    (log order among equal or missing times). Only sessions whose first event is
    at or after ``since`` are kept; earlier events (in log order, as a user's are
    in time order) feed each user's ``history`` of up to that many distinct queries
    (events without a user id count as their session's)."""
    order: dict[str, tuple[int, datetime | None, list[str], list[float], tuple[Past, ...]]] = {}
    users = UserLog(history)
    for i, e in enumerate(events):
        t = e.time.timestamp() if e.time is not None else 0.0
        got = order.get(e.session)
        if got is not None:
            got[2].append(e.query)
            got[3].append(t)
        elif since is None or (e.time is not None and e.time >= since):
            order[e.session] = (i, e.time, [e.query], [t],
                                users.context(e.session, e.user).history)
        users.add(e.session, e.user, e.query, t)
    rows = sorted(order.items(), key=lambda kv: (kv[1][1] is None, kv[1][1] or datetime.min,
                                                 kv[1][0]))
    return [Session(sid, tuple(qs), t, h, tuple(ts)) for sid, (_, t, qs, ts, h) in rows]


def sample_sessions(sessions: Sequence[Session], n: int, seed: int) -> list[Session]:
    """``n`` sessions drawn with ``seed``, kept in their order (all when n is 0 or more)."""
    if n <= 0 or n >= len(sessions):
        return list(sessions)
    keep = sorted(random.Random(seed).sample(range(len(sessions)), n))
    return [sessions[i] for i in keep]


def _jitter(rng: random.Random, interval_s: float) -> float:
    return interval_s * (0.5 + rng.random())

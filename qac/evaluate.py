"""Offline evaluation of completion: the numbers ``qac eval`` prints.

For every test query that has a previous query in its session, at each prefix
length in ``lengths`` shorter than the query, each system is asked for k
completions of the prefix, given the previous query and the user's history (their
last ``history`` distinct queries before this one, as the session store would hold
them: the log is replayed in order, so rows before the test window count too).
:class:`qac.metrics.CompletionMetrics` (the single definition of MRR shared with
the replay simulator) scores them, grouped by whether the target is in the model's
label set ("seen") or not ("unseen"). Per-call latency is measured in-process
around each call, the systems taking turns on each keystroke; coverage (what a
system can produce at all) in a pass of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qac.logs import LogEvent
from qac.metrics import CompletionMetrics, percentiles

DEFAULT_LENGTHS = (1, 2, 3, 5, 8)
#: distinct past queries per user a test case carries (the session store's default)
DEFAULT_HISTORY = 200

#: (prefix, previous query or None, k, user's history most recent first) -> texts
System = Callable[[str, str | None, int, Sequence[str]], list[str]]


@dataclass(frozen=True)
class Case:
    previous: str
    target: str
    history: tuple[str, ...] = ()


class UserHistory:
    """Each user's last ``size`` distinct queries, most recent first (what
    :mod:`qac.session` keeps): ``get(user)`` then ``add(user, query)`` per event."""

    def __init__(self, size: int = DEFAULT_HISTORY) -> None:
        self.size = size
        self._seen: dict[str, dict[str, None]] = {}

    @staticmethod
    def user_of(e: LogEvent) -> str:
        """Whose history an event belongs to: its user, else its session."""
        return e.user if e.user is not None else e.session

    def get(self, user: str) -> tuple[str, ...]:
        d = self._seen.get(user)
        return tuple(reversed(d)) if d else ()

    def add(self, user: str, query: str) -> None:
        if self.size <= 0:
            return
        d = self._seen.setdefault(user, {})
        d.pop(query, None)
        d[query] = None
        if len(d) > self.size:
            del d[next(iter(d))]


def test_cases(events: Sequence[LogEvent], since: datetime | None = None,
               history: int = DEFAULT_HISTORY) -> list[Case]:
    """Test queries with a previous query in their session, in log order, each with
    the user's last ``history`` distinct earlier queries (events without a user id
    count as their session's). With ``since``, only sessions that start at or after
    it are tested (as the replay simulator does); earlier rows feed the histories.
    """
    last: dict[str, str] = {}
    tested: dict[str, bool] = {}
    hist = UserHistory(history)
    out: list[Case] = []
    for e in events:
        prev = last.get(e.session)
        user = hist.user_of(e)
        if prev is None:
            tested[e.session] = since is None or (e.time is not None and e.time >= since)
        elif tested[e.session]:
            out.append(Case(prev, e.query, hist.get(user)))
        last[e.session] = e.query
        hist.add(user, e.query)
    return out


class CompleterSystem:
    """A :class:`qac.complete.Completer` as a System, optionally blind to the
    previous query or to the history; ``can_produce`` says whether the target is
    anywhere among what it ranks (the long-tail pool, or the labels and MPC table)."""

    def __init__(self, c: Any, session: bool = True, history: bool = True) -> None:
        self.c, self.session, self.history = c, session, history

    def __call__(self, p: str, prev: str | None, k: int, hist: Sequence[str]) -> list[str]:
        return [x.text for x in self.c.complete(p, prev if self.session else None, k,
                                                hist if self.history else ())]

    def can_produce(self, p: str, prev: str | None, hist: Sequence[str], target: str) -> bool:
        c = self.c
        if c.config.longtail and c.longtail is not None:
            texts, _, _ = c.candidates(p, (prev or "") if self.session else "",
                                       history=hist if self.history else ())
            return target in texts
        return target in c.labels or c.mpc.count(target) > 0


class MpcSystem:
    """A :class:`qac.mpc.MostPopular` table as a System (context-free)."""

    def __init__(self, mpc: Any) -> None:
        self.mpc = mpc

    def __call__(self, p: str, prev: str | None, k: int, hist: Sequence[str]) -> list[str]:
        return [t for t, _ in self.mpc.complete(p, k)]

    def can_produce(self, p: str, prev: str | None, hist: Sequence[str], target: str) -> bool:
        return bool(self.mpc.count(target) > 0)


def evaluate(
    systems: dict[str, System],
    cases: Sequence[Case],
    seen: Callable[[str], bool],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    k: int = 10,
    progress: bool = False,
    coverage: bool = True,
) -> dict[str, dict[str, Any]]:
    """Score every system on every (case, prefix length); returns name -> figures.

    The systems take turns on each keystroke, so a shared machine's drifting speed
    weighs on all of them alike and their latencies compare within one run.
    ``coverage``: for systems with a ``can_produce(prefix, previous, history, target)``
    method, the share of test targets (asked at one or more lengths) that the system
    has among its candidates at one or more of those lengths, whatever their rank.
    """
    from tqdm import tqdm

    names = list(systems)
    calls = list(systems.values())
    metrics = [CompletionMetrics(k=k) for _ in names]
    times: list[list[float]] = [[] for _ in names]
    clock = time.perf_counter
    for case in tqdm(cases, desc="eval", disable=not progress, leave=False):
        group = "seen" if seen(case.target) else "unseen"
        for n in lengths:
            if n >= len(case.target):
                break
            prefix = case.target[:n]
            for system, m, t in zip(calls, metrics, times, strict=True):
                t0 = clock()
                got = system(prefix, case.previous, k, case.history)
                t.append((clock() - t0) * 1e3)
                m.add(n, group, got, case.target)
    out: dict[str, dict[str, Any]] = {}
    for name, system, m, t in zip(names, calls, metrics, times, strict=True):
        reach = getattr(system, "can_produce", None) if coverage else None
        out[name] = {"metrics": m.summary(), "latency_ms": percentiles(t),
                     "coverage": None if reach is None else _coverage(reach, cases, lengths)}
    return out


def _coverage(reach: Callable[[str, str | None, Sequence[str], str], bool],
              cases: Sequence[Case], lengths: Sequence[int]) -> float | None:
    """Share of the cases asked at one or more lengths whose target ``reach`` finds
    at one or more of them (a pass of its own, so it does not disturb the timing)."""
    asked = covered = 0
    for case in cases:
        ns = [n for n in lengths if n < len(case.target)]
        if ns:
            asked += 1
            covered += any(reach(case.target[:n], case.previous, case.history, case.target)
                           for n in ns)
    return covered / asked if asked else None


def format_table(results: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """A plain-text table: MRR@k by prefix length, seen/unseen, success, BLEU,
    coverage ("-" for a system that cannot say), latency."""
    names = list(results)
    first = results[names[0]]["metrics"]
    k = first["k"]
    lengths = list(first["by_length"])
    head = ["system", *[f"mrr@{k} n={n}" for n in lengths], f"mrr@{k}", "seen", "unseen",
            "s@1", f"s@{k}", "bleu@1", "cover", "p50 ms", "p99 ms"]
    if baseline:
        head.append(f"x {baseline}")
    rows = [head]
    base = results[baseline]["metrics"]["overall"][f"mrr@{k}"] if baseline else None
    for name in names:
        m, lat = results[name]["metrics"], results[name]["latency_ms"]
        ov = m["overall"]
        groups = m["by_group"]
        row = [name]
        row += [f"{m['by_length'][n][f'mrr@{k}']:.4f}" for n in lengths]
        row += [f"{ov[f'mrr@{k}']:.4f}",
                f"{groups.get('seen', {}).get(f'mrr@{k}', float('nan')):.4f}",
                f"{groups.get('unseen', {}).get(f'mrr@{k}', float('nan')):.4f}",
                f"{ov['success@1']:.4f}", f"{ov[f'success@{k}']:.4f}", f"{ov['bleu@1']:.4f}",
                "-" if results[name].get("coverage") is None
                else f"{results[name]['coverage']:.4f}",
                f"{lat['p50']:.3f}", f"{lat['p99']:.3f}"]
        if base:
            row.append(f"{ov[f'mrr@{k}'] / base:.2f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
                     for r in rows)

"""Offline evaluation of completion: the numbers ``qac eval`` prints.

For every test query that has a previous query in its session, at each prefix
length in ``lengths`` shorter than the query, each system is asked for k
completions of the prefix given the context a session store would hold then
(:class:`qac.history.UserLog` replays the whole log in order, so rows before the
test window count too): the previous query, this session's queries, and the user's
past queries with how often and when. :class:`qac.metrics.CompletionMetrics` (the
single definition of MRR, shared with the replay simulator) scores them, grouped by
whether the target is in the model's label set ("seen") or not ("unseen").

Every figure stands beside two baselines of the same run: most popular completion
(``mpc``) and the user's own past queries that start with the prefix, most recent
first, then MPC (``hist+mpc``); ``qac eval`` adds the latter under the model's
blocklist (``hist+mpc -blocked``), which the model itself always applies. Per-call
latency is measured in-process around each call, the systems taking turns on each
keystroke; coverage (what a system can produce at all) in a pass of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qac.history import HISTORY_SIZE, Past, UserLog
from qac.logs import LogEvent
from qac.metrics import CompletionMetrics, percentiles

DEFAULT_LENGTHS = (1, 2, 3, 5, 8)
#: distinct past queries per user a test case carries (the session store's default)
DEFAULT_HISTORY = HISTORY_SIZE


@dataclass(frozen=True, eq=False)
class Case:
    """One test query and the context it was typed in (see :mod:`qac.history`)."""

    target: str
    previous: str | None
    history: tuple[Past, ...] = ()
    session: tuple[tuple[str, float], ...] = ()
    time: float = 0.0


#: (prefix, case, k) -> texts; a system reads the case's context, never its target
System = Callable[[str, Case, int], list[str]]


def test_cases(events: Sequence[LogEvent], since: datetime | None = None,
               history: int = DEFAULT_HISTORY) -> list[Case]:
    """Test queries with a previous query in their session, in log order, each with
    the context of its user then. With ``since``, only sessions that start at or after
    it are tested (as the replay simulator does); earlier rows feed the contexts."""
    users = UserLog(history)
    tested: dict[str, bool] = {}
    out: list[Case] = []
    for e in events:
        t = e.time.timestamp() if e.time is not None else 0.0
        prev = users.previous(e.session)
        if prev is None:
            tested[e.session] = since is None or (e.time is not None and e.time >= since)
        elif tested[e.session]:
            ctx = users.context(e.session, e.user)
            out.append(Case(e.query, ctx.previous, ctx.history, ctx.session, t))
        users.add(e.session, e.user, e.query, t)
    return out


class CompleterSystem:
    """A :class:`qac.complete.Completer` as a System: with the whole context, or
    blind to the session (``session=False``: no previous query, no session list) or
    to the history. ``can_produce`` says whether the target is in the pool at all."""

    def __init__(self, c: Any, session: bool = True, history: bool = True) -> None:
        self.c, self.session, self.history = c, session, history
        self._case: Case | None = None
        self._packed: tuple[Any, Any] = ((), ())

    def prepare(self, case: Case) -> None:
        """Pack the case's context once for all its prefix lengths (outside the timed
        calls: a session store hands a keystroke only the past queries with its
        prefix, already in the shape the kernel reads)."""
        self._context(case)

    def _context(self, case: Case) -> tuple[Any, Any]:
        if case is not self._case:
            self._case = case
            self._packed = (self.c.pack_history(case.history if self.history else ()),
                            self.c.pack_session(case.session if self.session else ()))
        return self._packed

    def __call__(self, p: str, case: Case, k: int) -> list[str]:
        hist, sess = self._context(case)
        prev = case.previous if self.session else None
        return [x.text for x in self.c.complete(p, prev, k, hist, sess, case.time)]

    def can_produce(self, p: str, case: Case) -> bool:
        hist, sess = self._context(case)
        prev = case.previous if self.session else None
        texts, _, _ = self.c.pool(p, prev, hist, sess, case.time)
        return case.target in texts


class MpcSystem:
    """A :class:`qac.mpc.MostPopular` table as a System (context-free)."""

    def __init__(self, mpc: Any) -> None:
        self.mpc = mpc

    def __call__(self, p: str, case: Case, k: int) -> list[str]:
        return [t for t, _ in self.mpc.top(p, k)]

    def can_produce(self, p: str, case: Case) -> bool:
        return bool(self.mpc.count(case.target) > 0)


class HistoryThenMpc:
    """The personal baseline: the user's past queries that start with the prefix,
    most recently issued first, then the most popular completions.

    ``blocklist``: drop the texts it blocks from both halves, as the model does (the
    baseline under the model's content policy; without it, the baseline shows a
    user their own blocked queries)."""

    def __init__(self, mpc: Any, blocklist: Any = None) -> None:
        self.mpc = mpc
        self.blocks = (blocklist.blocks_normalized  # history and labels are normalized
                       if blocklist is not None and len(blocklist) else None)

    def __call__(self, p: str, case: Case, k: int) -> list[str]:
        mine = sorted((h for h in case.history if h.query.startswith(p)),
                      key=lambda h: -h.last)
        blocked = self.blocks or (lambda _: False)
        out = [t for t in dict.fromkeys(h.query for h in mine) if not blocked(t)][:k]
        # 2k popular completions fill any list (at most k of them repeat the user's);
        # more are read only when blocked ones leave it short (a long read would evict
        # the caches of the systems timed after this one)
        fetch = 2 * k
        while len(out) < k:
            seen = set(out)
            top = self.mpc.top(p, fetch)
            add = [t for t, _ in top if t not in seen and not blocked(t)]
            if len(add) >= k - len(out) or len(top) < fetch:
                return out + add[:k - len(out)]
            fetch *= 4
        return out

    def can_produce(self, p: str, case: Case) -> bool:
        if self.blocks is not None and self.blocks(case.target):
            return False
        return bool(self.mpc.count(case.target) > 0) or any(
            h.query == case.target for h in case.history)


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
    weighs on all of them alike and their latencies compare within one run. A system
    with a ``prepare(case)`` method gets it once per case, outside the timing.
    ``coverage``: for systems with a ``can_produce(prefix, case)`` method, the share
    of test targets (asked at one or more lengths) that the system has among its
    candidates at one or more of those lengths, whatever their rank.
    """
    from tqdm import tqdm

    names = list(systems)
    calls = list(systems.values())
    prepares = [p for p in (getattr(s, "prepare", None) for s in calls) if p is not None]
    metrics = [CompletionMetrics(k=k) for _ in names]
    times: list[list[float]] = [[] for _ in names]
    clock = time.perf_counter
    for case in tqdm(cases, desc="eval", disable=not progress, leave=False):
        group = "seen" if seen(case.target) else "unseen"
        for prepare in prepares:
            prepare(case)
        for n in lengths:
            if n >= len(case.target):
                break
            prefix = case.target[:n]
            for system, m, t in zip(calls, metrics, times, strict=True):
                t0 = clock()
                got = system(prefix, case, k)
                t.append((clock() - t0) * 1e3)
                m.add(n, group, got, case.target)
    out: dict[str, dict[str, Any]] = {}
    for name, system, m, t in zip(names, calls, metrics, times, strict=True):
        reach = getattr(system, "can_produce", None) if coverage else None
        out[name] = {"metrics": m.summary(), "latency_ms": percentiles(t),
                     "coverage": None if reach is None else _coverage(reach, cases, lengths)}
    return out


def _coverage(reach: Callable[[str, Case], bool], cases: Sequence[Case],
              lengths: Sequence[int]) -> float | None:
    """Share of the cases asked at one or more lengths whose target ``reach`` finds
    at one or more of them (a pass of its own, so it does not disturb the timing)."""
    asked = covered = 0
    for case in cases:
        ns = [n for n in lengths if n < len(case.target)]
        if ns:
            asked += 1
            covered += any(reach(case.target[:n], case) for n in ns)
    return covered / asked if asked else None


def format_table(results: dict[str, dict[str, Any]], baselines: Sequence[str] = ()) -> str:
    """A plain-text table: MRR@k by prefix length, seen/unseen, success, BLEU,
    coverage ("-" for a system that cannot say), MRR@k counting a near-duplicate of
    the target as a hit ("variants"), latency, and the ratio of MRR@k to each
    baseline."""
    names = list(results)
    first = results[names[0]]["metrics"]
    k = first["k"]
    lengths = list(first["by_length"])
    head = ["system", *[f"mrr@{k} n={n}" for n in lengths], f"mrr@{k}", "seen", "unseen",
            "s@1", f"s@{k}", "bleu@1", "cover", "variants", "p50 ms", "p99 ms"]
    head += [f"x {b}" for b in baselines]
    rows = [head]
    base = [results[b]["metrics"]["overall"][f"mrr@{k}"] for b in baselines]
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
                f"{ov[f'mrr_variants@{k}']:.4f}",
                f"{lat['p50']:.3f}", f"{lat['p99']:.3f}"]
        row += [f"{ov[f'mrr@{k}'] / b:.3f}" if b else "-" for b in base]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
                     for r in rows)

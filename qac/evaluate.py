"""Offline evaluation of completion: the numbers ``qac eval`` prints.

For every test query that has a previous query in its session, at each prefix
length in ``lengths`` shorter than the query, each system is asked for k
completions of the prefix; :class:`qac.metrics.CompletionMetrics` (the single
definition of MRR shared with the replay simulator) scores them, grouped by
whether the target is in the model's label set ("seen") or not ("unseen").
Per-call latency is measured in-process around each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qac.logs import LogEvent, pairs
from qac.metrics import CompletionMetrics, percentiles

DEFAULT_LENGTHS = (1, 2, 3, 5, 8)

#: (prefix, previous query or None, k) -> completion texts, best first
System = Callable[[str, str | None, int], list[str]]


@dataclass(frozen=True)
class Case:
    previous: str
    target: str


def test_cases(events: Sequence[LogEvent]) -> list[Case]:
    """Test queries with a previous query in their session, in log order."""
    return [Case(prev, q) for prev, q in pairs(events) if prev is not None]


def evaluate(
    systems: dict[str, System],
    cases: Sequence[Case],
    seen: Callable[[str], bool],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    k: int = 10,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score every system on every (case, prefix length); returns name -> figures."""
    from tqdm import tqdm

    out: dict[str, dict[str, Any]] = {}
    for name, system in systems.items():
        metrics = CompletionMetrics(k=k)
        times: list[float] = []
        for case in tqdm(cases, desc=name, disable=not progress, leave=False):
            group = "seen" if seen(case.target) else "unseen"
            for n in lengths:
                if n >= len(case.target):
                    break
                prefix = case.target[:n]
                t0 = time.perf_counter()
                got = system(prefix, case.previous, k)
                times.append((time.perf_counter() - t0) * 1e3)
                metrics.add(n, group, got, case.target)
        out[name] = {"metrics": metrics.summary(), "latency_ms": percentiles(times)}
    return out


def format_table(results: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """A plain-text table: MRR@k by prefix length, seen/unseen, success, BLEU, latency."""
    names = list(results)
    first = results[names[0]]["metrics"]
    k = first["k"]
    lengths = list(first["by_length"])
    head = ["system", *[f"mrr@{k} n={n}" for n in lengths], f"mrr@{k}", "seen", "unseen",
            "s@1", f"s@{k}", "bleu@1", "p50 ms", "p99 ms"]
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
                f"{lat['p50']:.3f}", f"{lat['p99']:.3f}"]
        if base:
            row.append(f"{ov[f'mrr@{k}'] / base:.2f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
                     for r in rows)

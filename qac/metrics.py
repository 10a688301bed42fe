"""Completion quality and latency figures: the one definition used by eval and replay.

``qac eval`` and the session replay simulator both feed :class:`CompletionMetrics`, so
MRR, success and BLEU mean exactly the same thing in every report.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from qac.errors import InputError


def _rank(candidates: Sequence[str], target: str, k: int) -> int:
    """1-based rank of ``target`` among the first ``k`` candidates, 0 if absent."""
    for i, c in enumerate(candidates[:k]):
        if c == target:
            return i + 1
    return 0


def _variant_rank(candidates: Sequence[str], target: str, k: int) -> int:
    """1-based rank of the first of the first ``k`` candidates that is ``target`` or a
    near-duplicate of it (the same ``qac_variant_key``: spacing, punctuation, web
    decorations, a plural s), 0 if none."""
    from qac._kernel import variant_key

    key = variant_key(target)
    for i, c in enumerate(candidates[:k]):
        if c == target or variant_key(c) == key:
            return i + 1
    return 0


def reciprocal_rank(candidates: Sequence[str], target: str, k: int = 10) -> float:
    """1/rank of ``target`` if it is among the first ``k`` candidates, else 0."""
    r = _rank(candidates, target, k)
    return 1.0 / r if r else 0.0


def success_at(candidates: Sequence[str], target: str, k: int) -> bool:
    """Whether ``target`` is among the first ``k`` candidates."""
    return _rank(candidates, target, k) > 0


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def sentence_bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    """Word-level BLEU of one candidate against one reference, in [0, 1].

    Words are whitespace-separated tokens. Modified (clipped) n-gram precisions
    p_n for n = 1..max_n, combined as a geometric mean and multiplied by the
    brevity penalty exp(1 - r/c) when the candidate (c words) is shorter than the
    reference (r words). Smoothing is Lin & Och (2004), "smoothing 2" in Chen &
    Cherry (2014): for n > 1 both the matched and the total n-gram counts get +1,
    so a short query with no bigram match is not scored 0; p_1 is not smoothed,
    so a candidate sharing no word with the reference scores 0, as does an empty
    candidate.
    """
    if max_n < 1:
        raise InputError(f"max_n must be >= 1, got {max_n}")
    cand = candidate.split()
    ref = reference.split()
    if not cand:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        c_grams = _ngrams(cand, n)
        r_grams = _ngrams(ref, n)
        matched = sum(min(cnt, r_grams[g]) for g, cnt in c_grams.items())
        total = max(len(cand) - n + 1, 0)
        if n == 1:
            if matched == 0:
                return 0.0
            log_sum += math.log(matched / total)
        else:
            log_sum += math.log((matched + 1) / (total + 1))
    c, r = len(cand), len(ref)
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(log_sum / max_n)


#: accumulator cells per (prefix length, group)
_CELLS = 6


class CompletionMetrics:
    """Accumulates MRR@k, success@1, success@k and top-1 BLEU per prefix length and group.

    One :meth:`add` per (prefix, target) event. ``group`` tags the event (e.g. "seen"
    / "unseen" for whether the target occurred in training), or None for none.
    Figures in :meth:`summary` are means over events; ``count`` is the event count.
    ``mrr_variants@k`` is MRR@k where a near-duplicate of the target (the variant
    key qac collapses by: "woot.com" for "woot") counts as the target: what a list
    that shows one variant of each group loses only by the exact-match rule.
    """

    def __init__(self, k: int = 10) -> None:
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        self.k = k
        # (prefix_len, group) -> [count, sum rr, sum success@1, sum success@k, sum bleu,
        # sum rr of the target or a near-duplicate]
        self._cells: dict[tuple[int, str | None], list[float]] = {}

    def add(self, prefix_len: int, group: str | None, candidates: Sequence[str],
            target: str) -> None:
        """Record one completion: ``candidates`` best first, ``target`` the query typed."""
        if prefix_len < 0:
            raise InputError(f"prefix_len must be >= 0, got {prefix_len}")
        r = _rank(candidates, target, self.k)
        cell = self._cells.get((prefix_len, group))
        if cell is None:
            cell = self._cells[(prefix_len, group)] = [0.0] * _CELLS
        cell[0] += 1
        if r:
            cell[1] += 1.0 / r
            cell[2] += r == 1
            cell[3] += 1
        rv = r if r == 1 else _variant_rank(candidates, target, self.k)
        if rv:
            cell[5] += 1.0 / rv
        if candidates:
            cell[4] += sentence_bleu(candidates[0], target)

    def merge(self, other: CompletionMetrics) -> None:
        """Add another accumulator's events (e.g. from a parallel replay worker)."""
        if other.k != self.k:
            raise InputError(f"cannot merge metrics at k={other.k} into k={self.k}")
        for key, cell in other._cells.items():
            mine = self._cells.setdefault(key, [0.0] * _CELLS)
            for i, v in enumerate(cell):
                mine[i] += v

    @property
    def count(self) -> int:
        return int(sum(c[0] for c in self._cells.values()))

    def _figures(self, cells: Iterable[list[float]]) -> dict[str, float]:
        tot = [0.0] * _CELLS
        for cell in cells:
            for i, v in enumerate(cell):
                tot[i] += v
        n = tot[0]
        mean = (lambda v: v / n) if n else (lambda v: float("nan"))
        return {
            "count": int(n),
            f"mrr@{self.k}": mean(tot[1]),
            "success@1": mean(tot[2]),
            f"success@{self.k}": mean(tot[3]),
            "bleu@1": mean(tot[4]),
            f"mrr_variants@{self.k}": mean(tot[5]),
        }

    def summary(self) -> dict[str, Any]:
        """All figures: ``overall``, ``by_length`` {len: figs}, ``by_group`` {group: figs}
        and ``by_group_length`` {group: {len: figs}} (groups exclude None).

        figs = {"count", "mrr@k", "success@1", "success@k", "bleu@1", "mrr_variants@k"};
        means are NaN when count is 0.
        """
        lengths = sorted({length for length, _ in self._cells})
        groups = sorted({g for _, g in self._cells if g is not None})
        return {
            "k": self.k,
            "overall": self._figures(self._cells.values()),
            "by_length": {
                n: self._figures(c for (length, _), c in self._cells.items() if length == n)
                for n in lengths
            },
            "by_group": {
                g: self._figures(c for (_, grp), c in self._cells.items() if grp == g)
                for g in groups
            },
            "by_group_length": {
                g: {
                    n: self._figures([self._cells[(n, g)]])
                    for n in lengths if (n, g) in self._cells
                }
                for g in groups
            },
        }


def percentiles(samples_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Latency summary in the samples' unit: n, mean, p50, p95, p99, max.

    Percentiles interpolate linearly (numpy's default). No samples: n = 0, the
    rest NaN.
    """
    a = np.asarray(samples_ms, dtype=np.float64).ravel()
    if a.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "p50": nan, "p95": nan, "p99": nan, "max": nan}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(p50), "p95": float(p95),
            "p99": float(p99), "max": float(a.max())}

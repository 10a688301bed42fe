"""One configuration's replay: its name and what it measured (:class:`SystemRun`),
with the definitions of the per-run figures (keystrokes saved, completion share,
latency, throughput)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qac.metrics import CompletionMetrics, percentiles

NO_SESSION = " -session"
NO_CONTEXT = " -context"
#: bins (percent) of the keystrokes-saved histogram in the JSON and the plot
SAVED_BINS = tuple(range(0, 101, 5))


def _canonical(name: str) -> str:
    name = name.strip()
    for short, long in (("-nosession", NO_SESSION), ("-nocontext", NO_CONTEXT)):
        if name.endswith(short):
            return name[: -len(short)] + long
    return name


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

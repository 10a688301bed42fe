"""The replay's PNG plots (matplotlib, Agg backend): MRR by prefix length, latency
CDF, keystrokes-saved histogram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qac.replay.runs import SAVED_BINS, SystemRun


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

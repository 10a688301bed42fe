"""Memory of N worker processes serving one model directory: what each holds alone.

    python sim/memory.py MODEL_DIR [--workers 4] [--query TEXT ...] [--no-touch] [--json]

Starts N fresh processes (spawned, so nothing is inherited from this one). Each opens the
model directory with ``qac.storage.open_model_dir`` (checksums verified, as a server
does), builds what a server answers with (a completer with ``Completer.load``, else the
engine with ``Engine.from_model_dir``; every array memory-mapped), reads
every page of every mapped array (``--no-touch`` skips that: then only the pages the
queries reach are resident), answers the queries, and waits. With all N alive, this
process reads each one's ``/proc/<pid>/smaps_rollup``:

- RSS: resident pages, shared ones counted in full in every process;
- PSS: each shared page divided by the number of processes that map it (their sum is
  what the N processes cost the machine);
- private: pages only this process holds (Private_Clean + Private_Dirty): what one more
  worker would add.

One more process imports the same modules and loads nothing (the ``baseline`` row): the
interpreter, numpy, scipy and qac themselves, which every worker pays whatever the model.

It works for any model directory whose manifest config has an ``engine`` section (a
completer or a retriever; ``qac.storage`` and ``qac.engine`` only, whatever the answer
path above the engine looks like). ``QAC_SRC=/path/to/checkout`` runs another qac tree.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("QAC_SRC", str(ROOT)))

QUERIES = ("weather", "google maps", "bank of america", "new york times", "ebay", "")
FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/smaps_rollup, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if key in FIELDS and parts:
                out[key] = int(parts[0]) * 1024
    return out


def _touch(md: Any) -> int:
    """Read one byte of every page of every .npy array in the directory (memory-mapped)."""
    import numpy as np

    n = 0
    for name in md.manifest["files"]:
        if name.endswith(".npy"):
            a = md.array(name[: -len(".npy")])
            if a.size:
                b = a.reshape(-1).view(np.uint8)
                n += int(b[::4096].sum(dtype=np.uint64)) & 1  # the read is the point
    return n


def worker(path: str | None, queries: list[str], touch: bool, ready: Any, done: Any) -> None:
    """One serving process: load, (touch), answer, report, wait. ``path`` None: import
    only (the baseline)."""
    from qac.engine import Engine
    from qac.storage import open_model_dir
    from qac.text import normalize

    if path is None:
        ready.put({"pid": os.getpid(), "load_seconds": 0.0, "answers": [], "baseline": True})
        done.wait(600)
        return
    try:
        t0 = time.perf_counter()
        md = open_model_dir(path)
        if md.kind == "completer":  # the whole answer path, as qac serve loads it
            from qac.complete import Completer

            completer = Completer.load(path, verify=False)
            load_s = time.perf_counter() - t0
            if touch:
                _touch(md)
            answers = [len(completer.complete(q, k=10)) for q in queries]
        else:
            engine = Engine.from_model_dir(md)
            load_s = time.perf_counter() - t0
            if touch:
                _touch(md)
            answers = [len(engine.search(normalize(q), k=10)[0]) for q in queries]
        ready.put({"pid": os.getpid(), "load_seconds": load_s, "answers": answers})
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        ready.put({"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"})
        return
    done.wait(600)


def measure(path: Path, workers: int, queries: list[str], touch: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(str(path), queries, touch, ready, done))
             for _ in range(workers)]
    procs.append(ctx.Process(target=worker, args=(None, queries, touch, ready, done)))
    for p in procs:
        p.start()
    try:
        reports = [ready.get(timeout=600) for _ in procs]
        errors = [r["error"] for r in reports if "error" in r]
        if errors:
            raise SystemExit(f"a worker failed: {errors[0]}")
        rows = []
        for r in sorted(reports, key=lambda r: (r.get("baseline", False), r["pid"])):
            m = smaps_rollup(r["pid"])
            rows.append({"pid": r["pid"], "baseline": r.get("baseline", False),
                         "load_seconds": r["load_seconds"],
                         "answers": r["answers"], "rss": m.get("Rss", 0),
                         "pss": m.get("Pss", 0),
                         "private": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0),
                         "shared": m.get("Shared_Clean", 0) + m.get("Shared_Dirty", 0)})
    finally:
        done.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    du = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    served = [r for r in rows if not r["baseline"]]
    return {"model_dir": str(path), "disk_bytes": int(du.stdout.split()[0]),
            "workers": served, "baseline": [r for r in rows if r["baseline"]][0],
            "touched": touch, "queries": queries,
            "sum_pss": sum(r["pss"] for r in served), "sum_rss": sum(r["rss"] for r in served)}


def table(res: dict[str, Any]) -> str:
    mib = 2**20
    lines = [f"{res['model_dir']}: {res['disk_bytes'] / mib:.1f} MiB on disk, "
             f"{len(res['workers'])} workers, "
             + ("every mapped page touched" if res["touched"] else "pages touched by queries only"),
             f"{'worker pid':>10s} {'load s':>7s} {'RSS MiB':>8s} {'PSS MiB':>8s} "
             f"{'private MiB':>11s} {'shared MiB':>10s}"]
    for r in res["workers"] + [res["baseline"]]:
        name = "baseline" if r["baseline"] else str(r["pid"])
        lines.append(f"{name:>10s} {r['load_seconds']:>7.2f} {r['rss'] / mib:>8.1f} "
                     f"{r['pss'] / mib:>8.1f} {r['private'] / mib:>11.1f} "
                     f"{r['shared'] / mib:>10.1f}")
    lines.append(f"{'workers':>10s} {'':>7s} {res['sum_rss'] / mib:>8.1f} "
                 f"{res['sum_pss'] / mib:>8.1f}   (sum over the workers)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--query", action="append", help="a query to answer (repeatable)")
    ap.add_argument("--no-touch", action="store_true",
                    help="do not read every mapped page first")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.workers < 1:
        ap.error("--workers must be >= 1")
    res = measure(a.model_dir, a.workers, a.query or list(QUERIES), not a.no_touch)
    print(json.dumps(res, indent=1) if a.json else table(res))


if __name__ == "__main__":
    main()

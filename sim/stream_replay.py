"""The live stream against the frozen model: a time-ordered replay of a week (issue 13).

The model is trained on the log's rows before ``--since`` (the dev split: rows before
2006-05-11, ``/tmp/m/dev4``); the cases are :func:`qac.evaluate.test_cases` of the week
``--since`` .. ``--until`` (queries with a previous query in their session, each with
its user's context then), taken in time order. Before each case, every query of the
week submitted strictly earlier (every session's, the first query of a session too)
has been observed (:meth:`qac.complete.Completer.observe`, the user as the session,
the row's time) by each live completer, and by none of the others. Each system sees
the same cases:

- MRR@10 at prefix lengths 1, 2, 3, 5, 8 (``qac eval``'s protocol, seen/unseen by the
  model's labels);
- keystrokes saved: the user types the query one character at a time and accepts it
  as soon as it is among the 10 shown (characters not typed / characters of all
  cases; the acceptance itself is not a keystroke), as ``qac replay``'s typed mode.

Systems: ``mpc`` and ``hist+mpc`` (the baselines of ``qac eval``), ``frozen`` (the
model as trained) and ``live w=W`` for each ``--weights`` value (what one live
submission counts for beside the training log's counts; ``default``:
:meth:`qac.live.LiveConfig.weight_for`, recent_days * 86400 * ln 2 / half_life).

Usage::

    python sim/stream_replay.py --model /tmp/m/dev4 [--weights 1,5,default] [--json out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qac.complete import Completer  # noqa: E402
from qac.evaluate import DEFAULT_LENGTHS, CompleterSystem, HistoryThenMpc, MpcSystem, test_cases  # noqa: E402
from qac.live import LiveConfig  # noqa: E402
from qac.logs import read_log  # noqa: E402
from qac.metrics import CompletionMetrics  # noqa: E402
from qac.mpc import MostPopular  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AOL = ROOT.parent / "shared" / "data" / "aol" / "sessions" / "aol_top1000_sessions_dev.tsv.gz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/m/dev4")
    ap.add_argument("--log", default=str(AOL))
    ap.add_argument("--since", default="2006-05-11")
    ap.add_argument("--until", default="2006-05-18")
    ap.add_argument("--weights", default="1,5,default",
                    help="live weights to try, comma-separated ('default': the formula)")
    ap.add_argument("--half-life", type=float, default=LiveConfig().half_life)
    ap.add_argument("--privacy-floor", type=int, default=LiveConfig().privacy_floor)
    ap.add_argument("--cases", type=int, default=0, help="only the first N cases (0: all)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    since, until = datetime.fromisoformat(args.since), datetime.fromisoformat(args.until)
    k = args.k
    lengths = DEFAULT_LENGTHS

    t0 = time.perf_counter()
    events = [e for e in read_log(args.log, until=until)]
    week = sorted((e for e in events if e.time is not None and e.time >= since),
                  key=lambda e: e.time)  # type: ignore[arg-type, return-value]
    cases = sorted(test_cases(events, since=since), key=lambda c: c.time)
    if args.cases:
        cases = cases[:args.cases]
    c = Completer.load(args.model)
    mpc = MostPopular(dict(zip(c.labels.texts(), c.labels.counts.tolist(), strict=True)))
    systems: dict[str, Any] = {"mpc": MpcSystem(mpc), "hist+mpc": HistoryThenMpc(mpc),
                               "frozen": CompleterSystem(c)}
    live: list[Completer] = []
    for w in args.weights.split(","):
        cfg = LiveConfig(half_life=args.half_life, privacy_floor=args.privacy_floor,
                         weight=None if w == "default" else float(w))
        view = c.with_options()
        view.live = view.new_overlay(cfg)
        live.append(view)
        systems[f"live w={cfg.weight_for(c.config.recent_days):g}"] = CompleterSystem(view)
    print(f"{len(cases)} cases, {len(week)} events in the week, model {args.model} "
          f"({len(c.labels)} labels); loaded in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)

    metrics = {name: CompletionMetrics(k=k) for name in systems}
    saved = dict.fromkeys(systems, 0)
    chars = 0
    seen = c.__contains__
    j = 0
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        while j < len(week) and week[j].time.timestamp() < case.time:  # type: ignore[union-attr]
            e = week[j]
            for view in live:
                view.observe(e.query, e.user or e.session, e.time.timestamp())  # type: ignore[union-attr]
            j += 1
        target = case.target
        group = "seen" if seen(target) else "unseen"
        chars += len(target)
        last = max((n for n in lengths if n < len(target)), default=0)
        for name, system in systems.items():
            m = metrics[name]
            accepted = False
            for n in range(1, len(target)):
                if accepted and n > last:
                    break
                got = system(target[:n], case, k)
                if n in lengths:
                    m.add(n, group, got, target)
                if not accepted and target in got:
                    accepted = True
                    saved[name] += len(target) - n
        if i and i % 2000 == 0:
            print(f"{i}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out: dict[str, Any] = {
        "model": args.model, "since": args.since, "until": args.until, "cases": len(cases),
        "week_events": len(week), "half_life": args.half_life,
        "privacy_floor": args.privacy_floor, "seconds": round(time.perf_counter() - t0, 1),
        "overlay": live[0].live.stats() if live and live[0].live is not None else {},
        "systems": {}}
    for name, m in metrics.items():
        s = m.summary()
        out["systems"][name] = {
            f"mrr@{k}": round(s["overall"][f"mrr@{k}"], 4),
            "by_length": {n: round(v[f"mrr@{k}"], 4) for n, v in s["by_length"].items()},
            "seen": round(s["by_group"].get("seen", {}).get(f"mrr@{k}", float("nan")), 4),
            "unseen": round(s["by_group"].get("unseen", {}).get(f"mrr@{k}", float("nan")), 4),
            "keystrokes_saved": round(saved[name] / chars, 4) if chars else None}
    frozen = out["systems"]["frozen"][f"mrr@{k}"]
    head = f"{'system':>14}  " + "  ".join(f"n={n:<5}" for n in lengths) + \
        f"  mrr@{k}   seen  unseen  saved  x frozen"
    print(head)
    for name, r in out["systems"].items():
        print(f"{name:>14}  " + "  ".join(f"{r['by_length'].get(n, 0):.4f}" for n in lengths)
              + f"  {r[f'mrr@{k}']:.4f}  {r['seen']:.4f}  {r['unseen']:.4f}  "
              f"{r['keystrokes_saved']:.4f}  {r[f'mrr@{k}'] / frozen:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

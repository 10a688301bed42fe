"""Tune the completer's answer-time options on a dev split of the training log.

The test week is never looked at: the model is trained on rows before ``--dev-from``
and the options are scored on ``--dev-from`` .. ``--until`` (the last week before the
test week by default). Prints MRR@10 per option setting; the best popularity
exponent is the default of :class:`qac.complete.CompleterConfig`.

    python sim/tune_completion.py --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from qac.blocklist import Blocklist
from qac.complete import Completer, CompleterConfig
from qac.evaluate import evaluate, test_cases
from qac.logs import query_counts, read_log
from qac.mpc import MostPopular


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True)
    ap.add_argument("--dev-from", default="2006-05-11")
    ap.add_argument("--until", default="2006-05-18")
    ap.add_argument("--index", default="hybrid")
    ap.add_argument("--model", default="bench-out/tune-model",
                    help="where the dev model is cached")
    ap.add_argument("--popularity", default="0,0.1,0.2,0.3,0.5,0.75,1.0")
    ap.add_argument("--candidates", default="20,50")
    ap.add_argument("--beam", default="10")
    ap.add_argument("--per-char", default="0")
    ap.add_argument("--background", help="query-only log whose counts join the popularity")
    ap.add_argument("--previous-weight", default="",
                    help="also retrain with these previous-query block weights")
    args = ap.parse_args()
    dev_from = datetime.fromisoformat(args.dev_from)
    until = datetime.fromisoformat(args.until)
    train = read_log(args.log, until=dev_from)
    cases = test_cases(read_log(args.log, since=dev_from, until=until))
    print(f"train rows: {len(train)}, dev cases: {len(cases)}")
    weights = [None] + [float(w) for w in args.previous_weight.split(",") if w]
    results = []
    for w in weights:
        path = Path(args.model + (f"-pw{w}" if w is not None else ""))
        if not (path / "manifest.json").exists():
            cfg = CompleterConfig(index=args.index)
            if w is not None:
                cfg = replace(cfg, previous_weight=w)
            t0 = time.perf_counter()
            Completer.train(train, cfg).save(path)
            print(f"trained {path} in {time.perf_counter() - t0:.0f}s")
        base = Completer.load(path)
        if args.background:
            counts = query_counts(train)
            counts.update(query_counts(read_log(args.background)))
            blocked = Blocklist.default().blocks
            base = Completer(base.config, base.engine, base.labels,
                             MostPopular({q: c for q, c in counts.items() if not blocked(q)}))
        seen = base.labels.__contains__
        for beta in (float(b) for b in args.popularity.split(",")):
            for cand, beam, pc in ((int(c), int(b), float(x)) for c in args.candidates.split(",")
                                   for b in args.beam.split(",")
                                   for x in args.per_char.split(",")):
                c = base.with_options(popularity=beta, candidates=cand, beam=beam,
                                      popularity_per_char=pc)
                def system(p: str, prev: str | None, k: int, c: Completer = c) -> list[str]:
                    return [x.text for x in c.complete(p, prev, k)]

                r = evaluate({"m": system}, cases, seen)["m"]
                m = r["metrics"]
                row = {"previous_weight": w, "popularity": beta, "candidates": cand, "beam": beam,
                       "per_char": pc,
                       "mrr@10": m["overall"]["mrr@10"],
                       "by_length": {n: v["mrr@10"] for n, v in m["by_length"].items()}}
                results.append(row)
                print(json.dumps(row))
    mpc = evaluate({"mpc": lambda p, prev, k: [t for t, _ in base.mpc.complete(p, k)]},
                   cases, seen)["mpc"]["metrics"]
    print("mpc:", json.dumps({"mrr@10": mpc["overall"]["mrr@10"],
                              "by_length": {n: v["mrr@10"] for n, v in mpc["by_length"].items()}}))
    best = max(results, key=lambda r: r["mrr@10"])
    print("best:", json.dumps(best))


if __name__ == "__main__":
    main()

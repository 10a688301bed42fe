"""Tune the completer's answer-time options on a dev split of the training log.

The test week is never looked at: the model is trained on rows before ``--dev-from``
and the options are scored on ``--dev-from`` .. ``--until`` (the last week before the
test week by default). Prints MRR@10 per option setting; the best popularity
exponent is the default of :class:`qac.complete.CompleterConfig`.

    python sim/tune_completion.py --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz

Long tail (:mod:`qac.longtail`): ``--fit-ranker W.json`` builds the word and ending
tables from the rows before ``--dev-from`` (plus ``--background``), pools the
candidates of every dev (prefix, previous query), fits the ranker on the pools that
hold the target, prints dev figures with and without each generator, and writes
the weights. With ``--history 0`` the cases carry no history, and the weights are
those of keystrokes that come without it. ``--attach SRC --attach-out DST --weights
W.json [--weights-no-history W0.json]`` then builds the tables from the rows before
``--until`` (the whole training log) and saves the completer at SRC with them and
the fitted rankers to DST:

    python sim/tune_completion.py --log $LOG --background $BG --model $DEV_MODEL \
        --fit-ranker bench-out/ranker.json
    python sim/tune_completion.py --log $LOG --background $BG --model $DEV_MODEL \
        --history 0 --fit-ranker bench-out/ranker-nohist.json
    python sim/tune_completion.py --log $LOG --background $BG \
        --weights bench-out/ranker.json --weights-no-history bench-out/ranker-nohist.json \
        --attach models/hybrid --attach-out models/hybrid-lt
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from qac.blocklist import Blocklist
from qac.complete import Completer, CompleterConfig
from qac.evaluate import (
    DEFAULT_HISTORY,
    DEFAULT_LENGTHS,
    CompleterSystem,
    MpcSystem,
    evaluate,
    format_table,
    test_cases,
)
from qac.logs import query_counts, read_log
from qac.longtail import GENERATORS, LongTail, LongTailConfig, Ranker
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
    ap.add_argument("--fit-ranker", metavar="JSON",
                    help="fit the long-tail ranker on the dev split, write its weights")
    ap.add_argument("--weights", metavar="JSON", help="ranker weights for --attach")
    ap.add_argument("--weights-no-history", metavar="JSON",
                    help="weights of keystrokes without history for --attach (a fit with "
                         "--history 0; default: qac.longtail.DEFAULT_WEIGHTS_NO_HISTORY)")
    ap.add_argument("--attach", metavar="DIR", help="completer to give long-tail statistics")
    ap.add_argument("--attach-out", metavar="DIR")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--history", type=int, default=DEFAULT_HISTORY,
                    help="distinct past queries per user each case carries (0: none)")
    ap.add_argument("--lt-config", default="{}",
                    help='LongTailConfig fields as JSON, e.g. \'{"suffixes": 6}\'')
    args = ap.parse_args()
    if args.attach:
        attach(args)
        return
    if args.fit_ranker:
        fit_ranker(args)
        return
    dev_from = datetime.fromisoformat(args.dev_from)
    until = datetime.fromisoformat(args.until)
    train = read_log(args.log, until=dev_from)
    cases = test_cases(read_log(args.log, until=until), since=dev_from, history=args.history)
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
                r = evaluate({"m": CompleterSystem(c)}, cases, seen, coverage=False)["m"]
                m = r["metrics"]
                row = {"previous_weight": w, "popularity": beta, "candidates": cand, "beam": beam,
                       "per_char": pc,
                       "mrr@10": m["overall"]["mrr@10"],
                       "by_length": {n: v["mrr@10"] for n, v in m["by_length"].items()}}
                results.append(row)
                print(json.dumps(row))
    mpc = evaluate({"mpc": MpcSystem(base.mpc)}, cases, seen, coverage=False)["mpc"]["metrics"]
    print("mpc:", json.dumps({"mrr@10": mpc["overall"]["mrr@10"],
                              "by_length": {n: v["mrr@10"] for n, v in mpc["by_length"].items()}}))
    best = max(results, key=lambda r: r["mrr@10"])
    print("best:", json.dumps(best))


def _counts(train: list, background: str | None) -> Counter[str]:
    counts = query_counts(train)
    if background:
        counts.update(query_counts(read_log(background)))
    blocked = Blocklist.default().blocks
    return Counter({q: c for q, c in counts.items() if not blocked(q)})


def attach(args: argparse.Namespace) -> None:
    """Long-tail tables from the rows before --until, the fitted ranker, saved with SRC."""
    if not args.attach_out or not args.weights:
        raise SystemExit("--attach needs --attach-out and --weights")
    train = read_log(args.log, until=datetime.fromisoformat(args.until))
    ranker = Ranker.from_dict(json.loads(Path(args.weights).read_text())["weights"])
    nohist = (Ranker.from_dict(json.loads(Path(args.weights_no_history).read_text())["weights"])
              if args.weights_no_history else None)
    t0 = time.perf_counter()
    lt = LongTail.build(_counts(train, args.background), Blocklist.default(),
                        LongTailConfig(**json.loads(args.lt_config)), ranker=ranker,
                        ranker_no_history=nohist)
    print(f"long tail: {len(lt.words)} words, {len(lt.suffixes)} endings in "
          f"{time.perf_counter() - t0:.1f}s")
    c = Completer.load(args.attach).with_longtail(lt)
    c.with_options(longtail_generators=GENERATORS).save(args.attach_out)
    print(f"saved {args.attach_out}")


def fit_ranker(args: argparse.Namespace) -> None:
    """Fit the long-tail ranker on the dev split; print dev figures and an ablation."""
    dev_from = datetime.fromisoformat(args.dev_from)
    until = datetime.fromisoformat(args.until)
    train = read_log(args.log, until=dev_from)
    cases = test_cases(read_log(args.log, until=until), since=dev_from, history=args.history)
    path = Path(args.model)
    if not (path / "manifest.json").exists():
        Completer.train(train, CompleterConfig(index=args.index)).save(path)
    base = Completer.load(path)
    counts = _counts(train, args.background)
    base = Completer(replace(base.config, candidates=50, popularity=0.5,
                             popularity_per_char=0.3, longtail_generators=GENERATORS),
                     base.engine, base.labels, MostPopular(counts))
    t0 = time.perf_counter()
    lt = LongTail.build(counts, Blocklist.default(),
                        LongTailConfig(**json.loads(args.lt_config)))
    print(f"train rows: {len(train)}, dev cases: {len(cases)}; long tail {len(lt.words)} "
          f"words, {len(lt.suffixes)} endings in {time.perf_counter() - t0:.1f}s")
    c = base.with_longtail(lt)
    groups = []
    n_events = 0
    by_source: Counter[str] = Counter()
    t0 = time.perf_counter()
    for case in cases:
        for n in DEFAULT_LENGTHS:
            if n >= len(case.target):
                break
            n_events += 1
            texts, sources, X = c.candidates(case.target[:n], case.previous,
                                             history=case.history)
            try:
                i = texts.index(case.target)
            except ValueError:
                continue
            by_source[sources[i]] += 1
            groups.append((X.astype(np.float32), i))
    print(f"pools: {n_events} events, target in pool {len(groups) / n_events:.4f} "
          f"({time.perf_counter() - t0:.0f}s); by source {dict(by_source)}")
    ranker = Ranker.fit(groups, l2=args.l2)
    weights = ranker.to_dict()
    print(json.dumps(weights, indent=1))
    Path(args.fit_ranker).parent.mkdir(parents=True, exist_ok=True)
    Path(args.fit_ranker).write_text(json.dumps(
        {"weights": weights, "dev_from": args.dev_from, "until": args.until,
         "history": args.history, "coverage": len(groups) / n_events, "l2": args.l2},
        indent=1))
    # fitted with history: the ranker of keystrokes with history; with --history 0
    # the one of keystrokes without (the cases then carry none)
    fitted = base.with_longtail(lt.with_ranker(ranker) if args.history
                                else lt.with_ranker(ranker_no_history=ranker))
    systems: dict[str, Any] = {"mpc": MpcSystem(fitted.mpc), "base": CompleterSystem(base),
                               "longtail": CompleterSystem(fitted)}
    for g in GENERATORS:
        systems[f"longtail -gen {g}"] = CompleterSystem(fitted.with_options(
            longtail_generators=tuple(x for x in GENERATORS if x != g)))
    systems["longtail (model+mpc only)"] = CompleterSystem(
        fitted.with_options(longtail_generators=()))
    res = evaluate(systems, cases, base.labels.__contains__)
    print("dev split (in-sample for the ranker weights):")
    print(format_table(res, baseline="mpc"))


if __name__ == "__main__":
    main()

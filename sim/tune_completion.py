"""Tune the completer's answer-time options on a dev split of the training log.

The test week is never looked at. The model is trained with ``Completer.train`` on
the rows before ``--dev-from`` (so its ranker is fitted on the last week before that
date, as ``qac train`` does), then every combination of the options below is scored
on ``--dev-from`` .. ``--until`` beside the two baselines (MPC, and the user's past
queries then MPC), with the same test cases ``qac eval`` builds (the previous query
is :func:`qac.logs.previous_queries`'s, the context :class:`qac.history.UserLog`'s):

    python sim/tune_completion.py \
        --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz \
        --beam 10,20 --model-answers 10,20 --mpc-answers 10,20

The best setting's values are the defaults of :class:`qac.sources.SourcesConfig`
and :class:`qac.complete.CompleterConfig`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from qac.complete import Completer, CompleterConfig
from qac.evaluate import (
    DEFAULT_HISTORY,
    CompleterSystem,
    HistoryThenMpc,
    MpcSystem,
    evaluate,
    test_cases,
)
from qac.logs import read_log
from qac.mpc import MostPopular


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True, help="sessions TSV with times")
    ap.add_argument("--dev-from", default="2006-05-11", help="first day of the dev split")
    ap.add_argument("--until", default="2006-05-18", help="end of the dev split (excluded)")
    ap.add_argument("--index", default="hybrid", help="index of the dev model")
    ap.add_argument("--model", default="bench-out/tune-model",
                    help="where the dev model is cached (trained when missing)")
    ap.add_argument("--beam", default="10", help="beam widths to try")
    ap.add_argument("--model-answers", default="10", help="beam answers put into the pool")
    ap.add_argument("--mpc-answers", default="10", help="MPC answers put into the pool")
    ap.add_argument("--rare", default="10", help="rare-prefix thresholds to try")
    ap.add_argument("--history", type=int, default=DEFAULT_HISTORY,
                    help="distinct past queries per user each case carries (0: none)")
    args = ap.parse_args()
    dev_from = datetime.fromisoformat(args.dev_from)
    until = datetime.fromisoformat(args.until)
    path = Path(args.model)
    if not (path / "manifest.json").exists():
        t0 = time.perf_counter()
        Completer.train(read_log(args.log, until=dev_from),
                        CompleterConfig(index=args.index), progress=True).save(path)
        print(f"trained {path} in {time.perf_counter() - t0:.0f}s")
    base = Completer.load(path)
    cases = test_cases(read_log(args.log, until=until), since=dev_from, history=args.history)
    print(f"dev cases: {len(cases)}; ranker: {json.dumps(base.fit)}")
    mpc = MostPopular(dict(zip(base.labels.texts(), base.labels.counts.tolist(), strict=True)))
    systems = {"mpc": MpcSystem(mpc), "hist+mpc": HistoryThenMpc(mpc)}
    grid = list(itertools.product(_ints(args.beam), _ints(args.model_answers),
                                  _ints(args.mpc_answers), _ints(args.rare)))
    for beam, n_model, n_mpc, rare in grid:
        c = base.with_options(beam=beam, sources=replace(base.config.sources, model=n_model,
                                                         mpc=n_mpc, rare=rare))
        systems[f"beam={beam} model={n_model} mpc={n_mpc} rare={rare}"] = CompleterSystem(c)
    results = evaluate(systems, cases, base.__contains__, coverage=False, progress=True)
    ref = {b: results[b]["metrics"]["overall"]["mrr@10"] for b in ("mpc", "hist+mpc")}
    for name, r in results.items():
        m = r["metrics"]
        print(json.dumps({"system": name, "mrr@10": round(m["overall"]["mrr@10"], 4),
                          "x mpc": round(m["overall"]["mrr@10"] / ref["mpc"], 3),
                          "x hist+mpc": round(m["overall"]["mrr@10"] / ref["hist+mpc"], 3),
                          "by_length": {n: round(v["mrr@10"], 4)
                                        for n, v in m["by_length"].items()}}))


if __name__ == "__main__":
    main()

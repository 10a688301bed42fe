"""The ``qac`` command line: ``qac train|complete|eval|serve|replay|demo`` and
``qac retrieve train|query|eval``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from qac.errors import QacError

log = logging.getLogger("qac")


def _sample_file(name: str) -> Path:
    return Path(str(resources.files("qac") / "data" / name))


def _cache_dir() -> Path:
    base = os.environ.get("QAC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qac"
    )
    return Path(base)


def _engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from qac.model.train import TrainConfig

    return {
        "branching": args.branching,
        "max_leaf_size": args.max_leaf_size,
        "beam": args.beam,
        "threads": args.threads,
        "seed": args.seed,
        "train": TrainConfig(threads=args.threads, seed=args.seed),
    }


def _print(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=1))
    else:
        for k, v in obj.items():
            print(f"{k:>26}: {v:.4f}" if isinstance(v, float) else f"{k:>26}: {v}")


def _date(text: str) -> Any:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from exc


def _blocklist(path: str | None) -> Any:
    from qac.blocklist import Blocklist

    return Blocklist.from_file(path) if path else None


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from qac.complete import CompleterConfig, train_completer
    from qac.engine import EngineConfig

    base = CompleterConfig(index=args.index, trie_depth=args.trie_depth,
                           min_count=args.min_count, popularity=args.popularity,
                           popularity_per_char=args.popularity_per_char,
                           longtail=args.longtail)
    engine = EngineConfig(blocks=base.engine_config().blocks, **_engine_overrides(args))
    t0 = time.perf_counter()
    c = train_completer(args.log, args.out, replace(base, engine=engine), until=args.until,
                        background=args.background, progress=not args.quiet,
                        blocklist=_blocklist(args.blocklist))
    print(f"trained a {args.index} completer: {len(c.labels)} labels in "
          f"{time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from qac.complete import Completer

    c = Completer.load(args.model, blocklist=_blocklist(args.blocklist))
    from qac.text import normalize

    history = [q for q in (normalize(h) for h in args.history) if q]
    got = c.complete(args.prefix, args.previous, k=args.k, history=history)
    if args.json:
        print(json.dumps([g.__dict__ for g in got], indent=1))
    else:
        for g in got:
            print(f"{g.score:9.4f}  {g.source:7}  {g.text}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qac.complete import Completer
    from qac.evaluate import CompleterSystem, MpcSystem, evaluate, format_table, test_cases
    from qac.logs import read_log
    from qac.longtail import GENERATORS
    from qac.mpc import MostPopular

    # the whole log up to --until: rows before --since feed the users' histories
    cases = test_cases(read_log(args.log, until=args.until), since=args.since,
                       history=args.history)
    if args.limit:
        cases = cases[: args.limit]
    models = {Path(m).name: Completer.load(m) for m in args.models}
    first = next(iter(models.values()))
    # The baseline: most popular completion over the training log's queries (the
    # first model's labels and counts); "mpc+bg" when its fill also has a background log.
    mpc = MostPopular(dict(zip(first.labels.labels, first.labels.counts.tolist(), strict=True)))
    systems: dict[str, Any] = {"mpc": MpcSystem(mpc)}
    if len(first.mpc) != len(mpc):
        # its own instance (same arrays): its lookup cache must not warm the model's
        systems["mpc+bg"] = MpcSystem(MostPopular.from_parts(first.mpc.trie,
                                                             first.mpc.arrays()))
    for name, c in models.items():
        # Systems take turns on each keystroke (qac.evaluate): the model itself goes
        # first, so its latency carries the cold caches; the rows after it share
        # its engine and tables, and run warmer.
        systems[name] = CompleterSystem(c)
        longtail = c.longtail is not None and c.config.longtail
        if longtail:  # the same engine without the long-tail pool, in the same run
            systems[f"{name} -longtail"] = CompleterSystem(c.with_options(longtail=False))
        if args.no_ablation:
            continue
        systems[f"{name} -session"] = CompleterSystem(c, session=False)
        if longtail:
            for g in GENERATORS:
                if g in c.config.longtail_generators:
                    rest = tuple(x for x in c.config.longtail_generators if x != g)
                    systems[f"{name} -gen {g}"] = CompleterSystem(
                        c.with_options(longtail_generators=rest))
    results = evaluate(systems, cases, first.labels.__contains__,
                       k=args.k, progress=not args.json, coverage=not args.no_coverage)
    if args.json:
        print(json.dumps({"cases": len(cases), "results": results}, indent=1))
    else:
        print(f"{len(cases)} test queries with a previous query in their session\n")
        print(format_table(results, baseline="mpc"))
    return 0


def cmd_retrieve_train(args: argparse.Namespace) -> int:
    from qac.retrieve import Retriever, default_config, read_tsv

    t0 = time.perf_counter()
    pairs = read_tsv(args.pairs)
    items = read_tsv(args.items) if args.items else None
    r = Retriever.train(pairs, items, default_config(**_engine_overrides(args)),
                        progress=not args.quiet)
    out = r.save(args.out)
    print(f"trained on {len(pairs)} pairs, {len(r.items)} items in "
          f"{time.perf_counter() - t0:.1f}s -> {out}")
    return 0


def cmd_retrieve_query(args: argparse.Namespace) -> int:
    from qac.retrieve import Retriever

    r = Retriever.load(args.model)
    hits = r.search(args.text, k=args.k)
    if args.json:
        print(json.dumps([{"item": i, "score": s} for i, s in hits], indent=1))
    else:
        for item, score in hits:
            print(f"{score:.4f}\t{item}")
    return 0


def cmd_retrieve_eval(args: argparse.Namespace) -> int:
    from qac.retrieve import Retriever, read_tsv

    r = Retriever.load(args.model)
    report = r.evaluate(read_tsv(args.pairs), latency_sample=args.latency_sample)
    _print(report.as_dict(), args.json)
    return 0


def _demo_models(rebuild: bool) -> tuple[Path, Path]:
    """The demo's completer and retriever, trained once on the bundled samples."""
    from qac.complete import Completer
    from qac.logs import read_log
    from qac.retrieve import Retriever, read_tsv
    from qac.storage import MANIFEST

    cache = _cache_dir()
    completer, retriever = cache / "demo-completer", cache / "demo-retriever"
    if rebuild or not (completer / MANIFEST).exists():
        print(f"training a completer on the bundled sample -> {completer}", file=sys.stderr)
        Completer.train(read_log(_sample_file("sample_sessions.tsv.gz")),
                        progress=True).save(completer)
    if rebuild or not (retriever / MANIFEST).exists():
        print(f"training a retriever on the bundled sample -> {retriever}", file=sys.stderr)
        Retriever.train(read_tsv(_sample_file("sample_pairs.tsv")),
                        read_tsv(_sample_file("sample_items.tsv")),
                        progress=True).save(retriever)
    return completer, retriever


def cmd_demo(args: argparse.Namespace) -> int:
    completer_dir, retriever_dir = _demo_models(args.rebuild)
    if args.queries or args.no_serve:
        from qac.complete import Completer
        from qac.retrieve import Retriever

        c, r = Completer.load(completer_dir), Retriever.load(retriever_dir)
        for text in args.queries or ["we", "goo"]:
            print(f"\ncompletions of {text!r}:")
            for x in c.complete(text, k=args.k):
                print(f"  {x.score:8.4f}  {x.source:5}  {x.text}")
            print(f"items for {text!r}:")
            for item, score in r.search(text, k=args.k):
                print(f"  {score:8.4f}  {item}")
        return 0
    from qac.server.serve import run_serve

    print(f"qac demo: open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve = argparse.Namespace(model_dir=str(completer_dir), retrieval_dir=str(retriever_dir),
                               redis_url=None, host=args.host, port=args.port, workers=1,
                               admin_token_env=None, log_level="warning")
    return run_serve(serve)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--branching", type=int, default=16, help="tree branching factor B")
    p.add_argument("--max-leaf-size", type=int, default=100, help="labels per leaf cluster")
    p.add_argument("--beam", type=int, default=10, help="beam width at query time")
    p.add_argument("--threads", type=int, default=2, help="worker threads for training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def build_parser() -> argparse.ArgumentParser:
    from qac.evaluate import DEFAULT_HISTORY
    ap = argparse.ArgumentParser(prog="qac", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a session-aware completer from a query log")
    p.add_argument("--log", required=True,
                   help="sessions TSV (user, session, query, time) or one query per line")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--index", choices=["hybrid", "trie", "tree"], default="hybrid")
    p.add_argument("--trie-depth", type=int, default=None,
                   help="trie levels (default 2 for hybrid, 4 for trie)")
    p.add_argument("--until", type=_date, help="train on rows before this date")
    p.add_argument("--background", help="query-only log adding popularity counts")
    p.add_argument("--min-count", type=int, default=1, help="fewest occurrences of a label")
    p.add_argument("--popularity", type=float, default=0.5,
                   help="answer score = ranker score * (1 + count) ** beta, "
                        "beta = popularity + popularity-per-char * min(len(prefix), 10)")
    p.add_argument("--popularity-per-char", type=float, default=0.3)
    p.add_argument("--blocklist", help="blocklist file replacing the default "
                   "(format of qac/data/blocklist.txt)")
    p.add_argument("--longtail", action="store_true",
                   help="also build word/ending tables and answer from the long-tail "
                        "candidate pool (see qac.longtail)")
    _add_engine_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("complete", help="complete one prefix")
    p.add_argument("model")
    p.add_argument("prefix")
    p.add_argument("--previous", help="the previous query of the session")
    p.add_argument("--history", action="append", default=[], metavar="QUERY",
                   help="one of the user's past queries, most recent first (repeatable; "
                        "read by a long-tail model's history generator)")
    p.add_argument("--blocklist", help="also drop answers this blocklist file matches")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("eval", help="MRR/success/BLEU/latency against MPC on a test log")
    p.add_argument("models", nargs="+", help="one or more completer model directories")
    p.add_argument("--log", required=True)
    p.add_argument("--since", type=_date, help="evaluate rows from this date on")
    p.add_argument("--until", type=_date, help="evaluate rows before this date")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N cases")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the without-previous-query and without-one-generator runs")
    p.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                   help="distinct past queries of the user each test case carries "
                        f"(default {DEFAULT_HISTORY}, as the session store keeps; 0: none)")
    p.add_argument("--no-coverage", action="store_true",
                   help="skip the coverage column (it re-builds each candidate pool)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    ret = sub.add_parser("retrieve", help="query -> item retrieval").add_subparsers(
        dest="action", required=True)
    p = ret.add_parser("train", help="train a retrieval model")
    p.add_argument("--pairs", required=True, help="TSV of item_id<TAB>query text")
    p.add_argument("--items", help="TSV of item_id<TAB>title (titles become training rows)")
    p.add_argument("--out", required=True, help="model directory to write")
    _add_engine_args(p)
    p.set_defaults(func=cmd_retrieve_train)

    p = ret.add_parser("query", help="top-k items for one query")
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrieve_query)

    p = ret.add_parser("eval", help="precision/recall and latency on held-out pairs")
    p.add_argument("model")
    p.add_argument("--pairs", required=True, help="TSV of item_id<TAB>query text")
    p.add_argument("--latency-sample", type=int, default=5000,
                   help="queries timed one call each")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrieve_eval)

    p = sub.add_parser("serve", help="serve the HTTP API and the demo page")
    from qac.server.serve import add_serve_arguments, run_serve

    add_serve_arguments(p)
    p.set_defaults(func=run_serve)

    p = sub.add_parser("replay", help="replay a log keystroke by keystroke against models or "
                       "a service (see sim/replay.py)")
    from qac.replay import add_replay_arguments, run_replay

    add_replay_arguments(p)
    p.set_defaults(func=run_replay)

    p = sub.add_parser("demo", help="train on the bundled sample (once) and serve the demo page")
    p.add_argument("queries", nargs="*",
                   help="answer these in the terminal instead of serving")
    p.add_argument("--no-serve", action="store_true", help="answer example queries and exit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--rebuild", action="store_true", help="retrain the cached demo models")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except QacError as exc:
        print(f"qac: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"qac: error: {exc.filename}: no such file", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

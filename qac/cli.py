"""The ``qac`` command line: ``qac train|complete|eval|serve|replay|demo|ingest`` and
``qac retrieve train|query|eval``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import qac
from qac.errors import InputError, QacError

log = logging.getLogger("qac")


def _sample_file(name: str) -> Path:
    return Path(str(resources.files("qac") / "data" / name))


def _cache_dir() -> Path:
    base = os.environ.get("QAC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qac"
    )
    return Path(base)


def _engine_overrides(args: argparse.Namespace,
                      train: Any = None) -> dict[str, Any]:
    """The engine fields the command line sets; ``train``: the mode's TrainConfig, whose
    threads and seed the command line sets (default: TrainConfig's defaults)."""
    from dataclasses import replace

    from qac.model.train import TrainConfig

    out = {
        "branching": args.branching,
        "max_leaf_size": args.max_leaf_size,
        "threads": args.threads,
        "seed": args.seed,
        "train": replace(train or TrainConfig(), threads=args.threads, seed=args.seed),
    }
    if args.beam is not None:  # else the mode's own default
        out["beam"] = args.beam
    return out


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinity (a mean over nothing, say) made None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return _finite(obj.item())
    return obj


def _print_json(obj: Any) -> None:
    """Strict JSON on stdout (RFC 8259: no NaN or Infinity; they become null)."""
    print(json.dumps(_finite(obj), indent=1, allow_nan=False))


@contextmanager
def _naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Input errors raised inside name ``path`` (unless they already do)."""
    try:
        yield
    except InputError as exc:
        if str(path) in str(exc):
            raise
        raise InputError(f"{path}: {exc}") from exc


def _print(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(obj)
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
                           min_count=args.min_count, fit_days=args.fit_days,
                           generators=tuple(g for g in args.generators.split(",") if g))
    engine = EngineConfig(blocks=base.engine_config().blocks, **_engine_overrides(args))
    t0 = time.perf_counter()
    with _naming(args.log):
        c = train_completer(args.log, args.out, replace(base, engine=engine), until=args.until,
                            background=args.background, progress=not args.quiet,
                            blocklist=_blocklist(args.blocklist))
    fit = c.fit
    how = (f"ranker fitted on {fit['keystrokes']} keystrokes from {fit['from']}"
           if fit.get("ranker") == "fitted" else f"the shipped ranker ({fit.get('why')})")
    print(f"trained a {args.index} completer: {len(c.labels)} labels, {how}, in "
          f"{time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from qac.live import EventStream, LiveConfig
    from qac.logs import read_log

    with _naming(args.log):
        events = read_log(args.log)
    if not events:
        raise InputError(f"{args.log}: no queries: the log is empty")
    now = time.time()
    times = [e.time.timestamp() if e.time is not None else now for e in events]
    shift = now - max(times) if args.now else 0.0
    stream = EventStream(args.redis_url, LiveConfig(key=args.stream_key, shards=args.shards))
    t0 = time.perf_counter()
    try:
        n = stream.append(((e.query, (e.user or e.session)[:64], t + shift)
                           for e, t in zip(events, times, strict=True)), batch=args.batch)
    finally:
        stream.close()
    took = time.perf_counter() - t0
    out = {"events": n, "seconds": round(took, 3), "events_per_second": round(n / took, 1),
           "stream": args.stream_key, "shards": args.shards}
    if args.json:
        _print_json(out)
    else:
        print(f"appended {n} events to {args.stream_key} in {took:.2f}s "
              f"({n / took:.0f} events/s)")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qac.complete import Completer

    c = Completer.load(args.model, blocklist=_blocklist(args.blocklist))
    from qac.text import normalize

    history = [q for q in (normalize(h) for h in args.history) if q]
    got = c.complete(args.prefix, args.previous, k=args.k, history=history,
                     session=[args.previous] if args.previous else (), typos=args.typos)
    if args.json:
        _print_json([asdict(g) for g in got])
    elif not got:
        after = f" after {args.previous!r}" if args.previous else ""
        print(f"qac: no completions for {args.prefix!r}{after} in {args.model}",
              file=sys.stderr)
    else:
        for g in got:
            fixed = f"  ({g.edits} edit{'s' if g.edits > 1 else ''})" if g.edits else ""
            print(f"{g.score:9.4f}  {g.source:7}  {g.text}{fixed}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qac.complete import Completer
    from qac.evaluate import (
        CompleterSystem,
        HistoryThenMpc,
        MpcSystem,
        evaluate,
        format_table,
        test_cases,
    )
    from qac.logs import read_log
    from qac.mpc import MostPopular

    # the whole log up to --until: rows before --since feed the users' contexts
    with _naming(args.log):
        events = read_log(args.log, until=args.until)
    if not events:
        until = f" before {args.until:%Y-%m-%d}" if args.until else ""
        raise InputError(f"{args.log}: no queries{until}: the log is empty")
    cases = test_cases(events, since=args.since, history=args.history)
    if not cases:
        since = f" from {args.since:%Y-%m-%d} on" if args.since else ""
        raise InputError(f"{args.log}: no test queries{since}: a test query is one that "
                         "follows another query in its session")
    if args.limit:
        cases = cases[: args.limit]
    models = {Path(m).name: Completer.load(m) for m in args.models}
    first = next(iter(models.values()))
    # The baselines: most popular completion over the training log's queries (the
    # first model's labels and counts), and the user's own past queries then that.
    mpc = MostPopular(dict(zip(first.labels.texts(), first.labels.counts.tolist(),
                               strict=True)))
    # The third, the personal baseline under the first model's blocklist (the model
    # never shows a blocked query, not even the user's own; the baseline would).
    systems: dict[str, Any] = {"mpc": MpcSystem(mpc), "hist+mpc": HistoryThenMpc(mpc),
                               "hist+mpc -blocked": HistoryThenMpc(mpc, first.blocklist)}
    for name, c in models.items():
        # Systems take turns on each keystroke (qac.evaluate): the model itself goes
        # first, so its latency carries the cold caches.
        systems[name] = CompleterSystem(c)
        systems[f"{name} -context"] = CompleterSystem(c, session=False, history=False)
        if args.no_ablation:
            continue
        systems[f"{name} -session"] = CompleterSystem(c, session=False)
        for g in c.config.generators:
            rest = tuple(x for x in c.config.generators if x != g)
            systems[f"{name} -gen {g}"] = CompleterSystem(c.with_options(generators=rest))
    results = evaluate(systems, cases, first.__contains__,
                       k=args.k, progress=not args.json, coverage=not args.no_coverage)
    if args.json:
        _print_json({"cases": len(cases), "results": results})
    else:
        print(f"{len(cases)} test queries with a previous query in their session; "
              "NAME -context: asked with no previous query and no history\n")
        print(format_table(results, baselines=("mpc", "hist+mpc", "hist+mpc -blocked")))
    return 0


def cmd_retrieve_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from qac.retrieve import DEFAULT_TRAIN, Retriever, default_config, read_tsv

    t0 = time.perf_counter()
    with _naming(args.pairs):
        pairs = read_tsv(args.pairs)
    if args.items:
        with _naming(args.items):
            items = read_tsv(args.items)
    else:
        items = None
    with _naming(args.pairs):
        train = replace(DEFAULT_TRAIN, relevance=args.relevance)
        r = Retriever.train(pairs, items, default_config(**_engine_overrides(args, train)),
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
        _print_json([{"item": i, "score": s} for i, s in hits])
    elif not hits:
        print(f"qac: no items for {args.text!r} in {args.model}", file=sys.stderr)
    else:
        for item, score in hits:
            print(f"{score:.4f}\t{item}")
    return 0


def cmd_retrieve_eval(args: argparse.Namespace) -> int:
    from qac.retrieve import Retriever, read_tsv

    r = Retriever.load(args.model)
    with _naming(args.pairs):
        report = r.evaluate(read_tsv(args.pairs), latency_sample=args.latency_sample)
    _print(report.as_dict(), args.json)
    return 0


def _demo_models(rebuild: bool) -> tuple[Path, Path]:
    """The demo's completer and retriever, trained once on the bundled samples (again
    when the cached ones were written by another model format)."""
    from qac.complete import Completer, CompleterConfig
    from qac.errors import ModelFormatError
    from qac.logs import read_log
    from qac.retrieve import Retriever, read_tsv
    from qac.storage import open_model_dir

    def stale(path: Path) -> bool:
        try:
            open_model_dir(path, verify=False)
        except ModelFormatError:
            return True
        return False

    cache = _cache_dir()
    completer, retriever = cache / "demo-completer", cache / "demo-retriever"
    if rebuild or stale(completer):
        print(f"training a completer on the bundled sample -> {completer}", file=sys.stderr)
        # the ranker shipped with qac was fitted on the AOL sessions the sample is cut from
        Completer.train(read_log(_sample_file("sample_sessions.tsv.gz")),
                        CompleterConfig(fit_days=0), progress=True).save(completer)
    if rebuild or stale(retriever):
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
            got = c.complete(text, k=args.k)
            for x in got:
                print(f"  {x.score:8.4f}  {x.source:5}  {x.text}")
            if not got:
                print("  (none: no query in the sample starts with it)")
            print(f"items for {text!r}:")
            hits = r.search(text, k=args.k)
            for item, score in hits:
                print(f"  {score:8.4f}  {item}")
            if not hits:
                print("  (none)")
        return 0
    from qac.server.serve import run_serve

    print(f"qac demo: open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve = argparse.Namespace(model_dir=str(completer_dir), retrieval_dir=str(retriever_dir),
                               redis_url=None, host=args.host, port=args.port, workers=1,
                               admin_token_env=None, log_level="warning")
    return run_serve(serve)


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is empty or already said."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default in (None, False, "", [], argparse.SUPPRESS) or "default" in text
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary,
                                                     formatter_class=_Help)
    return parser


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--branching", type=_positive, default=16, help="tree branching factor B")
    p.add_argument("--max-leaf-size", type=_positive, default=100,
                   help="labels per leaf cluster")
    p.add_argument("--beam", type=_positive,
                   help="beam width at query time (default: completion 10, retrieval 15)")
    p.add_argument("--threads", type=_positive, default=2, help="worker threads for training")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the k-means trees and the solver")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print strict JSON (missing or undefined figures as null)")


def build_parser() -> argparse.ArgumentParser:
    from qac.evaluate import DEFAULT_HISTORY
    from qac.model.train import RELEVANCE
    from qac.sources import GENERATORS

    ap = argparse.ArgumentParser(prog="qac", description=__doc__, formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"qac {qac.__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "train", "train a session-aware completer from a query log")
    p.add_argument("--log", required=True,
                   help="sessions TSV (user, session, query, time) or one query per line; "
                        "may be gzipped; or a Redis URL (redis://host:port/db): the live "
                        "event stream, whose last ids the model records")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--index", choices=["hybrid", "trie", "tree"], default="hybrid",
                   help="label tree: trie levels then k-means (hybrid), trie levels only, "
                        "or k-means on PIFA embeddings")
    p.add_argument("--trie-depth", type=_positive, default=None,
                   help="trie levels (default 2 for hybrid, 4 for trie)")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD",
                   help="train on rows before this date (default: every row)")
    p.add_argument("--background", metavar="QUERIES",
                   help="query-only log adding popularity counts (default: none)")
    p.add_argument("--min-count", type=_positive, default=1,
                   help="fewest occurrences of a label")
    p.add_argument("--fit-days", type=float, default=7.0,
                   help="fit the ranker on the last this many days of the log (with a "
                        "model trained on the rows before them)")
    p.add_argument("--generators", default=",".join(GENERATORS), metavar="LIST",
                   help="candidate sources beside the beam and MPC, comma-separated "
                        f"(any of {','.join(GENERATORS)}; empty: none)")
    p.add_argument("--blocklist", metavar="FILE",
                   help="blocklist file replacing the default qac/data/blocklist.txt "
                        "(same format)")
    _add_engine_args(p)
    p.set_defaults(func=cmd_train)

    p = _command(sub, "ingest", "append a query log to the live event stream (backfill)")
    p.add_argument("--log", required=True,
                   help="sessions TSV (user, session, query, time) or one query per line; "
                        "may be gzipped")
    p.add_argument("--redis-url", required=True,
                   help="the stream's Redis, e.g. redis://localhost:6379/0 "
                        "(redis+cluster://host:port for Redis Cluster)")
    p.add_argument("--stream-key", default="qac:events", help="the stream's key")
    p.add_argument("--shards", type=_positive, default=1,
                   help="streams the events are spread over (as the servers use)")
    p.add_argument("--now", action="store_true",
                   help="stamp the events with the time now (spaced as in the log, ending "
                        "now) instead of the log's times")
    p.add_argument("--batch", type=_positive, default=1000, help="events per round trip")
    _add_json(p)
    p.set_defaults(func=cmd_ingest)

    p = _command(sub, "complete", "complete one prefix")
    p.add_argument("model", help="completer model directory")
    p.add_argument("prefix", help="the text typed so far")
    p.add_argument("--previous", help="the previous query of the session (default: none)")
    p.add_argument("--history", action="append", default=[], metavar="QUERY",
                   help="one of the user's past queries, most recent first (repeatable)")
    p.add_argument("--blocklist", metavar="FILE",
                   help="also drop answers this blocklist file matches")
    p.add_argument("-k", type=_positive, default=10, help="how many completions")
    p.add_argument("--typos", type=int, choices=(0, 1, 2),
                   help="the most typo corrections (0: none; default: the model's)")
    _add_json(p)
    p.set_defaults(func=cmd_complete)

    p = _command(sub, "eval", "MRR/success/BLEU/latency beside MPC and history+MPC on a "
                 "test log")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="one or more completer model directories")
    p.add_argument("--log", required=True,
                   help="test log, in any format `qac train --log` reads")
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD",
                   help="test the sessions that start on or after this date; earlier rows "
                        "only feed the users' histories (default: every session)")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD",
                   help="ignore rows from this date on (default: none ignored)")
    p.add_argument("-k", type=_positive, default=10, help="completions asked per keystroke")
    p.add_argument("--limit", type=_count, default=0,
                   help="evaluate only the first N test queries (0: all)")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the without-previous-query and without-one-source runs")
    p.add_argument("--history", type=_count, default=DEFAULT_HISTORY, metavar="N",
                   help="distinct past queries of the user each test case carries "
                        f"(default {DEFAULT_HISTORY}, as the session store keeps; 0: none)")
    p.add_argument("--no-coverage", action="store_true",
                   help="skip the coverage column (it re-builds each candidate pool)")
    _add_json(p)
    p.set_defaults(func=cmd_eval)

    ret = _command(sub, "retrieve", "query -> item retrieval").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = _command(ret, "train", "train a retrieval model")
    p.add_argument("--pairs", required=True,
                   help="TSV of item_id<TAB>query text, one line per click: a pair given N "
                        "times costs more to miss (Cp x (1 + ln N))")
    p.add_argument("--items",
                   help="TSV of item_id<TAB>title; titles become training rows, so every "
                        "item can be retrieved (default: none)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--relevance", choices=tuple(RELEVANCE), default="log",
                   help="how a pair's click count N scales its cost: log (1 + ln N), sqrt, "
                        "linear, or off (every pair costs the same)")
    _add_engine_args(p)
    p.set_defaults(func=cmd_retrieve_train)

    p = _command(ret, "query", "top-k items for one query")
    p.add_argument("model", help="retrieval model directory")
    p.add_argument("text", help="the query")
    p.add_argument("-k", type=_positive, default=10, help="how many items")
    _add_json(p)
    p.set_defaults(func=cmd_retrieve_query)

    p = _command(ret, "eval", "precision/recall and latency on held-out pairs")
    p.add_argument("model", help="retrieval model directory")
    p.add_argument("--pairs", required=True, help="TSV of item_id<TAB>query text")
    p.add_argument("--latency-sample", type=_positive, default=5000,
                   help="queries timed one call each")
    _add_json(p)
    p.set_defaults(func=cmd_retrieve_eval)

    p = _command(sub, "serve", "serve the HTTP API, its docs (/docs) and the demo page")
    from qac.server.serve import add_serve_arguments, run_serve

    add_serve_arguments(p)
    p.set_defaults(func=run_serve)

    p = _command(sub, "replay", "replay a log keystroke by keystroke against models or "
                 "a service (see sim/replay.py)")
    from qac.replay import add_replay_arguments, run_replay

    add_replay_arguments(p)
    p.set_defaults(func=run_replay)

    p = _command(sub, "demo", "train on the bundled sample (once) and serve the demo page")
    p.add_argument("queries", nargs="*",
                   help="answer these in the terminal instead of serving")
    p.add_argument("--no-serve", action="store_true",
                   help="answer example queries in the terminal and exit")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("-k", type=_positive, default=5, help="answers per query in the terminal")
    p.add_argument("--rebuild", action="store_true", help="retrain the cached demo models")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        # log lines go through tqdm.write, above any progress bar, not through it
        with logging_redirect_tqdm():
            return int(args.func(args))
    except QacError as exc:
        print(f"qac: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"qac: error: {exc.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qac: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The command line of the replay: ``qac replay`` and ``python sim/replay.py``."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from qac.errors import InputError
from qac.evaluate import DEFAULT_HISTORY, DEFAULT_LENGTHS
from qac.replay.http import _client_kind, replay_http
from qac.replay.inprocess import inprocess_systems, replay
from qac.replay.report import _jsonable, build_report, markdown, write_outputs
from qac.replay.runs import NO_SESSION
from qac.replay.sessions import ACCEPT, MODES, ReplayConfig, sample_sessions, sessions_of


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2006-05-18, got {text!r}"
                                         ) from None


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``qac replay`` options."""
    parser.add_argument("--log", required=True, help="query log (AOL TSV, or TSV with session "
                        "id and timestamp columns; see qac.logs)")
    parser.add_argument("--since", type=_date, help="replay rows from this date on")
    parser.add_argument("--until", type=_date, help="replay rows before this date")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", action="append", metavar="[NAME=]DIR",
                       help="completer model directory, in-process (repeatable)")
    where.add_argument("--url", help="a running `qac serve` on 127.0.0.1, e.g. "
                       "http://127.0.0.1:8000")
    parser.add_argument("--client", choices=("auto", "aiohttp", "httpx"), default="auto",
                        help="HTTP client of --url (auto: aiohttp when installed)")
    parser.add_argument("--systems", help="comma-separated configurations: mpc, hist+mpc, "
                        "NAME, NAME-nosession, NAME-nocontext (in-process; default mpc, "
                        "hist+mpc and every model with and without session); service, "
                        "service-nosession (HTTP; default both)")
    parser.add_argument("--sessions", type=int, default=0,
                        help="replay this many sessions, sampled with --seed (0 = all)")
    parser.add_argument("--concurrency", type=int, default=1, help="simultaneous users")
    parser.add_argument("--interval-ms", type=float, default=0.0,
                        help="pause between keystrokes (jittered 0.5-1.5x; 0 = none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the session sample and the pauses' jitter")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                        help="in-process: distinct past queries of the user sent with "
                        f"each request (default {DEFAULT_HISTORY}; 0: none)")
    parser.add_argument("-k", type=int, default=10, help="completions asked per keystroke")
    parser.add_argument("--mode", choices=MODES, default="typed",
                        help="typed: simulation; fixed: qac eval's lengths, no acceptance")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="prefix lengths of --mode fixed")
    parser.add_argument("--accept", choices=ACCEPT, default="shown",
                        help="shown: accept at first sight among the k; top: within --top-m")
    parser.add_argument("--top-m", type=int, default=3,
                        help="--accept top: the user accepts the target within the first M")
    parser.add_argument("--from-empty", action="store_true",
                        help="also ask before the first keystroke when there is a previous "
                        "query")
    parser.add_argument("--out", default="replay-out", help="output directory")
    parser.add_argument("--no-plots", action="store_true",
                        help="write the JSON and markdown only, no PNG plots")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_replay(args: argparse.Namespace) -> int:
    """Run ``qac replay`` from parsed arguments; prints where the outputs went."""
    import sys

    from qac.logs import read_log

    try:
        lengths = tuple(int(x) for x in str(args.lengths).split(",") if x.strip())
    except ValueError:
        raise InputError(f"--lengths: comma-separated integers, got {args.lengths!r}") from None
    cfg = ReplayConfig(k=args.k, mode=args.mode, lengths=lengths, accept=args.accept,
                       top_m=args.top_m, from_empty=args.from_empty,
                       interval_ms=args.interval_ms, concurrency=args.concurrency,
                       sessions=args.sessions, seed=args.seed, history=args.history)
    t_start = time.perf_counter()
    # the whole log up to --until: rows before --since feed the users' histories
    events = read_log(args.log, until=args.until)
    sessions = sample_sessions(sessions_of(events, args.since, cfg.history), cfg.sessions,
                               cfg.seed)
    select = [s for s in args.systems.split(",") if s.strip()] if args.systems else None
    progress = not args.quiet
    if args.url:
        runs = replay_http(args.url, sessions, cfg, names=select or
                           ("service", "service" + NO_SESSION), progress=progress,
                           client=args.client)
        target = (f"HTTP {args.url} ({_client_kind(args.client, None)}; latency measured "
                  "by the client)")
    else:
        from qac.complete import Completer

        models: dict[str, Any] = {}
        for spec in args.model:
            name, _, path = spec.rpartition("=")
            models[name or Path(path).name] = (path, Completer.load(path))
        systems = inprocess_systems({n: c for n, (_, c) in models.items()}, select)
        first = next(iter(models.values()))[1]
        runs = replay(sessions, systems, cfg, seen=first.__contains__,
                      progress=progress)
        target = "in-process " + ", ".join(f"{n}={p}" for n, (p, _) in models.items())
    meta = {"target": target, "log": str(args.log),
            "since": args.since.date().isoformat() if args.since else None,
            "until": args.until.date().isoformat() if args.until else None,
            "command": " ".join(sys.argv), "wall_s": time.perf_counter() - t_start}
    report = build_report(runs, cfg, sessions, meta)
    paths = write_outputs(runs, report, args.out, plots=not args.no_plots)
    if args.json:
        print(json.dumps(_jsonable(report), indent=1))
    else:
        print(markdown(report))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0

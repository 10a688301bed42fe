"""Session replay simulation: simulated users type a log's queries keystroke by keystroke.

The same program as ``qac replay`` (the library part is the package :mod:`qac.replay`;
its docstring defines every figure).

Usage::

    # in-process, every session of the evaluation week, four configurations
    python sim/replay.py --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz \
        --since 2006-05-18 --until 2006-05-25 --model models/hybrid --model models/trie \
        --systems mpc,hybrid,hybrid-nosession,trie --out replay-out

    # over HTTP against `qac serve MODEL --redis-url redis://127.0.0.1:PORT/0 --port P`
    python sim/replay.py --log ... --since 2006-05-18 --until 2006-05-25 \
        --url http://127.0.0.1:P --concurrency 32 [--interval-ms 100] [--sessions 1000]

    # qac eval's protocol (fixed lengths 1,2,3,5,8, no acceptance): the same numbers
    python sim/replay.py --log ... --model models/hybrid --mode fixed

Options: ``--sessions N`` (sample, ``--seed``), ``--concurrency`` (threads in-process,
connections over HTTP), ``--interval-ms`` (pause between keystrokes, jittered
0.5-1.5x), ``--accept shown|top --top-m M`` (accept at first sight among the k, or
only within the top m), ``--from-empty`` (also ask before the first keystroke of a
query that has a previous one), ``-k``, ``--client aiohttp|httpx``, ``--json``,
``--no-plots``, ``--quiet`` (no progress bar).

Outputs in ``--out``: ``replay.json`` (config, per-configuration metrics by prefix
length and seen/unseen, the same over queries with a previous query, keystrokes
saved and its histogram, completion share, latency percentiles, server ``took_ms``
over HTTP, throughput, session effect), ``replay.md`` (the same as tables; also
printed), ``mrr_by_prefix.png``, ``latency_cdf.png``, ``keystrokes_saved.png``.

Measured (2026-11-26, shared 2-core machine, load average 3-5; models trained on
the rows before 2006-05-18 with the background log, as in the README):

- In-process, all 11,846 sessions / 20,961 queries of 2006-05-18..24, mpc, hybrid,
  hybrid -session, trie, typed mode, acceptance at first sight among 10: wall time
  58.7 s (61.3 s with start-up; an earlier run under heavier load: 96.6 s), 1.16 M
  completion calls. Hybrid: MRR@10 0.0197 over all typed keystrokes (mpc 0.0143),
  46.7% of queries completed from a suggestion (mpc 41.4%), 25.2% of keystrokes
  saved (mpc 21.8%). Session effect, queries with a previous query: MRR@10 0.0164
  with the session vs 0.0123 without (x1.33); at prefix length 1 0.1563 vs 0.0675;
  keystrokes saved 20.9% vs 20.3%. Per call p50 / p95 / p99 0.010 / 0.105 / 0.164 ms.
- ``--mode fixed`` on the same week reproduces the README's ``qac eval`` table to the
  last printed digit (hybrid 0.1563 / 0.1948 / 0.2225 / 0.2497 / 0.2543 at n = 1, 2,
  3, 5, 8; 0.2141 overall); 28 s.
- HTTP, ``qac serve /tmp/qm/hybrid --redis-url redis://127.0.0.1:PORT/0`` (one
  uvicorn worker, throwaway redis-server), aiohttp, concurrency 32, no pause, the
  whole week (287,690 requests per configuration): 1,116 requests/s with Redis
  sessions, client latency p50 / p95 / p99 24.7 / 38.2 / 57.7 ms (saturated: queueing
  behind 32 users with no think time); without the session 1,486 requests/s,
  22.0 / 27.7 / 31.1 ms; 454 s for both. Quality figures equal the in-process ones,
  so the previous query travels through Redis intact. Paced at 100 ms between
  keystrokes (1,000 sampled sessions, about 260 requests/s): 1.04 / 4.17 / 6.83 ms
  with sessions, 0.86 / 4.82 / 6.74 ms without.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qac.replay import add_replay_arguments, run_replay  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sim/replay.py",
        description="Replay a query log's sessions keystroke by keystroke against "
                    "completers in-process or a running `qac serve`; writes replay.json, "
                    "replay.md and PNG plots.")
    add_replay_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_replay(args)


if __name__ == "__main__":
    sys.exit(main())

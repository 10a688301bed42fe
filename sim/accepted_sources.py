"""Which generator's suggestion typed users accept: the replay's typed loop, by source.

Replays a sample of the test window's sessions in-process, as ``qac replay`` does in
its typed mode (one request per keystroke, the user's history and previous query
with each, acceptance at first sight among the k shown), and counts the ``source``
of each accepted completion::

    python sim/accepted_sources.py --model models/hybrid-lt \\
        --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz --sessions 1500
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime

from qac.complete import Completer
from qac.logs import read_log
from qac.replay import sample_sessions, sessions_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--since", default="2006-05-18")
    ap.add_argument("--until", default="2006-05-25")
    ap.add_argument("--sessions", type=int, default=1500, help="sample size (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    c = Completer.load(args.model)
    events = read_log(args.log, until=datetime.fromisoformat(args.until))
    sessions = sample_sessions(sessions_of(events, datetime.fromisoformat(args.since)),
                               args.sessions, args.seed)
    by_source: Counter[str] = Counter()
    queries = 0
    for s in sessions:
        for i, q in enumerate(s.queries):
            queries += 1
            case = s.case(i)
            hist, sess = c.pack_history(case.history), c.pack_session(case.session)
            for n in range(1, len(q)):
                hit = [g for g in c.complete(q[:n], case.previous, args.k, hist, sess, case.time)
                       if g.text == q]
                if hit:
                    by_source[hit[0].source] += 1
                    break
    print(f"{len(sessions)} sessions, {queries} queries; accepted "
          f"{sum(by_source.values()) / queries:.1%}, by source (share of all queries):")
    for source, n in by_source.most_common():
        print(f"  {source:8} {n / queries:.1%}")


if __name__ == "__main__":
    main()

"""A custom blocklist on real traffic: how many answers show a blocked word.

The model must be trained with the list (``qac train --blocklist FILE``; the list is
saved in the model). Each test query of the week after the model's training rows is
typed keystroke by keystroke, from the empty prefix to the whole query but one
character, and also with one typo (as ``sim/fuzzy.py`` makes them) and as the first
three letters of its words ("app wat"), each with the context a session store would
hold then: the previous query, the session's queries and the user's last 200
distinct queries, blocked ones included (the store records what users submit). Every
answer is checked against the model's list. Beside it, in the same run, the share of
the keystrokes whose context holds a blocked query, and how many answers the personal
baseline (the user's past queries with the prefix, then MPC) would show with a
blocked word, which says that the list bites on this traffic.

    printf 'hotel*\\nmotel*\\nweather\\ngoogle*\\n' > /tmp/block.txt
    qac train --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz \\
        --until 2006-05-11 --blocklist /tmp/block.txt --out /tmp/m/blocked
    python sim/blocked.py --model /tmp/m/blocked \\
        --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzy import typo  # noqa: E402
from tqdm import tqdm  # noqa: E402

from qac.complete import Completer  # noqa: E402
from qac.evaluate import DEFAULT_HISTORY, HistoryThenMpc, test_cases  # noqa: E402
from qac.logs import read_log  # noqa: E402
from qac.mpc import MostPopular  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="completer trained with --blocklist on the rows before --since")
    ap.add_argument("--log", required=True, help="session log (TSV, optionally .gz)")
    ap.add_argument("--since", default="2006-05-11", help="first day of the test week")
    ap.add_argument("--until", default="2006-05-18", help="end of the test week (excluded)")
    ap.add_argument("--cases", type=int, default=3000, help="test queries sampled (0: all)")
    ap.add_argument("--seed", type=int, default=7, help="random seed for sampling and typos")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    c = Completer.load(args.model)
    blocks = c.blocklist.blocks
    if not (c.blocklist.words or c.blocklist.stems):
        sys.exit(f"{args.model}: trained without a blocklist; nothing to check")
    cases = test_cases(read_log(args.log, until=datetime.fromisoformat(args.until)),
                       since=datetime.fromisoformat(args.since), history=DEFAULT_HISTORY)
    if args.cases:
        cases = rng.sample(cases, min(args.cases, len(cases)))
    # the baseline's MPC over the same labels (blocked ones were never labels); its
    # history half shows what the user issued, as the baseline does
    baseline = HistoryThenMpc(MostPopular(dict(zip(
        c.labels.texts(), c.labels.popularity.tolist(), strict=True))))
    keystrokes = answers = shown = base_shown = bitten = 0
    examples: list[tuple[str, str]] = []
    for cs in tqdm(cases, desc="cases", leave=False):
        hist, sess = c.pack_history(cs.history), c.pack_session(cs.session)
        t = cs.target
        typed = [t[:n] for n in range(len(t))]
        if len(t) > 5:
            d = typo(t[:min(len(t) - 1, 8)], rng)
            if d:
                typed.append(d)
        if len(t.split()) > 1:
            typed.append(" ".join(w[:3] for w in t.split()))
        context_blocked = any(blocks(p.query) for p in cs.history) or any(
            blocks(q) for q, _ in cs.session) or (cs.previous is not None and blocks(cs.previous))
        for p in typed:
            keystrokes += 1
            bitten += context_blocked
            got = [x.text for x in c.complete(p, cs.previous, 10, hist, sess, cs.time)]
            answers += len(got)
            bad = [g for g in got if blocks(g)]
            shown += len(bad)
            if bad and len(examples) < 10:
                examples.append((p, bad[0]))
            base_shown += sum(blocks(g) for g in baseline(p, cs, 10))
    out = {"cases": len(cases), "keystrokes": keystrokes, "answers": answers,
           "answers_blocked": shown, "keystrokes_with_blocked_context": bitten,
           "baseline_answers_blocked": base_shown, "examples": examples,
           "blocklist": {"words": sorted(c.blocklist.words),
                         "stems": sorted(c.blocklist.stems)}}
    print(f"{len(cases)} test queries, {keystrokes} keystrokes (every prefix, one typo, "
          f"abbreviated words), {answers} answers")
    print(f"answers with a blocked word: qac {shown}; hist+mpc {base_shown}")
    print(f"keystrokes whose context holds a blocked query: {bitten} "
          f"({bitten / max(keystrokes, 1):.1%})")
    for p, g in examples:
        print(f"  {p!r} -> {g!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

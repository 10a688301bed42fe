"""What people actually type: typos, accents, abbreviated and later words, near-duplicates.

Each test query of the dev week (sessions from ``--dev-from`` on, the model trained
on the rows before) is typed damaged, one kind at a time, and every system answers
the same damaged text in the same run:

- ``clean``: the first L characters (L in 4..8), the reference for ``typo``;
- ``typo``: the same L characters with one edit, never to the first letter: a
  neighbouring key, a dropped, doubled or swapped letter;
- ``accent``: the same L characters with one letter accented ("wéather"); also
  the share of lists equal to the plain letter's;
- ``abbrev``: the first 3 characters of each of the first 2-3 words ("app wat");
- ``later``: the first 4 characters of a later word typed first ("york").

Systems: the completer with its default matching (typos, word prefixes) and with
typos=0; MPC and the personal baseline (the user's past queries with the prefix,
then MPC) on the typed text; the one-edit MPC baseline (the most popular training
queries within one edit of the typed text, exact-prefix ones first) and the
word-prefix MPC baseline (training queries whose successive words start with the
typed words, by popularity). It prints MRR@10 by kind (and by length for typos),
the completer's latency per keystroke with and without typos (timed in a pass of its
own), the trie nodes its typo search visits, and the share of lists at prefixes 1-3
that hold a near-duplicate pair, with collapsing on and off.

    python sim/fuzzy.py --model /tmp/m/dev4 \
        --log ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from qac.complete import Completer  # noqa: E402
from qac.evaluate import DEFAULT_HISTORY, Case, HistoryThenMpc, test_cases  # noqa: E402
from qac.logs import read_log  # noqa: E402
from qac.mpc import MostPopular  # noqa: E402

KINDS = ("clean", "typo", "accent", "abbrev", "later")
_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
NEIGHBOURS = {
    ch: "".join(_ROWS[r2][c2] for r2 in (r - 1, r, r + 1) if 0 <= r2 < 3
                for c2 in (c - 1, c, c + 1) if 0 <= c2 < len(_ROWS[r2]) and (r2, c2) != (r, c))
    for r, row in enumerate(_ROWS) for c, ch in enumerate(row)
}
ACCENTS = {"a": "àáâä", "e": "éèêë", "i": "íìîï", "o": "óòôö", "u": "úùûü", "c": "ç",
           "n": "ñ", "y": "ýÿ"}


def typo(p: str, rng: random.Random) -> str | None:
    """One edit of p, never to its first letter; None when none applies."""
    if len(p) < 2:
        return None
    for _ in range(20):
        i = rng.randrange(1, len(p))
        kind = rng.choice(("neighbour", "drop", "double", "swap"))
        if kind == "neighbour" and p[i] in NEIGHBOURS:
            out = p[:i] + rng.choice(NEIGHBOURS[p[i]]) + p[i + 1:]
        elif kind == "drop":
            out = p[:i] + p[i + 1:]
        elif kind == "double" and p[i] != " ":
            out = p[:i] + p[i] + p[i:]
        elif kind == "swap" and i + 1 < len(p) and p[i] != p[i + 1]:
            out = p[:i] + p[i + 1] + p[i] + p[i + 2:]
        else:
            continue
        if out != p and out.strip():
            return out
    return None


def damage(case: Case, kind: str, rng: random.Random) -> tuple[str, str] | None:
    """(typed text, its plain reference) for one kind, or None when it does not apply."""
    t = case.target
    words = t.split()
    if kind in ("clean", "typo", "accent"):
        n = min(len(t) - 1, rng.randint(4, 8))
        if n < 4:
            return None
        p = t[:n]
        if kind == "clean":
            return p, p
        if kind == "typo":
            d = typo(p, rng)
            return (d, p) if d else None
        spots = [i for i, ch in enumerate(p) if ch in ACCENTS]
        if not spots:
            return None
        i = rng.choice(spots)
        return p[:i] + rng.choice(ACCENTS[p[i]]) + p[i + 1:], p
    if len(words) < 2:
        return None
    if kind == "abbrev":
        typed = " ".join(w[:3] for w in words[:rng.randint(2, 3)])
    else:
        typed = words[rng.randrange(1, len(words))][:4]
    if t.startswith(typed):
        return None
    return typed, typed


class OneEditMpc:
    """The most popular training queries within one edit of the typed text (as a
    prefix), the exact-prefix ones first."""

    def __init__(self, mpc: MostPopular, alphabet: str) -> None:
        self.mpc, self.alphabet = mpc, alphabet

    def variants(self, p: str) -> set[str]:
        a = self.alphabet
        out = {p[:i] + p[i + 1:] for i in range(len(p))}
        out |= {p[:i] + p[i + 1] + p[i] + p[i + 2:] for i in range(len(p) - 1)}
        out |= {p[:i] + c + p[i + 1:] for i in range(len(p)) for c in a}
        out |= {p[:i] + c + p[i:] for i in range(len(p) + 1) for c in a}
        out.discard(p)
        return {v for v in out if v}

    def __call__(self, p: str, case: Case, k: int) -> list[str]:
        out = [t for t, _ in self.mpc.top(p, k)]
        if len(out) < k:
            seen = set(out)
            more: dict[str, int] = {}
            for v in self.variants(p):
                for t, c in self.mpc.top(v, k):
                    if t not in seen:
                        more[t] = c
            out += sorted(more, key=lambda t: (-more[t], t))[:k - len(out)]
        return out


class WordPrefixMpc:
    """Training queries whose successive words start with the typed words, most
    popular first."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        entries = sorted((w, q, i) for q in counts for i, w in enumerate(q.split()))
        self.words = [e[0] for e in entries]
        self.entries = entries

    def __call__(self, p: str, case: Case, k: int) -> list[str]:
        toks = p.split()
        if not toks:
            return []
        lo = bisect.bisect_left(self.words, toks[0])
        hi = bisect.bisect_left(self.words, toks[0] + "\U0010ffff")
        found: set[str] = set()
        for _, q, i in self.entries[lo:hi]:
            ws = q.split()
            if len(ws) - i >= len(toks) and all(ws[i + j].startswith(x)
                                                for j, x in enumerate(toks)):
                found.add(q)
        return sorted(found, key=lambda q: (-self.counts[q], q))[:k]


_NONWORD = re.compile(r"[^0-9a-z]+")
_DECOR = {"www", "http", "https", "com", "net", "org", "html", "htm"}


def near_key(text: str) -> str:
    """This benchmark's own near-duplicate key (independent of the kernel's): the
    letters and digits, web decorations and a plural "s"/"es" dropped per word, and
    past the first word a possessive "s" ("macy's") and "and" ("barnes & noble")."""
    out: list[str] = []
    for w in _NONWORD.split(text.lower()):
        if not w or w in _DECOR or (out and w in ("s", "and")):
            continue
        if len(w) > 4 and w.endswith("es") and w[-3] in "sxz":
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return "".join(out)


def has_near_dup(texts: list[str]) -> bool:
    keys = [near_key(t) for t in texts]
    return len(set(keys)) < len(keys)


def mrr(lists: list[list[str]], targets: list[str]) -> float:
    rr = [1.0 / (ls.index(t) + 1) if t in ls else 0.0 for ls, t in zip(lists, targets,
                                                                       strict=True)]
    return sum(rr) / len(rr) if rr else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="completer trained on the rows before "
                    "--dev-from")
    ap.add_argument("--log", required=True, help="session log (TSV, optionally .gz)")
    ap.add_argument("--dev-from", default="2006-05-11", help="first day of the dev week")
    ap.add_argument("--until", default="2006-05-18", help="end of the dev week (excluded)")
    ap.add_argument("--cases", type=int, default=3000, help="test queries sampled")
    ap.add_argument("--seed", type=int, default=7, help="random seed for sampling and damage")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    c = Completer.load(args.model)
    cases = test_cases(read_log(args.log, until=datetime.fromisoformat(args.until)),
                       since=datetime.fromisoformat(args.dev_from), history=DEFAULT_HISTORY)
    cases = rng.sample(cases, min(args.cases, len(cases)))
    counts = dict(zip(c.labels.texts(), c.labels.popularity.tolist(), strict=True))
    mpc = MostPopular(counts)
    chars: dict[str, int] = {}
    for q in counts:
        for ch in q:
            chars[ch] = chars.get(ch, 0) + 1
    alphabet = "".join(sorted(chars, key=lambda ch: -chars[ch])[:40])
    plain = c.with_options(match=type(c.config.match)(typos=0))
    systems: dict[str, Callable[[str, Case, int], list[str]]] = {
        "qac": lambda p, cs, k: [x.text for x in c.complete(p, cs.previous, k, cs.history,
                                                           cs.session, cs.time)],
        "qac typos=0": lambda p, cs, k: [x.text for x in plain.complete(
            p, cs.previous, k, cs.history, cs.session, cs.time)],
        "mpc": lambda p, cs, k: [t for t, _ in mpc.top(p, k)],
        "hist+mpc": HistoryThenMpc(mpc),
        "one-edit mpc": OneEditMpc(mpc, alphabet),
        "word-prefix mpc": WordPrefixMpc(counts),
    }
    # the damaged inputs, fixed before any system runs
    inputs: dict[str, list[tuple[Case, str, str]]] = {k: [] for k in KINDS}
    for cs in cases:
        for kind in KINDS:
            d = damage(cs, kind, rng)
            if d is not None:
                inputs[kind].append((cs, d[0], d[1]))  # raw: each system normalizes
    got: dict[str, dict[str, list[list[str]]]] = {k: {s: [] for s in systems} for k in KINDS}
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    visited: dict[str, list[int]] = {k: [] for k in KINDS}
    same_list = []
    for kind in KINDS:
        for cs, typed, ref in tqdm(inputs[kind], desc=kind, file=sys.stderr, mininterval=2):
            hist, sess = c.pack_history(cs.history), c.pack_session(cs.session)
            for name, system in systems.items():
                got[kind][name].append(system(typed, cs, 10))
            _, a = c._answer(typed, cs.previous, 10, hist, sess, cs.time, False)
            visited[kind].append(a.visited)
            if kind == "accent":
                same_list.append(got[kind]["qac"][-1] == [x.text for x in c.complete(
                    ref, cs.previous, 10, hist, sess, cs.time)])
    # the cost per keystroke, timed apart from the quality pass (whose baselines churn
    # the caches): every input twice, the completer with and without typos, the second
    # round counted
    plain_lat: dict[str, list[float]] = {k: [] for k in KINDS}
    for round_ in range(2):
        for kind in KINDS:
            for cs, typed, _ in inputs[kind]:
                hist, sess = c.pack_history(cs.history), c.pack_session(cs.session)
                for comp, into in ((c, lat), (plain, plain_lat)):
                    t0 = time.perf_counter()
                    comp.complete(typed, cs.previous, 10, hist, sess, cs.time)
                    if round_:
                        into[kind].append(time.perf_counter() - t0)
    result: dict[str, object] = {"cases": len(cases), "inputs": {k: len(v) for k, v in
                                                                 inputs.items()}}
    table = {}
    for kind in KINDS:
        targets = [cs.target for cs, _, _ in inputs[kind]]
        table[kind] = {name: mrr(got[kind][name], targets) for name in systems}
    result["mrr@10"] = table
    by_len: dict[int, dict[str, float]] = {}
    for n in range(4, 9):
        idx = [i for i, (_, _, ref) in enumerate(inputs["typo"]) if len(ref) == n]
        cidx = [i for i, (_, _, ref) in enumerate(inputs["clean"]) if len(ref) == n]
        row = {name: mrr([got["typo"][name][i] for i in idx],
                         [inputs["typo"][i][0].target for i in idx]) for name in systems}
        row["qac clean"] = mrr([got["clean"]["qac"][i] for i in cidx],
                               [inputs["clean"][i][0].target for i in cidx])
        row["n"] = len(idx)
        by_len[n] = row
    result["typo_by_length"] = by_len
    result["accent_same_list"] = sum(same_list) / max(len(same_list), 1)

    def q(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    result["latency_ms"] = {k: {"p50": 1e3 * statistics.median(v), "p99": 1e3 * q(v, 0.99),
                                "typos=0 p50": 1e3 * statistics.median(plain_lat[k]),
                                "typos=0 p99": 1e3 * q(plain_lat[k], 0.99)}
                            for k, v in lat.items() if v}
    result["visited"] = {k: {"p50": statistics.median(v), "p99": q(v, 0.99), "max": max(v)}
                         for k, v in visited.items() if v}
    # near-duplicate pairs at prefixes 1-3, with collapsing on and off
    flat = c.with_options(collapse=False)
    dup: dict[str, list[bool]] = {"qac": [], "qac collapse=False": [], "mpc": [],
                                  "hist+mpc": []}
    for cs in tqdm(cases, desc="near-duplicates", file=sys.stderr, mininterval=2):
        hist, sess = c.pack_history(cs.history), c.pack_session(cs.session)
        for n in (1, 2, 3):
            p = cs.target[:n]
            dup["qac"].append(has_near_dup([x.text for x in c.complete(
                p, cs.previous, 10, hist, sess, cs.time)]))
            dup["qac collapse=False"].append(has_near_dup([x.text for x in flat.complete(
                p, cs.previous, 10, hist, sess, cs.time)]))
            dup["mpc"].append(has_near_dup([t for t, _ in mpc.top(p, 10)]))
            dup["hist+mpc"].append(has_near_dup(systems["hist+mpc"](p, cs, 10)))
    result["near_dup_share_1_3"] = {k: sum(v) / len(v) for k, v in dup.items()}
    # bad input: long, all-symbol, emoji, combining marks, many typos; each must answer
    # (or answer nothing) within the same budget, never raise
    bad = ["a" * 256, "!" * 40, "\U0001f642" * 12, "e" + "\u0301" * 30, "xqzjxqzjxqzj",
           "w" * 64 + " york", " ".join(["qu"] * 40), "\u202e\u200bweather"]
    for cs in cases[:300]:
        t = cs.target
        for _ in range(4):
            t = typo(t, rng) or t
        bad.append(t[:12])
    bad_lat, errors = [], 0
    for round_ in range(2):
        for text in bad:
            t0 = time.perf_counter()
            try:
                c.complete(text, None, 10)
            except Exception:  # noqa: BLE001 - counted: the bar is none
                errors += 1
            if round_:
                bad_lat.append(time.perf_counter() - t0)
    result["bad_input"] = {"inputs": len(bad), "errors": errors,
                           "p50_ms": 1e3 * statistics.median(bad_lat),
                           "p99_ms": 1e3 * q(bad_lat, 0.99)}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

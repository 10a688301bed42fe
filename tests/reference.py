"""Plain numpy oracle of the XR-Linear beam search (same semantics as native/infer.c).

Scores in float64. Besides the answer it reports where a float32 kernel may
legitimately disagree: near (but not exact) ties at a cut or inside the top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qac.model.weights import LayerWeights, child_dtype, row_fence

RTOL = 1e-5
ATOL = 1e-30  # float32 scores this small have lost their precision or underflowed


def pack(
    child_ptr: np.ndarray,
    chunk_ptr: np.ndarray,
    row_feat: np.ndarray,
    row_ptr: np.ndarray,
    ent_node: np.ndarray,
    ent_val: np.ndarray,
    bias: np.ndarray,
    values: type = np.float32,
) -> LayerWeights:
    """The packed LayerWeights of a layer given plainly: absolute row pointers
    (int64 [R+1]) and layer-wide node ids; values in ``values`` (float32 / float16)."""
    cp = np.asarray(child_ptr, np.int64)
    chunk_ptr = np.asarray(chunk_ptr, np.int64)
    row_ptr = np.asarray(row_ptr, np.int64)
    n_par = chunk_ptr.shape[0] - 1
    chunk_ent = row_ptr[chunk_ptr]
    chunk_of_row = np.repeat(np.arange(n_par), np.diff(chunk_ptr))
    row_end = (row_ptr[1:] - chunk_ent[chunk_of_row]).astype(np.int32)
    parent_of_ent = np.repeat(np.arange(n_par), np.diff(chunk_ent))
    fan = int(np.diff(cp).max()) if cp.shape[0] > 1 else 0
    local = np.asarray(ent_node, np.int64) - cp[parent_of_ent]
    return LayerWeights(
        chunk_ptr=chunk_ptr,
        chunk_ent=chunk_ent.astype(np.int64),
        row_feat=np.asarray(row_feat, np.int32),
        row_end=row_end,
        row_fence=row_fence(np.asarray(row_feat, np.int32)),
        ent_child=local.astype(child_dtype(max(fan, 1))),
        ent_val=np.asarray(ent_val).astype(values),
        bias=np.asarray(bias, np.float32),
    )


def unpack(lw: LayerWeights, child_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row_ptr int64 [R+1] absolute, ent_node int64 [E] layer-wide) of a packed layer."""
    chunk_of_row = np.repeat(np.arange(lw.n_parents), np.diff(lw.chunk_ptr))
    ends = np.asarray(lw.chunk_ent, np.int64)[chunk_of_row] + lw.row_end
    return np.concatenate([[0], ends]).astype(np.int64), lw.node_ids(child_ptr)


def near(a: float, b: float) -> bool:
    """a and b differ, but by less than the float32 kernel can resolve."""
    return a != b and abs(a - b) <= RTOL * max(abs(a), abs(b)) + ATOL


def post_fn(post: str, s: float) -> float:
    if post == "sigmoid":
        return 1.0 / (1.0 + np.exp(-s))
    return np.exp(-(np.maximum(0.0, 1.0 - s) ** 3))


def leaf_ids(
    child_ptr: Sequence[np.ndarray], label_order: np.ndarray | None
) -> list[list[np.ndarray]]:
    """For tree layer l (index l-1): ids[c] = the label ids (int64) below node c."""
    depth = len(child_ptr)
    n_last = int(child_ptr[-1][-1])
    order = np.arange(n_last) if label_order is None else np.asarray(label_order, np.int64)
    below: list[np.ndarray] = [np.array([i]) for i in order]
    out = [below]
    for li in range(depth - 1, 0, -1):
        cp = child_ptr[li]
        below = [
            np.concatenate(
                [below[k] for k in range(int(cp[c]), int(cp[c + 1]))] + [np.zeros(0)]
            ).astype(np.int64)
            for c in range(cp.shape[0] - 1)
        ]
        out.append(below)
    return out[::-1]


def id_bounds(child_ptr: Sequence[np.ndarray], label_order: np.ndarray | None) -> list[np.ndarray]:
    """For tree layer l (index l-1): (n_l, 2) min and max label id below each node.

    A node with no label below gets (n_labels, -1): it meets no range.
    """
    n_last = int(child_ptr[-1][-1])
    return [
        np.array(
            [(int(a.min()), int(a.max())) if a.size else (n_last, -1) for a in layer],
            dtype=np.int64,
        ).reshape(-1, 2)
        for layer in leaf_ids(child_ptr, label_order)
    ]


def fuzzy_positions(scores: list[float]) -> dict[int, int]:
    """Positions (in a best-first list) whose order float32 may not reproduce.

    Consecutive scores within tolerance form a cluster; a cluster whose scores
    are not all exactly equal is fuzzy (an exact tie is decided by the id rule
    in both implementations). Returns position -> cluster number.
    """
    out: dict[int, int] = {}
    i, n = 0, len(scores)
    while i < n:
        j = i
        while j + 1 < n and (scores[j + 1] == scores[j] or near(scores[j], scores[j + 1])):
            j += 1
        if any(scores[m] != scores[i] for m in range(i, j + 1)):
            out.update({m: i for m in range(i, j + 1)})
        i = j + 1
    return out


@dataclass
class Answer:
    ids: np.ndarray  # int64, best first
    scores: np.ndarray  # float64
    ambiguous: bool  # a near tie at an inner cut: the beam itself may differ
    near_pos: set[int]  # final positions whose id may legitimately differ


def beam_search(
    child_ptr: Sequence[np.ndarray],
    label_order: np.ndarray | None,
    layers: Sequence[LayerWeights],
    post: str,
    idx: np.ndarray,
    val: np.ndarray,
    beam: int,
    topk: int,
    lo: int = 0,
    hi: int | None = None,
    exact: bool = False,
    powers: Sequence[float] | None = None,
) -> Answer:
    """Beam search restricted to label ids [lo, hi).

    A node competes for the beam only if some label below may be in [lo, hi):
    by default (as the kernel) if the [min, max] id range below it meets
    [lo, hi); with ``exact``, only if a label below really is in [lo, hi).
    The two agree when every node's ids are contiguous. ``powers``: per layer, the
    power of the post-processed score (default 1).
    """
    depth = len(layers)
    n_last = int(child_ptr[-1][-1])
    hi = n_last if hi is None else hi
    x = {int(f): float(v) for f, v in zip(idx, val, strict=True)}
    ids_below = leaf_ids(child_ptr, label_order)
    bounds = id_bounds(child_ptr, label_order)
    plain = [unpack(lw, cp) for lw, cp in zip(layers, child_ptr, strict=True)]
    cur: list[tuple[int, float]] = [(0, 1.0)]
    ambiguous = False
    for li in range(depth):
        lw, cp, last = layers[li], child_ptr[li], li == depth - 1
        row_ptr, ent_node = plain[li]
        cands = []  # (score, key, node)
        for p, ps in cur:
            c0, c1 = int(cp[p]), int(cp[p + 1])
            s = {c: float(lw.bias[c]) for c in range(c0, c1)}
            for r in range(int(lw.chunk_ptr[p]), int(lw.chunk_ptr[p + 1])):
                f = int(lw.row_feat[r])
                if f in x:
                    for e in range(int(row_ptr[r]), int(row_ptr[r + 1])):
                        s[int(ent_node[e])] += x[f] * float(lw.ent_val[e])
            for c in range(c0, c1):
                if exact:
                    below = ids_below[li][c]
                    if not np.any((below >= lo) & (below < hi)):
                        continue
                elif bounds[li][c, 0] >= hi or bounds[li][c, 1] < lo:
                    continue  # no label below, or [min, max] misses [lo, hi)
                score = ps * post_fn(post, s[c]) ** (1.0 if powers is None else powers[li])
                key = int(label_order[c]) if last and label_order is not None else c
                cands.append((score, key, c))
        cands.sort(key=lambda t: (-t[0], t[1]))
        k = topk if last else beam
        fuzzy = fuzzy_positions([t[0] for t in cands])
        if not last:
            # a near tie across the cut: float32 may keep another node
            if len(cands) > k and (k - 1) in fuzzy and k in fuzzy and fuzzy[k - 1] == fuzzy[k]:
                ambiguous = True
            cur = [(c, sc) for sc, _, c in cands[:k]]
            continue
        kept = cands[:k]
        near_pos = {i for i in fuzzy if i < len(kept)}
        return Answer(
            ids=np.array([t[1] for t in kept], dtype=np.int64),
            scores=np.array([t[0] for t in kept], dtype=np.float64),
            ambiguous=ambiguous,
            near_pos=near_pos,
        )
    raise AssertionError("unreachable")


# --- the answerer's pool (native/answer.c), row by row in plain Python ---------------

def _words_overlap(prev: str, t: str) -> float:
    """Share of t's space-separated pieces that are words of prev, each distinct word
    of prev matched once."""
    words = set(prev.split(" "))
    pieces = t.split(" ")
    hit: set[str] = set()
    n = 0
    for w in pieces:
        if w in words and w not in hit:
            hit.add(w)
            n += 1
    return n / len(pieces)


def _grams(b: bytes) -> list[bytes]:
    padded = b" " + b + b" "
    return [padded[i:i + 3] for i in range(len(b))]


def _char3(prev: str, t: str) -> float:
    pg = set(_grams(prev.encode()))
    tg = _grams(t.encode())
    if not tg or not pg:
        return 0.0
    return sum(g in pg for g in tg) / len(tg)


def answer_pool(labels: Sequence[str], popularity: Sequence[int], prefix: str, prev: str,
                beam: Sequence[tuple[int, float]], history: Sequence[tuple[str, int, float]],
                session: Sequence[tuple[str, float]], extra: Sequence[tuple[str, int, int, int]],
                now: float, counts: Sequence[int] | None = None,
                recent: Sequence[int] | None = None,
                label_live: Sequence[float] | None = None, live_scale: float = 1.0,
                extra_live: Sequence[float] | None = None) -> list[dict]:
    """The rows ``qac_answer`` builds, in pool order: each a dict with text, ref,
    sources (bitmask) and x (the feature vector, by qac.rank.FEATURES). ``beam`` is
    (label id, engine score) best first; history (text, count, time); session (text,
    time) most recent first; extra (text, source, count, popularity)."""
    import math

    from qac.rank import FEATURES, SOURCES

    S = {s: i for i, s in enumerate(SOURCES)}
    rows: list[dict] = []
    by_text: dict[str, dict] = {}
    n_x = len(extra)

    def row(t: str, ref: int) -> dict:
        r = by_text.get(t)
        if r is None:
            r = {"text": t, "ref": ref, "label": -1, "sources": 0, "pop": 0,
                 "model_logscore": -12.0, "model_rank": 0.0, "mpc_rank": 0.0, "gen": 0.0,
                 "hist_count": 0.0, "hist_age": 20.0, "order": -1,
                 "sess_count": 0.0, "sess_rank": 0.0, "live": 0.0}
            by_text[t] = r
            rows.append(r)
        return r

    def ok(t: str) -> bool:
        return bool(t) and t.startswith(prefix) and t != prev

    def age(t: float) -> float:
        return -1.0 if t <= 0 else max(now - t, 0.0)

    kept = 0
    for lid, sc in beam:
        t = labels[lid]
        if prev and t == prev:
            continue
        r = row(t, lid)
        r["label"] = lid
        r["sources"] |= 1 << S["model"]
        r["model_logscore"] = math.log(sc) if sc > math.exp(-10.0) else -10.0
        kept += 1
        r["model_rank"] = 1.0 / kept
    hm = []
    for j, (t, c, tm) in enumerate(history):
        if not ok(t):
            continue
        r = row(t, -1 - (n_x + j))
        if r["sources"] & (1 << S["history"]):
            continue
        r["sources"] |= 1 << S["history"]
        r["hist_count"] = math.log1p(c)
        a = age(tm)
        r["hist_age"] = math.log1p(a) if a >= 0 else 20.0
        hm.append((a, j, r))
    hm.sort(key=lambda h: (h[0] < 0, h[0] if h[0] >= 0 else 0.0, h[1]))
    for i, (_, _, r) in enumerate(hm):
        r["order"] = i
    n_mpc = 0
    for j, (t, g, c, p) in enumerate(extra):
        if g == S["mpc"]:
            n_mpc += 1
        if not ok(t):
            continue
        r = row(t, -1 - j)
        r["sources"] |= 1 << g
        r["pop"] = max(r["pop"], p)
        if extra_live is not None:
            r["live"] = max(r["live"], extra_live[j])
        if g == S["mpc"]:
            if r["mpc_rank"] == 0:
                r["mpc_rank"] = 1.0 / n_mpc
        else:
            r["gen"] = max(r["gen"], math.log1p(c))
    for j, (t, _) in enumerate(session):
        if not (t and t.startswith(prefix)) or t not in by_text:
            continue
        r = by_text[t]
        r["sess_count"] += 1
        if r["sess_rank"] == 0:
            r["sess_rank"] = 1.0 / (j + 1)
    in_range = [i for i, t in enumerate(labels) if t.startswith(prefix)]
    range_pop = float(sum(popularity[i] for i in in_range))
    index = {labels[i]: i for i in in_range}
    pchars = len(prefix)
    cut = prefix.rfind(" ") + 1
    F = {f: i for i, f in enumerate(FEATURES)}
    for r in rows:
        t = r["text"]
        if r["label"] < 0 and t in index:
            r["label"] = r["ref"] = index[t]
        pop = float(popularity[r["label"]]) if r["label"] >= 0 else float(r["pop"])
        x = [0.0] * len(FEATURES)
        for s, i in S.items():
            if f"is_{s}" in F:  # fresh and the match sources have no column
                x[F[f"is_{s}"]] = float(bool(r["sources"] & (1 << i)))
        x[F["model_logscore"]] = r["model_logscore"]
        x[F["model_rank"]] = r["model_rank"]
        x[F["logpop"]] = math.log1p(pop)
        x[F["pop_share"]] = math.log((1 + pop) / (1 + max(range_pop, pop)))
        x[F["mpc_rank"]] = r["mpc_rank"]
        x[F["is_label"]] = float(r["label"] >= 0)
        x[F["gen_logcount"]] = r["gen"]
        x[F["prefix_chars"]] = float(pchars)
        x[F["added_chars"]] = float(len(t) - pchars)
        x[F["added_words"]] = float(t.count(" ") - prefix.count(" "))
        x[F["has_prev"]] = float(bool(prev))
        if prev:
            x[F["prev_overlap"]] = _words_overlap(prev, t[cut:]) if len(t.encode()) > len(
                prefix[:cut].encode()) else 0.0
            x[F["prev_char3"]] = _char3(prev, t)
            x[F["extends_prev"]] = float(t.startswith(prev))
        x[F["has_history"]] = float(bool(hm))
        x[F["hist_matches"]] = math.log1p(len(hm))
        x[F["hist_count"]] = r["hist_count"]
        x[F["hist_age"]] = r["hist_age"]
        x[F["hist_rank"]] = 1.0 / (1 + r["order"]) if r["order"] >= 0 else 0.0
        x[F["sess_count"]] = r["sess_count"]
        x[F["sess_rank"]] = r["sess_rank"]
        lab = r["label"]
        live = r["live"]
        if lab >= 0 and label_live is not None:
            live = max(label_live[lab] * live_scale, 0.0)
        r["recent"] = (recent[lab] if recent is not None and lab >= 0 else 0) + live
        count = (counts[lab] if counts is not None and lab >= 0 else 0) + live
        x[F["recent_pop"]] = math.log1p(r["recent"])
        x[F["recent_trend"]] = math.log((1 + r["recent"]) / (1 + count))
        r["x"] = x
    # rank by recent count in the pool, ties in pool order
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["recent"], i))
    for pos, i in enumerate(order):
        rows[i]["x"][F["recent_rank"]] = 1.0 / (1 + pos) if rows[i]["recent"] > 0 else 0.0
    return rows


# --- highlight spans (native/answer.c, answer_spans) ---


def prefix_alignment(prefix: str, text: str) -> tuple[int, list[int]]:
    """How ``prefix`` best matches a beginning of ``text`` (Damerau, optimal string
    alignment over characters): (edits, the positions of ``text`` whose character
    equals the typed one it is aligned with)."""
    m = len(prefix)
    n = min(len(text), m + 4)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        d[i][0] = i
        for j in range(1, m + 1):
            v = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                    d[i - 1][j - 1] + (text[i - 1] != prefix[j - 1]))
            if i > 1 and j > 1 and text[i - 1] == prefix[j - 2] and text[i - 2] == prefix[j - 1]:
                v = min(v, d[i - 2][j - 2] + 1)
            d[i][j] = v
    end = min(range(n + 1), key=lambda i: (d[i][m], -i))
    best = d[end][m]
    kept: list[int] = []
    i, j = end, m
    while i > 0 and j > 0:
        if text[i - 1] == prefix[j - 1] and d[i][j] == d[i - 1][j - 1]:
            kept.append(i - 1)
            i, j = i - 1, j - 1
        elif i > 1 and j > 1 and text[i - 1] == prefix[j - 2] and \
                text[i - 2] == prefix[j - 1] and d[i][j] == d[i - 2][j - 2] + 1:
            i, j = i - 2, j - 2
        elif d[i][j] == d[i - 1][j - 1] + 1:
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    kept.reverse()
    return best, kept


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def _word_spans(tokens: list[str], text: str) -> list[tuple[int, int]]:
    """Spans of the first run of successive words of ``text`` that start with the
    tokens, or none."""
    starts = [i for i, ch in enumerate(text) if ch != " " and (i == 0 or text[i - 1] == " ")]
    words = [(s, text.find(" ", s) if " " in text[s:] else len(text)) for s in starts]
    for a in range(len(words) - len(tokens) + 1):
        if all(text.startswith(t, words[a + i][0]) for i, t in enumerate(tokens)):
            return [(words[a + i][0], words[a + i][0] + len(t)) for i, t in enumerate(tokens)]
    return []


def spans(prefix: str, text: str, edits: int = 0) -> list[tuple[int, int]]:
    """The kernel's highlight spans (``qac_answer_out.spans``), written plainly:
    spans ``[start, end)`` (character offsets into ``text``) of ``text`` that match
    what was typed, ``prefix`` as normalized (:func:`qac.text.normalize_prefix`):

    - a text that starts with the (folded) prefix: one span over it;
    - a word-prefix match: one span per typed word, over the start of its word;
    - a corrected text (``edits`` > 0): the characters that equal the typed ones
      they align with, so the corrected ones are not highlighted;
    - else none (an empty prefix, a next-query suggestion).
    """
    p = prefix.rstrip(" ")
    if not p:
        return []
    t = text
    if t.startswith(prefix):  # a finished word keeps its space
        return [(0, len(prefix))]
    if t.startswith(p):
        return [(0, len(p))]
    if edits <= 0:
        return _word_spans(p.split(), t)
    _, kept = prefix_alignment(p, t)
    return _runs(kept)

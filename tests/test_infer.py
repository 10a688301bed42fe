"""Beam-search kernel (native/infer.c via qac.model.xlinear) against tests/reference.py."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qac import _kernel
from qac.errors import InputError, ModelFormatError
from qac.model.weights import LayerWeights
from qac.model.xlinear import XLinearModel
from tests import reference


@dataclass
class Spec:
    child_ptr: list[np.ndarray]
    label_order: np.ndarray | None
    layers: list[LayerWeights]
    n_features: int
    post: str
    spans: np.ndarray | None = None

    def model(self) -> XLinearModel:
        return XLinearModel(
            self.child_ptr, self.label_order, self.layers, self.n_features, self.post,
            spans=self.spans,
        )


def random_tree(
    rng: np.random.Generator, depth: int, max_branch: int, max_labels: int, allow_empty: bool
) -> list[np.ndarray]:
    """child_ptr arrays of a random tree (some nodes with 1 child, maybe some with none)."""
    child_ptr = []
    n_parent = 1
    for li in range(depth):
        lo = 0 if allow_empty else 1
        counts = rng.integers(lo, max_branch + 1, size=n_parent)
        if counts.sum() == 0:
            counts[rng.integers(n_parent)] = 1
        # keep the last layer within max_labels: shrink the fan-out of upper layers
        remaining = depth - li - 1
        budget = max(1, max_labels // max(1, max_branch) ** remaining)
        while counts.sum() > budget and counts.max() > 1:
            counts[np.argmax(counts)] -= 1
        child_ptr.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        n_parent = int(counts.sum())
    return child_ptr


def random_layers(
    rng: np.random.Generator, child_ptr: list[np.ndarray], n_features: int, ties: bool,
    values: type = np.float32,
) -> list[LayerWeights]:
    layers = []
    for cp in child_ptr:
        n_parent, n_node = cp.shape[0] - 1, int(cp[-1])
        chunk_ptr: list[int] = [0]
        row_ptr: list[int] = [0]
        row_feat: list[int] = []
        ent_node: list[int] = []
        ent_val: list[float] = []
        for p in range(n_parent):
            c0, c1 = int(cp[p]), int(cp[p + 1])
            n_rows = 0 if rng.random() < 0.15 else int(rng.integers(0, n_features + 1))
            feats = np.sort(rng.choice(n_features, size=n_rows, replace=False))
            for f in feats:
                row_feat.append(int(f))
                n_ent = 0 if c1 == c0 else int(rng.integers(0, min(4, c1 - c0) + 1))
                nodes = rng.choice(np.arange(c0, c1), size=n_ent, replace=False)
                ent_node.extend(int(c) for c in nodes)
                ent_val.extend(rng.uniform(-1.5, 1.5, size=n_ent).tolist())
                row_ptr.append(len(ent_node))
            chunk_ptr.append(len(row_feat))
        bias = rng.uniform(-0.5, 1.5, size=n_node)
        if ties:
            ent_val = [0.0] * len(ent_val)
            bias = np.full(n_node, 0.25)
        layers.append(reference.pack(cp, np.array(chunk_ptr), np.array(row_feat),
                                     np.array(row_ptr), np.array(ent_node, np.int64),
                                     np.array(ent_val), bias, values))
    return layers


def no_weights(child_ptr: np.ndarray, bias: np.ndarray) -> LayerWeights:
    """A layer with biases only."""
    n_par = child_ptr.shape[0] - 1
    z = np.zeros(0)
    return reference.pack(child_ptr, np.zeros(n_par + 1, np.int64), z, np.zeros(1), z, z,
                          np.asarray(bias, np.float32))


def random_spec(
    seed: int,
    depth: int,
    max_branch: int,
    max_labels: int,
    post: str,
    ties: bool = False,
    allow_empty: bool = False,
    with_order: bool = True,
) -> Spec:
    rng = np.random.default_rng(seed)
    child_ptr = random_tree(rng, depth, max_branch, max_labels, allow_empty)
    n_features = int(rng.integers(1, 40)) if rng.random() < 0.7 else int(rng.integers(40, 160))
    values = np.float16 if rng.random() < 0.5 else np.float32
    layers = random_layers(rng, child_ptr, n_features, ties, values)
    n_labels = int(child_ptr[-1][-1])
    order = rng.permutation(n_labels).astype(np.int32) if with_order else None
    return Spec(child_ptr, order, layers, n_features, post)


def random_query(
    rng: np.random.Generator, n_features: int, kind: int
) -> tuple[np.ndarray, np.ndarray]:
    if kind == 0:
        idx = np.array([], dtype=np.int32)
    elif kind == 1:
        idx = np.array([rng.integers(n_features)], dtype=np.int32)
    elif kind == 2:
        idx = np.array([n_features - 1], dtype=np.int32)
    else:
        size = int(rng.integers(1, n_features + 1))
        idx = np.sort(rng.choice(n_features, size=size, replace=False)).astype(np.int32)
        if kind == 4:
            idx = np.union1d(idx, [n_features - 1]).astype(np.int32)
    val = np.asarray(rng.uniform(0.05, 1.0, size=idx.shape[0]), dtype=np.float32)
    if val.size:
        val /= np.linalg.norm(val)
    return idx, val


def assert_matches(
    spec: Spec,
    got: tuple[np.ndarray, np.ndarray],
    ans: reference.Answer,
    topk: int,
    lo: int,
    hi: int,
) -> None:
    ids, scores = got
    assert ids.dtype == np.int32 and scores.dtype == np.float32
    # always: valid, inside the id range, sorted best first, no repeats
    assert len(ids) <= topk
    assert len(set(ids.tolist())) == len(ids)
    assert all(lo <= i < hi for i in ids.tolist())
    assert np.all(np.diff(scores) <= 0)
    if ans.ambiguous:
        return
    assert len(ids) == len(ans.ids)
    np.testing.assert_allclose(scores, ans.scores, rtol=reference.RTOL, atol=reference.ATOL)
    for i in range(len(ids)):
        if i not in ans.near_pos:
            assert ids[i] == ans.ids[i], (i, ids, ans.ids, scores, ans.scores)


query_kinds = st.lists(st.integers(0, 4), min_size=1, max_size=6)


def leaf_blocks(child_ptr: list[np.ndarray], layer: int) -> np.ndarray:
    """Boundaries of the last-layer positions under each node of tree layer ``layer``."""
    first = np.arange(2 if layer == 0 else int(child_ptr[layer - 1][-1]) + 1, dtype=np.int64)
    for cp in child_ptr[layer:]:
        first = cp[first]
    return first


def trie_order(rng: np.random.Generator, child_ptr: list[np.ndarray], cut: int) -> np.ndarray:
    """A hybrid trie / k-means label_order: the labels under each node of layer ``cut``
    get a contiguous block of ids, blocks in node order, ids shuffled inside a block
    (cut = depth: ids = positions; cut = 0: a random permutation)."""
    first = leaf_blocks(child_ptr, cut)
    parts = [a + rng.permutation(b - a) for a, b in zip(first[:-1], first[1:], strict=True)]
    return np.concatenate(parts + [np.zeros(0, np.int64)]).astype(np.int32)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.integers(1, 4),
    max_branch=st.integers(1, 8),
    max_labels=st.integers(1, 300),
    post=st.sampled_from(["l3-hinge", "sigmoid"]),
    ties=st.booleans(),
    allow_empty=st.booleans(),
    with_order=st.booleans(),
    beam=st.integers(1, 20),
    topk=st.integers(1, 30),
    ranged=st.booleans(),
    kinds=query_kinds,
)
def test_single_matches_reference(
    seed: int,
    depth: int,
    max_branch: int,
    max_labels: int,
    post: str,
    ties: bool,
    allow_empty: bool,
    with_order: bool,
    beam: int,
    topk: int,
    ranged: bool,
    kinds: list[int],
) -> None:
    spec = random_spec(seed, depth, max_branch, max_labels, post, ties, allow_empty, with_order)
    model = spec.model()
    rng = np.random.default_rng(seed + 1)
    n_labels = model.n_labels
    for kind in kinds:
        idx, val = random_query(rng, spec.n_features, kind)
        lo, hi = 0, n_labels
        if ranged:
            lo = int(rng.integers(0, n_labels + 1))
            hi = int(rng.integers(lo, n_labels + 1))
        got = model.predict_one(idx, val, beam=beam, topk=topk, lo=lo, hi=hi)
        ans = reference.beam_search(
            spec.child_ptr, spec.label_order, spec.layers, post, idx, val, beam, topk, lo, hi
        )
        if ties:
            assert not ans.ambiguous and not ans.near_pos
        assert_matches(spec, got, ans, topk, lo, hi)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.integers(1, 4),
    max_branch=st.integers(1, 8),
    max_labels=st.integers(1, 300),
    post=st.sampled_from(["l3-hinge", "sigmoid"]),
    allow_empty=st.booleans(),
    cut_frac=st.floats(0, 1),
    aligned=st.booleans(),
    beam=st.integers(1, 20),
    topk=st.integers(1, 30),
    kinds=query_kinds,
)
def test_trie_ordered_ranges_prune_no_eligible_label(
    seed: int,
    depth: int,
    max_branch: int,
    max_labels: int,
    post: str,
    allow_empty: bool,
    cut_frac: float,
    aligned: bool,
    beam: int,
    topk: int,
    kinds: list[int],
) -> None:
    # Labels are contiguous id blocks under the nodes of layer `cut`: above it
    # every node's ids are contiguous, so [min, max] pruning is exact; below it
    # too when the range is a union of whole blocks (a prefix at trie level).
    spec = random_spec(seed, depth, max_branch, max_labels, post, allow_empty=allow_empty)
    rng = np.random.default_rng(seed + 2)
    cut = round(cut_frac * depth)
    spec = replace(spec, label_order=trie_order(rng, spec.child_ptr, cut))
    model = spec.model()
    blocks = np.unique(leaf_blocks(spec.child_ptr, cut))
    n_labels = model.n_labels
    for kind in kinds:
        idx, val = random_query(rng, spec.n_features, kind)
        if aligned:
            lo, hi = sorted(int(b) for b in rng.choice(blocks, size=2))
        else:
            lo = int(rng.integers(0, n_labels + 1))
            hi = int(rng.integers(lo, n_labels + 1))
        args = (spec.child_ptr, spec.label_order, spec.layers, post, idx, val, beam, topk, lo, hi)
        ans = reference.beam_search(*args)
        if aligned or cut == depth:
            # nothing eligible was lost to the conservative [min, max] test
            exact = reference.beam_search(*args, exact=True)
            assert exact.ids.tolist() == ans.ids.tolist()
            assert exact.scores.tolist() == ans.scores.tolist()
        got = model.predict_one(idx, val, beam=beam, topk=topk, lo=lo, hi=hi)
        assert_matches(spec, got, ans, topk, lo, hi)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.integers(1, 4),
    with_order=st.booleans(),
    n_ranges=st.integers(1, 5),
)
def test_a_full_beam_returns_exactly_the_ids_in_range(
    seed: int, depth: int, with_order: bool, n_ranges: int
) -> None:
    # Independent of the oracle: with room for every node, pruning may drop no
    # label in [lo, hi) (whatever the order) and must drop every other one.
    spec = random_spec(seed, depth, 5, 120, "sigmoid", allow_empty=True, with_order=with_order)
    model = spec.model()
    n = model.n_labels
    big = max(int(cp[-1]) for cp in spec.child_ptr) + 1
    rng = np.random.default_rng(seed)
    idx, val = random_query(rng, spec.n_features, 3)
    for _ in range(n_ranges):
        lo = int(rng.integers(0, n + 1))
        hi = int(rng.integers(lo, n + 1))
        ids, _ = model.predict_one(idx, val, beam=big, topk=big, lo=lo, hi=hi)
        assert sorted(ids.tolist()) == list(range(lo, hi))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.integers(1, 4),
    post=st.sampled_from(["l3-hinge", "sigmoid"]),
    beam=st.integers(1, 20),
    topk=st.integers(1, 30),
    n_rows=st.integers(0, 70),
)
def test_batch_equals_single_for_any_thread_count(
    seed: int, depth: int, post: str, beam: int, topk: int, n_rows: int
) -> None:
    spec = random_spec(seed, depth, 5, 200, post, allow_empty=True)
    model = spec.model()
    rng = np.random.default_rng(seed)
    rows = [random_query(rng, spec.n_features, int(rng.integers(0, 5))) for _ in range(n_rows)]
    indptr = np.concatenate([[0], np.cumsum([len(i) for i, _ in rows])]).astype(np.int64)
    idx = np.concatenate([i for i, _ in rows] + [np.zeros(0, np.int32)]).astype(np.int32)
    val = np.concatenate([v for _, v in rows] + [np.zeros(0, np.float32)]).astype(np.float32)
    X = sp.csr_matrix((val, idx, indptr), shape=(n_rows, spec.n_features))
    ids1, sc1 = model.predict(X, beam=beam, topk=topk, threads=1)
    assert ids1.shape == (n_rows, topk) and ids1.dtype == np.int32 and sc1.dtype == np.float32
    for threads in (0, 2, 3, 8):
        ids, sc = model.predict(X, beam=beam, topk=topk, threads=threads)
        np.testing.assert_array_equal(ids, ids1)
        np.testing.assert_array_equal(sc, sc1)
    for r, (qi, qv) in enumerate(rows):
        one_ids, one_sc = model.predict_one(qi, qv, beam=beam, topk=topk)
        n = len(one_ids)
        np.testing.assert_array_equal(ids1[r, :n], one_ids)
        np.testing.assert_array_equal(sc1[r, :n], one_sc)
        assert np.all(ids1[r, n:] == -1) and np.all(sc1[r, n:] == 0)


def test_ties_prefer_smaller_node_then_smaller_label() -> None:
    # root -> 3 nodes -> 2 labels each; all scores equal
    child_ptr = [np.array([0, 3], np.int64), np.array([0, 2, 4, 6], np.int64)]
    layers = [no_weights(child_ptr[0], np.ones(3)), no_weights(child_ptr[1], np.ones(6))]
    order = np.array([5, 4, 3, 2, 1, 0], np.int32)
    spec = Spec(child_ptr, order, layers, 3, "l3-hinge")
    model = spec.model()
    ids, scores = model.predict_one(np.zeros(0, np.int32), np.zeros(0, np.float32), beam=2, topk=4)
    # beam keeps nodes 0 and 1 -> last-layer nodes 0..3 -> labels 5,4,3,2 -> sorted by label
    assert ids.tolist() == [2, 3, 4, 5]
    assert np.all(scores == 1.0)


def test_range_restricts_the_beam_not_just_the_answer() -> None:
    # Node 0's subtree scores high but lies outside [lo, hi): with beam 1 the
    # answer must still come from inside the range.
    child_ptr = [np.array([0, 2], np.int64), np.array([0, 2, 4], np.int64)]
    layers = [no_weights(child_ptr[0], [2, -1]), no_weights(child_ptr[1], [2, 2, 0, 1])]
    model = XLinearModel(child_ptr, None, layers, 1)
    q = (np.zeros(0, np.int32), np.zeros(0, np.float32))
    assert model.predict_one(*q, beam=1, topk=2)[0].tolist() == [0, 1]
    assert model.predict_one(*q, beam=1, topk=2, lo=1, hi=4)[0].tolist() == [1]
    assert model.predict_one(*q, beam=1, topk=2, lo=2, hi=4)[0].tolist() == [3, 2]
    assert model.predict_one(*q, beam=1, topk=2, lo=2, hi=2)[0].tolist() == []


def test_range_is_in_label_id_space() -> None:
    # root -> 2 nodes -> 2 labels each; node 0 holds labels {2, 0}, node 1 {3, 1}
    child_ptr = [np.array([0, 2], np.int64), np.array([0, 2, 4], np.int64)]
    layers = [no_weights(child_ptr[0], [2, 1]), no_weights(child_ptr[1], [0, 1, 2, 3])]
    model = XLinearModel(child_ptr, np.array([2, 0, 3, 1], np.int32), layers, 1)
    q = (np.zeros(0, np.int32), np.zeros(0, np.float32))
    assert model.predict_one(*q, beam=1, topk=4)[0].tolist() == [0, 2]
    # ids [0, 1): node 1's ids span [1, 3]: pruned, node 0 yields label 0
    assert model.predict_one(*q, beam=1, topk=4, lo=0, hi=1)[0].tolist() == [0]
    # ids [3, 4): node 0's span [0, 2] misses it, so the beam goes to node 1
    assert model.predict_one(*q, beam=1, topk=4, lo=3, hi=4)[0].tolist() == [3]
    # ids [1, 2): both spans meet it; conservative, the beam of 1 keeps node 0,
    # which has no label 1; a beam of 2 finds it
    assert model.predict_one(*q, beam=1, topk=4, lo=1, hi=2)[0].tolist() == []
    assert model.predict_one(*q, beam=2, topk=4, lo=1, hi=2)[0].tolist() == [1]
    assert model.predict_one(*q, beam=2, topk=4, lo=1, hi=4)[0].tolist() == [1, 3, 2]


def test_concurrent_threads_get_own_scratch() -> None:
    spec = random_spec(7, 3, 6, 300, "sigmoid")
    model = spec.model()
    rng = np.random.default_rng(3)
    queries = [random_query(rng, spec.n_features, 3) for _ in range(40)]
    want = [model.predict_one(i, v, beam=5, topk=7) for i, v in queries]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                for (i, v), (wi, ws) in zip(queries, want, strict=True):
                    gi, gs = model.predict_one(i, v, beam=5, topk=7)
                    assert np.array_equal(gi, wi) and np.array_equal(gs, ws)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_scratch_grows_with_beam_and_readonly_arrays_work() -> None:
    spec = random_spec(11, 3, 8, 300, "l3-hinge")
    for lw in spec.layers:
        for arr in lw.arrays().values():
            arr.flags.writeable = False
    for arr in spec.child_ptr:
        arr.flags.writeable = False
    model = spec.model()
    rng = np.random.default_rng(1)
    idx, val = random_query(rng, spec.n_features, 3)
    a = model.predict_one(idx, val, beam=2, topk=3)
    b = model.predict_one(idx, val, beam=100, topk=300)
    ans = reference.beam_search(
        spec.child_ptr, spec.label_order, spec.layers, spec.post, idx, val, 100, 300
    )
    assert_matches(spec, b, ans, 300, 0, model.n_labels)
    assert len(a[0]) <= 3
    assert model.handle is not None
    assert model.scratch_for_thread(100, 300) is model.scratch_for_thread(1, 1)


# ---- corruption: every kind is rejected at construction --------------------


def _corrupt(spec: Spec, li: int, **changes: np.ndarray) -> Spec:
    layers = list(spec.layers)
    layers[li] = replace(layers[li], **changes)
    return replace(spec, layers=layers)


def _base() -> Spec:
    spec = random_spec(0, 3, 4, 60, "l3-hinge")
    assert all(lw.nnz > 2 for lw in spec.layers)
    return spec


def _corruptions() -> list[tuple[str, Spec]]:
    s = _base()
    out: list[tuple[str, Spec]] = []
    L = s.layers[1]
    cp = s.child_ptr

    def arr(a: np.ndarray, i: int, v: int | float) -> np.ndarray:
        b = a.copy()
        b[i] = v
        return b

    def cps(i: int, a: np.ndarray) -> Spec:
        c = list(cp)
        c[i] = a
        return replace(s, child_ptr=c)

    out.append(("child_ptr start", cps(1, arr(cp[1], 0, 1))))
    out.append(("child_ptr end", cps(1, arr(cp[1], -1, cp[1][-1] - 1))))
    out.append(("child_ptr decreasing", cps(1, arr(cp[1], 1, cp[1][-1] + 5))))
    out.append(("child_ptr length", cps(1, cp[1][:-1].copy())))
    out.append(("root child_ptr", cps(0, np.array([0, 1, int(cp[0][-1])], np.int64))))
    out.append(
        ("chunk_ptr end", _corrupt(s, 1, chunk_ptr=arr(L.chunk_ptr, -1, L.chunk_ptr[-1] + 1)))
    )
    out.append(("chunk_ptr decreasing", _corrupt(s, 1, chunk_ptr=arr(L.chunk_ptr, 1, -1))))
    out.append(("chunk_ptr length", _corrupt(s, 1, chunk_ptr=L.chunk_ptr[:-1].copy())))
    out.append(
        ("chunk_ent end", _corrupt(s, 1, chunk_ent=arr(L.chunk_ent, -1, L.chunk_ent[-1] - 1)))
    )
    out.append(("chunk_ent decreasing", _corrupt(s, 1, chunk_ent=arr(L.chunk_ent, 1, -1))))
    out.append(("chunk_ent length", _corrupt(s, 1, chunk_ent=L.chunk_ent[:-1].copy())))
    out.append(("row_feat too big", _corrupt(s, 1, row_feat=arr(L.row_feat, 0, s.n_features))))
    out.append(("row_feat negative", _corrupt(s, 1, row_feat=arr(L.row_feat, 0, -1))))
    # a duplicate feature inside one chunk
    p = int(np.argmax(np.diff(L.chunk_ptr)))
    r0, r1 = int(L.chunk_ptr[p]), int(L.chunk_ptr[p + 1])
    assert r1 - r0 >= 2 and L.row_end[r1 - 1] > 0
    out.append(
        (
            "row_feat not increasing",
            _corrupt(s, 1, row_feat=arr(L.row_feat, r0 + 1, int(L.row_feat[r0]))),
        )
    )
    # row ends: relative to the chunk, non-decreasing, the last one closes it
    out.append(("row_end short of the chunk", _corrupt(s, 1, row_end=arr(L.row_end, r1 - 1,
                                                                         L.row_end[r1 - 1] - 1))))
    out.append(("row_end past the chunk", _corrupt(s, 1, row_end=arr(L.row_end, r1 - 1,
                                                                    L.row_end[r1 - 1] + 1))))
    out.append(("row_end negative", _corrupt(s, 1, row_end=arr(L.row_end, r0, -1))))
    out.append(("row_end decreasing", _corrupt(s, 1, row_end=arr(L.row_end, r0,
                                                                 L.row_end[r1 - 1] + 1))))
    out.append(("row_end length", _corrupt(s, 1, row_end=L.row_end[:-1].copy())))
    out.append(("row_fence value", _corrupt(s, 1, row_fence=arr(L.row_fence, -1,
                                                                 L.row_fence[-1] + 1))))
    out.append(("row_fence length", _corrupt(s, 1, row_fence=L.row_fence[:-1].copy())))
    # an entry naming a child its parent does not have
    e = int(L.chunk_ent[p])
    out.append(("ent_child beyond the fan-out",
                _corrupt(s, 1, ent_child=arr(L.ent_child, e, int(cp[1][p + 1] - cp[1][p])))))
    out.append(("ent_child length", _corrupt(s, 1, ent_child=L.ent_child[:-1].copy())))
    out.append(("ent_val length", _corrupt(s, 1, ent_val=L.ent_val[:-1].copy())))
    out.append(("ent_val nan", _corrupt(s, 1, ent_val=arr(L.ent_val, 0, np.nan))))
    half = L.ent_val.astype(np.float16)
    out.append(("ent_val float16 inf", _corrupt(s, 1, ent_val=arr(half, 0, np.inf))))
    out.append(("ent_val float16 nan", _corrupt(s, 1, ent_val=arr(half, 0, np.nan))))
    out.append(("bias inf", _corrupt(s, 2, bias=arr(s.layers[2].bias, 0, np.inf))))
    out.append(("bias length", _corrupt(s, 1, bias=L.bias[:-1].copy())))
    lo = s.label_order
    assert lo is not None
    out.append(("label_order duplicate", replace(s, label_order=arr(lo, 0, int(lo[1])))))
    out.append(("label_order range", replace(s, label_order=arr(lo, 0, len(lo)))))
    out.append(("label_order negative", replace(s, label_order=arr(lo, 0, -1))))
    out.append(("label_order length", replace(s, label_order=lo[:-1].copy())))
    out.append(("n_features too small", replace(s, n_features=int(L.row_feat.max()))))
    spans = s.model().spans()
    for col, name in enumerate(("min", "max", "pmax", "smin")):
        bad = spans.copy()
        bad[len(bad) // 2, col] += 1
        out.append((f"spans {name}", replace(s, spans=bad)))
    out.append(("spans length", replace(s, spans=spans[:-1].copy())))
    return out


@pytest.mark.parametrize("name,spec", _corruptions(), ids=lambda x: x if isinstance(x, str) else "")
def test_corrupt_arrays_are_rejected(name: str, spec: Spec) -> None:
    with pytest.raises(ModelFormatError, match="inconsistent model arrays"):
        spec.model()


def test_bad_dtypes_and_shapes_are_input_errors() -> None:
    s = _base()
    with pytest.raises(InputError, match="row_feat"):
        _corrupt(s, 0, row_feat=s.layers[0].row_feat.astype(np.int64)).model()
    with pytest.raises(InputError, match="child_ptr"):
        replace(s, child_ptr=[c.astype(np.int32) for c in s.child_ptr]).model()
    with pytest.raises(InputError, match="label_order"):
        replace(s, label_order=s.label_order.astype(np.int64)).model()  # type: ignore[union-attr]
    with pytest.raises(InputError, match="depth"):
        replace(s, child_ptr=s.child_ptr[:2]).model()
    with pytest.raises(InputError, match="post"):
        replace(s, post="relu").model()


def test_bad_queries_are_input_errors() -> None:
    s = _base()
    m = s.model()
    f = np.float32
    bad = [
        (np.array([3, 1], np.int32), np.ones(2, f)),  # unsorted
        (np.array([1, 1], np.int32), np.ones(2, f)),  # duplicate
        (np.array([s.n_features], np.int32), np.ones(1, f)),  # out of range
        (np.array([-1], np.int32), np.ones(1, f)),  # negative
        (np.array([0], np.int32), np.array([np.nan], f)),  # not finite
        (np.array([0, 1], np.int32), np.ones(1, f)),  # length mismatch
    ]
    for idx, val in bad:
        with pytest.raises(InputError):
            m.predict_one(idx, val)
    q = (np.zeros(0, np.int32), np.zeros(0, f))
    for kw in ({"beam": 0}, {"topk": 0}, {"lo": -1}, {"lo": 2, "hi": 1}, {"hi": m.n_labels + 1}):
        with pytest.raises(InputError):
            m.predict_one(*q, **kw)  # type: ignore[arg-type]
    # unsorted rows are sorted (a copy); duplicate ids are rejected
    unsorted = sp.csr_matrix(
        (np.array([0.6, 0.8], f), np.array([3, 1], np.int32), np.array([0, 2])),
        shape=(1, s.n_features),
    )
    assert not unsorted.has_sorted_indices
    got = m.predict(unsorted, topk=4)
    want = m.predict_one(np.array([1, 3], np.int32), np.array([0.8, 0.6], f), topk=4)
    np.testing.assert_array_equal(got[0][0, : len(want[0])], want[0])
    dup = sp.csr_matrix(
        (np.ones(2, f), np.array([1, 1], np.int32), np.array([0, 2])), shape=(1, s.n_features)
    )
    with pytest.raises(InputError):
        m.predict(dup)
    with pytest.raises(InputError, match="columns"):
        m.predict(sp.csr_matrix((1, s.n_features + 1), dtype=f))


def test_c_boundary_rejects_null_and_capacity() -> None:
    ffi, lib = _kernel.ffi, _kernel.lib
    s = _base()
    m = s.model()
    out = ffi.new("qac_model_t **")
    null = ffi.NULL

    def new(depth: int, views: Any, n_spans: int = 0) -> int:
        return int(lib.qac_model_new(depth, views, null, 0, null, n_spans, 1, 0, null, out))

    assert new(0, null) == lib.QAC_E_INPUT
    assert new(1, null) == lib.QAC_E_INPUT
    views = ffi.new("qac_layer_view[]", 1)
    views[0].child_bytes, views[0].val_bytes = 1, 4
    views[0].n_child_ptr = 2  # NULL with a length
    assert new(1, views) == lib.QAC_E_INPUT
    views = ffi.new("qac_layer_view[]", 1)
    cp = np.array([0, 1], np.int64)
    z = np.zeros(2, np.int64)
    bias = np.zeros(1, np.float32)
    views[0].child_ptr, views[0].n_child_ptr = _kernel.ptr(cp, "int64_t *"), 2
    views[0].chunk_ptr, views[0].n_chunk_ptr = _kernel.ptr(z, "int64_t *"), 2
    views[0].chunk_ent, views[0].n_chunk_ent = _kernel.ptr(z, "int64_t *"), 2
    views[0].bias, views[0].n_bias = _kernel.ptr(bias, "float *"), 1
    for cb, vb, want in ((1, 4, lib.QAC_OK), (3, 4, lib.QAC_E_INPUT), (1, 8, lib.QAC_E_INPUT)):
        views[0].child_bytes, views[0].val_bytes = cb, vb
        assert new(1, views) == want
        lib.qac_model_free(out[0])
    assert new(1, views, n_spans=4) == lib.QAC_E_INPUT  # spans NULL with a length
    scratch = _kernel.scratch_new(m.handle, 2, 2)
    ids = ffi.new("int32_t[8]")
    sc = ffi.new("float[8]")
    n = ffi.new("size_t *")
    rc = lib.qac_model_predict(
        m.handle, scratch, ffi.NULL, ffi.NULL, 0, 3, 2, 0, m.n_labels, ids, sc, 8, n
    )
    assert rc == lib.QAC_E_CAPACITY
    rc = lib.qac_model_predict(
        m.handle, scratch, ffi.NULL, ffi.NULL, 1, 2, 2, 0, m.n_labels, ids, sc, 8, n
    )
    assert rc == lib.QAC_E_INPUT
    # the output buffers' own capacity: topk 2 into room for 1 is refused, not overrun
    rc = lib.qac_model_predict(
        m.handle, scratch, ffi.NULL, ffi.NULL, 0, 2, 2, 0, m.n_labels, ids, sc, 1, n
    )
    assert rc == lib.QAC_E_CAPACITY and n[0] == 0
    rc = lib.qac_model_predict(
        m.handle, scratch, ffi.NULL, ffi.NULL, 0, 2, 2, 0, m.n_labels, ids, sc, 8, n
    )
    assert rc == lib.QAC_OK and n[0] == 2
    indptr = np.zeros(3, np.int64)
    rc = lib.qac_model_predict_batch(
        m.handle, _kernel.ptr(indptr, "int64_t *"), ffi.NULL, ffi.NULL, 0, 2, 2, 4, 1, ids, sc,
        7,
    )
    assert rc == lib.QAC_E_CAPACITY
    rc = lib.qac_model_predict_batch(
        m.handle, _kernel.ptr(indptr, "int64_t *"), ffi.NULL, ffi.NULL, 0, 2, 2, 4, 1, ids, sc,
        8,
    )
    assert rc == lib.QAC_OK
    depth, nl, nf = ffi.new("size_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
    assert lib.qac_model_info(m.handle, depth, nl, nf) == 0
    assert (depth[0], nl[0], nf[0]) == (3, m.n_labels, s.n_features)


def test_numpy_int_arguments_and_a_model_without_labels() -> None:
    spec = random_spec(3, 2, 4, 50, "sigmoid")
    m = spec.model()
    idx, val = random_query(np.random.default_rng(0), spec.n_features, 3)
    kw: dict[str, Any] = {"beam": np.int64(4), "topk": np.int32(5), "lo": np.int64(0)}
    a = m.predict_one(idx, val, **kw)
    b = m.predict_one(idx, val, beam=4, topk=5)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(InputError):
        m.predict_one(idx, val, beam=2.5)  # type: ignore[arg-type]
    # a tree whose only internal node has no children: valid, answers nothing
    cps = [np.array([0, 1], np.int64), np.array([0, 0], np.int64)]
    layers = [no_weights(cps[0], np.zeros(1)), no_weights(cps[1], np.zeros(0))]
    m0 = XLinearModel(cps, np.zeros(0, np.int32), layers, 4)
    ids, scores = m0.predict_one(np.array([1], np.int32), np.ones(1, np.float32))
    assert len(ids) == 0 and len(scores) == 0
    ids2, _ = m0.predict(sp.csr_matrix((2, 4), dtype=np.float32), topk=3)
    assert ids2.tolist() == [[-1, -1, -1]] * 2


# ---- the packed layout: widths, values, saved spans --------------------------


def _wide_spec(fan: int) -> Spec:
    """root -> 2 nodes -> ``fan`` labels each, random weights (float16-exact values).

    Sigmoid with label biases spread over [-12, 0]: with l3-hinge (or biases near 1.5)
    the top scores of hundreds of labels saturate into near ties, every position is
    in ``near_pos`` and the reference compares no ids."""
    rng = np.random.default_rng(fan)
    cps = [np.array([0, 2], np.int64), np.array([0, fan, 2 * fan], np.int64)]
    layers = random_layers(rng, cps, 30, ties=False)
    layers = [replace(lw, ent_val=lw.ent_val.astype(np.float16).astype(np.float32))
              for lw in layers]
    layers[1] = replace(layers[1], bias=rng.uniform(-12, 0, 2 * fan).astype(np.float32))
    return Spec(cps, rng.permutation(2 * fan).astype(np.int32), layers, 30, "sigmoid")


@pytest.mark.parametrize("fan", [3, 256, 257, 300, 70000])
def test_every_child_width_and_value_width_answers_alike(fan: int) -> None:
    spec = _wide_spec(fan)
    need = np.uint8 if fan <= 256 else np.uint16 if fan <= 65536 else np.uint32
    assert spec.layers[1].ent_child.dtype == need
    rng = np.random.default_rng(0)
    queries = [random_query(rng, spec.n_features, k) for k in (0, 1, 3, 3, 4)]
    want = [spec.model().predict_one(i, v, beam=2, topk=20) for i, v in queries]
    for wide in (np.uint8, np.uint16, np.uint32):
        for values in (np.float16, np.float32):
            if np.iinfo(wide).max + 1 < fan:
                continue
            layers = [replace(lw, ent_child=lw.ent_child.astype(wide),
                              ent_val=lw.ent_val.astype(values)) for lw in spec.layers]
            m = replace(spec, layers=layers).model()
            for (i, v), (wi, ws) in zip(queries, want, strict=True):
                gi, gs = m.predict_one(i, v, beam=2, topk=20)
                np.testing.assert_array_equal(gi, wi)
                np.testing.assert_array_equal(gs, ws)
    ans = reference.beam_search(spec.child_ptr, spec.label_order, spec.layers, spec.post,
                                *queries[3], 2, 20)
    # the ids are compared, not only the scores
    assert not ans.ambiguous and len(ans.near_pos) < len(ans.ids)
    assert_matches(spec, spec.model().predict_one(*queries[3], beam=2, topk=20), ans, 20, 0,
                   2 * fan)


def test_saved_spans_are_read_in_place_and_answer_alike(tmp_path: Any) -> None:
    spec = random_spec(5, 4, 6, 300, "l3-hinge", allow_empty=True)
    m = spec.model()
    spans = m.spans()
    assert spans.dtype == np.int32 and spans.shape == (sum(int(c[-1]) for c in
                                                           spec.child_ptr[:-1]), 4)
    np.save(tmp_path / "spans.npy", spans)
    mapped = np.load(tmp_path / "spans.npy", mmap_mode="r")
    m2 = replace(spec, spans=mapped).model()
    assert m2.nbytes == m.nbytes + spans.nbytes
    rng = np.random.default_rng(2)
    for kind in (0, 1, 3, 4):
        idx, val = random_query(rng, spec.n_features, kind)
        for lo, hi in ((0, m.n_labels), (m.n_labels // 3, m.n_labels // 2)):
            a = m.predict_one(idx, val, beam=3, topk=9, lo=lo, hi=hi)
            b = m2.predict_one(idx, val, beam=3, topk=9, lo=lo, hi=hi)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(InputError, match="spans"):
        replace(spec, spans=spans.astype(np.int64)).model()
    with pytest.raises(InputError, match="spans"):
        replace(spec, spans=spans.ravel()).model()


@pytest.mark.parametrize("post", ["l3-hinge", "sigmoid"])
def test_layer_powers_raise_each_layers_score(post: str) -> None:
    """A node scores t(s) ** power times its parent: the same ids as the reference on
    t ** power, and for a one-layer tree exactly the power-1 scores raised."""
    spec = random_spec(21, 1, 8, 40, post)
    rng = np.random.default_rng(4)
    idx, val = random_query(rng, spec.n_features, 3)
    one = spec.model().predict_one(idx, val, beam=8, topk=8)
    sq = XLinearModel(spec.child_ptr, spec.label_order, spec.layers, spec.n_features, post,
                      powers=[2.0]).predict_one(idx, val, beam=8, topk=8)
    np.testing.assert_array_equal(one[0], sq[0])
    np.testing.assert_allclose(sq[1], one[1].astype(np.float64) ** 2, rtol=1e-5)
    deep = random_spec(22, 3, 5, 200, post)
    m = XLinearModel(deep.child_ptr, deep.label_order, deep.layers, deep.n_features, post,
                     powers=[1.0, 0.5, 3.0])
    for kind in (1, 3, 4):
        idx, val = random_query(rng, deep.n_features, kind)
        got = m.predict_one(idx, val, beam=4, topk=10)
        ans = reference.beam_search(deep.child_ptr, deep.label_order, deep.layers, post, idx,
                                    val, 4, 10, powers=[1.0, 0.5, 3.0])
        assert_matches(deep, got, ans, 10, 0, m.n_labels)
    for bad in ([1.0], [0.0, 1.0, 1.0], [1.0, float("nan"), 1.0], [1.0, -2.0, 1.0]):
        with pytest.raises(InputError, match="powers"):
            XLinearModel(deep.child_ptr, deep.label_order, deep.layers, deep.n_features, post,
                         powers=bad)


def test_long_chunks_searched_through_their_fences_match_the_reference() -> None:
    """Chunks of hundreds of rows (searched through the fences: every 16th row's
    feature), keys below a chunk's first fence, between fences and past the last."""
    rng = np.random.default_rng(8)
    cps = [np.array([0, 3], np.int64), np.array([0, 4, 9, 12], np.int64)]
    n_features = 3000
    layers = []
    for cp in cps:
        chunk_ptr, row_ptr, row_feat, ent_node, ent_val = [0], [0], [], [], []
        for p in range(cp.shape[0] - 1):
            n_rows = int(rng.integers(64, 900)) if p != 1 else 64
            feats = np.sort(rng.choice(n_features, size=n_rows, replace=False))
            for f in feats:
                row_feat.append(int(f))
                k = int(rng.integers(1, int(cp[p + 1] - cp[p]) + 1))
                ent_node.extend(rng.choice(np.arange(cp[p], cp[p + 1]), k, replace=False).tolist())
                ent_val.extend(rng.uniform(-1, 1, k).tolist())
                row_ptr.append(len(ent_node))
            chunk_ptr.append(len(row_feat))
        layers.append(reference.pack(cp, np.array(chunk_ptr), np.array(row_feat),
                                     np.array(row_ptr), np.array(ent_node), np.array(ent_val),
                                     rng.uniform(-0.5, 1, int(cp[-1]))))
    spec = Spec(cps, rng.permutation(12).astype(np.int32), layers, n_features, "l3-hinge")
    m = spec.model()
    assert all(int(np.diff(lw.chunk_ptr).max()) >= 64 for lw in layers)
    for size in (1, 3, 40, 300, 2000):
        for _ in range(5):
            idx = np.sort(rng.choice(n_features, size=size, replace=False)).astype(np.int32)
            if size == 1:
                row = int(layers[1].chunk_ptr[1]) + 17  # between two fences of chunk 1
                idx = np.array([int(layers[1].row_feat[row])], np.int32)
            val = rng.uniform(0.1, 1, size)
            val = (val / np.linalg.norm(val)).astype(np.float32)  # as features are
            got = m.predict_one(idx, val, beam=3, topk=12)
            ans = reference.beam_search(cps, spec.label_order, layers, spec.post, idx, val, 3, 12)
            assert_matches(spec, got, ans, 12, 0, 12)

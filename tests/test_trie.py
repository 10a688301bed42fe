"""Trie and trie/k-means hybrid indexers (qac.index.trie)."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from qac import _kernel
from qac.errors import InputError
from qac.index import LabelTree, binary_depth, build_kmeans_tree
from qac.index.kmeans import _layer_depths
from qac.index.trie import build_hybrid_tree, build_trie_tree

# Short strings over a tiny alphabet: many shared prefixes, labels shorter than
# the trie depth (unary chains), the empty label, and a non-ASCII character.
label_sets = st.lists(
    st.text(alphabet="ab\u00e9", max_size=5), min_size=1, max_size=60, unique=True
).map(sorted)


def random_emb(n: int, d: int = 30, density: float = 0.2, seed: int = 0) -> sp.csr_matrix:
    return sp.random(n, d, density=density, format="csr", random_state=seed, dtype=np.float32)


def word_labels(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefgh"))
    out: set[str] = set()
    while len(out) < n:
        k = int(rng.integers(1, 8))
        out.add("".join(rng.choice(letters[: int(rng.integers(2, 9))], size=k)))
    return sorted(out)


def reference_trie(labels: list[str], depth: int) -> LabelTree:
    """The trie built the slow way: sorted distinct keys per layer, as a cluster chain."""
    chain = []
    prev = {"": 0}
    for t in range(1, depth + 1):
        keys = sorted({s[:t] for s in labels})
        idx = {k: i for i, k in enumerate(keys)}
        rows = np.arange(len(keys))
        cols = np.array([prev[k[: t - 1]] for k in keys])
        chain.append(
            sp.csc_matrix((np.ones(len(keys)), (rows, cols)), shape=(len(keys), len(prev)))
        )
        prev = idx
    cols = np.array([prev[s[:depth]] for s in labels])
    n = len(labels)
    chain.append(sp.csc_matrix((np.ones(n), (np.arange(n), cols)), shape=(n, len(prev))))
    return LabelTree.from_cluster_chain(chain)


def node_ranges(tree: LabelTree, layer: int) -> np.ndarray:
    """int64 [n_layer + 1]: last-layer position range of each node of ``layer``."""
    anc = tree.ancestors(layer)
    n = tree.layer_sizes[layer - 1] if layer else 1
    return np.concatenate([[0], np.cumsum(np.bincount(anc, minlength=n))])


def check_trie_layers(tree: LabelTree, labels: list[str], depth: int) -> None:
    """Every trie node covers the contiguous id range of the labels with its key, in order."""
    order = tree.label_order
    for t in range(1, depth + 1):
        ranges = node_ranges(tree, t)
        anc = tree.ancestors(t)
        assert np.all(np.diff(anc) >= 0)  # nodes are contiguous runs of positions
        keys = []
        for v in range(ranges.shape[0] - 1):
            lo, hi = int(ranges[v]), int(ranges[v + 1])
            assert hi > lo
            # position range == sorted label-id range
            assert np.array_equal(np.sort(order[lo:hi]), np.arange(lo, hi))
            key = labels[lo][:t]
            keys.append(key)
            expect = [i for i, s in enumerate(labels) if s[:t] == key]
            assert expect == list(range(lo, hi))
            if len(key) == t:  # a proper trie node: exactly the labels starting with it
                assert lo == bisect.bisect_left(labels, key)
                assert [i for i, s in enumerate(labels) if s.startswith(key)] == expect
            else:  # a short label continuing as a unary chain
                assert hi - lo == 1 and labels[lo] == key
        assert keys == sorted(set(keys)) and len(keys) == len({s[:t] for s in labels})


def expected_leaf_sizes(n: int, t: int) -> list[int]:
    sizes = [n]
    for _ in range(t):
        sizes = [h for s in sizes for h in ((s + 1) // 2, s // 2)]
    return sizes


def check_hybrid(tree: LabelTree, labels: list[str], trie_depth: int, b: int, m: int) -> None:
    check_trie_layers(tree, labels, trie_depth)
    node = node_ranges(tree, trie_depth)
    n_nodes = node.shape[0] - 1
    ts = [binary_depth(int(node[i + 1] - node[i]), m) for i in range(n_nodes)]
    depths = [_layer_depths(t, b.bit_length() - 1) for t in ts]
    k_max = max(len(d) for d in depths)
    assert tree.depth == trie_depth + k_max + 1  # uniform depth
    trie_anc = tree.ancestors(trie_depth)
    for k in range(k_max):
        layer = trie_depth + 1 + k
        per_node = np.bincount(
            trie_anc[np.unique(tree.ancestors(layer), return_index=True)[1]], minlength=n_nodes
        )
        for i in range(n_nodes):  # padding at the top, then the k-means layers
            d = [0] * (k_max - len(depths[i])) + depths[i]
            assert per_node[i] == 1 << d[k]
    leaf = tree.child_ptr[-1]
    leaf_anc = tree.ancestors(tree.depth - 1)
    for i in range(n_nodes):
        lo, hi = int(node[i]), int(node[i + 1])
        clusters = np.unique(leaf_anc[lo:hi])
        sizes = np.diff(leaf)[clusters]
        assert sorted(sizes.tolist()) == sorted(expected_leaf_sizes(hi - lo, ts[i]))
        if m >= 2:
            assert sizes.max() <= m
        if hi - lo <= m:
            assert clusters.shape[0] == 1


# --- trie ---


def test_trie_small_example() -> None:
    labels = sorted(["", "a", "ab", "abc", "abd", "b", "ba", "bab", "c"])
    tree = build_trie_tree(labels, depth=3)
    assert tree.layer_sizes == (4, 6, 9, 9)  # '' a b c | '' a ab b ba c | ... labels
    assert [p.tolist() for p in tree.child_ptr[:3]] == [
        [0, 4],
        [0, 1, 3, 5, 6],
        [0, 1, 2, 5, 6, 8, 9],
    ]
    assert np.array_equal(tree.label_order, np.arange(9))
    check_trie_layers(tree, labels, 3)


@settings(max_examples=150, deadline=None)
@given(labels=label_sets, depth=st.integers(0, 6))
def test_trie_matches_reference_and_invariants(labels: list[str], depth: int) -> None:
    tree = build_trie_tree(labels, depth=depth)
    assert tree == reference_trie(labels, depth)
    assert tree.depth == depth + 1
    assert np.array_equal(tree.label_order, np.arange(len(labels)))
    check_trie_layers(tree, labels, depth)
    tree.validate()


def test_trie_depth_zero_is_flat() -> None:
    tree = build_trie_tree(["x", "y"], depth=0)
    assert tree.layer_sizes == (2,)


def test_trie_accepts_any_sequence() -> None:
    labels = ("ab", "ac", "b")
    assert build_trie_tree(labels, 2) == build_trie_tree(list(labels), np.int64(2))
    assert build_trie_tree(np.array(labels), 2) == build_trie_tree(list(labels), 2)


# --- hybrid ---


@settings(max_examples=60, deadline=None)
@given(
    labels=label_sets,
    trie_depth=st.integers(0, 4),
    b=st.sampled_from([2, 4, 8]),
    m=st.integers(1, 6),
    seed=st.integers(0, 3),
)
def test_hybrid_invariants(labels: list[str], trie_depth: int, b: int, m: int, seed: int) -> None:
    emb = random_emb(len(labels), seed=seed)
    tree = build_hybrid_tree(
        labels, emb, trie_depth=trie_depth, branching=b, max_leaf_size=m, seed=seed
    )
    tree.validate()
    check_hybrid(tree, labels, trie_depth, b, m)


@pytest.mark.parametrize("trie_depth", [1, 2, 3])
def test_hybrid_invariants_larger(trie_depth: int) -> None:
    labels = word_labels(3000)
    emb = random_emb(len(labels), d=200, density=0.03)
    tree = build_hybrid_tree(labels, emb, trie_depth=trie_depth, branching=4, max_leaf_size=20)
    check_hybrid(tree, labels, trie_depth, 4, 20)


@pytest.mark.parametrize(
    ("n", "b", "m", "seed"),
    [(1, 16, 100, 0), (50, 16, 100, 0), (1000, 16, 7, 3), (777, 4, 5, 1), (300, 2, 1, 2)],
)
def test_hybrid_trie_depth_zero_is_kmeans_tree(n: int, b: int, m: int, seed: int) -> None:
    labels = [f"{i:05d}" for i in range(n)]
    emb = random_emb(n, d=40, density=0.15, seed=seed)
    tree = build_hybrid_tree(labels, emb, trie_depth=0, branching=b, max_leaf_size=m, seed=seed)
    assert tree == build_kmeans_tree(emb, branching=b, max_leaf_size=m, seed=seed)


def test_hybrid_deterministic_and_thread_independent() -> None:
    labels = word_labels(1500, seed=1)
    emb = random_emb(len(labels), d=100, density=0.05, seed=1)
    trees = [
        build_hybrid_tree(
            labels, emb, trie_depth=1, branching=4, max_leaf_size=10, seed=5, threads=th
        )
        for th in (1, 2, 3, 0, -1)
    ]
    assert all(t == trees[0] for t in trees[1:])
    other = build_hybrid_tree(labels, emb, trie_depth=1, branching=4, max_leaf_size=10, seed=6)
    assert other != trees[0]  # the seed matters
    # the shape is seed-independent, only the label order changes
    assert all(
        np.array_equal(a, c) for a, c in zip(other.child_ptr, trees[0].child_ptr, strict=True)
    )


def test_hybrid_one_kernel_call_per_binary_level(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = word_labels(2000, seed=2)
    emb = random_emb(len(labels), d=100, density=0.05, seed=2)
    calls = []
    real = _kernel.split_clusters

    def counting(*args: object) -> None:
        calls.append(args[5].shape[0] - 1)  # type: ignore[attr-defined]
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_kernel, "split_clusters", counting)
    tree = build_hybrid_tree(labels, emb, trie_depth=2, branching=4, max_leaf_size=5)
    node = node_ranges(tree, 2)
    ts = [binary_depth(int(n), 5) for n in np.diff(node)]
    assert len(calls) == max(ts)
    # level l splits every cluster of every node with t_i > l
    assert calls == [sum(1 << lv for t in ts if t > lv) for lv in range(max(ts))]


def test_hybrid_kmeans_separates_obvious_groups() -> None:
    # One trie node ("x..."), labels alternating between two disjoint feature sets.
    n = 64
    labels = [f"x{i:03d}" for i in range(n)]
    i = np.arange(n)
    rows = np.repeat(i, 2)
    cols = np.stack([i % 2, 2 + i % 7], axis=1).ravel()  # group feature + a shared one
    vals = np.tile(np.array([1.0, 0.5], dtype=np.float32), n)
    emb = sp.csr_matrix((vals, (rows, cols)), shape=(n, 9))
    tree = build_hybrid_tree(labels, emb, trie_depth=1, branching=2, max_leaf_size=32)
    assert tree.layer_sizes == (1, 2, n)
    first, second = tree.label_order[:32], tree.label_order[32:]
    assert len({int(i) % 2 for i in first}) == 1 and len({int(i) % 2 for i in second}) == 1


def test_hybrid_small_trie_node_is_one_leaf_padded_on_top() -> None:
    labels = ["a"] + [f"b{i:03d}" for i in range(40)]
    emb = random_emb(len(labels), seed=4)
    tree = build_hybrid_tree(labels, emb, trie_depth=1, branching=2, max_leaf_size=10)
    # node 'a': 1 label, unary chain of 2 cluster layers; node 'b': 40 -> 2 binary levels
    assert tree.layer_sizes == (2, 1 + 2, 1 + 4, 41)
    assert tree.child_ptr[1].tolist() == [0, 1, 3]
    assert tree.child_ptr[2].tolist() == [0, 1, 3, 5]
    assert tree.child_ptr[3].tolist() == [0, 1, 11, 21, 31, 41]


# --- validation ---


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["a", "c", "b"], r"labels\[2\] = 'b' is not after labels\[1\]"),
        (["a", "b", "b"], r"labels\[2\] = 'b' is a duplicate of labels\[1\]"),
        (["a", 3], r"labels\[1\] is int"),
        ([], "no labels"),
        ("abc", "sequence of str"),
    ],
)
def test_bad_labels(labels: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_trie_tree(labels)  # type: ignore[arg-type]
    emb = random_emb(max(len(labels), 1))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=match):
        build_hybrid_tree(labels, emb)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"trie_depth": -1}, "trie_depth must be >= 0"),
        ({"trie_depth": True}, "trie_depth must be an integer"),
        ({"branching": 3}, "branching must be a power of 2"),
        ({"branching": 1}, "branching must be a power of 2"),
        ({"max_leaf_size": 0}, "max_leaf_size must be >= 1"),
        ({"max_iter": -1}, "max_iter must be >= 0"),
        ({"seed": -1}, "seed must be a non-negative"),
        ({"threads": 1.5}, "threads must be an integer"),
    ],
)
def test_hybrid_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match="build_hybrid_tree: " + match):
        build_hybrid_tree(["a", "b"], random_emb(2), **kwargs)  # type: ignore[arg-type]


def test_bad_depth() -> None:
    with pytest.raises(InputError, match="build_trie_tree: depth must be >= 0"):
        build_trie_tree(["a"], depth=-1)
    with pytest.raises(InputError, match="depth must be an integer"):
        build_trie_tree(["a"], depth=2.0)  # type: ignore[arg-type]


def test_hybrid_bad_emb() -> None:
    with pytest.raises(InputError, match="emb has 3 rows but there are 2 labels"):
        build_hybrid_tree(["a", "b"], random_emb(3))
    with pytest.raises(InputError, match="must be a scipy sparse matrix"):
        build_hybrid_tree(["a", "b"], np.ones((2, 3)))  # type: ignore[arg-type]
    bad = sp.csr_matrix(np.array([[np.nan, 1.0], [0.0, 1.0]], dtype=np.float32))
    with pytest.raises(InputError, match="non-finite"):
        build_hybrid_tree(["a", "b"], bad)

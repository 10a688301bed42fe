"""Label tree, PIFA and the k-means indexer (qac.index) with its C split kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from qac import _kernel
from qac.errors import InputError, KernelError
from qac.index import LabelTree, binary_depth, build_kmeans_tree, pifa

M64 = (1 << 64) - 1


def random_emb(n: int, d: int, density: float = 0.1, seed: int = 0) -> sp.csr_matrix:
    m = sp.random(n, d, density=density, format="csr", random_state=seed, dtype=np.float32)
    return m


def expected_layers(n: int, b: int, m: int) -> list[int]:
    t = 0 if n <= m else math.ceil(math.log2(n / m))
    t = min(t, int(math.floor(math.log2(n))))
    lb = int(math.log2(b))
    if t == 0:
        return [1, n]
    r = t % lb or lb
    return [2**j for j in range(r, t + 1, lb)] + [n]


def leaf_sizes(tree: LabelTree) -> np.ndarray:
    return np.diff(tree.child_ptr[-1])


# --- numpy reference of one C split level (same generator, same arithmetic) ---


def _splitmix(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def _reference_split_one(rows: list[sp.csr_matrix], c: int, seed: int, max_iter: int) -> np.ndarray:
    """Side (0 = first half) of each member of cluster c."""
    n = len(rows)
    feats: dict[int, int] = {}
    for row in rows:
        for f in row.indices:
            feats.setdefault(int(f), len(feats))
    loc = [np.array([feats[int(f)] for f in row.indices], dtype=np.int64) for row in rows]
    dat = [row.data.astype(np.float32) for row in rows]
    dl = len(feats)

    def diff_of(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
        na = nb = 0.0
        for f in range(dl):  # same summation order as C
            na += ca[f] * ca[f]
            nb += cb[f] * cb[f]
        ia = 1.0 / math.sqrt(na) if na > 0 else 0.0
        ib = 1.0 / math.sqrt(nb) if nb > 0 else 0.0
        return (ca * ia - cb * ib).astype(np.float32)

    def assign(diff: np.ndarray) -> np.ndarray:
        scores = []
        for i in range(n):
            s = np.float32(0.0)
            for k in range(loc[i].shape[0]):
                s = np.float32(s + np.float32(dat[i][k] * diff[loc[i][k]]))
            scores.append((-float(s), i))
        side = np.ones(n, dtype=np.uint8)
        for _, i in sorted(scores)[: (n + 1) // 2]:
            side[i] = 0
        return side

    def accumulate(members: list[int]) -> np.ndarray:
        cen = np.zeros(dl, dtype=np.float64)
        for i in members:
            for k in range(loc[i].shape[0]):
                cen[loc[i][k]] += float(dat[i][k])
        return cen

    state = seed ^ ((0xD1B54A32D192ED03 * (c + 1)) & M64)
    state, _ = _splitmix(state)
    state, z = _splitmix(state)
    p = z % n
    state, z = _splitmix(state)
    q = z % (n - 1)
    q += q >= p
    side = assign(diff_of(accumulate([p]), accumulate([q])))
    tot = accumulate(list(range(n)))
    ca = np.zeros(dl, dtype=np.float64)
    prev = side
    for it in range(max_iter):
        for i in range(n):
            if it == 0 and side[i] == 0 or it > 0 and side[i] != prev[i]:
                sign = 1.0 if side[i] == 0 else -1.0
                for k in range(loc[i].shape[0]):
                    ca[loc[i][k]] += sign * float(dat[i][k])
        prev = side
        side = assign(diff_of(ca, tot - ca))
        if np.array_equal(prev, side):
            break
    return side


def reference_split(
    emb: sp.csr_matrix, order: np.ndarray, ptr: np.ndarray, seed: int, max_iter: int
) -> np.ndarray:
    out = order.copy()
    for c in range(ptr.shape[0] - 1):
        mem = order[ptr[c] : ptr[c + 1]]
        if mem.shape[0] < 2:
            continue
        side = _reference_split_one([emb[int(r)] for r in mem], c, seed, max_iter)
        out[ptr[c] : ptr[c + 1]] = np.concatenate([mem[side == 0], mem[side == 1]])
    return out


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 30),
    d=st.integers(1, 12),
    density=st.floats(0.0, 1.0),
    n_clusters=st.integers(1, 4),
    seed=st.integers(0, M64),
    max_iter=st.integers(0, 5),
    data_seed=st.integers(0, 1000),
)
def test_split_matches_numpy_reference(
    n: int, d: int, density: float, n_clusters: int, seed: int, max_iter: int, data_seed: int
) -> None:
    emb = random_emb(n, d, density, data_seed)
    rng = np.random.default_rng(data_seed)
    order = rng.permutation(n).astype(np.int32)
    cuts = np.sort(rng.integers(0, n + 1, size=n_clusters - 1))
    ptr = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    want = reference_split(emb, order, ptr, seed, max_iter)
    got = order.copy()
    _kernel.split_clusters(emb.indptr, emb.indices, emb.data, d, got, ptr, seed, max_iter, 2)
    np.testing.assert_array_equal(got, want)


def test_split_rejects_corrupt_arrays() -> None:
    emb = random_emb(10, 5, 0.5)
    ip, ix, dt = emb.indptr.astype(np.int64), emb.indices, emb.data
    ok_ptr = np.array([0, 10], dtype=np.int64)
    bad_order = np.arange(10, dtype=np.int32)
    bad_order[3] = 10
    with pytest.raises(KernelError):  # label id out of range
        _kernel.split_clusters(ip, ix, dt, 5, bad_order, ok_ptr, 0, 5, 2)
    with pytest.raises(KernelError):  # feature id >= n_cols
        _kernel.split_clusters(ip, ix, dt, 2, np.arange(10, dtype=np.int32), ok_ptr, 0, 5, 2)
    with pytest.raises(KernelError):  # cluster_ptr does not cover order
        _kernel.split_clusters(
            ip, ix, dt, 5, np.arange(10, dtype=np.int32), np.array([0, 9]), 0, 5, 2
        )
    with pytest.raises(KernelError):  # decreasing cluster_ptr
        _kernel.split_clusters(
            ip, ix, dt, 5, np.arange(10, dtype=np.int32), np.array([0, 6, 4, 10]), 0, 5, 2
        )
    bad_ip = ip.copy()
    bad_ip[4] = bad_ip[6] + 1
    with pytest.raises((KernelError, InputError)):  # non-monotone indptr
        _kernel.split_clusters(bad_ip, ix, dt, 5, np.arange(10, dtype=np.int32), ok_ptr, 0, 5, 2)
    with pytest.raises(InputError):  # order must be writeable int32
        _kernel.split_clusters(ip, ix, dt, 5, np.arange(10, dtype=np.int64), ok_ptr, 0, 5, 2)


# --- the k-means tree ---


@pytest.mark.parametrize(
    ("n", "b", "m"),
    [
        (1, 16, 100),
        (1, 2, 1),
        (5, 16, 10),
        (100, 16, 100),
        (101, 16, 100),
        (1000, 4, 10),
        (37, 2, 3),
        (777, 8, 7),
        (300, 16, 2),
        (64, 8, 1),
        (100, 4, 1),
    ],
)
def test_layer_sizes_and_balance(n: int, b: int, m: int) -> None:
    tree = build_kmeans_tree(random_emb(n, 40, 0.1, n), branching=b, max_leaf_size=m)
    tree.validate()
    assert list(tree.layer_sizes) == expected_layers(n, b, m)
    assert tree.n_labels == n
    assert sorted(tree.label_order.tolist()) == list(range(n))
    sizes = leaf_sizes(tree)
    t = binary_depth(n, m)
    assert sizes.shape[0] == 2**t
    assert sizes.min() >= 1
    if 2**t * m >= n:
        assert sizes.max() <= m
    else:  # max_leaf_size 1 with L not a power of 2: capped depth
        assert m == 1 and sizes.max() <= 2
    # Every binary split: halves ceil(n/2), floor(n/2).
    for level in range(t):
        block = 2 ** (t - level - 1)
        sums = sizes.reshape(-1, block).sum(axis=1).reshape(-1, 2)
        assert np.all(sums[:, 0] - sums[:, 1] >= 0)
        assert np.all(sums[:, 0] - sums[:, 1] <= 1)


def test_branching_and_options_are_checked() -> None:
    emb = random_emb(20, 5)
    for bad in (0, 1, 3, 12):
        with pytest.raises(InputError):
            build_kmeans_tree(emb, branching=bad)
    with pytest.raises(InputError):
        build_kmeans_tree(emb, max_leaf_size=0)
    with pytest.raises(InputError):
        build_kmeans_tree(random_emb(0, 5))
    with pytest.raises(InputError):
        build_kmeans_tree(emb.toarray())
    nan = emb.copy()
    nan.data[0] = np.nan
    with pytest.raises(InputError):
        build_kmeans_tree(nan)


def test_deterministic_and_thread_independent() -> None:
    emb = random_emb(2000, 300, 0.03, 1)
    a = build_kmeans_tree(emb, branching=4, max_leaf_size=20, seed=7, threads=1)
    b = build_kmeans_tree(emb, branching=4, max_leaf_size=20, seed=7, threads=2)
    c = build_kmeans_tree(emb, branching=4, max_leaf_size=20, seed=7, threads=5)
    d = build_kmeans_tree(emb, branching=4, max_leaf_size=20, seed=7, threads=0)
    for other in (b, c, d):
        np.testing.assert_array_equal(a.label_order, other.label_order)
        for p, q in zip(a.child_ptr, other.child_ptr, strict=True):
            np.testing.assert_array_equal(p, q)
    e = build_kmeans_tree(emb, branching=4, max_leaf_size=20, seed=8)
    assert not np.array_equal(a.label_order, e.label_order)


def test_empty_embeddings_are_placed() -> None:
    emb = random_emb(50, 10, 0.1, 3).tolil()
    emb[::3] = 0
    emb = emb.tocsr()
    emb.eliminate_zeros()
    tree = build_kmeans_tree(emb, branching=2, max_leaf_size=4)
    assert sorted(tree.label_order.tolist()) == list(range(50))
    assert leaf_sizes(tree).max() <= 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_separated_groups_share_leaves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_groups, per, feats = 8, 16, 10
    rows = []
    for g in range(n_groups):
        for _ in range(per):
            x = np.zeros(n_groups * feats, dtype=np.float32)
            x[g * feats : (g + 1) * feats] = 1.0 + 0.3 * rng.random(feats)
            rows.append(x)
    perm = rng.permutation(len(rows))
    emb = sp.csr_matrix(np.array(rows)[perm])
    group = (np.arange(len(rows)) // per)[perm]
    tree = build_kmeans_tree(emb, branching=2, max_leaf_size=per, seed=seed)
    assert tree.layer_sizes[-2] == n_groups
    for leaf in range(n_groups):
        labels = tree.label_order[tree.child_ptr[-1][leaf] : tree.child_ptr[-1][leaf + 1]]
        assert len(set(group[labels].tolist())) == 1


# --- LabelTree ---


def partitions(chain: list[sp.spmatrix]) -> list[set[frozenset[int]]]:
    """Per layer, the label sets under its nodes (node numbering does not matter)."""
    up = sp.csr_matrix(chain[-1])
    out = []
    for lay in range(len(chain) - 1, -1, -1):
        node = up.tocsr().indices if up.nnz else np.zeros(0, dtype=np.int64)
        sets: dict[int, set[int]] = {}
        for label, nd in enumerate(node):
            sets.setdefault(int(nd), set()).add(label)
        out.append({frozenset(s) for s in sets.values()})
        if lay > 0:
            up = up @ sp.csr_matrix(chain[lay - 1])
    return out


def hand_chain() -> list[sp.csc_matrix]:
    # 3 top nodes; 5 middle nodes with parents [2, 0, 2, 1, 0]; 7 labels.
    c1 = sp.csc_matrix(np.ones((3, 1), dtype=np.float32))
    mid_parent = [2, 0, 2, 1, 0]
    c2 = sp.csc_matrix((np.ones(5), (np.arange(5), mid_parent)), shape=(5, 3))
    label_parent = [4, 1, 0, 3, 2, 4, 0]
    c3 = sp.csc_matrix((np.ones(7), (np.arange(7), label_parent)), shape=(7, 5))
    return [c1, c2, c3]


def test_from_cluster_chain_noncontiguous_uneven() -> None:
    chain = hand_chain()
    tree = LabelTree.from_cluster_chain(chain)
    assert tree.layer_sizes == (3, 5, 7)
    # top 0 owns middle {1, 4}, top 1 owns {3}, top 2 owns {0, 2} (stable order)
    np.testing.assert_array_equal(tree.child_ptr[0], [0, 3])
    np.testing.assert_array_equal(tree.child_ptr[1], [0, 2, 3, 5])
    # middle in tree order: old 1, 4, 3, 0, 2 -> labels {1}, {0, 5}, {3}, {2, 6}, {4}
    np.testing.assert_array_equal(tree.child_ptr[2], [0, 1, 3, 4, 6, 7])
    np.testing.assert_array_equal(tree.label_order, [1, 0, 5, 3, 2, 6, 4])
    assert partitions(tree.to_cluster_chain()) == partitions(chain)
    np.testing.assert_array_equal(tree.ancestors(1), [0, 0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(tree.ancestors(2), [0, 1, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(tree.ancestors(3), np.arange(7))
    np.testing.assert_array_equal(tree.ancestors(0), np.zeros(7))


def test_cluster_chain_round_trip_of_kmeans_tree() -> None:
    tree = build_kmeans_tree(random_emb(500, 50, 0.1), branching=4, max_leaf_size=8)
    chain = tree.to_cluster_chain()
    n_prev = 1
    for c, n in zip(chain, tree.layer_sizes, strict=True):
        assert isinstance(c, sp.csc_matrix) and c.dtype == np.float32
        assert c.shape == (n, n_prev)
        assert np.all(c.data == 1.0) and np.all(np.diff(sp.csr_matrix(c).indptr) == 1)
        n_prev = n
    # last matrix is indexed by original label id
    leaf_of = sp.csr_matrix(chain[-1]).indices
    np.testing.assert_array_equal(leaf_of[tree.label_order], tree.ancestors(tree.depth - 1))
    back = LabelTree.from_cluster_chain(chain)
    np.testing.assert_array_equal(back.label_order, tree.label_order)
    for p, q in zip(back.child_ptr, tree.child_ptr, strict=True):
        np.testing.assert_array_equal(p, q)
    # shuffled node numbering in every layer still gives an equivalent tree
    rng = np.random.default_rng(0)
    perms = [rng.permutation(n) for n in tree.layer_sizes[:-1]]
    shuffled = []
    for i, c in enumerate(chain):
        c = sp.csr_matrix(c)
        if i < len(perms):
            c = c[np.argsort(perms[i])]
        if i > 0:
            c = c[:, np.argsort(perms[i - 1])]
        shuffled.append(sp.csc_matrix(c))
    again = LabelTree.from_cluster_chain(shuffled)
    assert again.layer_sizes == tree.layer_sizes
    assert partitions(again.to_cluster_chain()) == partitions(chain)


def test_single_matrix_chain() -> None:
    chain = [sp.csc_matrix(np.ones((4, 1), dtype=np.float32))]
    tree = LabelTree.from_cluster_chain(chain)
    assert tree.depth == 1 and tree.layer_sizes == (4,)
    np.testing.assert_array_equal(tree.label_order, np.arange(4))


def test_from_cluster_chain_rejects_bad_chains() -> None:
    c1, c2, c3 = hand_chain()
    with pytest.raises(InputError):
        LabelTree.from_cluster_chain([])
    with pytest.raises(InputError):  # columns do not match the layer above
        LabelTree.from_cluster_chain([c1, c3])
    two = c3.tolil()
    two[0, 2] = 1.0
    with pytest.raises(InputError):  # a node with two parents
        LabelTree.from_cluster_chain([c1, c2, two.tocsc()])
    orphan = c3.tolil()
    orphan[0, 4] = 0.0
    with pytest.raises(InputError):  # a node with no parent
        LabelTree.from_cluster_chain([c1, c2, orphan.tocsc()])
    with pytest.raises(InputError):
        LabelTree.from_cluster_chain([c1, c2, c3.toarray()])


def test_arrays_round_trip() -> None:
    tree = LabelTree.from_cluster_chain(hand_chain())
    arrays = tree.arrays()
    assert sorted(arrays) == ["child_ptr_0", "child_ptr_1", "child_ptr_2", "label_order"]
    back = LabelTree.from_arrays(arrays)
    assert back.layer_sizes == tree.layer_sizes
    np.testing.assert_array_equal(back.label_order, tree.label_order)
    with pytest.raises(InputError):
        LabelTree.from_arrays({k: v for k, v in arrays.items() if k != "label_order"})
    with pytest.raises(InputError):
        LabelTree.from_arrays({**arrays, "child_ptr_7": arrays["child_ptr_0"]})


def _corrupt(tree: LabelTree, layer: int, values: list[int] | np.ndarray) -> LabelTree:
    ptrs = list(tree.child_ptr)
    ptrs[layer] = np.asarray(values, dtype=np.int64)
    return LabelTree(tuple(ptrs), tree.label_order)


def test_validate_rejects_each_corruption() -> None:
    tree = LabelTree.from_cluster_chain(hand_chain())
    tree.validate()
    lo = tree.label_order
    bad = [
        LabelTree((), lo),
        LabelTree(tuple(tree.child_ptr), lo.astype(np.int64)),  # label_order dtype
        LabelTree((tree.child_ptr[0].astype(np.int32),) + tree.child_ptr[1:], lo),
        _corrupt(tree, 0, [0, 2, 3]),  # root with two entries too many
        _corrupt(tree, 0, [1, 3]),  # does not start at 0
        _corrupt(tree, 1, [0, 3, 2, 5]),  # decreasing
        _corrupt(tree, 1, [0, 2, 3, 4]),  # ends before the next layer's size
        _corrupt(tree, 2, [0, 1, 3, 4, 6, 8]),  # ends past the number of labels
        _corrupt(tree, 2, [0, 1, 3, 4, 6]),  # wrong length for the layer above
        LabelTree(tuple(tree.child_ptr), lo[:-1]),  # too few labels
        LabelTree(tuple(tree.child_ptr), np.array([1, 0, 5, 3, 2, 6, 1], dtype=np.int32)),
        LabelTree(tuple(tree.child_ptr), np.array([1, 0, 5, 3, 2, 6, 7], dtype=np.int32)),
        LabelTree(tuple(tree.child_ptr), np.array([1, 0, 5, 3, 2, 6, -4], dtype=np.int32)),
    ]
    for t in bad:
        with pytest.raises(InputError):
            t.validate()
    with pytest.raises(InputError):
        tree.ancestors(4)


# --- PIFA ---


def test_pifa_matches_dense() -> None:
    rng = np.random.default_rng(0)
    xl = random_emb(40, 30, 0.2, 5).tolil()
    xl[3] = 0  # an instance with no features
    X = xl.tocsr()
    yd = (rng.random((40, 12)) < 0.15).astype(np.float32)
    yd[:, 7] = 0  # a label with no instance
    Y = sp.csr_matrix(yd)
    got = pifa(X, Y)
    assert got.shape == (12, 30) and got.dtype == np.float32
    assert got.indices.dtype == np.int32 and got.has_sorted_indices
    xd = X.toarray().astype(np.float64)
    xn = xd / np.maximum(np.linalg.norm(xd, axis=1, keepdims=True), 1e-300)
    e = Y.toarray().T @ xn
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    np.testing.assert_allclose(got.toarray(), e, rtol=1e-5, atol=1e-6)
    assert got[7].nnz == 0
    with pytest.raises(InputError):
        pifa(X, Y[:-1])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    data_seed=st.integers(0, 10_000),
)
def test_from_cluster_chain_any_order(sizes: list[int], data_seed: int) -> None:
    """Random trees in random node order (empty internal nodes allowed)."""
    rng = np.random.default_rng(data_seed)
    chain = []
    n_prev = 1
    for n in sizes:
        parent = rng.integers(0, n_prev, size=n)
        chain.append(
            sp.csc_matrix((np.ones(n, np.float32), (np.arange(n), parent)), shape=(n, n_prev))
        )
        n_prev = n
    tree = LabelTree.from_cluster_chain(chain)
    tree.validate()
    assert tree.layer_sizes == tuple(sizes)
    assert partitions(tree.to_cluster_chain()) == partitions(chain)
    # Siblings keep their relative order: within a last-layer parent, label ids ascend
    # (the chain lists labels by id, and from_cluster_chain sorts stably).
    ptr = tree.child_ptr[-1]
    for p in range(ptr.shape[0] - 1):
        assert np.all(np.diff(tree.label_order[ptr[p] : ptr[p + 1]]) > 0)
    back = LabelTree.from_cluster_chain(tree.to_cluster_chain())
    np.testing.assert_array_equal(back.label_order, tree.label_order)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    tree = build_kmeans_tree(random_emb(64, 10, 0.3), branching=2, max_leaf_size=8, progress=True)
    assert tree.layer_sizes == (2, 4, 8, 64)
    assert "k-means levels" in capsys.readouterr().err


def test_equality() -> None:
    a = LabelTree.from_cluster_chain(hand_chain())
    b = LabelTree.from_arrays({k: v.copy() for k, v in a.arrays().items()})
    assert a == b
    assert a != LabelTree(a.child_ptr, a.label_order[::-1].copy())
    assert a != "tree"


def test_numpy_integer_options() -> None:
    emb = random_emb(40, 10, 0.3)
    a = build_kmeans_tree(emb, branching=np.int64(4), max_leaf_size=np.int32(5))  # type: ignore[arg-type]
    assert a == build_kmeans_tree(emb, branching=4, max_leaf_size=5)
    with pytest.raises(InputError):
        build_kmeans_tree(emb, branching=4.0)  # type: ignore[arg-type]

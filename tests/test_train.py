"""Tests of XR-Linear training: the C solvers against a scipy optimum, the layout,
determinism across thread counts, matcher-aware negatives, and bad input."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from qac import _kernel
from qac.errors import InputError, KernelError
from qac.model import train as train_mod
from qac.model.train import TrainConfig, train_xlinear
from qac.model.weights import LayerWeights
from tests import reference


def _normalize(X: sp.csr_matrix) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    norms[norms == 0] = 1
    X = sp.csr_matrix(sp.diags(1 / norms) @ X, dtype=np.float32)
    X.sort_indices()
    return X


def _random_binary(seed: int, n: int = 60, d: int = 12, density: float = 0.3) -> tuple[
    sp.csr_matrix, np.ndarray
]:
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data = rng.normal(size=X.data.shape[0])
    X = _normalize(X)
    w_true = rng.normal(size=d)
    y = np.where(X @ w_true + 0.3 * rng.normal(size=n) > 0, 1, -1)
    return X, y


def _train_one(X: sp.csr_matrix, y: np.ndarray, **cfg: Any) -> tuple[np.ndarray, float]:
    """Train a one-node tree (node 0 positive where y == 1); return dense (w, bias)."""
    n, d = X.shape
    Y = sp.csr_matrix((np.ones(int((y > 0).sum()), np.float32), (np.nonzero(y > 0)[0],
                       np.zeros(int((y > 0).sum()), np.int64))), shape=(n, 1))
    cfg.setdefault("values", "float32")  # the solver's own weights, not their float16 copy
    (lw,) = train_xlinear(X, Y, [np.array([0, 1])], np.array([0], np.int32), TrainConfig(**cfg))
    w = np.zeros(d)
    row_ptr, nodes = reference.unpack(lw, np.array([0, 1]))
    for r, f in enumerate(lw.row_feat):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            assert nodes[e] == 0 and lw.ent_child[e] == 0
            w[f] += lw.ent_val[e]
    return w, float(lw.bias[0])


def _objective(loss: str, Xb: np.ndarray, y: np.ndarray, C: np.ndarray):  # type: ignore[no-untyped-def]
    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        m = y * (Xb @ w)
        if loss == "l2svm":
            h = np.maximum(0, 1 - m)
            return 0.5 * w @ w + C @ h**2, w - Xb.T @ (2 * C * h * y)
        s = np.logaddexp(0, -m)
        return 0.5 * w @ w + C @ s, w - Xb.T @ (C * y / (1 + np.exp(m)))

    return f


@pytest.mark.parametrize("solver", ["l2svm", "logreg"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("Cp", "Cn", "bias"), [(1.0, 1.0, 1.0), (4.0, 0.5, 1.0), (0.5, 2.0, 2.0)])
def test_solver_reaches_the_optimum(solver: str, seed: int, Cp: float, Cn: float,
                                    bias: float) -> None:
    X, y = _random_binary(seed)
    w, b = _train_one(X, y, solver=solver, Cp=Cp, Cn=Cn, bias=bias, threshold=0.0,
                      eps=1e-5, max_iter=5000)
    Xb = np.hstack([X.toarray().astype(np.float64), np.full((X.shape[0], 1), bias)])
    C = np.where(y > 0, Cp, Cn)
    f = _objective(solver, Xb, y, C)
    opt = minimize(f, np.zeros(Xb.shape[1]), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 10000})
    ours = f(np.append(w, b / bias))[0]
    assert ours <= opt.fun * 1.01 + 1e-9, (ours, opt.fun)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 25), d=st.integers(1, 8), density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31), solver=st.sampled_from(["l2svm", "logreg"]),
    Cp=st.floats(0.1, 10.0), Cn=st.floats(0.1, 10.0), bias=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
)
def test_solver_matches_scipy_on_random_problems(n: int, d: int, density: float, seed: int,
                                                 solver: str, Cp: float, Cn: float,
                                                 bias: float) -> None:
    """Tiny, degenerate problems too: one instance, one feature, empty rows, one class only."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data = rng.normal(size=X.data.shape[0])
    X = _normalize(X)
    y = np.where(rng.random(n) < 0.4, 1, -1)
    w, b = _train_one(X, y, solver=solver, Cp=Cp, Cn=Cn, bias=bias, threshold=0.0,
                      eps=1e-6, max_iter=20000)
    Xb = np.hstack([X.toarray().astype(np.float64), np.full((n, 1), bias)])
    f = _objective(solver, Xb, y, np.where(y > 0, Cp, Cn))
    opt = minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000})
    wb = np.append(w, b / bias if bias else 0.0)
    assert f(wb)[0] <= opt.fun * 1.01 + 1e-6


def test_cp_cn_shift_scores() -> None:
    X, y = _random_binary(7, n=200)
    Xd = X.toarray()
    w1, b1 = _train_one(X, y, Cp=1.0, Cn=1.0, threshold=0.0)
    w2, b2 = _train_one(X, y, Cp=10.0, Cn=0.1, threshold=0.0)
    s1, s2 = Xd @ w1 + b1, Xd @ w2 + b2
    assert (s2 > 0).sum() > (s1 > 0).sum()
    assert s2.mean() > s1.mean()


def test_pruning_drops_exactly_small_weights() -> None:
    X, y = _random_binary(3, n=300, d=40)
    w0, b0 = _train_one(X, y, threshold=0.0)
    for t in (0.05, 0.2, 0.5):
        wt, bt = _train_one(X, y, threshold=t)
        keep = np.abs(w0.astype(np.float32)) >= t
        assert np.array_equal(wt != 0, keep & (w0 != 0))
        assert np.array_equal(wt[keep], w0[keep])
        assert bt == b0  # the bias is never pruned


# ---------- end to end ----------

def _synthetic(n: int = 1500, L: int = 64, d: int = 600, seed: int = 0) -> tuple[
    sp.csr_matrix, sp.csr_matrix, np.ndarray
]:
    """Each label owns 5 features; an instance has 3 of its label's and 2 noise features."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, L, n)
    own = lab[:, None] * 5 + rng.integers(0, 5, (n, 3))
    noise = rng.integers(5 * L, d, (n, 2))
    cols = np.hstack([own, noise]).ravel()
    rows = np.repeat(np.arange(n), 5)
    X = _normalize(sp.csr_matrix((np.ones(cols.shape[0]), (rows, cols)), shape=(n, d)))
    Y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), lab)), shape=(n, L))
    return X, Y, lab


def _tree(L: int, B: int) -> list[np.ndarray]:
    """A balanced tree over contiguous label blocks: B children per node."""
    sizes = [L]
    while sizes[-1] > B:
        sizes.append(-(-sizes[-1] // B))
    sizes = sizes[::-1]  # n_1 .. n_D
    cps = [np.array([0, sizes[0]], np.int64)]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        cps.append(np.minimum(np.arange(a + 1, dtype=np.int64) * B, b))
        assert cps[-1][-1] == b
    return cps


def _check_layout(layers: list[LayerWeights], cps: list[np.ndarray], d: int) -> None:
    for lw, cp in zip(layers, cps, strict=True):
        assert lw.n_parents == cp.shape[0] - 1 and lw.n_nodes == cp[-1]
        assert lw.chunk_ptr[0] == 0 and lw.chunk_ptr[-1] == lw.row_feat.shape[0]
        assert lw.chunk_ent[0] == 0 and lw.chunk_ent[-1] == lw.nnz
        assert lw.ent_child.dtype == np.uint8 and lw.ent_val.dtype == np.float16
        row_ptr, all_nodes = reference.unpack(lw, cp)
        assert row_ptr[0] == 0 and row_ptr[-1] == lw.nnz
        assert np.all(np.diff(row_ptr) > 0)
        for p in range(lw.n_parents):
            r0, r1 = lw.chunk_ptr[p], lw.chunk_ptr[p + 1]
            feats = lw.row_feat[r0:r1]
            assert np.all(np.diff(feats) > 0) and np.all((feats >= 0) & (feats < d))
            if r1 > r0:  # row ends are relative: the last one is the chunk's size
                assert lw.row_end[r1 - 1] == lw.chunk_ent[p + 1] - lw.chunk_ent[p]
            for r in range(r0, r1):
                nodes = all_nodes[row_ptr[r]:row_ptr[r + 1]]
                assert np.all(np.diff(nodes) > 0)
                assert np.all((nodes >= cp[p]) & (nodes < cp[p + 1]))


def _dense_scores(X: sp.csr_matrix, layers: list[LayerWeights],
                  cps: list[np.ndarray]) -> np.ndarray:
    """Exhaustive l3-hinge path scores of every last-layer node (numpy reference scorer)."""
    comb = np.ones((X.shape[0], 1))
    for lw, cp in zip(layers, cps, strict=True):
        W = np.zeros((X.shape[1], lw.n_nodes))
        row_ptr, nodes = reference.unpack(lw, cp)
        rows = np.repeat(lw.row_feat, np.diff(row_ptr))
        np.add.at(W, (rows, nodes), lw.ent_val.astype(np.float64))
        s = X @ W + lw.bias
        t = np.exp(-np.maximum(0, 1 - s) ** 3)
        parent = np.repeat(np.arange(cp.shape[0] - 1), np.diff(cp))
        comb = comb[:, parent] * t
    return comb


@pytest.mark.parametrize("solver", ["l2svm", "logreg"])
def test_end_to_end_ranks_own_label_first(solver: str) -> None:
    X, Y, lab = _synthetic()
    L = Y.shape[1]
    cps = _tree(L, 4)
    order = np.random.default_rng(1).permutation(L).astype(np.int32)  # tree pos j = label order[j]
    layers = train_xlinear(X, Y, cps, order, TrainConfig(solver=solver))
    _check_layout(layers, cps, X.shape[1])
    top = order[np.argmax(_dense_scores(X, layers, cps), axis=1)]
    assert (top == lab).mean() > 0.9


def test_progress_inside_a_layer_counts_every_unit(capsys: pytest.CaptureFixture[str]) -> None:
    """The C trainer's units (parents built, nodes solved, parents assembled) reach the
    caller while it runs, and add up to 2 x parents + nodes; train_xlinear shows them
    as a bar inside each layer."""
    X, Y, _ = _synthetic(n=400, L=20)
    cps = _tree(20, 3)
    layers = train_xlinear(X, Y, cps, np.arange(20, dtype=np.int32), progress=True)
    err = capsys.readouterr().err
    assert "layer 3/3" in err and "train layers" in err
    seen: list[tuple[int, int]] = []
    ref = train_xlinear(X, Y, cps, np.arange(20, dtype=np.int32))
    # the same layer trained through the wrapper with a counter: the same weights
    import qac.model.train as tm

    real = tm._kernel.train_layer

    def spy(*args: Any, **kw: Any) -> Any:
        kw["on_progress"] = lambda done, total: seen.append((done, total))
        return real(*args, **kw)

    tm._kernel.train_layer = spy  # type: ignore[assignment]
    try:
        again = train_xlinear(X, Y, cps, np.arange(20, dtype=np.int32))
    finally:
        tm._kernel.train_layer = real  # type: ignore[assignment]
    for a, b in zip(again, ref, strict=True):
        assert np.array_equal(a.ent_val, b.ent_val)
    ends = [t for t in seen if t[0] == t[1]]
    parents = [len(c) - 1 for c in cps]
    nodes = [int(c[-1]) for c in cps]
    assert sorted(t for _, t in ends) == sorted(2 * p + n for p, n in zip(parents, nodes,
                                                                           strict=True))
    assert all(0 <= d <= t for d, t in seen)
    assert layers


def test_multilabel_and_unlabeled_instances() -> None:
    X, Y, _ = _synthetic(n=400, L=20)
    Y = sp.lil_matrix(Y)
    Y[0, 19] = 1
    Y[1, :] = 0
    Y = sp.csr_matrix(Y)
    Y.eliminate_zeros()
    cps = _tree(20, 3)
    lo = np.arange(20, dtype=np.int32)
    layers = train_xlinear(X, Y, cps, lo)
    _check_layout(layers, cps, X.shape[1])
    scores = _dense_scores(X, layers, cps)
    # the second positive is learned: label 19 joins instance 0's own label in its top 2,
    # far above its score when Y[0, 19] is left out (~0.25 against ~2e-4)
    assert 19 in np.argsort(-scores[0], kind="stable")[:2]
    single = sp.lil_matrix(Y)
    single[0, 19] = 0
    single = sp.csr_matrix(single)
    single.eliminate_zeros()
    assert scores[0, 19] > 10 * _dense_scores(X, train_xlinear(X, single, cps, lo), cps)[0, 19]
    # the unlabeled row is a negative of every layer-1 node, not dropped: it scores far
    # below its scores from a model that never saw it (~0.28 against ~0.99)
    keep = np.arange(X.shape[0]) != 1
    unseen = _dense_scores(X, train_xlinear(X[keep], Y[keep], cps, lo), cps)
    assert scores[1].max() < 0.75 * unseen[1].max()


def test_unsorted_and_duplicate_feature_ids_are_accepted() -> None:
    X, Y, lab = _synthetic(n=300, L=16)
    rows = np.repeat(np.arange(300), np.diff(X.indptr))
    # shuffle ids within each row, and split row 0's first entry into two duplicates
    order = np.lexsort((np.random.default_rng(0).random(X.nnz), rows))
    idx = np.insert(X.indices[order], 0, X.indices[order][0])
    val = np.insert(X.data[order], 0, 0.0).astype(np.float32)
    ptr = X.indptr.copy()
    ptr[1:] += 1
    Xu = sp.csr_matrix((val, idx, ptr), shape=X.shape)
    assert not Xu.has_canonical_format
    cps = _tree(16, 4)
    layers = train_xlinear(Xu, Y, cps, np.arange(16, dtype=np.int32))
    _check_layout(layers, cps, X.shape[1])
    assert (np.argmax(_dense_scores(X, layers, cps), axis=1) == lab).mean() > 0.9


def test_deterministic_across_threads_and_runs() -> None:
    X, Y, _ = _synthetic(n=800, L=48)
    cps = _tree(48, 4)
    lo = np.arange(48, dtype=np.int32)
    runs = [train_xlinear(X, Y, cps, lo, TrainConfig(threads=t)) for t in (1, 2, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            for k, v in a.arrays().items():
                assert np.array_equal(v, b.arrays()[k]), k
    # a different seed permutes coordinates differently (eps=0.1 leaves room to differ)
    alt = train_xlinear(X, Y, cps, lo, TrainConfig(seed=5))
    assert any(not np.array_equal(a.ent_val, b.ent_val) for a, b in zip(runs[0], alt, strict=True))


def test_progress_bar_and_logging(caplog: pytest.LogCaptureFixture) -> None:
    X, Y, _ = _synthetic(n=200, L=16)
    with caplog.at_level("INFO", logger="qac.model.train"):
        train_xlinear(X, Y, _tree(16, 4), np.arange(16, dtype=np.int32), progress=True)
    assert "layer 2/2" in caplog.text


# ---------- matcher-aware negatives ----------

def test_man_routes_the_union_of_teacher_and_beam(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stub matcher that puts every instance on layer-1 nodes 0 and 1, layer 2 routes
    each parent's teacher-forced instances plus everyone for parents 0 and 1."""
    X, Y, lab = _synthetic(n=300, L=16)
    cps = _tree(16, 4)

    class StubModel:
        def __init__(self, child_ptr: Any, label_order: Any, layers: Any, n_features: int) -> None:
            assert label_order is None and len(child_ptr) == len(layers) == 1

        def predict(self, X: Any, beam: int = 10, topk: int = 10,
                    threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
            ids = np.full((X.shape[0], topk), -1, np.int32)
            ids[:, 0], ids[:, 1] = 0, 1
            return ids, np.zeros(ids.shape, np.float32)

    monkeypatch.setitem(sys.modules, "qac.model.xlinear",
                        types.SimpleNamespace(XLinearModel=StubModel))
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = _kernel.train_layer

    def spy(*args: Any, **kw: Any) -> dict[str, np.ndarray]:
        seen.append((np.array(args[8]), np.array(args[9])))
        return real(*args, **kw)

    monkeypatch.setattr(train_mod._kernel, "train_layer", spy)
    train_xlinear(X, Y, cps, np.arange(16, dtype=np.int32), TrainConfig(negatives="tfn+man"))
    route_ptr, route_inst = seen[1]
    n = X.shape[0]
    for p in range(4):
        got = route_inst[route_ptr[p]:route_ptr[p + 1]]
        want = np.arange(n) if p < 2 else np.nonzero(lab // 4 == p)[0]
        assert np.array_equal(got, want)


def test_man_with_the_real_matcher() -> None:
    X, Y, lab = _synthetic()
    cps = _tree(64, 4)
    lo = np.arange(64, dtype=np.int32)
    layers = train_xlinear(X, Y, cps, lo, TrainConfig(negatives="tfn+man", man_beam=3))
    _check_layout(layers, cps, X.shape[1])
    top = np.argmax(_dense_scores(X, layers, cps), axis=1)
    assert (top == lab).mean() > 0.9


# ---------- bad input ----------

def test_config_validation_and_round_trip() -> None:
    cfg = TrainConfig(solver="logreg", Cp=2.0, negatives="tfn+man", seed=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for field, value in [("solver", "svm"), ("Cp", 0.0), ("Cn", float("nan")), ("eps", -1.0),
                         ("max_iter", 0), ("bias", -1.0), ("threshold", float("inf")),
                         ("negatives", "man"), ("man_beam", 0), ("seed", -1),
                         ("threads", 1.5)]:
        with pytest.raises(InputError, match=field):
            TrainConfig(**{field: value})
    with pytest.raises(InputError, match="unknown"):
        TrainConfig.from_dict({"C": 1.0})


def test_bad_shapes_and_types() -> None:
    X, Y, _ = _synthetic(n=100, L=16)
    cps = _tree(16, 4)
    lo = np.arange(16, dtype=np.int32)
    with pytest.raises(InputError, match="X"):
        train_xlinear(X.toarray(), Y, cps, lo)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="Y"):
        train_xlinear(X, sp.csc_matrix(Y), cps, lo)
    with pytest.raises(InputError, match="rows"):
        train_xlinear(X[:50], Y, cps, lo)
    with pytest.raises(InputError, match="labels"):
        train_xlinear(X, Y[:, :15], cps, lo)
    with pytest.raises(InputError, match="child_ptr"):
        train_xlinear(X, Y, [cps[0], cps[1][:-1]], lo)
    with pytest.raises(InputError, match="child_ptr"):
        train_xlinear(X, Y, [cps[0], cps[1].astype(np.float64)], lo)
    with pytest.raises(InputError, match="label_order"):
        train_xlinear(X, Y, cps, np.zeros(16, np.int32))
    with pytest.raises(InputError, match="label_order"):
        train_xlinear(X, Y, cps, lo[:-1])


def _kernel_args() -> dict[str, Any]:
    X, Y, _ = _synthetic(n=50, L=4)
    pos_ptr = Y.indptr.astype(np.int64)
    return dict(
        x_ptr=X.indptr.astype(np.int64), x_idx=X.indices.copy(), x_val=X.data.copy(),
        n_features=X.shape[1], child_ptr=np.array([0, 4]), n_nodes=4,
        pos_ptr=pos_ptr, pos_node=Y.indices.copy(),
        route_ptr=np.array([0, 50]), route_inst=np.arange(50, dtype=np.int32),
    )


_OPTS = dict(solver="l2svm", Cp=1.0, Cn=1.0, eps=0.1, max_iter=10, bias=1.0, threshold=0.1,
             seed=0, threads=2)


@pytest.mark.parametrize(("field", "mutate", "code"), [
    ("x_idx", lambda a: a.__setitem__(3, 10**6), "RANGE"),
    ("x_idx", lambda a: a.__setitem__(0, -1), "RANGE"),
    ("x_ptr", lambda a: a.__setitem__(5, a[4] - 1), "RANGE"),
    ("x_ptr", lambda a: a.__setitem__(-1, a[-1] + 1), "RANGE"),
    ("x_val", lambda a: a.__setitem__(0, np.nan), "INPUT"),
    ("pos_node", lambda a: a.__setitem__(0, 4), "RANGE"),
    ("pos_ptr", lambda a: a.__setitem__(-1, 10**9), "RANGE"),
    ("route_inst", lambda a: a.__setitem__(0, 50), "RANGE"),
    ("route_inst", lambda a: a.__setitem__(1, 0), "INPUT"),
    ("route_ptr", lambda a: a.__setitem__(1, 49), "RANGE"),
    ("child_ptr", lambda a: a.__setitem__(1, 3), "RANGE"),
])
def test_kernel_rejects_corrupt_arrays(field: str, mutate: Any, code: str) -> None:
    args = _kernel_args()
    mutate(args[field])
    exc = InputError if code == "INPUT" else KernelError
    with pytest.raises(exc):
        _kernel.train_layer(**args, **_OPTS)


def test_kernel_rejects_bad_lengths_and_params() -> None:
    args = _kernel_args()
    with pytest.raises(InputError):
        _kernel.train_layer(**{**args, "x_val": args["x_val"][:-1]}, **_OPTS)
    with pytest.raises(InputError):
        _kernel.train_layer(**{**args, "pos_ptr": args["pos_ptr"][:-1]}, **_OPTS)
    with pytest.raises(InputError):
        _kernel.train_layer(**{**args, "route_ptr": np.array([0, 25, 50])}, **_OPTS)
    with pytest.raises(InputError):
        _kernel.train_layer(**{**args, "x_idx": args["x_idx"].reshape(1, -1)}, **_OPTS)
    with pytest.raises(InputError):
        _kernel.train_layer(**args, **{**_OPTS, "solver": "svm"})
    with pytest.raises(InputError):
        _kernel.train_layer(**args, **{**_OPTS, "Cp": -1.0})
    with pytest.raises(InputError):
        _kernel.train_layer(**args, **{**_OPTS, "max_iter": 0})
    cost = np.ones(args["pos_node"].shape[0], np.float32)
    with pytest.raises(InputError, match="pos_cost"):
        _kernel.train_layer(**args, **_OPTS, pos_cost=cost[:-1])
    for bad in (0.0, -1.0, np.nan, np.inf):
        cost[-1] = bad
        with pytest.raises(InputError):
            _kernel.train_layer(**args, **_OPTS, pos_cost=cost)


def test_positive_costs_of_one_train_the_same_model_and_more_cost_moves_it() -> None:
    """pos_cost multiplies Cp per positive: all ones is the unweighted model bit for bit;
    a higher cost on one instance's positive raises that node's score for it."""
    args = _kernel_args()
    plain = _kernel.train_layer(**args, **_OPTS)
    ones = np.ones(args["pos_node"].shape[0], np.float32)
    same = _kernel.train_layer(**args, **_OPTS, pos_cost=ones)
    assert all(np.array_equal(same[k], v) for k, v in plain.items())
    heavy = ones.copy()
    heavy[0] = 8.0  # instance 0's first positive
    moved = _kernel.train_layer(**args, **_OPTS, pos_cost=heavy)
    node = int(args["pos_node"][0])
    X = sp.csr_matrix((args["x_val"], args["x_idx"], args["x_ptr"]),
                      shape=(50, args["n_features"]))
    cp = [args["child_ptr"]]

    def score(arrays: dict[str, np.ndarray]) -> float:
        lw = LayerWeights.from_arrays(arrays)
        W = np.zeros((X.shape[1], lw.n_nodes))
        row_ptr, nodes = reference.unpack(lw, cp[0])
        np.add.at(W, (np.repeat(lw.row_feat, np.diff(row_ptr)), nodes),
                  lw.ent_val.astype(np.float64))
        return float((X[0] @ W)[0, node] + lw.bias[node])

    assert score(moved) > score(plain)


def test_a_parent_keeps_the_largest_cost_of_its_labels() -> None:
    ptr, col, w = train_mod._weighted_csr(np.array([0, 0, 1, 0]), np.array([1, 1, 0, 2]),
                                          np.array([2.0, 5.0, 1.0, 3.0]), 2, 3)
    assert ptr.tolist() == [0, 2, 3] and col.tolist() == [1, 2, 0]
    assert w is not None and w.tolist() == [5.0, 3.0, 1.0]
    with pytest.raises(InputError, match="relevance"):
        TrainConfig(relevance="clicks")


def test_empty_parents_and_no_instances() -> None:
    """A parent with no children, a parent with no routed instances, an empty X row."""
    args = _kernel_args()
    args.update(child_ptr=np.array([0, 2, 2, 4]), route_ptr=np.array([0, 30, 30, 30]),
                route_inst=np.arange(30, dtype=np.int32))
    out = _kernel.train_layer(**args, **_OPTS)
    lw = LayerWeights.from_arrays(out)
    assert lw.n_parents == 3 and lw.n_nodes == 4
    assert lw.chunk_ptr[1] == lw.chunk_ptr[2] == lw.chunk_ptr[3]  # nothing beyond parent 0
    assert np.all(lw.bias[2:] == 0)
    X = sp.csr_matrix((3, 5), dtype=np.float32)
    Y = sp.csr_matrix((np.ones(1, np.float32), ([0], [1])), shape=(3, 2))
    layers = train_xlinear(X, Y, [np.array([0, 2])], np.arange(2, dtype=np.int32))
    assert layers[0].nnz == 0


def test_layer_rows_restrict_what_a_layer_learns_from() -> None:
    X, Y, _ = _synthetic(n=600, L=48)
    cps = _tree(48, 4)
    lo = np.arange(48, dtype=np.int32)
    n = X.shape[0]
    full = train_xlinear(X, Y, cps, lo)
    same = train_xlinear(X, Y, cps, lo, layer_rows=[np.ones(n, bool)] + [None] * (len(cps) - 1))
    for a, b in zip(full, same, strict=True):
        for k, v in a.arrays().items():
            assert np.array_equal(v, b.arrays()[k]), k
    # layer 1 learns from nobody: no weights, zero biases; deeper layers unchanged
    none = train_xlinear(X, Y, cps, lo, layer_rows=[np.zeros(n, bool)] + [None] * (len(cps) - 1))
    assert none[0].nnz == 0 and not none[0].bias.any()
    assert np.array_equal(none[-1].ent_val, full[-1].ent_val)
    # half the instances at the last layer: a different model there
    half = np.arange(n) % 2 == 0
    part = train_xlinear(X, Y, cps, lo, layer_rows=[None] * (len(cps) - 1) + [half])
    assert not np.array_equal(part[-1].ent_val, full[-1].ent_val)
    with pytest.raises(InputError, match="layer_rows"):
        train_xlinear(X, Y, cps, lo, layer_rows=[None])
    with pytest.raises(InputError, match="bool mask"):
        train_xlinear(X, Y, cps, lo, layer_rows=[np.ones(3, bool)] + [None] * (len(cps) - 1))


# ---- the packed layout the trainer writes ------------------------------------


def test_a_chunk_past_the_int32_row_ends_is_a_clear_error() -> None:
    """One parent's chunk is addressed by int32 row ends: a chunk with more weights is
    refused with a message that says what to change (the limit scaled down here)."""
    args = _kernel_args()
    full = _kernel.train_layer(**args, **_OPTS)
    n = int(full["chunk_ent"][1])
    assert n > 3
    same = _kernel.train_layer(**args, **_OPTS, max_chunk_entries=n)
    assert all(np.array_equal(same[k], v) for k, v in full.items())
    with pytest.raises(InputError, match=f"hold {n} weights.*smaller branching"):
        _kernel.train_layer(**args, **_OPTS, max_chunk_entries=n - 1)


def _wide_args(fan: int) -> dict[str, Any]:
    rng = np.random.default_rng(fan)
    n, d = 2 * fan, 40
    X = _normalize(sp.random(n, d, density=0.2, format="csr", random_state=rng,
                             dtype=np.float64))
    return dict(
        x_ptr=X.indptr.astype(np.int64), x_idx=X.indices.astype(np.int32),
        x_val=X.data.astype(np.float32), n_features=d, child_ptr=np.array([0, fan]),
        n_nodes=fan, pos_ptr=np.arange(n + 1, dtype=np.int64),
        pos_node=(np.arange(n) % fan).astype(np.int32), route_ptr=np.array([0, n]),
        route_inst=np.arange(n, dtype=np.int32),
    )


@pytest.mark.parametrize(("fan", "dtype"), [(256, np.uint8), (257, np.uint16)])
def test_child_ids_take_the_narrowest_width_the_fanout_allows(fan: int, dtype: type) -> None:
    out = _kernel.train_layer(**_wide_args(fan), **{**_OPTS, "threshold": 0.0})
    lw = LayerWeights.from_arrays(out)
    assert lw.ent_child.dtype == dtype
    assert int(lw.ent_child.max()) == fan - 1  # the last child has weights too


def test_float16_weights_are_the_float32_ones_rounded() -> None:
    X, Y, _ = _synthetic(n=400, L=32)
    cps = _tree(32, 4)
    lo = np.arange(32, dtype=np.int32)
    half = train_xlinear(X, Y, cps, lo)
    full = train_xlinear(X, Y, cps, lo, TrainConfig(values="float32"))
    for h, f in zip(half, full, strict=True):
        assert h.ent_val.dtype == np.float16 and f.ent_val.dtype == np.float32
        np.testing.assert_array_equal(h.ent_val, f.ent_val.astype(np.float16))
        for name in ("chunk_ptr", "chunk_ent", "row_feat", "row_end", "ent_child", "bias"):
            np.testing.assert_array_equal(getattr(h, name), getattr(f, name))
        assert h.nbytes < f.nbytes
    sh, sf = _dense_scores(X, half, cps), _dense_scores(X, full, cps)
    np.testing.assert_allclose(sh, sf, rtol=5e-3, atol=1e-4)
    with pytest.raises(InputError, match="values"):
        TrainConfig(values="bfloat16")


def test_layer_export_checks_every_capacity() -> None:
    ffi, lib = _kernel.ffi, _kernel.lib
    a = _kernel_args()
    p = ffi.new("qac_train_params_t *", dict(solver=0, Cp=1.0, Cn=1.0, eps=0.1, max_iter=10,
                                             bias=1.0, threshold=0.1, seed=0))
    ptr = _kernel.ptr
    out = ffi.new("qac_layer_t **")
    assert lib.qac_train_layer(
        p, 50, a["n_features"], ptr(a["x_ptr"], "int64_t *"), ptr(a["x_idx"], "int32_t *"),
        ptr(a["x_val"], "float *"), a["x_idx"].size, 1, ptr(np.array([0, 4]), "int64_t *"), 4,
        ptr(a["pos_ptr"], "int64_t *"), ptr(a["pos_node"], "int32_t *"), ffi.NULL,
        a["pos_node"].size,
        ptr(a["route_ptr"], "int64_t *"), ptr(a["route_inst"], "int32_t *"), 50, 1, out) == 0
    h = ffi.gc(out[0], lib.qac_layer_free)
    sz = ffi.new("size_t[4]")
    assert lib.qac_layer_sizes(h, sz, sz + 1, sz + 2, sz + 3) == 0
    R, E = int(sz[0]), int(sz[1])
    assert (int(sz[2]), int(sz[3])) == (E, 4)
    bufs = dict(cp=np.zeros(2, np.int64), ce=np.zeros(2, np.int64), rf=np.zeros(R, np.int32),
                re=np.zeros(R, np.int32), ch=np.zeros(E, np.uint8), v=np.zeros(E, np.float32),
                b=np.zeros(4, np.float32))

    def export(n_chunk: int = 2, n_rows: int = R, n_ent: int = E, n_bias: int = 4,
               child_bytes: int = 1) -> int:
        return int(lib.qac_layer_export(
            h, ptr(bufs["cp"], "int64_t *"), ptr(bufs["ce"], "int64_t *"), n_chunk,
            ptr(bufs["rf"], "int32_t *"), ptr(bufs["re"], "int32_t *"), n_rows,
            ptr(bufs["ch"], "void *"), child_bytes, ptr(bufs["v"], "float *"), n_ent,
            ptr(bufs["b"], "float *"), n_bias))

    cap = lib.QAC_E_CAPACITY
    assert [export(n_chunk=1), export(n_rows=R - 1), export(n_ent=E - 1), export(n_bias=3)] == [
        cap] * 4
    assert export(child_bytes=3) == lib.QAC_E_INPUT
    assert export() == 0 and bufs["ce"][-1] == E and bufs["re"][-1] == E

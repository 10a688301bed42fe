"""XR-Linear training: one linear ranker per tree node, trained layer by layer in C.

For layer l, the children of each parent p of layer l-1 are trained on the
instances routed to p: teacher-forced negatives ("tfn": instances with a positive
label under p; at layer 1 every instance) and optionally matcher-aware negatives
("tfn+man": also instances whose beam through the layers trained so far contains p).
A child's label is +1 when the instance has a positive label under it, else -1.
The C solver (liblinear's dual coordinate descent) works on each parent's own
compact feature range, in parallel across parents and nodes; results do not
depend on the thread count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.errors import InputError, check_fields
from qac.model.weights import VALUE_DTYPES, LayerWeights

log = logging.getLogger(__name__)

_SOLVERS = ("l2svm", "logreg")
_NEGATIVES = ("tfn", "tfn+man")
#: how a positive's value in Y (e.g. its click count) scales its cost Cp
RELEVANCE = {
    "off": None,  # every positive costs Cp
    "log": lambda v: 1.0 + np.log(np.maximum(v, 1.0)),
    "sqrt": lambda v: np.sqrt(np.maximum(v, 1.0)),
    "linear": lambda v: np.maximum(v, 1.0),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training options; the defaults are PECOS XR-Linear's.

    solver: "l2svm" (L2-regularized L2-loss SVM, dual CD) or "logreg" (L2-regularized
    logistic regression, dual CD). Cp / Cn: costs of positives / negatives. eps: liblinear's
    stopping tolerance; max_iter: outer iterations per node. bias: value of the bias
    feature. threshold: weights with |w| < threshold are dropped after solving.
    negatives: "tfn" or "tfn+man"; man_beam: beam width for matcher-aware negatives.
    seed: RNG seed of the coordinate permutations. threads: worker threads (<= 0 means 2).
    values: how weights are stored, "float16" (half the bytes; a layer with a weight
    beyond float16's range keeps float32) or "float32". relevance: how a positive's value
    in Y (a click count, say) scales its cost: "off" (Cp for all; PECOS's default), "log"
    (Cp * (1 + ln v)), "sqrt" or "linear"; values below 1 count as 1. A node above the
    labels takes the largest multiplier of its labels.
    """

    solver: str = "l2svm"
    Cp: float = 1.0
    Cn: float = 1.0
    eps: float = 0.1
    max_iter: int = 100
    bias: float = 1.0
    threshold: float = 0.1
    negatives: str = "tfn"
    man_beam: int = 10
    seed: int = 0
    threads: int = 2
    values: str = "float16"
    relevance: str = "off"

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> InputError:
            got = getattr(self, name)
            return InputError(f"TrainConfig.{name}: expected {expected}, got {got!r}")

        if self.solver not in _SOLVERS:
            raise bad("solver", f"one of {_SOLVERS}")
        if self.negatives not in _NEGATIVES:
            raise bad("negatives", f"one of {_NEGATIVES}")
        if self.relevance not in RELEVANCE:
            raise bad("relevance", f"one of {tuple(RELEVANCE)}")
        if self.values not in VALUE_DTYPES:
            raise bad("values", f"one of {tuple(VALUE_DTYPES)}")
        for name, positive in (("Cp", 1), ("Cn", 1), ("eps", 1), ("bias", 0), ("threshold", 0)):
            v = getattr(self, name)
            number = not isinstance(v, bool) and isinstance(v, int | float | np.floating)
            if not number or not np.isfinite(v) or v < 0 or (positive and v == 0):
                raise bad(name, "a finite number " + ("> 0" if positive else ">= 0"))
        for name, lo in (("max_iter", 1), ("man_beam", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise bad(name, f"an integer >= {lo}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int | np.integer):
            raise bad("threads", "an integer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a manifest); unknown keys are an InputError."""
        check_fields(cls, d, "TrainConfig")
        return cls(**d)


def _check_inputs(
    X: Any, Y: Any, child_ptr: Sequence[np.ndarray], label_order: np.ndarray
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[np.ndarray], np.ndarray]:
    if not sp.issparse(X) or X.format != "csr":
        raise InputError(f"X: expected a scipy.sparse CSR matrix, got {type(X).__name__}")
    if not sp.issparse(Y) or Y.format != "csr":
        raise InputError(f"Y: expected a scipy.sparse CSR matrix, got {type(Y).__name__}")
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    if len(child_ptr) < 1:
        raise InputError("child_ptr: expected at least one layer")
    cps = []
    n_prev = 1
    for layer, cp in enumerate(child_ptr):
        a = np.asarray(cp)
        if a.ndim != 1 or a.dtype.kind not in "iu" or a.shape[0] != n_prev + 1:
            raise InputError(
                f"child_ptr[{layer}]: expected 1-d integers of length {n_prev + 1}, "
                f"got {a.ndim}-d {a.dtype} of shape {a.shape}"
            )
        a = a.astype(np.int64)
        if a[0] != 0 or np.any(np.diff(a) < 0):
            raise InputError(f"child_ptr[{layer}]: must start at 0 and be non-decreasing")
        cps.append(a)
        n_prev = int(a[-1])
    L = Y.shape[1]
    if n_prev != L:
        raise InputError(f"the tree's last layer has {n_prev} nodes but Y has {L} labels")
    lo = np.asarray(label_order)
    if lo.ndim != 1 or lo.dtype.kind not in "iu" or lo.shape[0] != L:
        raise InputError(f"label_order: expected 1-d integers of length {L}, got shape {lo.shape}")
    if L and (lo.min() < 0 or lo.max() >= L or np.unique(lo).shape[0] != L):
        raise InputError("label_order: expected a permutation of 0..n_labels-1")
    X = sp.csr_matrix(X)
    if not X.has_canonical_format:  # the matcher wants sorted, unique ids per row
        X = X.copy()
        X.sum_duplicates()
    Yc = sp.csr_matrix(Y)
    return X, Yc, cps, lo.astype(np.int64)


def _pairs_to_csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> tuple[
    np.ndarray, np.ndarray
]:
    """Deduplicated CSR (ptr int64, sorted col ids int32) of the (row, col) pairs."""
    ptr, col, _ = _weighted_csr(rows, cols, None, n_rows, n_cols)
    return ptr, col


def _weighted_csr(rows: np.ndarray, cols: np.ndarray, w: np.ndarray | None, n_rows: int,
                  n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Like :func:`_pairs_to_csr`, with each pair's largest weight (None: no weights)."""
    key = rows.astype(np.int64) * max(n_cols, 1) + cols.astype(np.int64)
    if w is None:
        key, wk = np.unique(key), None
    else:
        order = np.lexsort((-w, key))  # by key, the largest weight first
        key, w = key[order], w[order]
        first = np.ones(key.shape[0], bool)
        first[1:] = key[1:] != key[:-1]
        key, wk = key[first], w[first].astype(np.float32)
    r = key // max(n_cols, 1)
    ptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=ptr[1:])
    return ptr, (key - r * max(n_cols, 1)).astype(np.int32), wk


def _positive_pairs(
    Y: sp.csr_matrix, cps: list[np.ndarray], label_order: np.ndarray
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Per layer 1..D: (instance, node) pairs of every positive node (with repeats), and
    the Y value of each pair's label (the same order in every layer)."""
    L = Y.shape[1]
    pos_of_label = np.empty(L, np.int64)
    pos_of_label[label_order] = np.arange(L, dtype=np.int64)
    keep = Y.data > 0
    inst = np.repeat(np.arange(Y.shape[0], dtype=np.int64), np.diff(Y.indptr))[keep]
    node = pos_of_label[Y.indices[keep]]
    D = len(cps)
    out: list[tuple[np.ndarray, np.ndarray]] = [(inst, node)]
    for layer in range(D - 1, 0, -1):
        # node of layer+1 -> its parent in layer
        cp = cps[layer]
        parent = np.repeat(np.arange(cp.shape[0] - 1, dtype=np.int64), np.diff(cp))
        node = parent[node]
        out.append((inst, node))
    out.reverse()
    return out, Y.data[keep]


def _advance(bar: Any) -> Any:
    """An ``on_progress(done, total)`` that moves a tqdm bar to ``done``."""

    def update(done: int, total: int) -> None:
        if done > bar.n:
            bar.update(done - bar.n)

    return update


def train_xlinear(
    X: sp.csr_matrix,
    Y: sp.csr_matrix,
    child_ptr: Sequence[np.ndarray],
    label_order: np.ndarray,
    config: TrainConfig | None = None,
    progress: bool = False,
    layer_rows: Sequence[np.ndarray | None] | None = None,
) -> list[LayerWeights]:
    """Train XR-Linear rankers for every layer of the tree; return LayerWeights 1..D.

    X: csr (n, d), float32 rows (converted if needed). Y: csr (n, L), positive entries
    are the labels. child_ptr / label_order: the LabelTree arrays (see CONTRACT).
    layer_rows: optional, per layer, a bool mask (n,) of the instances that layer's
    rankers learn from (None: all). Completion uses it to skip trie layers for
    prefixes that already fix the trie node: their rankers never decide a ranking.
    """
    config = config or TrainConfig()
    X, Y, cps, lo = _check_inputs(X, Y, child_ptr, label_order)
    n, d = X.shape
    x_ptr = X.indptr.astype(np.int64)
    D = len(cps)
    pairs, values = _positive_pairs(Y, cps, lo)
    scale = RELEVANCE[config.relevance]
    cost = None if scale is None else np.asarray(scale(values.astype(np.float64)))
    masks = list(layer_rows) if layer_rows is not None else [None] * D
    if len(masks) != D:
        raise InputError(f"layer_rows: {len(masks)} entries for a tree of depth {D}")
    for i, m in enumerate(masks):
        if m is not None and (m.dtype != np.bool_ or m.shape != (n,)):
            raise InputError(f"layer_rows[{i}]: expected a bool mask of shape ({n},)")
    layers: list[LayerWeights] = []
    it: Any = range(1, D + 1)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train layers", unit="layer")
    for layer in it:
        t0 = time.perf_counter()
        n_parents = cps[layer - 1].shape[0] - 1
        n_nodes = int(cps[layer - 1][-1])
        inst, node = pairs[layer - 1]
        pos_ptr, pos_node, pos_cost = _weighted_csr(inst, node, cost, n, n_nodes)
        mask = masks[layer - 1]
        if layer == 1:
            route_inst = (np.arange(n, dtype=np.int32) if mask is None
                          else np.flatnonzero(mask).astype(np.int32))
            route_ptr = np.array([0, route_inst.shape[0]], np.int64)
        else:
            pinst, pnode = pairs[layer - 2]
            if config.negatives == "tfn+man":
                mi, mn = _matcher_pairs(X, cps[: layer - 1], layers, d, config)
                pinst = np.concatenate([pinst, mi])
                pnode = np.concatenate([pnode, mn])
            if mask is not None:
                keep = mask[pinst]
                pinst, pnode = pinst[keep], pnode[keep]
            route_ptr, route_inst = _pairs_to_csr(pnode, pinst, n_parents, n)
        bar: Any = None
        if progress:
            from tqdm import tqdm

            # inside the layer: the C trainer's units (parents built, nodes solved,
            # parents assembled), polled while it runs
            bar = tqdm(total=2 * n_parents + n_nodes, desc=f"layer {layer}/{D}", unit="unit",
                       leave=False, position=1)
        try:
            arrays = _kernel.train_layer(
                x_ptr, X.indices, X.data, d, cps[layer - 1], n_nodes,
                pos_ptr, pos_node, route_ptr, route_inst, pos_cost=pos_cost,
                solver=config.solver, Cp=float(config.Cp), Cn=float(config.Cn),
                eps=float(config.eps), max_iter=int(config.max_iter), bias=float(config.bias),
                threshold=float(config.threshold),
                seed=(int(config.seed) * 0x9E3779B1 + layer) & 0xFFFFFFFFFFFFFFFF,
                threads=int(config.threads),
                on_progress=None if bar is None else _advance(bar),
            )
        finally:
            if bar is not None:
                bar.close()
        arrays["ent_val"] = _pack_values(arrays["ent_val"], config.values, layer)
        lw = LayerWeights.from_arrays(arrays)
        layers.append(lw)
        log.info(
            "layer %d/%d: %d parents, %d nodes, %d routed pairs, %d weights, %.2fs",
            layer, D, n_parents, n_nodes, int(route_ptr[-1]), lw.nnz, time.perf_counter() - t0,
        )
    return layers


def _pack_values(values: np.ndarray, dtype: str, layer: int) -> np.ndarray:
    """Weights in the configured dtype (round to nearest); float32 when float16 would
    overflow."""
    if dtype == "float32" or values.size == 0:
        return values
    if float(np.abs(values).max()) > float(np.finfo(np.float16).max):
        log.warning("layer %d: a weight beyond float16's range, kept as float32", layer)
        return values
    return values.astype(np.float16)


def _matcher_pairs(
    X: sp.csr_matrix,
    cps: Sequence[np.ndarray],
    layers: Sequence[LayerWeights],
    d: int,
    config: TrainConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(instance, node) pairs of the partial model's beam at its last layer."""
    from qac.model.xlinear import XLinearModel  # written by the inference part

    model = XLinearModel(list(cps), None, list(layers), d)
    k = config.man_beam
    ids, _ = model.predict(X, beam=k, topk=k, threads=config.threads)
    ids = np.asarray(ids)
    ok = ids >= 0
    inst = np.nonzero(ok)[0].astype(np.int64)
    return inst, ids[ok].astype(np.int64)

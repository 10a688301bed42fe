"""PIFA label embeddings and the balanced hierarchical spherical k-means tree (PECOS).

The tree is built by t binary levels of balanced 2-means (each cluster of n labels
splits into ceil(n/2) and floor(n/2)), t = ceil(log2(L / max_leaf_size)); log2(B)
binary levels are then grouped into one B-ary tree layer from the bottom up, the
top layer taking the remainder. The splitting runs in C (``qac_split_clusters``),
one call per binary level, threads across clusters.
"""

from __future__ import annotations

import logging
import operator

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from qac import _kernel
from qac.errors import InputError
from qac.index.tree import LabelTree

__all__ = ["pifa", "build_kmeans_tree", "binary_depth"]

log = logging.getLogger(__name__)


def _row_normalize(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    m.sum_duplicates()
    sq = np.bincount(
        np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)),
        weights=m.data.astype(np.float64) ** 2,
        minlength=m.shape[0],
    )
    scale = np.zeros(m.shape[0], dtype=np.float64)
    np.divide(1.0, np.sqrt(sq), out=scale, where=sq > 0)
    m.data *= np.repeat(scale, np.diff(m.indptr)).astype(np.float32)
    m.eliminate_zeros()
    return m


def pifa(X: sp.spmatrix, Y: sp.spmatrix) -> sp.csr_matrix:
    """Positive-instance feature aggregation: one embedding per label.

    X: (n, d) instance features, Y: (n, L) labels (any sparse format): 0/1, or weights
    such as click counts, each instance then counting that many times for the label.
    Returns float32 csr (L, d) = row-L2-normalize(Y^T @ row-L2-normalize(X));
    a label with no instance gets an empty row.
    """
    if not sp.issparse(X) or not sp.issparse(Y):
        raise InputError("pifa: X and Y must be scipy sparse matrices")
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"pifa: X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    xn = _row_normalize(sp.csr_matrix(X))
    yt = sp.csr_matrix(Y, dtype=np.float32).T.tocsr()
    emb = _row_normalize(yt @ xn)
    emb.sort_indices()
    emb.indices = emb.indices.astype(np.int32, copy=False)
    return emb


def binary_depth(n_labels: int, max_leaf_size: int) -> int:
    """t, the number of binary k-means levels: ceil(log2(L / max_leaf_size)).

    Capped at floor(log2(L)) so no leaf cluster is empty: that only matters for
    max_leaf_size == 1 with L not a power of 2, where some leaves hold 2 labels.
    """
    t = 0
    while max_leaf_size << t < n_labels:
        t += 1
    return min(t, max(n_labels, 1).bit_length() - 1)


def _int_arg(name: str, value: object, who: str = "build_kmeans_tree") -> int:
    if isinstance(value, bool):
        raise InputError(f"{who}: {name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"{who}: {name} must be an integer, got {value!r}") from None


def _level_seed(seed: int, level: int) -> int:
    """The split kernel's seed for binary level ``level`` (shared by every indexer)."""
    return (seed * 0x9E3779B97F4A7C15 + level) & 0xFFFFFFFFFFFFFFFF


def _layer_depths(t: int, b: int) -> list[int]:
    """Binary depths of the cluster layers for t binary levels, grouped by b from the bottom.

    [r, r+b, ..., t] with 1 <= r <= b; [0] (one cluster) when t == 0.
    """
    if t == 0:
        return [0]
    r = t % b or b
    return list(range(r, t + 1, b))


def _kernel_csr(
    emb: sp.spmatrix, who: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(indptr int64, indices int32, data float32, n_cols) of ``emb`` for the split kernel."""
    n_labels, n_cols = emb.shape
    if n_labels > np.iinfo(np.int32).max or n_cols > np.iinfo(np.int32).max:
        raise InputError(f"{who}: emb shape {emb.shape} exceeds int32 ids")
    m = sp.csr_matrix(emb)
    data = np.ascontiguousarray(m.data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{who}: emb has non-finite values")
    indptr = np.ascontiguousarray(m.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(m.indices, dtype=np.int32)
    return indptr, indices, data, int(n_cols)


def _split_ptr(ptr: np.ndarray) -> np.ndarray:
    sizes = np.diff(ptr)
    halves = np.empty(2 * sizes.shape[0], dtype=np.int64)
    halves[0::2] = (sizes + 1) // 2
    halves[1::2] = sizes // 2
    out = np.zeros(halves.shape[0] + 1, dtype=np.int64)
    np.cumsum(halves, out=out[1:])
    return out


def _kmeans_options(who: str, branching: int, max_leaf_size: int, max_iter: int, seed: int,
                    threads: int) -> tuple[int, int, int, int, int]:
    """Validated (branching, max_leaf_size, max_iter, seed, threads) of a k-means build."""
    branching = _int_arg("branching", branching, who)
    max_leaf_size = _int_arg("max_leaf_size", max_leaf_size, who)
    max_iter = _int_arg("max_iter", max_iter, who)
    seed = _int_arg("seed", seed, who)
    threads = _int_arg("threads", threads, who)
    if branching < 2 or branching & (branching - 1):
        raise InputError(f"{who}: branching must be a power of 2 >= 2, got {branching}")
    if max_leaf_size < 1:
        raise InputError(f"{who}: max_leaf_size must be >= 1, got {max_leaf_size}")
    if max_iter < 0 or max_iter > np.iinfo(np.int32).max:
        raise InputError(f"{who}: max_iter must be >= 0, got {max_iter}")
    if seed < 0:
        raise InputError(f"{who}: seed must be a non-negative int, got {seed}")
    return branching, max_leaf_size, max_iter, seed, max(min(threads, 1024), -1)


def build_kmeans_tree(
    emb: sp.spmatrix,
    branching: int = 16,
    max_leaf_size: int = 100,
    seed: int = 0,
    threads: int = 2,
    max_iter: int = 20,
    progress: bool = False,
) -> LabelTree:
    """Balanced hierarchical spherical k-means tree over label embeddings.

    emb: (L, d) sparse, one row per label (e.g. ``pifa`` output); empty rows are
    fine. ``branching`` must be a power of 2 >= 2. Layer sizes are
    [2^r, 2^(r+b), ..., 2^t, L] with b = log2(branching), t = ``binary_depth``
    and 1 <= r <= b (just [1, L] when L <= max_leaf_size). Deterministic for a
    seed, whatever ``threads`` (<= 0 means 2). With max_leaf_size == 1 and L
    not a power of 2, t is capped so that no leaf is empty (see ``binary_depth``).
    Cost: O(t * (nnz + max_iter * nnz)) time, O(nnz + threads * d) extra memory.
    """
    if not sp.issparse(emb):
        raise InputError(f"build_kmeans_tree: emb must be a scipy sparse matrix, got {type(emb)}")
    branching, max_leaf_size, max_iter, seed, threads = _kmeans_options(
        "build_kmeans_tree", branching, max_leaf_size, max_iter, seed, threads)
    n_labels = emb.shape[0]
    if n_labels == 0:
        raise InputError("build_kmeans_tree: no labels (emb has 0 rows)")
    indptr, indices, data, n_cols = _kernel_csr(emb, "build_kmeans_tree")

    t = binary_depth(n_labels, max_leaf_size)
    order = np.arange(n_labels, dtype=np.int32)
    ptr = np.array([0, n_labels], dtype=np.int64)
    for level in tqdm(range(t), desc="k-means levels", disable=not progress):
        level_seed = _level_seed(seed, level)
        _kernel.split_clusters(
            indptr, indices, data, n_cols, order, ptr, level_seed, max_iter, threads
        )
        ptr = _split_ptr(ptr)
        log.debug("k-means level %d/%d: %d clusters", level + 1, t, ptr.shape[0] - 1)

    depths = _layer_depths(t, int(branching).bit_length() - 1)
    child_ptr = [np.array([0, 1 << depths[0]], dtype=np.int64)]
    for up, down in zip(depths, depths[1:], strict=False):
        step = 1 << (down - up)
        child_ptr.append(np.arange(0, (1 << down) + 1, step, dtype=np.int64))
    child_ptr.append(ptr)
    tree = LabelTree(tuple(child_ptr), order)
    tree.validate()
    return tree

"""Trie and trie/k-means hybrid label trees for query completion.

Labels are distinct completion strings sorted in Python ``str`` order; label id =
position in that list. Trie layer t (1..depth) has one node per distinct
``label[:t]`` in sorted order, so a node whose string has length t covers exactly
the contiguous id range of the labels starting with it; a label shorter than t
continues as its own node (a unary chain). ``x -> x[:t]`` is monotone in str
order, which is why every node is a contiguous run of ids.

The hybrid puts a balanced hierarchical spherical k-means subtree (as in
``build_kmeans_tree``) under every trie node of the deepest trie layer. All
subtrees are split together, one ``split_clusters`` call per binary level over
the clusters that still need splitting; shallower subtrees are padded with unary
nodes at their top so every label sits in the last layer.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.errors import InputError
from qac.index.kmeans import (
    _int_arg,
    _kernel_csr,
    _kmeans_options,
    _layer_depths,
    _level_seed,
    binary_depth,
)
from qac.index.tree import LabelTree

__all__ = ["build_trie_tree", "build_hybrid_tree"]

log = logging.getLogger(__name__)


def _check_labels(labels: Sequence[str], who: str) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, (Sequence, np.ndarray)):
        raise InputError(f"{who}: labels must be a sequence of str, got {type(labels).__name__}")
    labs = list(labels)
    if not labs:
        raise InputError(f"{who}: no labels")
    for i, s in enumerate(labs):
        if not isinstance(s, str):
            raise InputError(f"{who}: labels[{i}] is {type(s).__name__}, expected str")
    ok = list(map(operator.lt, labs, labs[1:]))
    if not all(ok):
        i = ok.index(False) + 1
        what = "a duplicate of" if labs[i] == labs[i - 1] else "not after"
        raise InputError(
            f"{who}: labels must be sorted and distinct; labels[{i}] = {labs[i]!r} "
            f"is {what} labels[{i - 1}] = {labs[i - 1]!r}"
        )
    if len(labs) > np.iinfo(np.int32).max:
        raise InputError(f"{who}: too many labels for int32 ids ({len(labs)})")
    return labs


def _trie_layers(labs: list[str], depth: int) -> tuple[list[np.ndarray], np.ndarray]:
    """child_ptr of trie layers 1..depth, and the label-id range ptr of the layer-depth nodes.

    Node starts of layer t are the ids i with ``labs[i][:t] != labs[i-1][:t]``;
    they refine layer t-1's, so a parent's children are found by searchsorted.
    """
    n = len(labs)
    starts = np.zeros(1, dtype=np.int64)
    child_ptr: list[np.ndarray] = []
    for t in range(1, depth + 1):
        keys = [s[:t] for s in labs]
        new = np.fromiter(map(operator.ne, keys[1:], keys[:-1]), dtype=bool, count=n - 1)
        child = np.concatenate([[0], np.flatnonzero(new) + 1]).astype(np.int64)
        p = np.empty(starts.shape[0] + 1, dtype=np.int64)
        p[:-1] = np.searchsorted(child, starts)
        p[-1] = child.shape[0]
        child_ptr.append(p)
        starts = child
    return child_ptr, np.append(starts, np.int64(n))


def build_trie_tree(labels: Sequence[str], depth: int = 4) -> LabelTree:
    """Trie of the label strings to ``depth`` characters, labels below.

    Layers 1..depth are trie layers (see the module docstring), layer depth+1 the
    labels; ``label_order`` is arange(L). depth=0 gives the flat tree [L].
    Cost: O(depth * L) string slices and compares.
    """
    who = "build_trie_tree"
    depth = _int_arg("depth", depth, who)
    if depth < 0:
        raise InputError(f"{who}: depth must be >= 0, got {depth}")
    labs = _check_labels(labels, who)
    child_ptr, leaf_ptr = _trie_layers(labs, depth)
    tree = LabelTree((*child_ptr, leaf_ptr), np.arange(len(labs), dtype=np.int32))
    tree.validate()
    return tree


def _split_sizes(sizes: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Cluster sizes after one level: each active cluster -> ceil, floor halves."""
    rep = np.where(active, 2, 1)
    out = np.empty(int(rep.sum()), dtype=np.int64)
    first = np.cumsum(rep) - rep
    out[first] = np.where(active, (sizes + 1) // 2, sizes)
    out[first[active] + 1] = sizes[active] // 2
    return out


def build_hybrid_tree(
    labels: Sequence[str],
    emb: sp.spmatrix,
    trie_depth: int = 2,
    branching: int = 16,
    max_leaf_size: int = 100,
    seed: int = 0,
    threads: int = 2,
    max_iter: int = 20,
) -> LabelTree:
    """Trie to ``trie_depth`` characters, then a balanced k-means subtree in each trie node.

    labels: sorted distinct strings (id = position). emb: (L, d) sparse, row i the
    embedding of label i (empty rows are fine). Under trie node i with n_i labels
    there are t_i = ``binary_depth(n_i, max_leaf_size)`` binary levels grouped in
    B-ary layers from the bottom like ``build_kmeans_tree`` (so a node with
    <= max_leaf_size labels is one leaf cluster), padded with unary nodes at the
    top to the deepest subtree's K layers. Depth = trie_depth + K + 1, every
    label in the last layer. trie_depth=0 gives exactly ``build_kmeans_tree(emb,
    ...)``. Deterministic for a seed, whatever ``threads`` (<= 0 means 2).
    Cost: O(trie_depth * L) string work plus max_i t_i kernel calls.
    """
    who = "build_hybrid_tree"
    trie_depth = _int_arg("trie_depth", trie_depth, who)
    if trie_depth < 0:
        raise InputError(f"{who}: trie_depth must be >= 0, got {trie_depth}")
    branching, max_leaf_size, max_iter, seed, threads = _kmeans_options(
        who, branching, max_leaf_size, max_iter, seed, threads)
    labs = _check_labels(labels, who)
    if not sp.issparse(emb):
        raise InputError(f"{who}: emb must be a scipy sparse matrix, got {type(emb)}")
    if emb.shape[0] != len(labs):
        raise InputError(f"{who}: emb has {emb.shape[0]} rows but there are {len(labs)} labels")
    indptr, indices, data, n_cols = _kernel_csr(emb, who)

    child_ptr, node_ptr = _trie_layers(labs, trie_depth)
    node_n = np.diff(node_ptr)
    node_t = np.array([binary_depth(int(n), max_leaf_size) for n in node_n], dtype=np.int64)

    # Binary levels over all trie nodes at once: the clusters of nodes with
    # t_i > level are gathered into one contiguous array for the kernel.
    order = np.arange(len(labs), dtype=np.int32)
    sizes = node_n.astype(np.int64)  # clusters in tree order
    owner = np.arange(node_n.shape[0], dtype=np.int64)  # trie node of each cluster
    for level in range(int(node_t.max())):
        active = node_t[owner] > level
        members = np.repeat(active, sizes)
        sub = np.ascontiguousarray(order[members])
        sub_ptr = np.zeros(int(active.sum()) + 1, dtype=np.int64)
        np.cumsum(sizes[active], out=sub_ptr[1:])
        _kernel.split_clusters(
            indptr, indices, data, n_cols, sub, sub_ptr, _level_seed(seed, level), max_iter, threads
        )
        order[members] = sub
        sizes = _split_sizes(sizes, active)
        owner = np.repeat(owner, np.where(active, 2, 1))
        log.debug("hybrid k-means level %d: %d clusters split", level + 1, sub_ptr.shape[0] - 1)

    # Cluster layers: node i's k-th layer (top down) holds 2^pad_depth[i, k] clusters.
    b = branching.bit_length() - 1
    per_node = [_layer_depths(int(t), b) for t in node_t]
    k_max = max(len(d) for d in per_node)
    pad_depth = np.array([[0] * (k_max - len(d)) + d for d in per_node], dtype=np.int64)
    prev = np.zeros(node_n.shape[0], dtype=np.int64)
    for k in range(k_max):
        fan = np.repeat(np.left_shift(1, pad_depth[:, k] - prev), np.left_shift(1, prev))
        p = np.zeros(fan.shape[0] + 1, dtype=np.int64)
        np.cumsum(fan, out=p[1:])
        child_ptr.append(p)
        prev = pad_depth[:, k]
    leaf_ptr = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    np.cumsum(sizes, out=leaf_ptr[1:])
    child_ptr.append(leaf_ptr)
    tree = LabelTree(tuple(child_ptr), order)
    tree.validate()
    return tree

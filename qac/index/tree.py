"""The label tree: every indexer produces one, trainers and the kernel read it.

Layer 0 is the root (one node, implicit). Layer l = 1..D has n_l nodes; node p
of layer l-1 owns the contiguous layer-l nodes ``child_ptr[l-1][p]:child_ptr[l-1][p+1]``.
The last layer's nodes are the labels in tree order: last-layer node j is label
``label_order[j]``. PECOS writes the same tree as a cluster chain, one 0/1 matrix
per layer mapping children (rows) to parents (columns); both forms convert here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from qac.errors import InputError

__all__ = ["LabelTree"]


@dataclass(frozen=True)
class LabelTree:
    """A label tree in contiguous-children form (see the module docstring).

    child_ptr:   D int64 arrays; ``child_ptr[l-1]`` has n_{l-1}+1 entries (n_0 = 1).
    label_order: int32 [L], the label id of each last-layer node, a permutation of 0..L-1.

    Construction does not check anything; the ``from_*`` constructors validate,
    and ``validate()`` checks a hand-built tree.
    """

    child_ptr: tuple[np.ndarray, ...]
    label_order: np.ndarray

    def __eq__(self, other: object) -> bool:
        """Same arrays (same node numbering), not merely an equivalent tree."""
        if not isinstance(other, LabelTree):
            return NotImplemented
        if len(self.child_ptr) != len(other.child_ptr):
            return False
        pairs = zip(self.child_ptr, other.child_ptr, strict=True)
        return all(np.array_equal(a, b) for a, b in pairs) and np.array_equal(
            self.label_order, other.label_order
        )

    __hash__ = None  # type: ignore[assignment]  # holds mutable arrays

    @property
    def depth(self) -> int:
        """D, the number of layers below the root (the labels are layer D)."""
        return len(self.child_ptr)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """(n_1, ..., n_D); n_D is the number of labels."""
        return tuple(int(p[-1]) for p in self.child_ptr)

    @property
    def n_labels(self) -> int:
        return int(self.label_order.shape[0])

    def validate(self) -> None:
        """Raise InputError unless the arrays describe a well-formed tree."""
        if not isinstance(self.child_ptr, tuple) or len(self.child_ptr) == 0:
            raise InputError("LabelTree.child_ptr: expected a non-empty tuple of arrays")
        n_prev = 1
        for i, p in enumerate(self.child_ptr):
            name = f"LabelTree.child_ptr[{i}]"
            if not isinstance(p, np.ndarray) or p.dtype != np.int64 or p.ndim != 1:
                raise InputError(f"{name}: expected a 1-d int64 array, got {_desc(p)}")
            if p.shape[0] != n_prev + 1:
                raise InputError(
                    f"{name}: expected {n_prev + 1} entries (layer {i} has {n_prev} nodes), "
                    f"got {p.shape[0]}"
                )
            if p[0] != 0:
                raise InputError(f"{name}: must start at 0, starts at {int(p[0])}")
            if np.any(np.diff(p) < 0):
                raise InputError(f"{name}: must be non-decreasing")
            n_prev = int(p[-1])
        lo = self.label_order
        if not isinstance(lo, np.ndarray) or lo.dtype != np.int32 or lo.ndim != 1:
            raise InputError(f"LabelTree.label_order: expected a 1-d int32 array, got {_desc(lo)}")
        if lo.shape[0] != n_prev:
            raise InputError(
                f"LabelTree.child_ptr[{len(self.child_ptr) - 1}]: ends at {n_prev} "
                f"but label_order has {lo.shape[0]} labels"
            )
        if lo.shape[0] and (
            int(lo.min()) < 0
            or int(lo.max()) >= lo.shape[0]
            or np.bincount(lo, minlength=lo.shape[0]).max() != 1
        ):
            raise InputError("LabelTree.label_order: not a permutation of 0..L-1")

    def parents(self, layer: int) -> np.ndarray:
        """int64 [n_layer]: the layer-(layer-1) parent of each node of ``layer`` (1..D)."""
        if not 1 <= layer <= self.depth:
            raise InputError(f"parents: layer must be in 1..{self.depth}, got {layer}")
        p = self.child_ptr[layer - 1]
        return np.repeat(np.arange(p.shape[0] - 1, dtype=np.int64), np.diff(p))

    def ancestors(self, layer: int) -> np.ndarray:
        """int64 [L]: for each last-layer position j, its ancestor's node id at ``layer``.

        ``layer`` is 0..D (0 gives all zeros, D gives arange(L)). To get it per
        label id instead of per position, index the result with the inverse of
        ``label_order``.
        """
        if not 0 <= layer <= self.depth:
            raise InputError(f"ancestors: layer must be in 0..{self.depth}, got {layer}")
        ids = np.arange(self.n_labels, dtype=np.int64)
        for lay in range(self.depth, layer, -1):
            ids = self.parents(lay)[ids]
        return ids

    def to_cluster_chain(self) -> list[sp.csc_matrix]:
        """PECOS cluster chain: C_l (n_l x n_{l-1}), float32 ones at (child, parent).

        The last matrix's rows are ORIGINAL label ids; other rows are node ids.
        """
        chain = []
        for i, p in enumerate(self.child_ptr):
            n_child = int(p[-1])
            rows = (
                self.label_order.astype(np.int32)
                if i == self.depth - 1
                else np.arange(n_child, dtype=np.int32)
            )
            c = sp.csc_matrix(
                (np.ones(n_child, dtype=np.float32), rows, p),
                shape=(n_child, p.shape[0] - 1),
            )
            c.sort_indices()
            chain.append(c)
        return chain

    @classmethod
    def from_cluster_chain(cls, chain: list[sp.spmatrix] | tuple[sp.spmatrix, ...]) -> LabelTree:
        """Build from any valid cluster chain (any branching, any node order).

        Each C_l must be (n_l x n_{l-1}) with n_0 = 1 and exactly one non-zero per
        row (its parent). Nodes are renumbered so siblings are contiguous, keeping
        the relative order of siblings; the last matrix's rows are label ids.
        """
        if len(chain) == 0:
            raise InputError("from_cluster_chain: empty chain")
        pos_prev = np.zeros(1, dtype=np.int64)  # old id -> tree position, layer l-1
        child_ptr: list[np.ndarray] = []
        order = np.zeros(0, dtype=np.int64)
        for i, c in enumerate(chain):
            if not sp.issparse(c):
                raise InputError(f"from_cluster_chain: C[{i}] is not a sparse matrix")
            n_child, n_par = c.shape
            if n_par != pos_prev.shape[0]:
                raise InputError(
                    f"from_cluster_chain: C[{i}] has {n_par} columns, "
                    f"expected {pos_prev.shape[0]} (the nodes of the layer above)"
                )
            m = sp.csr_matrix(c)
            m.eliminate_zeros()
            counts = np.diff(m.indptr)
            if n_child and (counts.min() != 1 or counts.max() != 1):
                bad = int(np.flatnonzero(counts != 1)[0])
                raise InputError(
                    f"from_cluster_chain: C[{i}] row {bad} has {int(counts[bad])} parents, "
                    "expected exactly 1"
                )
            parent_pos = pos_prev[m.indices.astype(np.int64)]
            order = np.argsort(parent_pos, kind="stable")  # new -> old
            p = np.zeros(n_par + 1, dtype=np.int64)
            np.cumsum(np.bincount(parent_pos, minlength=n_par), out=p[1:])
            child_ptr.append(p)
            pos_prev = np.empty(n_child, dtype=np.int64)
            pos_prev[order] = np.arange(n_child, dtype=np.int64)
        if order.shape[0] > np.iinfo(np.int32).max:
            raise InputError("from_cluster_chain: too many labels for int32 ids")
        tree = cls(tuple(child_ptr), order.astype(np.int32))
        tree.validate()
        return tree

    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for saving: ``child_ptr_0``..``child_ptr_{D-1}``, ``label_order``."""
        out = {f"child_ptr_{i}": p for i, p in enumerate(self.child_ptr)}
        out["label_order"] = self.label_order
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LabelTree:
        """Inverse of ``arrays()``; validates (InputError on a missing or bad array)."""
        if "label_order" not in arrays:
            raise InputError("LabelTree.from_arrays: missing 'label_order'")
        ptrs: list[np.ndarray] = []
        while f"child_ptr_{len(ptrs)}" in arrays:
            ptrs.append(arrays[f"child_ptr_{len(ptrs)}"])
        extra = set(arrays) - {"label_order"} - {f"child_ptr_{i}" for i in range(len(ptrs))}
        if extra:
            raise InputError(f"LabelTree.from_arrays: unexpected arrays {sorted(extra)}")
        tree = cls(tuple(ptrs), arrays["label_order"])
        tree.validate()
        return tree


def _desc(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__

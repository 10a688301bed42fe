"""XR-Linear inference: beam search over the label tree, in C.

An :class:`XLinearModel` wraps the tree's ``child_ptr`` arrays, the per-layer
:class:`~qac.model.weights.LayerWeights`, the label-id spans under inner nodes and
the post-processor in one C handle that points into those arrays (no copy: they
may be read-only mmaps shared by every worker process). All the arrays are
validated once, on construction; predictions then release the GIL.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.errors import InputError, KernelError, ModelFormatError
from qac.model.weights import DTYPES, FIELDS, LayerWeights


def _exact(arr: Any, dtype: Any, name: str) -> np.ndarray:
    """``arr`` itself if it is a 1-d C-contiguous array of ``dtype`` (or one of the
    dtypes of a tuple), else InputError."""
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if not isinstance(arr, np.ndarray) or arr.dtype not in dtypes or arr.ndim != 1:
        got = f"{arr.ndim}-d {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise InputError(f"{name}: expected a 1-d {names} array, got {got}")
    if not arr.flags.c_contiguous:
        raise InputError(f"{name}: expected a C-contiguous array")
    return arr


class XLinearModel:
    """A tree of linear rankers answering top-k label queries by beam search.

    child_ptr: D int64 arrays, ``child_ptr[l-1]`` of length n_{l-1}+1 (LabelTree layout).
    label_order: int32 [n_D] (last-layer node j is label ``label_order[j]``), or None to
        answer with last-layer node ids (partial models during training).
    layers: D LayerWeights, layer l's chunks indexed by the parents of layer l-1.
    n_features: the width of the feature space (query ids must be below it).
    post: "l3-hinge" (t(s) = exp(-max(0, 1-s)^3)) or "sigmoid".
    spans: int32 [n_inner, 4], :meth:`spans` of the same arrays (e.g. saved with the
        model), read in place once checked; None computes them (16 bytes per inner
        node, per process).
    powers: per layer, a node scores t(s) ** powers[l-1] times its parent's score
        (finite, > 0; None: all 1, PECOS's product of post-processed scores).

    Arrays must already have the exact dtypes (no silent copies of big weights);
    wrong dtypes or shapes raise InputError, inconsistent contents ModelFormatError.
    """

    def __init__(
        self,
        child_ptr: Sequence[np.ndarray],
        label_order: np.ndarray | None,
        layers: Sequence[LayerWeights],
        n_features: int,
        post: str = "l3-hinge",
        spans: np.ndarray | None = None,
        powers: Sequence[float] | None = None,
    ) -> None:
        if len(child_ptr) == 0 or len(child_ptr) != len(layers):
            raise InputError(
                f"child_ptr and layers: expected the same positive depth, "
                f"got {len(child_ptr)} and {len(layers)}"
            )
        if not isinstance(n_features, (int, np.integer)) or not 0 <= n_features <= 2**31:
            raise InputError(f"n_features: expected an int in [0, 2**31], got {n_features!r}")
        self._post = post
        code = _kernel.post_code(post)
        self._child_ptr = [_exact(c, np.int64, f"child_ptr[{i}]") for i, c in enumerate(child_ptr)]
        self._layers = []
        for i, lw in enumerate(layers):
            if not isinstance(lw, LayerWeights):
                raise InputError(f"layers[{i}]: expected LayerWeights, got {type(lw).__name__}")
            self._layers.append(
                {f: _exact(getattr(lw, f), DTYPES[f], f"layers[{i}].{f}") for f in FIELDS}
            )
        self._label_order = (
            None if label_order is None else _exact(label_order, np.int32, "label_order")
        )
        self._n_features = int(n_features)
        if powers is not None:
            powers = [float(x) for x in powers]
            if len(powers) != len(layers) or not all(np.isfinite(x) and x > 0 for x in powers):
                raise InputError(
                    f"powers: expected {len(layers)} finite numbers > 0, got {powers!r}"
                )
        self._powers = powers
        self._spans = None
        if spans is not None:
            if not isinstance(spans, np.ndarray) or spans.ndim != 2 or spans.shape[1:] != (4,):
                raise InputError("spans: expected an int32 array of shape (n_inner, 4)")
            if spans.dtype != np.int32 or not spans.flags.c_contiguous:
                raise InputError("spans: expected a C-contiguous int32 array")
            self._spans = spans
        try:
            self._handle = _kernel.model_new(
                self._child_ptr, self._layers, self._label_order, self._spans,
                self._n_features, code, powers
            )
        except KernelError as exc:
            raise ModelFormatError(
                "inconsistent model arrays (child_ptr / layer weights / label_order / spans "
                f"do not fit together, or a feature id >= n_features={self._n_features}): {exc}"
            ) from exc
        self._n_labels = int(self._layers[-1]["bias"].shape[0])
        self._local = threading.local()

    @property
    def handle(self) -> Any:
        """The ``qac_model_t*`` cffi pointer (valid while this object lives)."""
        return self._handle

    def spans(self) -> np.ndarray:
        """int32 [n_inner, 4]: the label-id spans under the inner nodes, to save with the
        model (a copy out of C)."""
        return _kernel.model_spans(self._handle)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays the handle reads (weights, tree, spans): the model's size
        in memory, shared by every process that maps the same files."""
        n = sum(a.nbytes for lw in self._layers for a in lw.values())
        n += sum(c.nbytes for c in self._child_ptr)
        n += 0 if self._label_order is None else self._label_order.nbytes
        return n + (0 if self._spans is None else self._spans.nbytes)

    @property
    def depth(self) -> int:
        return len(self._layers)

    @property
    def n_labels(self) -> int:
        """Number of last-layer nodes (= labels)."""
        return self._n_labels

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def post(self) -> str:
        return self._post

    def scratch_for_thread(self, beam: int, topk: int) -> Any:
        """This thread's ``qac_scratch_t*`` with room for ``beam`` and ``topk``.

        Kept in a threading.local, so concurrent threads never share one; grown on
        demand (the old one is freed once unreferenced).
        """
        local = self._local
        s = getattr(local, "scratch", None)
        if s is None or beam > local.beam or topk > local.topk:
            b = max(beam, getattr(local, "beam", 0), 16)
            k = max(topk, getattr(local, "topk", 0), 16)
            local.scratch = s = _kernel.scratch_new(self._handle, b, k)
            local.beam, local.topk = b, k
        return s

    @staticmethod
    def check_sizes(beam: int, topk: int) -> tuple[int, int]:
        """(beam, topk) as ints, or InputError unless both are ints in [1, 2**24]."""
        try:
            beam, topk = operator.index(beam), operator.index(topk)
        except TypeError as exc:
            raise InputError(f"beam, topk: expected ints, got {beam!r}, {topk!r}") from exc
        if not 1 <= beam <= 1 << 24:
            raise InputError(f"beam: expected an int in [1, 2**24], got {beam!r}")
        if not 1 <= topk <= 1 << 24:
            raise InputError(f"topk: expected an int in [1, 2**24], got {topk!r}")
        return beam, topk

    def predict_one(
        self,
        idx: np.ndarray,
        val: np.ndarray,
        beam: int = 10,
        topk: int = 10,
        lo: int = 0,
        hi: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top labels of one sparse query, restricted to label ids [lo, hi).

        idx: sorted unique feature ids (int32), val: their values (float32).
        lo, hi: a range of the ids returned (label ids; last-layer node ids without
        label_order), e.g. the sorted-rank range of the labels with a typed prefix.
        Subtrees with no id in the range are pruned by the [min, max] id range below
        each node: exact when a subtree's ids are contiguous, conservative otherwise.
        Returns (int32 ids, float32 scores), best first, of length <= topk.
        """
        beam, topk = self.check_sizes(beam, topk)
        idx = np.ascontiguousarray(idx, dtype=np.int32)
        val = np.ascontiguousarray(val, dtype=np.float32)
        if idx.ndim != 1 or idx.shape != val.shape:
            raise InputError(
                f"idx, val: expected two 1-d arrays of one length, got {idx.shape} and {val.shape}"
            )
        lo = operator.index(lo)
        hi = self._n_labels if hi is None else operator.index(hi)
        if not 0 <= lo <= hi <= self._n_labels:
            raise InputError(f"lo, hi: expected 0 <= lo <= hi <= {self._n_labels}, got {lo}, {hi}")
        scratch = self.scratch_for_thread(beam, topk)
        return _kernel.model_predict(self._handle, scratch, idx, val, beam, topk, lo, hi)

    def predict(
        self, X: sp.csr_matrix, beam: int = 10, topk: int = 10, threads: int = 2
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels of each row of X (csr, n x n_features, unique indices per row).

        Returns int32 ids (n, topk) padded with -1 and float32 scores padded with 0.
        """
        beam, topk = self.check_sizes(beam, topk)
        threads = operator.index(threads)
        if not sp.issparse(X) or X.format != "csr":
            raise InputError(f"X: expected a scipy.sparse csr matrix, got {type(X).__name__}")
        if X.shape[1] != self._n_features:
            raise InputError(f"X: expected {self._n_features} columns, got {X.shape[1]}")
        if not X.has_sorted_indices:
            X = X.sorted_indices()  # a copy; duplicates stay and are rejected by C
        indptr = np.ascontiguousarray(X.indptr, dtype=np.int64)
        idx = np.ascontiguousarray(X.indices, dtype=np.int32)
        val = np.ascontiguousarray(X.data, dtype=np.float32)
        return _kernel.model_predict_batch(self._handle, indptr, idx, val, beam, topk, threads)

"""The shared XMR core: features -> label tree -> XR-Linear rankers -> beam search.

Completion and retrieval are thin layers over :class:`Engine`: they decide what
the texts and labels are, the engine learns to map one to the other and answers
a query with a single call into C (featurize + beam search, GIL released).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.errors import InputError, KernelError, ModelFormatError, check_fields
from qac.features import BlockConfig, Vectorizer
from qac.index.kmeans import build_kmeans_tree, pifa
from qac.index.tree import LabelTree
from qac.model.train import TrainConfig, train_xlinear
from qac.model.weights import LayerWeights
from qac.model.xlinear import XLinearModel
from qac.storage import ModelDir

log = logging.getLogger(__name__)

POSTS = ("l3-hinge", "sigmoid")
#: the widest beam a configuration may ask for (the completer's own limit too)
MAX_BEAM = 1000

#: Builds the label tree from the fitted vectorizer, the features X and labels Y.
IndexFn = Callable[[Vectorizer, sp.csr_matrix, sp.csr_matrix], LabelTree]
#: Per layer of a tree, the instances its rankers learn from (bool masks; None: all).
LayerRowsFn = Callable[[LabelTree], Sequence[np.ndarray | None]]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine featurizes, indexes, trains and searches.

    blocks:        feature blocks (see :mod:`qac.features`).
    branching:     B of the B-ary k-means label tree (a power of two).
    max_leaf_size: most labels in one leaf cluster.
    beam:          default beam width of the search.
    post:          score post-processor, "l3-hinge" or "sigmoid" (PECOS's).
    label_power:   a label scores t(s) ** label_power times its parent's path score
                   (1: PECOS's plain product of post-processed scores; > 1 lets the
                   label's own ranker weigh more than the clusters above it).
    """

    blocks: tuple[BlockConfig, ...]
    branching: int = 16
    max_leaf_size: int = 100
    seed: int = 0
    beam: int = 10
    post: str = "l3-hinge"
    label_power: float = 1.0
    threads: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple) or not self.blocks or not all(
                isinstance(b, BlockConfig) for b in self.blocks):
            raise InputError("EngineConfig.blocks: at least one feature block is needed")
        # every int here also comes from a manifest: a float, a bool or a huge value
        # must fail at load, not on every search
        for name, lo, hi in (("branching", 2, 1 << 16), ("max_leaf_size", 1, None),
                             ("seed", 0, None), ("beam", 1, MAX_BEAM), ("threads", 1, 1024)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (
                    hi is not None and v > hi):
                bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise InputError(f"EngineConfig.{name}: an int {bound}, got {v!r}")
        if self.branching & (self.branching - 1):
            raise InputError(f"EngineConfig.branching: a power of 2, got {self.branching}")
        if not isinstance(self.train, TrainConfig):
            raise InputError("EngineConfig.train: a TrainConfig needed")
        if not isinstance(self.post, str) or self.post not in POSTS:
            raise InputError(f"EngineConfig.post: one of {POSTS}, got {self.post!r}")
        lp = self.label_power
        if isinstance(lp, bool) or not isinstance(lp, int | float) or not (
            math.isfinite(lp) and lp > 0
        ):
            raise InputError(f"EngineConfig.label_power: a finite number > 0, got {lp!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("blocks", "train")}
        d["blocks"] = [b.to_dict() for b in self.blocks]
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineConfig:
        """The inverse of :meth:`to_dict`; bad or unknown keys raise :class:`InputError`."""
        check_fields(cls, d, "EngineConfig")
        d = dict(d)
        if not isinstance(d.get("blocks"), list | tuple) or not isinstance(
                d.get("train", {}), dict):
            raise InputError("EngineConfig: blocks must be a list and train a mapping")
        d["blocks"] = tuple(BlockConfig.from_dict(b) for b in d["blocks"])
        if "train" in d:
            d["train"] = TrainConfig.from_dict(d["train"])
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"EngineConfig: {exc}") from None


class Engine:
    """Vectorizer + label tree + per-layer weights, searchable from text."""

    def __init__(
        self,
        config: EngineConfig,
        vectorizer: Vectorizer,
        tree: LabelTree,
        layers: Sequence[LayerWeights],
        spans: np.ndarray | None = None,
    ) -> None:
        """``spans``: the model's saved label-id spans (see XLinearModel), or None."""
        self.config = config
        self.vectorizer = vectorizer
        self.tree = tree
        self.layers = list(layers)
        #: seconds of each stage of :meth:`fit` (features, tree, rankers); empty when loaded
        self.timings: dict[str, float] = {}
        self.model = XLinearModel(
            tree.child_ptr, tree.label_order, self.layers, vectorizer.n_features, config.post,
            spans=spans, powers=[1.0] * (tree.depth - 1) + [float(config.label_power)],
        )
        self._search = _kernel.TextSearch(vectorizer.handle, self.model)

    @property
    def n_labels(self) -> int:
        return self.tree.n_labels

    # -- training ---------------------------------------------------------
    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        Y: sp.csr_matrix,
        config: EngineConfig,
        contexts: Sequence[str | None] | None = None,
        index: IndexFn | None = None,
        layer_rows: LayerRowsFn | None = None,
        progress: bool = False,
    ) -> Engine:
        """Learn features, tree and rankers for (normalized) texts -> label rows of Y.

        ``index`` builds the label tree; the default is the balanced k-means tree
        on PIFA embeddings (``config.branching``, ``config.max_leaf_size``).
        """
        if len(texts) != Y.shape[0]:
            raise InputError(f"{len(texts)} texts but Y has {Y.shape[0]} rows")
        if Y.shape[1] < 1:
            raise InputError("no labels to learn")
        t0 = time.perf_counter()
        vec = Vectorizer(config.blocks).fit(texts, contexts)
        X = vec.transform(texts, contexts, threads=config.threads)
        t1 = time.perf_counter()
        Y = sp.csr_matrix(Y, dtype=np.float32)
        if index is None:
            tree = build_kmeans_tree(
                pifa(X, Y),
                branching=config.branching,
                max_leaf_size=config.max_leaf_size,
                seed=config.seed,
                threads=config.threads,
                progress=progress,
            )
        else:
            tree = index(vec, X, Y)
        if tree.n_labels != Y.shape[1]:
            raise InputError(f"the index has {tree.n_labels} labels, Y has {Y.shape[1]}")
        t2 = time.perf_counter()
        rows = layer_rows(tree) if layer_rows is not None else None
        layers = train_xlinear(X, Y, tree.child_ptr, tree.label_order, config.train, progress,
                               layer_rows=rows)
        t3 = time.perf_counter()
        log.info(
            "engine fit: %d rows, %d features, %d labels, depth %d; "
            "features %.1fs, tree %.1fs, rankers %.1fs",
            X.shape[0], X.shape[1], Y.shape[1], tree.depth, t1 - t0, t2 - t1, t3 - t2,
        )
        engine = cls(config, vec, tree, layers)
        engine.timings = {"features": t1 - t0, "tree": t2 - t1, "rankers": t3 - t2}
        return engine

    # -- persistence -------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array a loaded engine reads, by file name: the vectorizer's vocabulary
        (``features.*``), the tree (``tree.*``), the label-id spans (``model.spans``) and
        the packed weights (``layer<l>.*``). Loading maps them all read-only: nothing is
        rebuilt per process."""
        out: dict[str, np.ndarray] = {}
        out.update({f"features.{k}": v for k, v in self.vectorizer.arrays().items()})
        out.update({f"tree.{k}": v for k, v in self.tree.arrays().items()})
        out["model.spans"] = self.model.spans()
        for depth, layer in enumerate(self.layers, start=1):
            out.update({f"layer{depth}.{k}": v for k, v in layer.arrays().items()})
        return out

    def manifest_config(self) -> dict[str, Any]:
        return {"engine": self.config.to_dict(), "features": self.vectorizer.config()}

    @classmethod
    def from_model_dir(cls, md: ModelDir) -> Engine:
        cfg = md.config
        try:
            config = md.parse_config("engine", EngineConfig.from_dict)
            vec = Vectorizer.from_parts(cfg["features"], md.arrays("features."))
            tree = LabelTree.from_arrays(md.arrays("tree."))
            layers = [
                LayerWeights.from_arrays(md.arrays(f"layer{d}."))
                for d in range(1, tree.depth + 1)
            ]
            return cls(config, vec, tree, layers, md.array("model.spans"))
        except ModelFormatError:
            raise
        # InputError is a ValueError; KernelError: the kernel's own checks of the arrays
        except (KeyError, TypeError, ValueError, KernelError) as exc:
            raise ModelFormatError(
                f"{md.path}: model arrays or config inconsistent ({exc})", str(md.path)
            ) from exc

    # -- search ---------------------------------------------------------------
    def search(
        self,
        text: str,
        context: str | None = None,
        k: int = 10,
        beam: int | None = None,
        lo: int = 0,
        hi: int | None = None,
    ) -> tuple[list[int], list[float]]:
        """Top-k label ids and scores, best first, for one normalized text (one C call).

        [lo, hi) restricts answers to label ids lo..hi-1 (the beam never enters a
        subtree without such a label). ``k`` and ``beam`` are ints in [1, 2**24]
        (InputError otherwise).
        """
        beam, k = XLinearModel.check_sizes(self.config.beam if beam is None else beam, k)
        return self._search(text, context, k, beam, lo, self.n_labels if hi is None else hi)

    def search_batch(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        k: int = 10,
        beam: int | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k label ids (padded with -1) and scores for many normalized texts."""
        X = self.vectorizer.transform(texts, contexts, threads=threads or self.config.threads)
        return self.model.predict(
            X, beam=beam or self.config.beam, topk=k, threads=threads or self.config.threads
        )

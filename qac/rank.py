"""The pool ranker: gradient-boosted regression trees over the pool's features.

Every keystroke's candidates (the beam's labels, the most popular completions, the
user's past queries, generated queries) form one pool; each row gets the feature
row declared in ``native/qac_answer.h`` (:data:`FEATURES`: engine score and rank,
popularity and its share of the prefix, how often and how recently the user issued
the candidate, in this session and before, agreement with the previous query, the
sources that made it, lengths); one :class:`Forest` scores them all, in C, in the
same call as the beam search.

The forest is fitted with LightGBM's LambdaRank (listwise, NDCG truncated at the
answers shown) on keystroke groups replayed from the last week of the training log:
the row the user went on to submit is the relevant one. LightGBM is used to fit only;
the trees are exported to flat arrays that the kernel walks (``x <= threshold`` goes
left), so answering needs no library. A forest records the names of the features it
was fitted on: a model saved before a feature was added still scores the columns it
knows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from qac import _kernel
from qac.errors import InputError, ModelFormatError

log = logging.getLogger(__name__)

#: the pool's feature columns (native/qac_answer.h, QAC_FEATURES)
FEATURES: tuple[str, ...] = _kernel.FEATURES
#: the candidate sources, in the kernel's numbering
SOURCES: tuple[str, ...] = _kernel.SOURCES
ARRAYS = ("feature", "threshold", "left", "right", "leaf", "roots")
#: the most feature columns a saved forest may name (a bound on its column ids)
MAX_COLUMNS = 4096
_DTYPES = {"feature": np.int32, "threshold": np.float64, "left": np.int32,
           "right": np.int32, "leaf": np.float64, "roots": np.int32}

#: LightGBM settings of the fit: trees of depth at most 6 (a keystroke walks each tree
#: once per candidate; deeper trees did not rank better on the AOL split)
FIT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "lambdarank_truncation_level": 10,
    "eval_at": [10],
    "learning_rate": 0.1,
    "num_leaves": 31,
    "max_depth": 6,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "deterministic": True,
    "force_row_wise": True,
    "seed": 0,
    "verbose": -1,
}


#: the most trees a fit keeps. Early stopping on the fit week's last days kept 203-289
#: on the AOL split, and the first 100 of them ranked the next week as well or better
#: (MRR@10 +0.0006 on the dev week, +0.0013 on the test week) at half the walk.
MAX_TREES = 100


@dataclass(frozen=True)
class Forest:
    """Regression trees in flat arrays (see ``qac_forest_view`` in native/qac_answer.h).

    feature:   int32 [nodes], the column node j splits on (an index into FEATURES).
    threshold: float64 [nodes]; x <= threshold goes to left[j], else right[j].
    left/right: int32 [nodes]; >= 0 a node (always after its parent), < 0 leaf ~c.
    leaf:      float64 [leaves], the leaf values.
    roots:     int32 [trees], each tree's root (a node, or ~leaf).
    base:      added to every score.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    roots: np.ndarray
    base: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.feature)
        if not len(self.threshold) == len(self.left) == len(self.right) == n:
            raise InputError("Forest: feature, threshold, left and right differ in length")
        for name in ARRAYS:
            arr = getattr(self, name)
            if arr.ndim != 1 or arr.dtype != _DTYPES[name]:
                raise InputError(f"Forest.{name}: 1-d {np.dtype(_DTYPES[name]).name} needed, "
                                 f"got {arr.ndim}-d {arr.dtype}")
        self._check_links()

    def _check_links(self) -> None:
        """Every link names a later node or a leaf, every split a known column and a
        number (what the kernel's walk relies on; a saved forest is checked too)."""
        n, n_leaf = len(self.feature), len(self.leaf)
        if n and (int(self.feature.min()) < 0 or int(self.feature.max()) >= len(FEATURES)):
            raise InputError("Forest.feature: a column outside FEATURES")
        if np.isnan(self.threshold).any() or not np.isfinite(self.leaf).all():
            raise InputError("Forest.threshold/leaf: NaN threshold or non-finite leaf")
        if isinstance(self.base, bool) or not isinstance(self.base, int | float) or \
                not np.isfinite(self.base):
            raise InputError(f"Forest.base: a finite number needed, got {self.base!r}")
        node = np.arange(n, dtype=np.int64)
        for name, links, parent in (("left", self.left, node), ("right", self.right, node),
                                    ("roots", self.roots, None)):
            links = links.astype(np.int64)
            inner = links >= 0
            leaf = ~links[~inner]
            if leaf.size and int(leaf.max()) >= n_leaf:
                raise InputError(f"Forest.{name}: a leaf beyond the {n_leaf} leaves")
            if inner.any() and (int(links[inner].max()) >= n or (
                    parent is not None and bool((links[inner] <= parent[inner]).any()))):
                raise InputError(f"Forest.{name}: a node out of range or not after its parent")

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of feature rows X (float [n, len(FEATURES)]): the numpy reference of
        the kernel's walk."""
        X = np.asarray(X, dtype=np.float64)
        out = np.full(len(X), self.base)
        for root in self.roots.tolist():
            node = np.full(len(X), root, dtype=np.int64)
            live = node >= 0
            while live.any():
                j = node[live]
                go_left = X[live, self.feature[j]] <= self.threshold[j]
                node[live] = np.where(go_left, self.left[j], self.right[j])
                live = node >= 0
            out += self.leaf[~node]
        return out

    # -- persistence: arrays plus the names of the columns they split on ----------
    def manifest(self) -> dict[str, Any]:
        used = sorted(set(self.feature.tolist()))
        return {"base": self.base, "trees": self.n_trees,
                "features": {FEATURES[i]: i for i in used}}

    @classmethod
    def from_parts(cls, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                   ) -> Forest:
        """A saved forest, its columns re-mapped by name onto today's FEATURES."""
        try:
            names = dict(manifest["features"])
            base = float(manifest["base"])
            parts = {name: np.asarray(arrays[name]) for name in ARRAYS}
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"ranker: incomplete ({exc})", "ranker") from exc
        unknown = sorted(set(names) - set(FEATURES))
        if unknown:
            raise ModelFormatError(f"ranker: fitted on features this qac does not compute: "
                                   f"{unknown}; retrain the model", "ranker")
        for name, old in names.items():
            if isinstance(old, bool) or not isinstance(old, int) or not 0 <= old < MAX_COLUMNS:
                raise ModelFormatError(f"ranker: bad column {old!r} for {name} (an int "
                                       f"0..{MAX_COLUMNS - 1} needed)", "ranker")
        remap = np.arange(max([*names.values(), len(FEATURES) - 1]) + 1, dtype=np.int32)
        for name, old in names.items():
            remap[old] = FEATURES.index(name)
        feat = parts["feature"]
        if feat.dtype.kind not in "iu":
            raise ModelFormatError(f"ranker: feature must hold integers, got {feat.dtype}",
                                   "ranker")
        if feat.size and (feat.min() < 0 or feat.max() >= len(remap)
                          or not set(feat.tolist()) <= set(names.values())):
            raise ModelFormatError("ranker: a split on a column the manifest does not name",
                                   "ranker")
        parts["feature"] = remap[feat] if feat.size else feat.astype(np.int32)
        try:
            return cls(**{k: np.ascontiguousarray(v, dtype=_DTYPES[k])
                          for k, v in parts.items()}, base=base)
        except InputError as exc:
            raise ModelFormatError(f"ranker: {exc}", "ranker") from exc

    @classmethod
    def empty(cls) -> Forest:
        """No trees: every row scores ``base`` (what collects fitting data needs)."""
        i, f = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float64)
        return cls(i, f, i, i, f, i)

    @classmethod
    def default(cls) -> Forest:
        """The forest shipped with qac (``qac/data/ranker.json``), fitted by ``qac train``
        on the AOL sessions' last training week; used when a log is too small to fit
        one of its own."""
        text = resources.files("qac").joinpath("data/ranker.json").read_text(encoding="utf-8")
        d = json.loads(text)
        return cls.from_parts(d["manifest"], {k: np.asarray(v, dtype=_DTYPES[k])
                                              for k, v in d["arrays"].items()})

    def to_json(self) -> str:
        """The form of ``qac/data/ranker.json``."""
        return json.dumps({"manifest": self.manifest(),
                           "arrays": {k: v.tolist() for k, v in self.arrays().items()}})

    # -- fitting --------------------------------------------------------------------
    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, groups: Sequence[int], valid: float = 0.15,
            rounds: int = MAX_TREES, threads: int = 2,
            params: Mapping[str, Any] | None = None
            ) -> Forest:
        """LambdaRank on keystroke groups: rows X (float [n, len(FEATURES)]), relevance
        y (1 for the submitted query's row), ``groups`` the rows of each keystroke in
        order. The last ``valid`` share of the groups (the latest, when they are in
        time order) picks the number of trees (early stopping), at most ``rounds``."""
        import lightgbm as lgb

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        sizes = np.asarray(groups, dtype=np.int64)
        if X.ndim != 2 or X.shape[1] != len(FEATURES):
            raise InputError(f"Forest.fit: rows of {len(FEATURES)} features needed, "
                             f"got {X.shape}")
        if len(y) != len(X) or int(sizes.sum()) != len(X) or (sizes < 1).any():
            raise InputError("Forest.fit: X, y and the group sizes disagree")
        if len(sizes) < 10:
            raise InputError(f"Forest.fit: {len(sizes)} groups is too few to fit a ranker")
        cut = max(1, min(len(sizes) - 1, int(round(len(sizes) * (1 - valid)))))
        at = int(sizes[:cut].sum())
        p = {**FIT_PARAMS, "num_threads": threads, **(params or {})}
        train = lgb.Dataset(X[:at], y[:at], group=sizes[:cut], free_raw_data=True)
        check = lgb.Dataset(X[at:], y[at:], group=sizes[cut:], reference=train)
        booster = lgb.train(p, train, num_boost_round=rounds, valid_sets=[check],
                            callbacks=[lgb.early_stopping(50, verbose=False)])
        best = booster.best_iteration or rounds
        log.info("ranker fit: %d keystrokes, %d rows, %d trees (ndcg@10 on the last %d: "
                 "%.4f)", len(sizes), len(X), best, len(sizes) - cut,
                 booster.best_score["valid_0"].get("ndcg@10", float("nan")))
        return cls.from_lightgbm(booster.dump_model(num_iteration=best))

    @classmethod
    def from_lightgbm(cls, dump: Mapping[str, Any]) -> Forest:
        """Flatten LightGBM's ``dump_model()`` (numerical "<=" splits only), nodes in
        preorder so that every child comes after its parent."""
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        leaf: list[float] = []
        roots: list[int] = []

        def walk(t: Mapping[str, Any]) -> int:
            if "leaf_value" in t:
                leaf.append(float(t["leaf_value"]))
                return ~(len(leaf) - 1)
            if t.get("decision_type") != "<=" or t.get("missing_type") not in ("None", "NaN"):
                raise InputError(f"ranker: unsupported split {t.get('decision_type')!r} "
                                 f"/ missing {t.get('missing_type')!r}")
            j = len(feature)
            feature.append(int(t["split_feature"]))
            threshold.append(float(t["threshold"]))
            left.append(0)
            right.append(0)
            left[j] = walk(t["left_child"])
            right[j] = walk(t["right_child"])
            return j

        for info in dump["tree_info"]:
            roots.append(walk(info["tree_structure"]))
        if any(f >= len(FEATURES) for f in feature):
            raise InputError("ranker: a split on a column beyond FEATURES")
        return cls(np.array(feature, dtype=np.int32), np.array(threshold, dtype=np.float64),
                   np.array(left, dtype=np.int32), np.array(right, dtype=np.int32),
                   np.array(leaf, dtype=np.float64), np.array(roots, dtype=np.int32))

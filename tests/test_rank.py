"""The pool ranker's forest: LightGBM's trees flattened, scored in numpy and in C alike,
saved by feature name."""

from __future__ import annotations

import numpy as np
import pytest

from qac import _kernel
from qac.complete import LabelSet
from qac.errors import InputError, ModelFormatError
from qac.rank import FEATURES, MAX_TREES, SOURCES, Forest


def _groups(rng: np.random.Generator, n: int = 300, size: int = 8
            ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    X = rng.normal(size=(n * size, len(FEATURES)))
    y = np.zeros(n * size, dtype=np.int32)
    for g in range(n):
        rows = slice(g * size, (g + 1) * size)
        # the relevant row is the one with the largest feature 3 + noise on feature 7
        y[g * size + int(np.argmax(X[rows, 3] + 0.3 * X[rows, 7]))] = 1
    return X, y, [size] * n


def test_fit_learns_and_flattening_matches_lightgbm() -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X, y, sizes = _groups(rng)
    forest = Forest.fit(X, y, sizes, threads=1)
    assert 1 <= forest.n_trees <= MAX_TREES
    assert 1 <= Forest.fit(X, y, sizes, threads=1, rounds=3).n_trees <= 3
    # the same trees as LightGBM's own predict
    booster = lgb.train({"objective": "lambdarank", "verbose": -1, "num_leaves": 7,
                         "min_data_in_leaf": 5, "deterministic": True, "num_threads": 1},
                        lgb.Dataset(X, y, group=sizes), num_boost_round=5)
    flat = Forest.from_lightgbm(booster.dump_model())
    np.testing.assert_allclose(flat.score(X), booster.predict(X), rtol=1e-9, atol=1e-9)
    # it ranks held-out groups: the relevant row comes first far more often than chance
    Xt, yt, st = _groups(np.random.default_rng(1), n=100)
    s = forest.score(Xt)
    hits = sum(int(np.argmax(s[i * 8:(i + 1) * 8]) == np.argmax(yt[i * 8:(i + 1) * 8]))
               for i in range(100))
    assert hits > 60


def test_kernel_scores_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    X, y, sizes = _groups(rng, n=60)
    forest = Forest.fit(X, y, sizes, threads=1, params={"min_data_in_leaf": 5})
    labels = ["a", "ab", "abc", "b"]
    ls = LabelSet.build(labels, [1] * 4, [5, 3, 2, 1])
    a = _kernel.Answerer(None, None, ls.arrays(), forest.arrays(), forest.base)
    hist = _kernel.Texts(["abd", "ab"], [2, 1], [100.0, 50.0])
    mpc = SOURCES.index("mpc")
    _, _, scores, refs, _, _, Xc, _ = a.answer(b"a", b"b", _kernel.Texts([]), hist, ["a", "abc"],
                                   [mpc, mpc], [5, 2], [5, 2], 200.0, 10, 0, 10, True)
    assert Xc is not None and len(refs) == 4
    np.testing.assert_allclose(scores, forest.score(Xc), rtol=1e-12)


def test_saved_by_name_and_remapped() -> None:
    f = Forest(np.array([FEATURES.index("logpop")], np.int32), np.array([1.5]),
               np.array([-1], np.int32), np.array([-2], np.int32), np.array([0.0, 1.0]),
               np.array([0], np.int32), base=0.5)
    m = f.manifest()
    assert m["features"] == {"logpop": FEATURES.index("logpop")}
    back = Forest.from_parts(m, f.arrays())
    x = np.zeros((2, len(FEATURES)))
    x[1, FEATURES.index("logpop")] = 2.0
    assert back.score(x).tolist() == [0.5, 1.5]
    # an older model's column numbers are re-mapped by name
    old = {**m, "features": {"logpop": 0}}
    arrays = {**f.arrays(), "feature": np.array([0], np.int32)}
    assert Forest.from_parts(old, arrays).feature.tolist() == [FEATURES.index("logpop")]
    with pytest.raises(ModelFormatError, match="retrain"):
        Forest.from_parts({**m, "features": {"no_such_feature": 0}}, arrays)
    with pytest.raises(ModelFormatError):
        Forest.from_parts({**m, "features": {}}, f.arrays())  # a split on an unnamed column
    with pytest.raises(ModelFormatError):
        Forest.from_parts({"base": 0.0}, f.arrays())


def test_shipped_forest_and_bad_fits() -> None:
    shipped = Forest.default()
    assert shipped.n_trees > 10
    assert Forest.empty().score(np.zeros((3, len(FEATURES)))).tolist() == [0.0] * 3
    with pytest.raises(InputError):
        Forest.fit(np.zeros((4, 3)), np.zeros(4), [4])
    with pytest.raises(InputError):
        Forest.fit(np.zeros((4, len(FEATURES))), np.zeros(4), [4])  # too few groups

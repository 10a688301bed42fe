"""The long-tail pool in C (native/longtail.c): merge, features, order, and its boundary.

Feature values are read through the scores: with the weights set to one feature's
unit vector, each row's score is that feature. The whole ranker is held equal to
the Python reference (LongTail.pool) in test_longtail.py.
"""

import math
from typing import Any

import numpy as np
import pytest

from qac import _kernel
from qac.errors import InputError, KernelError
from qac.longtail import FEATURES, SOURCES

ffi, lib = _kernel.ffi, _kernel.lib
LABELS = ["paris", "paris café", "paris flights", "paris hotels"]
LOGPOP = np.log1p([4.0, 0.0, 2.0, 3.0])
SRC = {s: i for i, s in enumerate(SOURCES)}


def _ranker(weights: Any = None, labels: list[str] = LABELS,
            logpop: np.ndarray = LOGPOP) -> _kernel.PoolRanker:
    w = np.ones(len(FEATURES)) if weights is None else np.asarray(weights, dtype=np.float64)
    return _kernel.PoolRanker("\n".join(labels).encode(), len(labels), logpop, w)


def _rank(ranker: _kernel.PoolRanker, prefix: str, prev: str, ids: list[int],
          scores: list[float], extra: list[tuple[str, str, int, int]], cap: int = 64,
          out_cap: int | None = None, raw_extra: bytes | None = None, prev_cap: int = 256
          ) -> tuple[int, list[tuple[str, str, float]]]:
    """(status, rows best first as (text, source, score)); extra: (text, source, num, pop)."""
    s = ffi.new("qac_pool_scratch_t **")
    _kernel.check(lib.qac_pool_scratch_new(cap, prev_cap, s), "scratch")
    scratch = ffi.gc(s[0], lib.qac_pool_scratch_free)
    texts = [t for t, _, _, _ in extra]
    blob = raw_extra if raw_extra is not None else "\n".join(texts).encode()
    out_cap = cap if out_cap is None else out_cap
    ref, src = ffi.new("int32_t[]", out_cap + 1), ffi.new("int32_t[]", out_cap + 1)
    score, n = ffi.new("double[]", out_cap + 1), ffi.new("size_t *")
    p, q = prefix.encode(), prev.encode()
    rc = lib.qac_rank_pool(
        ranker.handle, scratch, p, len(p), q, len(q), ids, scores, len(ids), blob, len(blob),
        [SRC[g] for _, g, _, _ in extra], [c for _, _, c, _ in extra],
        [c for _, _, _, c in extra], len(extra), ref, src, score, out_cap, n)
    rows = [(LABELS[ref[i]] if ref[i] >= 0 else texts[-1 - ref[i]], SOURCES[src[i]], score[i])
            for i in range(n[0])]
    return rc, rows


def _feature(name: str, prefix: str, prev: str, ids: list[int], scores: list[float],
             extra: list[tuple[str, str, int, int]]) -> dict[str, float]:
    w = np.zeros(len(FEATURES))
    w[FEATURES.index(name)] = 1.0
    rc, rows = _rank(_ranker(w), prefix, prev, ids, scores, extra, cap=1024, prev_cap=4096)
    assert rc == 0
    return {t: s for t, _, s in rows}


EXTRA = [("paris hotels", "mpc", 3, 3), ("paris café au lait", "word", 7, 0),
         ("paris jazz", "history", 2, 5), ("paris jazz", "suffix", 4, 5),
         ("paris jazz", "history", 0, 5), ("zoo", "history", 1, 0), ("paris", "session", 9, 4)]


def test_rows_are_merged_named_and_flagged() -> None:
    rc, rows = _rank(_ranker(), "pa", "paris", [0, 3, 2], [0.9, 0.5, 0.25], EXTRA)
    assert rc == 0
    got = {t: s for t, s, _ in rows}
    # the previous query is never a row, a text that does not start with the prefix
    # is skipped, a text made twice is one row named after its first source
    assert got == {"paris hotels": "model", "paris flights": "model",
                   "paris café au lait": "word", "paris jazz": "history"}
    flags = {name: _feature(f"is_{name}", "pa", "paris", [0, 3, 2], [0.9, 0.5, 0.25], EXTRA)
             for name in SOURCES}
    assert flags["mpc"]["paris hotels"] == 1 and flags["model"]["paris hotels"] == 1
    assert flags["suffix"]["paris jazz"] == 1 and flags["history"]["paris jazz"] == 1
    assert flags["model"]["paris jazz"] == 0 and flags["word"]["paris hotels"] == 0


def test_feature_values() -> None:
    args = ("pa", "paris", [0, 3, 2], [0.9, 0.5, 0.25], EXTRA)

    def f(name: str) -> dict[str, float]:
        return _feature(name, *args)

    # model rows: rank counted after the dropped previous query, clipped log score
    assert f("model_rank") == {"paris hotels": 1.0, "paris flights": 0.5,
                               "paris café au lait": 0, "paris jazz": 0}
    assert f("model_logscore")["paris flights"] == pytest.approx(math.log(0.25))
    assert f("model_logscore*L")["paris flights"] == pytest.approx(math.log(0.25) * 0.2)
    # popularity: the label's for model rows, log1p(pop) for new ones
    assert f("logpop")["paris hotels"] == pytest.approx(math.log1p(3))
    assert f("logpop")["paris jazz"] == pytest.approx(math.log1p(5))
    assert f("seen") == {"paris hotels": 1, "paris flights": 1, "paris café au lait": 0,
                         "paris jazz": 1}
    # generator counts: the largest log1p(count) of the non-MPC, non-history makers;
    # history: the best (smallest) recency rank
    assert f("gen_logcount")["paris jazz"] == pytest.approx(math.log1p(4))
    assert f("gen_logcount")["paris hotels"] == 0
    assert f("hist_recency")["paris jazz"] == 1.0
    assert f("hist_recency*L")["paris jazz"] == pytest.approx(0.2)
    # session agreement (new rows only): words after the prefix's last space
    assert f("prev_overlap")["paris jazz"] == 0.5
    assert f("extends_prev")["paris jazz"] == 1 and f("extends_prev")["paris hotels"] == 0
    # shape in words and code points beyond the prefix ("é" is one character)
    assert f("added_words")["paris café au lait"] == 3
    assert f("added_chars")["paris café au lait"] == pytest.approx(1.6)


def test_overlap_counts_distinct_words_of_the_previous_query() -> None:
    extra = [("new york new york", "word", 1, 0), ("new jersey", "word", 1, 0)]
    got = _feature("prev_overlap", "new y", "new york", [], [], extra)
    # pieces after the prefix's last space: "york", "new", "york" -> {york, new} of 3
    assert got["new york new york"] == pytest.approx(2 / 3)
    assert _feature("prev_overlap", "new ", "", [], [], extra)["new jersey"] == 0


def test_overlap_on_long_texts_is_the_set_formula() -> None:
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(40)] + ["", "é"]
    prev = " ".join(rng.choice(words, size=300))
    extra = [(" ".join(["w"] + list(rng.choice(words, size=int(rng.integers(1, 200))))),
              "history", i, 0) for i in range(300)]
    got = _feature("prev_overlap", "w ", prev, [], [], extra)
    prev_words = set(prev.split(" "))
    for text, _, _, _ in extra:
        new = text[2:].split(" ")
        assert got[text] == pytest.approx(len(prev_words.intersection(new)) / len(new))
    # a previous query longer than the scratch holds is refused, not read past
    rc, rows = _rank(_ranker(), "w ", prev, [], [], extra, cap=512, prev_cap=64)
    assert rc == lib.QAC_E_CAPACITY and rows == []


def test_order_is_by_score_then_pool_order() -> None:
    w = np.zeros(len(FEATURES))
    w[FEATURES.index("is_history")] = 1.0
    extra = [("paris b", "mpc", 0, 0), ("paris a", "history", 3, 0), ("paris c", "mpc", 0, 0),
             ("paris d", "history", 1, 0)]
    rc, rows = _rank(_ranker(w), "paris", "", [3], [0.5], extra)
    assert rc == 0
    assert [t for t, _, _ in rows] == ["paris a", "paris d", "paris hotels", "paris b",
                                       "paris c"]


def test_many_rows_and_reuse_after_errors() -> None:
    r = _ranker()
    extra = [(f"paris {i}", "history", i, 0) for i in range(3000)]
    extra += extra[::7]
    rc, rows = _rank(r, "paris", "", [2, 3], [0.5, 0.4], extra, cap=4096)
    assert rc == 0 and len(rows) == 3002 and len({t for t, _, _ in rows}) == 3002
    # a failing call leaves the scratch clean for the next one
    s = ffi.new("qac_pool_scratch_t **")
    _kernel.check(lib.qac_pool_scratch_new(8, 16, s), "scratch")
    scratch = ffi.gc(s[0], lib.qac_pool_scratch_free)
    out = [ffi.new("int32_t[]", 8), ffi.new("int32_t[]", 8), ffi.new("double[]", 8)]
    n = ffi.new("size_t *")
    texts = "\n".join(f"paris {i}" for i in range(20)).encode()
    too_many = lib.qac_rank_pool(r.handle, scratch, b"paris", 5, b"", 0, [0, 3], [0.5, 0.4], 2,
                                 texts, len(texts), [5] * 20, list(range(20)), [0] * 20, 20,
                                 *out, 8, n)
    assert too_many == lib.QAC_E_CAPACITY and n[0] == 0
    ok = lib.qac_rank_pool(r.handle, scratch, b"paris", 5, b"", 0, [0, 3], [0.5, 0.4], 2,
                           b"paris 1", 7, [5], [0], [0], 1, *out, 8, n)
    assert ok == 0 and n[0] == 3


@pytest.mark.parametrize("case, code", [
    ("label id out of range", "QAC_E_RANGE"),
    ("negative label id", "QAC_E_RANGE"),
    ("repeated label", "QAC_E_INPUT"),
    ("more texts than n_extra", "QAC_E_INPUT"),
    ("fewer texts than n_extra", "QAC_E_INPUT"),
    ("source model", "QAC_E_INPUT"),
    ("source past the last", "QAC_E_INPUT"),
    ("negative number", "QAC_E_INPUT"),
    ("negative popularity", "QAC_E_INPUT"),
    ("output too small", "QAC_E_CAPACITY"),
])
def test_bad_pools_are_refused(case: str, code: str) -> None:
    r = _ranker()
    ids, scores = [0, 2], [0.5, 0.4]
    extra = [("paris x", "word", 1, 0), ("paris y", "mpc", 1, 1)]
    kw: dict[str, Any] = {}
    if case == "label id out of range":
        ids = [0, len(LABELS)]
    elif case == "negative label id":
        ids = [-1]
        scores = [0.5]
    elif case == "repeated label":
        ids = [2, 2]
    elif case == "more texts than n_extra":
        kw["raw_extra"] = b"paris x\nparis y\nparis z"
    elif case == "fewer texts than n_extra":
        kw["raw_extra"] = b"paris x"
    elif case == "source model":
        extra[0] = ("paris x", "model", 1, 0)
    elif case == "source past the last":
        SRC["bogus"] = len(SOURCES)
        extra[0] = ("paris x", "bogus", 1, 0)
    elif case == "negative number":
        extra[0] = ("paris x", "word", -1, 0)
    elif case == "negative popularity":
        extra[0] = ("paris x", "word", 1, -2)
    elif case == "output too small":
        kw["out_cap"] = 3
    try:
        rc, rows = _rank(r, "pa", "", ids, scores, extra, **kw)
    finally:
        SRC.pop("bogus", None)
    assert rc == getattr(lib, code) and rows == []


def test_bad_rankers_are_refused() -> None:
    with pytest.raises(KernelError, match="out of range"):
        # the blob holds 3 lines, 4 labels said
        _kernel.PoolRanker("\n".join(LABELS[:3]).encode(), 4, LOGPOP, np.ones(len(FEATURES)))
    with pytest.raises(KernelError, match="out of range"):
        _kernel.PoolRanker(b"a\nb\nc", 2, np.zeros(2), np.ones(len(FEATURES)))
    with pytest.raises(KernelError, match="out of range"):
        _ranker(logpop=np.array([0.0, -1.0, 0.0, 0.0]))
    with pytest.raises(InputError):
        _ranker(weights=np.ones(len(FEATURES) - 1))
    with pytest.raises(InputError):
        _ranker(weights=[math.nan] + [1.0] * (len(FEATURES) - 1))
    with pytest.raises(InputError):
        _kernel.PoolRanker(b"a", 1, np.zeros(2), np.ones(len(FEATURES)))
    empty = _kernel.PoolRanker(b"", 0, np.zeros(0), np.ones(len(FEATURES)))
    rc, rows = _rank(empty, "pa", "", [], [], [("paris", "mpc", 2, 2)])
    assert rc == 0 and [t for t, _, _ in rows] == ["paris"]


def test_null_pointers_are_refused() -> None:
    n = ffi.new("size_t *")
    assert lib.qac_rank_pool(ffi.NULL, ffi.NULL, b"", 0, b"", 0, ffi.NULL, ffi.NULL, 0,
                             ffi.NULL, 0, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL,
                             ffi.NULL, 0, n) == lib.QAC_E_INPUT
    s = ffi.new("qac_pool_scratch_t **")
    assert lib.qac_pool_scratch_new(0, 16, s) == lib.QAC_E_INPUT
    _kernel.check(lib.qac_pool_scratch_new(8, 16, s), "scratch")
    scratch = ffi.gc(s[0], lib.qac_pool_scratch_free)
    out = [ffi.new("int32_t[]", 8), ffi.new("int32_t[]", 8), ffi.new("double[]", 8)]
    # one generated text said, but no texts given
    assert lib.qac_rank_pool(_ranker().handle, scratch, b"pa", 2, ffi.NULL, 0, ffi.NULL,
                             ffi.NULL, 0, ffi.NULL, 0, [1], [0], [0], 1, *out, 8,
                             n) == lib.QAC_E_INPUT
    r = ffi.new("qac_ranker_t **")
    assert lib.qac_ranker_new(ffi.NULL, 5, 1, ffi.NULL, 1, ffi.NULL, 0, r) == lib.QAC_E_INPUT

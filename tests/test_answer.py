"""The C answerer (native/answer.c) against its plain-Python reference (tests/reference.py):
the pool's rows, their feature vectors, the forest's scores and the top-k order."""

from __future__ import annotations

import gc
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import answer_pool

from qac import _kernel
from qac.complete import LabelSet
from qac.errors import InputError, KernelError, ModelFormatError
from qac.rank import FEATURES, SOURCES, Forest

S = {s: i for i, s in enumerate(SOURCES)}
NOW = 1_000_000.0


def random_forest(rng: np.random.Generator, trees: int = 5, depth: int = 3) -> Forest:
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    leaf: list[float] = []
    roots: list[int] = []

    def grow(d: int) -> int:
        if d == 0 or rng.random() < 0.2:
            leaf.append(float(rng.normal()))
            return ~(len(leaf) - 1)
        j = len(feature)
        feature.append(int(rng.integers(len(FEATURES))))
        threshold.append(float(rng.normal()))
        left.append(0)
        right.append(0)
        left[j] = grow(d - 1)
        right[j] = grow(d - 1)
        return j

    for _ in range(trees):
        roots.append(grow(depth))
    i32, f64 = np.int32, np.float64
    return Forest(np.array(feature, i32), np.array(threshold, f64), np.array(left, i32),
                  np.array(right, i32), np.array(leaf, f64), np.array(roots, i32), base=0.25)


def answerer(labels: list[str], popularity: list[int], forest: Forest,
             engine: object = None, counts: list[int] | None = None,
             recent: list[int] | None = None) -> _kernel.Answerer:
    ls = LabelSet.build(labels, counts or [1] * len(labels), popularity, recent)
    feat = model = None
    if engine is not None:
        feat, model = engine.vectorizer.handle, engine.model.handle  # type: ignore[attr-defined]
    return _kernel.Answerer(feat, model, ls.arrays(), forest.arrays(), forest.base, keep=engine)


def run(a: _kernel.Answerer, prefix: str, prev: str, history: list, session: list,
        extra: list, k: int = 10, features: bool = False, n_model: int = 0,
        labels: list[str] | None = None, extra_live: list[float] | None = None,
        label_live: np.ndarray | None = None, live_scale: float = 1.0
        ) -> tuple[list[int], list[int], list[float], np.ndarray | None]:
    hist = _kernel.Texts([h[0] for h in history], [h[1] for h in history],
                         [h[2] for h in history])
    sess = _kernel.Texts([s[0] for s in session], None, [s[1] for s in session])
    texts, srcs, scores, refs, _, _, X, _ = a.answer(
        prefix.encode(), prev.encode(), sess, hist, [e[0] for e in extra],
        [e[1] for e in extra], [e[2] for e in extra], [e[3] for e in extra], NOW, 10, n_model,
        k, features, extra_live=extra_live, label_live=label_live, live_scale=live_scale)
    if labels is not None:  # the texts written by C are the texts the refs name
        assert texts == [text_of(r, labels, history, session, extra) for r in refs]
    assert len(texts) == len(refs)
    return refs, srcs, scores, X


def text_of(ref: int, labels: list[str], history: list, session: list, extra: list) -> str:
    if ref >= 0:
        return labels[ref]
    j = -1 - ref
    for part in (extra, history, session):
        if j < len(part):
            return str(part[j][0])
        j -= len(part)
    raise AssertionError(f"ref {ref} out of range")


words = st.sampled_from(["a", "ab", "abc", "b", "ba", "bab", "c"])
texts = st.lists(words, min_size=1, max_size=3).map(" ".join)
times = st.one_of(st.just(0.0), st.floats(NOW - 1e6, NOW + 100))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=st.lists(texts, min_size=1, max_size=12, unique=True),
       data=st.data())
def test_pool_features_and_scores_match_the_reference(labels: list[str], data: st.DataObject
                                                      ) -> None:
    labels = sorted(labels)
    popularity = data.draw(st.lists(st.integers(0, 50), min_size=len(labels),
                                    max_size=len(labels)))
    prefix = data.draw(st.sampled_from(["", "a", "ab", "a ", "b", "ab a", "c", "x"]))
    prev = data.draw(st.one_of(st.just(""), texts))
    history = data.draw(st.lists(st.tuples(texts, st.integers(1, 9), times), max_size=6))
    session = data.draw(st.lists(st.tuples(texts, times), max_size=4))
    extra = data.draw(st.lists(st.tuples(
        texts, st.sampled_from([S["mpc"], S["session"], S["suffix"], S["word"], S["fresh"]]),
        st.integers(0, 100), st.integers(0, 100)), max_size=8))
    counts = data.draw(st.lists(st.integers(0, 60), min_size=len(labels), max_size=len(labels)))
    recent = [data.draw(st.integers(0, c)) for c in counts]
    # live counts (qac.live): per label (scaled to now) and per extra text, or none
    live = data.draw(st.booleans())
    label_live = (np.array(data.draw(st.lists(st.floats(0, 1e3), min_size=len(labels),
                                               max_size=len(labels))), dtype=np.float64)
                  if live else None)
    live_scale = data.draw(st.floats(0, 4)) if live else 1.0
    extra_live = (data.draw(st.lists(st.floats(0, 1e3), min_size=len(extra),
                                     max_size=len(extra))) if live else None)
    forest = random_forest(np.random.default_rng(len(labels)))
    a = answerer(labels, popularity, forest, counts=counts, recent=recent)
    ref_rows = answer_pool(labels, popularity, prefix, prev, [], history, session, extra, NOW,
                           counts, recent, None if label_live is None else label_live.tolist(),
                           live_scale, extra_live)
    refs, srcs, scores, X = run(a, prefix, prev, history, session, extra, features=True,
                                labels=labels, extra_live=extra_live, label_live=label_live,
                                live_scale=live_scale)
    assert X is not None
    got = [text_of(r, labels, history, session, extra) for r in refs]
    assert got == [r["text"] for r in ref_rows]
    assert refs == [r["ref"] for r in ref_rows]
    want = np.array([r["x"] for r in ref_rows]).reshape(len(ref_rows), len(FEATURES))
    np.testing.assert_allclose(X, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scores, forest.score(want), rtol=1e-12, atol=1e-12)
    # every answer starts with the prefix, appears once, and is never the previous query
    assert all(t.startswith(prefix) and t != prev for t in got) and len(set(got)) == len(got)
    # the top-k path: the same rows, best first (ties: pool order)
    k = data.draw(st.integers(1, 12))
    top_refs, top_srcs, top_scores, _ = run(a, prefix, prev, history, session, extra, k=k,
                                            labels=labels, extra_live=extra_live,
                                            label_live=label_live, live_scale=live_scale)
    order = sorted(range(len(got)), key=lambda i: (-scores[i], i))[:k]
    assert top_refs == [refs[i] for i in order]
    assert top_scores == [scores[i] for i in order]
    assert top_srcs == [srcs[i] for i in order]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=st.lists(texts, min_size=1, max_size=12, unique=True), data=st.data())
def test_the_answerers_own_mpc_list_is_the_one_python_gives(labels: list[str],
                                                           data: st.DataObject) -> None:
    """n_mpc: C lists the prefix's most popular labels itself (the range-maximum index),
    and the pool is the one made from MPC's list given as extra texts: the same rows,
    in the same order, with the same features and scores."""
    labels = sorted(labels)
    pops = data.draw(st.lists(st.integers(0, 4), min_size=len(labels), max_size=len(labels)))
    prefix = data.draw(st.sampled_from(["", "a", "ab", "a ", "b", "c", "x"]))
    prev = data.draw(st.one_of(st.just(""), st.sampled_from(labels), texts))
    m = data.draw(st.integers(1, 8))
    gen = data.draw(st.lists(st.tuples(
        texts, st.sampled_from([S["session"], S["suffix"], S["word"]]), st.integers(0, 9)),
        max_size=4))
    history = data.draw(st.lists(st.tuples(texts, st.integers(1, 9), times), max_size=3))
    pop = dict(zip(labels, pops, strict=True))
    # MPC's list: popularity > 0, most popular first, ties by text
    mpc = sorted((t for t in labels if t.startswith(prefix) and pop[t] > 0),
                 key=lambda t: (-pop[t], t))[:m]
    a = answerer(labels, pops, random_forest(np.random.default_rng(len(labels))))
    hist = _kernel.Texts([h[0] for h in history], [h[1] for h in history],
                         [h[2] for h in history])

    def ask(extra: list, n_mpc: int, features: bool, k: int = 10) -> _kernel.Answer:
        return a.answer(prefix.encode(), prev.encode(), _kernel.Texts([]), hist,
                        [e[0] for e in extra], [e[1] for e in extra], [e[2] for e in extra],
                        [e[3] for e in extra], NOW, 10, 0, k, features, n_mpc=n_mpc)

    gen4 = [(t, g, c, pop.get(t, 0)) for t, g, c in gen]
    given_ = ask([(t, S["mpc"], pop[t], pop[t]) for t in mpc] + gen4, 0, True)
    own = ask(gen4, m, True)
    assert own.texts == given_.texts and own.sources == given_.sources
    assert own.features is not None and given_.features is not None
    np.testing.assert_array_equal(own.features, given_.features)
    assert own.scores == given_.scores
    assert [t for t, g in zip(own.texts, own.sources, strict=True) if g == S["mpc"]] == [
        t for t in mpc if t != prev and t not in {h[0] for h in history}]
    k = data.draw(st.integers(1, 12))
    top_given, top_own = ask([(t, S["mpc"], pop[t], pop[t]) for t in mpc] + gen4, 0, False, k), \
        ask(gen4, m, False, k)
    assert top_own.texts == top_given.texts and top_own.scores == top_given.scores


def test_sources_shown_and_history_ranks() -> None:
    labels = ["weather", "weather channel", "web md"]
    a = answerer(labels, [10, 5, 1], Forest.empty())
    history = [("weather channel", 3, NOW - 3600.0), ("webkinz", 1, NOW - 60.0)]
    session = [("web md", NOW - 30.0)]
    extra = [("weather", S["mpc"], 10, 10), ("web md", S["mpc"], 1, 1),
             ("webkinz", S["word"], 4, 0)]
    refs, srcs, _, X = run(a, "we", "", history, session, extra, features=True)
    assert X is not None
    rows = {text_of(r, labels, history, session, extra): (SOURCES[s], x)
            for r, s, x in zip(refs, srcs, X, strict=True)}
    F = {f: i for i, f in enumerate(FEATURES)}
    # a past query of the user is shown as "history", whatever else made it
    assert rows["webkinz"][0] == "history" and rows["weather channel"][0] == "history"
    assert rows["weather"][0] == "mpc" and rows["web md"][0] == "mpc"
    # recency rank among the user's matches: webkinz (60 s), then weather channel (1 h)
    assert rows["webkinz"][1][F["hist_rank"]] == 1.0
    assert rows["weather channel"][1][F["hist_rank"]] == 0.5
    assert rows["weather channel"][1][F["hist_count"]] == pytest.approx(math.log1p(3))
    assert rows["weather channel"][1][F["hist_age"]] == pytest.approx(math.log1p(3600.0))
    assert rows["weather"][1][F["hist_age"]] == 20.0 and rows["weather"][1][F["hist_rank"]] == 0
    # this session's queries mark the rows they repeat; they make no row of their own
    assert rows["web md"][1][F["sess_count"]] == 1.0 and rows["web md"][1][F["sess_rank"]] == 1
    assert rows["webkinz"][1][F["is_label"]] == 0.0 and rows["weather"][1][F["is_label"]] == 1.0
    refs, _, _, _ = run(a, "we", "", [], [("webkinz", NOW)], [], features=True)
    assert refs == []


def test_bad_input_is_refused_and_leaves_the_scratch_clean() -> None:
    labels = ["a", "ab", "b"]
    a = answerer(labels, [1, 2, 3], Forest.empty())
    with pytest.raises(InputError):
        run(a, "a", "", [("ab", 1, float("nan"))], [], [])
    with pytest.raises(InputError):
        run(a, "a", "", [], [], [("ab", S["model"], 1, 1)])  # the beam is not an extra
    with pytest.raises(InputError):
        run(a, "a", "", [], [], [("ab", S["mpc"], -1, 1)])
    with pytest.raises(InputError):
        run(a, "a", "", [("ab", 0, 0.0)], [], [])  # a count below 1
    with pytest.raises(InputError):
        run(a, "a", "", [], [], [], k=0)
    with pytest.raises(InputError):
        a.answer(b"a", b"", _kernel.Texts([]), _kernel.Texts([]), ["ab"], [S["mpc"]], [], [1],
                 NOW, 10, 0, 5)
    # the answerer's own MPC list: at most QAC_MAX_MPC, and never beside a given one
    empty = _kernel.Texts([])
    for bad in (-1, _kernel.MAX_MPC + 1, True, 2.0):
        with pytest.raises(InputError, match="n_mpc"):
            a.answer(b"a", b"", empty, empty, [], [], [], [], NOW, 10, 0, 5, n_mpc=bad)
    with pytest.raises(InputError):
        a.answer(b"a", b"", empty, empty, ["ab"], [S["mpc"]], [2], [2], NOW, 10, 0, 5, n_mpc=3)
    # a bad call leaves nothing behind: the next answer is whole
    refs, _, _, _ = run(a, "a", "", [("ab", 1, NOW)], [], [("a", S["mpc"], 1, 1)])
    assert sorted(text_of(r, labels, [("ab", 1, NOW)], [], [("a", S["mpc"], 1, 1)])
                  for r in refs) == ["a", "ab"]


def test_growing_buffers_never_overflow() -> None:
    """Issue 15 D1's sequence: a normal k, an impossible one, then a big one; the
    buffers are allocated before their size is recorded."""
    labels = [f"q{i:04d}" for i in range(3000)]
    a = answerer(labels, list(range(3000)), Forest.empty())
    history = [(t, 1, NOW - i) for i, t in enumerate(labels)]
    assert len(run(a, "q", "", history[:5], [], [], k=10)[0]) == 5
    with pytest.raises((OverflowError, InputError, MemoryError)):
        run(a, "q", "", [], [], [], k=2**62)
    got = run(a, "q", "", history, [], [], k=5000)[0]
    assert len(got) == 3000
    gc.collect()
    assert len(run(a, "q", "x" * 5000, history, [], [], k=7)[0]) == 7


def test_answerer_refuses_inconsistent_arrays() -> None:
    ok = LabelSet.build(["a", "b"], [1, 1], [1, 1])
    f = Forest.empty()
    with pytest.raises(KernelError):  # unsorted labels
        bad = LabelSet.build(["b", "a"], [1, 1], [1, 1])
        _kernel.Answerer(None, None, bad.arrays(), f.arrays(), 0.0)
    with pytest.raises(KernelError):  # a running sum that does not add up
        _kernel.Answerer(None, None, {**ok.arrays(), "popcum": np.array([0, 1, 5], np.int64)},
                         f.arrays(), 0.0)
    with pytest.raises(KernelError):  # more recent occurrences than occurrences
        _kernel.Answerer(None, None, {**ok.arrays(), "recent": np.array([2, 0], np.int64)},
                         f.arrays(), 0.0)
    with pytest.raises(InputError, match="recent"):
        _kernel.Answerer(None, None, {k: v for k, v in ok.arrays().items() if k != "recent"},
                         f.arrays(), 0.0)
    # Forest checks its arrays in Python too; the kernel must refuse them on its own
    def trees(feature: list[int], left: list[int]) -> dict[str, np.ndarray]:
        n = len(feature)
        return {"feature": np.array(feature, np.int32), "threshold": np.zeros(n),
                "left": np.array(left, np.int32), "right": np.full(n, -1, np.int32),
                "leaf": np.zeros(1), "roots": np.array([0], np.int32)}

    with pytest.raises(InputError):
        Forest(*trees([0, 0], [1, 0]).values())
    with pytest.raises(KernelError):  # a child before its parent: a cycle
        _kernel.Answerer(None, None, ok.arrays(), trees([0, 0], [1, 0]), 0.0)
    with pytest.raises(KernelError):  # a split on a column beyond the schema
        _kernel.Answerer(None, None, ok.arrays(), trees([len(FEATURES)], [-1]), 0.0)


def test_word_start_index_is_its_definition_and_is_checked() -> None:
    labels = sorted(["new york times", "new  york", "york", "yorkshire tea", "a b a", "ü ber",
                     "times new"])
    ls = LabelSet.build(labels, [1] * len(labels), [1] * len(labels))
    # the definition: (text from each word start, label id), sorted; UTF-8 bytes
    raw = [t.encode() for t in labels]
    want = sorted((b[j:], i, j) for i, b in enumerate(raw) for j in range(len(b))
                  if b[j:j + 1] != b" " and (j == 0 or b[j - 1:j] == b" "))
    assert ls.word_label.tolist() == [i for _, i, _ in want]
    assert ls.word_off.tolist() == [j for _, _, j in want]
    f = Forest.empty()
    _kernel.Answerer(None, None, ls.arrays(), f.arrays(), 0.0)  # accepted as built

    def refused(label: list[int], off: list[int]) -> None:
        with pytest.raises(KernelError):
            _kernel.Answerer(None, None, {**ls.arrays(), "word_label": np.array(label, np.int32),
                                          "word_off": np.array(off, np.int32)}, f.arrays(), 0.0)

    lab, off = ls.word_label.tolist(), ls.word_off.tolist()
    refused(lab[1:], off[1:])                                    # one start missing
    refused(lab[:1] + lab[:-1], off[:1] + off[:-1])              # one twice, one missing
    refused(lab[1:] + lab[:1], off[1:] + off[:1])                # out of order
    refused([len(labels)] + lab[1:], off)                        # a label out of range
    refused(lab, [off[0] + 1] + off[1:])                         # not a word start
    refused(lab, [-1] + off[1:])
    with pytest.raises(InputError, match="differ in length"):
        _kernel.Answerer(None, None, {**ls.arrays(), "word_off": ls.word_off[1:]},
                         f.arrays(), 0.0)


def test_child_table_is_built_with_the_labels_and_checked() -> None:
    labels = sorted(["new york times", "new york", "newark", "news", "ü ber", "über", "üb",
                     "a", "ab", "abc", "abd", "b"])
    ls = LabelSet.build(labels, [1] * len(labels), [1] * len(labels))
    n = len(labels)
    table = ls.child_table
    assert table.dtype == np.int32 and table.shape == (4 * (n + 1),)
    raw = [t.encode() for t in labels]
    common = [len(os.path.commonprefix([raw[i - 1], raw[i]])) for i in range(1, n)]
    assert table[:n + 1].tolist() == [-1, *common, -1]  # lcp: its definition
    f = Forest.empty()
    _kernel.Answerer(None, None, ls.arrays(), f.arrays(), 0.0)  # accepted as built
    for i in range(table.size):  # any one entry changed is refused
        for delta in (1, -1):
            bad = table.copy()
            bad[i] += delta
            with pytest.raises(KernelError):
                _kernel.Answerer(None, None, {**ls.arrays(), "child_table": bad}, f.arrays(), 0.0)
    for size in (table.size - 1, table.size + 1):
        with pytest.raises(InputError):
            _kernel.Answerer(None, None, {**ls.arrays(), "child_table": np.resize(table, size)},
                             f.arrays(), 0.0)
    with pytest.raises(ModelFormatError, match="child_table"):
        LabelSet(*(ls.arrays()[k] for k in LabelSet.ARRAYS[:-1]), table[:-4])


def test_label_range() -> None:
    labels = sorted(["new", "new york", "newark", "news", "nexus", "über", "ü"])
    a = answerer(labels, [1] * len(labels), Forest.empty())
    for p in ["", "new", "new ", "news", "ne", "ü", "z", "a"]:
        lo, hi = a.label_range(p.encode())
        assert labels[lo:hi] == [t for t in labels if t.startswith(p)]


def test_schema_names_come_from_the_header() -> None:
    assert len(FEATURES) == len(set(FEATURES)) and FEATURES[0] == "is_model"
    assert SOURCES == ("model", "mpc", "history", "session", "suffix", "word", "fresh",
                       "typo", "words")
    # the pool's own sources have an is_ column each; "fresh" rows are told apart by
    # is_label = 0 and their live counts (so the shipped ranker reads them unchanged),
    # the match sources by their group
    assert [f"is_{s}" for s in SOURCES[:6]] == list(FEATURES[:6])
    assert not {"is_fresh", "is_typo", "is_words"} & set(FEATURES)

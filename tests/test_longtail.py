"""Long-tail completion: each generator on a tiny log, the ranker fit, policy, persistence."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessionlog import SessionLog

from qac.blocklist import Blocklist
from qac.complete import Completer, CompleterConfig
from qac.errors import InputError, ModelFormatError
from qac.logs import LogEvent
from qac.longtail import (
    DEFAULT_WEIGHTS_NO_HISTORY,
    FEATURES,
    SOURCES,
    LongTail,
    LongTailConfig,
    Ranker,
)

COUNTS = Counter({
    "bank of america": 5, "bank of america online": 3, "cheap flights to paris": 4,
    "flights to paris": 2, "cheap hotels": 2, "paris hotels": 3, "sexy pictures": 9,
})


@pytest.fixture(scope="module")
def lt() -> LongTail:
    return LongTail.build(COUNTS, Blocklist.default(), LongTailConfig(min_count=1))


def test_tables_count_words_and_endings(lt: LongTail) -> None:
    assert lt.words.count("paris") == 9
    assert lt.words.count("sexy") == 0  # blocked
    assert lt.suffixes.count("to paris") == 6
    assert lt.suffixes.count("of america online") == 3
    assert lt.suffixes.count("sexy pictures") == 0
    assert lt.suffixes.count("pictures") == 9


def test_word_generator(lt: LongTail) -> None:
    got = lt.gen_word("bank of am")
    assert got[0] == ("bank of america", 8)
    assert set(got) == {("bank of america", 8), ("bank of america online", 3)}
    assert lt.gen_word("bank of ") == []  # no partial word to complete
    assert lt.gen_word("sexy pi", Blocklist.default().blocks) == []  # blocked head


def test_suffix_generator(lt: LongTail) -> None:
    got = lt.gen_suffix("cheap flights to pa")
    assert got[:2] == [("cheap flights to paris", 6), ("cheap flights to paris hotels", 3)]
    assert {t for t, _ in got} == {"cheap flights to paris", "cheap flights to paris hotels"}
    # a finished word: endings that start with it
    assert ("bank of america", 5) in lt.gen_suffix("bank of ")


def test_session_generator(lt: LongTail) -> None:
    # the prefix agrees with the previous query: that query extended by its endings
    assert lt.gen_session("bank", "bank of america") == [("bank of america online", 3)]
    assert lt.gen_session("cheap flights to paris h", "cheap flights to paris") == [
        ("cheap flights to paris hotels", 3)]
    # the partial word completed from the previous query's words
    assert lt.gen_session("fl", "cheap flights to paris") == [
        ("flights", 6), ("flights to paris", 6)]
    assert lt.gen_session("fl", "") == []


def test_config_is_validated() -> None:
    with pytest.raises(InputError):
        LongTailConfig(words=-1)
    with pytest.raises(InputError):
        LongTailConfig(max_suffix_words=4)
    with pytest.raises(InputError):
        CompleterConfig(longtail_generators=("words",))


POP, OVERLAP = FEATURES.index("logpop"), FEATURES.index("prev_overlap")


def test_ranker_fit_puts_the_target_first() -> None:
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(200):
        X = rng.normal(size=(8, len(FEATURES)))
        X[:, POP] = rng.uniform(0, 1, size=8)
        t = int(rng.integers(8))
        X[t, POP] += 1.0                      # the target is the most popular ...
        X[:, OVERLAP] = 0.0
        X[t, OVERLAP] = 1.0                   # ... and agrees with the session
        groups.append((X, t))
    r = Ranker.fit(groups)
    assert r.weights[FEATURES.index("logpop")] > 1.0
    assert r.weights[FEATURES.index("prev_overlap")] > 1.0
    hits = sum(int(np.argmax(r.score(X))) == t for X, t in groups)
    assert hits >= 190
    assert Ranker.from_dict(r.to_dict()).weights.tolist() == r.weights.tolist()
    with pytest.raises(InputError):
        Ranker.fit([(groups[0][0], 8)])
    with pytest.raises(InputError):
        Ranker([1.0, 2.0])


def _log() -> list[LogEvent]:
    log = SessionLog()
    log.repeat(4, "a", "cheap flights", "cheap flights to paris")
    log.repeat(3, "b", "paris", "paris hotels")
    log.repeat(5, "c", "bank of america", "bank of america online")
    log.repeat(5, "d", "sexy pictures", "pictures of paris")
    return log.events


@pytest.fixture(scope="module")
def completer() -> Completer:
    return Completer.train(_log(), CompleterConfig(trie_depth=1, longtail=True))


def test_generated_completions_reach_unseen_queries(completer: Completer) -> None:
    got = completer.complete("cheap flights to paris h", previous="cheap flights to paris")
    texts = [c.text for c in got]
    assert "cheap flights to paris hotels" in texts  # never issued as such
    assert got[texts.index("cheap flights to paris hotels")].source in {"session", "suffix"}
    # the previous query is never suggested again
    assert "cheap flights" not in [c.text for c in completer.complete("ch", "cheap flights")]


def test_policy_invariants(completer: Completer) -> None:
    blocks = Blocklist.default().blocks
    for prefix in ["c", "ch", "cheap f", "paris ", "b", "bank of am", "pi", "sexy p", "zz"]:
        for prev in [None, "cheap flights", "bank of america", "sexy pictures", "x y"]:
            got = completer.complete(prefix, prev, k=10)
            texts = [c.text for c in got]
            assert all(t.startswith(prefix) for t in texts), (prefix, prev, texts)
            assert len(set(texts)) == len(texts)
            assert not any(blocks(t) for t in texts)
            assert {c.source for c in got} <= set(SOURCES)
            assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)
            assert len(got) <= 10
    assert completer.complete("sexy p") == []


def test_longtail_can_be_switched_off(completer: Completer) -> None:
    off = completer.with_options(longtail=False)
    assert {c.source for c in off.complete("cheap flights to paris h", "cheap flights")} <= {
        "model", "mpc"}
    some = completer.with_options(longtail_generators=("word",))
    got = some.complete("cheap flights to paris h", "cheap flights to paris")
    assert {c.source for c in got} <= {"model", "mpc", "word"}


def test_save_load_round_trip(completer: Completer, tmp_path: Path) -> None:
    completer.save(tmp_path / "m")
    loaded = Completer.load(tmp_path / "m")
    assert loaded.longtail is not None and loaded.config.longtail
    counts = loaded.longtail.words.arrays()["counts"]
    assert isinstance(counts.base, np.memmap) and not counts.flags.owndata  # not a copy
    assert completer.longtail is not None
    assert loaded.longtail.ranker.weights.tolist() == completer.longtail.ranker.weights.tolist()
    assert (loaded.longtail.ranker_no_history.weights.tolist()
            == completer.longtail.ranker_no_history.weights.tolist())
    for prefix, prev in [("cheap flights to paris h", "cheap flights to paris"),
                         ("b", None), ("pa", "paris"), ("", "paris")]:
        assert loaded.complete(prefix, prev) == completer.complete(prefix, prev)


def test_attach_to_a_trained_completer(tmp_path: Path) -> None:
    plain = Completer.train(_log(), CompleterConfig(trie_depth=1))
    assert plain.longtail is None
    lt = LongTail.build(COUNTS, Blocklist.default())
    both = plain.with_longtail(lt)
    assert both.config.longtail and not plain.config.longtail
    both.save(tmp_path / "m")
    assert Completer.load(tmp_path / "m").complete("bank of am") == both.complete("bank of am")


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(alphabet="cheapflistoryxbn ", max_size=12),
       prev=st.sampled_from([None, "", "cheap flights", "paris", "bank of america",
                             "sexy pictures"]))
def test_prefix_property(completer: Completer, prefix: str, prev: str | None) -> None:
    got = completer.complete(prefix, prev, k=5)
    p = " ".join(prefix.split()) + (" " if prefix[-1:].isspace() and prefix.strip() else "")
    texts = [c.text for c in got]
    assert len(got) <= 5 and len(set(texts)) == len(texts)
    assert all(t.startswith(p) for t in texts)
    assert prev is None or prev == "" or prev not in texts or not p


def test_corrupt_longtail_data_is_a_format_error(completer: Completer, tmp_path: Path) -> None:
    completer.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    del manifest["config"]["longtail"]["ranker"]["logpop"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError):
        Completer.load(tmp_path / "m")


@settings(max_examples=200, deadline=None)
@given(history=st.lists(st.text(alphabet="ab \n", max_size=6), max_size=12),
       prefix=st.text(alphabet="ab ", max_size=3))
def test_history_generator_matches_the_plain_scan(lt: LongTail, history: list[str],
                                                  prefix: str) -> None:
    # entries with a newline are no normalized queries: never candidates
    want = [(t, r) for r, t in enumerate(history) if t.startswith(prefix) and "\n" not in t]
    assert lt.gen_history(prefix, history) == want


def test_history_generator_ranks_and_blocks(lt: LongTail) -> None:
    history = ["paris hotels", "sexy pictures", "pizza", "bank", "pictures of paris"]
    assert lt.gen_history("p", history, Blocklist.default().blocks_normalized) == [
        ("paris hotels", 0), ("pizza", 2), ("pictures of paris", 4)]
    assert lt.gen_history("p", []) == []
    with pytest.raises(InputError, match="str"):
        lt.gen_history("p", ["ok", 3])  # type: ignore[list-item]


def test_history_candidates_reach_what_nobody_else_issued(completer: Completer) -> None:
    # "paris opera tickets" was never issued by anyone: only the user's history has it
    history = ["paris opera tickets", "bank of america"]
    got = {c.text: c for c in completer.complete("paris o", "bank of america",
                                                 history=history)}
    assert got["paris opera tickets"].source == "history"
    assert "paris opera tickets" not in [
        c.text for c in completer.complete("paris o", "bank of america")]
    # history is only a source of candidates: it is filtered by prefix and blocklist
    assert all(c.text.startswith("ch") for c in completer.complete("ch", None, history=history))
    assert completer.complete("sexy", None, history=["sexy pictures"]) == []
    with pytest.raises(InputError):
        completer.complete("p", None, history="paris opera tickets")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        completer.complete("p", None, history=[None])  # type: ignore[list-item]


def test_weights_from_before_the_history_generator_load_with_zero_weight() -> None:
    old = {f: 1.0 for f in FEATURES if f not in ("is_history", "hist_recency",
                                                  "hist_recency*L")}
    r = Ranker.from_dict(old)
    assert r.to_dict()["is_history"] == 0.0 and r.to_dict()["logpop"] == 1.0
    with pytest.raises(InputError, match="logpop"):
        Ranker.from_dict({k: v for k, v in old.items() if k != "logpop"})


def test_uses_history_says_whether_history_is_read(completer: Completer) -> None:
    assert completer.uses_history
    assert not completer.with_options(longtail=False).uses_history
    assert not completer.with_options(longtail_generators=("word", "session")).uses_history
    plain = Completer.train(_log(), CompleterConfig(trie_depth=1))
    assert not plain.uses_history
    # and indeed: without the generator, history changes nothing
    off = completer.with_options(longtail_generators=("word", "suffix", "session"))
    assert off.complete("paris o", None, history=["paris opera tickets"]) == off.complete(
        "paris o", None)


def test_pool_features_row_by_row(lt: LongTail) -> None:
    col = {f: i for i, f in enumerate(FEATURES)}
    model = (["paris hotels", "paris", "paris flights"], [0.9, 0.5, 0.25],
             np.log1p([3.0, 0.0, 2.0]).tolist(), [1, 0, 1], [12, 5, 13])
    mpc = [("paris hotels", 3), ("paris cafe", 1)]
    texts, sources, X = lt.pool("pa", "paris", model, mpc, lambda t: {"paris jazz": 4}.get(t, 0),
                                history=["paris jazz", "zoo", "paris hotels"])
    # the previous query is never a candidate, also not when the beam returned it
    assert "paris" not in texts
    assert texts[:2] == ["paris hotels", "paris flights"] and sources[:2] == ["model"] * 2
    row = {t: X[i] for i, t in enumerate(texts)}
    hotels, cafe, jazz = row["paris hotels"], row["paris cafe"], row["paris jazz"]
    assert sources[texts.index("paris cafe")] == "mpc"
    assert sources[texts.index("paris jazz")] == "history"
    # model rows: rank after the drop, score, popularity; flagged by MPC and history too
    assert hotels[col["is_model"]] == 1 and hotels[col["model_rank"]] == 1.0
    assert X[1, col["model_rank"]] == 0.5 and X[1, col["model_logscore"]] == pytest.approx(
        np.log(0.25))
    assert hotels[col["is_mpc"]] == 1 and hotels[col["is_history"]] == 1
    assert hotels[col["hist_recency"]] == pytest.approx(1 / 3)
    assert hotels[col["logpop"]] == pytest.approx(np.log1p(3))
    # generated rows: popularity from MPC's count or the lookup, session agreement, shape
    assert cafe[col["logpop"]] == pytest.approx(np.log1p(1)) and cafe[col["is_model"]] == 0
    assert jazz[col["logpop"]] == pytest.approx(np.log1p(4)) and jazz[col["seen"]] == 1
    assert jazz[col["hist_recency"]] == 1.0 and jazz[col["is_history"]] == 1
    assert jazz[col["hist_recency*L"]] == pytest.approx(0.2)  # L = len("pa") / 10
    assert jazz[col["extends_prev"]] == 1 and jazz[col["prev_overlap"]] == 0.5
    assert jazz[col["added_words"]] == 1 and jazz[col["added_chars"]] == pytest.approx(0.8)
    assert "zoo" not in texts  # does not start with the prefix


def _pool_scores(completer: Completer, p: str, prev: str, history: list[str]
                 ) -> tuple[list[str], list[str], np.ndarray]:
    """The reference: LongTail.pool's rows times the weights, best first (stable)."""
    lt = completer.longtail
    assert lt is not None
    texts, sources, X = lt.pool(*completer._pool_args(lt, p, prev, 10, history))
    scores = lt.ranker_for(completer.with_history(history)).score(X)
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    return [texts[i] for i in order], [sources[i] for i in order], scores[order]


@settings(max_examples=150, deadline=None)
@given(prefix=st.text(alphabet="cheapflistorybn ", min_size=1, max_size=10),
       prev=st.sampled_from(["", "cheap flights", "paris", "bank of america",
                             "cheap flights to paris"]),
       history=st.lists(st.sampled_from(["cheap hotels", "paris opera", "bank",
                                         "cheap flights to rome", "pictures of paris",
                                         "cheap flights"]),
                        max_size=5, unique=True))
def test_kernel_ranks_the_pool_as_its_features_times_the_weights(
        completer: Completer, prefix: str, prev: str, history: list[str]) -> None:
    from qac.text import normalize_prefix

    p = normalize_prefix(prefix)
    if not p:
        return
    texts, sources, scores = completer.scored(p, prev, 10, history)
    rtexts, rsources, rscores = _pool_scores(completer, p, prev, history)
    assert (texts, sources) == (rtexts, rsources)
    np.testing.assert_allclose(scores, rscores, rtol=1e-9, atol=1e-9)


def test_kernel_equals_pool_on_full_pools(completer: Completer) -> None:
    kinds: set[str] = set()
    for p, prev in [("cheap flights to paris h", "cheap flights to paris"), ("pa", "paris"),
                    ("b", "bank of america"), ("cheap f", ""), ("pictures of p", "paris"),
                    ("bank of a", "bank of america")]:
        history = ["paris opera", "pictures of rome", "bank of america online"]
        texts, sources, scores = completer.scored(p, prev, 10, history)
        rtexts, rsources, rscores = _pool_scores(completer, p, prev, history)
        assert texts and (texts, sources) == (rtexts, rsources)
        assert prev not in texts
        np.testing.assert_allclose(scores, rscores, rtol=1e-9, atol=1e-9)
        kinds.update(sources)
    assert {"model", "history", "session"} <= kinds


def test_a_keystroke_without_history_is_ranked_by_the_no_history_ranker(
        completer: Completer) -> None:
    lt = completer.longtail
    assert lt is not None
    assert completer.with_history(["paris opera"]) and not completer.with_history([])
    assert not completer.with_options(
        longtail_generators=("word", "suffix", "session")).with_history(["paris opera"])
    p, prev = "pa", "bank of america"
    texts, sources, X = lt.pool(*completer._pool_args(lt, p, prev, 10, []))
    for history, ranker in (([], lt.ranker_no_history), (["zoo"], lt.ranker)):
        got = dict(zip(*completer.scored(p, prev, 10, history)[::2], strict=True))
        want = dict(zip(texts, ranker.score(X), strict=True))
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[t] for t in texts], [want[t] for t in texts],
                                   rtol=1e-9, atol=1e-9)
    # the two rankers differ, so the choice shows in the scores
    assert not np.allclose(lt.ranker.score(X), lt.ranker_no_history.score(X))


def test_no_history_ranker_is_kept_saved_and_defaulted(completer: Completer,
                                                       tmp_path: Path) -> None:
    lt = completer.longtail
    assert lt is not None
    other = Ranker(np.arange(len(FEATURES), dtype=np.float64))
    swapped = lt.with_ranker(ranker_no_history=other)
    assert swapped.ranker is lt.ranker and swapped.ranker_no_history is other
    assert lt.with_ranker(other).ranker_no_history is lt.ranker_no_history
    # a model saved before the no-history ranker existed loads with the default one
    completer.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert "ranker_no_history" in manifest["config"]["longtail"]
    del manifest["config"]["longtail"]["ranker_no_history"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    loaded = Completer.load(tmp_path / "m")
    assert loaded.longtail is not None
    assert loaded.longtail.ranker_no_history.to_dict() == Ranker.from_dict(
        DEFAULT_WEIGHTS_NO_HISTORY).to_dict()


def test_history_with_a_newline_is_never_a_candidate(completer: Completer) -> None:
    got = completer.complete("pa", None, history=["paris\nopera", "paris opera"])
    assert [c.text for c in got if c.source == "history"] == ["paris opera"]
    with pytest.raises(InputError, match="str"):
        completer.complete("pa", None, history=["paris opera", b"paris"])  # type: ignore[list-item]

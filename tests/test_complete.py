"""Session-aware completion: one pool and one ranker, the session effect, the user's
history, the blocklist in the model, persistence, bad input."""

import gc
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessionlog import pl_log, weeks_log

from qac.blocklist import Blocklist
from qac.complete import Completer, CompleterConfig
from qac.errors import InputError, ModelFormatError
from qac.history import Past
from qac.logs import LogEvent, previous_queries
from qac.match import MatchConfig
from qac.rank import FEATURES
from qac.sources import SourcesConfig

NOW = time.time()


def _log() -> list[LogEvent]:
    log = pl_log()
    log.repeat(3, "e", "newton", "new york weather")
    log.repeat(5, "f", "sexy pictures", "pleasure island")  # blocked first query
    return log.events


@pytest.fixture(scope="module", params=["hybrid", "trie", "tree"])
def completer(request: pytest.FixtureRequest) -> Completer:
    cfg = CompleterConfig(index=request.param, trie_depth=1 if request.param == "hybrid" else None)
    return Completer.train(_log(), cfg)


def _texts(got: list) -> list[str]:
    return [c.text for c in got]


@pytest.fixture(scope="module")
def fitted() -> Completer:
    """A model whose ranker is fitted on its own log's last week (three weeks of
    sessions), as ``qac train`` does on a real log."""
    return Completer.train(weeks_log().events, CompleterConfig(trie_depth=1, min_fit=200))


def test_the_ranker_is_fitted_on_the_last_week(fitted: Completer) -> None:
    assert fitted.fit["ranker"] == "fitted" and fitted.fit["keystrokes"] >= 200
    assert fitted.fit["from"] == "2006-03-14 00:26:00"


def test_previous_query_changes_the_completion(fitted: Completer) -> None:
    assert _texts(fitted.complete("pl", previous="rose of jericho", k=3))[0] == (
        "plant care tips")
    assert _texts(fitted.complete("pl", previous="planet earth", k=3))[0] == "plant nursery"
    assert _texts(fitted.complete("pl", previous="game console", k=3))[0] == "playstation 5"


def test_mpc_listed_in_c_is_mpcs_list(fitted: Completer) -> None:
    """Without a background log every query MPC counts is a label, so C lists the most
    popular completions itself: the answers and pools are those of MPC's list made in
    Python and handed over."""
    assert fitted._native_mpc
    python = fitted.with_options()
    python._native_mpc = False
    for prev in (None, "rose of jericho", "game console", "plant nursery"):
        for p in ("", "p", "pl", "pla", "plant ", "n", "new y", "x", "playstation 5"):
            for hist in ((), ("planet x", "playstation 5", "plant nursery")):
                got = fitted.complete(p, prev, k=10, history=hist, now=NOW)
                want = python.complete(p, prev, k=10, history=hist, now=NOW)
                assert [(c.text, c.source, c.score) for c in got] == [
                    (c.text, c.source, c.score) for c in want], (p, prev, hist)
                texts, sources, X = fitted.pool(p, prev, hist, now=NOW)
                texts2, sources2, X2 = python.pool(p, prev, hist, now=NOW)
                assert (texts, sources) == (texts2, sources2)
                assert (X == X2).all()
    # and C did list them: the prefix's most popular labels are marked in its pool
    texts, _, X = fitted.pool("p", None, now=NOW)
    top = [t for t, _ in fitted.mpc.top("p", 3)]
    assert [X[texts.index(t), FEATURES.index("mpc_rank")] for t in top] == [1, 1 / 2, 1 / 3]


def test_a_background_log_keeps_mpcs_list_in_python() -> None:
    """A background log's queries count for MPC without being labels: its list, made
    in Python, still offers them."""
    c = Completer.train(_log(), CompleterConfig(trie_depth=1),
                        background=Counter({"plasma screen deals": 500}))
    assert not c._native_mpc
    got = c.complete("pla", k=10)
    assert ("plasma screen deals", "mpc") in [(g.text, g.source) for g in got]
    assert "plasma screen deals" not in c


@pytest.mark.parametrize("native", [True, False])
def test_cached_candidates_leave_the_garbage_collectors_reach(fitted: Completer,
                                                              native: bool) -> None:
    """What a keystroke caches (its generated candidates, and MPC's list when Python
    makes it) holds no container the cyclic GC must keep walking: under load,
    thousands of cached lists made every collection of the young generations a
    stall of the event loop."""
    c = fitted.with_options()
    c._native_mpc = native
    for p, prev in (("pl", "rose of jericho"), ("p", None), ("plant ", "plant nursery")):
        got = c._extras_of(p, prev or "", c.config.generators)
        assert got[0] and all(isinstance(part, tuple) for part in got)
        gc.collect()
        gc.collect()  # a tuple is untracked once its items are: the outer one a pass later
        assert not gc.is_tracked(got) and not any(gc.is_tracked(part) for part in got)
        assert c.complete(p, prev, k=5)  # and the keystroke answers from them


def test_previous_query_changes_the_completion_with_the_shipped_ranker(completer: Completer
                                                                       ) -> None:
    after = _texts(completer.complete("pl", previous="game console", k=5))
    plain = _texts(completer.complete("pl", k=5))
    assert after.index("playstation 5") < plain.index("playstation 5")


def test_answers_start_with_the_prefix_are_distinct_and_best_first(completer: Completer
                                                                    ) -> None:
    exact_only = completer.with_options(match=MatchConfig(words=False, typos=0))
    for prefix in ["", "p", "pl", "pla", "new", "new ", "ro", "g"]:
        for prev in [None, "rose of jericho", "game console", "unknown words"]:
            got = exact_only.complete(prefix, prev, k=10, history=["planet earth", "paris"])
            texts = _texts(got)
            assert all(t.startswith(prefix) for t in texts), (prefix, prev, texts)
            assert len(set(texts)) == len(texts) and prev not in texts
            assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)
            assert {c.source for c in got} <= {"model", "mpc", "history", "session",
                                               "suffix", "word"}
            # with matching on, the prefix's own answers lead and matches fill the list;
            # only generated guesses (texts nobody issued) may come after matches
            more = completer.complete(prefix, prev, k=10, history=["planet earth", "paris"])
            lead = 0
            while lead < len(more) and more[lead].text.startswith(prefix):
                lead += 1
            assert all(c.edits or c.source in {"typo", "words"} or not c.text.startswith(prefix)
                       or c.source in {"session", "suffix", "word"} for c in more[lead:]), more
            assert [c.text for c in more[:lead]] == [t for t in texts if t in
                                                    {c.text for c in more[:lead]}]


def test_trailing_space_ends_the_word(completer: Completer) -> None:
    texts = _texts(completer.complete("new ", k=10))
    assert "newton" not in texts and "newark airport" not in texts
    assert {"new york times", "new york weather"} <= set(texts)


def test_empty_prefix_is_answered_by_the_same_pool(completer: Completer) -> None:
    top = completer.complete("", k=3)
    assert "playstation" in _texts(top)
    nxt = _texts(completer.complete("", previous="game console", k=3))
    assert "playstation 5" in nxt
    mine = completer.complete("", k=10, history=[Past("my own query", 5, NOW - 60)], now=NOW)
    assert ("my own query", "history") in [(c.text, c.source) for c in mine]


def test_a_reformulation_keeps_the_rest_of_the_previous_query() -> None:
    """A word typed before or instead of the previous query's first words, then the
    start of one of its words: the rest of the previous query is a candidate."""
    from qac.sources import Tables

    t = Tables.build({"drive-in movies": 3, "cheap city tours": 2, "city va": 2,
                      "family fun": 2})
    prev = "drive-in stephens city va"
    made = [x for x, _ in t.gen_session("family d", prev)]
    assert "family drive-in stephens city va" in made and "family drive-in" in made
    assert "family city va" in [x for x, _ in t.gen_session("family c", prev)]
    # the last word alone is the word completion, not one more candidate
    assert [x for x, _ in t.gen_session("family v", prev)].count("family va") == 1
    assert t.gen_session("family x", prev) == [] and t.gen_session("family d", "") == []
    # the first word typed: the previous query from one of its later words on, and no
    # guess at a word put before it
    assert "city va" in [x for x, _ in t.gen_session("ci", prev)]
    assert not any(x.endswith(prev) for x, _ in t.gen_session("fam", prev))
    # the rest is never the previous query again (a repeat is no new search)
    assert prev not in [x for x, _ in t.gen_session("dr", prev)]


def test_a_reformulation_cuts_the_previous_query_after_a_word() -> None:
    """When the prefix agrees with the previous query, its first words, cut after any
    of its words but the last, are candidates ("washington cemetery" at "wa" after
    "washington cemetery ny")."""
    from qac.sources import Tables

    t = Tables.build({"washington post": 3, "cemetery records": 2})
    prev = "washington cemetery ny"
    made = [x for x, _ in t.gen_session("wa", prev)]
    assert "washington cemetery" in made and "washington" in made
    assert "washington cemetery" in [x for x, _ in t.gen_session("washington ", prev)]
    # longer than what is typed, never the previous query itself, and only when the
    # prefix agrees with it
    assert "washington" not in [x for x, _ in t.gen_session("washington", prev)]
    assert prev not in made
    assert "washington cemetery" not in [x for x, _ in t.gen_session("wb", prev)]
    assert "washington cemetery" not in [x for x, _ in t.gen_session("cem", prev)]


def test_a_reformulation_swaps_the_word_being_typed() -> None:
    """The words typed so far are the previous query's first ones: the partial word,
    completed from the word table, replaces the previous query's next word and the
    rest is kept ("hack my" after "hack user accounts")."""
    from qac.sources import Tables

    t = Tables.build({"myspace layouts": 5, "mystery novels": 2, "hack user": 2,
                      "user guide": 2})
    prev = "hack user accounts"
    made = [x for x, _ in t.gen_session("hack my", prev)]
    assert "hack myspace accounts" in made and "hack mystery accounts" in made
    # the first word swapped, once enough of it is typed to go by
    assert "myspace user accounts" in [x for x, _ in t.gen_session("mysp", prev)]
    assert not any(x.endswith(" user accounts") for x, _ in t.gen_session("mys", prev))
    # not when the typed words differ from the previous query's, nor for its last
    # word (that is a plain word completion), nor from one typed letter
    assert not any(x.endswith(" accounts") for x, _ in t.gen_session("crack my", prev))
    assert "hack user myspace" not in [x for x, _ in t.gen_session("hack user my", prev)]
    assert not any(x.endswith(" accounts") for x, _ in t.gen_session("hack m", prev))
    # the previous query's own word is no swap, so never the previous query again
    assert prev not in [x for x, _ in t.gen_session("hack us", prev)]


def test_the_users_past_queries_are_candidates(completer: Completer) -> None:
    got = completer.complete("pla", k=10, history=[Past("planet earth", 3, NOW - 600)],
                             session=[("rose of jericho", NOW - 30)], now=NOW)
    assert ("planet earth", "history") in [(c.text, c.source) for c in got]
    # the history source switched off: no past query of the user
    off = completer.with_options(generators=("session", "suffix", "word"))
    assert "planet earth" not in _texts(off.complete("pla", k=10, history=["planet earth"]))
    assert off.history_limit == 0 and completer.history_limit == SourcesConfig().history


def test_default_blocklist_covers_every_source(completer: Completer) -> None:
    assert all("sexy" not in c.text for c in completer.complete("se", k=10))
    got = completer.complete("se", "sexy pictures", k=10, history=["sexy movies", "seattle"],
                             session=["sexy times"])
    assert all("sexy" not in c.text for c in got) and "seattle" in _texts(got)


def test_custom_blocklist_is_stored_in_the_model_and_covers_every_source(tmp_path: Path
                                                                         ) -> None:
    log = pl_log()
    log.repeat(6, "h", "hotel rooms", "hotel deals paris")
    log.repeat(4, "m", "motel 6", "hollywood")
    custom = Blocklist.from_lines(["hotel*", "motel"])
    c = Completer.train(log.events, CompleterConfig(trie_depth=1), blocklist=custom)
    c.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["config"]["blocklist"] == {"words": ["motel"], "stems": ["hotel"]}
    for model in (c, Completer.load(tmp_path / "m")):
        answers = []
        for prefix in ["", "h", "ho", "hot", "hotel ", "m", "mo", "mot", "motel "]:
            answers += _texts(model.complete(
                prefix, "hotel rooms", k=10,
                history=["hotels near me", "motel 8", "hotel deals rome", "hollywood bowl"],
                session=["motel 6", "hotel cheap"]))
        assert answers and not [t for t in answers if "hotel" in t or "motel" in t.split()]
        assert "hollywood bowl" in answers
        # the default list is not in force: "sexy" is not on the custom list
        assert model.blocklist.blocks_normalized("sexy pictures") is False


def test_unknown_prefix_gives_nothing(completer: Completer) -> None:
    assert completer.complete("zzzz", previous="rose of jericho") == []


def test_save_load_round_trip(completer: Completer, tmp_path: Path) -> None:
    completer.save(tmp_path / "m")
    loaded = Completer.load(tmp_path / "m")
    # the typo search's trie is saved with the labels and mapped, not built per process
    assert isinstance(loaded.labels.child_table, np.memmap)
    assert np.array_equal(loaded.labels.child_table, completer.labels.child_table)
    for prefix, prev in [("pl", "rose of jericho"), ("n", None), ("", "game console")]:
        assert loaded.complete(prefix, prev, now=NOW) == completer.complete(prefix, prev, now=NOW)


def test_bad_input(completer: Completer) -> None:
    # invalid UTF-8 reads as U+FFFD, which normalization drops; control characters
    # are spaces
    assert completer.complete(b"pl\xff", previous=b"rose\xfe of jericho", now=NOW) == (
        completer.complete("pl", previous="rose of jericho", now=NOW))
    assert completer.complete("p\x00l\x1b", now=NOW) == completer.complete("p l", now=NOW)
    # malformed history and session entries are skipped, not fatal: a newline, an
    # empty query, a lone surrogate (no client could read it back); an absurd count
    # is capped and a time that is no number is unknown
    odd = [Past("pla\nnet", 1, 0.0), Past("", 1, 0.0), Past("plan", 10**12, float("nan")),
           "pl\udc00", Past("plu\udc00s", 3, NOW)]
    got = completer.complete("pl", history=odd, session=[("pl\n", 1.0)], now=NOW)
    assert got == completer.complete("pl", history=[Past("plan", 1 << 30, 0.0)], now=NOW)
    assert ("plan", "history") in [(c.text, c.source) for c in got]
    for c in got:
        c.text.encode("utf-8")  # strict: raises on a surrogate
    with pytest.raises(InputError):
        completer.complete("p" * 5000)
    with pytest.raises(InputError):
        completer.complete("pl", k=0)
    with pytest.raises(InputError):
        completer.complete("pl", k=10**6)
    with pytest.raises(InputError):
        completer.complete("pl", history="planet earth")
    # a very long previous query is cut, not refused: the keystroke still gets answers
    assert completer.complete("pl", previous="x" * 3000) != []


def test_missing_and_older_models(tmp_path: Path, completer: Completer) -> None:
    with pytest.raises(ModelFormatError):
        Completer.load(tmp_path / "none")
    completer.save(tmp_path / "m")
    path = tmp_path / "m" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="older qac: retrain"):
        Completer.load(tmp_path / "m")


def test_one_definition_of_the_previous_query(fitted: Completer) -> None:
    """A log sorted by user (as the AOL files) and the same log sorted by time (users
    interleaved, as a live service writes it) give every event the same previous
    query, so they train the same model."""
    by_time = weeks_log().events
    by_user = sorted(by_time, key=lambda e: (e.user or "", e.time))
    assert by_user != by_time
    want = dict(zip(map(id, by_time), previous_queries(by_time), strict=True))
    assert dict(zip(map(id, by_user), previous_queries(by_user), strict=True)) == want
    other = Completer.train(by_user, fitted.config)
    assert other.fit == fitted.fit
    for prefix, prev in [("pl", "rose of jericho"), ("pl", None), ("", "game console"),
                         ("new", "newton")]:
        assert _texts(other.complete(prefix, prev, now=NOW)) == _texts(
            fitted.complete(prefix, prev, now=NOW))


def test_ranker_fit_or_shipped() -> None:
    tiny = Completer.train(_log(), CompleterConfig(trie_depth=1))
    assert tiny.fit == {"ranker": "shipped", "why": "the log spans less than 7.0 days"}
    few = Completer.train(weeks_log(2).events, CompleterConfig(trie_depth=1, min_fit=10**6))
    assert few.fit["ranker"] == "shipped" and "keystrokes" in few.fit["why"]
    assert Completer.train(weeks_log(2).events, CompleterConfig(trie_depth=1, fit_days=0)
                           ).fit == {"ranker": "shipped", "why": "fit_days is 0"}
    plain = [LogEvent(e.session, e.query, None, e.user) for e in _log()]
    assert Completer.train(plain, CompleterConfig(trie_depth=1)).fit == {
        "ranker": "shipped", "why": "the log has no times"}


@pytest.fixture(scope="module")
def hybrid() -> Completer:
    return Completer.train(_log(), CompleterConfig(trie_depth=1))


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(alphabet="planetsyork w", max_size=6),
       prev=st.sampled_from([None, "", "rose of jericho", "game console", "newton"]))
def test_prefix_property(hybrid: Completer, prefix: str, prev: str | None) -> None:
    got = hybrid.complete(prefix, prev, k=5, history=["planet x", "new york"])
    p = " ".join(prefix.split()) + (" " if prefix[-1:].isspace() and prefix.strip() else "")
    assert len(got) <= 5
    # the answers that start with the prefix lead; the rest are matches (a word prefix or
    # a correction), or generated guesses pushed after them; spans lie inside the text
    lead = 0
    while lead < len(got) and got[lead].text.startswith(p):
        lead += 1
    assert all(c.source in {"typo", "words", "history"} or c.edits or (
        c.text.startswith(p) and c.source in {"session", "suffix", "word"})
        for c in got[lead:]), got
    assert all(0 <= a < b <= len(c.text) for c in got for a, b in c.spans)
    plain = hybrid.complete(prefix, prev, k=5, history=["planet x", "new york"], typos=0)
    assert all(c.text.startswith(p) or c.source in {"words", "history"} for c in plain)


def test_a_blocklist_given_at_load_filters_too(tmp_path: Path) -> None:
    c = Completer.train(_log(), CompleterConfig(trie_depth=1))
    c.save(tmp_path / "m")
    strict = Completer.load(tmp_path / "m", blocklist=Blocklist.from_lines(["plant"]))
    assert "plant care tips" in _texts(c.complete("pl", "rose of jericho"))
    assert "plant care tips" not in _texts(strict.complete("pl", "rose of jericho"))
    assert len(strict.complete("p", k=2)) == 2


def test_top_level_api(tmp_path: Path) -> None:
    import qac

    assert qac.Completer is Completer
    log = tmp_path / "log.txt"
    log.write_text("rose of jericho\nplant care tips\n\nplaystation\n")
    c = qac.train_completer(log, out=tmp_path / "m", config=CompleterConfig(trie_depth=1))
    assert isinstance(c.complete("pl")[0], qac.Completion)
    assert qac.Completer.load(tmp_path / "m").complete("pl", now=NOW) == c.complete(
        "pl", now=NOW)
    with pytest.raises(AttributeError):
        qac.NoSuchThing  # noqa: B018

"""Session-aware completion: policy, session effect, indexers, persistence, bad input."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessionlog import pl_log

from qac.complete import Completer, CompleterConfig
from qac.errors import InputError, ModelFormatError
from qac.logs import LogEvent


def _log() -> list[LogEvent]:
    log = pl_log()
    log.repeat(3, "e", "newton", "new york weather")
    log.repeat(5, "f", "sexy pictures", "pleasure island")  # blocked first query
    return log.events


@pytest.fixture(scope="module", params=["hybrid", "trie", "tree"])
def completer(request: pytest.FixtureRequest) -> Completer:
    cfg = CompleterConfig(index=request.param, trie_depth=1 if request.param == "hybrid" else None)
    return Completer.train(_log(), cfg)


def test_previous_query_changes_the_completion(completer: Completer) -> None:
    with_session = completer.complete("pl", previous="rose of jericho", k=3)
    assert with_session[0].text == "plant care tips"
    assert with_session[0].source == "model"
    without = completer.complete("pl", k=3)
    assert without[0].text == "playstation"


def test_answers_start_with_the_prefix_and_are_distinct(completer: Completer) -> None:
    for prefix in ["p", "pl", "pla", "new", "new ", "ro", "g"]:
        for prev in [None, "rose of jericho", "game console", "unknown words"]:
            got = completer.complete(prefix, prev, k=10)
            texts = [c.text for c in got]
            assert all(t.startswith(prefix) for t in texts), (prefix, prev, texts)
            assert len(set(texts)) == len(texts)
            assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)


def test_trailing_space_ends_the_word(completer: Completer) -> None:
    texts = [c.text for c in completer.complete("new ", k=10)]
    assert "newton" not in texts and "newark airport" not in texts
    assert set(texts) == {"new york times", "new york weather"}


def test_fill_from_most_popular(completer: Completer) -> None:
    got = completer.complete("p", k=10)
    assert {c.text for c in got} == {"playstation", "playstation 5", "plant care tips",
                                     "pleasure island"}
    assert {c.source for c in got} <= {"model", "mpc"}


def test_empty_prefix(completer: Completer) -> None:
    top = completer.complete("", k=2)
    assert top[0].text == "playstation"
    assert all(c.source == "mpc" for c in top)
    nxt = completer.complete("", previous="game console", k=1)
    assert nxt[0].text == "playstation 5"


def test_blocklist_removes_suggestions(completer: Completer) -> None:
    assert all("sexy" not in c.text for c in completer.complete("se", k=10))
    assert completer.complete("sexy", k=10) == []


def test_unknown_prefix_gives_nothing(completer: Completer) -> None:
    assert completer.complete("zzzz", previous="rose of jericho") == []


def test_save_load_round_trip(completer: Completer, tmp_path: Path) -> None:
    completer.save(tmp_path / "m")
    loaded = Completer.load(tmp_path / "m")
    for prefix, prev in [("pl", "rose of jericho"), ("n", None), ("", "game console")]:
        assert loaded.complete(prefix, prev) == completer.complete(prefix, prev)


def test_bad_input(completer: Completer) -> None:
    assert isinstance(completer.complete(b"pl\xff", previous=b"rose\xfe of jericho"), list)
    assert isinstance(completer.complete("p\x00l\x1b"), list)
    with pytest.raises(InputError):
        completer.complete("p" * 5000)
    with pytest.raises(InputError):
        completer.complete("pl", previous="x" * 5000)
    with pytest.raises(InputError):
        completer.complete("pl", k=0)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError):
        Completer.load(tmp_path / "none")


@pytest.fixture(scope="module")
def hybrid() -> Completer:
    return Completer.train(_log(), CompleterConfig(trie_depth=1))


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(alphabet="planetsyork w", max_size=6),
       prev=st.sampled_from([None, "", "rose of jericho", "game console", "newton"]))
def test_prefix_property(hybrid: Completer, prefix: str, prev: str | None) -> None:
    got = hybrid.complete(prefix, prev, k=5)
    p = " ".join(prefix.split()) + (" " if prefix[-1:].isspace() and prefix.strip() else "")
    assert len(got) <= 5
    assert all(c.text.startswith(p) for c in got)


def test_blocklist_is_replaceable(tmp_path: Path) -> None:
    from qac.blocklist import Blocklist

    custom = Blocklist.from_lines(["playstation*"])
    c = Completer.train(_log(), CompleterConfig(trie_depth=1), blocklist=custom)
    texts = [x.text for x in c.complete("p", k=10)]
    assert not any(t.startswith("playstation") for t in texts)
    assert "pleasure island" in texts
    # the default list is not in force here
    assert [x.text for x in c.complete("se", k=3)] == ["sexy pictures"]
    c.save(tmp_path / "m")
    # a list given at load time filters answers too
    strict = Completer.load(tmp_path / "m", blocklist=Blocklist.from_lines(["plant"]))
    assert "plant care tips" not in [x.text for x in strict.complete("pl", "rose of jericho")]


def test_top_level_api(tmp_path: Path) -> None:
    import qac

    assert qac.Completer is Completer
    log = tmp_path / "log.txt"
    log.write_text("rose of jericho\nplant care tips\n\nplaystation\n")
    c = qac.train_completer(log, out=tmp_path / "m", config=CompleterConfig(trie_depth=1))
    assert isinstance(c.complete("pl")[0], qac.Completion)
    assert qac.Completer.load(tmp_path / "m").complete("pl") == c.complete("pl")
    with pytest.raises(AttributeError):
        qac.NoSuchThing  # noqa: B018

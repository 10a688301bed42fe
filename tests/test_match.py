"""Matching what people actually type (native/match.c, the match step of native/answer.c,
qac/match.py): typo corrections against a brute-force reference, the order of the
groups, word-prefix matches, near-duplicate collapsing, highlight spans, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import prefix_alignment, spans
from test_answer import NOW, answerer

from qac import _kernel
from qac.complete import CompleterConfig
from qac.errors import InputError
from qac.match import MatchConfig
from qac.rank import FEATURES, SOURCES, Forest

S = {s: i for i, s in enumerate(SOURCES)}
EMPTY = _kernel.Texts([])


def osa_prefix(p: str, t: str) -> int:
    """The fewest edits (Damerau, optimal string alignment) between p and any prefix of
    t: the plain definition, every prefix of t tried."""
    def osa(a: str, b: str) -> int:
        d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a) + 1):
            d[i][0] = i
        for j in range(len(b) + 1):
            d[0][j] = j
        for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
        return d[len(a)][len(b)]
    return min(osa(p, t[:i]) for i in range(len(t) + 1))


def ask(a: _kernel.Answerer, prefix: str, match: MatchConfig | None, k: int = 50,
        history: _kernel.Texts = EMPTY, extra: tuple[list[str], list[int]] = ([], []),
        collapse: bool = False) -> _kernel.Answer:
    """One keystroke with the prefix's labels given as MPC candidates (as Completer does:
    a model with no beam here), most popular first, before ``extra``."""
    lo, hi = a.label_range(prefix.encode())
    mine = sorted(range(lo, hi), key=lambda i: (-a.popularity[i], i))
    texts = [a.labels[i] for i in mine] + extra[0]
    srcs = [S["mpc"]] * len(mine) + extra[1]
    n = len(texts)
    return a.answer(prefix.encode(), b"", EMPTY, history, texts, srcs, [1] * n, [1] * n,
                    NOW, 10, 0, k, False, collapse, match)


def labelled(labels: list[str], popularity: list[int], forest: Forest | None = None
             ) -> _kernel.Answerer:
    a = answerer(labels, popularity, forest or Forest.empty())
    a.labels, a.popularity = labels, popularity  # type: ignore[attr-defined]
    return a


def one_split(feature: str, threshold: float, left: float, right: float) -> Forest:
    """A one-tree forest: ``left`` for rows whose ``feature`` <= threshold, else
    ``right``."""
    return Forest(np.array([FEATURES.index(feature)], dtype=np.int32), np.array([threshold]),
                  np.array([-1], dtype=np.int32), np.array([-2], dtype=np.int32),
                  np.array([left, right]), np.array([0], dtype=np.int32))


#: letters of one, two (two lead bytes) and three bytes: an edit is a code point
LETTERS = "abcбжё日"
words = st.text(alphabet=LETTERS + " ", min_size=1, max_size=7).map(
    lambda s: " ".join(s.split()))


def corrections_are_the_reference(ls: list[str], prefix: str, typos: int,
                                   first_char: bool) -> tuple[_kernel.Answer, dict[str, int]]:
    """Ask for every label; assert the typo corrections (text -> edits) are exactly the
    labels the brute-force reference puts within ``typos`` edits; return the answer
    and the corrections."""
    a = labelled(ls, [1] * len(ls))
    m = MatchConfig(words=False, typos=typos, one_typo_chars=1, two_typo_chars=1,
                    first_char=first_char, fuzzy=1000)
    got = ask(a, prefix, m, k=len(ls) + 1)
    corrected = {t: e for t, e, g in zip(got.texts, got.edits, got.sources, strict=True)
                 if g == S["typo"]}
    want = {t: osa_prefix(prefix, t) for t in ls if not t.startswith(prefix)
            and (first_char or t[:1] == prefix[:1])}
    assert corrected == {t: e for t, e in want.items() if e <= typos}
    return got, corrected


@settings(max_examples=250, deadline=None)
@given(labels=st.sets(words.filter(bool), min_size=1, max_size=40),
       prefix=st.text(alphabet=LETTERS, min_size=1, max_size=6),
       typos=st.integers(1, 2), first_char=st.booleans())
def test_typo_matches_are_exactly_the_labels_within_the_edits(
        labels: set[str], prefix: str, typos: int, first_char: bool) -> None:
    ls = sorted(labels)
    got, corrected = corrections_are_the_reference(ls, prefix, typos, first_char)
    # the prefix's own labels first, then fewer edits first
    kinds = [0 if t.startswith(prefix) else 1 + corrected[t] for t in got.texts]
    assert kinds == sorted(kinds)
    assert {t for t in got.texts if t.startswith(prefix)} == {t for t in ls
                                                             if t.startswith(prefix)}


@settings(max_examples=150, deadline=None)
@given(labels=st.sets(st.text(alphabet="abбж", min_size=1, max_size=6), min_size=2,
                      max_size=250),
       prefix=st.text(alphabet="abбж", min_size=1, max_size=4), typos=st.integers(1, 2))
def test_typo_search_over_a_dense_trie_is_the_reference(
        labels: set[str], prefix: str, typos: int) -> None:
    """Many labels over few letters ("б" and "ж" share their first byte): deep,
    bushy tries, where the search reads a node's children off the labels' child
    table (native/match.c)."""
    corrections_are_the_reference(sorted(labels), prefix, typos, first_char=True)


@settings(max_examples=150, deadline=None)
@given(past=st.lists(words.filter(bool), min_size=1, max_size=12, unique=True),
       prefix=st.text(alphabet=LETTERS, min_size=1, max_size=6),
       typos=st.integers(1, 2), first_char=st.booleans())
def test_past_queries_within_the_edits_are_exactly_those_of_the_reference(
        past: list[str], prefix: str, typos: int, first_char: bool) -> None:
    a = labelled(["zzz"], [1])
    hist = _kernel.Texts(past, [1] * len(past), [NOW - 10 * (i + 1) for i in range(len(past))])
    m = MatchConfig(words=False, typos=typos, one_typo_chars=1, two_typo_chars=1,
                    first_char=first_char)
    got = ask(a, prefix, m, k=len(past) + 1, history=hist)
    corrected = {t: e for t, e in zip(got.texts, got.edits, strict=True) if e > 0 and t in past}
    want = {t: osa_prefix(prefix, t) for t in past if not t.startswith(prefix)
            and (first_char or t[:1] == prefix[:1])}
    assert corrected == {t: e for t, e in want.items() if e <= typos}


def test_a_typo_in_a_letter_of_several_bytes_is_one_edit() -> None:
    labels = sorted(["москва", "мост", "日本語の本", "ελλάδα"])
    a = labelled(labels, [1] * len(labels))
    m = MatchConfig(words=False)  # one edit from 3 characters, two from 8
    assert ask(a, "мсоква", m).texts == ["москва"]  # swapped: one edit, not two bytes
    assert ask(a, "моства", m).texts == ["москва"]  # changed across lead bytes
    assert ask(a, "мокв", m).texts == ["москва"]  # dropped
    assert ask(a, "日本語本", m).edits == [1]  # a dropped letter of three bytes
    assert ask(a, "ελάδα", m).texts == ["ελλάδα"]


def test_corrections_fill_the_list_and_never_push_an_exact_answer_down() -> None:
    labels = sorted(["google", "google maps", "google earth", "goolge", "gogle", "good"])
    a = labelled(labels, [5, 30, 100, 40, 50, 1])
    m = MatchConfig()
    got = ask(a, "goolge", m, k=10)
    assert got.texts[0] == "goolge" and got.edits[0] == 0  # the exact label holds its place
    assert set(got.texts[1:]) >= {"google", "google maps", "google earth"}
    assert all(e == 1 for e in got.edits[1:4])
    # enough exact answers: no corrections at all
    got = ask(a, "goo", MatchConfig(one_typo_chars=1), k=2)
    assert len(got.texts) == 2 and all(t.startswith("goo") for t in got.texts)
    assert ask(a, "gooogle", MatchConfig(typos=0), k=10).texts == []


def test_short_prefixes_allow_fewer_edits_and_the_first_letter_is_kept() -> None:
    labels = sorted(["cat", "car", "bat", "at"])
    a = labelled(labels, [1] * 4)
    m = MatchConfig(words=False, one_typo_chars=3, two_typo_chars=8)
    assert ask(a, "cbt", m).texts == ["cat"]  # one edit
    assert ask(a, "xat", m).texts == []  # the first letter is kept
    assert set(ask(a, "xat", MatchConfig(words=False, first_char=True)).texts) == {
        "cat", "bat", "at"}
    assert ask(a, "xa", MatchConfig(words=False, first_char=True)).texts == []  # too short


def test_past_queries_match_with_typos_and_by_word_prefix() -> None:
    a = labelled(["zzz"], [1])
    hist = _kernel.Texts(["rose of jericho", "apple watch", "new york times"], [1, 2, 1],
                         [NOW - 10, NOW - 20, NOW - 30])
    got = ask(a, "rsoe", MatchConfig(), history=hist)
    assert got.texts == ["rose of jericho"] and got.edits == [1]
    assert got.sources == [S["history"]]
    got = ask(a, "app wat", MatchConfig(), history=hist)
    assert got.texts == ["apple watch"] and got.edits == [0]
    assert ask(a, "york", MatchConfig(), history=hist).texts == ["new york times"]


def test_word_prefix_matches_most_popular_first_after_the_prefix_answers() -> None:
    labels = sorted(["apple watch", "apple watch band", "apple water", "new york times",
                     "new york", "york college", "app", "big apple watch sale"])
    pop = {"apple watch": 50, "apple watch band": 20, "apple water": 5, "new york times": 90,
           "new york": 80, "york college": 3, "app": 7, "big apple watch sale": 1}
    # a ranker that prefers popular rows still puts the prefix's own answers first
    a = labelled(labels, [pop[t] for t in labels], one_split("logpop", 2.0, 0.0, 1.0))
    m = MatchConfig(typos=0)
    got = ask(a, "app wat", m)
    assert got.texts == ["apple watch", "apple watch band", "apple water",
                         "big apple watch sale"]
    assert all(g == S["words"] for g in got.sources)
    # no label starts with "app wat": its matches are ranked with its generated guess
    got = ask(a, "app wat", m, extra=(["app watt"], [S["word"]]))
    assert got.texts[:2] == ["apple watch", "apple watch band"] and "app watt" in got.texts
    # "york college" starts with "york": the matches come after it
    got = ask(a, "york", m)
    assert got.texts == ["york college", "new york times", "new york"]
    assert ask(a, "york", MatchConfig(words=False, typos=0)).texts == ["york college"]


def test_generated_guesses_go_after_matches() -> None:
    labels = sorted(["weather channel", "weather"])
    a = labelled(labels, [10, 20])
    got = ask(a, "weathr chan", MatchConfig(), extra=(["weathr channel"], [S["suffix"]]))
    assert got.texts == ["weather channel", "weathr channel"]
    assert got.sources == [S["typo"], S["suffix"]]


def test_collapse_shows_the_users_variant_else_the_best_ranked() -> None:
    assert _kernel.variant_key("woot") == _kernel.variant_key("woot.com")
    for x, y in [("dress up", "dressup"), ("yahoo groups", "yahoo group"),
                 ("ebay com", "ebay . com"), ("www.woot.com", "woot"), ("macy's", "macys"),
                 ("victoria s secret", "victoria secret"), ("barnes & noble",
                                                            "barnes and noble")]:
        assert _kernel.variant_key(x) == _kernel.variant_key(y), (x, y)
    for x, y in [("bus", "bu"), ("yahoo", "yahoo mail"), ("gas", "ga"),
                 ("s club", "club"), ("and one", "one")]:  # a first word stays
        assert _kernel.variant_key(x) != _kernel.variant_key(y), (x, y)
    labels = sorted(["woot", "woot.com", "wood"])
    # the fewer characters added, the better: the best-ranked variant, "woot", is the
    # less popular one
    a = labelled(labels, [1, 5, 9], one_split("added_chars", 2.5, 1.0, 0.0))

    def top(history: _kernel.Texts, collapse: bool = True) -> list[str]:
        return ask(a, "wo", None, 10, history, collapse=collapse).texts

    full = top(EMPTY, False)
    assert sorted(full) == ["wood", "woot", "woot.com"]
    assert full.index("woot") < full.index("woot.com")
    assert top(EMPTY) == [t for t in full if t != "woot.com"]  # in place, best-ranked
    for own in ("woot", "woot.com"):
        mine = _kernel.Texts([own], [1], [NOW - 5])
        assert sorted(top(mine)) == sorted(["wood", own])  # the user's own


def test_spans() -> None:
    a = labelled(sorted(["new york", "apple watch", "new york times", "google maps",
                         "жёлтый дом", "next query"]), [1] * 6)

    def lit(prefix: str, text: str) -> tuple[tuple[int, int], ...]:
        got = ask(a, prefix, MatchConfig())
        return got.spans[got.texts.index(text)]

    assert lit("new y", "new york") == ((0, 5),)
    assert lit("new york ", "new york times") == ((0, 9),)  # a finished word's space
    assert lit("app wat", "apple watch") == ((0, 3), (6, 9))
    assert lit("york", "new york times") == ((4, 8),)
    assert lit("goolge", "google maps") == ((0, 3), (5, 6))  # "lg" swapped: not lit
    assert lit("жёлт", "жёлтый дом") == ((0, 4),)  # code points, not bytes
    assert lit("жёл д", "жёлтый дом") == ((0, 3), (7, 8))
    assert lit("жёлтьй", "жёлтый дом") == ((0, 4), (5, 6))  # one letter changed
    assert a.answer(b"", b"", EMPTY, EMPTY, ["next query"], [S["mpc"]], [1], [1], NOW, 10, 0,
                    5).spans == [()]  # nothing typed, nothing lit
    assert prefix_alignment("goolge", "google maps")[0] == 1


def one_typo(prefix: str, kind: int, at: int, letter: str) -> str:
    """``prefix`` with one edit at ``at``: 0 a letter changed, 1 one put in, 2 one left
    out, 3 two neighbours swapped (left as is where the edit does not fit)."""
    i = at % len(prefix)
    if kind == 0:
        return prefix[:i] + letter + prefix[i + 1:]
    if kind == 1:
        return prefix[:i] + letter + prefix[i:]
    if kind == 2 and len(prefix) > 1:
        return prefix[:i] + prefix[i + 1:]
    if kind == 3 and i + 1 < len(prefix):
        return prefix[:i] + prefix[i + 1] + prefix[i] + prefix[i + 2:]
    return prefix


@settings(max_examples=200, deadline=None)
@given(labels=st.sets(st.text(alphabet="abcж ", min_size=1, max_size=9).map(
           lambda s: " ".join(s.split())).filter(bool), min_size=1, max_size=30),
       pick=st.integers(0, 29), cut=st.integers(1, 9), typos=st.integers(0, 2),
       typo=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 8),
                                  st.sampled_from("abcж")))
def test_spans_are_the_reference_s(labels: set[str], pick: int, cut: int, typos: int,
                                   typo: tuple[int, int, str] | None) -> None:
    """Every answer's spans, from the kernel, equal the plain definition's
    (tests/reference.py), over code points: multi-byte letters included."""
    ls = sorted(labels)
    a = labelled(ls, list(range(len(ls), 0, -1)))
    # typed: the start of a label, with one typo where typos are allowed, so there
    # are answers (a random prefix often has none: nothing checked)
    target = ls[pick % len(ls)]
    prefix = target[:cut]
    typed = prefix if typo is None or typos == 0 else one_typo(prefix, *typo)
    if typed.strip():  # not just spaces: typed as nothing, nothing is answered
        prefix = typed
    got = ask(a, prefix, MatchConfig(typos=typos, first_char=True, one_typo_chars=1,
                                     two_typo_chars=4))
    assert got.texts, (prefix, target)
    for text, e, lit in zip(got.texts, got.edits, got.spans, strict=True):
        assert lit == tuple(spans(prefix, text, e)), (prefix, text, e)


def test_match_config_is_validated_and_saved() -> None:
    for bad in ({"typos": 3}, {"typos": True}, {"fuzzy": -1}, {"words": "yes"},
                {"max_visits": 0}):
        with pytest.raises(InputError):
            MatchConfig(**bad)  # type: ignore[arg-type]
    c = CompleterConfig(match=MatchConfig(typos=1, first_char=True))
    assert CompleterConfig.from_dict(c.to_dict()).match == c.match
    with pytest.raises(InputError, match=r"match: unknown keys \['typoz'\]"):
        CompleterConfig.from_dict({**c.to_dict(), "match": {"typoz": 1}})


@pytest.mark.parametrize("prefix", ["a" * 200, "!!!!!!!!", "🙂🙂🙂🙂", "e\u0301\u0301\u0301",
                                    "xqzjxqzjxqzj", "g" + "o" * 63 + "gle"])
def test_bad_input_answers_or_is_empty_never_an_error(prefix: str) -> None:
    labels = sorted(["google", "goo", "aaaa", "e"])
    a = labelled(labels, [1] * 4)
    got = ask(a, prefix, MatchConfig(first_char=True))
    assert got.visited <= MatchConfig().max_visits
    assert all(isinstance(t, str) for t in got.texts)

"""Offline evaluation: test cases with the users' contexts, the baselines, coverage, the
table."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from qac.evaluate import HistoryThenMpc, MpcSystem, evaluate, format_table
from qac.evaluate import test_cases as make_cases
from qac.history import Past, UserLog
from qac.logs import LogEvent
from qac.mpc import MostPopular

T0 = datetime(2006, 5, 1)


def _ev(user: str, session: str, query: str, minutes: int) -> LogEvent:
    return LogEvent(f"{user}:{session}", query, T0 + timedelta(minutes=minutes), user)


def _log() -> list[LogEvent]:
    # log order: by user, then time (as the AOL files)
    return [
        _ev("u", "1", "weather", 0), _ev("u", "1", "news", 1),
        _ev("u", "2", "weather", 60 * 24 * 10), _ev("u", "2", "maps", 60 * 24 * 10 + 1),
        _ev("u", "2", "weather radar", 60 * 24 * 10 + 2),
        _ev("v", "1", "cats", 5), _ev("v", "1", "dogs", 6),
    ]


def _q(h: tuple[Past, ...]) -> tuple[str, ...]:
    return tuple(p.query for p in h)


def test_cases_carry_the_users_context() -> None:
    since = T0 + timedelta(days=5)
    cases = make_cases(_log(), since=since)
    # only queries at or after `since` with a previous query in their session
    assert [(c.previous, c.target) for c in cases] == [("weather", "maps"),
                                                       ("maps", "weather radar")]
    # rows before `since` feed the history; distinct, most recent first; no other user
    assert _q(cases[0].history) == ("weather", "news")
    assert _q(cases[1].history) == ("maps", "weather", "news")
    # with how often and when: "weather" twice, last at the start of session 2
    w = cases[1].history[1]
    assert (w.count, w.last) == (2, (T0 + timedelta(days=10)).timestamp())
    # this session's queries with their times, most recent first
    assert [q for q, _ in cases[1].session] == ["maps", "weather"]
    assert cases[1].time == (T0 + timedelta(days=10, minutes=2)).timestamp()
    assert _q(make_cases(_log(), since=since, history=2)[1].history) == ("maps", "weather")
    assert all(c.history == () for c in make_cases(_log(), since=since, history=0))
    # without `since`, every query with a previous one is a case
    assert len(make_cases(_log())) == 4


def test_user_log_is_bounded_and_counts() -> None:
    users = UserLog(3)
    for i, q in enumerate(["a", "b", "c", "a", "d"]):
        users.add("s", "u", q, float(i))
    ctx = users.context("s", "u")
    assert [(p.query, p.count, p.last) for p in ctx.history] == [
        ("d", 1, 4.0), ("a", 2, 3.0), ("c", 1, 2.0)]
    assert ctx.previous == "d" and ctx.session[0] == ("d", 4.0)
    assert users.context("other", None).history == ()


def test_history_then_mpc_baseline() -> None:
    mpc = MostPopular({"weather": 9, "web md": 5, "wells fargo": 1})
    case = make_cases(_log())[0]
    hist = (Past("wells fargo", 1, 10.0), Past("west elm", 4, 5.0), Past("news", 1, 20.0))
    from dataclasses import replace
    case = replace(case, history=hist)
    # the user's matches, most recently issued first, then MPC without repeats
    assert HistoryThenMpc(mpc)("we", case, 4) == ["wells fargo", "west elm", "weather",
                                                   "web md"]
    assert HistoryThenMpc(mpc)("we", case, 1) == ["wells fargo"]


def test_history_then_mpc_under_a_blocklist_drops_blocked_texts_from_both_halves() -> None:
    from dataclasses import replace

    from qac.blocklist import Blocklist

    mpc = MostPopular({"weather": 9, "wet seal": 7, "web md": 5, "wells fargo": 1})
    hist = (Past("west elm", 1, 10.0), Past("wells fargo", 4, 5.0))
    case = replace(make_cases(_log())[0], history=hist)
    blocked = HistoryThenMpc(mpc, Blocklist.from_entries(["wells"], ["wet"]))
    assert HistoryThenMpc(mpc)("we", case, 5) == ["west elm", "wells fargo", "weather",
                                                   "wet seal", "web md"]
    assert blocked("we", case, 5) == ["west elm", "weather", "web md"]
    assert blocked("we", case, 2) == ["west elm", "weather"]
    assert not blocked.can_produce("we", replace(case, target="wells fargo"))
    assert HistoryThenMpc(mpc, Blocklist.empty())("we", case, 5) == HistoryThenMpc(mpc)(
        "we", case, 5)
    # the two most popular blocked: it reads further for the one asked
    many = MostPopular({"wet a": 9, "wet b": 8, "west": 1})
    no_history = replace(case, history=())
    assert HistoryThenMpc(many, Blocklist.from_entries([], ["wet"]))("we", no_history,
                                                                     1) == ["west"]


def test_coverage_counts_what_a_system_can_produce_at_all() -> None:
    mpc = MostPopular({"weather": 3, "news": 1})
    cases = make_cases(_log())
    res = evaluate({"mpc": MpcSystem(mpc)}, cases, lambda q: q in {"weather", "news"})
    # targets: news, maps, weather radar, dogs: only "news" is in the table
    assert res["mpc"]["coverage"] == pytest.approx(1 / 4)
    assert res["mpc"]["metrics"]["overall"]["count"] > 0
    assert "0.2500" in format_table(res)
    plain = evaluate({"mpc": lambda p, case, k: [t for t, _ in mpc.complete(p, k)]},
                     cases, lambda q: True)
    assert plain["mpc"]["coverage"] is None and " - " in format_table(plain)
    off = evaluate({"mpc": MpcSystem(mpc)}, cases, lambda q: True, coverage=False)
    assert off["mpc"]["coverage"] is None


def test_a_session_that_starts_before_since_is_not_tested() -> None:
    events = [_ev("u", "1", "late night", 0), _ev("u", "1", "after midnight", 10)]
    assert make_cases(events, since=T0 + timedelta(minutes=5)) == []
    assert [c.target for c in make_cases(events)] == ["after midnight"]

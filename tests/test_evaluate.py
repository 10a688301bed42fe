"""Offline evaluation: test cases with the users' histories, coverage, the table."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from qac.evaluate import MpcSystem, UserHistory, evaluate, format_table
from qac.evaluate import test_cases as make_cases
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


def test_cases_carry_the_users_earlier_distinct_queries() -> None:
    since = T0 + timedelta(days=5)
    cases = make_cases(_log(), since=since)
    # only queries at or after `since` with a previous query in their session
    assert [(c.previous, c.target) for c in cases] == [("weather", "maps"),
                                                       ("maps", "weather radar")]
    # rows before `since` feed the history; distinct, most recent first; no other user
    assert cases[0].history == ("weather", "news")
    assert cases[1].history == ("maps", "weather", "news")
    assert make_cases(_log(), since=since, history=2)[1].history == ("maps", "weather")
    assert all(c.history == () for c in make_cases(_log(), since=since, history=0))
    # without `since`, every query with a previous one is a case
    assert len(make_cases(_log())) == 4


def test_user_history_is_bounded() -> None:
    h = UserHistory(3)
    for q in ["a", "b", "c", "a", "d"]:
        h.add("u", q)
    assert h.get("u") == ("d", "a", "c")
    assert h.get("nobody") == ()


def test_coverage_counts_what_a_system_can_produce_at_all() -> None:
    mpc = MostPopular({"weather": 3, "news": 1})
    cases = make_cases(_log())
    res = evaluate({"mpc": MpcSystem(mpc)}, cases, lambda q: q in {"weather", "news"})
    # targets: news, maps, weather radar, dogs: only "news" is in the table
    assert res["mpc"]["coverage"] == pytest.approx(1 / 4)
    assert res["mpc"]["metrics"]["overall"]["count"] > 0
    assert "0.2500" in format_table(res)
    plain = evaluate({"mpc": lambda p, prev, k, h: [t for t, _ in mpc.complete(p, k)]},
                     cases, lambda q: True)
    assert plain["mpc"]["coverage"] is None and " - " in format_table(plain)
    off = evaluate({"mpc": MpcSystem(mpc)}, cases, lambda q: True, coverage=False)
    assert off["mpc"]["coverage"] is None


def test_a_session_that_starts_before_since_is_not_tested() -> None:
    events = [_ev("u", "1", "late night", 0), _ev("u", "1", "after midnight", 10)]
    assert make_cases(events, since=T0 + timedelta(minutes=5)) == []
    assert [c.target for c in make_cases(events)] == ["after midnight"]

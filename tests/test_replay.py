"""Session replay: same MRR as qac eval, keystroke arithmetic, acceptance, store, outputs."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sessionlog import pl_log

from qac.complete import Completer, CompleterConfig
from qac.evaluate import Case, evaluate
from qac.evaluate import test_cases as eval_cases
from qac.logs import LogEvent
from qac.replay import (
    ReplayConfig,
    Session,
    add_replay_arguments,
    inprocess_systems,
    replay,
    replay_http,
    run_replay,
    sessions_of,
)

SPLIT = datetime(2006, 5, 18)


def _log() -> list[LogEvent]:
    """Training sessions before SPLIT (the previous query decides "pl"), test after."""
    log = pl_log()
    log.time = SPLIT
    log.session("x1", "rose of jericho", "plant care tips", "playstation")
    log.session("x2", "game console", "playstation 5", "new york times", "unseen query")
    log.session("x3", "newton", "new york weather", "p")
    log.session("x4", "plant care tips")
    return log.events


@pytest.fixture(scope="module")
def completer() -> Completer:
    train = [e for e in _log() if e.time is not None and e.time < SPLIT]
    return Completer.train(train, CompleterConfig(index="hybrid", trie_depth=1))


def _test_events() -> list[LogEvent]:
    return [e for e in _log() if e.time is not None and e.time >= SPLIT]


def test_fixed_mode_computes_exactly_what_qac_eval_computes(completer: Completer) -> None:
    events = _test_events()
    systems = inprocess_systems({"m": completer})
    assert list(systems) == ["mpc", "hist+mpc", "m", "m -session"]
    want = evaluate({n: s for n, (s, _) in systems.items()}, eval_cases(events),
                    completer.__contains__)
    cfg = ReplayConfig(mode="fixed")
    runs = replay(sessions_of(events), systems, cfg, seen=completer.__contains__)
    for run in runs:
        got = run.summary()["metrics"]
        assert got == want[run.name]["metrics"], run.name
        assert got["overall"]["count"] > 0
    # and the session matters on this fixture
    by = {r.name: r.summary()["metrics"]["overall"]["mrr@10"] for r in runs}
    assert by["m"] > by["m -session"]


def test_typed_mode_differs_from_fixed_lengths(completer: Completer) -> None:
    sessions = sessions_of(_test_events())
    systems = inprocess_systems({"m": completer}, ["m"])
    typed = replay(sessions, systems, ReplayConfig())[0].summary()
    fixed = replay(sessions, systems, ReplayConfig(mode="fixed"))[0].summary()
    # typed mode asks every typed length (4 is not a fixed length) and first queries too
    assert 4 in typed["metrics"]["by_length"] and 4 not in fixed["metrics"]["by_length"]
    assert "keystrokes" in typed and "keystrokes" not in fixed


def _stub(shows: dict[tuple[str, int], list[str]], calls: list[tuple[str, str | None]]):
    """A system that answers shows[(target-less prefix key)]: looked up by prefix length
    and full target via the prefix; records (prefix, previous) of every call."""
    def system(prefix: str, case: Case, k: int) -> list[str]:
        calls.append((prefix, case.previous))
        for (target, n), got in shows.items():
            if len(prefix) == n and target.startswith(prefix):
                return got[:k]
        return []
    return system


def test_keystrokes_saved_arithmetic() -> None:
    calls: list[tuple[str, str | None]] = []
    system = _stub({("abcdef", 3): ["zzz", "abcdef"]}, calls)
    sessions = [Session("s", ("abcdef", "xyz", "q"), None)]
    run = replay(sessions, {"stub": (system, True)}, ReplayConfig())[0]
    s = run.summary()
    ks = s["keystrokes"]
    # abcdef: typed a, ab, abc -> accepted with 3 of 6 characters saved; xyz typed in
    # full (asked at x, xy; never at the full length); q: one character, never asked
    assert [p for p, _ in calls] == ["a", "ab", "abc", "x", "xy"]
    assert ks["queries"] == 3 and ks["characters"] == 10
    assert ks["saved_characters"] == 3
    assert ks["saved_pct"] == pytest.approx(30.0)
    assert ks["mean_saved_pct_per_query"] == pytest.approx(50.0 / 3)
    assert ks["completed_share"] == pytest.approx(1 / 3)
    assert sum(ks["saved_pct_hist"]["counts"]) == 3
    assert s["throughput"]["requests"] == 5 == s["latency_ms"]["n"]
    # MRR over the 5 requests: rank 2 once
    assert s["metrics"]["overall"]["mrr@10"] == pytest.approx(0.5 / 5)
    # only the second and third queries have a previous one
    assert s["keystrokes_with_previous"]["queries"] == 2
    assert s["with_previous"]["overall"]["count"] == 2


def test_acceptance_policies() -> None:
    target = "abcdefgh"
    shows = {(target, 2): ["a1", "a2", "a3", "a4", target],   # rank 5
             (target, 4): [target]}                          # rank 1
    sessions = [Session("s", (target,), None)]
    for cfg, at in ((ReplayConfig(accept="shown"), 2),
                    (ReplayConfig(accept="top", top_m=3), 4),
                    (ReplayConfig(accept="top", top_m=5), 2),
                    (ReplayConfig(accept="shown", k=4), 4)):  # rank 5 not shown at k=4
        calls: list[tuple[str, str | None]] = []
        run = replay(sessions, {"stub": (_stub(shows, calls), True)}, cfg)[0]
        assert len(calls) == at, cfg
        assert run.summary()["keystrokes"]["saved_characters"] == len(target) - at


def test_from_empty_asks_before_the_first_keystroke() -> None:
    calls: list[tuple[str, str | None]] = []
    system = _stub({("next query", 0): ["next query"]}, calls)
    sessions = [Session("s", ("first", "next query"), None)]
    run = replay(sessions, {"stub": (system, True)}, ReplayConfig(from_empty=True))[0]
    # the first query has no previous query: no empty-prefix request for it
    assert calls[:4] == [("f", None), ("fi", None), ("fir", None), ("firs", None)]
    assert calls[4:] == [("", "first")]
    ks = run.summary()["keystrokes"]
    assert ks["saved_characters"] == len("next query")


def test_previous_query_comes_from_the_session_store() -> None:
    calls: list[tuple[str, str | None]] = []
    sessions = [Session("a", ("one", "two", "three"), None), Session("b", ("four",), None)]
    stub = _stub({}, calls)
    replay(sessions, {"on": (stub, True)}, ReplayConfig())
    prev = {p: q for p, q in calls}
    assert prev["o"] is None and prev["tw"] == "one" and prev["thre"] == "two"
    assert prev["f"] is None  # sessions do not leak into each other
    calls.clear()
    replay(sessions, {"off": (stub, False)}, ReplayConfig())
    assert {q for _, q in calls} == {None}


def test_concurrent_workers_give_the_same_figures(completer: Completer) -> None:
    sessions = sessions_of(_test_events())
    systems = inprocess_systems({"m": completer}, ["m"])
    one = replay(sessions, systems, ReplayConfig())[0].summary()
    four = replay(sessions, systems, ReplayConfig(concurrency=4))[0].summary()
    assert four["metrics"]["overall"] == pytest.approx(one["metrics"]["overall"])
    assert four["keystrokes"]["saved_characters"] == one["keystrokes"]["saved_characters"]


def test_http_replay_uses_the_service_sessions(completer: Completer, tmp_path: Path) -> None:
    """Over HTTP (an ASGI transport, no sockets): without a session the figures equal
    the in-process ones with no context; with it, the session's context reaches the
    completer through the service's store (there, with the wall clock's times and only
    what the store recorded during the replay, so the figures are its own)."""
    from qac.replay.http import _httpx
    from qac.server import ServerConfig, create_app

    completer.save(tmp_path / "m")
    app = create_app(ServerConfig(model_dir=str(tmp_path / "m")))
    transport = _httpx().ASGITransport(app=app)
    sessions = sessions_of(_test_events())
    cfg = ReplayConfig(concurrency=3)
    runs = {r.name: r.summary() for r in replay_http("http://test", sessions, cfg,
                                                       transport=transport)}
    assert list(runs) == ["service", "service -session"]
    local = replay(sessions, inprocess_systems({"m": Completer.load(tmp_path / "m")},
                                               ["m-nocontext"]), cfg)[0].summary()
    plain = runs["service -session"]
    assert plain["metrics"]["overall"] == pytest.approx(local["metrics"]["overall"])
    assert plain["keystrokes"] == local["keystrokes"]
    for s in runs.values():
        assert s["errors"] == 0 and s["unrecorded_queries"] == 0
        assert s["server_took_ms"]["n"] == s["latency_ms"]["n"]
    # the previous query matters on this fixture, over HTTP too
    assert runs["service"]["metrics"]["overall"]["mrr@10"] > plain["metrics"]["overall"][
        "mrr@10"]


def test_http_replay_refuses_remote_hosts() -> None:
    from qac.errors import InputError

    with pytest.raises(InputError, match="local service"):
        replay_http("http://example.com:8000", [], ReplayConfig())


def _write_log(path: Path) -> Path:
    rows = ["AnonID\tSessionID\tQuery\tQueryTime"]
    for e in _log():
        assert e.time is not None
        rows.append(f"{e.session}\t0\t{e.query}\t{e.time.isoformat(sep=' ')}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_command_writes_json_markdown_and_pngs(completer: Completer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    completer.save(tmp_path / "hybrid")
    log = _write_log(tmp_path / "log.tsv")
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--log", str(log), "--since", "2006-05-18", "--model",
                              str(tmp_path / "hybrid"), "--out", str(out), "--quiet",
                              "--concurrency", "2"])
    assert run_replay(args) == 0
    printed = capsys.readouterr().out
    assert "Session effect" in printed
    report = json.loads((out / "replay.json").read_text())
    assert report["sessions"] == 4 and report["queries"] == 11
    assert set(report["systems"]) == {"mpc", "hist+mpc", "hybrid", "hybrid -session"}
    assert report["session_effect"][0]["system"] == "hybrid"
    assert report["session_effect"][0]["mrr_delta"] > 0
    assert "mrr_at_length_1_with_session" in report["session_effect"][0]
    md = (out / "replay.md").read_text()
    assert md.startswith("# Session replay") and "| hybrid -session |" in md
    for name in ("mrr_by_prefix.png", "latency_cdf.png", "keystrokes_saved.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name


def test_sessions_in_time_order_and_sampling() -> None:
    from qac.replay import sample_sessions

    t = datetime(2006, 5, 18)
    events = [LogEvent("late", "b", t + timedelta(hours=2), None),
              LogEvent("early", "a", t, None),
              LogEvent("late", "c", t + timedelta(hours=3), None),
              LogEvent("mid", "d", t + timedelta(hours=1), None)]
    got = sessions_of(events)
    assert [s.id for s in got] == ["early", "mid", "late"]
    assert got[2].queries == ("b", "c")
    picked = sample_sessions(got, 2, seed=1)
    assert len(picked) == 2 and picked == sorted(picked, key=got.index)
    assert sample_sessions(got, 2, seed=1) == picked


def test_fixed_mode_equals_qac_eval_with_the_users_context(completer: Completer) -> None:
    systems = inprocess_systems({"m": completer},
                                ["mpc", "hist+mpc", "m", "m-nosession", "m-nocontext"])
    assert list(systems) == ["mpc", "hist+mpc", "m", "m -session", "m -context"]
    # rows before SPLIT feed each user's history, in both
    cases = eval_cases(_log(), since=SPLIT)
    assert any(c.history for c in cases)
    want = evaluate({n: s for n, (s, _) in systems.items()}, cases, completer.__contains__)
    sessions = sessions_of(_log(), SPLIT)
    assert sessions[0].history and sessions[0].start is not None and sessions[0].start >= SPLIT
    runs = replay(sessions, systems, ReplayConfig(mode="fixed"), seen=completer.__contains__)
    for run in runs:
        assert run.summary()["metrics"] == want[run.name]["metrics"], run.name


def test_session_context_at_each_query() -> None:
    from qac.history import Past

    hist = (Past("z", 1, 30.0), Past("b", 2, 20.0), Past("y", 1, 10.0))
    s = Session("s", ("a", "b", "a", "c"), None, hist, (100.0, 101.0, 102.0, 103.0))

    def q(i: int, size: int = 200) -> list[tuple[str, int, float]]:
        return [(p.query, p.count, p.last) for p in s.case(i, size).history]

    assert q(0) == [("z", 1, 30.0), ("b", 2, 20.0), ("y", 1, 10.0)]
    assert q(1) == [("a", 1, 100.0), ("z", 1, 30.0), ("b", 2, 20.0), ("y", 1, 10.0)]
    # distinct, most recently issued first, counts added up
    assert q(3) == [("a", 2, 102.0), ("b", 3, 101.0), ("z", 1, 30.0), ("y", 1, 10.0)]
    assert q(3, size=2) == [("a", 2, 102.0), ("b", 3, 101.0)]
    c = s.case(3)
    assert c.previous == "a" and c.target == "c" and c.time == 103.0
    assert c.session == (("a", 102.0), ("b", 101.0), ("a", 100.0))
    t = datetime(2006, 5, 18)
    events = [LogEvent("u1", "old", t - timedelta(days=1), "u"),
              LogEvent("u2", "new", t, "u"), LogEvent("u2", "newer", t, "u"),
              LogEvent("v1", "other", t, "v")]
    got = {x.id: x for x in sessions_of(events, since=t)}
    assert set(got) == {"u2", "v1"}
    assert [p.query for p in got["u2"].history] == ["old"] and got["v1"].history == ()
    assert sessions_of(events, since=t, history=0)[0].history == ()


def test_plain_install_ships_the_replay_and_its_plots() -> None:
    """`pip install .` (no extras) installs every qac package, this one included, and
    matplotlib, so `qac replay` writes its PNGs after the README's install."""
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(root).parts)
               for p in (root / "qac").rglob("__init__.py")}
    assert "qac.replay" in on_disk and on_disk <= listed, on_disk - listed
    required = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower()
                for d in project["project"]["dependencies"]}
    assert "matplotlib" in required

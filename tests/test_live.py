"""The live stream (qac/live.py): overlay, privacy floor, fresh source, blocklist, the
Redis stream and its tail, two server replicas on one Redis, restart, retrain, Cluster."""

from __future__ import annotations

import gzip
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer
from starlette.testclient import TestClient

from qac.complete import Completer, CompleterConfig
from qac.errors import InputError, StoreUnavailable
from qac.live import (
    EventStream,
    LiveBlocklist,
    LiveConfig,
    Overlay,
    StreamTail,
    clean_event,
    parse_entries,
    parse_entry,
    read_stream_log,
)
from qac.logs import read_log
from qac.server import ServerConfig, create_app

AOL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "aol" / "sessions" / \
    "aol_top1000_sessions_dev.tsv.gz"
TOKEN = "live-admin-token"
_ids = itertools.count()


def _key() -> str:
    return f"qac:test:{next(_ids)}:events"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small completer trained on a slice of the AOL dev sessions (shipped ranker)."""
    root = tmp_path_factory.mktemp("live")
    log = root / "slice.tsv"
    with gzip.open(AOL, "rt", encoding="utf-8") as f, open(log, "w", encoding="utf-8") as out:
        for line in itertools.islice(f, 8001):
            out.write(line)
    Completer.train(read_log(log), CompleterConfig(fit_days=0)).save(root / "m")
    return root / "m"


@pytest.fixture(scope="module")
def completer(model: Path) -> Completer:
    return Completer.load(model)


def _texts(got: Any) -> list[str]:
    return [c.text for c in got]


# -- the overlay on its own ------------------------------------------------------------

def _overlay(**kw: Any) -> Overlay:
    labels = {"alpha": 0, "beta": 1}
    return Overlay(lambda q: labels.get(q, -1), 2, LiveConfig(**kw))


def test_privacy_floor_counts_distinct_sessions() -> None:
    ov = _overlay(privacy_floor=3)
    now = 1e9
    for s in ("a", "a", "b", "b"):
        ov.add("new thing", s, now)
    assert ov.fresh("new", 5, now) == ([], [])
    ov.add("new thing", "", now)  # the anonymous session: one session, whoever sends it
    texts, counts = ov.fresh("new", 5, now)
    # a session repeating its last query is the same search: a, b and "" count once each
    assert texts == ["new thing"] and counts[0] == pytest.approx(3.0)
    assert ov.fresh("x", 5, now) == ([], [])


def test_a_session_repeating_its_last_query_counts_once() -> None:
    ov = _overlay(privacy_floor=1)
    ov.add("alpha", "s", 1000.0)
    ov.add("alpha", "s", 1001.0)  # a retried submit, or another click on the same search
    assert ov.label_count(0, 1001.0) == pytest.approx(1.0, rel=1e-3)
    assert ov.repeats == 1
    ov.add("beta", "s", 1002.0)
    ov.add("alpha", "s", 1003.0)  # not the session's last query: a new search
    ov.add("alpha", "t", 1003.0)  # another session
    ov.add("alpha", "", 1003.0)  # anonymous events are never taken for repeats
    ov.add("alpha", "", 1003.0)
    assert ov.label_count(0, 1003.0) == pytest.approx(5.0, rel=1e-3)
    ov.add("alpha", "t", 1003.0 + 3600)  # the same query an hour later: a new search
    assert ov.stats()["repeats"] == 1


def test_counts_decay_with_the_half_life_and_survive_a_rebase() -> None:
    ov = _overlay(half_life=10.0, privacy_floor=1)
    ov.add("alpha", "s", 1000.0)
    ov.add("new", "s", 1000.0)
    assert ov.label_count(0, 1000.0) == pytest.approx(1.0)
    assert ov.label_count(0, 1010.0) == pytest.approx(0.5)
    assert ov.fresh_count("new", 1020.0)[0] == pytest.approx(0.25)
    # an event 60 half-lives later rebases every weight (no overflow), counts unchanged
    ov.add("beta", "s", 1600.0)
    assert ov.label_count(1, 1600.0) == pytest.approx(1.0)
    assert ov.label_count(0, 1010.0) == pytest.approx(0.5, rel=1e-9)
    assert ov.fresh_count("new", 1010.0)[0] == pytest.approx(0.5, rel=1e-9)


def test_the_fresh_table_is_bounded() -> None:
    ov = _overlay(max_fresh=100, privacy_floor=1)
    for i in range(1000):
        ov.add(f"query {i}", "s", 1e9 + i)
    assert len(ov._fresh) <= 100 and ov.evicted >= 900
    # the newest (heaviest) survive, and the eligible index agrees with the table
    assert "query 999" in ov._fresh
    assert sorted(ov._fresh) == ov._eligible


def test_bad_events_are_refused() -> None:
    assert clean_event("", "s", 1.0) is None
    assert clean_event("x" * 300, "s", 1.0) is None
    assert clean_event("ok", "s" * 65, 1.0) is None
    assert clean_event("ok", "s", float("nan")) is None
    assert clean_event("  Hello  World ", None, 5) == ("hello world", "", 5.0)
    assert parse_entry({b"q": b"\xff\xfe", b"s": b"a", b"t": b"1"}) is None
    assert parse_entry({b"q": b"fine"}) is None
    assert parse_entry({b"q": b"fine", b"s": b"a", b"t": b"nope"}) is None
    assert parse_entry({b"q": b"fine", b"s": b"a", b"t": b"12.5"}) == ("fine", "a", 12.5)
    with pytest.raises(InputError):
        parse_entries(["two words"], "add")
    with pytest.raises(InputError):
        parse_entries("sandy", "add")
    assert parse_entries(["Sandy", "hurr*"], "add") == ["sandy", "hurr*"]


# -- the completer ---------------------------------------------------------------------

def test_observe_makes_a_burst_fresh_and_first(completer: Completer) -> None:
    c = completer.with_options()
    c.live = c.new_overlay()
    now = time.time()
    assert "hurricane sandy" not in c
    for i in range(25):
        assert c.observe("Hurricane Sandy", f"s{i}", now)
    hu = c.complete("hu", k=5, now=now + 1)
    assert "hurricane sandy" in _texts(hu)
    first = c.complete("hurr", k=5, now=now + 1)[0]
    assert (first.text, first.source) == ("hurricane sandy", "fresh")


def test_one_session_is_never_shown_to_others(completer: Completer) -> None:
    c = completer.with_options()
    c.live = c.new_overlay()
    now = time.time()
    for s in ("a", "a", "b"):
        c.observe("zyxwv private thing", s, now)
    assert "zyxwv private thing" not in _texts(c.complete("zyxwv", k=10, now=now))
    c.observe("zyxwv private thing", "c", now)
    assert _texts(c.complete("zyxwv", k=10, now=now)) == ["zyxwv private thing"]


def test_live_counts_lift_a_known_query(completer: Completer) -> None:
    c = completer.with_options()
    c.live = c.new_overlay()
    now = time.time()
    before = _texts(c.complete("m", k=10, now=now))
    target = next(t for t in (c.labels.text_of(i) for i in range(len(c.labels)))
                  if t.startswith("m") and t not in before and " " in t)
    for i in range(40):
        c.observe(target, f"s{i}", now)
    _, scale = c.live.label_view(now)
    assert c.live.label_count(c.label_id(target), now) == pytest.approx(40 * c.live.weight)
    assert scale > 0
    texts, _, X = c.pool("m" + target[1:3], now=now)
    from qac.rank import FEATURES
    row = X[texts.index(target)]
    assert row[FEATURES.index("recent_pop")] > 5


def test_both_blocklists_apply_to_fresh_queries(completer: Completer) -> None:
    c = completer.with_options()
    bl = LiveBlocklist()
    c.live = c.new_overlay(LiveConfig(privacy_floor=1), bl)
    now = time.time()
    model_word = sorted(c.blocklist.words)[0]
    c.observe(f"qqq {model_word}", "a", now)
    c.observe("qqq sandy news", "a", now)
    assert _texts(c.complete("qqq", k=10, now=now)) == ["qqq sandy news"]
    bl.set(["sandy"], 1)
    assert _texts(c.complete("qqq", k=10, now=now)) == []
    # the live blocklist hides labels too, whatever their source
    top = c.complete("", k=3, now=now)[0].text
    bl.set([top.split()[0]], 2)
    assert top not in _texts(c.complete("", k=10, now=now))


# -- the Redis stream and its tail -------------------------------------------------------

def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.01)
    return time.monotonic() - t0


def test_tail_applies_every_event_once_in_order_and_skips_bad_entries(
        redis_server: RedisServer) -> None:
    cfg = LiveConfig(key=_key(), privacy_floor=1, block_ms=50)
    stream = EventStream(redis_server.url, cfg)
    now = time.time()
    stream.append([("alpha", "s1", now), ("brand new", "s1", now)])
    redis_server.cli("XADD", cfg.key, "*", "junk", "1")          # wrong shape
    redis_server.cli("XADD", cfg.key, "*", "q", "x", "t", "nan")  # bad time
    ov = _overlay(privacy_floor=1)
    tail = StreamTail(redis_server.url, LiveBlocklist(), cfg).start()
    try:
        assert tail.attach(ov).wait(5)
        assert ov.events == 2 and tail.skipped == 2
        stream.append([("alpha", s, now) for s in ("s2", "s3", "s4")])
        _wait(lambda: ov.events == 5)
        assert ov.label_count(0, now) == pytest.approx(4.0)
        time.sleep(0.3)  # nothing applied twice
        assert ov.events == 5 and ov.last_ids[cfg.key] == stream.last_ids()[cfg.key]
    finally:
        tail.stop()
        stream.close()


def test_tail_keeps_serving_when_redis_is_down_and_resumes(
        redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    server = redis_factory(None, "--appendonly", "yes").start()
    cfg = LiveConfig(key=_key(), privacy_floor=1, block_ms=50, socket_timeout=0.5)
    stream = EventStream(server.url, cfg)
    now = time.time()
    stream.append([("alpha", "s", now), ("alpha", "t", now)])
    ov = _overlay(privacy_floor=1)
    tail = StreamTail(server.url, LiveBlocklist(), cfg).start()
    try:
        assert tail.attach(ov).wait(5)
        server.stop()
        with pytest.raises(StoreUnavailable, match="event stream"):
            stream.append([("alpha", "s", now)])
        _wait(lambda: tail.errors > 0)
        assert ov.label_count(0, now) == pytest.approx(2.0)  # the overlay still serves
        server.start()
        stream = EventStream(server.url, cfg)
        stream.append([("alpha", "u", now)])
        _wait(lambda: ov.events == 3, timeout=10)
        assert ov.label_count(0, now) == pytest.approx(3.0) and tail.available
    finally:
        tail.stop()
        stream.close()


def test_sharded_streams_on_redis_cluster(redis_cluster: list[RedisServer]) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster[0].port}"
    cfg = LiveConfig(key=_key(), shards=3, privacy_floor=1, block_ms=30)
    stream = EventStream(url, cfg)
    now = time.time()
    queries = [f"cluster query {i}" for i in range(30)]
    stream.append([(q, "s", now) for q in queries])
    counts = {k: int(stream.sync.xlen(k)) for k in cfg.stream_keys()}
    assert sum(counts.values()) == 30 and all(counts.values())  # spread over the shards
    ov = _overlay(privacy_floor=1)
    tail = StreamTail(url, LiveBlocklist(), cfg).start()
    try:
        assert tail.attach(ov).wait(10)
        assert ov.events == 30
        stream.append([("alpha", "s", now)])
        _wait(lambda: ov.events == 31)
        events, last = read_stream_log(url, cfg)
        assert len(events) == 31 and set(last) == set(cfg.stream_keys())
    finally:
        tail.stop()
        stream.close()


# -- two replicas over HTTP --------------------------------------------------------------

def _app(model: Path, url: str, key: str) -> TestClient:
    cfg = ServerConfig(model_dir=str(model), redis_url=url, admin_token=TOKEN,
                       live=LiveConfig(key=key, blocklist_key=f"{{{key}}}:blocklist",
                                       block_ms=50, blocklist_poll=0.1))
    return TestClient(create_app(cfg))


def _suggested(client: TestClient, prefix: str, text: str, session: str = "other") -> bool:
    got = client.get("/v1/complete", params={"q": prefix, "session": session, "k": 5}).json()
    return text in [c["text"] for c in got["completions"]]


@pytest.fixture()
def replicas(model: Path, redis_server: RedisServer) -> Iterator[tuple[TestClient, TestClient,
                                                                       str]]:
    key = _key()
    with _app(model, redis_server.url, key) as a, _app(model, redis_server.url, key) as b:
        yield a, b, key


def test_a_query_from_three_sessions_on_a_is_suggested_by_b(
        replicas: tuple[TestClient, TestClient, str]) -> None:
    a, b, _ = replicas
    q = "zyxwv brand new query"
    for s in ("u1", "u2"):
        assert a.post(f"/v1/sessions/{s}/queries", json={"query": q}).status_code == 200
    # b has applied both events, and two sessions are below the floor
    _wait(lambda: b.app.state.qac.current[0].live.events >= 2, 1.0)  # type: ignore[attr-defined]
    assert not _suggested(b, "zyx", q)
    assert a.post("/v1/sessions/u3/queries", json={"query": q}).status_code == 200
    _wait(lambda: _suggested(b, "zyx", q), 1.0)  # within a second
    got = b.get("/v1/complete", params={"q": "zyx", "session": "u4"}).json()["completions"]
    assert got[0]["source"] == "fresh"


def test_hurricane_sandy_and_the_blocklist_across_replicas(
        replicas: tuple[TestClient, TestClient, str], model: Path,
        redis_server: RedisServer) -> None:
    a, b, key = replicas
    for i in range(25):
        assert a.post(f"/v1/sessions/hs{i}/queries",
                      json={"query": "hurricane sandy"}).status_code == 200
    _wait(lambda: _suggested(b, "hu", "hurricane sandy"), 2.0)
    got = b.get("/v1/complete", params={"q": "hurr", "k": 5}).json()["completions"]
    assert got[0]["text"] == "hurricane sandy"
    # wrong tokens
    assert a.post("/v1/admin/blocklist", json={"add": ["sandy"]}).status_code == 401
    assert a.post("/v1/admin/blocklist", json={"add": ["sandy"]},
                  headers={"Authorization": "Bearer nope"}).status_code == 403
    assert a.post("/v1/admin/blocklist", json={"add": ["two words"]},
                  headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 400
    r = a.post("/v1/admin/blocklist", json={"add": ["sandy"]},
               headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["entries"] == ["sandy"]
    _wait(lambda: not _suggested(b, "hurr", "hurricane sandy"), 1.0)  # within a second
    listed = b.get("/v1/admin/blocklist", headers={"Authorization": f"Bearer {TOKEN}"})
    assert listed.json()["entries"] == ["sandy"]
    # a restarted replica rebuilds its overlay and reads the blocklist
    with _app(model, redis_server.url, key) as b2:
        assert not _suggested(b2, "hurr", "hurricane sandy")
        assert b2.post("/v1/admin/blocklist", json={"remove": ["sandy"]},
                       headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert _suggested(b2, "hurr", "hurricane sandy")
        _wait(lambda: _suggested(a, "hurr", "hurricane sandy"), 1.0)
        metrics = b2.get("/metrics").text
        assert 'qac_live{stat="applied"} 25.0' in metrics


def test_bad_input_is_a_clear_4xx_and_redis_down_is_a_503(
        model: Path, redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory().start()
    key = _key()
    with _app(model, server.url, key) as a:
        assert a.post("/v1/sessions/u1/queries", json={"query": "  "}).status_code == 400
        assert a.post("/v1/sessions/u1/queries",
                      json={"query": "x" * 300}).status_code == 400
        assert a.post("/v1/sessions/u1/queries", json={"query": "fine"}).status_code == 200
        server.stop()
        r = a.post("/v1/sessions/u1/queries", json={"query": "lost?"})
        assert r.status_code == 503 and "not" in r.json()["error"]
        # completions go on, from the overlay as it is
        assert a.get("/v1/complete", params={"q": "fi"}).status_code == 200


def test_a_retried_submit_is_counted_once(model: Path, redis_server: RedisServer) -> None:
    key = _key()
    with _app(model, redis_server.url, key) as a:
        state = a.app.state.qac  # type: ignore[attr-defined]
        store, stream = state.store, state.stream
        real_record, real_publish = store.record, stream.publish
        calls: list[str] = []

        async def record_fails_once(session: str, query: str, t: float) -> str:
            calls.append(query)
            if len(calls) == 1:
                raise StoreUnavailable("session store down (test)")
            return await real_record(session, query, t)

        async def publish_fails(query: str, session: str, t: float) -> str:
            raise StoreUnavailable("event stream down (test)")

        # the stream fails: nothing is written at all
        stream.publish = publish_fails
        r = a.post("/v1/sessions/rt1/queries", json={"query": "zq retried query"})
        assert r.status_code == 503 and not calls
        stream.publish = real_publish
        # the stream takes it, the session store fails; the client retries
        store.record = record_fails_once
        r = a.post("/v1/sessions/rt1/queries", json={"query": "zq retried query"})
        assert r.status_code == 503 and "counted once" in r.json()["error"]
        r = a.post("/v1/sessions/rt1/queries", json={"query": "zq retried query"})
        assert r.status_code == 200 and len(calls) == 2
        ov = state.current[0].live
        _wait(lambda: ov.events == 2)
        assert ov.fresh_events == 1 and ov.repeats == 1  # two events, one search
        ctx = a.portal.call(real_record.__self__.context, "rt1", "zq", 10)
        assert [(h.query, h.count) for h in ctx.history] == [("zq retried query", 1)]
        # and retraining from the stream counts it once too
        events, _ = read_stream_log(redis_server.url, LiveConfig(key=key))
        assert [e.query for e in events] == ["zq retried query"]


def test_without_redis_the_overlay_survives_a_reload(model: Path) -> None:
    cfg = ServerConfig(model_dir=str(model), admin_token=TOKEN,
                       live=LiveConfig(privacy_floor=2))
    with TestClient(create_app(cfg)) as c:
        for s in ("x1", "x2"):
            c.post(f"/v1/sessions/{s}/queries", json={"query": "zyxwv local query"})
        c.post("/v1/sessions/x3/queries", json={"query": "zyxwv once"})
        old = c.app.state.qac.current[0].live  # type: ignore[attr-defined]
        r = c.post("/v1/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        new = c.app.state.qac.current[0].live  # type: ignore[attr-defined]
        assert new is not old and new.events == 3
        assert _suggested(c, "zyx", "zyxwv local query")
        assert not _suggested(c, "zyx", "zyxwv once")  # still below the floor
        c.post("/v1/sessions/x4/queries", json={"query": "zyxwv once"})
        assert _suggested(c, "zyx", "zyxwv once")  # x3 was carried over: two sessions


def test_published_label_counts_are_never_written(completer: Completer) -> None:
    c = completer.with_options()
    text = completer.labels.text_of(0)
    c.observe(text, "s1", 1000.0)
    arr, scale = c.live.label_view(1000.0)  # type: ignore[union-attr]
    before = arr.copy()
    for i in range(50):
        c.observe(text, f"s{i + 2}", 1000.0)
    assert (arr == before).all()  # what a reader (the C answerer) holds stays as it was
    arr2, scale2 = c.live.label_view(1000.0)  # type: ignore[union-attr]
    assert arr2 is not arr and arr2[0] * scale2 == pytest.approx(51 * scale)


def test_carry_maps_counts_to_another_model(completer: Completer) -> None:
    a = completer.labels.text_of(0)
    labels = {a: 5}
    old = completer.new_overlay(LiveConfig(privacy_floor=2))
    old.add(a, "s1", 1000.0)
    old.add("brand new thing", "s1", 1000.0)
    old.add("brand new thing", "s2", 1000.0)
    old.add("another new one", "s1", 1000.0)
    new = Overlay(lambda q: labels.get(q, -1), 10, LiveConfig(privacy_floor=2))
    new.carry(old)
    assert new.label_count(5, 1000.0) == pytest.approx(1.0)
    assert new.fresh("brand", 5, 1000.0)[0] == ["brand new thing"]
    assert new.fresh_count("another new one", 1000.0) == (pytest.approx(1.0), False)
    new.add("another new one", "s2", 1000.0)
    assert new.fresh_count("another new one", 1000.0)[1]  # s1 carried: two sessions now


def test_without_redis_a_server_feeds_its_own_overlay(model: Path) -> None:
    cfg = ServerConfig(model_dir=str(model), live=LiveConfig(privacy_floor=2))
    with TestClient(create_app(cfg)) as c:
        for s in ("x1", "x2"):
            c.post(f"/v1/sessions/{s}/queries", json={"query": "zyxwv local query"})
        assert _suggested(c, "zyx", "zyxwv local query")


def test_train_from_the_stream_records_the_last_id_and_reload_trims_the_overlay(
        model: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    from qac.complete import train_completer

    key = "qac:events"  # the default key (what `qac train --log redis://` reads)
    redis_server.cli("DEL", key)
    stream = EventStream(redis_server.url, LiveConfig(key=key))
    base = time.time() - 3 * 86400
    events = [(q, f"t{i % 40}", base + i * 60.0)
              for i, q in enumerate(["old query one", "old query two", "older thing"] * 100)]
    stream.append(events)
    new = train_completer(redis_server.url, tmp_path / "m2", CompleterConfig(fit_days=0))
    assert new.stream == stream.last_ids()
    assert Completer.load(tmp_path / "m2").stream == new.stream
    # events after the model: only those are in the overlay after a reload
    with _app(model, redis_server.url, key) as a:
        for s in ("r1", "r2", "r3"):
            a.post(f"/v1/sessions/{s}/queries", json={"query": "after the model"})
        ov = a.app.state.qac.current[0].live  # type: ignore[attr-defined]
        _wait(lambda: ov.events == 303)
        r = a.post("/v1/admin/reload", json={"model_dir": str(tmp_path / "m2")},
                   headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        ov2 = a.app.state.qac.current[0].live  # type: ignore[attr-defined]
        assert ov2 is not ov and ov2.events == 3
        assert _suggested(a, "after", "after the model")
    stream.close()


def test_serve_flags_reach_the_live_config() -> None:
    import argparse

    from qac.server.serve import add_serve_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    cfg = config_from_args(p.parse_args(["m", "--live-weight", "5", "--tail-share", "0.5"]))
    assert cfg.live.weight == 5.0 and cfg.live.tail_share == 0.5
    assert ServerConfig.from_env(cfg.to_env()) == cfg  # what the workers get
    default = config_from_args(p.parse_args(["m"])).live
    assert default.weight is None and default.tail_share == LiveConfig().tail_share
    with pytest.raises(InputError, match="tail_share"):
        config_from_args(p.parse_args(["m", "--tail-share", "0"]))
    with pytest.raises(InputError, match="weight"):
        config_from_args(p.parse_args(["m", "--live-weight", "-1"]))

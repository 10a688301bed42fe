"""Session stores against a real throwaway redis-server (see conftest.py) and in memory."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from conftest import RedisServer, free_port

from qac.errors import InputError
from qac.session import (
    MAX_QUERY_CHARS,
    MAX_SESSION_CHARS,
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
    history_key,
    make_store,
    session_key,
)

T = TypeVar("T")
_ids = itertools.count()


def sid(name: str = "s") -> str:
    """A session id unique within this run (the shared test server is not flushed)."""
    return f"{name}-{next(_ids)}-{time.monotonic_ns() % 10**9}"


def with_store(make: Callable[[], SessionStore], body: Callable[[SessionStore], Awaitable[T]]) -> T:
    """Run ``body(store)`` in a fresh event loop; the store is built and closed inside it."""

    async def main() -> T:
        store = make()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --------------------------------------------------------------------------- Redis


def test_record_recent_order_cap_and_previous(redis_server: RedisServer) -> None:
    s = sid()

    async def body(store: SessionStore) -> None:
        assert await store.recent(s) == []
        assert await store.previous(s) is None
        for i in range(6):
            await store.record(s, f"query {i}")
        assert await store.recent(s, 3) == ["query 5", "query 4", "query 3"]
        assert await store.recent(s) == ["query 5", "query 4", "query 3", "query 2"]
        assert await store.recent(s, 100) == await store.recent(s, 4)  # capped at max_queries
        assert await store.recent(s, 0) == []
        assert await store.previous(s) == "query 5"

    with_store(lambda: RedisSessionStore(redis_server.url, max_queries=4), body)
    assert redis_server.cli("LLEN", session_key(s)) == "4"


def test_key_format_and_ttl_refreshed_on_write(redis_server: RedisServer) -> None:
    s = sid("ttl")
    key = f"qac:{{{s}}}:recent"
    assert session_key(s) == key

    async def body(store: SessionStore) -> None:
        await store.record(s, "first")
        assert redis_server.cli("TYPE", key) == "list"
        assert 990 <= int(redis_server.cli("TTL", key)) <= 1000
        redis_server.cli("EXPIRE", key, "5")
        await store.recent(s)  # a read does not refresh the TTL
        assert int(redis_server.cli("TTL", key)) <= 5
        await store.record(s, "second")
        assert 990 <= int(redis_server.cli("TTL", key)) <= 1000

    with_store(lambda: RedisSessionStore(redis_server.url, ttl_seconds=1000), body)
    assert redis_server.cli("LRANGE", key, "0", "-1").split("\n") == ["second", "first"]
    # nothing else written than the two lists
    assert sorted(redis_server.cli("KEYS", f"*{s}*").split("\n")) == [history_key(s), key]


def test_sessions_are_isolated(redis_server: RedisServer) -> None:
    a, b = sid("a"), sid("b")

    async def body(store: SessionStore) -> None:
        await store.record(a, "red shoes")
        await store.record(b, "blue hat")
        await store.record(a, "red boots")
        assert await store.recent(a) == ["red boots", "red shoes"]
        assert await store.recent(b) == ["blue hat"]
        # ids that would collide if keys were built from unvalidated text are refused
        for evil in (f"{a}}}:recent", f"{a}*", "*"):
            with pytest.raises(InputError):
                await store.recent(evil)

    with_store(lambda: RedisSessionStore(redis_server.url), body)


BAD_IDS: list[Any] = [
    "", "x" * (MAX_SESSION_CHARS + 1), "a b", "a:b", "{a}", "a}", "café", "a\n", "a\x00",
    "../a", 42, None, b"abc",
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_invalid_session_ids(bad: Any, kind: str, redis_server: RedisServer) -> None:
    url = None if kind == "memory" else redis_server.url

    async def body(store: SessionStore) -> None:
        with pytest.raises(InputError, match="session id"):
            await store.record(bad, "q")
        with pytest.raises(InputError, match="session id"):
            await store.recent(bad)
        with pytest.raises(InputError, match="session id"):
            await store.previous(bad)
        with pytest.raises(InputError, match="session id"):
            await store.context(bad, 10)
        assert store.stats()["errors"] == 0  # an input error is the caller's, not Redis's

    with_store(lambda: make_store(url), body)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_query_normalization_and_limits(kind: str, redis_server: RedisServer) -> None:
    url = None if kind == "memory" else redis_server.url
    s = sid("norm")
    longest = "a" * MAX_SESSION_CHARS

    async def body(store: SessionStore) -> None:
        await store.record(s, "  Red\tSHOES  ")
        await store.record(s, "   ")  # empty after normalization: not recorded
        await store.record(s, "")
        await store.record(s, "Ｆｕｌｌ width")
        assert await store.recent(s) == ["full width", "red shoes"]
        await store.record(s, "q" * MAX_QUERY_CHARS)
        with pytest.raises(InputError, match="query is"):
            await store.record(s, "q" * (MAX_QUERY_CHARS + 1))
        with pytest.raises(InputError):
            await store.record(s, 123)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="n must be"):
            await store.recent(s, -1)
        for bad in (-1, 1.5, True, "3", None):
            with pytest.raises(InputError, match="history must be"):
                await store.context(s, bad)  # type: ignore[arg-type]
        assert (await store.context(s, 10))[1][:2] == ["q" * MAX_QUERY_CHARS, "full width"]
        await store.record(longest, "ok")
        assert await store.previous(longest) == "ok"

    with_store(lambda: make_store(url), body)


# --------------------------------------------------------------------------- history (Redis)


class RoundTrips:
    """Counts the request batches redis-py writes to a socket (one per round trip:
    a pipeline is one write, then its replies are read)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.count = 0
        real = AbstractConnection.send_packed_command

        async def counting(conn: Any, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            await real(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


def test_history_distinct_most_recent_first_capped(redis_server: RedisServer) -> None:
    s = sid("hist")
    assert history_key(s) == f"qac:{{{s}}}:history"

    async def body(store: SessionStore) -> None:
        assert await store.context(s, 10) == (None, [])
        for q in ["a", "b", "c", "b", "Ｂ ", "a", "d"]:  # "Ｂ " normalizes to "b"
            await store.record(s, q)
        assert await store.recent(s, 10) == ["d", "a", "b", "b", "c", "b"]  # max_queries 6
        assert await store.context(s, 10) == ("d", ["d", "a", "b", "c"])
        assert await store.context(s, 2) == ("d", ["d", "a"])
        assert await store.context(s, 0) == ("d", [])
        await store.record(s, "e")  # history cap 4: "c", the oldest, drops out
        assert await store.context(s, 100) == ("e", ["e", "d", "a", "b"])
        await store.record(s, "b")  # a repeat at the cap moves to the front, drops none
        assert await store.context(s, 100) == ("b", ["b", "e", "d", "a"])

    with_store(lambda: RedisSessionStore(redis_server.url, max_queries=6, history_size=4), body)
    assert redis_server.cli("LRANGE", history_key(s), "0", "-1").split("\n") == ["b", "e", "d", "a"]


def test_history_has_its_own_ttl(redis_server: RedisServer) -> None:
    s = sid("httl")
    key, hkey = session_key(s), history_key(s)

    async def body(store: SessionStore) -> None:
        await store.record(s, "one")
        assert redis_server.cli("TYPE", hkey) == "list"
        assert 290 <= int(redis_server.cli("TTL", key)) <= 300
        assert 86390 <= int(redis_server.cli("TTL", hkey)) <= 86400
        redis_server.cli("EXPIRE", hkey, "50")
        await store.context(s, 10)  # a read does not refresh it
        assert int(redis_server.cli("TTL", hkey)) <= 50
        await store.record(s, "two")  # a write does
        assert 86390 <= int(redis_server.cli("TTL", hkey)) <= 86400
        # the recent list expires (30 min in production): no previous query, history stays
        redis_server.cli("DEL", key)
        assert await store.context(s, 10) == (None, ["two", "one"])
        assert await store.previous(s) is None
        redis_server.cli("DEL", hkey)
        await store.record(s, "three")
        assert await store.context(s, 10) == ("three", ["three"])

    with_store(lambda: RedisSessionStore(redis_server.url, ttl_seconds=300,
                                         history_ttl_seconds=86400), body)
    assert sorted(redis_server.cli("KEYS", f"*{s}*").split("\n")) == sorted([hkey, key])


def test_history_off(redis_server: RedisServer) -> None:
    s = sid("hoff")

    async def body(store: SessionStore) -> None:
        await store.record(s, "one")
        await store.record(s, "two")
        assert await store.context(s, 50) == ("two", [])

    with_store(lambda: RedisSessionStore(redis_server.url, history_size=0), body)
    assert redis_server.cli("KEYS", f"*{s}*") == session_key(s)  # no history key written


def test_record_and_context_are_one_round_trip_each(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = sid("rt")

    async def body(store: SessionStore) -> None:
        await store.recent(s)  # connect (the handshake is not what is measured)
        trips = RoundTrips(monkeypatch)
        await store.record(s, "red shoes")
        await store.record(s, "blue hat")
        await store.record(s, "red shoes")
        assert trips.count == 3
        trips.count = 0
        assert await store.context(s, 200) == ("red shoes", ["red shoes", "blue hat"])
        assert trips.count == 1
        trips.count = 0
        assert await store.context(s, 0) == ("red shoes", [])
        assert trips.count == 1

    with_store(lambda: RedisSessionStore(redis_server.url), body)


def test_context_drops_a_duplicate_left_by_a_race(redis_server: RedisServer) -> None:
    s = sid("dup")

    async def body(store: SessionStore) -> None:
        await store.record(s, "a")
        # what two workers recording "b" at the same instant can leave behind
        redis_server.cli("LPUSH", history_key(s), "b", "b")
        assert await store.context(s, 10) == ("a", ["b", "a"])
        await store.record(s, "b")  # LREM removes every copy
        assert redis_server.cli("LRANGE", history_key(s), "0", "-1").split("\n") == ["b", "a"]

    with_store(lambda: RedisSessionStore(redis_server.url), body)


BAD_HISTORY_OPTIONS: list[dict[str, Any]] = [
    {"history_size": -1}, {"history_size": 1.5}, {"history_size": True},
    {"history_size": "200"}, {"history_ttl_seconds": 0}, {"history_ttl_seconds": -5},
    {"history_ttl_seconds": True}, {"history_ttl_seconds": "60"},
]  # fmt: skip


@pytest.mark.parametrize("kw", BAD_HISTORY_OPTIONS, ids=repr)
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_bad_history_options(kind: str, kw: dict[str, Any]) -> None:
    url = None if kind == "memory" else "redis://127.0.0.1:1"
    with pytest.raises(InputError, match=next(iter(kw))):
        make_store(url, **kw)


def test_redis_history_ttl_must_be_whole_seconds() -> None:
    with pytest.raises(InputError, match="history_ttl_seconds"):
        RedisSessionStore("redis://127.0.0.1:1", history_ttl_seconds=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Redis down


def test_closed_port_costs_nothing_per_request(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there

    async def body(store: SessionStore) -> list[float]:
        await store.record("s1", "lost")  # first failure
        times = []
        for i in range(200):
            t0 = time.perf_counter()
            assert await store.recent("s1") == []
            await store.record("s1", f"q{i}")
            times.append(time.perf_counter() - t0)
            if i % 20 == 0:
                await asyncio.sleep(0.06)  # let some back-offs end, so Redis is tried again
        st = store.stats()
        assert st["available"] is False
        assert st["errors"] >= 2 and st["skipped"] > 100
        assert "ConnectionError" in st["last_error"]
        return times

    with caplog.at_level(logging.WARNING, logger="qac.session"):
        times = with_store(lambda: RedisSessionStore(url, backoff_seconds=0.05), body)
    assert max(times) < 0.010, f"slowest call {max(times) * 1e3:.2f} ms"
    warnings = [r for r in caplog.records if r.name == "qac.session"]
    assert len(warnings) == 1  # rate-limited: one per 10 s


def test_hung_redis_bounded_by_deadline_then_skipped() -> None:
    # A listener that never answers: connect succeeds (kernel backlog), reads time out.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"redis://127.0.0.1:{hole.getsockname()[1]}"

        async def body(store: SessionStore) -> tuple[float, list[float]]:
            t0 = time.perf_counter()
            # concurrent requests that arrive while Redis hangs all give up together
            got = await asyncio.gather(*(store.recent(f"s{i}") for i in range(20)))
            first = time.perf_counter() - t0
            assert got == [[]] * 20
            later = []
            for _ in range(50):
                t0 = time.perf_counter()
                assert await store.recent("s1") == []
                later.append(time.perf_counter() - t0)
            assert store.stats()["errors"] >= 1
            return first, later

        first, later = with_store(
            lambda: RedisSessionStore(url, socket_timeout=0.05, backoff_seconds=5), body
        )
    assert first < 0.5, f"hung Redis held requests {first * 1e3:.0f} ms"
    assert max(later) < 0.010


def test_errors_counted_and_log_rate_limited(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    url = f"redis://127.0.0.1:{free_port()}"

    async def body(store: SessionStore) -> None:
        for _ in range(5):  # 5 real attempts, each after the back-off ended
            assert await store.recent("s") == []
            clock.t += 0.3
        assert await store.recent("s") == []
        assert store.stats()["errors"] == 6
        assert await store.recent("s") == []  # within the back-off: skipped, not tried
        assert store.stats()["errors"] == 6 and store.stats()["skipped"] == 1
        clock.t += 10
        await store.record("s", "q")

    with caplog.at_level(logging.WARNING, logger="qac.session"):
        with_store(lambda: RedisSessionStore(url, clock=clock, log_interval=10.0), body)
    msgs = [r.getMessage() for r in caplog.records if r.name == "qac.session"]
    assert len(msgs) == 2, msgs
    assert "1 error(s) since last report, 1 in all" in msgs[0]
    assert "6 error(s) since last report, 7 in all" in msgs[1]
    assert "record:" in msgs[1]


def test_context_with_redis_down_is_empty_counted_and_backed_off(clock: FakeClock) -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there

    async def body(store: SessionStore) -> None:
        assert await store.context("s", 200) == (None, [])
        st = store.stats()
        assert st["errors"] == 1 and st["available"] is False
        assert st["last_error"].startswith("context: ")
        assert await store.context("s", 200) == (None, [])  # within the back-off
        assert store.stats()["errors"] == 1 and store.stats()["skipped"] == 1
        clock.t += 1
        assert await store.context("s", 0) == (None, [])  # tried again, fails again
        assert store.stats()["errors"] == 2

    with_store(lambda: RedisSessionStore(url, clock=clock, backoff_seconds=0.5), body)


def test_context_with_hung_redis_is_bounded() -> None:
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"redis://127.0.0.1:{hole.getsockname()[1]}"

        async def body(store: SessionStore) -> float:
            t0 = time.perf_counter()
            got = await asyncio.gather(*(store.context(f"s{i}", 200) for i in range(20)))
            assert got == [(None, [])] * 20
            return time.perf_counter() - t0

        took = with_store(lambda: RedisSessionStore(url, socket_timeout=0.05), body)
    assert took < 0.5, f"hung Redis held context {took * 1e3:.0f} ms"


def test_context_back_within_1s_of_redis_returning(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory().start()
    key = session_key("back")

    async def body(store: SessionStore) -> float:
        await store.record("back", "before")
        assert await store.recent("back") == ["before"]
        server.stop()
        assert await store.recent("back") == []
        await store.record("back", "dropped")
        assert store.stats()["available"] is False
        # requests keep coming in while Redis is down
        for _ in range(30):
            assert await store.recent("back") == []
            await asyncio.sleep(0.01)
        server.start()
        server.cli("LPUSH", key, "after")  # the restarted server has no data (no persistence)
        t0 = time.perf_counter()
        while await store.recent("back") != ["after"]:
            assert time.perf_counter() - t0 < 2.0, store.stats()
            await asyncio.sleep(0.01)
        back = time.perf_counter() - t0
        assert store.stats()["available"] is True
        await store.record("back", "again")
        assert await store.recent("back") == ["again", "after"]
        return back

    back = with_store(lambda: RedisSessionStore(server.url, backoff_seconds=0.2), body)
    assert back < 1.0, f"context back after {back:.3f} s"


# --------------------------------------------------------------------------- memory


def test_memory_sync_api_order_cap(clock: FakeClock) -> None:
    store = MemorySessionStore(max_queries=3, clock=clock)
    for q in ["a", "b", "c", "d"]:
        store.record_sync("s", q)
    assert store.recent_sync("s") == ["d", "c", "b"]
    assert store.recent_sync("s", 2) == ["d", "c"]
    assert store.previous_sync("s") == "d"
    assert store.recent_sync("other") == []
    assert asyncio.run(store.recent("s", 1)) == ["d"]
    assert asyncio.run(store.previous("s")) == "d"


def test_memory_lru_evicts_least_recently_used(clock: FakeClock) -> None:
    store = MemorySessionStore(max_sessions=3, clock=clock)
    for s in ["a", "b", "c"]:
        store.record_sync(s, f"q{s}")
    assert store.recent_sync("a") == ["qa"]  # a read makes "a" recently used
    store.record_sync("d", "qd")  # evicts "b", the least recently used
    assert len(store) == 3
    assert store.recent_sync("b") == []
    assert [store.previous_sync(s) for s in "acd"] == ["qa", "qc", "qd"]
    assert store.stats()["evicted"] == 1


def test_memory_ttl_from_last_write(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=100, clock=clock)
    store.record_sync("s", "one")
    clock.t += 60
    assert store.recent_sync("s") == ["one"]  # reads do not extend the TTL
    clock.t += 39
    store.record_sync("s", "two")  # a write does
    clock.t += 99
    assert store.recent_sync("s") == ["two", "one"]
    clock.t += 1
    assert store.recent_sync("s") == []
    store.record_sync("s", "three")  # an expired session starts afresh
    assert store.recent_sync("s") == ["three"]


def test_memory_expired_sessions_release_memory(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=10, history_size=0, clock=clock)
    for i in range(100):
        store.record_sync(f"old{i}", "q")
    clock.t += 11
    for i in range(100):
        store.record_sync(f"new{i}", "q")
    assert len(store) == 100  # each write drops up to two expired sessions
    assert store.stats()["expired"] == 100


def test_memory_history_distinct_order_cap(clock: FakeClock) -> None:
    store = MemorySessionStore(max_queries=3, history_size=4, clock=clock)
    assert store.context_sync("s", 10) == (None, [])
    for q in ["a", "b", "c", "b", " B", "a", "d"]:
        store.record_sync("s", q)
    assert store.recent_sync("s", 10) == ["d", "a", "b"]
    assert store.context_sync("s", 10) == ("d", ["d", "a", "b", "c"])
    assert store.context_sync("s", 2) == ("d", ["d", "a"])
    assert store.context_sync("s", 0) == ("d", [])
    store.record_sync("s", "e")
    assert store.context_sync("s", 10) == ("e", ["e", "d", "a", "b"])
    store.record_sync("s", "b")
    assert store.context_sync("s", 10) == ("b", ["b", "e", "d", "a"])
    assert asyncio.run(store.context("s", 3)) == ("b", ["b", "e", "d"])
    assert store.context_sync("other", 10) == (None, [])


def test_memory_history_ttl_outlives_recent(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=100, history_ttl_seconds=1000, clock=clock)
    store.record_sync("s", "one")
    clock.t += 60
    store.record_sync("s", "two")
    clock.t += 100  # the recent list expired 100 s after the last write
    assert store.context_sync("s", 10) == (None, ["two", "one"])
    assert store.recent_sync("s") == [] and store.previous_sync("s") is None
    assert len(store) == 1  # kept for its history
    store.record_sync("s", "three")  # a fresh recent list, the history goes on
    assert store.recent_sync("s") == ["three"]
    assert store.context_sync("s", 10) == ("three", ["three", "two", "one"])
    clock.t += 999
    assert store.context_sync("s", 10) == (None, ["three", "two", "one"])  # reads do not extend
    clock.t += 1
    assert store.context_sync("s", 10) == (None, [])
    assert len(store) == 0 and store.stats()["expired"] == 1
    store.record_sync("s", "four")
    assert store.context_sync("s", 10) == ("four", ["four"])


def test_memory_history_expires_while_the_session_goes_on(clock: FakeClock) -> None:
    # a history TTL shorter than the recent one (odd, but allowed): expired history is
    # dropped on the next write instead of being extended
    store = MemorySessionStore(ttl_seconds=100, history_ttl_seconds=10, clock=clock)
    store.record_sync("s", "one")
    clock.t += 10
    assert store.context_sync("s", 10) == ("one", [])
    store.record_sync("s", "two")
    assert store.context_sync("s", 10) == ("two", ["two"])


def test_memory_history_off_and_lru_bound(clock: FakeClock) -> None:
    off = MemorySessionStore(history_size=0, clock=clock)
    off.record_sync("s", "one")
    off.record_sync("s", "two")
    assert off.context_sync("s", 10) == ("two", [])
    clock.t += 1800
    assert off.context_sync("s", 10) == (None, []) and len(off) == 0  # no history keeps it
    store = MemorySessionStore(max_sessions=2, clock=clock)
    for s in "abc":
        store.record_sync(s, f"q{s}")
    assert len(store) == 2 and store.context_sync("a", 10) == (None, [])  # evicted
    assert store.context_sync("c", 10) == ("qc", ["qc"])


def test_memory_expired_history_sessions_release_memory(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=10, history_ttl_seconds=50, clock=clock)
    for i in range(100):
        store.record_sync(f"old{i}", "q")
    clock.t += 11
    for i in range(100):
        store.record_sync(f"mid{i}", "q")
    assert len(store) == 200  # the old ones still hold history
    clock.t += 40
    for i in range(100):
        store.record_sync(f"new{i}", "q")
    assert len(store) == 200 and store.stats()["expired"] == 100


def test_memory_rejects_bad_config() -> None:
    for kw in ({"max_sessions": 0}, {"max_queries": -1}, {"ttl_seconds": 0}):
        with pytest.raises(InputError):
            MemorySessionStore(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- factory


def test_make_store_picks_backend() -> None:
    async def body() -> None:
        stores: Iterator[tuple[str | None, str]] = iter(
            [
                (None, "memory"),
                ("", "memory"),
                ("redis://127.0.0.1:1/0", "redis"),
                ("rediss://127.0.0.1:1", "redis"),
                ("unix:///tmp/nope.sock", "redis"),
                ("redis+cluster://127.0.0.1:1", "redis-cluster"),
                ("rediss+cluster://127.0.0.1:1", "redis-cluster"),
            ]
        )
        for url, backend in stores:
            store = make_store(url)
            assert store.stats()["backend"] == backend, url
            await store.close()
        c = RedisSessionStore("redis://127.0.0.1:1", cluster=True)
        assert c.stats()["backend"] == "redis-cluster"
        await c.close()

    asyncio.run(body())
    bad_args: list[tuple[str, dict[str, Any]]] = [
        ("http://127.0.0.1:1", {}),
        ("127.0.0.1:6379", {}),
        ("redis+cluster://127.0.0.1:1", {"cluster": False}),
        ("unix:///tmp/x.sock", {"cluster": True}),
        ("redis://127.0.0.1:1", {"max_queries": 0}),
        ("redis://127.0.0.1:1", {"socket_timeout": 0}),
    ]
    for bad, kw in bad_args:
        with pytest.raises(InputError):
            make_store(bad, **kw)


def test_stats_do_not_leak_password() -> None:
    store = RedisSessionStore("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store.stats())
    asyncio.run(store.close())


# --------------------------------------------------------------------------- cluster


@pytest.mark.slow
def test_redis_cluster_store(redis_cluster: list[RedisServer]) -> None:
    first = redis_cluster[0]
    sessions = [sid(f"c{i}") for i in range(30)]

    async def body(store: SessionStore) -> None:
        for s in sessions:
            await store.record(s, f"{s} one")
            await store.record(s, f"{s} two")
            await store.record(s, f"{s} three")
            await store.record(s, f"{s} one")
        for s in sessions:
            assert await store.recent(s) == [f"{s} one", f"{s} three"]
            assert await store.context(s, 10) == (f"{s} one", [f"{s} one", f"{s} three"])
        assert store.stats()["errors"] == 0, store.stats()

    url = f"redis+cluster://127.0.0.1:{first.port}"
    with_store(lambda: RedisSessionStore(url, max_queries=2, ttl_seconds=600,
                                         history_size=2, history_ttl_seconds=7200), body)

    holders = set()
    for s in sessions:
        key = session_key(s)
        slot = first.cli("CLUSTER", "KEYSLOT", key)
        assert slot == first.cli("CLUSTER", "KEYSLOT", s)  # the hash tag decides the slot
        owners = [n for n in redis_cluster if n.cli("CLUSTER", "COUNTKEYSINSLOT", slot) != "0"]
        assert len(owners) == 1
        owner = owners[0]
        assert owner.cli("LLEN", key) == "2"
        assert 590 <= int(owner.cli("TTL", key)) <= 600
        hkey = history_key(s)
        assert first.cli("CLUSTER", "KEYSLOT", hkey) == slot  # one slot: one pipeline
        assert owner.cli("LRANGE", hkey, "0", "-1").split("\n") == [f"{s} one", f"{s} three"]
        assert 7190 <= int(owner.cli("TTL", hkey)) <= 7200
        holders.add(owner.port)
    assert len(holders) > 1  # the sessions really were spread over the masters

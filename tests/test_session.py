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
    assert redis_server.cli("KEYS", f"*{s}*") == key  # nothing else written


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
        await store.record(longest, "ok")
        assert await store.previous(longest) == "ok"

    with_store(lambda: make_store(url), body)


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
    store = MemorySessionStore(ttl_seconds=10, clock=clock)
    for i in range(100):
        store.record_sync(f"old{i}", "q")
    clock.t += 11
    for i in range(100):
        store.record_sync(f"new{i}", "q")
    assert len(store) == 100  # each write drops up to two expired sessions
    assert store.stats()["expired"] == 100


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
        for s in sessions:
            assert await store.recent(s) == [f"{s} three", f"{s} two"]
        assert store.stats()["errors"] == 0, store.stats()

    url = f"redis+cluster://127.0.0.1:{first.port}"
    with_store(lambda: RedisSessionStore(url, max_queries=2, ttl_seconds=600), body)

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
        holders.add(owner.port)
    assert len(holders) > 1  # the sessions really were spread over the masters

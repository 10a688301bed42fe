"""Session stores against a real throwaway redis-server (see conftest.py) and in memory:
the same scenarios give the same contexts on both."""

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

from qac.errors import InputError, StoreUnavailable
from qac.history import REPEAT_SECONDS, Past, SessionContext
from qac.session import (
    MAX_QUERY_CHARS,
    MAX_SESSION_CHARS,
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
    make_store,
    session_keys,
)

T = TypeVar("T")
_ids = itertools.count()
KINDS = ["memory", "redis"]


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
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Wall:
    """A Unix clock that ticks one second per call."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def store_of(kind: str, redis_server: RedisServer, **kw: Any) -> Callable[[], SessionStore]:
    if kind == "memory":
        return lambda: MemorySessionStore(**kw)
    return lambda: RedisSessionStore(redis_server.url, **kw)


def cli_lines(server: RedisServer, *args: str) -> list[str]:
    out = server.cli(*args)
    return out.split("\n") if out else []


# --------------------------------------------------------------------------- both stores


@pytest.mark.parametrize("kind", KINDS)
def test_record_and_context(kind: str, redis_server: RedisServer) -> None:
    s = sid()

    async def body(store: SessionStore) -> None:
        assert await store.context(s, "", 10) == SessionContext()
        assert await store.previous(s) is None
        for i in range(6):
            assert await store.record(s, f"Query  {i}") == f"query {i}"
        await store.record(s, "query 2", time=5.0)  # an explicit time
        ctx = await store.context(s)
        assert ctx.previous == "query 2"
        # the recent list: capped at max_queries, most recent first, with times
        assert ctx.session == (("query 2", 5.0), ("query 5", 1_700_000_006.0),
                               ("query 4", 1_700_000_005.0), ("query 3", 1_700_000_004.0))
        assert ctx.history == ()  # n = 0: no history asked
        assert await store.previous(s) == "query 2"

    with_store(store_of(kind, redis_server, max_queries=4, wall=Wall()), body)


@pytest.mark.parametrize("kind", KINDS)
def test_history_counts_last_prefix_and_eviction(kind: str, redis_server: RedisServer) -> None:
    s = sid("hist")

    async def body(store: SessionStore) -> None:
        for q, t in [("red shoes", 10), ("blue hat", 20), ("red shoes", 30), ("red hat", 40),
                     ("Red  Shoes", 25), ("green", 50)]:
            await store.record(s, q, time=float(t))
        ctx = await store.context(s, "", 10)
        # distinct, with counts and the LATEST time (an older record keeps it), most
        # recently issued first
        assert ctx.history == (Past("green", 1, 50.0), Past("red hat", 1, 40.0),
                               Past("red shoes", 3, 30.0), Past("blue hat", 1, 20.0))
        assert (await store.context(s, "", 2)).history == ctx.history[:2]
        # a prefix: only the entries that start with it (normalized like a prefix)
        assert (await store.context(s, "RE", 10)).history == (
            Past("red hat", 1, 40.0), Past("red shoes", 3, 30.0))
        assert (await store.context(s, "red ", 10)).history == (
            Past("red hat", 1, 40.0), Past("red shoes", 3, 30.0))
        assert (await store.context(s, "red s", 10)).history == (Past("red shoes", 3, 30.0),)
        assert (await store.context(s, "red shoes x", 10)).history == ()
        assert (await store.context(s, "x", 10)).history == ()
        # more matches than asked for: the n most recent of them
        assert (await store.context(s, "r", 1)).history == (Past("red hat", 1, 40.0),)
        # full (history_size 4): the least recently issued ("blue hat") goes first
        await store.record(s, "yellow", time=60.0)
        assert [p.query for p in (await store.context(s, "", 10)).history] == [
            "yellow", "green", "red hat", "red shoes"]
        # a repeat of a kept query evicts nothing
        await store.record(s, "red hat", time=70.0)
        assert (await store.context(s, "", 10)).history == (
            Past("red hat", 2, 70.0), Past("yellow", 1, 60.0), Past("green", 1, 50.0),
            Past("red shoes", 3, 30.0))
        # n is capped at history_size
        assert len((await store.context(s, "", 100)).history) == 4

    with_store(store_of(kind, redis_server, history_size=4), body)


@pytest.mark.parametrize("kind", KINDS)
def test_history_prefix_edges(kind: str, redis_server: RedisServer) -> None:
    s = sid("edge")
    # non-ASCII that normalization keeps (accents fold: "é" is stored as "e")
    queries = ["a", "ab", "abc", "abd", "b", "ж", "жa", "日本", "日本語", "a\u044f", "a\U0001f600"]

    async def body(store: SessionStore) -> None:
        for i, q in enumerate(queries):
            await store.record(s, q, time=float(i + 1))

        async def got(p: str) -> list[str]:
            return sorted(x.query for x in (await store.context(s, p, 100)).history)

        for p in ["a", "ab", "ж", "日本", "a\u044f", "b", "abc"]:
            assert await got(p) == sorted(q for q in queries if q.startswith(p)), p
        assert await got("") == sorted(queries)

    with_store(store_of(kind, redis_server), body)


@pytest.mark.parametrize("kind", KINDS)
def test_sessions_are_isolated(kind: str, redis_server: RedisServer) -> None:
    a, b = sid("a"), sid("b")

    async def body(store: SessionStore) -> None:
        await store.record(a, "red shoes")
        await store.record(b, "blue hat")
        await store.record(a, "red boots")
        assert [q for q, _ in (await store.context(a)).session] == ["red boots", "red shoes"]
        assert [p.query for p in (await store.context(b, "", 10)).history] == ["blue hat"]
        for evil in (f"{a}}}:recent", f"{a}*", "*"):
            with pytest.raises(InputError):
                await store.context(evil)

    with_store(store_of(kind, redis_server), body)


BAD_IDS: list[Any] = [
    "", "x" * (MAX_SESSION_CHARS + 1), "a b", "a:b", "{a}", "a}", "café", "a\n", "a\x00",
    "../a", 42, None, b"abc",
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.parametrize("kind", KINDS)
def test_invalid_session_ids(bad: Any, kind: str, redis_server: RedisServer) -> None:
    async def body(store: SessionStore) -> None:
        with pytest.raises(InputError, match="session id"):
            await store.record(bad, "q")
        with pytest.raises(InputError, match="session id"):
            await store.previous(bad)
        with pytest.raises(InputError, match="session id"):
            await store.context(bad, "q", 10)
        assert store.stats()["errors"] == 0  # an input error is the caller's, not Redis's

    with_store(store_of(kind, redis_server), body)


@pytest.mark.parametrize("kind", KINDS)
def test_query_time_and_n_are_checked_before_writing(kind: str, redis_server: RedisServer) -> None:
    s = sid("norm")
    longest = "a" * MAX_SESSION_CHARS

    async def body(store: SessionStore) -> None:
        assert await store.record(s, "  Red\tSHOES  ") == "red shoes"
        assert await store.record(s, "   ") == ""  # empty after normalization: not recorded
        assert await store.record(s, "") == ""
        await store.record(s, "Ｆｕｌｌ width")
        assert [q for q, _ in (await store.context(s)).session] == ["full width", "red shoes"]
        await store.record(s, "q" * MAX_QUERY_CHARS)
        bad: list[tuple[Any, dict[str, Any], str]] = [
            ("q" * (MAX_QUERY_CHARS + 1), {}, "query is"),
            (123, {}, "query must be a str"),
            ("abc\udc00", {}, "lone surrogate U\\+DC00 at character 3"),
            ("\ud800", {}, "lone surrogate"),
            ("ok", {"time": -1.0}, "time must be"),
            ("ok", {"time": float("nan")}, "time must be"),
            ("ok", {"time": float("inf")}, "time must be"),
            ("ok", {"time": "now"}, "time must be"),
            ("ok", {"time": True}, "time must be"),
        ]
        for query, kw, match in bad:
            with pytest.raises(InputError, match=match):
                await store.record(s, query, **kw)
        for n in (-1, 1.5, True, "3", None):
            with pytest.raises(InputError, match="n must be"):
                await store.context(s, "", n)  # type: ignore[arg-type]
        with pytest.raises(InputError):
            await store.context(s, 5)  # type: ignore[arg-type]
        ctx = await store.context(s, "", 10)
        assert [p.query for p in ctx.history] == ["q" * MAX_QUERY_CHARS, "full width",
                                                  "red shoes"]  # nothing bad was written
        assert (await store.context(s, "q" * 300, 10)).history == ()  # longer than any query
        await store.record(longest, "ok")
        assert await store.previous(longest) == "ok"

    with_store(store_of(kind, redis_server, wall=Wall()), body)


def test_memory_and_redis_agree_on_a_random_workload(redis_server: RedisServer) -> None:
    import random

    rng = random.Random(7)
    words = ["a", "ab", "abc", "b", "ba", "c", "é", "ü x", "new york", "new"]
    ops: list[tuple[str, str, float]] = []
    for _ in range(300):
        q = " ".join(rng.sample(words, rng.randint(1, 2)))
        ops.append((f"u{rng.randrange(3)}", q, float(rng.randrange(1, 200))))
    s = sid("agree")

    async def run(store: SessionStore) -> list[Any]:
        pick = random.Random(1)
        out = []
        for i, (user, q, t) in enumerate(ops):
            await store.record(f"{s}{user}", q, time=t)
            if i % 7 == 0:
                for p in ("", "a", "n", "new ", "é", "b"):
                    out.append(await store.context(f"{s}{user}", p, pick.choice([1, 3, 50])))
        return out

    mem = with_store(lambda: MemorySessionStore(history_size=12), run)
    red = with_store(lambda: RedisSessionStore(redis_server.url, history_size=12), run)
    assert mem == red


# --------------------------------------------------------------------------- Redis layout


def test_key_layout_types_and_ttls(redis_server: RedisServer) -> None:
    s = sid("ttl")
    keys = session_keys(s)
    assert keys == (f"qac:{{{s}}}:recent", f"qac:{{{s}}}:hist", f"qac:{{{s}}}:hist:lex",
                    f"qac:{{{s}}}:hist:time")

    async def body(store: SessionStore) -> None:
        await store.record(s, "first", time=100.5)
        await store.record(s, "second", time=200.25)
        await store.record(s, "first", time=300.0)
        assert [redis_server.cli("TYPE", k) for k in keys] == ["list", "hash", "zset", "zset"]
        assert cli_lines(redis_server, "LRANGE", keys.recent, "0", "-1") == [
            "300.0\tfirst", "200.25\tsecond", "100.5\tfirst"]
        assert cli_lines(redis_server, "HGETALL", keys.counts) in (
            ["first", "2", "second", "1"], ["second", "1", "first", "2"])
        assert cli_lines(redis_server, "ZRANGE", keys.lex, "0", "-1", "WITHSCORES") == [
            "first", "0", "second", "0"]
        assert cli_lines(redis_server, "ZRANGE", keys.times, "0", "-1", "WITHSCORES") == [
            "second", "200.25", "first", "300"]
        assert 290 <= int(redis_server.cli("TTL", keys.recent)) <= 300
        for k in keys[1:]:
            assert 86390 <= int(redis_server.cli("TTL", k)) <= 86400
        for k in keys:
            redis_server.cli("EXPIRE", k, "50")
        await store.context(s, "f", 10)  # a read refreshes nothing
        assert all(int(redis_server.cli("TTL", k)) <= 50 for k in keys)
        await store.record(s, "third")  # a write refreshes every key
        assert 290 <= int(redis_server.cli("TTL", keys.recent)) <= 300
        assert all(86390 <= int(redis_server.cli("TTL", k)) <= 86400 for k in keys[1:])
        # the recent list expires first (30 min in production): no previous query, the
        # history stays
        redis_server.cli("DEL", keys.recent)
        ctx = await store.context(s, "", 10)
        assert ctx.previous is None and ctx.session == ()
        assert [p.query for p in ctx.history] == ["third", "first", "second"]

    with_store(lambda: RedisSessionStore(redis_server.url, ttl_seconds=300,
                                         history_ttl_seconds=86400), body)
    assert sorted(cli_lines(redis_server, "KEYS", f"*{s}*")) == sorted(keys[1:])


def test_history_off_writes_no_history_keys(redis_server: RedisServer) -> None:
    s = sid("hoff")

    async def body(store: SessionStore) -> None:
        await store.record(s, "one")
        await store.record(s, "two")
        ctx = await store.context(s, "", 50)
        assert ctx.previous == "two" and ctx.history == ()

    with_store(lambda: RedisSessionStore(redis_server.url, history_size=0), body)
    assert cli_lines(redis_server, "KEYS", f"*{s}*") == [session_keys(s).recent]


class RoundTrips:
    """Counts the requests written to Redis, by either client: the lean pipelined
    connection (one write per call) or redis-py (one batch per round trip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection

        from qac.session import _Pipe

        self.count = 0
        real = AbstractConnection.send_packed_command
        real_call = _Pipe.call

        async def counting(conn: Any, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            await real(conn, *args, **kwargs)

        def counting_call(pipe: Any, packed: bytes) -> Any:
            self.count += 1
            return real_call(pipe, packed)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
        monkeypatch.setattr(_Pipe, "call", counting_call)


@pytest.mark.parametrize("client", ["lean", "redis-py"])
def test_record_and_context_are_one_round_trip_each(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    s = sid("rt")

    def make() -> RedisSessionStore:
        store = RedisSessionStore(redis_server.url)
        assert store.stats()["client"] == "lean"
        if client == "redis-py":
            store._lean = None
        return store

    async def body(store: RedisSessionStore) -> None:
        await store.record(s, "warm up")  # connect and load the scripts
        await store.context(s, "w", 200)
        trips = RoundTrips(monkeypatch)
        for i in range(200):
            await store.record(s, f"query number {i}")
        await store.record(s, "red shoes")
        assert trips.count == 201
        trips.count = 0
        ctx = await store.context(s, "red", 200)
        assert trips.count == 1
        assert ctx.previous == "red shoes" and [p.query for p in ctx.history] == ["red shoes"]
        trips.count = 0
        assert (await store.context(s, "", 0)).previous == "red shoes"
        assert trips.count == 1

    with_store(make, body)  # type: ignore[arg-type]


def test_a_keystroke_moves_only_the_prefix_matches(redis_server: RedisServer) -> None:
    """The read script returns the matches of the prefix, not the user's 200 entries."""
    from qac.session import _MAX_VALUE_BYTES, READ_SCRIPT

    s = sid("small")

    async def body(store: RedisSessionStore) -> None:
        for i in range(200):
            await store.record(s, f"query number {i:03d}", time=float(i))
        await store.record(s, "zebra", time=500.0)
        raw = await store._run(READ_SCRIPT, session_keys(s), ("z", 200, 10, 200,
                                                              _MAX_VALUE_BYTES))
        assert raw[2] == [b"zebra"] and raw[3] == [b"1"] and raw[4] == [b"500"]
        raw = await store._run(READ_SCRIPT, session_keys(s), ("query number 19", 200, 10,
                                                              200, _MAX_VALUE_BYTES))
        assert len(raw[2]) == 10  # 190..199; 019 was evicted
        # the n most recent of many matches come back, not all of them
        raw = await store._run(READ_SCRIPT, session_keys(s), ("q", 5, 10, 200,
                                                              _MAX_VALUE_BYTES))
        assert raw[2] == [f"query number {i:03d}".encode() for i in (199, 198, 197, 196, 195)]

    with_store(lambda: RedisSessionStore(redis_server.url), body)  # type: ignore[arg-type]


def test_concurrent_records_of_one_query_are_one_search(redis_server: RedisServer) -> None:
    s, other = sid("race"), sid("race")

    async def body(store: SessionStore) -> None:
        # twenty submits at once (a client retrying): the same search, counted once
        await asyncio.gather(*(store.record(s, "same query") for _ in range(20)))
        ctx = await store.context(s, "same", 10)
        assert ctx.history == (Past("same query", 1, ctx.history[0].last),)
        assert [q for q, _ in ctx.session] == ["same query"]
        # twenty distinct queries at once: every one written, each once
        await asyncio.gather(*(store.record(other, f"query {i}") for i in range(20)))
        ctx = await store.context(other, "query", 50)
        assert sorted(p.query for p in ctx.history) == sorted(f"query {i}" for i in range(20))
        assert all(p.count == 1 for p in ctx.history) and len(ctx.session) == 10

    with_store(lambda: RedisSessionStore(redis_server.url), body)


@pytest.mark.parametrize("kind", KINDS)
def test_a_repeated_query_is_the_same_search(kind: str, redis_server: RedisServer) -> None:
    """A session submitting its last query again within REPEAT_SECONDS (a retry after a
    timeout that hid a landed write, another click) is not recorded again, as the logs
    training reads drop such a repeat; later, or after another query, it counts."""
    s = sid("again")

    async def body(store: SessionStore) -> None:
        await store.record(s, "red shoes", time=100.0)
        await store.record(s, "Red  Shoes", time=100.0 + REPEAT_SECONDS - 1)
        ctx = await store.context(s, "red", 10)
        assert ctx.history == (Past("red shoes", 1, 100.0),)
        assert ctx.session == (("red shoes", 100.0),)
        await store.record(s, "blue hat", time=200.0)
        await store.record(s, "red shoes", time=300.0)  # not the last one: counted
        later = 300.0 + REPEAT_SECONDS
        await store.record(s, "red shoes", time=later)  # the last one, but long after
        ctx = await store.context(s, "red", 10)
        assert ctx.history == (Past("red shoes", 3, later),)
        assert [q for q, _ in ctx.session] == ["red shoes", "red shoes", "blue hat",
                                               "red shoes"]

    # a long recent-list TTL: the store's own clock never expires it here
    with_store(store_of(kind, redis_server, ttl_seconds=10 * int(REPEAT_SECONDS)), body)


BAD_HISTORY_OPTIONS: list[dict[str, Any]] = [
    {"history_size": -1}, {"history_size": 1.5}, {"history_size": True},
    {"history_size": "200"}, {"history_size": 1001}, {"history_ttl_seconds": 0},
    {"history_ttl_seconds": -5}, {"history_ttl_seconds": True},
    {"history_ttl_seconds": "60"},
]  # fmt: skip


@pytest.mark.parametrize("kw", BAD_HISTORY_OPTIONS, ids=repr)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_history_options(kind: str, kw: dict[str, Any]) -> None:
    url = None if kind == "memory" else "redis://127.0.0.1:1"
    with pytest.raises(InputError, match=next(iter(kw))):
        make_store(url, **kw)


def test_redis_history_ttl_must_be_whole_seconds() -> None:
    with pytest.raises(InputError, match="history_ttl_seconds"):
        RedisSessionStore("redis://127.0.0.1:1", history_ttl_seconds=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bad data


def test_a_key_of_the_wrong_type_costs_only_its_session(redis_server: RedisServer) -> None:
    evil, good = sid("evil"), sid("good")
    k = session_keys(evil)

    async def body(store: SessionStore) -> None:
        await store.record(good, "good query")
        await store.record(evil, "evil query")
        redis_server.cli("DEL", k.recent)
        redis_server.cli("HSET", k.recent, "a", "b")  # the example
        redis_server.cli("DEL", k.times)
        redis_server.cli("SET", k.times, "not a zset")
        ctx = await store.context(evil, "e", 10)
        assert ctx == SessionContext()  # no context, no exception
        st = store.stats()
        assert st["bad_keys"] == 2 and st["errors"] == 0 and st["available"] is True
        # the read deleted the keys it cannot use
        assert redis_server.cli("EXISTS", k.recent) == "0"
        assert (await store.context(good, "g", 10)).previous == "good query"
        # wrong types again: the next write repairs them and succeeds
        redis_server.cli("HSET", k.recent, "a", "b")
        redis_server.cli("DEL", k.counts)
        redis_server.cli("LPUSH", k.counts, "x")
        assert await store.record(evil, "evil again") == "evil again"
        ctx = await store.context(evil, "evil", 10)
        assert ctx.previous == "evil again"
        # "evil query" lost its time and then its count with the deleted keys: each
        # read ignored and counted it
        assert [p.query for p in ctx.history] == ["evil again"]
        st = store.stats()
        assert st["bad_keys"] == 4 and st["bad_entries"] == 2 and st["errors"] == 0

    with_store(lambda: RedisSessionStore(redis_server.url), body)


def test_malformed_entries_are_ignored_and_counted(redis_server: RedisServer) -> None:
    s = sid("junk")
    k = session_keys(s)

    async def body(store: SessionStore) -> None:
        await store.record(s, "fine one", time=10.0)
        await store.record(s, "fine two", time=20.0)
        await store.record(s, "fine three", time=30.0)
        # a 1,025-character head (issue 15, D5): not the previous query, no 400
        redis_server.cli("LPUSH", k.recent, "40.0\t" + "x" * 1025)
        ctx = await store.context(s, "fine", 10)
        assert ctx.previous is None
        assert [q for q, _ in ctx.session] == ["fine three", "fine two", "fine one"]
        assert len(ctx.history) == 3
        assert store.stats()["bad_entries"] == 1
        # more junk in the list: no tab, a bad time, control characters, not normalized
        for junk in ["no tab at all", "nan\tq", "-5\tq", "abc\tq", "1.0\t", "1.0\tUPPER  x",
                     "1.0\ttab\there", "1.0\t" + "y" * 300]:
            redis_server.cli("RPUSH", k.recent, junk)
        # history: a count that is not a number, a member with no time, an oversized one
        redis_server.cli("HSET", k.counts, "fine two", "many")
        redis_server.cli("ZADD", k.lex, "0", "fine four")
        redis_server.cli("HSET", k.counts, "fine four", "1")
        big = "fine " + "z" * 2000
        for key, score in ((k.lex, "0"), (k.times, "35")):
            redis_server.cli("ZADD", key, score, big)
        redis_server.cli("HSET", k.counts, big, "1")
        before = store.stats()["bad_entries"]
        ctx = await store.context(s, "fine", 10)
        assert [p.query for p in ctx.history] == ["fine three", "fine one"]
        assert [q for q, _ in ctx.session] == ["fine three", "fine two", "fine one"]
        # the head and the 8 junk entries of the list, 3 of the history
        assert store.stats()["bad_entries"] - before == 1 + 8 + 3
        # an empty prefix reads by time: the oversized entry is there, and ignored
        assert [p.query for p in (await store.context(s, "", 10)).history] == [
            "fine three", "fine one"]
        assert store.stats()["errors"] == 0 and store.stats()["available"] is True
        # the next record of a query with a bad count repairs it
        await store.record(s, "fine two", time=50.0)
        assert (await store.context(s, "fine two", 10)).history == (Past("fine two", 1, 50.0),)

    with_store(lambda: RedisSessionStore(redis_server.url, max_queries=20), body)


def test_bytes_that_are_not_utf8_cost_only_their_entry(redis_server: RedisServer) -> None:
    import redis as sync_redis

    s = sid("bytes")
    k = session_keys(s)

    async def body(store: SessionStore) -> None:
        await store.record(s, "valid", time=10.0)
        r = sync_redis.Redis.from_url(redis_server.url)
        try:
            r.lpush(k.recent, b"20.0\t\xff\xfe bad")
            r.lpush(k.recent, b"21.0\t\xed\xb3\x80")  # an encoded lone surrogate
            r.zadd(k.lex, {b"va\xff": 0})
            r.zadd(k.times, {b"va\xff": 30})
            r.hset(k.counts, b"va\xff", b"1")
        finally:
            r.close()
        ctx = await store.context(s, "va", 10)
        assert ctx.previous is None and [q for q, _ in ctx.session] == ["valid"]
        assert ctx.history == (Past("valid", 1, 10.0),)
        assert store.stats()["bad_entries"] == 3 and store.stats()["errors"] == 0

    with_store(lambda: RedisSessionStore(redis_server.url), body)


def test_a_refused_write_raises_and_writes_nothing(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """Redis up but refusing writes (out of memory): record raises StoreUnavailable,
    nothing is half-written, and reads go on without a back-off."""
    server = redis_factory().start()
    s, other = sid("oom"), sid("reader")

    async def body(store: SessionStore) -> None:
        await store.record(other, "kept")
        server.cli("CONFIG", "SET", "maxmemory", "1")
        with pytest.raises(StoreUnavailable, match="did not record.*OutOfMemory"):
            await store.record(s, "lost query")
        st = store.stats()
        assert st["refused"] == 1 and st["errors"] == 0 and st["available"] is True
        assert (await store.context(other, "k", 10)).previous == "kept"  # no back-off
        server.cli("CONFIG", "SET", "maxmemory", "0")
        assert await store.record(s, "next query") == "next query"

    with_store(lambda: RedisSessionStore(server.url), body)
    assert sorted(cli_lines(server, "LRANGE", session_keys(s).recent, "0", "-1"))[0].endswith(
        "\tnext query")
    assert cli_lines(server, "ZRANGE", session_keys(s).lex, "0", "-1") == ["next query"]


def test_a_restarted_redis_gets_the_scripts_again(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory().start()

    async def body(store: SessionStore) -> None:
        await store.record("s", "before")
        server.cli("SCRIPT", "FLUSH")  # what a restart does to the script cache
        assert await store.record("s", "after") == "after"
        server.cli("SCRIPT", "FLUSH")
        assert (await store.context("s", "a", 10)).previous == "after"
        assert store.stats()["errors"] == 0 and store.stats()["refused"] == 0

    with_store(lambda: RedisSessionStore(server.url), body)


# --------------------------------------------------------------------------- Redis down


def test_closed_port_costs_nothing_per_request(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there

    async def body(store: SessionStore) -> list[float]:
        with pytest.raises(StoreUnavailable, match="did not record"):
            await store.record("s1", "lost")  # first failure
        times = []
        for i in range(200):
            t0 = time.perf_counter()
            assert await store.context("s1", "q", 200) == SessionContext()
            with pytest.raises(StoreUnavailable):
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


def test_record_during_the_back_off_says_so(clock: FakeClock) -> None:
    url = f"redis://127.0.0.1:{free_port()}"

    async def body(store: SessionStore) -> None:
        assert await store.context("s", "", 0) == SessionContext()
        with pytest.raises(StoreUnavailable, match="backing off.*not recorded"):
            await store.record("s", "q")
        assert store.stats()["errors"] == 1 and store.stats()["skipped"] == 1

    with_store(lambda: RedisSessionStore(url, clock=clock, backoff_seconds=5), body)


def test_hung_redis_bounded_by_deadline_then_skipped() -> None:
    # A listener that never answers: connect succeeds (kernel backlog), reads time out.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"redis://127.0.0.1:{hole.getsockname()[1]}"

        async def body(store: SessionStore) -> tuple[float, list[float]]:
            t0 = time.perf_counter()
            # concurrent requests that arrive while Redis hangs all give up together
            got = await asyncio.gather(*(store.context(f"s{i}", "a", 200) for i in range(20)))
            first = time.perf_counter() - t0
            assert got == [SessionContext()] * 20
            later = []
            for _ in range(50):
                t0 = time.perf_counter()
                assert await store.context("s1") == SessionContext()
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
            assert await store.context("s") == SessionContext()
            clock.t += 0.3
        assert await store.context("s") == SessionContext()
        assert store.stats()["errors"] == 6
        assert await store.context("s") == SessionContext()  # within the back-off: skipped
        assert store.stats()["errors"] == 6 and store.stats()["skipped"] == 1
        clock.t += 10
        with pytest.raises(StoreUnavailable):
            await store.record("s", "q")

    with caplog.at_level(logging.WARNING, logger="qac.session"):
        with_store(lambda: RedisSessionStore(url, clock=clock, log_interval=10.0), body)
    msgs = [r.getMessage() for r in caplog.records if r.name == "qac.session"]
    assert len(msgs) == 2, msgs
    assert "(1 error(s) in all)" in msgs[0] and "(1 time(s) since the last report)" in msgs[0]
    assert "(7 error(s) in all)" in msgs[1] and "(6 time(s) since the last report)" in msgs[1]
    assert "record:" in msgs[1]


def test_context_back_within_1s_of_redis_returning(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory().start()

    async def body(store: SessionStore) -> float:
        await store.record("back", "before")
        assert await store.previous("back") == "before"
        server.stop()
        assert await store.previous("back") is None
        with pytest.raises(StoreUnavailable):
            await store.record("back", "dropped")
        assert store.stats()["available"] is False
        # requests keep coming in while Redis is down
        for _ in range(30):
            assert await store.previous("back") is None
            await asyncio.sleep(0.01)
        server.start()
        server.cli("LPUSH", session_keys("back").recent, "5.0\tafter")  # no persistence
        t0 = time.perf_counter()
        while await store.previous("back") != "after":
            assert time.perf_counter() - t0 < 2.0, store.stats()
            await asyncio.sleep(0.01)
        back = time.perf_counter() - t0
        assert store.stats()["available"] is True
        await store.record("back", "again")
        assert [q for q, _ in (await store.context("back")).session] == ["again", "after"]
        return back

    back = with_store(lambda: RedisSessionStore(server.url, backoff_seconds=0.2), body)
    assert back < 1.0, f"context back after {back:.3f} s"


# --------------------------------------------------------------------------- memory


def test_memory_sync_api(clock: FakeClock) -> None:
    store = MemorySessionStore(max_queries=3, clock=clock, wall=Wall(0.0))
    for q in ["a", "b", "c", "d"]:
        store.record_sync("s", q)
    assert store.context_sync("s").session == (("d", 4.0), ("c", 3.0), ("b", 2.0))
    assert store.previous_sync("s") == "d"
    assert store.previous_sync("other") is None
    assert asyncio.run(store.previous("s")) == "d"
    assert asyncio.run(store.context("s", "", 2)).history == (Past("d", 1, 4.0),
                                                              Past("c", 1, 3.0))


def test_memory_lru_evicts_least_recently_used(clock: FakeClock) -> None:
    store = MemorySessionStore(max_sessions=3, clock=clock)
    for s in ["a", "b", "c"]:
        store.record_sync(s, f"q{s}")
    assert store.previous_sync("a") == "qa"  # a read makes "a" recently used
    store.record_sync("d", "qd")  # evicts "b", the least recently used
    assert len(store) == 3
    assert store.previous_sync("b") is None
    assert [store.previous_sync(s) for s in "acd"] == ["qa", "qc", "qd"]
    assert store.stats()["evicted"] == 1


def test_memory_ttl_from_last_write(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=100, history_size=0, clock=clock)
    store.record_sync("s", "one")
    clock.t += 60
    assert store.previous_sync("s") == "one"  # reads do not extend the TTL
    clock.t += 39
    store.record_sync("s", "two")  # a write does
    clock.t += 99
    assert [q for q, _ in store.context_sync("s").session] == ["two", "one"]
    clock.t += 1
    assert store.context_sync("s") == SessionContext()
    store.record_sync("s", "three")  # an expired session starts afresh
    assert [q for q, _ in store.context_sync("s").session] == ["three"]


def test_memory_expired_sessions_release_memory(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=10, history_size=0, clock=clock)
    for i in range(100):
        store.record_sync(f"old{i}", "q")
    clock.t += 11
    for i in range(100):
        store.record_sync(f"new{i}", "q")
    assert len(store) == 100  # each write drops up to two expired sessions
    assert store.stats()["expired"] == 100


def test_memory_history_ttl_outlives_recent(clock: FakeClock) -> None:
    store = MemorySessionStore(ttl_seconds=100, history_ttl_seconds=1000, clock=clock,
                               wall=Wall(0.0))
    store.record_sync("s", "one")
    clock.t += 60
    store.record_sync("s", "two")
    clock.t += 100  # the recent list expired 100 s after the last write
    ctx = store.context_sync("s", "", 10)
    assert ctx.previous is None and ctx.session == ()
    assert [p.query for p in ctx.history] == ["two", "one"]
    assert len(store) == 1  # kept for its history
    store.record_sync("s", "three")  # a fresh recent list, the history goes on
    assert [q for q, _ in store.context_sync("s").session] == ["three"]
    assert [p.query for p in store.context_sync("s", "", 10).history] == ["three", "two", "one"]
    clock.t += 999
    assert len(store.context_sync("s", "", 10).history) == 3  # reads do not extend
    clock.t += 1
    assert store.context_sync("s", "", 10) == SessionContext()
    assert len(store) == 0 and store.stats()["expired"] == 1
    store.record_sync("s", "four")
    assert [p.query for p in store.context_sync("s", "", 10).history] == ["four"]


def test_memory_history_expires_while_the_session_goes_on(clock: FakeClock) -> None:
    # a history TTL shorter than the recent one (odd, but allowed): expired history is
    # dropped on the next write instead of being extended
    store = MemorySessionStore(ttl_seconds=100, history_ttl_seconds=10, clock=clock)
    store.record_sync("s", "one")
    clock.t += 10
    assert store.context_sync("s", "", 10).history == ()
    store.record_sync("s", "two")
    assert [p.query for p in store.context_sync("s", "", 10).history] == ["two"]


def test_memory_history_off_and_lru_bound(clock: FakeClock) -> None:
    off = MemorySessionStore(history_size=0, clock=clock)
    off.record_sync("s", "one")
    off.record_sync("s", "two")
    assert off.context_sync("s", "", 10).history == ()
    clock.t += 1800
    assert off.context_sync("s", "", 10) == SessionContext() and len(off) == 0
    store = MemorySessionStore(max_sessions=2, clock=clock)
    for s in "abc":
        store.record_sync(s, f"q{s}")
    assert len(store) == 2 and store.context_sync("a", "", 10) == SessionContext()


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
            for i, q in enumerate(["one", "two", "three", "one"]):
                await store.record(s, f"{s} {q}", time=float(i + 1))
        for s in sessions:
            ctx = await store.context(s, f"{s} t", 10)
            assert ctx.previous == f"{s} one"
            assert [q for q, _ in ctx.session] == [f"{s} one", f"{s} three"]
            assert ctx.history == (Past(f"{s} three", 1, 3.0),)  # "two" was evicted
            assert (await store.context(s, "", 10)).history == (
                Past(f"{s} one", 1, 4.0), Past(f"{s} three", 1, 3.0))  # evicted, then anew
        assert store.stats()["errors"] == 0, store.stats()
        # a poisoned key in the cluster costs only its session
        evil = session_keys(sessions[0]).recent
        slot = first.cli("CLUSTER", "KEYSLOT", evil)
        owner = next(n for n in redis_cluster
                     if n.cli("CLUSTER", "COUNTKEYSINSLOT", slot) != "0")
        owner.cli("DEL", evil)
        owner.cli("HSET", evil, "a", "b")
        assert (await store.context(sessions[0], "", 10)).previous is None
        assert (await store.context(sessions[1], "", 10)).previous == f"{sessions[1]} one"
        assert store.stats()["errors"] == 0 and store.stats()["bad_keys"] == 1

    url = f"redis+cluster://127.0.0.1:{first.port}"
    with_store(lambda: RedisSessionStore(url, max_queries=2, ttl_seconds=600,
                                         history_size=2, history_ttl_seconds=7200), body)

    holders = set()
    for s in sessions[1:]:
        keys = session_keys(s)
        slot = first.cli("CLUSTER", "KEYSLOT", keys.recent)
        assert slot == first.cli("CLUSTER", "KEYSLOT", s)  # the hash tag decides the slot
        assert {first.cli("CLUSTER", "KEYSLOT", k) for k in keys} == {slot}
        owners = [n for n in redis_cluster if n.cli("CLUSTER", "COUNTKEYSINSLOT", slot) != "0"]
        assert len(owners) == 1
        owner = owners[0]
        assert owner.cli("LLEN", keys.recent) == "2"
        assert 590 <= int(owner.cli("TTL", keys.recent)) <= 600
        assert owner.cli("ZRANGE", keys.times, "0", "-1").split("\n") == [
            f"{s} three", f"{s} one"]
        assert 7190 <= int(owner.cli("TTL", keys.times)) <= 7200
        holders.add(owner.port)
    assert len(holders) > 1  # the sessions really were spread over the masters


# --------------------------------------------------------------------------- lean client


def test_lean_client_auth_db_and_unix_socket(
    redis_factory: Callable[..., RedisServer], tmp_path: Any,
) -> None:
    sock = tmp_path / "redis.sock"
    server = redis_factory(None, "--requirepass", "pw", "--unixsocket", str(sock)).start()

    async def body(store: SessionStore) -> None:
        assert store.stats()["client"] == "lean"
        assert await store.record("u", "hello") == "hello"
        assert (await store.context("u", "he", 5)).history[0].query == "hello"
        assert store.stats()["errors"] == 0 and store.stats()["refused"] == 0

    with_store(lambda: RedisSessionStore(f"redis://:pw@127.0.0.1:{server.port}/3"), body)
    with_store(lambda: RedisSessionStore(f"unix://:pw@{sock}?db=4"), body)
    assert server.cli("-a", "pw", "-n", "3", "EXISTS", session_keys("u").recent).endswith("1")
    assert server.cli("-a", "pw", "-n", "4", "EXISTS", session_keys("u").recent).endswith("1")

    async def wrong(store: SessionStore) -> None:
        assert await store.context("u", "he", 5) == SessionContext()
        with pytest.raises(StoreUnavailable):
            await store.record("u", "x")
        assert store.stats()["refused"] == 2

    with_store(lambda: RedisSessionStore(f"redis://:nope@127.0.0.1:{server.port}/0"), wrong)


def test_lean_client_under_uvloop(redis_server: RedisServer) -> None:
    """`qac serve` runs on uvloop when it is installed: its transports differ."""
    import uvloop
    s = sid("uv")

    async def body() -> None:
        store = RedisSessionStore(redis_server.url)
        try:
            assert await store.record(s, "on uvloop") == "on uvloop"
            got = await asyncio.gather(*(store.context(s, "on", 5) for _ in range(50)))
            assert all(c.previous == "on uvloop" for c in got)
            assert store.stats()["errors"] == 0
        finally:
            await store.close()

    uvloop.run(body())

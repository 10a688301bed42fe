"""sim/load.py's open-loop client keeps its own heap out of the cyclic GC while it
sends, so a full collection of the client cannot stall the schedule and be charged to
the server."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from simload import load

ANSWER = b'{"completions": []}'


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(ANSWER), ANSWER))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()  # the client hung up


async def one_phase() -> tuple[Any, list[int]]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = load.Pool("127.0.0.1", port, 4, 5.0)
    frozen: list[int] = []

    async def look(phase: object, t0: float) -> None:
        frozen.append(gc.get_freeze_count())

    try:
        users = load.Users([("u1", ["abc", "abd"]), ("u2", ["xy"])], 2, 0, "t")
        phase = await load.run_phase(pool, users, 200.0, 0.5, 0.0, 0, [(0.2, look)])
    finally:
        pool.close()
        server.close()
    return phase, frozen


def test_the_clients_heap_is_frozen_during_a_phase_and_only_then() -> None:
    was_frozen = gc.get_freeze_count()  # by a server test in this process (qac serve's own)
    gc.unfreeze()
    try:
        phase, frozen = asyncio.run(one_phase())
        assert frozen and frozen[0] > 1000  # the interpreter's and the test's own objects
        assert gc.get_freeze_count() == 0
        assert len(phase.samples) == 100
        assert {s.err for s in phase.outcomes()} == {None}
        gc.collect()
        assert not any(gc.is_tracked(s) for s in phase.samples)  # plain tuples of atoms
    finally:
        if was_frozen:
            gc.freeze()

"""uvicorn's httptools protocol, answering keystrokes below ASGI and sending each
response in one write. ``qac serve`` uses it when httptools is installed (a
dependency).

- ``GET /v1/complete`` is answered straight from the parser's callbacks by the app's
  own completion function (``app.state.complete``: query string in, status and JSON
  body out; :func:`qac.server.app.create_app`), in a :class:`_Completion` cycle: no
  ASGI scope, no receive/send coroutines, no middleware per keystroke (py-spy on a
  worker before: uvicorn's ``send`` 6.4% of its samples, its header callback 2.4%,
  Starlette's layers about 1%). The connection stays uvicorn's: keep-alive and its timer,
  pipelined requests answered in order, flow control, graceful shutdown. A request it
  does not take (another path or method, an ``Origin`` header (CORS), ``Expect:
  100-continue``, an upgrade) goes through the ASGI app as before, and so does every
  request when the server logs each one (``--access-log``), limits concurrency or has
  a root path.
- uvicorn writes a response's status line and headers, then its body: two ``send``
  calls, two TCP segments, and two wake-ups of the client, for a completion of a few
  hundred bytes. :class:`_Coalescing` gathers the writes of one event-loop step and
  sends them together at the end of it (``loop.call_soon``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from qac.server.app import CompleteAnswer

log = logging.getLogger(__name__)

_PATH = b"/v1/complete"
_JSON = b"content-type: application/json\r\ncontent-length: "
_ERROR = b'{"error": "internal error"}'


class _Coalescing:
    """A transport whose writes within one loop step go out as one write."""

    __slots__ = ("_buf", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buf: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buf:
            self._loop.call_soon(self._flush)
        self._buf.append(bytes(data))

    def _flush(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._buf.clear()
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:  # an upgrade
        self._flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _NoEvent:
    """What the protocol sets when request body arrives or the client goes: nobody
    waits on it (a completion reads no body)."""

    __slots__ = ()

    def set(self) -> None:
        """Nothing to wake: ``run_asgi`` never waits for the request body."""


class _Completion:
    """One ``GET /v1/complete`` in place of uvicorn's request cycle: the attributes
    HttpToolsProtocol reads and writes on its cycle, and ``run_asgi``, which it starts
    as a task (at once, or after the pipelined requests before it)."""

    __slots__ = ("body", "complete", "disconnected", "keep_alive", "more_body", "protocol",
                 "query", "response_complete")
    message_event = _NoEvent()

    def __init__(self, protocol: CoalescingHttpToolsProtocol, complete: CompleteAnswer,
                 query: bytes, keep_alive: bool) -> None:
        self.protocol = protocol
        self.complete = complete
        self.query = query
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False
        self.more_body = True
        self.body = b""

    async def run_asgi(self, app: Any) -> None:
        p = self.protocol
        try:
            status, body = await self.complete(self.query)
        except Exception:  # the app's function answers its own errors; never hang
            log.exception("unhandled error on /v1/complete")
            status, body, self.keep_alive = 500, _ERROR, False
        if p.flow.write_paused and not self.disconnected:
            await p.flow.drain()
        if self.disconnected:
            return
        out = [STATUS_LINE[status]]
        for name, value in p.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        out += (_JSON, str(len(body)).encode(), b"\r\n")
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", body)
        p.transport.write(b"".join(out))
        self.response_complete = True
        if not self.keep_alive:
            p.transport.close()
        p.on_response_complete()


def _complete_of(app: Any) -> CompleteAnswer | None:
    """``app.state.complete`` of the app, through the middleware uvicorn may have
    wrapped it in (``.app``), or None."""
    for _ in range(8):
        if app is None:
            return None
        complete = getattr(getattr(app, "state", None), "complete", None)
        if complete is not None:
            return complete
        app = getattr(app, "app", None)
    return None


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`_Coalescing` transport, answering
    ``GET /v1/complete`` itself (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain = not (self.access_log or self.limit_concurrency is not None or self.root_path)
        self.complete = _complete_of(self.app) if plain else None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalescing(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        parser = self.parser
        if (self.complete is None or self.expect_100_continue
                or parser.get_method() != b"GET" or parser.should_upgrade()):
            super().on_headers_complete()
            return
        url = httptools.parse_url(self.url)
        if url.path != _PATH or any(name == b"origin" for name, _ in self.headers):
            super().on_headers_complete()
            return
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        existing = self.cycle
        cycle = _Completion(self, self.complete, url.query or b"", keep_alive)
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)  # type: ignore[arg-type]
        else:  # pipelined: answered after the requests before it
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

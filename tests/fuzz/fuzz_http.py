"""Fuzz target: the HTTP handlers (the ASGI app ``qac serve`` runs, called directly,
with an in-process session store), on fuzzed methods, paths, query strings,
headers and bodies.

Every request must be answered, with a status below 500, and a completion must be
a JSON object; the same session's context is used across requests, so recorded
queries (lone surrogates, control characters, huge or odd ids) are read back.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from _harness import Input, fuzz_main, import_qac, model_cache, small_models

m: dict[str, Any] = {}
TOKEN = "fuzz-token-0123456789abcdef"
PATHS = ["/v1/complete", "/v1/search", "/v1/sessions/{}/queries", "/healthz", "/metrics",
         "/", "/app.js", "/v1/admin/reload", "/openapi.json", "/docs", "/nope"]
METHODS = ["GET", "POST", "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]
KEYS = [b"q", b"k", b"session", b"previous", b"x", b"", b"q[]"]
CONTENT_TYPES = [b"application/json", b"text/plain", b"application/json; charset=latin-1",
                 b"", b"multipart/form-data; boundary=x"]


def setup() -> None:
    def load() -> dict[str, Any]:
        from qac.server.app import create_app
        from qac.server.config import ServerConfig
        from qac.session import MemorySessionStore
        return {"create_app": create_app, "ServerConfig": ServerConfig,
                "MemorySessionStore": MemorySessionStore}

    m.update(import_qac(load))
    dirs = small_models(model_cache())
    cfg = m["ServerConfig"](model_dir=str(dirs["completer"]),
                            retrieval_dir=str(dirs["retriever"]), admin_token=TOKEN)
    m["app"] = m["create_app"](cfg, store=m["MemorySessionStore"]())
    m["loop"] = asyncio.new_event_loop()


async def _call(app: Any, method: str, path: str, query: bytes, headers: list[Any],
                body: bytes) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [body[: len(body) // 2], body[len(body) // 2:]]

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path,
             "raw_path": path.encode("utf-8", "surrogateescape"), "query_string": query,
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80), "state": {}}
    try:
        await app(scope, receive, send)
    except Exception:
        return 500, b"(the app raised)"
    start = next((s for s in sent if s["type"] == "http.response.start"), None)
    assert start is not None, (method, path, query, "no response")
    return int(start["status"]), b"".join(s.get("body", b"") for s in sent
                                           if s["type"] == "http.response.body")


def one_input(data: bytes) -> None:
    if not m:
        setup()
    inp = Input(data)
    method = inp.choice(METHODS)
    path = inp.choice(PATHS)
    if "{}" in path:
        path = path.format(inp.choice(["s1", "s1", "", "a/b", "x" * 300, inp.text(16)]))
    elif inp.byte() % 8 == 0:
        path += inp.text(8)
    parts = []
    for _ in range(inp.byte() % 4):
        parts.append(inp.choice(KEYS) + b"=" + inp.chunk(40))
    query = b"&".join(parts)
    headers = [(b"content-type", inp.choice(CONTENT_TYPES))]
    if inp.byte() % 4 == 0:
        headers.append((b"authorization", b"Bearer " + (TOKEN.encode() if inp.byte() % 2
                                                          else inp.chunk(16))))
    if inp.byte() % 8 == 0:
        headers.append((b"content-length", inp.choice([b"-1", b"x", b"99999999", b"3"])))
    body = inp.rest()
    if path == "/v1/admin/reload" and body.strip():
        body = b'{"model_dir": "/nonexistent/qac-fuzz"}'  # never a child per input
    status, payload = m["loop"].run_until_complete(
        _call(m["app"], method, path, query, headers, body))
    assert status < 500, (method, path, query, headers, body[:200], status, payload[:300])
    if path == "/v1/complete" and method == "GET" and status == 200:
        assert isinstance(json.loads(payload), dict)


if __name__ == "__main__":
    fuzz_main(setup, one_input)
    sys.exit(0)

"""HTTP requests the fuzzer found (tests/fuzz/fuzz_http.py): a query string that is
not UTF-8 on any path, not only /v1/complete, is a 400, never a dropped request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sessionlog import pl_log

from qac.complete import Completer, CompleterConfig
from qac.server.app import create_app
from qac.server.config import ServerConfig
from qac.session import MemorySessionStore


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("model") / "completer"
    Completer.train(pl_log().events, CompleterConfig(trie_depth=1)).save(path)
    return create_app(ServerConfig(model_dir=str(path), admin_token="t" * 20),
                      store=MemorySessionStore())


def _status(app: Any, method: str, path: str, query: bytes) -> int:
    return int(_start(app, method, path, query)["status"])


def _start(app: Any, method: str, path: str, query: bytes) -> dict[str, Any]:
    """The response's start message (status and headers)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "headers": [],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    return next(s for s in sent if s["type"] == "http.response.start")


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/admin/reload/"), ("GET", "/v1/search/"), ("GET", "/healthz/"),
    ("GET", "/healthz"), ("GET", "/v1/complete"), ("POST", "/v1/sessions/s/queries"),
    ("GET", "/nope")])
def test_a_query_string_that_is_not_utf8_is_a_400(app: Any, method: str, path: str) -> None:
    # A trailing slash made Starlette build a redirect URL from it, which raised and
    # left the request unanswered (a 500 from uvicorn)
    assert _status(app, method, path, b"k=\xed\xb3\xbf\xff") == 400


def test_a_trailing_slash_still_redirects(app: Any) -> None:
    start = _start(app, "GET", "/healthz/", b"a=1")
    assert start["status"] == 307
    assert (b"location", b"http://testserver/healthz?a=1") in start["headers"]

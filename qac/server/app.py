"""The HTTP service: completion, session recording, retrieval, health, metrics, reload.

``create_app(ServerConfig(...))`` loads the models (memory-mapped) and the session
store and returns a Starlette app. Endpoints::

    GET  /v1/complete?q=<prefix>&session=<id>&k=10   completions (+ session context)
    POST /v1/sessions/<id>/queries  {"query": "..."}  record a submitted query
    GET  /v1/search?q=<text>&k=10                     retrieval (404 without a model)
    GET  /healthz                                     liveness + model version
    GET  /metrics                                     Prometheus text
    POST /v1/admin/reload  (Bearer token)  {"model_dir": "..."}  swap the completer
    GET  /                                            demo page

Every error is JSON ``{"error": "..."}`` with a 4xx/5xx status.

With ``session``, a completion is conditioned on that session's context, read from the
session store in one call (one Redis round trip): its previous query (30 minutes) and,
when the model's long tail uses it, its last ``config.history`` distinct queries
(kept 30 days, see :mod:`qac.session`; use a stable user/device id as the session id
for personal history). A store failure costs the context, never the completion.

The completion call is synchronous C (tens of microseconds, GIL released inside)
and runs inline on the event loop: a thread-pool hop would cost more than the call.
Model loading (reload) runs in a worker thread and swaps one reference, so requests
keep flowing and each request sees either the old or the new model, never a mix.
Reload acts on one process: with several uvicorn workers, SIGHUP to the uvicorn
master restarts them all on the (atomically replaced) model directory.

Metrics live in a registry per app, hence per worker process; /healthz names the
process (``pid``) so a scraper can tell workers apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qac.complete import Completer
from qac.errors import InputError, KernelError, ModelFormatError, QacError, StoreUnavailable
from qac.retrieve import Retriever
from qac.server.config import ServerConfig
from qac.server.docs import install as install_docs
from qac.server.highlight import highlight
from qac.storage import MANIFEST
from qac.text import normalize_prefix

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SessionStore(Protocol):
    """What the server needs of :mod:`qac.session`'s stores."""

    async def record(self, session: str, query: str) -> None: ...
    async def recent(self, session: str, n: int = 5) -> list[str]: ...
    async def previous(self, session: str) -> str | None: ...
    async def context(self, session: str, history: int) -> tuple[str | None, list[str]]: ...
    async def close(self) -> None: ...
    def stats(self) -> Any: ...


class ApiError(Exception):
    """An answer to the client: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    """Which model is loaded: its directory, manifest creation time and a hash.

    ``sha`` hashes the manifest, which lists every file's SHA-256, so it names the
    exact bytes served.
    """

    path: str
    created: str
    sha: str

    @property
    def version(self) -> str:
        return f"{self.created}/{self.sha}"


def _model_info(path: str | Path) -> ModelInfo:
    raw = (Path(path) / MANIFEST).read_bytes()
    created = str(json.loads(raw).get("created", "unknown"))
    return ModelInfo(str(path), created, hashlib.sha256(raw).hexdigest()[:12])


def load_completer(path: str | Path, verify: bool = True) -> tuple[Completer, ModelInfo]:
    """Load a completer and describe it (blocking: call from a thread when serving)."""
    completer = Completer.load(path, verify=verify)
    return completer, _model_info(path)


# -- request parsing ---------------------------------------------------------------

def _query_params(scope: Scope) -> dict[str, str]:
    """The query string as a dict (first value wins), strictly UTF-8."""
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                          encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "query string is not valid UTF-8") from exc
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _text_param(params: dict[str, str], name: str, limit: int) -> str:
    text = params.get(name, "")
    if len(text) > limit:
        raise ApiError(400, f"{name}: at most {limit} characters, got {len(text)}")
    return text


def _k_param(params: dict[str, str], config: ServerConfig) -> int:
    raw = params.get("k")
    if raw is None or raw == "":
        return config.default_k
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(400, f"k: an integer in 1..{config.max_k}, got {raw[:20]!r}") from None
    if not 1 <= k <= config.max_k:
        raise ApiError(400, f"k: an integer in 1..{config.max_k}, got {k}")
    return k


async def _json_body(request: Request, limit: int) -> Any:
    """The request body parsed as JSON (None when empty), at most ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "Content-Length is not an integer") from None
        if declared > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    if not body.strip():
        return None
    try:
        return json.loads(bytes(body))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"body is not valid JSON ({exc})") from None


# -- metrics -------------------------------------------------------------------------

_ENDPOINTS = {
    "/v1/complete": "/v1/complete",
    "/v1/search": "/v1/search",
    "/healthz": "/healthz",
    "/metrics": "/metrics",
    "/v1/admin/reload": "/v1/admin/reload",
    "/": "/",
    "/app.js": "/app.js",
}
_SESSION_ROUTE = "/v1/sessions/{session}/queries"


def _endpoint(path: str) -> str:
    """A bounded label for a request path (session ids would explode cardinality)."""
    known = _ENDPOINTS.get(path)
    if known is not None:
        return known
    return _SESSION_ROUTE if path.startswith("/v1/sessions/") else "other"


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qac_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "qac_http_request_seconds", "HTTP request latency (in process, to the last byte)",
            ["endpoint"], registry=r,
            buckets=(5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.5))
        self.model = Info("qac_model", "Loaded completer model (manifest time and hash)",
                          registry=r)
        self.model_loaded = Gauge("qac_model_loaded_timestamp_seconds",
                                  "Unix time the current completer was loaded", registry=r)
        self.reloads = Counter("qac_model_reloads", "Model reload attempts by result",
                               ["result"], registry=r)
        self.store_stat = Gauge("qac_session_store", "Session store counters (store.stats())",
                                ["stat"], registry=r)
        self.store_failures = Counter(
            "qac_session_store_failures",
            "Session store calls that raised in the server (served without context)",
            registry=r)

    def set_model(self, info: ModelInfo) -> None:
        self.model.info({"path": info.path, "created": info.created, "sha": info.sha})
        self.model_loaded.set(time.time())


class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # if the app raises before answering, the error middleware sends 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = _endpoint(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


# -- the app -------------------------------------------------------------------------

def _static(name: str) -> bytes:
    return (resources.files("qac.server") / "static" / name).read_bytes()


class _State:
    """Everything the handlers share; ``completer``/``model`` swap together on reload."""

    def __init__(self, config: ServerConfig, completer: Completer, model: ModelInfo,
                 retriever: Retriever | None, store: SessionStore) -> None:
        self.config = config
        self.current: tuple[Completer, ModelInfo] = (completer, model)
        self.retriever = retriever
        self.store = store
        self.metrics = Metrics()
        self.metrics.set_model(model)
        self.reload_lock = asyncio.Lock()


def _make_store(config: ServerConfig) -> SessionStore:
    from qac.session import make_store

    store: SessionStore = make_store(config.redis_url, history_size=config.history)
    return store


def create_app(config: ServerConfig, store: SessionStore | None = None) -> Starlette:
    """Load the models and return the app (``store`` overrides ``config.redis_url``)."""
    completer, model = load_completer(config.model_dir, verify=config.verify_model)
    retriever = (Retriever.load(config.retrieval_dir, verify=config.verify_model)
                 if config.retrieval_dir else None)
    state = _State(config, completer, model, retriever,
                   store if store is not None else _make_store(config))
    log.info("serving %s (%s)%s", model.path, model.version,
             f", retrieval {config.retrieval_dir}" if retriever else "")
    page = _static("index.html")
    script = _static("app.js")
    m = state.metrics

    async def session_context(session: str, history: int) -> tuple[str | None, list[str]]:
        try:
            return await state.store.context(session, history)
        except StoreUnavailable:
            # the store should absorb its own errors; never fail a completion on it
            m.store_failures.inc()
            log.warning("session store unavailable; completing without context")
            return None, []

    async def complete(request: Request) -> Response:
        t0 = time.perf_counter()
        params = _query_params(request.scope)
        prefix = _text_param(params, "q", config.max_query_chars)
        k = _k_param(params, config)
        session = params.get("session")
        completer = state.current[0]
        previous: str | None = None
        history: list[str] = []
        if session:
            n = config.history if completer.uses_history else 0
            previous, history = await session_context(session, n)
        got = completer.complete(prefix, previous, k=k, history=history)
        took = (time.perf_counter() - t0) * 1e3
        return JSONResponse({
            "completions": [{"text": c.text, "score": c.score, "source": c.source,
                             "highlight": highlight(normalize_prefix(prefix), c.text)}
                            for c in got],
            "took_ms": round(took, 4),
        })

    async def record(request: Request) -> Response:
        session = request.path_params["session"]
        body = await _json_body(request, config.max_body_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise ApiError(400, 'body: a JSON object {"query": "<text>"} is expected')
        query = body["query"].strip()
        if not query:
            raise ApiError(400, "query: empty")
        if len(query) > config.max_query_chars:
            raise ApiError(400, f"query: at most {config.max_query_chars} characters, "
                                f"got {len(query)}")
        try:
            await state.store.record(session, query)
        except StoreUnavailable as exc:
            m.store_failures.inc()
            raise ApiError(503, f"session store unavailable ({exc})") from None
        return JSONResponse({"session": session, "recorded": query})

    async def search(request: Request) -> Response:
        retriever = state.retriever
        if retriever is None:
            raise ApiError(404, "no retrieval model loaded (start the server with "
                                "--retrieval-dir)")
        t0 = time.perf_counter()
        params = _query_params(request.scope)
        text = _text_param(params, "q", config.max_query_chars)
        k = _k_param(params, config)
        hits = retriever.search(text, k=k)
        took = (time.perf_counter() - t0) * 1e3
        return JSONResponse({"items": [{"item": i, "score": s} for i, s in hits],
                             "took_ms": round(took, 4)})

    async def healthz(request: Request) -> Response:
        model = state.current[1]
        return JSONResponse({"status": "ok", "model": model.path, "version": model.version,
                             "retrieval": state.retriever is not None, "pid": os.getpid()})

    async def metrics(request: Request) -> Response:
        stats = state.store.stats()
        if inspect.isawaitable(stats):
            stats = await stats
        for key, value in (stats or {}).items():
            if isinstance(value, int | float):  # bools too: "available" -> 1/0
                m.store_stat.labels(str(key)).set(float(value))
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def reload(request: Request) -> Response:
        token = config.admin_token
        if token is None:
            raise ApiError(404, "reload is off (start the server with --admin-token-env)")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise ApiError(401, "Authorization: Bearer <token> required")
        if not hmac.compare_digest(auth[len("Bearer "):].encode(), token.encode()):
            raise ApiError(403, "bad admin token")
        body = await _json_body(request, config.max_body_bytes)
        if body is None:
            body = {}
        if not isinstance(body, dict) or not isinstance(body.get("model_dir", ""), str):
            raise ApiError(400, 'body: optional JSON object {"model_dir": "<path>"}')
        path = body.get("model_dir") or state.current[1].path
        t0 = time.perf_counter()
        async with state.reload_lock:
            try:
                new = await anyio.to_thread.run_sync(load_completer, path)
            except (ModelFormatError, InputError, OSError, ValueError) as exc:
                m.reloads.labels("error").inc()
                log.warning("reload of %s failed, keeping %s: %s", path,
                            state.current[1].path, exc)
                raise ApiError(422, f"model not loaded, the old one stays: {exc}") from None
            old = state.current[1]
            state.current = new
        m.reloads.labels("ok").inc()
        m.set_model(new[1])
        log.info("reloaded %s (%s), was %s", new[1].path, new[1].version, old.version)
        return JSONResponse({"model": new[1].path, "version": new[1].version,
                             "previous_version": old.version,
                             "took_ms": round((time.perf_counter() - t0) * 1e3, 1)})

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def app_js(request: Request) -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8",
                        headers=_PAGE_HEADERS)

    routes = [
        Route("/v1/complete", complete, methods=["GET"]),
        Route("/v1/sessions/{session}/queries", record, methods=["POST"]),
        Route("/v1/search", search, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/admin/reload", reload, methods=["POST"]),
        Route("/", index, methods=["GET"]),
        Route("/app.js", app_js, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await state.store.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, HTTPException: _http_error,
        InputError: _input_error, KernelError: _server_error, QacError: _server_error,
        Exception: _server_error,
    })
    app.add_middleware(MetricsMiddleware, metrics=m)
    install_docs(app, config)
    app.state.qac = state
    return app


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


async def _input_error(request: Request, exc: Exception) -> Response:
    # InputError from the library: a bad session id, text it cannot use, ...
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes: the config comes from the environment."""
    return create_app(ServerConfig.from_env())

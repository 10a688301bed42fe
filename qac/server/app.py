"""The HTTP service: completion, session recording, retrieval, health, metrics, reload.

``create_app(ServerConfig(...))`` loads the models (memory-mapped) and the session
store and returns a Starlette app. Endpoints::

    GET  /v1/complete?q=<prefix>&session=<id>&k=10   completions (+ session context)
    POST /v1/sessions/<id>/queries  {"query": "..."}  record a submitted query
    GET  /v1/search?q=<text>&k=10                     retrieval (404 without a model)
    GET  /healthz                                     liveness + model version
    GET  /metrics                                     Prometheus text
    POST /v1/admin/reload  (Bearer token)  {"model_dir": "..."}  swap the completer
    GET  /v1/admin/blocklist  (Bearer token)          the live blocklist
    POST /v1/admin/blocklist  (Bearer token)  {"add": [...], "remove": [...]}
    GET  /                                            demo page

Every error is JSON ``{"error": "..."}`` with a 4xx status (a 5xx only for a failure of
the service itself: 503 when the session store did not record a query).

With ``session``, a completion is conditioned on that session's context, read from the
session store in one call (one Redis round trip, see :mod:`qac.session`): its previous
query and recent queries (30 minutes) and, when the model uses it, the most recent
past queries of that id that the completer selects by (``Completer.history_prefix``:
the prefix, or its first character when typos and word prefixes may match), no more
than ``config.history`` and than the completer reads (``Completer.history_limit``),
with their counts and last times (kept 30 days; use a stable user/device id as the
session id for personal history). A store failure or bad stored data costs the context,
never the completion. The completer is called in one place, :func:`_answer`.

``GET /v1/complete`` is the per-keystroke path. Under ``qac serve`` the HTTP protocol
answers it from the parser's callbacks, below ASGI (:mod:`qac.server.http`); under any
other ASGI server the outermost middleware (:class:`Front`) does, without Starlette's
routing and request objects. Both call one function, ``app.state.complete``. The completion
call is synchronous C (tens of microseconds, GIL released inside) and runs inline on
the event loop: a thread-pool hop would cost more than the call.

Reload (:mod:`qac.server.reload`): the new directory is checked in a child process,
loaded in a worker thread while requests keep flowing, swapped in as one reference
(each request sees the old or the new model, never a mix), and published to the other
worker processes of the replica, which swap within about a second.

Live (:mod:`qac.live`): a recorded query is also an event. With a Redis URL it is
appended to the event stream, which every worker of every replica tails into its live
overlay (one background thread each); without, it goes to this worker's overlay. The
live blocklist is kept in Redis (or in this worker) and filters every answer; every
worker picks up a change within ``live.blocklist_poll`` seconds.

Metrics live in a registry per app, hence per worker process; /healthz names the
process (``pid``) so a scraper can tell workers apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import inspect
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qsl

import anyio.to_thread
import orjson
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
from qac.history import SessionContext
from qac.live import EventStream, LiveBlocklist, StreamTail, parse_entries
from qac.retrieve import Retriever
from qac.server.config import ServerConfig
from qac.server.docs import install as install_docs
from qac.server.reload import (
    POLL_SECONDS,
    ControlDir,
    ModelInfo,
    Published,
    ReloadRefused,
    check_model_dir,
    load_completer,
)
from qac.session import check_session, clean_query

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["ApiError", "ModelInfo", "SessionStore", "app_from_env", "create_app",
           "load_completer"]

_NO_CONTEXT = SessionContext()


class SessionStore(Protocol):
    """What the server needs of :mod:`qac.session`'s stores."""

    async def record(self, session: str, query: str, time: float | None = None) -> str: ...
    async def context(self, session: str, prefix: str = "", n: int = 0
                      ) -> SessionContext: ...
    async def close(self) -> None: ...
    def stats(self) -> Any: ...


class ApiError(Exception):
    """An answer to the client: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _answer(completer: Completer, q: str, ctx: SessionContext, k: int,
            typos: int | None = None) -> Sequence[Any]:
    """The one call from the service into the completer (the per-keystroke path): the
    store's context as it comes (the past queries the completer asked for with
    :meth:`Completer.history_prefix`, with their counts and times; this session's
    queries with their times)."""
    return completer.complete(q, ctx.previous, k=k, history=ctx.history, session=ctx.session,
                              typos=typos)


# -- request parsing ---------------------------------------------------------------

def _query_params(raw: bytes) -> dict[str, str]:
    """The query string as a dict (first value wins), strictly UTF-8."""
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


def _typos_param(params: dict[str, str]) -> int | None:
    raw = params.get("typos")
    if raw is None or raw == "":
        return None
    if raw not in ("0", "1", "2"):
        raise ApiError(400, f"typos: 0, 1 or 2, got {raw[:20]!r}")
    return int(raw)


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
    "/v1/admin/blocklist": "/v1/admin/blocklist",
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
        self.generation = Gauge("qac_model_generation",
                                "Reload generation served by this worker (0: as started)",
                                registry=r)
        self.reloads = Counter("qac_model_reloads", "Model reload attempts by result",
                               ["result"], registry=r)
        self.store_stat = Gauge("qac_session_store", "Session store counters (store.stats())",
                                ["stat"], registry=r)
        self.store_failures = Counter(
            "qac_session_store_failures",
            "Session store calls that raised in the server (served without context, or "
            "a query not recorded)", registry=r)
        self.live = Gauge("qac_live", "Live stream and overlay counters of this worker "
                          "(applied, skipped: stream entries of the wrong shape, errors, "
                          "fresh, ...)", ["stat"], registry=r)
        self.live_publish_failures = Counter(
            "qac_live_publish_failures", "Submitted queries not appended to the event "
            "stream (Redis down: answered 503)", registry=r)
        # the hot path's children, bound once
        self.complete_ok = self.requests.labels("/v1/complete", "200")
        self.complete_latency = self.latency.labels("/v1/complete")

    def set_model(self, info: ModelInfo, generation: int) -> None:
        self.model.info({"path": info.path, "created": info.created, "sha": info.sha})
        self.model_loaded.set(time.time())
        self.generation.set(generation)


_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


#: ``GET /v1/complete``: query string in, (status, JSON body) out, counted and timed
CompleteAnswer = Callable[[bytes], Awaitable[tuple[int, bytes]]]


class Front:
    """The outermost layer: answers ``GET /v1/complete`` itself (the per-keystroke path,
    without Starlette's routing; under ``qac serve`` the HTTP protocol answers it before
    ASGI, :mod:`qac.server.http`) and counts and times every other HTTP request by
    endpoint and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, complete: CompleteAnswer) -> None:
        self.app = app
        self.metrics = metrics
        self.complete = complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/v1/complete" and scope["method"] == "GET":
            await self._complete(scope, send)
            return
        t0 = time.perf_counter()
        status = 500  # if the app raises before answering, the error middleware sends 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if not _is_utf8(scope.get("query_string", b"")):
                # Starlette decodes the query string strictly wherever it builds a URL
                # (the trailing-slash redirect, the error handler's log line) and then
                # fails without answering; refuse it here (issue 15, tests/fuzz)
                status = 400
                await _send_json(send, 400, _error_body("query string is not valid UTF-8"))
                return
            await self.app(scope, receive, send_status)
        finally:
            endpoint = _endpoint(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _complete(self, scope: Scope, send: Send) -> None:
        status, body = await self.complete(scope.get("query_string", b""))
        await _send_json(send, status, body)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# -- the app -------------------------------------------------------------------------

def _static(name: str) -> bytes:
    return (resources.files("qac.server") / "static" / name).read_bytes()


class _State:
    """Everything the handlers share; ``current`` (completer + model) swaps as one."""

    def __init__(self, config: ServerConfig, completer: Completer, model: ModelInfo,
                 generation: int, retriever: Retriever | None, store: SessionStore) -> None:
        self.config = config
        self.current: tuple[Completer, ModelInfo] = (completer, model)
        self.generation = generation
        self.retriever = retriever
        self.store = store
        self.metrics = Metrics()
        self.metrics.set_model(model, generation)
        self.reload_lock = asyncio.Lock()
        self.control = ControlDir(config.control_dir) if config.control_dir else None
        self.blocklist = LiveBlocklist()
        url = config.redis_url
        self.stream = EventStream(url, config.live) if url else None
        self.tail = StreamTail(url, self.blocklist, config.live) if url else None
        self.live_ready = self.attach(completer)

    def attach(self, completer: Completer) -> Any:
        """Give ``completer`` a live overlay (rebuilt from the stream after the ids its
        manifest records, by the tail's thread); returns the event set once it caught
        up."""
        import threading

        overlay = completer.new_overlay(self.config.live, self.blocklist)
        if self.tail is None:
            # no stream to rebuild from: the new overlay takes over the old one's state
            current: tuple[Completer, ModelInfo] | None = getattr(self, "current", None)
            old_live = getattr(current[0], "live", None) if current is not None else None
            if old_live is not None and current is not None and current[0] is not completer:
                overlay.carry(old_live)
            completer.live = overlay
            done = threading.Event()
            done.set()
            return done
        completer.live = overlay
        return self.tail.attach(overlay, completer.stream)

    def live_stats(self) -> dict[str, Any]:
        if self.tail is not None:
            out = self.tail.stats()
        else:
            live = self.current[0].live
            out = live.stats() if live is not None else {}
        out["blocklist_version"] = self.blocklist.version
        out["blocklist_entries"] = len(self.blocklist)
        return out


def _make_store(config: ServerConfig) -> SessionStore:
    from qac.session import make_store

    store: SessionStore = make_store(config.redis_url, history_size=config.history)
    return store


def _initial_model(config: ServerConfig) -> tuple[Completer, ModelInfo, int]:
    """The model to start with: the replica's published generation if there is one
    (a worker restarted after a reload), else ``config.model_dir``."""
    published = ControlDir(config.control_dir).read() if config.control_dir else None
    if published is not None:
        try:
            completer, info = load_completer(published.model_dir, verify=config.verify_model)
            if info.sha == published.sha:
                return completer, info, published.generation
            log.warning("published model %s changed since it was published (%s, now %s); "
                        "starting with %s", published.model_dir, published.sha, info.sha,
                        config.model_dir)
        except (ModelFormatError, InputError, OSError, ValueError) as exc:
            log.warning("published model %s does not load (%s); starting with %s",
                        published.model_dir, exc, config.model_dir)
    completer, info = load_completer(config.model_dir, verify=config.verify_model)
    return completer, info, 0


def create_app(config: ServerConfig, store: SessionStore | None = None) -> Starlette:
    """Load the models and return the app (``store`` overrides ``config.redis_url``)."""
    completer, model, generation = _initial_model(config)
    retriever = (Retriever.load(config.retrieval_dir, verify=config.verify_model)
                 if config.retrieval_dir else None)
    state = _State(config, completer, model, generation, retriever,
                   store if store is not None else _make_store(config))
    _freeze()
    log.info("serving %s (%s)%s", model.path, model.version,
             f", retrieval {config.retrieval_dir}" if retriever else "")
    page = _static("index.html")
    script = _static("app.js")
    m = state.metrics

    async def session_context(session: str, prefix: str, n: int) -> SessionContext:
        try:
            return await state.store.context(session, prefix, n)
        except StoreUnavailable:
            # the store should absorb its own errors; never fail a completion on it
            m.store_failures.inc()
            log.warning("session store unavailable; completing without context")
            return _NO_CONTEXT

    async def complete_body(query_string: bytes) -> bytes:
        t0 = time.perf_counter()
        params = _query_params(query_string)
        prefix = _text_param(params, "q", config.max_query_chars)
        k = _k_param(params, config)
        typos = _typos_param(params)
        session = params.get("session")
        completer = state.current[0]
        ctx = _NO_CONTEXT
        if session:
            n = min(config.history, completer.history_limit)
            by = completer.history_prefix(prefix, typos) if n else prefix
            ctx = await session_context(session, by, n)
        got = _answer(completer, prefix, ctx, k, typos)
        took = (time.perf_counter() - t0) * 1e3
        # orjson: the stdlib encoder took ~15% of the per-keystroke Python (issue 12)
        return orjson.dumps({
            "completions": [{"text": c.text, "score": c.score, "source": c.source,
                             "edits": c.edits, "highlight": c.spans} for c in got],
            "took_ms": round(took, 4),
        })

    async def complete_answer(query_string: bytes) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        try:
            body = await complete_body(query_string)
        except ApiError as exc:
            status, body = exc.status, _error_body(exc.message)
        except InputError as exc:
            status, body = 400, _error_body(str(exc))
        except Exception:
            log.exception("unhandled error on /v1/complete")
            status, body = 500, _error_body("internal error")
        else:
            m.complete_ok.inc()
            m.complete_latency.observe(time.perf_counter() - t0)
            return 200, body
        m.requests.labels("/v1/complete", str(status)).inc()
        m.complete_latency.observe(time.perf_counter() - t0)
        return status, body

    async def complete(request: Request) -> Response:  # HEAD (GET is answered by Front)
        body = await complete_body(request.scope.get("query_string", b""))
        return Response(body, media_type="application/json")

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
        t = time.time()
        # InputError (a bad session id, a lone surrogate, ...) is raised before any
        # write and answers 400
        check_session(session)
        recorded = clean_query(query)
        if not recorded:
            raise ApiError(400, "query: nothing left after normalization")
        # The event stream first: if it fails, nothing is written and a retry counts
        # once. If the session store then fails, the event is in the stream; a retry
        # appends the session's same query again, which the overlays, training from
        # the stream and the store (if the timed-out write landed) take for the same
        # search, as the logs do: counted once (qac.history.REPEAT_SECONDS).
        if state.stream is not None:
            try:
                await state.stream.publish(recorded, session, t)
            except StoreUnavailable as exc:
                m.live_publish_failures.inc()
                raise ApiError(503, f"live event stream unavailable, the query was not "
                                    f"recorded ({exc})") from None
        try:
            recorded = await state.store.record(session, query, t) or recorded
        except StoreUnavailable as exc:
            m.store_failures.inc()
            where = " (it is in the live event stream; a retry is counted once)" \
                if state.stream is not None else ""
            raise ApiError(503, f"session store unavailable, the query was not recorded "
                                f"in the session{where} ({exc})") from None
        if state.stream is None:
            observe = getattr(state.current[0], "observe", None)  # a stand-in may lack it
            if observe is not None:
                observe(recorded, session, t)
        return JSONResponse({"session": session, "recorded": recorded})

    async def search(request: Request) -> Response:
        retriever = state.retriever
        if retriever is None:
            raise ApiError(404, "no retrieval model loaded (start the server with "
                                "--retrieval-dir)")
        t0 = time.perf_counter()
        params = _query_params(request.scope.get("query_string", b""))
        text = _text_param(params, "q", config.max_query_chars)
        k = _k_param(params, config)
        hits = retriever.search(text, k=k)
        took = (time.perf_counter() - t0) * 1e3
        return JSONResponse({"items": [{"item": i, "score": s} for i, s in hits],
                             "took_ms": round(took, 4)})

    async def healthz(request: Request) -> Response:
        model = state.current[1]
        return JSONResponse({"status": "ok", "model": model.path, "version": model.version,
                             "generation": state.generation,
                             "retrieval": state.retriever is not None, "pid": os.getpid()})

    async def metrics(request: Request) -> Response:
        stats = state.store.stats()
        if inspect.isawaitable(stats):
            stats = await stats
        for key, value in (stats or {}).items():
            if isinstance(value, int | float):  # bools too: "available" -> 1/0
                m.store_stat.labels(str(key)).set(float(value))
        for key, value in state.live_stats().items():
            if isinstance(value, int | float):
                m.live.labels(str(key)).set(float(value))
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    def check_admin(request: Request, what: str) -> None:
        token = config.admin_token
        if token is None:
            raise ApiError(404, f"{what} is off (start the server with --admin-token-env)")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise ApiError(401, "Authorization: Bearer <token> required")
        if not hmac.compare_digest(auth[len("Bearer "):].encode(), token.encode()):
            raise ApiError(403, "bad admin token")

    def blocklist_answer(took: float | None = None) -> dict[str, Any]:
        bl = state.blocklist
        out: dict[str, Any] = {"entries": sorted(bl.entries), "version": bl.version,
                               "shared": state.stream is not None}
        if took is not None:
            out["took_ms"] = round(took * 1e3, 2)
        return out

    async def blocklist_get(request: Request) -> Response:
        check_admin(request, "the admin blocklist")
        if state.stream is not None:
            try:
                entries, version = await anyio.to_thread.run_sync(
                    state.stream.get_blocklist)
            except Exception as exc:  # noqa: BLE001 - Redis down: say so
                raise ApiError(503, f"live blocklist unavailable ({type(exc).__name__}: "
                                    f"{exc})") from None
            state.blocklist.set(entries, version)
        return JSONResponse(blocklist_answer())

    async def blocklist_post(request: Request) -> Response:
        check_admin(request, "the admin blocklist")
        t0 = time.perf_counter()
        body = await _json_body(request, config.max_body_bytes)
        if not isinstance(body, dict) or set(body) - {"add", "remove"} or not body:
            raise ApiError(400, 'body: a JSON object {"add": [...], "remove": [...]} '
                                "(blocklist entries: a word, or a stem ending in *)")
        add = parse_entries(body.get("add", []), "add")
        remove = parse_entries(body.get("remove", []), "remove")
        if state.stream is not None:
            entries, version = await state.stream.update_blocklist(add, remove)
        else:
            bl = state.blocklist
            entries = sorted((set(bl.entries) - set(remove)) | set(add))
            version = bl.version + 1
        state.blocklist.set(entries, version)
        log.info("live blocklist: +%s -%s, version %d", add, remove, version)
        return JSONResponse(blocklist_answer(time.perf_counter() - t0))

    async def ready(completer: Completer) -> None:
        """Attach a live overlay to a newly loaded completer and wait (bounded) until
        it caught up with the stream."""
        done = state.attach(completer)
        if done.is_set():  # no await: no submit reaches the old overlay after the carry
            return
        if not await anyio.to_thread.run_sync(done.wait, config.live_wait):
            log.warning("live overlay of %s not caught up with the stream after %ss; "
                        "serving while it fills", state.current[1].path, config.live_wait)

    async def reload(request: Request) -> Response:
        check_admin(request, "reload")
        body = await _json_body(request, config.max_body_bytes)
        if body is None:
            body = {}
        if not isinstance(body, dict) or not isinstance(body.get("model_dir", ""), str):
            raise ApiError(400, 'body: optional JSON object {"model_dir": "<path>"}')
        path = body.get("model_dir") or state.current[1].path
        if "\x00" in path:
            raise ApiError(400, "model_dir: a path without NUL characters")
        path = os.path.abspath(path)  # what every worker of the replica will load
        t0 = time.perf_counter()
        async with state.reload_lock:
            try:
                # the child process first: a directory that crashes or hangs it never
                # reaches this process
                checked = await check_model_dir(path, config.reload_timeout)
                new = await anyio.to_thread.run_sync(_load_frozen, path)
                if new[1].sha != checked.sha:
                    raise ReloadRefused(f"{path}: the manifest changed during the reload "
                                        f"(checked {checked.sha}, loaded {new[1].sha})")
                await ready(new[0])
            except (ReloadRefused, ModelFormatError, InputError, OSError, ValueError) as exc:
                m.reloads.labels("error").inc()
                log.warning("reload of %s refused, keeping %s: %s", path,
                            state.current[1].path, exc)
                raise ApiError(422, f"model not loaded, the old one stays: {exc}") from None
            old = state.current[1]
            state.current = new
            published = None
            if state.control is not None:
                published = state.control.publish(path, new[1].sha)
                state.generation = published.generation
                state.control.ack(published.generation, new[1].sha)
            else:
                state.generation += 1
        m.reloads.labels("ok").inc()
        m.set_model(new[1], state.generation)
        log.info("reloaded %s (%s), was %s; generation %d", new[1].path, new[1].version,
                 old.version, state.generation)
        answer: dict[str, Any] = {"model": new[1].path, "version": new[1].version,
                                  "previous_version": old.version,
                                  "generation": state.generation}
        status = 200
        if published is not None and state.control is not None:
            workers = await _wait_for_workers(state.control, published, config)
            answer["workers"] = workers
            if workers["swapped"] < workers["expected"]:
                status = 202  # accepted; not every worker confirmed in time
        answer["took_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        return JSONResponse(answer, status_code=status)

    async def follow(published: Published) -> None:
        """Swap in a generation another worker published (this worker's watcher)."""
        assert state.control is not None
        async with state.reload_lock:
            if published.generation <= state.generation:
                return
            error = None
            try:
                new = await anyio.to_thread.run_sync(_load_frozen, published.model_dir)
                if new[1].sha != published.sha:
                    error = (f"{published.model_dir} changed since it was published "
                             f"({published.sha}, now {new[1].sha})")
                else:
                    await ready(new[0])
            except (ModelFormatError, InputError, OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            state.generation = published.generation  # a failed one is not retried
            if error is not None:
                m.reloads.labels("error").inc()
                log.warning("reload to generation %d refused, keeping %s: %s",
                            published.generation, state.current[1].path, error)
                state.control.ack(published.generation, published.sha, error)
                return
            state.current = new
            state.control.ack(published.generation, published.sha)
        m.reloads.labels("ok").inc()
        m.set_model(new[1], state.generation)
        log.info("followed reload to generation %d: %s (%s)", published.generation,
                 new[1].path, new[1].version)

    async def watch() -> None:
        control = state.control
        assert control is not None
        control.ack(state.generation, state.current[1].sha)
        control.changed()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                if control.changed():
                    published = control.read()
                    if published is not None and published.generation > state.generation:
                        await follow(published)
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("reload watcher")

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
        Route("/v1/admin/blocklist", blocklist_get, methods=["GET"]),
        Route("/v1/admin/blocklist", blocklist_post, methods=["POST"]),
        Route("/", index, methods=["GET"]),
        Route("/app.js", app_js, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        watcher = asyncio.create_task(watch()) if state.control is not None else None
        if state.tail is not None:
            state.tail.start()
            # a worker that starts (or restarts) answers once its overlay caught up
            if not await anyio.to_thread.run_sync(state.live_ready.wait, config.live_wait):
                log.warning("live overlay not caught up with the stream after %ss; "
                            "serving while it fills", config.live_wait)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if state.tail is not None:
                await anyio.to_thread.run_sync(state.tail.stop)
            if state.stream is not None:
                await state.stream.aclose()
            await state.store.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, HTTPException: _http_error,
        InputError: _input_error, KernelError: _server_error, QacError: _server_error,
        Exception: _server_error,
    })
    app.add_middleware(Front, metrics=m, complete=complete_answer)
    install_docs(app, config)  # outermost: CORS headers on every answer, Front's too
    app.state.qac = state
    app.state.complete = complete_answer  # what qac.server.http answers keystrokes with
    return app


def _freeze() -> None:
    """Move every object alive now (the loaded models) out of the garbage collector's
    reach: a full collection over them took ~45 ms on this machine, a pause that would
    land in some keystroke's latency."""
    gc.collect()
    gc.freeze()


def _load_frozen(path: str) -> tuple[Completer, ModelInfo]:
    """:func:`load_completer` for a reload (in a worker thread), with no automatic
    collection while it runs (one would walk the half-built model holding the GIL,
    stalling the event loop), and the new model frozen at the end. No collection runs
    here either: the old model is freed by reference counting once swapped out; only
    its reference cycles, if any, stay."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        got = load_completer(path)
        gc.freeze()
        return got
    finally:
        if enabled:
            gc.enable()


async def _wait_for_workers(control: ControlDir, published: Published,
                            config: ServerConfig) -> dict[str, Any]:
    """Wait (up to ``config.reload_timeout``) until every worker of the replica serves
    ``published``'s generation or reported that it could not load it."""
    deadline = time.monotonic() + config.reload_timeout
    while True:
        done, failed = control.acks(published.generation)
        if len(done) + len(failed) >= config.workers or time.monotonic() > deadline:
            return {"expected": config.workers, "swapped": len(done), "failed": failed}
        await asyncio.sleep(POLL_SECONDS / 4)


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

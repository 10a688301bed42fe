"""The service described for people and for browsers on other origins.

:func:`install` adds to an app built by :func:`qac.server.app.create_app`:

- ``GET /openapi.json``: an OpenAPI 3.1 description generated from the app's routing
  table with Starlette's schema tools (:class:`starlette.schemas.BaseSchemaGenerator`
  walks the routes). Each route's operation comes from :data:`operations`; a route
  with none still appears, with its handler's docstring as summary, so nothing the
  app serves is left out. Limits (``k``, text lengths, body size) come from the
  server's configuration, so the description says what this server enforces.
- ``GET /docs``: the same description as a page (server-side HTML, no script, no
  assets from elsewhere).
- ``GET /favicon.ico``: the demo page's icon.
- CORS (``ServerConfig.cors_origins``, ``qac serve --cors-origin``): pages on those
  origins may call ``GET``/``POST`` with a JSON body. The admin endpoint's
  ``Authorization`` header is not allowed cross-origin: reloads come from operators'
  tools, not from pages.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import BaseSchemaGenerator

import qac
from qac.server.config import ServerConfig
from qac.session import MAX_SESSION_CHARS

#: Paths that serve pages and their assets, not the API: left out of the description.
PAGES = frozenset({"/", "/app.js", "/favicon.ico", "/docs", "/openapi.json"})

_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: str, description: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema)}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}}


def _error(description: str, example: str) -> dict[str, Any]:
    return _json("Error", description, {"error": example})


def components(config: ServerConfig) -> dict[str, Any]:
    """The JSON schemas of the bodies (OpenAPI 3.1, i.e. JSON Schema 2020-12)."""
    text = {"type": "string", "maxLength": config.max_query_chars}
    return {"schemas": {
        "Blocklist": BLOCKLIST_SCHEMA,
        "BlocklistRequest": BLOCKLIST_REQUEST,
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "string",
                                     "description": "what was wrong, naming the parameter"}},
        },
        "Completion": {
            "type": "object", "required": ["text", "score", "source", "edits", "highlight"],
            "properties": {
                "text": {"type": "string", "description": "the suggested query, normalized"},
                "score": {"type": "number",
                          "description": "ranking score; higher ranks first within one answer"},
                "source": {"type": "string",
                           "description": "what it is shown with: history (a past query "
                                          "of the user), model (the XMR beam), mpc (most "
                                          "popular completion), session, suffix or word "
                                          "(generated), words (its successive words start "
                                          "with the typed words) or typo (a correction)"},
                "edits": {"type": "integer", "minimum": 0, "maximum": 2,
                          "description": "typo corrections it took (0: none)"},
                "highlight": {
                    "type": "array",
                    "description": "[start, end) character offsets of the parts of text "
                                   "that match what was typed, after the server's "
                                   "normalization (case, spaces, Unicode, accents): a "
                                   "prefix, the starts of the words typed, or the "
                                   "characters a correction kept",
                    "items": {"type": "array", "prefixItems": [{"type": "integer",
                                                                 "minimum": 0},
                                                                {"type": "integer",
                                                                 "minimum": 0}],
                              "minItems": 2, "maxItems": 2},
                },
            },
        },
        "CompleteResponse": {
            "type": "object", "required": ["completions", "took_ms"],
            "properties": {
                "completions": {"type": "array", "items": _ref("Completion"),
                                "maxItems": config.max_k},
                "took_ms": {"type": "number", "minimum": 0,
                            "description": "time in the server, in milliseconds"},
            },
        },
        "RecordRequest": {
            "type": "object", "required": ["query"],
            "properties": {"query": dict(text, minLength=1,
                                         description="the submitted query")},
        },
        "RecordResponse": {
            "type": "object", "required": ["session", "recorded"],
            "properties": {"session": {"type": "string"}, "recorded": {"type": "string"}},
        },
        "SearchHit": {
            "type": "object", "required": ["item", "score"],
            "properties": {"item": {"type": "string", "description": "item id"},
                           "score": {"type": "number", "description":
                                     "the engine's score, in (0, 1]; above 1 for an item of "
                                     "a known near-duplicate of the query (\"www.ebay.com\" "
                                     "of \"ebay\"): 1 + its share of that text's clicks"}},
        },
        "SearchResponse": {
            "type": "object", "required": ["items", "took_ms"],
            "properties": {"items": {"type": "array", "items": _ref("SearchHit"),
                                     "maxItems": config.max_k},
                           "took_ms": {"type": "number", "minimum": 0}},
        },
        "Health": {
            "type": "object", "required": ["status", "model", "version", "retrieval", "pid"],
            "properties": {
                "status": {"const": "ok"},
                "model": {"type": "string", "description": "completer model directory"},
                "version": {"type": "string",
                            "description": "manifest creation time / manifest hash"},
                "retrieval": {"type": "boolean",
                              "description": "whether /v1/search has a model"},
                "pid": {"type": "integer", "description": "the worker process answering"},
            },
        },
        "ReloadRequest": {
            "type": "object",
            "properties": {"model_dir": {"type": "string",
                                         "description": "default: the current directory"}},
        },
        "ReloadResponse": {
            "type": "object",
            "required": ["model", "version", "previous_version", "took_ms"],
            "properties": {"model": {"type": "string"}, "version": {"type": "string"},
                           "previous_version": {"type": "string"},
                           "took_ms": {"type": "number", "minimum": 0}},
        },
    }, "securitySchemes": {
        "admin": {"type": "http", "scheme": "bearer",
                  "description": "the token in the environment variable that "
                                 "qac serve --admin-token-env names"},
    }}


BLOCKLIST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["entries", "version", "shared"], "properties": {
        "entries": {"type": "array", "items": {"type": "string"}},
        "version": {"type": "integer"}, "shared": {"type": "boolean"}}}
BLOCKLIST_REQUEST: dict[str, Any] = {"type": "object", "properties": {
                    "add": {"type": "array", "items": {"type": "string"}},
                    "remove": {"type": "array", "items": {"type": "string"}}}}


def operations(config: ServerConfig) -> dict[tuple[str, str], dict[str, Any]]:
    """The operation of each (path, method) of the API, with this server's limits."""
    k = {"name": "k", "in": "query", "required": False,
         "description": "how many answers",
         "schema": {"type": "integer", "minimum": 1, "maximum": config.max_k,
                    "default": config.default_k}}
    session = {"type": "string", "pattern": f"^[A-Za-z0-9_-]{{1,{MAX_SESSION_CHARS}}}$"}
    bad_k = f"k: an integer in 1..{config.max_k}, got 0"
    return {
        ("/v1/complete", "get"): {
            "operationId": "complete",
            "summary": "Complete a prefix",
            "description": "The top-k queries for what was typed so far. With `session`, "
                           "the session's previous query (and, for a long-tail model, its "
                           "history) conditions the answer; an empty `q` then gives "
                           "next-query suggestions, and without a session the most popular "
                           "queries. If the session store fails, the answer comes without "
                           "context.",
            "parameters": [
                {"name": "q", "in": "query", "required": False,
                 "description": "the prefix as typed (normalized by the server)",
                 "schema": {"type": "string", "maxLength": config.max_query_chars,
                            "default": ""}},
                {"name": "session", "in": "query", "required": False,
                 "description": "session (or stable user/device) id", "schema": session},
                k,
                {"name": "typos", "in": "query", "required": False,
                 "description": "the most typo corrections (0 turns them off); default: "
                                "the model's (one edit from 3 characters, two from 8)",
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2}},
            ],
            "responses": {
                "200": _json("CompleteResponse", "completions, best first", {
                    "completions": [{"text": "new york", "score": 0.91, "source": "model",
                                     "edits": 0, "highlight": [[0, 5]]}],
                    "took_ms": 0.12}),
                "400": _error("a bad parameter", bad_k),
            },
        },
        ("/v1/sessions/{session}/queries", "post"): {
            "operationId": "recordQuery",
            "summary": "Record a submitted query",
            "description": "Appends the query to the live event stream (with a Redis "
                           "URL), then to the session's recent list (its head is "
                           "the previous query of later completions, for 30 minutes) and "
                           "to its history list (kept 30 days). A retry after a 503 is "
                           "safe: a session repeating its last query is one search to the "
                           "live counts.",
            "parameters": [{"name": "session", "in": "path", "required": True,
                            "description": "session id", "schema": session}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("RecordRequest"), "example": {"query": "new york"}}}},
            "responses": {
                "200": _json("RecordResponse", "recorded",
                             {"session": "u42", "recorded": "new york"}),
                "400": _error("bad JSON, an empty query or a bad session id",
                              "query: empty"),
                "413": _error(f"a body over {config.max_body_bytes} bytes",
                              f"body larger than {config.max_body_bytes} bytes"),
                "503": _error("the event stream or the session store is unavailable",
                              "session store unavailable (timeout)"),
            },
        },
        ("/v1/search", "get"): {
            "operationId": "search",
            "summary": "Retrieve items for a query",
            "description": "Product retrieval on the same engine: the top-k item ids for "
                           "a query. Needs a retrieval model (qac serve --retrieval-dir).",
            "parameters": [
                {"name": "q", "in": "query", "required": False,
                 "description": "the query", "schema": {"type": "string", "default": "",
                                                        "maxLength": config.max_query_chars}},
                k,
            ],
            "responses": {
                "200": _json("SearchResponse", "items, best first", {
                    "items": [{"item": "http://www.nyc.gov/", "score": 0.83}],
                    "took_ms": 0.05}),
                "400": _error("a bad parameter", bad_k),
                "404": _error("no retrieval model is loaded",
                              "no retrieval model loaded (start the server with "
                              "--retrieval-dir)"),
            },
        },
        ("/healthz", "get"): {
            "operationId": "health",
            "summary": "Liveness and the loaded model",
            "responses": {"200": _json("Health", "the server is up", {
                "status": "ok", "model": "/models/hybrid",
                "version": "2026-05-01T12:00:00+00:00/0123456789ab", "retrieval": True,
                "pid": 4242})},
        },
        ("/metrics", "get"): {
            "operationId": "metrics",
            "summary": "Prometheus metrics of this worker process",
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        },
        ("/v1/admin/reload", "post"): {
            "operationId": "reload",
            "summary": "Swap in a model directory",
            "description": "Loads the directory (the current one by default) in a worker "
                           "thread and swaps it in; requests keep flowing. Off unless the "
                           "server was started with --admin-token-env. Acts on the worker "
                           "that answers.",
            "security": [{"admin": []}],
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": _ref("ReloadRequest")}}},
            "responses": {
                "200": _json("ReloadResponse", "the new model serves"),
                "401": _error("no bearer token", "Authorization: Bearer <token> required"),
                "403": _error("a wrong token", "bad admin token"),
                "404": _error("reload is off",
                              "reload is off (start the server with --admin-token-env)"),
                "422": _error("the directory is not a loadable model; the old one stays",
                              "model not loaded, the old one stays: ..."),
            },
        },
        ("/v1/admin/blocklist", "get"): {
            "operationId": "getBlocklist",
            "summary": "The live blocklist",
            "description": "The entries (blocklist file syntax: a word, or a stem ending "
                           "in *) and their version. Kept in Redis with --redis-url (shared "
                           "by every replica), else in the worker. It filters every answer, "
                           "whatever its source, beside the model's own blocklist.",
            "security": [{"admin": []}],
            "responses": {
                "200": {"description": "the live blocklist", "content": {
                    "application/json": {"schema": _ref("Blocklist"),
                                         "example": {"entries": ["sandy"], "version": 3,
                                                     "shared": True}}}},
                "401": _error("no bearer token", "Authorization: Bearer <token> required"),
                "403": _error("a wrong token", "bad admin token"),
                "503": _error("Redis is unavailable", "live blocklist unavailable (...)"),
            },
        },
        ("/v1/admin/blocklist", "post"): {
            "operationId": "updateBlocklist",
            "summary": "Add to or remove from the live blocklist",
            "description": "Body {\"add\": [...], \"remove\": [...]}; entries in the "
                           "blocklist file syntax. Every worker of every replica applies "
                           "the change within a second.",
            "security": [{"admin": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("BlocklistRequest"), "example": {"add": ["sandy"], "remove": []}}}},
            "responses": {
                "200": {"description": "the live blocklist after the change", "content": {
                    "application/json": {"schema": _ref("Blocklist"),
                                         "example": {"entries": ["sandy"], "version": 4,
                                                     "shared": True}}}},
                "400": _error("a bad body or entry", "add: 'two words' is not a blocklist "
                                                      "entry"),
                "401": _error("no bearer token", "Authorization: Bearer <token> required"),
                "403": _error("a wrong token", "bad admin token"),
                "503": _error("Redis is unavailable", "event stream unavailable (...)"),
            },
        },
    }


class ApiSchema(BaseSchemaGenerator):
    """OpenAPI from the routing table: every API route, with its operation."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.operations = operations(config)

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for ep in self.get_endpoints(routes):
            if ep.path in PAGES:
                continue
            op = self.operations.get((ep.path, ep.http_method))
            if op is None:
                doc = (ep.func.__doc__ or "").strip().splitlines()
                op = {"summary": doc[0] if doc else ep.func.__name__,
                      "responses": {"default": {"description": "see the summary"}}}
            paths.setdefault(ep.path, {})[ep.http_method] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": "qac", "version": qac.__version__,
                     "description": "Session-aware query autocomplete and product "
                                    "retrieval. Every error is JSON {\"error\": ...} with "
                                    "a 4xx or 5xx status."},
            "paths": paths,
            "components": components(self.config),
        }


# -- the docs page ----------------------------------------------------------------------

def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{name}">{name}</a>'
    if "const" in schema:
        return html.escape(json.dumps(schema["const"]))
    kind = str(schema.get("type", "any"))
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, dict) and "prefixItems" in items:
            inner = ", ".join(_type(s) for s in items["prefixItems"])
            return f"array of [{inner}]"
        return f"array of {_type(items)}" if isinstance(items, dict) else "array"
    notes = []
    if "minimum" in schema and "maximum" in schema:
        notes.append(f"{schema['minimum']}..{schema['maximum']}")
    elif "minimum" in schema:
        notes.append(f"&ge; {schema['minimum']}")
    for key, label in (("minLength", "at least"), ("maxLength", "at most")):
        if key in schema:
            notes.append(f"{label} {schema[key]} characters")
    if "pattern" in schema:
        notes.append(f"<code>{html.escape(schema['pattern'])}</code>")
    if "default" in schema:
        notes.append(f"default {html.escape(json.dumps(schema['default']))}")
    return kind + (f" ({', '.join(notes)})" if notes else "")


def _compact(value: Any, indent: str = "") -> str:
    """JSON with a line per member, but lists and objects of scalars on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        if all(not isinstance(v, dict | list) for v in value.values()):
            return json.dumps(value)
        members = [f"{inner}{json.dumps(k)}: {_compact(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + f"\n{indent}}}"
    if isinstance(value, list) and value:
        if all(not isinstance(v, dict) for v in value) and len(json.dumps(value)) <= 60:
            return json.dumps(value)
        return "[\n" + ",\n".join(inner + _compact(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value)


def _example(value: Any) -> str:
    return f"<pre>{html.escape(_compact(value))}</pre>"


def _prose(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_docs(schema: dict[str, Any]) -> str:
    """The OpenAPI description as one HTML page."""
    info = schema["info"]
    out = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(info['title'])} API</title>",
        '<link rel="icon" href="/favicon.ico">',
        "<style>body{font:15px/1.5 system-ui,sans-serif;color:#1d2330;max-width:820px;"
        "margin:0 auto;padding:16px}code,pre{font:13px ui-monospace,monospace}"
        "pre{background:#f3f4f7;padding:8px;overflow-x:auto;border-radius:6px}"
        "table{border-collapse:collapse;width:100%;margin:6px 0}"
        "td,th{border-bottom:1px solid #e2e5ec;padding:4px 6px;text-align:left;"
        "vertical-align:top;overflow-wrap:break-word}"
        "h2{margin-top:32px;border-top:1px solid #d9dde6;padding-top:12px;"
        "overflow-wrap:break-word}h2 code{font-size:inherit}"
        ".method{font-weight:700;color:#2f6fdf}.wide{overflow-x:auto}</style>",
        "</head>", "<body>",
        f"<h1>{html.escape(info['title'])} API <small>{html.escape(info['version'])}"
        "</small></h1>",
        f"<p>{html.escape(info['description'])}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
        f"{html.escape(schema['openapi'])}). The demo page: <a href=\"/\">/</a>.</p>",
        "<nav><ul>",
    ]
    ops = [(path, method, op) for path, methods in schema["paths"].items()
           for method, op in methods.items()]
    for path, method, op in ops:
        anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
        out.append(f'<li><a href="#{html.escape(anchor)}"><span class="method">'
                   f"{method.upper()}</span> <code>{html.escape(path)}</code></a>: "
                   f"{html.escape(op.get('summary', ''))}</li>")
    out.append("</ul></nav>")
    for path, method, op in ops:
        anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
        out.append(f'<h2 id="{html.escape(anchor)}"><span class="method">{method.upper()}'
                   f"</span> <code>{html.escape(path)}</code></h2>")
        out.append(f"<p><strong>{html.escape(op.get('summary', ''))}</strong></p>")
        if op.get("description"):
            out.append(f"<p>{_prose(op['description'])}</p>")
        if op.get("security"):
            out.append("<p>Needs <code>Authorization: Bearer &lt;token&gt;</code>.</p>")
        if op.get("parameters"):
            out.append('<div class="wide"><table><tr><th>parameter</th><th>in</th>'
                       "<th>type</th><th>description</th></tr>")
            for p in op["parameters"]:
                req = " (required)" if p.get("required") else ""
                out.append(f"<tr><td><code>{html.escape(p['name'])}</code>{req}</td>"
                           f"<td>{html.escape(p['in'])}</td><td>{_type(p['schema'])}</td>"
                           f"<td>{html.escape(p.get('description', ''))}</td></tr>")
            out.append("</table></div>")
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            out.append(f"<p>Body: JSON {_type(body['schema'])}</p>")
            if "example" in body:
                out.append(_example(body["example"]))
        out.append('<div class="wide"><table><tr><th>status</th><th>body</th><th>when</th></tr>')
        for status, resp in op.get("responses", {}).items():
            content = resp.get("content", {})
            media = next(iter(content.values()), None)
            kind = _type(media["schema"]) if media else ""
            out.append(f"<tr><td>{html.escape(status)}</td><td>{kind}</td>"
                       f"<td>{html.escape(resp.get('description', ''))}</td></tr>")
        out.append("</table></div>")
        ok = op.get("responses", {}).get("200", {}).get("content", {})
        example = ok.get("application/json", {}).get("example")
        if example is not None:
            out.append("<p>Example answer:</p>" + _example(example))
    out.append("<h2>Schemas</h2>")
    for name, s in schema["components"]["schemas"].items():
        out.append(f'<h3 id="schema-{html.escape(name)}">{html.escape(name)}</h3>'
                   '<div class="wide"><table>'
                   "<tr><th>field</th><th>type</th><th>description</th></tr>")
        required = set(s.get("required", []))
        for field, fs in s.get("properties", {}).items():
            opt = "" if field in required else " (optional)"
            out.append(f"<tr><td><code>{html.escape(field)}</code>{opt}</td>"
                       f"<td>{_type(fs)}</td>"
                       f"<td>{html.escape(fs.get('description', ''))}</td></tr>")
        out.append("</table></div>")
    out += ["</body>", "</html>"]
    return "\n".join(out)


def install(app: Starlette, config: ServerConfig) -> None:
    """Add ``/openapi.json``, ``/docs``, ``/favicon.ico`` and CORS to ``app``."""
    generator = ApiSchema(config)
    cache: dict[str, Any] = {}
    icon = (resources.files("qac.server") / "static" / "favicon.ico").read_bytes()

    def schema(request: Request) -> dict[str, Any]:
        # the routing table is fixed once the app serves: describe it once
        if "schema" not in cache:
            cache["schema"] = generator.get_schema(request.app.routes)
        value: dict[str, Any] = cache["schema"]
        return value

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema(request))

    async def docs(request: Request) -> Response:
        return HTMLResponse(render_docs(schema(request)), headers=_HEADERS)

    async def favicon(request: Request) -> Response:
        return Response(icon, media_type="image/x-icon",
                        headers={"Cache-Control": "public, max-age=86400"})

    app.router.routes.extend([
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/docs", docs, methods=["GET"], include_in_schema=False),
        Route("/favicon.ico", favicon, methods=["GET"], include_in_schema=False),
    ])
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"],
                           max_age=600)

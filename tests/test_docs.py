"""The service described: highlight spans, /openapi.json (valid, generated from the
routes, and true to the real answers), the /docs page, the favicon and CORS."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from sessionlog import pl_log
from starlette.routing import Route
from starlette.testclient import TestClient
from test_match import ask, labelled

from qac.complete import Completer, CompleterConfig
from qac.errors import InputError
from qac.match import MatchConfig
from qac.retrieve import Retriever
from qac.server import ServerConfig, create_app
from qac.server.docs import PAGES, ApiSchema, operations
from qac.server.serve import add_serve_arguments, config_from_args
from qac.text import normalize_prefix

TOKEN = "docs-test-token"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("docs")
    Completer.train(pl_log().events, CompleterConfig(index="hybrid", trie_depth=1)).save(
        root / "model")
    Retriever.train([("i1", "red shoes"), ("i2", "blue shirt")]).save(root / "retriever")
    return {"model": root / "model", "retriever": root / "retriever"}


def _client(models: dict[str, Path], **config: Any) -> Iterator[TestClient]:
    cfg = ServerConfig(model_dir=str(models["model"]), retrieval_dir=str(models["retriever"]),
                       admin_token=TOKEN, **config)
    with TestClient(create_app(cfg)) as client:
        yield client


@pytest.fixture(scope="module")
def client(models: dict[str, Path]) -> Iterator[TestClient]:
    yield from _client(models)


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    return body


def check(spec: dict[str, Any], schema_name: str, value: Any) -> None:
    """Validate ``value`` against a component schema of ``spec`` (JSON Schema 2020-12)."""
    registry = Registry().with_resource("urn:qac-spec", DRAFT202012.create_resource(spec))
    schema = {"$ref": f"urn:qac-spec#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


def response_schema(spec: dict[str, Any], path: str, method: str, status: str) -> str:
    media = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
    ref: str = media["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


# -- highlight spans ------------------------------------------------------------------------

@pytest.mark.parametrize("typed, text, spans", [
    ("new y", "new york", [(0, 5)]),
    ("New  Y", "new york", [(0, 5)]),          # capitals and two spaces
    ("  NEW\tyork ", "new york times", [(0, 9)]),  # a finished word keeps its space
    ("STRAẞE", "strasse berlin", [(0, 7)]),     # casefold: ẞ -> ss
    ("ｎｅｗ", "new york", [(0, 3)]),             # NFKC: full-width letters
    ("", "new york", []),                       # next-query or popular: nothing typed
    ("Wéather", "weather channel", [(0, 7)]),   # accents fold
    ("york", "new york", [(4, 8)]),             # a later word typed first
    ("App  Wat", "apple watch", [(0, 3), (6, 9)]),  # word prefixes
    ("new york times x", "new york times", None),  # not an answer without typos
])
def test_highlight_uses_the_servers_normalization(
        typed: str, text: str, spans: list[tuple[int, int]] | None) -> None:
    """The kernel's spans of an answer, for the prefix as the server normalizes it."""
    got = ask(labelled([text], [1]), normalize_prefix(typed), MatchConfig(typos=0))
    lit = dict(zip(got.texts, got.spans, strict=True))
    assert lit.get(text) == (None if spans is None else tuple(spans))


def test_complete_answers_carry_highlight_spans(client: TestClient) -> None:
    got = client.get("/v1/complete", params={"q": "New  Y", "k": 5}).json()["completions"]
    assert got and got[0]["text"] == "new york times"
    for c in got:
        start, end = c["highlight"][0]
        assert c["text"][start:end] == "new y"
    popular = client.get("/v1/complete", params={"q": ""}).json()["completions"]
    assert popular and all(c["highlight"] == [] for c in popular)


# -- /openapi.json ----------------------------------------------------------------------------

def test_openapi_is_valid_and_describes_complete(spec: dict[str, Any]) -> None:
    validate_spec(spec)
    assert spec["openapi"].startswith("3.1")
    op = spec["paths"]["/v1/complete"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"q", "session", "k", "typos"}
    assert params["k"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 50,
                                     "default": 10}
    assert params["q"]["schema"]["maxLength"] == 256
    assert response_schema(spec, "/v1/complete", "get", "200") == "CompleteResponse"
    completion = spec["components"]["schemas"]["Completion"]
    assert set(completion["required"]) == {"text", "score", "source", "edits", "highlight"}


def test_openapi_is_generated_from_the_routes(client: TestClient,
                                              spec: dict[str, Any]) -> None:
    """Every API route the app serves is described, with a written operation; the
    page routes are not."""
    routes = {(r.path, m.lower()) for r in client.app.routes  # type: ignore[attr-defined]
              if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    api = {(p, m) for p, m in routes if p not in PAGES}
    described = {(p, m) for p, methods in spec["paths"].items() for m in methods}
    assert described == api
    written = operations(ServerConfig(model_dir="x"))
    assert api <= set(written), api - set(written)
    assert not set(spec["paths"]) & PAGES


def test_a_route_without_a_written_operation_still_appears() -> None:
    async def ping(request: Any) -> Any:
        """Answer pong."""

    schema = ApiSchema(ServerConfig(model_dir="x")).get_schema(
        [Route("/v1/ping", ping, methods=["GET"]), Route("/", ping)])
    assert schema["paths"] == {"/v1/ping": {"get": {
        "summary": "Answer pong.", "responses": {"default": {"description": "see the summary"}}}}}
    validate_spec(schema)


def test_openapi_limits_follow_the_config(models: dict[str, Path]) -> None:
    for client in _client(models, max_k=20, default_k=5, max_query_chars=64):
        spec = client.get("/openapi.json").json()
        params = {p["name"]: p for p in spec["paths"]["/v1/search"]["get"]["parameters"]}
        assert params["k"]["schema"]["maximum"] == 20
        assert params["k"]["schema"]["default"] == 5
        assert params["q"]["schema"]["maxLength"] == 64


def test_examples_match_their_schemas(spec: dict[str, Any]) -> None:
    seen = 0
    for methods in spec["paths"].values():
        for op in methods.values():
            bodies = [op.get("requestBody", {}).get("content", {}).get("application/json")]
            bodies += [r.get("content", {}).get("application/json")
                       for r in op["responses"].values()]
            for media in bodies:
                if media and "example" in media:
                    check(spec, media["schema"]["$ref"].rsplit("/", 1)[-1], media["example"])
                    seen += 1
    assert seen >= 10


def test_real_answers_match_the_description(client: TestClient, spec: dict[str, Any]) -> None:
    def answer(method: str, path: str, template: str, status: int, **kw: Any) -> None:
        r = client.request(method, path, **kw)
        assert r.status_code == status, r.text
        check(spec, response_schema(spec, template, method.lower(), str(status)), r.json())

    answer("GET", "/v1/complete", "/v1/complete", 200, params={"q": "pl", "session": "s1"})
    answer("GET", "/v1/complete", "/v1/complete", 400, params={"q": "pl", "k": "0"})
    answer("POST", "/v1/sessions/s1/queries", "/v1/sessions/{session}/queries", 200,
           json={"query": "rose of jericho"})
    answer("POST", "/v1/sessions/s1/queries", "/v1/sessions/{session}/queries", 400,
           json={"query": " "})
    answer("POST", "/v1/sessions/s1/queries", "/v1/sessions/{session}/queries", 413,
           content=b"x" * 5000, headers={"content-type": "application/json"})
    answer("GET", "/v1/search", "/v1/search", 200, params={"q": "red shoes"})
    answer("GET", "/healthz", "/healthz", 200)
    answer("POST", "/v1/admin/reload", "/v1/admin/reload", 401)
    answer("POST", "/v1/admin/reload", "/v1/admin/reload", 403,
           headers={"Authorization": "Bearer wrong"})
    answer("POST", "/v1/admin/reload", "/v1/admin/reload", 200,
           headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# -- the docs page and the favicon ------------------------------------------------------------

def test_docs_page(client: TestClient, spec: dict[str, Any]) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    assert "<script" not in page
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert f'{method.upper()}</span> <code>{path}</code>' in page
            assert op["summary"] in page
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert 'href="/openapi.json"' in page


def test_favicon(client: TestClient) -> None:
    r = client.get("/favicon.ico")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/x-icon"
    assert r.content[:4] == b"\x00\x00\x01\x00"
    assert b'<link rel="icon" href="/favicon.ico">' in client.get("/").content


# -- CORS -------------------------------------------------------------------------------------

def test_no_cors_unless_asked(client: TestClient) -> None:
    r = client.get("/v1/complete", params={"q": "pl"}, headers={"Origin": "https://a.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def test_cors_for_the_origins_given(models: dict[str, Path]) -> None:
    for client in _client(models, cors_origins=("https://shop.example",
                                                "http://localhost:5173")):
        ok = client.options("/v1/complete", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "GET"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        r = client.get("/v1/complete", params={"q": "pl"},
                       headers={"Origin": "http://localhost:5173"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
        post = client.options("/v1/sessions/s1/queries", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert post.status_code == 200
        other = client.get("/v1/complete", params={"q": "pl"},
                           headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # the admin endpoint's token header is not for pages
        admin = client.options("/v1/admin/reload", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert admin.status_code == 400


def test_cors_any_origin(models: dict[str, Path]) -> None:
    for client in _client(models, cors_origins=("*",)):
        r = client.get("/v1/complete", params={"q": "pl"}, headers={"Origin": "https://x.example"})
        assert r.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origin", ["https://shop.example/", "https://shop.example/path",
                                    "shop.example", "ftp://shop.example", ""])
def test_bad_cors_origins_are_refused(origin: str) -> None:
    with pytest.raises(InputError, match="cors_origins"):
        ServerConfig(model_dir="m", cors_origins=(origin,))


def test_cors_origins_is_a_tuple_not_a_string() -> None:
    with pytest.raises(InputError, match="a tuple of origins"):
        ServerConfig(model_dir="m", cors_origins="https://shop.example")  # type: ignore[arg-type]


def test_cors_origin_option_reaches_the_config_and_the_workers() -> None:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    args = p.parse_args(["m", "--cors-origin", "https://a.example",
                         "--cors-origin", "http://[::1]:8080"])
    cfg = config_from_args(args)
    assert cfg.cors_origins == ("https://a.example", "http://[::1]:8080")
    assert ServerConfig.from_env(cfg.to_env()) == cfg
    assert config_from_args(p.parse_args(["m"])).cors_origins == ()
    assert "--cors-origin" in p.format_help()

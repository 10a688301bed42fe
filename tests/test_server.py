"""HTTP service: every endpoint, every limit, reload, and the session effect via the API."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer
from sessionlog import weeks_log
from starlette.testclient import TestClient

from qac.complete import Completer, CompleterConfig
from qac.errors import InputError, ModelFormatError, StoreUnavailable
from qac.history import SessionContext
from qac.logs import LogEvent
from qac.retrieve import Retriever
from qac.server import ServerConfig, create_app
from qac.server.config import ENV_CONFIG
from qac.session import MemorySessionStore, RedisSessionStore, session_keys
from qac.sources import GENERATORS

TOKEN = "s3cret-token-for-tests"


def _log(extra: int = 0) -> list[LogEvent]:
    log = weeks_log()
    log.repeat(extra, "x", "zebra crossing")
    return log.events


def train_model(path: Path, extra: int = 0, history: bool = True) -> Path:
    """A small completer saved to ``path`` (a few seconds: three weeks of sessions, its
    ranker fitted on the last one); without ``history``, the source that reads the
    user's past queries is off."""
    gens = GENERATORS if history else tuple(g for g in GENERATORS if g != "history")
    Completer.train(_log(extra), CompleterConfig(index="hybrid", trie_depth=1, min_fit=200,
                                                 generators=gens)).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    retriever = Retriever.train([("i1", "red shoes"), ("i2", "blue shirt"), ("i1", "shoes")])
    retriever.save(root / "retriever")
    return {"a": train_model(root / "a", history=False), "b": train_model(root / "b", extra=3),
            "history": train_model(root / "history"),
            "retriever": root / "retriever"}


def _client(cfg: ServerConfig, **kw: Any) -> Iterator[TestClient]:
    with TestClient(create_app(cfg, **kw)) as client:
        yield client


@pytest.fixture()
def client(models: dict[str, Path]) -> Iterator[TestClient]:
    cfg = ServerConfig(model_dir=str(models["a"]), retrieval_dir=str(models["retriever"]),
                       admin_token=TOKEN)
    yield from _client(cfg)


def _texts(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [c["text"] for c in resp.json()["completions"]]


# -- completion and sessions -----------------------------------------------------------

def test_complete_answers_with_texts_scores_sources_and_time(client: TestClient) -> None:
    r = client.get("/v1/complete", params={"q": "pl", "k": 3})
    body = r.json()
    assert r.status_code == 200
    assert set(body) == {"completions", "took_ms"}
    assert body["took_ms"] >= 0
    assert len(body["completions"]) == 3
    for c in body["completions"]:
        assert set(c) == {"text", "score", "source", "edits", "highlight"}
        assert c["text"].startswith("pl") and c["source"] in {"model", "mpc"}
    assert body["completions"][0]["text"] == "playstation"


def test_complete_defaults(client: TestClient) -> None:
    assert "playstation" in _texts(client.get("/v1/complete"))[:3]  # no q: popular ones
    assert len(_texts(client.get("/v1/complete?q=&k="))) == 10  # the default k


def test_session_effect_through_the_api(client: TestClient) -> None:
    assert _texts(client.get("/v1/complete?q=pl&session=s-1"))[0] == "playstation"
    r = client.post("/v1/sessions/s-1/queries", json={"query": "Rose of  Jericho"})
    assert r.status_code == 200 and r.json()["session"] == "s-1"
    assert _texts(client.get("/v1/complete?q=pl&session=s-1&k=3"))[0] == "plant care tips"
    # other sessions are untouched
    assert _texts(client.get("/v1/complete?q=pl&session=s-2"))[0] == "playstation"
    # the latest submitted query is the context
    client.post("/v1/sessions/s-1/queries", json={"query": "game console"})
    assert _texts(client.get("/v1/complete?q=pl&session=s-1"))[0] == "playstation 5"


def test_unknown_session_has_no_context(client: TestClient) -> None:
    assert _texts(client.get("/v1/complete?q=pl&session=never-seen"))[0] == "playstation"


def test_store_failure_serves_without_context(models: dict[str, Path]) -> None:
    class Broken(MemorySessionStore):
        async def context(self, session: str, prefix: str = "", n: int = 0
                          ) -> SessionContext:
            raise StoreUnavailable("down")

        async def record(self, session: str, query: str, time: float | None = None) -> str:
            raise StoreUnavailable("down")

    for client in _client(ServerConfig(model_dir=str(models["a"])), store=Broken()):
        assert _texts(client.get("/v1/complete?q=pl&session=s"))[0] == "playstation"
        r = client.post("/v1/sessions/s/queries", json={"query": "x"})
        assert r.status_code == 503 and "unavailable" in r.json()["error"]
        assert "qac_session_store_failures_total 2.0" in client.get("/metrics").text


class SpyStore(MemorySessionStore):
    """A memory store that notes every ``context`` call (one per completion); its
    records are one second apart."""

    def __init__(self, **kw: Any) -> None:
        ticks = itertools.count(1_700_000_000)
        super().__init__(wall=lambda: float(next(ticks)), **kw)
        self.calls: list[tuple[str, str, int]] = []

    async def context(self, session: str, prefix: str = "", n: int = 0) -> SessionContext:
        self.calls.append((session, prefix, n))
        return await super().context(session, prefix, n)


class RecordingCompleter:
    """Stands in for a long-tail completer with the history generator; notes its calls."""

    history_limit = 5  # it looks at the 5 most recent past queries at most

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, int, Any]] = []

    def complete(self, prefix: str, previous: str | None = None, k: int = 10,
                 history: Any = (), session: Any = (), now: Any = None,
                 typos: int | None = None) -> list[Any]:
        # the store's past queries, most recent first, as their texts
        self.calls.append((prefix, previous, k, [p.query for p in history]))
        return []

    def history_prefix(self, prefix: str, typos: int | None = None) -> str:
        return prefix  # only the past queries that start with the prefix


def test_typos_are_corrected_unless_turned_off(client: TestClient) -> None:
    got = client.get("/v1/complete", params={"q": "plyastation", "k": 5}).json()["completions"]
    fixed = [c for c in got if c["text"] == "playstation"]
    assert fixed and fixed[0]["source"] == "typo" and fixed[0]["edits"] == 1
    # the characters the correction kept are highlighted, the swapped ones are not
    assert fixed[0]["highlight"] == [[0, 2], [4, 11]]
    assert "playstation" not in _texts(client.get("/v1/complete", params={
        "q": "plyastation", "typos": "0"}))
    for bad in ("3", "-1", "x", "1.5"):
        r = client.get("/v1/complete", params={"q": "pl", "typos": bad})
        assert r.status_code == 400 and "typos" in r.json()["error"]


def test_past_queries_match_with_typos_through_the_store(models: dict[str, Path]) -> None:
    for client in _client(ServerConfig(model_dir=str(models["history"]))):
        client.post("/v1/sessions/u-9/queries", json={"query": "corvallis racquetball"})
        client.post("/v1/sessions/u-9/queries", json={"query": "rose of jericho"})
        got = client.get("/v1/complete", params={"q": "corvalis", "session": "u-9"}).json()
        assert got["completions"][0]["text"] == "corvallis racquetball"
        assert got["completions"][0]["edits"] == 1


def test_history_reaches_the_completer(models: dict[str, Path]) -> None:
    store = SpyStore()
    fake = RecordingCompleter()
    for client in _client(ServerConfig(model_dir=str(models["a"]), history=3), store=store):
        state = client.app.state.qac  # type: ignore[attr-defined]
        state.current = (fake, state.current[1])
        for q in ["Red shoes", "blue hat", "red  SHOES", "green scarf", "yellow boots"]:
            assert client.post("/v1/sessions/u-1/queries", json={"query": q}).status_code == 200
        client.post("/v1/sessions/u-2/queries", json={"query": "other user"})
        assert _texts(client.get("/v1/complete?q=re&session=u-1&k=4")) == []
        # the store keeps config.history distinct queries (the least recent, "blue
        # hat", was evicted); the completer gets those that start with the prefix
        assert fake.calls[-1] == ("re", "yellow boots", 4, ["red shoes"])
        assert store.calls == [("u-1", "re", 3)]  # one store call per keystroke
        client.get("/v1/complete?q=&session=u-1")  # empty prefix: the most recent
        assert fake.calls[-1] == ("", "yellow boots", 10,
                                  ["yellow boots", "green scarf", "red shoes"])
        client.get("/v1/complete?q=re&session=u-3")
        assert fake.calls[-1][1:] == (None, 10, [])
        client.get("/v1/complete?q=re")  # no session: no store call
        assert fake.calls[-1][1:] == (None, 10, []) and len(store.calls) == 3


def test_the_store_is_asked_for_no_more_past_queries_than_the_completer_reads(
        models: dict[str, Path]) -> None:
    store = SpyStore()
    for client in _client(ServerConfig(model_dir=str(models["a"]), history=50), store=store):
        state = client.app.state.qac  # type: ignore[attr-defined]
        state.current = (RecordingCompleter(), state.current[1])
        client.get("/v1/complete?q=re&session=u-1")
        assert store.calls == [("u-1", "re", 5)]  # kept: 50; read per keystroke: 5


def test_history_not_fetched_for_a_model_that_does_not_use_it(models: dict[str, Path]) -> None:
    store = SpyStore()
    for client in _client(ServerConfig(model_dir=str(models["a"])), store=store):
        client.post("/v1/sessions/u-1/queries", json={"query": "rose of jericho"})
        assert _texts(client.get("/v1/complete?q=pl&session=u-1&k=3"))[0] == "plant care tips"
        assert store.calls == [("u-1", "pl", 0)]  # the previous query only


def test_history_suggests_the_users_own_queries(models: dict[str, Path]) -> None:
    """End to end: a past query of this user, unknown to the model, completes its
    prefix; another user's history does not leak."""
    for client in _client(ServerConfig(model_dir=str(models["history"]))):
        assert "plumbing repair near me" not in _texts(client.get("/v1/complete?q=plu"))
        for q in ["Plumbing repair near me", "game console"]:
            client.post("/v1/sessions/u-1/queries", json={"query": q})
        r = client.get("/v1/complete?q=plu&session=u-1")
        assert r.status_code == 200, r.text
        got = [(c["text"], c["source"]) for c in r.json()["completions"]]
        assert ("plumbing repair near me", "history") in got[:5]
        assert "plumbing repair near me" not in _texts(client.get("/v1/complete?q=plu&session=u-2"))
    for client in _client(ServerConfig(model_dir=str(models["history"]), history=0)):
        client.post("/v1/sessions/u-1/queries", json={"query": "plumbing repair near me"})
        assert "plumbing repair near me" not in _texts(
            client.get("/v1/complete?q=plu&session=u-1"))


def test_history_through_redis(models: dict[str, Path], redis_server: RedisServer) -> None:
    """The store built from the config keeps config.history entries per session."""
    cfg = ServerConfig(model_dir=str(models["history"]), redis_url=redis_server.url, history=2)
    session = f"srv-{id(cfg)}"
    for client in _client(cfg):
        store = client.app.state.qac.store  # type: ignore[attr-defined]
        assert isinstance(store, RedisSessionStore) and store.history_size == 2
        for q in ["plumbing repair near me", "plum cake", "playstation"]:
            client.post(f"/v1/sessions/{session}/queries", json={"query": q})
        times = session_keys(session).times
        assert redis_server.cli("ZRANGE", times, "0", "-1").split("\n") == [
            "plum cake", "playstation"]
        got = client.get(f"/v1/complete?q=plu&session={session}").json()["completions"]
        assert [c["text"] for c in got if c["source"] == "history"] == ["plum cake"]


# -- limits ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, fragment", [
    ("/v1/complete?q=" + "a" * 257, "at most 256"),
    ("/v1/complete?q=pl&k=0", "k:"),
    ("/v1/complete?q=pl&k=51", "k:"),
    ("/v1/complete?q=pl&k=ten", "k:"),
    ("/v1/complete?q=%FF%FE", "UTF-8"),
    ("/v1/complete?q=pl&session=bad%20id", "session id"),
    ("/v1/complete?q=pl&session=" + "s" * 65, "session id"),
    ("/v1/search?q=" + "a" * 257, "at most 256"),
    ("/v1/search?q=shoes&k=99", "k:"),
])
def test_bad_queries_are_400_with_a_message(client: TestClient, url: str,
                                             fragment: str) -> None:
    r = client.get(url)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_k_limits_are_inclusive(client: TestClient) -> None:
    assert len(_texts(client.get("/v1/complete?q=&k=1"))) == 1
    assert client.get("/v1/complete?q=&k=50").status_code == 200


@pytest.mark.parametrize("body, headers, status, fragment", [
    (b'{"query": ', {}, 400, "JSON"),
    (b'\xff\xfe{"query": "x"}', {}, 400, "JSON"),
    (b'["x"]', {}, 400, "object"),
    (b'{"query": 3}', {}, 400, "object"),
    (b'{"q": "x"}', {}, 400, "object"),
    (b'', {}, 400, "object"),
    (b'{"query": "   "}', {}, 400, "empty"),
    (('{"query": "%s"}' % ("a" * 300)).encode(), {}, 400, "at most"),
    (('{"query": "%s"}' % ("a" * 5000)).encode(), {}, 413, "4096"),
])
def test_bad_bodies(client: TestClient, body: bytes, headers: dict[str, str], status: int,
                    fragment: str) -> None:
    r = client.post("/v1/sessions/s1/queries", content=body,
                    headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_body_limit_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    r = client.post("/v1/sessions/s1/queries", content=chunks())
    assert r.status_code == 413


@pytest.mark.parametrize("session", ["bad%20id", "x" * 65, "a.b", "%C3%A9t%C3%A9"])
def test_bad_session_id_on_record(client: TestClient, session: str) -> None:
    r = client.post(f"/v1/sessions/{session}/queries", json={"query": "x"})
    assert r.status_code == 400 and "session id" in r.json()["error"]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.post("/v1/complete")
    assert r.status_code == 405 and "error" in r.json()


# -- search, health, metrics, page ---------------------------------------------------------

def test_search(client: TestClient) -> None:
    r = client.get("/v1/search", params={"q": "red shoes", "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["items"][0]["item"] == "i1" and body["took_ms"] >= 0
    assert client.get("/v1/search?q=").json()["items"] == []


def test_search_without_a_retrieval_model_is_404(models: dict[str, Path]) -> None:
    for client in _client(ServerConfig(model_dir=str(models["a"]))):
        r = client.get("/v1/search?q=shoes")
        assert r.status_code == 404 and "retrieval" in r.json()["error"]


def test_healthz(client: TestClient, models: dict[str, Path]) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model"] == str(models["a"])
    assert body["retrieval"] is True and "/" in body["version"]


def test_metrics(client: TestClient) -> None:
    client.get("/v1/complete?q=pl")
    client.get("/v1/complete?q=pl&k=0")
    # an id no hex digest or metric name can hold by chance
    client.post("/v1/sessions/session-never-a-label/queries", json={"query": "x"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'qac_http_requests_total{endpoint="/v1/complete",status="200"} 1.0' in text
    assert 'qac_http_requests_total{endpoint="/v1/complete",status="400"} 1.0' in text
    # session ids never become label values
    assert 'endpoint="/v1/sessions/{session}/queries",status="200"' in text
    assert "session-never-a-label" not in text
    assert 'qac_http_request_seconds_bucket{endpoint="/v1/complete",le="0.0001"}' in text
    assert 'qac_session_store{stat="errors"} 0.0' in text
    assert 'qac_session_store{stat="sessions"} 1.0' in text
    assert "qac_model_info{created=" in text


def test_demo_page_and_script(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="q"' in r.text and "/app.js" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    js = client.get("/app.js")
    assert js.status_code == 200 and "/v1/complete" in js.text


# -- reload ----------------------------------------------------------------------------------

def _reload(client: TestClient, token: str | None = TOKEN, **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post("/v1/admin/reload", json=body or None, headers=headers)


def test_reload_swaps_the_model(client: TestClient, models: dict[str, Path]) -> None:
    assert "zebra crossing" not in _texts(client.get("/v1/complete?q=z"))
    before = client.get("/healthz").json()["version"]
    r = _reload(client, model_dir=str(models["b"]))
    assert r.status_code == 200, r.text
    assert r.json()["previous_version"] == before
    assert client.get("/healthz").json()["model"] == str(models["b"])
    assert _texts(client.get("/v1/complete?q=z"))[0] == "zebra crossing"
    assert 'qac_model_reloads_total{result="ok"} 1.0' in client.get("/metrics").text
    # no body: reload the current directory (e.g. after retraining in place)
    assert _reload(client).status_code == 200


@pytest.mark.parametrize("where", ["missing", "corrupt", "not-a-string"])
def test_bad_reload_keeps_the_old_model(client: TestClient, models: dict[str, Path],
                                        tmp_path: Path, where: str) -> None:
    bad: Any = str(tmp_path / "nothing-here")
    if where == "corrupt":
        bad = tmp_path / "corrupt"
        shutil.copytree(models["a"], bad)
        with open(bad / "labels.counts.npy", "r+b") as f:
            f.seek(-1, 2)
            f.write(b"\x7f")
        bad = str(bad)
    elif where == "not-a-string":
        bad = 42
    before = client.get("/healthz").json()
    r = _reload(client, model_dir=bad)
    assert 400 <= r.status_code < 500 and r.json()["error"]
    assert client.get("/healthz").json() == before
    assert _texts(client.get("/v1/complete?q=pl"))[0] == "playstation"


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong", 403), ("", 403)])
def test_reload_needs_the_token(client: TestClient, models: dict[str, Path],
                                token: str | None, status: int) -> None:
    r = _reload(client, token, model_dir=str(models["b"]))
    assert r.status_code == status and r.json()["error"]
    assert client.get("/healthz").json()["model"] == str(models["a"])


def test_reload_is_off_without_a_token(models: dict[str, Path]) -> None:
    for client in _client(ServerConfig(model_dir=str(models["a"]))):
        r = _reload(client, TOKEN, model_dir=str(models["b"]))
        assert r.status_code == 404 and "off" in r.json()["error"]


# -- configuration ---------------------------------------------------------------------------

def test_config_round_trips_through_the_environment_without_the_token() -> None:
    cfg = ServerConfig(model_dir="/m", admin_token="t0ken", admin_token_env="QAC_TEST_TOKEN")
    env = cfg.to_env()
    assert "t0ken" not in env[ENV_CONFIG]
    assert ServerConfig.from_env({**env, "QAC_TEST_TOKEN": "t0ken"}) == cfg
    with pytest.raises(ValueError, match="QAC_TEST_TOKEN"):
        ServerConfig.from_env(env)
    with pytest.raises(ValueError, match="max_k"):
        ServerConfig(model_dir="/m", max_k=0)
    with pytest.raises(ValueError, match="admin_token"):
        ServerConfig(model_dir="/m", admin_token=" ")
    assert ServerConfig.from_env(ServerConfig(model_dir="/m", history=7).to_env()).history == 7
    for bad in (-1, 1001, 2.5, True, "200"):
        with pytest.raises(InputError, match="ServerConfig.history"):
            ServerConfig(model_dir="/m", history=bad)  # type: ignore[arg-type]
    assert ServerConfig(model_dir="/m", history=0).history == 0


def test_serve_arguments(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from qac.server import add_serve_arguments
    from qac.server.serve import config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args([str(models["a"]), "--admin-token-env", "QAC_TEST_TOKEN",
                              "--workers", "2"])
    assert args.port == 8000 and args.host == "127.0.0.1" and args.workers == 2
    with pytest.raises(ValueError, match="QAC_TEST_TOKEN"):
        config_from_args(args)
    monkeypatch.setenv("QAC_TEST_TOKEN", "abc")
    assert config_from_args(args).admin_token == "abc"
    assert config_from_args(args).history == 200
    args = parser.parse_args([str(models["a"]), "--history", "50"])
    assert config_from_args(args).history == 50
    # a namespace built without --history (qac demo builds its own) gets the default
    del args.history
    assert config_from_args(args).history == 200


def test_bad_model_dir_fails_at_creation(tmp_path: Path) -> None:
    from qac.errors import ModelFormatError

    with pytest.raises(ModelFormatError):
        create_app(ServerConfig(model_dir=str(tmp_path)))


def test_completions_flow_while_a_reload_loads(models: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The new model loads in a worker thread: the event loop keeps answering."""
    import asyncio
    import threading

    import httpx2

    from qac.server import app as app_module

    loading, release = threading.Event(), threading.Event()
    real = app_module.load_completer

    def slow_load(path: Any, verify: bool = True) -> Any:
        loading.set()
        assert release.wait(5)
        return real(path, verify)

    app = create_app(ServerConfig(model_dir=str(models["a"]), admin_token=TOKEN))
    monkeypatch.setattr(app_module, "load_completer", slow_load)

    async def scenario() -> None:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
            reload = asyncio.create_task(client.post(
                "/v1/admin/reload", json={"model_dir": str(models["b"])},
                headers={"Authorization": f"Bearer {TOKEN}"}))
            while not loading.is_set():
                await asyncio.sleep(0.005)
            r = await client.get("/v1/complete?q=z")  # answered by the old model
            assert r.status_code == 200 and "zebra crossing" not in r.text
            assert not reload.done()
            release.set()
            assert (await reload).status_code == 200
            r = await client.get("/v1/complete?q=z")
            assert r.json()["completions"][0]["text"] == "zebra crossing"

    asyncio.run(scenario())


def test_worker_factory_reads_the_environment(models: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from qac.server.app import app_from_env

    cfg = ServerConfig(model_dir=str(models["a"]), admin_token="t0ken",
                       admin_token_env="QAC_TEST_TOKEN", verify_model=False)
    for key, value in cfg.to_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QAC_TEST_TOKEN", "t0ken")
    with TestClient(app_from_env()) as client:
        assert _texts(client.get("/v1/complete?q=pl"))[0] == "playstation"
        r = client.post("/v1/admin/reload", headers={"Authorization": "Bearer t0ken"})
        assert r.status_code == 200


def test_multi_worker_listening_socket_has_nagle_off() -> None:
    """With --workers > 1 the shared socket gets TCP_NODELAY (accepted sockets inherit
    it on Linux); without it each keep-alive request waited ~40 ms for a delayed ACK."""
    import socket

    import uvicorn

    from qac.server.serve import _nodelay_listening_socket

    class Config(uvicorn.Config):
        pass

    _nodelay_listening_socket(Config)
    _nodelay_listening_socket(Config)  # idempotent
    sock = Config(app=lambda *a: None, host="127.0.0.1", port=0).bind_socket()
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


# -- session store faults through the API (issue 15: D3, D4, D5, refused writes) -------

def test_lone_surrogate_is_a_400_and_writes_nothing(models: dict[str, Path]) -> None:
    store = SpyStore()
    for client in _client(ServerConfig(model_dir=str(models["a"])), store=store):
        for raw in (b'{"query": "abc\\udc00"}', b'{"query": "\\ud800x"}',
                    b'{"query": "\\udfff"}'):
            r = client.post("/v1/sessions/s-1/queries", content=raw,
                            headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert "lone surrogate" in r.json()["error"]
        assert len(store) == 0  # nothing was written, so a retry cannot double it
        r = client.post("/v1/sessions/s-1/queries", json={"query": "abc"})
        assert r.status_code == 200 and r.json()["recorded"] == "abc"
        r = client.post("/v1/sessions/s-1/queries", json={"query": "\u200b\u200b"})
        assert r.status_code == 400 and "nothing left" in r.json()["error"]


def test_a_refused_write_is_a_503_and_completions_go_on(
        models: dict[str, Path], redis_factory: Any) -> None:
    server = redis_factory().start()
    cfg = ServerConfig(model_dir=str(models["a"]), redis_url=server.url)
    for client in _client(cfg):
        assert client.post("/v1/sessions/w-1/queries",
                           json={"query": "rose of jericho"}).status_code == 200
        server.cli("CONFIG", "SET", "maxmemory", "1")
        r = client.post("/v1/sessions/w-2/queries", json={"query": "game console"})
        assert r.status_code == 503, r.text
        assert "not recorded" in r.json()["error"] and "OutOfMemory" in r.json()["error"]
        assert server.cli("KEYS", "*w-2*") == ""  # nothing half-written
        # reads go on, with context: Redis is up, no back-off
        assert _texts(client.get("/v1/complete?q=pl&session=w-1&k=3"))[0] == "plant care tips"
        text = client.get("/metrics").text
        # the event stream is written first (qac/live.py): it refused, so the session
        # store was never asked
        assert "qac_live_publish_failures_total 1.0" in text
        assert 'qac_session_store{stat="errors"} 0.0' in text
        server.cli("CONFIG", "SET", "maxmemory", "0")
        assert client.post("/v1/sessions/w-2/queries",
                           json={"query": "game console"}).status_code == 200


def _poison(server: RedisServer, session: str, kind: str) -> None:
    import redis as sync_redis

    key = session_keys(session).recent
    r = sync_redis.Redis.from_url(server.url)
    try:
        r.delete(key)
        if kind == "wrong-type":
            r.hset(key, "a", "b")
        elif kind == "not-utf8":
            r.lpush(key, b"1700000000.0\t\xff\xfe\xfd")
        elif kind == "oversized":
            r.lpush(key, "1700000000.0\t" + "x" * 1025)
        else:  # a bare 1,025-character head, as issue 15 planted it
            r.lpush(key, "x" * 1025)
    finally:
        r.close()


@pytest.mark.parametrize("kind", ["wrong-type", "not-utf8", "oversized", "bare-head"])
def test_a_poisoned_session_costs_only_its_own_context(
        models: dict[str, Path], redis_server: RedisServer, kind: str) -> None:
    """Issue 15's bar: the poisoned session asked 20 times a second answers 200 without
    context; a healthy session keeps its context in >= 99% of answers."""
    import time

    cfg = ServerConfig(model_dir=str(models["a"]), redis_url=redis_server.url)
    evil, good = f"evil-{kind}-{id(cfg)}", f"good-{kind}-{id(cfg)}"
    fake = RecordingCompleter()
    for client in _client(cfg):
        state = client.app.state.qac  # type: ignore[attr-defined]
        state.current = (fake, state.current[1])
        assert client.post(f"/v1/sessions/{good}/queries",
                           json={"query": "red shoes"}).status_code == 200
        assert client.post(f"/v1/sessions/{evil}/queries",
                           json={"query": "blue hat"}).status_code == 200
        healthy = with_context = poisoned = 0
        end = time.monotonic() + 2.0
        next_evil = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_evil:  # 20 a second, re-poisoned each time
                next_evil += 0.05
                _poison(redis_server, evil, kind)
                r = client.get(f"/v1/complete?q=bl&session={evil}")
                assert r.status_code == 200, r.text
                assert fake.calls[-1][1] is None  # no previous query from bad data
                poisoned += 1
            r = client.get(f"/v1/complete?q=re&session={good}")
            assert r.status_code == 200, r.text
            healthy += 1
            with_context += fake.calls[-1][1] == "red shoes" and fake.calls[-1][3] == [
                "red shoes"]
        assert poisoned >= 30
        assert with_context >= 0.99 * healthy, (with_context, healthy)
        text = client.get("/metrics").text
        assert 'qac_session_store{stat="errors"} 0.0' in text  # no global back-off
        stat = "bad_keys" if kind == "wrong-type" else "bad_entries"
        count = float(text.split(f'qac_session_store{{stat="{stat}"}} ')[1].split()[0])
        assert count >= poisoned
        # the poisoned session records again (a write repairs a key of the wrong type)
        assert client.post(f"/v1/sessions/{evil}/queries",
                           json={"query": "blue sky"}).status_code == 200
        client.get(f"/v1/complete?q=bl&session={evil}")
        assert fake.calls[-1][1] == "blue sky"


# -- reload: checked in a child process, followed by every worker ----------------------

@pytest.mark.parametrize("how", ["segfault", "abort", "hang"])
def test_a_model_that_kills_or_hangs_the_check_is_refused(
        models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    import sys
    import time

    from qac.server import reload as reload_module

    code = {"segfault": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
            "abort": "import os; os.abort()",
            "hang": "import time; time.sleep(60)"}[how]
    monkeypatch.setattr(reload_module, "check_argv",
                        lambda path: [sys.executable, "-c", code])
    cfg = ServerConfig(model_dir=str(models["a"]), admin_token=TOKEN, reload_timeout=2)
    for client in _client(cfg):
        before = client.get("/healthz").json()
        t0 = time.monotonic()
        r = _reload(client, model_dir=str(models["b"]))
        assert r.status_code == 422, r.text
        want = {"segfault": "died on SIGSEGV", "abort": "died on SIGABRT",
                "hang": "did not finish in 2 s"}[how]
        assert want in r.json()["error"] and "old one stays" in r.json()["error"]
        assert time.monotonic() - t0 < 10
        assert client.get("/healthz").json() == before
        assert "zebra crossing" not in _texts(client.get("/v1/complete?q=z"))
        assert 'qac_model_reloads_total{result="error"} 1.0' in client.get("/metrics").text


def test_a_fifo_manifest_is_refused_within_the_timeout(models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    import os
    import time

    bad = tmp_path / "fifo-model"
    shutil.copytree(models["b"], bad)
    (bad / "manifest.json").unlink()
    os.mkfifo(bad / "manifest.json")
    cfg = ServerConfig(model_dir=str(models["a"]), admin_token=TOKEN, reload_timeout=5)
    for client in _client(cfg):
        t0 = time.monotonic()
        r = _reload(client, model_dir=str(bad))
        assert r.status_code == 422, r.text  # a hang (killed) or a clean refusal
        assert time.monotonic() - t0 < 15
        assert client.get("/healthz").json()["model"] == str(models["a"])
        assert _texts(client.get("/v1/complete?q=pl"))[0] == "playstation"
        # the server is not stuck behind the reload lock
        assert _reload(client, model_dir=str(models["b"])).status_code == 200


def test_reload_reaches_every_worker_of_the_replica(models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """Two apps sharing a control directory stand for two worker processes."""
    import time

    control = tmp_path / "control"
    control.mkdir()
    cfg = ServerConfig(model_dir=str(models["a"]), admin_token=TOKEN, workers=2,
                       control_dir=str(control), reload_timeout=20)
    with TestClient(create_app(cfg)) as a, TestClient(create_app(cfg)) as b:
        assert "zebra crossing" not in _texts(b.get("/v1/complete?q=z"))
        r = _reload(a, model_dir=str(models["b"]))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["generation"] == 1
        assert body["workers"] == {"expected": 2, "swapped": 2, "failed": []}
        # the other worker swapped in the background, without a request of its own
        assert b.get("/healthz").json()["generation"] == 1
        assert b.get("/healthz").json()["model"] == str(models["b"])
        assert _texts(b.get("/v1/complete?q=z"))[0] == "zebra crossing"
        # and back, from the other worker
        r = _reload(b, model_dir=str(models["a"]))
        assert r.status_code == 200 and r.json()["generation"] == 2
        deadline = time.monotonic() + 5
        while a.get("/healthz").json()["generation"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "zebra crossing" not in _texts(a.get("/v1/complete?q=z"))
        # a worker that starts later (uvicorn restarting one) serves generation 2
        with TestClient(create_app(cfg)) as c:
            assert c.get("/healthz").json()["generation"] == 2
            assert c.get("/healthz").json()["model"].endswith(models["a"].name)


def test_a_worker_that_cannot_follow_keeps_its_model_and_says_so(
        models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qac.server import app as app_module

    control = tmp_path / "control"
    control.mkdir()
    cfg = ServerConfig(model_dir=str(models["a"]), admin_token=TOKEN, workers=2,
                       control_dir=str(control), reload_timeout=20)
    with TestClient(create_app(cfg)) as a, TestClient(create_app(cfg)) as b:
        real = app_module.load_completer
        calls = []

        def flaky(path: Any, verify: bool = True) -> Any:
            calls.append(path)
            if len(calls) == 2:  # the second load: the following worker's
                raise ModelFormatError("disk gone", str(path))
            return real(path, verify)

        monkeypatch.setattr(app_module, "load_completer", flaky)
        r = _reload(a, model_dir=str(models["b"]))
        assert r.status_code == 202, r.text
        workers = r.json()["workers"]
        assert workers["swapped"] == 1 and len(workers["failed"]) == 1
        assert "disk gone" in workers["failed"][0]["error"]
        assert b.get("/healthz").json()["model"] == str(models["a"])


def test_workers_default_to_the_cpus_this_process_may_use() -> None:
    import argparse
    import os

    from qac.server import add_serve_arguments
    from qac.server.serve import config_from_args, default_workers

    assert default_workers() == len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["/m"])
    assert args.workers == default_workers()
    assert config_from_args(args).workers == default_workers()
    with pytest.raises(InputError, match="--workers"):
        config_from_args(parser.parse_args(["/m", "--workers", "0"]))


@pytest.mark.slow
def test_qac_serve_workers_all_follow_a_reload(models: dict[str, Path], tmp_path: Path) -> None:
    """End to end: `qac serve --workers 2`, one POST reload, every worker swaps."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import free_port

    port = free_port()
    env = dict(os.environ, QAC_TEST_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qac", "serve", str(models["a"]), "--port", str(port),
         "--workers", "2", "--admin-token-env", "QAC_TEST_TOKEN", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return json.loads(r.read())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get("/healthz")
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        req = urllib.request.Request(
            base + "/v1/admin/reload", data=json.dumps({"model_dir": str(models["b"])}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
            assert r.status == 200, answer
        assert answer["workers"] == {"expected": 2, "swapped": 2, "failed": []}
        seen = {}
        for _ in range(60):  # a new connection each: the kernel spreads them
            h = get("/healthz")
            seen[h["pid"]] = (h["generation"], h["model"])
        assert len(seen) == 2, seen
        assert set(seen.values()) == {(1, str(models["b"]))}
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_response_goes_out_in_one_write() -> None:
    """qac serve's protocol gathers uvicorn's header and body writes of one loop step."""
    import asyncio

    from qac.server.http import _Coalescing

    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str) -> str:
            return f"info:{name}"

    async def scenario() -> None:
        t = Transport()
        c = _Coalescing(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        c.write(b"HTTP/1.1 200 OK\r\n\r\n")
        c.write(b"{}")
        assert t.writes == []
        await asyncio.sleep(0)
        assert t.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        c.write(b"last")
        c.close()  # a close sends what is pending first
        assert t.writes[-1] == b"last" and t.closed
        assert c.get_extra_info("peername") == "info:peername"

    asyncio.run(scenario())


def test_qac_serves_protocol_answers_keystrokes_below_asgi(models: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """``GET /v1/complete`` through qac serve's HTTP protocol, on a real socket: the same
    answer as the ASGI path (which a request with an Origin header takes), uvicorn's
    headers, errors as JSON, pipelined requests answered in order, HTTP/1.0 closed
    after the answer, every answer counted."""
    import asyncio
    import json
    import re

    import uvicorn
    from conftest import free_port

    from qac.server import app as app_module
    from qac.server.http import CoalescingHttpToolsProtocol

    through_asgi: list[bytes] = []
    front = app_module.Front._complete

    async def spy(self: Any, scope: Any, send: Any) -> None:
        through_asgi.append(scope["query_string"])
        await front(self, scope, send)

    monkeypatch.setattr(app_module.Front, "_complete", spy)
    app = create_app(ServerConfig(model_dir=str(models["a"])))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           http=CoalescingHttpToolsProtocol,
                                           log_level="warning", access_log=False))

    async def exchange(raw: bytes, n: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        out = []
        for _ in range(n):
            head = await reader.readuntil(b"\r\n\r\n")
            status, *lines = head[:-4].split(b"\r\n")
            headers = dict(line.lower().split(b": ", 1) for line in lines)
            out.append((status, headers, await reader.readexactly(int(headers[b"content-length"]))))
        if n and out[-1][1].get(b"connection") == b"close":
            assert await reader.read() == b""  # the server closed it
        writer.close()
        return out

    def get(q: str, extra: str = "", version: str = "1.1") -> bytes:
        return f"GET /v1/complete?{q} HTTP/{version}\r\nhost: t\r\n{extra}\r\n".encode()

    def answer(body: bytes) -> Any:
        return re.sub(rb'"took_ms":[0-9.e-]+', b'"took_ms":0', body)

    async def scenario() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            [(status, headers, body)] = await exchange(get("q=pl&k=3"), 1)
            assert status == b"HTTP/1.1 200 OK"
            assert headers[b"content-type"] == b"application/json"
            assert headers[b"server"] == b"uvicorn" and b"date" in headers
            assert b"connection" not in headers  # kept alive
            assert through_asgi == []
            [(status2, _, body2)] = await exchange(get("q=pl&k=3", "origin: http://o\r\n"), 1)
            assert through_asgi == [b"q=pl&k=3"]
            assert answer(body) == answer(body2) and status2 == status
            assert [c["text"] for c in json.loads(body)["completions"]][0] == "playstation"

            [(status, _, body)] = await exchange(get("q=pl&k=0"), 1)
            assert status == b"HTTP/1.1 400 Bad Request"
            assert json.loads(body)["error"].startswith("k:")

            piped = get("q=p&k=1") + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n" + get("q=pl&k=2")
            got = await exchange(piped, 3)
            assert [len(json.loads(b).get("completions", ())) for _, _, b in got] == [1, 0, 2]
            assert json.loads(got[1][2])["status"] == "ok"

            [(status, headers, body)] = await exchange(get("q=pl&k=1", version="1.0"), 1)
            assert status.endswith(b"200 OK") and headers[b"connection"] == b"close"

            [(_, _, metrics)] = await exchange(b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n", 1)
            counted = {m.group(1): float(m.group(2)) for m in re.finditer(
                rb'qac_http_requests_total\{endpoint="/v1/complete",status="(\d+)"\} (\S+)',
                metrics)}
            assert counted == {b"200": 5.0, b"400": 1.0}
            assert through_asgi == [b"q=pl&k=3"]
        finally:
            server.should_exit = True
            await task

    asyncio.run(scenario())

"""The HTTP replay against a running ``qac serve`` on a loopback address:
simulated users (coroutines) over aiohttp or httpx, sessions in the service's store."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from qac.errors import InputError
from qac.replay.runs import NO_SESSION, SystemRun, _canonical, _Tally
from qac.replay.sessions import ReplayConfig, Session, _jitter

log = logging.getLogger(__name__)


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _httpx() -> Any:
    import importlib

    for name in ("httpx", "httpx2"):  # httpx2 has the same API under another name
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise InputError("the HTTP replay needs aiohttp or httpx: pip install 'qac[sim]'")


def check_url(url: str) -> str:
    """``url`` without a trailing slash, if it is http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in _LOOPBACK:
        raise InputError(f"the replay only drives a local service (http://127.0.0.1:PORT), "
                         f"got {url!r}")
    return url.rstrip("/")


class _Http:
    """The two requests of a simulated user, over aiohttp or httpx.

    aiohttp is preferred: it costs the client about a third of httpx's CPU per
    request, and on a shared machine the client's CPU is the server's too. httpx
    serves the tests (an ASGI transport, no sockets) and machines without aiohttp.
    """

    def __init__(self, url: str, concurrency: int, client: str, transport: Any) -> None:
        self.url = url
        self.concurrency = concurrency
        self.kind = client
        self.transport = transport
        self._session: Any = None

    async def __aenter__(self) -> _Http:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                base_url=self.url, timeout=aiohttp.ClientTimeout(total=10),
                connector=aiohttp.TCPConnector(limit=self.concurrency))
        else:
            httpx = _httpx()
            kw: dict[str, Any] = {"base_url": self.url, "timeout": 10.0, "limits": httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency)}
            if self.transport is not None:
                kw["transport"] = self.transport
            self._session = httpx.AsyncClient(**kw)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def complete(self, params: dict[str, Any]) -> Any:
        """GET /v1/complete; the decoded body (raises on a non-2xx status)."""
        if self.kind == "aiohttp":
            async with self._session.get("/v1/complete", params=params) as r:
                r.raise_for_status()
                return await r.json()
        r = await self._session.get("/v1/complete", params=params)
        r.raise_for_status()
        return r.json()

    async def submit(self, session: str, query: str) -> None:
        """POST /v1/sessions/<id>/queries (raises on a non-2xx status)."""
        path = f"/v1/sessions/{session}/queries"
        if self.kind == "aiohttp":
            async with self._session.post(path, json={"query": query}) as r:
                r.raise_for_status()
            return
        r = await self._session.post(path, json={"query": query})
        r.raise_for_status()


def _client_kind(client: str, transport: Any) -> str:
    if transport is not None or client == "httpx":
        return "httpx"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if client == "aiohttp":
            raise InputError("--client aiohttp: aiohttp is not installed") from None
        return "httpx"
    return "aiohttp"


async def _replay_http(url: str, sessions: Sequence[Session], use_session: bool,
                       cfg: ReplayConfig, progress: Any, client: str = "auto",
                       transport: Any = None) -> _Tally:
    # a per-run tag, so runs against the same Redis never see each other's sessions
    run_tag = os.urandom(4).hex()
    feed = iter(enumerate(sessions))
    tallies = [_Tally(cfg.k) for _ in range(cfg.concurrency)]

    async with _Http(url, cfg.concurrency, _client_kind(client, transport), transport) as http:
        async def user(wid: int) -> None:
            tally = tallies[wid]
            rng = random.Random(cfg.seed * 1_000_003 + wid)
            k, window, typed = cfg.k, cfg.window, cfg.mode == "typed"
            interval = cfg.interval_ms / 1e3
            clock = time.perf_counter
            for i, sess in feed:  # one shared iterator: sessions start in time order
                sid = f"r{run_tag}-{i}"
                for qi, target in enumerate(sess.queries):
                    has_prev = qi > 0
                    at = -1
                    for n in cfg.plan(target, has_prev):
                        params: dict[str, Any] = {"q": target[:n], "k": k}
                        if use_session:
                            params["session"] = sid
                        t0 = clock()
                        try:
                            body = await http.complete(params)
                        except Exception as exc:  # counted; the user goes on typing
                            tally.errors += 1
                            if tally.errors <= 3:
                                log.warning("GET /v1/complete: %s", exc)
                            continue
                        tally.latency_s.append(clock() - t0)
                        tally.took_ms.append(float(body.get("took_ms", float("nan"))))
                        got = [c["text"] for c in body["completions"]]
                        tally.metrics.add(n, None, got, target)
                        if has_prev:
                            tally.with_previous.add(n, None, got, target)
                        if typed and target in got[:window]:
                            at = n
                            break
                        if interval:
                            await asyncio.sleep(_jitter(rng, interval))
                    tally.q_len.append(len(target))
                    tally.q_at.append(at)
                    tally.q_prev.append(has_prev)
                    if use_session:
                        try:
                            await http.submit(sid, target)
                        except Exception:
                            tally.unrecorded += 1
                if progress is not None:
                    progress.update(1)

        await asyncio.gather(*(user(w) for w in range(cfg.concurrency)))
    total = tallies[0]
    for t in tallies[1:]:
        total.merge(t)
    return total


def replay_http(url: str, sessions: Sequence[Session], config: ReplayConfig | None = None,
                names: Sequence[str] = ("service", "service -session"), progress: bool = False,
                client: str = "auto", transport: Any = None) -> list[SystemRun]:
    """Replay against a running ``qac serve`` (``url`` on 127.0.0.1), ``concurrency``
    users at once over that many keep-alive connections.

    ``names``: "service" sends the session id (the previous query comes from the
    service's store, e.g. Redis), "service -session" does not. ``client``: "aiohttp",
    "httpx" or "auto" (aiohttp when installed). ``transport`` is for tests (an httpx
    ASGI transport around the app).
    """
    from tqdm import tqdm

    cfg = config or ReplayConfig()
    if transport is None:
        url = check_url(url)
    runs = []
    for name in names:
        name = _canonical(name)
        if name not in ("service", "service" + NO_SESSION):
            raise InputError(f"HTTP configurations are 'service' and 'service -session', "
                             f"got {name!r}")
        bar = tqdm(total=len(sessions), desc=name, unit="session", leave=False) \
            if progress else None
        t0 = time.perf_counter()
        tally = asyncio.run(_replay_http(url, sessions, name == "service", cfg, bar, client,
                                         transport))
        wall = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        runs.append(SystemRun(name, tally, wall, cfg.mode))
    return runs

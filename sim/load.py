"""Open-loop load generator for the qac HTTP service (runs in its own process).

Simulated users replay the sessions of a query log: each query is typed one character
at a time, one ``GET /v1/complete?q=<prefix>&session=<id>`` per keystroke, and then
``POST /v1/sessions/<id>/queries`` submits it: about one submit per 10 completes on the
bundled AOL sample (mean query length 8.7 characters). With ``--pick-top N`` a user
stops typing early when the last answer it received lists the query it is typing in
its first N entries (it "picks" it), which makes submits more frequent.

Open loop: request i is due at ``t0 + i / rate``, whatever the server does, and its
latency is measured from that due time, not from when a connection became free, so a
slow server cannot slow the clock down and hide its own queueing (no coordinated
omission). The client is a small HTTP/1.1 keep-alive client on asyncio streams
(``--connections`` sockets, one request in flight on each).

Usage::

    python sim/load.py run --url http://127.0.0.1:8000 --rate 200,500,1000 --duration 20
    python sim/load.py run ... --outage-at 10 --outage-for 10 --redis-outage \
        "redis-cli -p 6390 shutdown nosave,redis-server --port 6390 --save '' --daemonize yes"
    python sim/load.py run ... --reload-at 8 --admin-token-env QAC_ADMIN_TOKEN
    python sim/load.py bench --model /tmp/qm/hybrid    # redis + server + all three bars

Session context: the API does not say whether an answer used the session, so a sample
(``--context-sample``, 5 % by default) of completes is repeated without the session
(outside the latency figures) and counted as "context changed the answer" when the two
lists differ. The Redis-outage probe uses the same comparison on one probe session:
see :func:`probe_context`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOG = ROOT / "qac" / "data" / "sample_sessions.tsv.gz"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_DURATION = 600.0  # seconds per rate
MAX_RATE = 20000.0
MAX_RATES = 10
MAX_INFLIGHT = 20000  # requests waiting or in flight; beyond it a request is not sent
#: --reference: every request is GET /healthz instead (the HTTP stack and the client
#: alone, on the same schedule): the same-run baseline beside the completion figures
REFERENCE = False


# -- a minimal HTTP/1.1 keep-alive client ------------------------------------------------

class HttpError(Exception):
    """A failed exchange; ``kind`` is the error-count bucket (timeout, connect, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class _Stale(Exception):
    """The server closed the connection before sending a byte."""


class Conn:
    """One keep-alive connection; reconnects lazily after any failure.

    A server closes idle keep-alive connections (uvicorn after 5 s), so a connection
    idle for more than ``IDLE_REOPEN`` seconds is reopened before use, and a request on
    a reused connection that gets no byte back is retried once on a new one (what HTTP
    clients do for a stale keep-alive; our requests are idempotent or harmless twice).
    """

    IDLE_REOPEN = 3.0

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def _open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HttpError("connect", str(exc)) from None
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, target: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        now = time.perf_counter()
        if self.writer is not None and now - self.last_used > self.IDLE_REOPEN:
            self.close()
        reused = self.writer is not None
        self.last_used = now
        try:
            return await self._exchange(method, target, body, headers)
        except _Stale:
            if not reused:
                raise HttpError("connection", "closed before any answer") from None
            return await self._exchange(method, target, body, headers)

    async def _exchange(self, method: str, target: str, body: bytes | None,
                        headers: dict[str, str] | None) -> tuple[int, bytes]:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *hdrs = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            length = None
            close = False
            for h in hdrs:
                name, _, value = h.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length is None:
                raise HttpError("protocol", "no Content-Length")
            data = await self.reader.readexactly(length)
        except HttpError:
            self.close()
            raise
        except asyncio.IncompleteReadError as exc:
            self.close()
            if not exc.partial:
                raise _Stale() from None
            raise HttpError("connection", f"closed mid-answer: {exc}") from None
        except (OSError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            self.close()
            raise HttpError("connection", f"{type(exc).__name__}: {exc}") from None
        if close:
            self.close()
        return status, data


class Pool:
    """``n`` connections; a request waits for a free one (that wait is in its latency)."""

    def __init__(self, host: str, port: int, n: int, timeout: float) -> None:
        self.free: asyncio.Queue[Conn] = asyncio.Queue()
        for _ in range(n):
            self.free.put_nowait(Conn(host, port))
        self.timeout = timeout

    async def request(self, method: str, target: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      due: float | None = None) -> tuple[int, bytes]:
        """One exchange, cut off ``timeout`` seconds after ``due`` (perf_counter; default
        now), the wait for a free connection included."""
        limit = self.timeout - (0.0 if due is None else time.perf_counter() - due)
        conn: Conn | None = None
        try:
            async with asyncio.timeout(max(0.0, limit)):
                conn = await self.free.get()
                return await conn.request(method, target, body, headers)
        except TimeoutError:
            if conn is not None:
                conn.close()  # the late answer must not be read as the next one's
            raise HttpError("timeout", f"> {self.timeout}s") from None
        finally:
            if conn is not None:
                self.free.put_nowait(conn)

    def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().close()


def parse_url(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or u.hostname not in LOOPBACK:
        raise SystemExit(f"--url {url!r}: only http:// on the loopback "
                         f"({', '.join(sorted(LOOPBACK))})")
    return u.hostname, u.port or 80


# -- the simulated users -----------------------------------------------------------------

def read_sessions(path: Path, since: str | None = None) -> list[tuple[str, list[str]]]:
    """Sessions of a query log: (user id, raw queries in time order), from ``since``
    (YYYY-MM-DD) on. A log without users gives each session a user of its own."""
    sys.path.insert(0, str(ROOT))
    from datetime import datetime

    from qac.logs import read_log

    start = datetime.fromisoformat(since) if since else None
    by: dict[str, tuple[str, list[str]]] = {}
    for ev in read_log(path, since=start):
        user = ev.user if ev.user is not None else ev.session
        by.setdefault(ev.session, (user, []))[1].append(ev.query)
    return [(u, qs) for u, qs in by.values() if qs]


@dataclass
class User:
    sid: str
    queries: list[str]
    qi: int = 0            # which query is being typed
    typed: int = 0         # characters typed of it
    seen: frozenset[str] = frozenset()  # top answers received for it (--pick-top)
    recorded: bool = False  # a submit of this session came back 200


class Users:
    """``n`` concurrent users replaying log sessions; a finished user is replaced.

    The session id sent is the log's user id (plus the run's tag): as a stable user id
    would be, so the store's history of a user grows across their sessions."""

    def __init__(self, sessions: list[tuple[str, list[str]]], n: int, seed: int, run: str,
                 pick_top: int = 0) -> None:
        self.pick_top = pick_top
        self.rng = random.Random(seed)
        self.sessions = sessions
        self.order = list(range(len(sessions)))
        self.rng.shuffle(self.order)
        self.next_session = 0
        self.run = run
        self.users = [self._new() for _ in range(n)]

    def _new(self) -> User:
        i = self.order[self.next_session % len(self.order)]
        self.next_session += 1
        user, queries = self.sessions[i]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in user)[:32]
        return User(f"{self.run}-{safe}", queries)

    def next_action(self) -> tuple[str, User, str]:
        """("complete", user, prefix) or ("submit", user, query) from a random user."""
        j = self.rng.randrange(len(self.users))
        u = self.users[j]
        q = u.queries[u.qi]
        if u.typed >= len(q) or q in u.seen:
            u.qi += 1
            u.typed = 0
            u.seen = frozenset()
            if u.qi >= len(u.queries):
                self.users[j] = self._new()
            return "submit", u, q
        u.typed += 1
        return "complete", u, q[:u.typed]


# -- measurement -------------------------------------------------------------------------

class Sample(NamedTuple):
    """One request's outcome (a phase stores it as a plain tuple of atoms, which the
    cyclic GC stops tracking; a tuple subclass it would go on scanning)."""

    t: float      # due time, seconds since the phase started
    kind: str     # complete | submit
    ms: float     # latency from due time to the last byte (ms)
    err: str | None


@dataclass
class Phase:
    rate: float
    duration: float
    samples: list[tuple[float, str, float, str | None]] = field(default_factory=list)
    ctx_checked: int = 0
    ctx_changed: int = 0
    ctx_had_history: int = 0
    completes_sent: int = 0
    late_dispatch_ms: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this process during the phase / duration
    events: dict[str, Any] = field(default_factory=dict)

    def record(self, t: float, kind: str, ms: float, err: str | None) -> None:
        self.samples.append((t, kind, ms, err))

    def outcomes(self) -> list[Sample]:
        return [Sample._make(s) for s in self.samples]

    def summary(self, t_from: float | None = None, t_to: float | None = None) -> dict[str, Any]:
        ss = [s for s in self.outcomes() if (t_from is None or s.t >= t_from)
              and (t_to is None or s.t < t_to)]
        span = (t_to if t_to is not None else self.duration) - (t_from or 0.0)
        out: dict[str, Any] = {"requests": len(ss),
                               "achieved_rps": round(len(ss) / span, 1) if span > 0 else 0}
        for kind in ("complete", "submit"):
            ok = sorted(s.ms for s in ss if s.kind == kind and s.err is None)
            errs = Counter(s.err for s in ss if s.kind == kind and s.err is not None)
            out[kind] = {"n": sum(1 for s in ss if s.kind == kind), "ok": len(ok),
                         "p50": pct(ok, 50), "p95": pct(ok, 95), "p99": pct(ok, 99),
                         "max": round(ok[-1], 2) if ok else None, "errors": dict(errs)}
        return out


def pct(sorted_ms: list[float], p: float) -> float | None:
    if not sorted_ms:
        return None
    i = min(len(sorted_ms) - 1, max(0, int(round(p / 100 * len(sorted_ms) + 0.5)) - 1))
    return round(sorted_ms[i], 2)


def texts(body: bytes) -> list[str]:
    return [c["text"] for c in json.loads(body)["completions"]]


def complete_target(prefix: str, session: str | None, k: int = 10) -> str:
    qs = {"q": prefix, "k": str(k)}
    if session:
        qs["session"] = session
    return "/v1/complete?" + urllib.parse.urlencode(qs)


async def one(pool: Pool, phase: Phase, t0: float, due: float, kind: str, user: User,
              text: str, ctx_sample: float, rng: random.Random, users_pick_top: int) -> None:
    err: str | None = None
    body = b""
    try:
        if REFERENCE:  # the same schedule against a trivial endpoint (a baseline)
            status, _ = await pool.request("GET", "/healthz", due=due)
            phase.record(due - t0, kind, (time.perf_counter() - due) * 1e3,
                         None if status == 200 else f"http {status}")
            return
        if kind == "complete":
            target = complete_target(text, user.sid)
            status, body = await pool.request("GET", target, due=due)
        else:
            payload = json.dumps({"query": text}).encode()
            status, body = await pool.request(
                "POST", f"/v1/sessions/{urllib.parse.quote(user.sid, safe='')}/queries", payload,
                due=due)
        if status != 200:
            err = f"http {status}"
    except HttpError as exc:
        err = exc.kind
    end = time.perf_counter()
    phase.record(due - t0, kind, (end - due) * 1e3, err)
    if err is not None:
        return
    if kind == "submit":
        user.recorded = True
        return
    got = texts(body)
    if (users_pick_top and user.queries[user.qi:user.qi + 1]
            and user.queries[user.qi].startswith(text)):
        user.seen = frozenset(got[:users_pick_top])
    if ctx_sample > 0 and rng.random() < ctx_sample:
        # outside the latency figures: the same prefix without the session
        try:
            status2, body2 = await pool.request("GET", complete_target(text, None))
        except HttpError:
            return
        if status2 == 200:
            phase.ctx_checked += 1
            phase.ctx_changed += texts(body2) != got


async def run_phase(pool: Pool, users: Users, rate: float, duration: float,
                    ctx_sample: float, seed: int,
                    hooks: list[tuple[float, Any]] | None = None) -> Phase:
    """Send ``rate * duration`` requests on the open-loop schedule; ``hooks`` are
    (seconds, coroutine function) run as tasks at those offsets.

    The client's own heap (the log's sessions, the users) is frozen out of the cyclic
    GC for the phase: a full collection over it stalled this client 25-100 ms, and
    every request due in the stall was charged to the server."""
    gc.collect()
    gc.freeze()
    try:
        return await _send(pool, users, rate, duration, ctx_sample, seed, hooks)
    finally:
        gc.unfreeze()


async def _send(pool: Pool, users: Users, rate: float, duration: float, ctx_sample: float,
                seed: int, hooks: list[tuple[float, Any]] | None) -> Phase:
    phase = Phase(rate, duration)
    rng = random.Random(seed)
    n = int(rate * duration)
    tasks: set[asyncio.Task[Any]] = set()
    hook_tasks = []
    cpu0 = time.process_time()
    t0 = time.perf_counter() + 0.05
    for at, fn in hooks or []:
        async def later(at: float = at, fn: Any = fn) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            await fn(phase, t0)
        hook_tasks.append(asyncio.create_task(later()))
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            phase.late_dispatch_ms = max(phase.late_dispatch_ms, -delay * 1e3)
        if len(tasks) >= MAX_INFLIGHT:
            # the server has stalled for a long while: count instead of piling up tasks
            phase.record(due - t0, "complete", 0.0, "client-overload")
            continue
        kind, user, text = users.next_action()
        if kind == "complete":
            phase.completes_sent += 1
            phase.ctx_had_history += user.recorded
        t = asyncio.create_task(one(pool, phase, t0, due, kind, user, text, ctx_sample, rng,
                                     users.pick_top))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    phase.client_cpu = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - t0)
    for t in hook_tasks:
        await t
    return phase


# -- scenarios ---------------------------------------------------------------------------

async def context_answer(pool: Pool, session: str) -> list[str] | None:
    try:
        status, body = await pool.request("GET", complete_target("", session))
    except HttpError:
        return None
    return texts(body) if status == 200 else None


async def submit(pool: Pool, session: str, query: str) -> bool:
    try:
        status, _ = await pool.request(
            "POST", f"/v1/sessions/{session}/queries", json.dumps({"query": query}).encode())
    except HttpError:
        return False
    return status == 200


async def find_probe(pool: Pool, sessions: list[tuple[str, list[str]]], run: str,
                     tries: int = 50) -> tuple[str, list[str], list[str]] | None:
    """A query whose next-query suggestions (empty prefix + that previous query)
    differ from the no-context answer (the most popular queries)."""
    plain = await context_answer(pool, "")
    for i, (_, qs) in enumerate(sessions[:tries]):
        sid = f"{run}-probe-{i}"
        if await submit(pool, sid, qs[0]):
            got = await context_answer(pool, sid)
            if got is not None and plain is not None and got != plain:
                return qs[0], got, plain
    return None


async def probe_context(pool: Pool, query: str, want: list[str], since: float,
                        limit: float, run: str) -> float | None:
    """Seconds after ``since`` until a fresh session that submitted ``query`` gets the
    context answer ``want`` again, polling every 50 ms.

    Why this probe: with an empty prefix the completer returns next-query suggestions
    for the session's previous query, or the most popular queries without one, so the
    answer shows directly whether the server read the session from Redis. Each attempt
    uses a new session id and submits first: the restarted Redis is empty (no
    persistence), and a submit the server dropped during its back-off must not count.
    """
    i = 0
    while time.perf_counter() - since < limit:
        sid = f"{run}-recover-{i}"
        i += 1
        if await submit(pool, sid, query) and await context_answer(pool, sid) == want:
            return time.perf_counter() - since
        await asyncio.sleep(0.05)
    return None


async def shell(cmd: str) -> tuple[int, float]:
    t = time.perf_counter()
    p = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.DEVNULL,
                                              stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(30):
            rc = await p.wait()
    except TimeoutError:
        p.kill()
        rc = -9
    return rc, time.perf_counter() - t


async def scrape_store_errors(pool: Pool) -> float | None:
    try:
        status, body = await pool.request("GET", "/metrics")
    except HttpError:
        return None
    for line in body.decode().splitlines():
        if line.startswith('qac_session_store{stat="errors"}'):
            return float(line.split()[-1])
    return None


def outage_hook(stop: str, start: str, at: float, length: float, probe: Any, pool: Pool,
                run: str) -> tuple[float, Any]:
    async def go(phase: Phase, t0: float) -> None:
        ev = phase.events.setdefault("outage", {})
        ev["errors_metric_before"] = await scrape_store_errors(pool)
        rc, took = await shell(stop)
        ev.update(stop_rc=rc, stop_at=round(time.perf_counter() - t0, 2))
        await asyncio.sleep(max(0.0, length - took))
        ev["start_at"] = round(time.perf_counter() - t0, 2)
        rc, took = await shell(start)
        ev.update(start_rc=rc, start_took_s=round(took, 3))
        started = time.perf_counter()
        if probe is None:
            ev["context_back_s"] = "no probe (no query changes the empty-prefix answer)"
        else:
            back = await probe_context(pool, probe[0], probe[1], started, 20.0, run)
            ev["context_back_s"] = None if back is None else round(back, 3)
        ev["errors_metric_after"] = await scrape_store_errors(pool)
    return at, go


def reload_hook(at: float, token: str, model: str | None, pool: Pool) -> tuple[float, Any]:
    async def go(phase: Phase, t0: float) -> None:
        ev = phase.events.setdefault("reload", {})
        ev["at"] = round(time.perf_counter() - t0, 2)
        body = json.dumps({"model_dir": model} if model else {}).encode()
        t = time.perf_counter()
        try:
            status, data = await pool.request("POST", "/v1/admin/reload", body,
                                              {"Authorization": f"Bearer {token}"})
            ev.update(status=status, answer=json.loads(data))
        except HttpError as exc:
            ev.update(status=exc.kind)
        ev["took_s"] = round(time.perf_counter() - t, 3)
    return at, go


# -- output ------------------------------------------------------------------------------

def fmt(x: Any) -> str:
    return "-" if x is None else str(x)


def report(name: str, phase: Phase, rng_window: tuple[float, float] | None = None,
           server_cpu_ms: float | None = None) -> dict[str, Any]:
    """The phase's figures, printed and returned; ``server_cpu_ms``: the server's CPU
    time per request it was sent in the phase (completes, submits and the context
    samples; see ``--server-pid``), None when not measured."""
    s = phase.summary()
    s["server_cpu_ms_per_request"] = server_cpu_ms
    s["target_rps"] = phase.rate
    s["duration_s"] = phase.duration
    s["completes_with_history"] = round(phase.ctx_had_history / max(1, phase.completes_sent), 3)
    s["context_changed_answer"] = (round(phase.ctx_changed / phase.ctx_checked, 3)
                                   if phase.ctx_checked else None)
    s["context_sampled"] = phase.ctx_checked
    s["max_dispatch_lag_ms"] = round(phase.late_dispatch_ms, 1)
    s["client_cpu_share"] = round(phase.client_cpu, 3)
    s["events"] = phase.events
    if rng_window:
        s["window"] = {"from_s": rng_window[0], "to_s": rng_window[1],
                       **phase.summary(*rng_window)}
    c, u = s["complete"], s["submit"]
    print(f"[{name}] target {phase.rate:g} rps for {phase.duration:g}s: achieved "
          f"{s['achieved_rps']} rps, {c['n']} completes / {u['n']} submits "
          f"(client: dispatch lag max {s['max_dispatch_lag_ms']} ms, "
          f"{s['client_cpu_share']:.0%} of a core)")
    if server_cpu_ms is not None:
        print(f"  server CPU {server_cpu_ms} ms per request")
    for kind, d in (("complete", c), ("submit", u)):
        print(f"  {kind:8s} ms p50 {fmt(d['p50'])}  p95 {fmt(d['p95'])}  p99 {fmt(d['p99'])}"
              f"  max {fmt(d['max'])}  errors {d['errors'] or 0}")
    print(f"  session context: {s['completes_with_history']:.1%} of completes had a recorded "
          f"query in their session; context changed the answer in "
          f"{fmt(s['context_changed_answer'])} of {phase.ctx_checked} sampled")
    if "window" in s:
        w = s["window"]
        print(f"  window {w['from_s']}-{w['to_s']}s: completes {w['complete']['n']} "
              f"errors {w['complete']['errors'] or 0}, p99 {fmt(w['complete']['p99'])} ms; "
              f"submits {w['submit']['n']} errors {w['submit']['errors'] or 0}")
    for key, ev in phase.events.items():
        print(f"  {key}: {json.dumps(ev)}")
    return s


# -- the server's CPU ----------------------------------------------------------------------

def process_tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants
    (``qac serve``'s workers), read from /proc; None where there is no /proc or the
    process is gone. Children that already exited are not counted, so take the
    difference over a stretch in which the workers live."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            # the fields after the command name, which is in parentheses and may hold spaces
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            if p == pid:
                return None
    return total / tick


# -- run mode ----------------------------------------------------------------------------

def parse_rates(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",") if x.strip()]
    if not rates or len(rates) > MAX_RATES or not all(0 < r <= MAX_RATE for r in rates):
        raise SystemExit(f"--rate: 1..{MAX_RATES} rates in (0, {MAX_RATE:g}], got {text!r}")
    return rates


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    global REFERENCE
    REFERENCE = bool(args.reference)
    host, port = parse_url(args.url)
    if not 0 < args.duration <= MAX_DURATION:
        raise SystemExit(f"--duration: (0, {MAX_DURATION:g}] seconds, got {args.duration}")
    rates = parse_rates(args.rate)
    sessions = read_sessions(Path(args.log), args.since)
    rng = random.Random(args.seed)
    run_id = f"load{args.seed}-{os.getpid()}-{rng.randrange(1 << 30):x}"
    pool = Pool(host, port, args.connections, args.timeout)
    ctl = Pool(host, port, 2, max(args.timeout, 60.0))  # probes and admin calls
    results = []
    try:
        if args.warmup > 0:
            await run_phase(pool, Users(sessions, args.users, args.seed + 1, run_id + "w"),
                            min(rates[0], 200.0), args.warmup, 0.0, args.seed)
        hooks: list[tuple[float, Any]] = []
        window = None
        if args.redis_outage:
            stop, _, start = args.redis_outage.partition(",")
            if not start:
                raise SystemExit("--redis-outage: 'STOP_CMD,START_CMD'")
            probe = await find_probe(ctl, sessions, run_id)
            print(f"outage probe: {'query ' + repr(probe[0]) if probe else 'none found'}")
            hooks.append(outage_hook(stop, start, args.outage_at, args.outage_for, probe, ctl,
                                     run_id))
            window = (args.outage_at, args.outage_at + args.outage_for)
        if args.reload_at is not None:
            token = os.environ.get(args.admin_token_env or "", "") or args.admin_token
            if not token:
                raise SystemExit("--reload-at needs --admin-token-env VAR (or --admin-token)")
            hooks.append(reload_hook(args.reload_at, token, args.reload_model, ctl))
            window = (args.reload_at, args.reload_at + 3.0)
        for r in rates:
            users = Users(sessions, args.users, args.seed, f"{run_id}-{r:g}", args.pick_top)
            cpu0 = process_tree_cpu(args.server_pid) if args.server_pid else None
            phase = await run_phase(pool, users, r, args.duration, args.context_sample,
                                    args.seed, hooks)
            cpu1 = process_tree_cpu(args.server_pid) if cpu0 is not None else None
            served = phase.ctx_checked + sum(1 for x in phase.outcomes()
                                             if x.err != "client-overload")
            cpu_ms = (None if cpu0 is None or cpu1 is None
                      else round(1e3 * (cpu1 - cpu0) / max(1, served), 3))
            results.append(report(f"{r:g} rps", phase, window, cpu_ms))
            hooks = []
    finally:
        pool.close()
        ctl.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--rate", default="200,500,1000", help="requests/s, one or several: 200,500")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at <= 200 rps first")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--users", type=int, default=200, help="concurrent simulated users")
    p.add_argument("--pick-top", type=int, default=0,
                   help="users pick the query when it is in the first N answers (0: never)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-request timeout (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", default=str(DEFAULT_LOG), help="query log to replay")
    p.add_argument("--since", help="replay the log's sessions from this date on (YYYY-MM-DD)")
    p.add_argument("--context-sample", type=float, default=0.05,
                   help="share of completes repeated without the session")
    p.add_argument("--json", help="write the figures as JSON here")
    p.add_argument("--reference", action="store_true",
                   help="send GET /healthz instead of every request (a same-run baseline)")
    p.add_argument("--redis-outage", metavar="STOP_CMD,START_CMD")
    p.add_argument("--outage-at", type=float, default=5.0)
    p.add_argument("--outage-for", type=float, default=10.0)
    p.add_argument("--reload-at", type=float)
    p.add_argument("--admin-token", help="prefer --admin-token-env (argv is visible in ps)")
    p.add_argument("--admin-token-env", metavar="VAR")
    p.add_argument("--reload-model", metavar="DIR", help="model_dir for the reload body")
    p.add_argument("--server-pid", type=int, metavar="PID",
                   help="the server's process id (on this machine): report its CPU time, "
                        "its workers' included, per request of each rate")


# -- bench mode: throwaway redis + qac serve + the three bars ---------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE = ("import sys, argparse\n"
         "from qac.server.serve import add_serve_arguments, run_serve\n"
         "p = argparse.ArgumentParser(prog='qac serve'); add_serve_arguments(p)\n"
         "sys.exit(run_serve(p.parse_args()))\n")


def serve_command() -> list[str]:
    """``qac serve`` when the CLI has it, else the same entry point called directly."""
    ok = subprocess.run([sys.executable, "-m", "qac", "serve", "--help"], cwd=ROOT,
                        capture_output=True).returncode == 0
    return [sys.executable, "-m", "qac", "serve"] if ok else [sys.executable, "-c", SERVE]


def serve_command_prefix(cmd: list[str]) -> list[str]:
    return cmd[:4] if cmd[1] == "-m" else cmd[:3]


def wait_http(url: str, limit: float) -> None:
    import urllib.request

    end = time.time() + limit
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not up after {limit:g}s")


def bench(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="qac-bench-"))
    rport, sport = free_port(), free_port()
    redis_start = (f"redis-server --port {rport} --bind 127.0.0.1 --save '' --appendonly no "
                   f"--daemonize yes --pidfile {tmp}/redis.pid --logfile {tmp}/redis.log "
                   f"--dir {tmp}")
    redis_stop = f"redis-cli -p {rport} shutdown nosave"
    env = dict(os.environ, QAC_BENCH_TOKEN=os.urandom(12).hex(),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run(shlex.split(redis_start), check=True)
    cmd = serve_command() + [args.model, "--port", str(sport), "--redis-url",
                             f"redis://127.0.0.1:{rport}/0",
                             "--admin-token-env", "QAC_BENCH_TOKEN", "--log-level", "warning"]
    if args.workers is not None:  # default: qac serve's own (the CPUs it may use)
        cmd += ["--workers", str(args.workers)]
    shown = ["qac", "serve"] + cmd[len(serve_command_prefix(cmd)):]
    print("server:", " ".join(shlex.quote(c) for c in shown),
          "" if cmd[1] == "-m" else "(via qac.server.serve: the CLI has no `serve` yet)")
    print(f"redis:  {redis_start}")
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(tmp / "server.log", "wb"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{sport}"
    out: dict[str, Any] = {"load_before": os.getloadavg(), "model": args.model,
                           "workers": args.workers}
    try:
        wait_http(url + "/healthz", 120)
        base = ["--url", url, "--connections", str(args.connections), "--seed", str(args.seed),
                "--server-pid", str(server.pid)]
        p = argparse.ArgumentParser()
        add_run_args(p)
        os.environ["QAC_BENCH_TOKEN"] = env["QAC_BENCH_TOKEN"]
        if args.log:
            base += ["--log", args.log] + (["--since", args.since] if args.since else [])
        bars = {
            "latency": base + ["--rate", args.rate, "--duration", str(args.duration)],
            "reference": base + ["--rate", args.rate, "--duration", str(args.duration),
                                 "--reference"],
            "outage": base + ["--rate", "500", "--duration", str(args.outage_duration),
                              "--redis-outage", f"{redis_stop},{redis_start}",
                              "--outage-at", "5", "--outage-for", "10"],
            "reload": base + ["--rate", "500", "--duration", "15", "--reload-at", "6",
                              "--admin-token-env", "QAC_BENCH_TOKEN", "--warmup", "0"]
                      + (["--reload-model", args.reload_model] if args.reload_model else []),
        }
        for name in args.bars.split(","):
            print(f"== {name}")
            out[name] = asyncio.run(run(p.parse_args(bars[name])))
        out["load_after"] = os.getloadavg()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        subprocess.run(shlex.split(redis_stop), capture_output=True)
    print(f"load average before {out['load_before']}, after {out.get('load_after')}")
    table(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def table(out: dict[str, Any]) -> None:
    print(f"\n{'bar':22s} {'rps':>7s} {'p50':>6s} {'p95':>6s} {'p99':>6s} {'max':>7s} "
          f"{'c.err':>5s} {'s.err':>5s} {'cpu/req':>7s}  notes")
    for name in ("latency", "reference", "outage", "reload"):
        for s in out.get(name, []):
            c, u = s["complete"], s["submit"]
            note = ""
            if "outage" in s["events"]:
                w = s["window"]["complete"]
                note = (f"outage: {w['n']} completes, errors {w['errors'] or 0}; "
                        f"context back {s['events']['outage'].get('context_back_s')} s "
                        "after restart")
            if "reload" in s["events"]:
                ev = s["events"]["reload"]
                note = f"reload: HTTP {ev.get('status')} in {ev.get('took_s')} s"
            print(f"{name + ' @' + format(s['target_rps'], 'g'):22s} {s['achieved_rps']:>7} "
                  f"{fmt(c['p50']):>6s} {fmt(c['p95']):>6s} {fmt(c['p99']):>6s} "
                  f"{fmt(c['max']):>7s} {sum(c['errors'].values()):>5d} "
                  f"{sum(u['errors'].values()):>5d} "
                  f"{fmt(s.get('server_cpu_ms_per_request')):>7s}  {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    add_run_args(sub.add_parser("run", help="load a running server"))
    b = sub.add_parser("bench", help="start redis + qac serve, run the three bars")
    b.add_argument("--model", required=True)
    b.add_argument("--reload-model", help="model_dir to reload (default: the same)")
    b.add_argument("--workers", type=int, help="default: qac serve's (the CPUs it may use)")
    b.add_argument("--log", help="query log to replay (default: the bundled sample)")
    b.add_argument("--since", help="replay the log's sessions from this date on")
    b.add_argument("--rate", default="200,500,1000")
    b.add_argument("--duration", type=float, default=20.0)
    b.add_argument("--outage-duration", type=float, default=30.0)
    b.add_argument("--connections", type=int, default=32)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--bars", default="latency,reference,outage,reload",
                   help="latency: the rates; reference: the same schedule against "
                        "GET /healthz; outage: Redis stopped 10 s at 500/s; reload at 500/s")
    b.add_argument("--json")
    args = ap.parse_args(argv)
    if args.mode == "bench":
        return bench(args)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

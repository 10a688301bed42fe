"""The live stream, measured in one run (issue 13): two ``qac serve`` replicas on one
throwaway Redis, driven over HTTP.

1. load, with replica A alone (B starts after it): 500 completions/s (open loop,
   latency from each request's due time) on A for ``--duration`` s without ingestion;
   the same load while A's tail works through a backlog of ``--backlog`` events of
   the dev log (appended beforehand to another key and renamed into the stream as
   the load starts: no appender competes for the cores); and while another process
   appends at ``--ingest-rate`` events/s (paced). For each: p50/p99 and the events/s
   A's tail applied (its /metrics);
2. freshness: ``--fresh`` new queries, each submitted on A by 3 sessions, polled on B
   by a fourth every 10 ms: submit (the third) to suggested, p50/p95/p99;
3. the bars: one session's query is not suggested; "hurricane sandy" by 25 sessions in
   B's top 5 at "hu" and first at "hurr" (time to both); blocklist on A hides it on B
   (time); 401/403 on wrong tokens; B restarted keeps the fresh queries and the
   blocklist;
4. overlay memory per million live queries (in this process: RSS and the overlay's
   own estimate).

Usage::

    python sim/stream.py --model /tmp/m/v4 [--duration 15] [--backlog 1000000]
        [--ingest-rate 2000] [--tail-share F] [--code OTHER_CHECKOUT] [--json out.json]

``--code`` runs the replicas from another checkout (``python -m qac`` imports from the
working directory), so the same program measures the code before a change.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import Pool, free_port, pct, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AOL = ROOT.parent / "shared" / "data" / "aol" / "sessions" / "aol_top1000_sessions_dev.tsv.gz"
TOKEN = "stream-sim-token"


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True).stdout.strip() == "PONG":
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def redis_cli(url: str, *args: str) -> str:
    port = urllib.parse.urlsplit(url).port
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout


def start_replica(model: str, redis_url: str, port: int, log: Path,
                  extra: tuple[str, ...] = (), code: Path = ROOT) -> subprocess.Popen[bytes]:
    """``code``: the checkout whose qac serves (``-m qac`` imports from the cwd)."""
    env = dict(os.environ, QAC_SIM_TOKEN=TOKEN)
    cmd = [sys.executable, "-m", "qac", "serve", model, "--redis-url", redis_url,
           "--port", str(port), "--workers", "1", "--admin-token-env", "QAC_SIM_TOKEN",
           "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/healthz", 120)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def prefixes(n: int = 20000) -> list[str]:
    """Keystroke prefixes of the dev log's queries (1..len chars)."""
    import gzip

    out: list[str] = []
    with gzip.open(AOL, "rt", encoding="utf-8", errors="replace") as f:
        next(f)
        for line in f:
            q = line.split("\t")[2].strip().lower()
            out.extend(q[:i] for i in range(1, min(len(q), 12) + 1))
            if len(out) >= n:
                break
    return out


async def load_phase(url: str, rate: float, duration: float, keys: list[str]
                     ) -> dict[str, Any]:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    assert host and port
    pool = Pool(host, port, 64, 5.0)
    lat: list[float] = []
    errors = 0
    t0 = time.perf_counter() + 0.05
    n = int(rate * duration)

    async def one(i: int) -> None:
        nonlocal errors
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        q = urllib.parse.quote(keys[i % len(keys)])
        try:
            status, _ = await pool.request("GET", f"/v1/complete?q={q}&session=load{i % 500}",
                                           due=due)
            if status != 200:
                errors += 1
            else:
                lat.append((time.perf_counter() - due) * 1e3)
        except Exception:  # noqa: BLE001 - counted
            errors += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    pool.close()
    lat.sort()
    return {"rate": rate, "sent": n, "ok": len(lat), "errors": errors,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None}


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


INGEST = """
import sys, time, gzip
from qac.live import EventStream, LiveConfig, clean_event
from qac.logs import read_log
events = read_log(sys.argv[2])
now = time.time()
evs = []
for i, e in enumerate(events):
    ev = clean_event(e.query, (e.user or e.session)[:64], now)
    if ev: evs.append(ev)
s = EventStream(sys.argv[1], LiveConfig(key=sys.argv[5]))
limit, rate, most = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[6])
print("ready", flush=True)  # the log is read: the timed part starts on a line of stdin
sys.stdin.readline()
t0 = time.perf_counter(); n = 0
while time.perf_counter() - t0 < limit and (not most or n < most):
    if rate > 0:  # paced: every 20 ms, the events due by then
        due = int((time.perf_counter() - t0) * rate) - n
        if due <= 0:
            time.sleep(0.02)
            continue
        k = min(due, 2000)
    else:
        k = 2000 if not most else min(2000, most - n)
    i = n % len(evs)
    n += s.append(evs[i:i + k], batch=500)
print(n, time.perf_counter() - t0)
"""


class Http:
    def __init__(self, url: str) -> None:
        import urllib.request

        self.url = url
        self.req = urllib.request

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN
             ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        r = self.req.Request(self.url + path, data=data, method=method)
        if data is not None:
            r.add_header("Content-Type", "application/json")
        if token:
            r.add_header("Authorization", f"Bearer {token}")
        try:
            with self.req.urlopen(r, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except self.req.HTTPError as exc:  # type: ignore[attr-defined]
            return exc.code, json.loads(exc.read() or b"{}")

    def submit(self, session: str, query: str) -> int:
        return self.call("POST", f"/v1/sessions/{session}/queries", {"query": query},
                         token=None)[0]

    def top(self, prefix: str, session: str = "probe", k: int = 5) -> list[str]:
        q = urllib.parse.quote(prefix)
        _, got = self.call("GET", f"/v1/complete?q={q}&session={session}&k={k}", token=None)
        return [c["text"] for c in got["completions"]]


def until(cond: Any, limit: float, step: float = 0.01) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if cond():
            return time.perf_counter() - t0
        time.sleep(step)
    return None


def overlay_memory(n: int) -> dict[str, Any]:
    from qac.live import LiveConfig, Overlay

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    gc.collect()
    before = rss()
    ov = Overlay(lambda q: -1, 0, LiveConfig(max_fresh=n + 1, privacy_floor=3))
    now = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        # a third of the queries past the floor (3 sessions), the rest seen once
        q = f"live query number {i}"
        ov.add(q, f"u{i}", now)
        if i % 3 == 0:
            ov.add(q, f"v{i}", now)
            ov.add(q, f"w{i}", now)
    took = time.perf_counter() - t0
    gc.collect()
    after = rss()
    return {"queries": n, "rss_bytes": after - before,
            "rss_bytes_per_query": round((after - before) / n, 1),
            "estimate_bytes_per_query": round(ov.nbytes() / n, 1),
            "eligible": len(ov._eligible), "adds_per_s": round(ov.events / took)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/m/v4")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--fresh", type=int, default=15)
    ap.add_argument("--memory", type=int, default=1_000_000)
    ap.add_argument("--backlog", type=int, default=600_000,
                    help="events A's tail finds waiting as the backlog phase starts")
    ap.add_argument("--ingest-rate", type=float, default=2000.0,
                    help="events/s of the paced ingestion phase")
    ap.add_argument("--code", type=Path, default=ROOT,
                    help="the checkout whose qac the replicas run (default: this one)")
    ap.add_argument("--tail-share", type=float, default=None,
                    help="qac serve --tail-share for both replicas (default: serve's)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="qac-stream-"))
    out: dict[str, Any] = {"model": args.model}
    redis, rurl = start_redis(tmp)
    pa, pb = free_port(), free_port()
    a_url, b_url = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.perf_counter()
        extra = () if args.tail_share is None else ("--tail-share", str(args.tail_share))
        out["tail_share"] = args.tail_share
        procs.append(start_replica(args.model, rurl, pa, tmp / "a.log", extra, args.code))
        out["A_up_s"] = round(time.perf_counter() - t0, 1)
        A, B = Http(a_url), Http(b_url)
        keys = prefixes()

        # 1. load without, then with ingestion (paced, then full speed), A alone
        out["load_without_ingest"] = asyncio.run(load_phase(a_url, args.rate, args.duration,
                                                            keys))
        # with a backlog: the events appended beforehand to a key A does not tail, then
        # renamed into the stream as the load starts, so A's tail works through them
        # while it serves and no appender competes for the cores; then the appender
        # paced at --ingest-rate events/s
        ing = subprocess.run([sys.executable, "-c", INGEST, rurl, str(AOL), "600", "0",
                              "qac:staging", str(args.backlog)], cwd=ROOT, input="go\n",
                             capture_output=True, text=True, check=True)
        backlog = int(ing.stdout.split()[1])
        applied0 = metric(a_url, 'qac_live{stat="applied"}')
        redis_cli(rurl, "RENAME", "qac:staging", "qac:events")
        t_ing = time.perf_counter()
        got = asyncio.run(load_phase(a_url, args.rate, args.duration, keys))
        applied1 = metric(a_url, 'qac_live{stat="applied"}')
        span = time.perf_counter() - t_ing
        caught = until(lambda: metric(a_url, 'qac_live{stat="applied"}') >= applied0 + backlog,
                       300, 0.2)
        got["ingest"] = {"backlog": backlog,
                         "applied_by_A_during_load": int(applied1 - applied0),
                         "A_events_per_s_while_serving": round((applied1 - applied0) / span),
                         "backlog_left_at_the_end": int(backlog - (applied1 - applied0)),
                         "A_caught_up_after_s": None if caught is None else round(caught, 2)}
        out["load_with_backlog_ingest"] = got
        applied0 = metric(a_url, 'qac_live{stat="applied"}')
        ing2 = subprocess.Popen([sys.executable, "-c", INGEST, rurl, str(AOL),
                                 str(args.duration), str(args.ingest_rate), "qac:events", "0"],
                                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert ing2.stdin is not None and ing2.stdout is not None
        ing2.stdout.readline()  # "ready": the appender read the log
        ing2.stdin.write("go\n")
        ing2.stdin.flush()
        t_ing = time.perf_counter()
        got = asyncio.run(load_phase(a_url, args.rate, args.duration, keys))
        produced = ing2.communicate(timeout=120)[0].split()
        applied1 = metric(a_url, 'qac_live{stat="applied"}')
        span = time.perf_counter() - t_ing
        got["ingest"] = {"target_events_per_s": args.ingest_rate, "appended": int(produced[0]),
                         "A_events_per_s_while_serving": round((applied1 - applied0) / span)}
        out["load_with_paced_ingest"] = got
        t0 = time.perf_counter()
        procs.append(start_replica(args.model, rurl, pb, tmp / "b.log", extra, args.code))
        out["B_up_s_replaying_the_stream"] = round(time.perf_counter() - t0, 1)

        # 2. freshness
        lags: list[float] = []
        missing = 0
        for i in range(args.fresh):
            q = f"zqfresh {i} {int(time.time())}"
            for s in ("f1", "f2"):
                A.submit(f"{s}x{i}", q)
            A.submit(f"f3x{i}", q)
            t = until(lambda q=q: q in B.top(q[:9], "f4"), 5.0)
            if t is None:
                missing += 1
            else:
                lags.append(t * 1e3)
        lags.sort()
        out["freshness_ms"] = {"n": args.fresh, "missing": missing, "p50": pct(lags, 50),
                               "p95": pct(lags, 95), "p99": pct(lags, 99),
                               "max": lags[-1] if lags else None}
        # 3. bars
        bars: dict[str, Any] = {}
        lone = f"zqlone {int(time.time())}"
        A.submit("lone1", lone)
        time.sleep(1.5)
        bars["one_session_not_suggested"] = lone not in B.top("zqlone", "other", 10)
        for i in range(25):
            A.submit(f"hs{i}", "hurricane sandy")
        t_hs = until(lambda: "hurricane sandy" in B.top("hu")
                     and B.top("hurr")[:1] == ["hurricane sandy"], 2.0)
        bars["hurricane_sandy_hu_top5_hurr_first_s"] = t_hs
        bars["B_hu_top5"] = B.top("hu")
        bars["wrong_token_status"] = [A.call("POST", "/v1/admin/blocklist", {"add": ["sandy"]},
                                             token=None)[0],
                                      A.call("POST", "/v1/admin/blocklist", {"add": ["sandy"]},
                                             token="wrong")[0]]
        st, _ = A.call("POST", "/v1/admin/blocklist", {"add": ["sandy"]})
        t_bl = until(lambda: "hurricane sandy" not in B.top("hurr", k=10), 1.0, 0.005)
        bars["blocklist_status"] = st
        bars["blocklist_hidden_on_B_s"] = t_bl
        # B restarted
        stop(procs[1])
        t0 = time.perf_counter()
        procs[1] = start_replica(args.model, rurl, pb, tmp / "b2.log", extra, args.code)
        bars["B_restart_s"] = round(time.perf_counter() - t0, 1)
        probe = "zqfresh 0"
        bars["restarted_B_keeps_fresh"] = any(t.startswith(probe) for t in B.top(probe, "f9"))
        bars["restarted_B_applies_blocklist"] = "hurricane sandy" not in B.top("hurr", k=10)
        A.call("POST", "/v1/admin/blocklist", {"remove": ["sandy"]})
        bars["after_remove_B_hurr"] = until(lambda: B.top("hurr")[:1] == ["hurricane sandy"],
                                            2.0)
        bars["A_skipped_entries"] = metric(a_url, 'qac_live{stat="skipped"}')
        out["bars"] = bars
    finally:
        for p in procs:
            stop(p)
        redis.terminate()
        redis.wait(10)
    # 4. memory
    out["overlay_memory"] = overlay_memory(args.memory)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection (issue 15): the service and the model directory under the faults an
operator meets, each with 0 failed completions and no acknowledged write lost.

    python sim/faults.py                 # every scenario (about a minute)
    python sim/faults.py redis-kill disk-full --rate 200

Scenarios (each prints its counts and fails the run if a bar is missed):

* ``redis-kill``: Redis (append-only file, fsync always) is SIGKILLed for 5 s, then
  restarted on its files.
* ``redis-stall``: Redis is SIGSTOPped for 5 s (no answer, no error), then resumed.
* ``redis-refuse``: Redis refuses every write for 5 s (``min-replicas-to-write 1``
  with no replica: ``NOREPLICAS``).
* ``redis-poison``: 4 sessions hold poisoned keys (a hash where a list belongs,
  bytes that are not UTF-8, a 1,025-character value, a non-numeric time and a string
  where a sorted set belongs); each is asked 20 times a second beside healthy
  sessions, which must keep their context in at least 99% of their answers.
* ``swap-mid-load``: while a model directory is replaced again and again by another
  model (atomic saves, as ``qac train --out`` does), it is loaded and asked: every
  load gives one whole model (its answers are exactly one model's) or a
  ModelFormatError, and a loaded model never fails a completion.
* ``disk-full``: a save fails at every file in turn (ENOSPC from each write), and
  in a child whose file-size limit (RLIMIT_FSIZE) cuts a write short (EFBIG): the
  model that was there still loads and answers the same, and no partial directory
  is left behind.

The HTTP scenarios drive the app ``qac serve`` runs in this process (ASGI, no
sockets) against a redis-server of their own, at ``--rate`` requests per second:
completions of random prefixes for 40 sessions, and every 4th request a recorded
query. A completion fails if it is not a 200. A write is acknowledged when it is
answered 200; after the fault, every acknowledged write must be in its session's
history in Redis. (A write answered 503 may still have been applied, e.g. one sent
during a stall: counted as "applied though refused", never as lost.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # sessionlog: the tests' tiny logs

SCENARIOS = ("redis-kill", "redis-stall", "redis-refuse", "redis-poison", "swap-mid-load",
             "disk-full")
FAULT_SECONDS = 5.0


# -- a redis-server of our own --------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A redis-server on 127.0.0.1 with an append-only file fsynced on every write, so
    a SIGKILL loses nothing it acknowledged."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("faults.py: redis-server is not on PATH (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, subprocess.CalledProcessError):  # not up yet
                if self.cli("PING") == "PONG":
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True,
                             capture_output=True, timeout=5)
        return out.stdout.decode("utf-8", "replace").strip()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)


# -- models -------------------------------------------------------------------------

def train_models(root: Path) -> dict[str, Path]:
    """Two small completers that answer differently (model A on one log, B on another)."""
    from sessionlog import pl_log, weeks_log

    from qac.complete import Completer, CompleterConfig

    out = {"a": root / "model-a", "b": root / "model-b"}
    if not (out["a"] / "manifest.json").exists():
        Completer.train(weeks_log().events, CompleterConfig(trie_depth=1, fit_days=0)).save(
            out["a"])
    if not (out["b"] / "manifest.json").exists():
        log = pl_log()
        log.repeat(30, "z", "zebra crossing", "plumbing supplies")
        Completer.train(log.events, CompleterConfig(trie_depth=1, fit_days=0)).save(out["b"])
    return out


# -- the HTTP scenarios -------------------------------------------------------------

class Tally:
    """Counts of one HTTP scenario."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()
        self.acked: dict[str, set[str]] = {}
        self.refused: dict[str, set[str]] = {}
        self.context: Counter[str] = Counter()  # per session kind: asked, with context


def _store_class() -> Any:
    from qac.session import RedisSessionStore

    class Watching(RedisSessionStore):  # type: ignore[misc]
        """Notes, per session, whether each completion's context held the previous
        query (what a poisoned key must not cost a healthy session)."""

        tally: Tally | None = None

        async def context(self, session: str, prefix: str = "", n: int = 0) -> Any:
            ctx = await super().context(session, prefix, n)
            if self.tally is not None and session.startswith("healthy"):
                self.tally.context["healthy asked"] += 1
                self.tally.context["healthy with context"] += ctx.previous is not None
            return ctx

    return Watching


async def _drive(client: Any, tally: Tally, seconds: float, rate: float,
                 sessions: list[str], rng: random.Random, writes: bool = True) -> None:
    """Completions (and every 4th request a write) at ``rate`` per second, open loop."""
    prefixes = ["", "p", "pl", "pla", "n", "ne", "new", "r", "ro", "g", "ga", "zz"]
    pending: set[asyncio.Task[None]] = set()
    n = 0

    async def one(i: int) -> None:
        s = rng.choice(sessions)
        if writes and i % 4 == 0:
            q = f"query {i} of {s}"
            try:
                r = await client.post(f"/v1/sessions/{s}/queries", json={"query": q})
                status = r.status_code
            except Exception:  # noqa: BLE001 - a request that raised is a failure
                status = -1
            tally.c["writes"] += 1
            if status == 200:
                tally.c["writes acknowledged"] += 1
                tally.acked.setdefault(s, set()).add(q)
            elif status == 503:
                tally.c["writes refused (503)"] += 1
                tally.refused.setdefault(s, set()).add(q)
            else:
                tally.c[f"writes failed ({status})"] += 1
            return
        try:
            r = await client.get("/v1/complete", params={"q": rng.choice(prefixes),
                                                         "session": s})
            ok = r.status_code == 200 and isinstance(r.json().get("completions"), list)
        except Exception:  # noqa: BLE001
            ok = False
        tally.c["completions"] += 1
        tally.c["completions failed" if not ok else "completions ok"] += 1

    start = time.monotonic()
    while (now := time.monotonic() - start) < seconds:
        due = n / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.gather(*pending)


async def _lost(redis: Redis, tally: Tally) -> None:
    """Acknowledged writes missing from their sessions' history, once Redis is back."""
    from qac.session import RedisSessionStore

    store = RedisSessionStore(redis.url, socket_timeout=2.0, backoff_seconds=0)
    try:
        for s in set(tally.acked) | set(tally.refused):
            ctx = await store.context(s, "", n=200)
            have = {p.query for p in ctx.history}
            tally.c["acknowledged writes lost"] += len(tally.acked.get(s, set()) - have)
            tally.c["applied though refused"] += len(tally.refused.get(s, set()) & have)
    finally:
        await store.close()


async def http_scenario(name: str, model: Path, work: Path, rate: float,
                        seed: int) -> Tally:
    try:  # the sim extra's httpx, else the test extra's httpx2 (the same API)
        import httpx
    except ImportError:
        import httpx2 as httpx

    from qac.server.app import create_app
    from qac.server.config import ServerConfig

    redis = Redis(work / name)
    redis.start()
    tally = Tally()
    rng = random.Random(seed)
    sessions = [f"s{i}" for i in range(40)]
    store = _store_class()(redis.url)
    store.tally = tally
    app = create_app(ServerConfig(model_dir=str(model), redis_url=redis.url), store=store)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://qac",
                                     timeout=30) as client:
            if name == "redis-poison":
                await _poison_run(client, redis, tally, rate, rng)
            else:
                await _drive(client, tally, 2.0, rate, sessions, rng)  # before
                fault = asyncio.create_task(_fault(name, redis))
                await _drive(client, tally, FAULT_SECONDS + 1.0, rate, sessions, rng)
                await fault
                await _drive(client, tally, 3.0, rate, sessions, rng)  # after
            await _lost(redis, tally)
        stats = store.stats()
        tally.c["store errors (metrics)"] = stats.get("errors", 0)
        tally.c["store bad keys (metrics)"] = stats.get("bad_keys", 0)
    finally:
        await store.close()
        redis.stop()
    return tally


async def _fault(name: str, redis: Redis) -> None:
    await asyncio.sleep(0.5)
    if name == "redis-kill":
        redis.kill()
        await asyncio.sleep(FAULT_SECONDS)
        redis.start()  # on its append-only file
    elif name == "redis-stall":
        redis.signal(signal.SIGSTOP)
        await asyncio.sleep(FAULT_SECONDS)
        redis.signal(signal.SIGCONT)
    elif name == "redis-refuse":
        redis.cli("CONFIG", "SET", "min-replicas-to-write", "1")
        await asyncio.sleep(FAULT_SECONDS)
        redis.cli("CONFIG", "SET", "min-replicas-to-write", "0")


async def _poison_run(client: Any, redis: Redis, tally: Tally, rate: float,
                      rng: random.Random) -> None:
    """4 poisoned sessions, each asked 20 times a second, beside healthy ones."""
    from qac.session import session_keys

    poisoned = [f"evil{i}" for i in range(4)]  # one of each kind of poison
    for i, s in enumerate(poisoned):
        k = session_keys(s)
        how = i % 4
        if how == 0:
            redis.cli("HSET", k.recent, "a", "b")  # a hash where a list belongs
        elif how == 1:
            subprocess.run(["redis-cli", "-p", str(redis.port), "-x", "RPUSH", k.recent],
                           input=b"1700000000.0\t\xff\xfe", check=True,
                           capture_output=True)
        elif how == 2:
            redis.cli("RPUSH", k.recent, "1700000000.0\t" + "x" * 1025)
        else:
            redis.cli("RPUSH", k.recent, "not-a-time\tpizza")
            redis.cli("SET", k.lex, "a string where a sorted set belongs")
    healthy = [f"healthy{i}" for i in range(4)]
    for s in healthy:
        r = await client.post(f"/v1/sessions/{s}/queries", json={"query": "rose of jericho"})
        assert r.status_code == 200, r.text
        tally.acked.setdefault(s, set()).add("rose of jericho")
    # the poisoned sessions at 20 requests/s each, the healthy ones at `rate` in all
    seconds = FAULT_SECONDS + 3.0
    poison_tally = Tally()
    await asyncio.gather(
        _drive(client, poison_tally, seconds, 20.0 * len(poisoned), poisoned, rng,
               writes=False),
        _drive(client, tally, seconds, rate, healthy, rng, writes=False))
    tally.c["poisoned completions"] = poison_tally.c["completions"]
    tally.c["poisoned completions failed"] = poison_tally.c["completions failed"]
    tally.c["completions"] += poison_tally.c["completions"]
    tally.c["completions failed"] += poison_tally.c["completions failed"]


# -- a model directory swapped mid-load ---------------------------------------------

def swap_mid_load(models: dict[str, Path], work: Path, seconds: float) -> Counter[str]:
    from qac.complete import Completer
    from qac.errors import ModelFormatError
    from qac.storage import open_model_dir

    c: Counter[str] = Counter()
    prefixes = ["", "p", "pl", "n", "z", "g", "ro"]
    want = {}
    for name, path in models.items():
        m = Completer.load(path)
        want[name] = [m.complete(p) for p in prefixes]
    live = work / "live"
    shutil.copytree(models["a"], live)
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        # what `qac train --out live` does: build beside, then two renames
        from qac.storage import save_model_dir

        sources = [open_model_dir(p) for p in (models["b"], models["a"])]
        parts = []
        for md in sources:
            tries = {n[:-7]: md.trie(n[:-7]) for n in md.manifest["files"]
                     if n.endswith(".marisa")}
            arrays = {n[:-4]: md.array(n[:-4]) for n in md.manifest["files"]
                      if n.endswith(".npy") and n[:-len(".keys.npy")] not in tries}
            parts.append((md.kind, md.config, arrays, tries))
        i = 0
        rng = random.Random(0)
        while not stop.wait(rng.uniform(0.0, 0.3)):
            kind, config, arrays, tries = parts[i % 2]
            save_model_dir(live, kind, config, arrays, tries)
            swaps[0] += 1
            i += 1

    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            verify = c["loads"] % 2 == 0
            c["loads"] += 1
            try:
                m = Completer.load(live, verify=verify)
            except ModelFormatError as exc:
                c["loads refused (ModelFormatError)"] += 1
                if os.environ.get("QAC_FAULTS_DEBUG"):
                    print(exc, file=sys.stderr)
                continue
            except Exception as exc:  # noqa: BLE001 - any other error is a failure
                c[f"loads failed ({type(exc).__name__})"] += 1
                import traceback

                traceback.print_exc()
                continue
            try:
                got = [m.complete(p) for p in prefixes]
            except Exception:  # noqa: BLE001
                c["completions failed"] += len(prefixes)
                continue
            c["completions"] += len(prefixes)
            which = [n for n, w in want.items() if w == got]
            c["loads answering as one whole model" if which else "loads of a mixed model"] += 1
    finally:
        stop.set()
        t.join()
    c["swaps"] = swaps[0]
    return c


# -- a full disk during save --------------------------------------------------------

def _enospc_after(n: int) -> Callable[[], None]:
    """Patch a completer's save so its n-th file write raises ENOSPC (every array, trie
    and the manifest is one write)."""
    import numpy as np

    import qac.complete
    import qac.storage as storage

    calls = [0]
    real_save, real_dump, real_save_dir = np.save, json.dump, qac.complete.save_model_dir

    def tick() -> None:
        calls[0] += 1
        if calls[0] == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save(*a: Any, **k: Any) -> None:
        tick()
        real_save(*a, **k)

    def dump(*a: Any, **k: Any) -> None:
        tick()
        real_dump(*a, **k)

    class Trie:
        """marisa-trie's type is immutable: its writes are counted through a wrapper."""

        def __init__(self, trie: Any) -> None:
            self.trie = trie

        def __len__(self) -> int:
            return len(self.trie)

        def restore_key(self, i: int) -> str:
            return str(self.trie.restore_key(i))

        def save(self, path: str) -> None:
            tick()
            self.trie.save(path)

    def save_dir(path: Any, kind: str, config: Any, arrays: Any, tries: Any = None) -> Path:
        return real_save_dir(path, kind, config, arrays,
                             {k: Trie(t) for k, t in (tries or {}).items()})

    storage.np.save = save  # type: ignore[attr-defined]
    storage.json.dump = dump  # type: ignore[attr-defined]
    qac.complete.save_model_dir = save_dir  # type: ignore[assignment]

    def undo() -> None:
        storage.np.save = real_save  # type: ignore[attr-defined]
        storage.json.dump = real_dump  # type: ignore[attr-defined]
        qac.complete.save_model_dir = real_save_dir  # type: ignore[assignment]

    return undo


_FSIZE_CHILD = """
import resource, signal, sys
from qac.complete import Completer
src, dst, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = Completer.load(src)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit is EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    m.save(dst)
except OSError as exc:
    print("refused", exc.errno)
else:
    print("saved")
"""


def disk_full(models: dict[str, Path], work: Path) -> Counter[str]:
    from qac.complete import Completer

    c: Counter[str] = Counter()
    prefixes = ["", "p", "pl", "n", "z", "ro"]
    target = work / "disk" / "model"
    shutil.copytree(models["a"], target)
    before = [Completer.load(target).complete(p) for p in prefixes]
    new = Completer.load(models["b"])
    n_files = len(json.loads((models["b"] / "manifest.json").read_text())["files"]) + 1

    def check() -> None:
        now = [Completer.load(target).complete(p) for p in prefixes]
        c["completions"] += len(prefixes)
        if now != before:
            c["old model changed"] += 1
        left = sorted(p.name for p in target.parent.iterdir() if p.name != "model")
        if left:
            c["partial directories left"] += len(left)

    for n in range(1, n_files + 1):
        c["saves attempted"] += 1
        undo = _enospc_after(n)
        try:
            new.save(target)
        except OSError as exc:
            c["saves failed (ENOSPC)" if exc.errno == errno.ENOSPC else "saves failed"] += 1
        else:
            c["saves that should have failed but did not"] += 1
        finally:
            undo()
        check()
    # a real short write: the kernel's file-size limit in a child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for limit in (1, 200, 4096, 20_000, 60_000):
        c["saves attempted"] += 1
        out = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(models["b"]), str(target),
                              str(limit)], capture_output=True, text=True, env=env, timeout=120)
        verdict = out.stdout.strip()
        if verdict.startswith("refused"):
            c["saves failed (RLIMIT_FSIZE, EFBIG)"] += 1
        elif verdict == "saved":
            c["saves under the limit"] += 1
            before = [Completer.load(target).complete(p) for p in prefixes]  # it is the new one
        else:
            c["children that died"] += 1
        check()
    return c


# -- the run --------------------------------------------------------------------------

def _bars(name: str, c: Counter[str]) -> list[str]:
    zeros = {"redis-kill": ["acknowledged writes lost"], "redis-stall":
             ["acknowledged writes lost"], "redis-refuse": ["acknowledged writes lost"],
             "redis-poison": ["poisoned completions failed"],
             "swap-mid-load": ["loads of a mixed model"],
             "disk-full": ["old model changed", "partial directories left"]}[name]
    for key in ["completions failed", *zeros]:
        c[key] += 0
    bad = [k for k in c if (k.startswith(("completions failed", "loads failed", "writes failed",
                                          "acknowledged writes lost", "loads of a mixed",
                                          "old model changed", "partial directories",
                                          "saves that should", "children that died",
                                          "poisoned completions failed"))) and c[k]]
    if name == "redis-poison":
        asked = c["healthy asked"]
        share = c["healthy with context"] / asked if asked else 0.0
        c["healthy with context (per mille)"] = round(1000 * share)
        if share < 0.99:
            bad.append(f"healthy sessions kept their context in {share:.1%} of answers")
    if not c["completions"]:
        bad.append("no completions were asked")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=f"any of {SCENARIOS}")
    ap.add_argument("--rate", type=float, default=100.0, help="HTTP requests per second")
    ap.add_argument("--swap-seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    a = ap.parse_args(argv)
    bad_names = sorted(set(a.scenarios) - set(SCENARIOS))
    if bad_names:
        ap.error(f"unknown scenarios {bad_names}; known: {SCENARIOS}")
    import logging

    logging.basicConfig(level=logging.ERROR)
    results: dict[str, dict[str, int]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="qac-faults-") as tmp:
        work = Path(tmp)
        models = train_models(work)
        for name in a.scenarios:
            t0 = time.monotonic()
            if name.startswith("redis-"):
                tally = asyncio.run(http_scenario(name, models["a"], work, a.rate, a.seed))
                counts = Counter(tally.c)
                counts.update(tally.context)  # (not +: that drops the zeros we report)
            elif name == "swap-mid-load":
                counts = swap_mid_load(models, work / "swap", a.swap_seconds)
            else:
                counts = disk_full(models, work)
            problems = _bars(name, counts)
            failed |= bool(problems)
            results[name] = dict(sorted(counts.items()))
            line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"{name:13s} {'ok  ' if not problems else 'FAIL'} "
                  f"({time.monotonic() - t0:.0f} s): {line}"
                  + (f"  PROBLEMS: {problems}" if problems else ""), flush=True)
    if a.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

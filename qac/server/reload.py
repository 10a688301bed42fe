"""Safe, replica-wide model reload: check in a child process, then publish to every worker.

``POST /v1/admin/reload`` on any worker of a ``qac serve`` replica:

1. **Check** (:func:`check_model_dir`): a child process (``python -m qac.server.reload
   DIR``) loads the directory, verifying every checksum, and asks it a few
   completions. A directory that kills the child (a signal: a crafted file that
   crashes the kernel or a trie), hangs it (past ``timeout``: a FIFO for a manifest),
   exhausts its memory (``CHECK_MEMORY_BYTES``), or fails to load is refused with a
   :class:`ReloadRefused` that says which; the server's own process never touches it.
2. The answering worker loads it (in a thread: requests keep flowing) and swaps it in.
3. **Publish** (:class:`ControlDir`): it writes ``{"generation", "model_dir", "sha"}``
   to ``<control dir>/current.json`` (atomically, under a file lock, so generations
   only grow). Every worker of the replica polls that file every
   ``POLL_SECONDS`` (a ``stat``), loads a newer generation in the background, checks
   that the manifest hash is the one published, swaps, and acknowledges in
   ``ack-<pid>.json``. The answering worker waits for the acks of all ``workers``
   live workers (up to its timeout) and reports them.

A worker that starts later (uvicorn restarts one that died, or SIGHUP restarts them
all) loads the published generation, not the directory ``qac serve`` was started with.
The control directory is per replica (``qac serve`` makes a fresh one for its workers);
across replicas, POST to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import resource
import secrets
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qac.complete import Completer
from qac.storage import MANIFEST

#: How often each worker looks at the control file (seconds).
POLL_SECONDS = 0.2
#: The check child's data-segment limit (RLIMIT_DATA: heap and anonymous memory, not
#: the model's read-only memory maps): a manifest that reads without end stops here.
CHECK_MEMORY_BYTES = 4 << 30
#: Most bytes of the child's report and error output read back.
_MAX_REPORT = 64 << 10
CURRENT = "current.json"


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


def model_info(path: str | Path) -> ModelInfo:
    """Describe the model in ``path`` (reads its manifest)."""
    raw = (Path(path) / MANIFEST).read_bytes()
    created = str(json.loads(raw).get("created", "unknown"))
    return ModelInfo(str(path), created, hashlib.sha256(raw).hexdigest()[:12])


def load_completer(path: str | Path, verify: bool = True) -> tuple[Completer, ModelInfo]:
    """Load a completer and describe it (blocking: call from a thread when serving)."""
    completer = Completer.load(path, verify=verify)
    return completer, model_info(path)


class ReloadRefused(Exception):
    """The new model directory was not swapped in; the message says why."""


@dataclass(frozen=True)
class Checked:
    """What the check child found: the manifest's time and hash, and the label count."""

    created: str
    sha: str
    labels: int


def check_argv(model_dir: str) -> list[str]:
    """The command that checks ``model_dir`` in a child process."""
    return [sys.executable, "-m", "qac.server.reload", model_dir]


def _limit_memory() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (CHECK_MEMORY_BYTES, CHECK_MEMORY_BYTES))


async def check_model_dir(model_dir: str, timeout: float) -> Checked:
    """Load and query ``model_dir`` in a child process; raise :class:`ReloadRefused`
    if it fails, dies on a signal or does not finish within ``timeout`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        *check_argv(model_dir), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise ReloadRefused(f"{model_dir}: the check process (loading the model and "
                            f"asking it a few completions) did not finish in {timeout:g} s; "
                            "it was killed") from None
    code = proc.returncode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise ReloadRefused(f"{model_dir}: the check process died on {name} while loading "
                            "the model and asking it a few completions")
    report = _report(out)
    if code != 0 or report is None or not report.get("ok"):
        why = (report or {}).get("error") or _tail(err) or f"exit status {code}"
        raise ReloadRefused(f"{model_dir}: {why}")
    try:
        return Checked(str(report["created"]), str(report["sha"]), int(report["labels"]))
    except (KeyError, TypeError, ValueError):
        raise ReloadRefused(f"{model_dir}: the check process gave no usable report") from None


def _report(out: bytes) -> dict[str, Any] | None:
    lines = out[-_MAX_REPORT:].strip().splitlines()
    if not lines:
        return None
    try:
        got = json.loads(lines[-1])
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


def _tail(err: bytes) -> str:
    text = err[-_MAX_REPORT:].decode("utf-8", "replace").strip()
    return text.splitlines()[-1][:500] if text else ""


def _check_main(model_dir: str) -> int:
    """The child: load, verify and query ``model_dir``; print one JSON line."""
    _limit_memory()
    try:
        completer, info = load_completer(model_dir, verify=True)
        history = ["the", "a b"]
        for prefix, previous in (("", None), ("", "the"), ("a", None), ("th", "a b"),
                                 ("e ", None), ("zzq", "x")):
            completer.complete(prefix, previous, k=10, history=history)
    except Exception as exc:  # noqa: BLE001 - every failure is the report
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 2
    print(json.dumps({"ok": True, "created": info.created, "sha": info.sha,
                      "labels": len(completer.labels)}), flush=True)
    return 0


# -- the control directory ------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """One published model: ``generation`` grows with every reload of the replica."""

    generation: int
    model_dir: str
    sha: str


class ControlDir:
    """The files the workers of one replica share: ``current.json`` and the acks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.current = self.path / CURRENT
        self._seen: tuple[int, int, int] | None = None
        # one ack file per worker: the pid (for liveness) and a token (two apps in one
        # process, as in tests, are two workers)
        self.worker = f"{os.getpid()}-{secrets.token_hex(4)}"

    def read(self) -> Published | None:
        """The published model, or None (nothing published, or an unreadable file)."""
        try:
            d = json.loads(self.current.read_bytes()[:_MAX_REPORT])
            return Published(int(d["generation"]), str(d["model_dir"]), str(d["sha"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def changed(self) -> bool:
        """Whether ``current.json`` changed since the last call (one ``stat``)."""
        try:
            st = os.stat(self.current)
        except OSError:
            return False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._seen:
            return False
        self._seen = sig
        return True

    def publish(self, model_dir: str, sha: str) -> Published:
        """Write the next generation (under a lock: concurrent reloads on two workers
        get two generations, and every worker ends on the later one)."""
        with open(self.path / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                old = self.read()
                new = Published((old.generation if old else 0) + 1, model_dir, sha)
                self._write(self.current, {"generation": new.generation,
                                           "model_dir": new.model_dir, "sha": new.sha})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return new

    def ack(self, generation: int, sha: str, error: str | None = None) -> None:
        """This worker now serves ``generation`` (or failed to load it: ``error``)."""
        self._write(self.path / f"ack-{self.worker}.json",
                    {"pid": os.getpid(), "worker": self.worker, "generation": generation,
                     "sha": sha, "error": error})

    def acks(self, generation: int) -> tuple[list[str], list[dict[str, Any]]]:
        """(live workers at ``generation`` or later, failures at it); the acks of dead
        workers are removed."""
        done, failed = [], []
        for f in self.path.glob("ack-*.json"):
            try:
                d = json.loads(f.read_bytes()[:_MAX_REPORT])
                pid, gen, worker = int(d["pid"]), int(d["generation"]), str(d["worker"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    f.unlink()
                continue
            if gen < generation:
                continue
            if d.get("error") and gen == generation:
                failed.append({"worker": worker, "error": str(d["error"])})
            else:
                done.append(worker)
        return sorted(done), failed

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m qac.server.reload MODEL_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(_check_main(sys.argv[1]))

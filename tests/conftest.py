"""Shared fixtures: throwaway redis-server processes (never the shared one on 6379).

A test that needs Redis FAILS (it is not skipped) when ``redis-server`` is missing:
install it (Debian/Ubuntu: ``apt-get install redis-server``; CI installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _redis_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: the session tests run against a real Redis. "
            f"Install it (apt-get install redis-server, which also brings redis-cli).",
            pytrace=False,
        )
    return path


def free_port(*, with_bus: bool = False) -> int:
    """A TCP port free on 127.0.0.1 now (and port + 10000, the cluster bus, if asked)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            # a server started with --requirepass answers, but refuses: it is up
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1:``port``, no persistence, in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.binary = _redis_binary("redis-server")
        self.workdir = workdir
        self.port = port if port is not None else free_port(with_bus=bool(extra))
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 5.0) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            *self.extra,
        ]  # fmt: skip
        with open(self.workdir / f"redis-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None:
                text = (self.workdir / f"redis-{self.port}.log").read_text(errors="replace")
                pytest.fail(f"redis-server on port {self.port} exited:\n{text[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not answer PING in {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server and return its stdout."""
        out = subprocess.run(
            [_redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server shared by the whole test session; flush keys you rely on."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers (``redis_factory(port=None)``), all stopped at the end."""
    started: list[RedisServer] = []

    def factory(port: int | None = None, *extra: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", port, *extra)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A real 3-master Redis Cluster on 127.0.0.1 (no replicas), state ok."""
    root = tmp_path_factory.mktemp("redis-cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            d = root / f"n{i}"
            nodes.append(
                RedisServer(
                    d, None,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(d / f"nodes-{i}.conf"),
                    "--cluster-node-timeout", "2000",
                ).start()
            )  # fmt: skip
        subprocess.run(
            [
                _redis_binary("redis-cli"), "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            infos = [n.cli("cluster", "info") for n in nodes]
            if all("cluster_state:ok" in info for info in infos):
                break
            if time.monotonic() > deadline:
                pytest.fail("Redis Cluster did not reach cluster_state:ok:\n" + infos[0])
            time.sleep(0.05)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture(scope="session")
def completer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small completer saved once for the tests that copy, craft or load it (never
    write to it: copy it first)."""
    from sessionlog import pl_log

    from qac.complete import Completer, CompleterConfig

    path = tmp_path_factory.mktemp("model") / "completer"
    Completer.train(pl_log().events, CompleterConfig(trie_depth=1)).save(path)
    return path

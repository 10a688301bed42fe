"""docker-compose.yml and sim/Dockerfile, checked without a Docker engine.

The compose file is parsed and its services, ports, health checks and build paths are
checked; the Dockerfile's COPY sources must exist, and the commands it runs are run
here: the model-building RUN line (through ``sh``, in a temporary directory), the
serving CMD's argument parsing, the health-check snippet against a local HTTP server,
and (slow) a wheel built from exactly the files the Dockerfile copies.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def qac_build() -> tuple[Path, Path]:
    build = compose()["services"]["qac"]["build"]
    context = (ROOT / build["context"]).resolve()
    return context, context / build["dockerfile"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


@pytest.fixture(scope="module")
def qac_bin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PATH has a ``qac`` running this checkout (not installed)."""
    bindir = tmp_path_factory.mktemp("bin")
    shim = bindir / "qac"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m qac "$@"\n')
    shim.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def serve_parser() -> Any:
    import argparse

    from qac.server import serve

    p = argparse.ArgumentParser(prog="qac serve")
    serve.add_serve_arguments(p)
    return p


# -- compose ------------------------------------------------------------------------------

def test_compose_services() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "qac"}
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    qac = services["qac"]
    assert "8000:8000" in [str(p) for p in qac["ports"]]
    assert qac["depends_on"]["redis"]["condition"] == "service_healthy"
    for svc in services.values():
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1


def test_redis_keeps_the_history_lists_across_restarts() -> None:
    """The history lists live 30 days: Redis writes an append-only file, in a named
    volume mounted where the redis image keeps its data."""
    data = compose()
    redis = data["services"]["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] in ("everysec", "always")
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"
    assert volume in data["volumes"]


def test_redis_command_runs_and_persists(tmp_path: Path) -> None:
    """The compose file's redis-server command line, run here against a local
    redis-server in a temporary directory: a history list written before a restart
    is there after it."""
    import redis as redis_py

    exe = shutil.which("redis-server")
    assert exe, "redis-server is needed (see the README's prerequisites)"
    cmd = compose()["services"]["redis"]["command"]

    def start() -> tuple[subprocess.Popen[bytes], int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([exe, *cmd[1:], "--port", str(port), "--bind", "127.0.0.1",
                                 "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        client = redis_py.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                return proc, port
            except redis_py.ConnectionError:
                time.sleep(0.02)
        proc.kill()
        raise AssertionError("redis-server did not start")

    proc, port = start()
    try:
        client = redis_py.Redis(port=port)
        client.lpush("qac:{u1}:history", "rose of jericho", "plant care tips")
        client.expire("qac:{u1}:history", 30 * 86400)
    finally:
        proc.terminate()  # SIGTERM: the append-only file is flushed on the way out
        proc.wait(10)
    assert list(tmp_path.rglob("*.aof")), "no append-only file written"
    proc, port = start()
    try:
        client = redis_py.Redis(port=port)
        assert client.lrange("qac:{u1}:history", 0, -1) == [b"plant care tips",
                                                            b"rose of jericho"]
        assert client.ttl("qac:{u1}:history") > 29 * 86400
    finally:
        proc.terminate()
        proc.wait(10)


def test_compose_build_paths() -> None:
    context, dockerfile = qac_build()
    assert context == ROOT
    assert dockerfile.is_file()
    assert dockerfile.parent != ROOT, "the top level of the repository is fixed"
    assert not (ROOT / ".dockerignore").exists()


def test_compose_command_parses_as_qac_serve() -> None:
    cmd = compose()["services"]["qac"]["command"]
    assert cmd[:2] == ["qac", "serve"]
    args = serve_parser().parse_args(cmd[2:])
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    assert args.redis_url == "redis://redis:6379/0"
    assert args.model_dir == model_dir_of_train()
    assert args.retrieval_dir == retriever_dir_of_train()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if ok else b"")

    def log_message(self, *args: Any) -> None:
        pass


def test_healthcheck_command_runs() -> None:
    """The qac health check is run against a local server on a free port: exit 0 when
    /healthz answers 200, non-zero when nothing listens."""
    test = compose()["services"]["qac"]["healthcheck"]["test"]
    assert test[1:3] == ["python", "-c"]
    snippet = test[3]
    assert "http://127.0.0.1:8000/healthz" in snippet
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = subprocess.run([sys.executable, "-c", snippet.replace(":8000", f":{port}")],
                            capture_output=True, timeout=10)
        assert up.returncode == 0, up.stderr
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = subprocess.run([sys.executable, "-c", snippet.replace(":8000", f":{closed}")],
                          capture_output=True, timeout=10)
    assert down.returncode != 0


# -- Dockerfile ---------------------------------------------------------------------------

def test_dockerfile_shape() -> None:
    _, dockerfile = qac_build()
    ins = instructions(dockerfile)
    froms = [a for i, a in ins if i == "FROM"]
    assert froms and all(a.split()[0] == "python:3.11-slim" for a in froms)
    runs = [a for i, a in ins if i == "RUN"]
    assert any("apt-get install" in r and " gcc" in r for r in runs)
    assert any("pip wheel" in r or "pip install" in r for r in runs)
    # the last stage runs as a non-root user, set before the model is built and served
    last = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
    users = [a for i, a in last if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(i == "EXPOSE" and a == "8000" for i, a in last)


def copy_sources(dockerfile: Path) -> list[str]:
    out = []
    for i, a in instructions(dockerfile):
        if i == "COPY" and not a.startswith("--from"):
            *sources, _dest = a.split()
            out += sources
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")
               for p in patterns)


def test_copy_sources_exist_and_are_not_ignored() -> None:
    context, dockerfile = qac_build()
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [ln.strip() for ln in ignore.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")] if ignore.exists() else []
    sources = copy_sources(dockerfile)
    assert {"pyproject.toml", "native", "qac"} <= set(sources)
    for src in sources:
        assert (context / src).exists(), src
        assert not ignored(src, patterns), f"{src} is copied but ignored"
    # pyproject's readme must be in the build context of `pip wheel .`
    assert "README.md" in sources


def model_dir_of_train() -> str:
    _, dockerfile = qac_build()
    train = [a for i, a in instructions(dockerfile) if i == "RUN" and "qac train" in a]
    assert len(train) == 1
    argv = shlex.split(train[0])
    return argv[argv.index("--out") + 1]


def retriever_line() -> str:
    _, dockerfile = qac_build()
    lines = [a for i, a in instructions(dockerfile) if i == "RUN" and "qac retrieve train" in a]
    assert len(lines) == 1
    return lines[0]


def retriever_dir_of_train() -> str:
    argv = shlex.split(retriever_line())
    return argv[argv.index("--out") + 1]


def test_cmd_serves_the_trained_models(qac_bin: dict[str, str]) -> None:
    _, dockerfile = qac_build()
    cmd = exec_form([a for i, a in instructions(dockerfile) if i == "CMD"][-1])
    assert cmd[:2] == ["qac", "serve"]
    args = serve_parser().parse_args(cmd[2:])
    assert args.model_dir == model_dir_of_train()
    assert args.retrieval_dir == retriever_dir_of_train()
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    got = subprocess.run(["qac", "serve", "--help"], env=qac_bin, capture_output=True,
                         text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert "--redis-url" in got.stdout


def test_model_building_run_line_works(tmp_path: Path, qac_bin: dict[str, str]) -> None:
    """The Dockerfile's `qac train` line, run through sh as docker would, writes a model
    the completer loads (the output directory is moved into tmp_path)."""
    _, dockerfile = qac_build()
    line = [a for i, a in instructions(dockerfile) if i == "RUN" and "qac train" in a][0]
    out = model_dir_of_train()
    model = tmp_path / "model"
    line = line.replace(out, str(model))
    got = subprocess.run(["sh", "-c", line], cwd=tmp_path, env=qac_bin, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    from qac.complete import Completer

    completer = Completer.load(model)
    assert completer.complete("am", k=3)


def test_retriever_building_run_line_works(tmp_path: Path, qac_bin: dict[str, str]) -> None:
    """The Dockerfile's `qac retrieve train` line, run through sh, writes a retriever
    that answers from the bundled catalogue."""
    model = tmp_path / "retriever"
    line = retriever_line().replace(retriever_dir_of_train(), str(model))
    got = subprocess.run(["sh", "-c", line], cwd=tmp_path, env=qac_bin, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    from qac.retrieve import Retriever

    hits = Retriever.load(model).search("google", k=3)
    assert hits and "google" in hits[0][0]


def _can_build_wheels_offline() -> bool:
    import importlib.util

    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
def test_wheel_builds_from_the_copied_files(tmp_path: Path) -> None:
    """`pip wheel` on exactly the files the Dockerfile copies (no build isolation, no
    deps: the point is that the COPY set is enough to compile the kernel)."""
    assert shutil.which("gcc"), "gcc is needed to compile the kernel"
    assert _can_build_wheels_offline(), (
        "building a wheel without build isolation needs `wheel` or setuptools >= 70.1 "
        "(`wheel` is in the test extras)")
    context, dockerfile = qac_build()
    src = tmp_path / "src"
    src.mkdir()
    for s in copy_sources(dockerfile):
        p = context / s
        if p.is_dir():
            shutil.copytree(p, src / s, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.egg-info"))
        else:
            shutil.copy2(p, src / s)
    got = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "--wheel-dir", str(tmp_path / "w"), "."],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    wheels = list((tmp_path / "w").glob("qac-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("qac/_native") and n.endswith(".so") for n in names)
    assert "qac/data/sample_sessions.tsv.gz" in names


def test_readme_explains_running_the_compose_file() -> None:
    """The README's compose section names the command, the volume that holds the
    history, and how to drop it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Docker Compose"):]
    section = section[:section.index("\n## ")]
    assert "docker compose up --build" in section
    volume = compose()["services"]["redis"]["volumes"][0].partition(":")[0]
    assert f"`{volume}`" in section
    assert "down -v" in section

"""``qac serve``: the command-line front of the server (wired into qac.cli by
:func:`add_serve_arguments` and :func:`run_serve`)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from typing import Any

from qac.errors import InputError
from qac.live import LiveConfig
from qac.server.config import ServerConfig
from qac.session import MAX_HISTORY

log = logging.getLogger(__name__)

FACTORY = "qac.server.app:app_from_env"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``qac serve`` (the admin token comes from an environment
    variable, never from argv, where ``ps`` would show it)."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="completer model directory")
    parser.add_argument("--retrieval-dir", help="retriever model directory (enables /v1/search)")
    parser.add_argument("--redis-url",
                        help="session store, e.g. redis://localhost:6379/0 "
                             "(default: sessions kept in each worker process)")
    parser.add_argument("--history", type=int, default=ServerConfig.history, metavar="N",
                        help="distinct past queries per session id kept in the session "
                             "store; a completion reads the most recent of them that match, "
                             "up to what the model looks at (200 by default) "
                             f"(0..{MAX_HISTORY}, default {ServerConfig.history}, 0: none)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="worker processes; each maps the same model files "
                             "(default: the CPUs this process may use, here "
                             f"{default_workers()})")
    parser.add_argument("--admin-token-env", metavar="VAR",
                        help="environment variable holding the bearer token of "
                             "POST /v1/admin/reload and /v1/admin/blocklist (unset: "
                             "those endpoints are off)")
    live = LiveConfig()
    parser.add_argument("--stream-key", default=live.key,
                        help="the live event stream's Redis key (with --redis-url) "
                             f"(default: {live.key})")
    parser.add_argument("--stream-shards", type=int, default=live.shards, metavar="N",
                        help="streams the events are spread over, by query (Redis Cluster) "
                             f"(default: {live.shards})")
    parser.add_argument("--half-life", type=float, default=live.half_life, metavar="SECONDS",
                        help="half-life of the live counts, in seconds (default: "
                             f"{live.half_life})")
    parser.add_argument("--privacy-floor", type=int, default=live.privacy_floor, metavar="N",
                        help="distinct sessions before a query no model saw is suggested to "
                             f"others (default {live.privacy_floor})")
    parser.add_argument("--live-weight", type=float, default=live.weight, metavar="W",
                        help="what one live submission counts for beside the training "
                             "log's counts (default: the decayed count extrapolated to "
                             "the model's recent window, recent_days * 86400 * ln 2 / "
                             "half-life)" if live.weight is None else
                             f"what one live submission counts for beside the training "
                             f"log's counts (default {live.weight})")
    parser.add_argument("--tail-share", type=float, default=live.tail_share, metavar="F",
                        help="the most of the time a worker's stream tail spends applying "
                             "events while it serves, in (0, 1] (default "
                             f"{live.tail_share})")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (one line per keystroke; off by default)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        dest="cors_origin",
                        help="let pages from this origin (scheme://host[:port], or * for "
                             "any) call the API from a browser (repeatable; default: none, "
                             "same origin only)")


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if count is not None:
        n = count()
    else:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count()
    return max(1, n or 1)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = None
    if args.admin_token_env:
        token = os.environ.get(args.admin_token_env)
        if not token:
            raise InputError(f"--admin-token-env {args.admin_token_env}: "
                             "that environment variable is unset or empty")
    # getattr: callers that build the namespace themselves (qac demo) may leave it out
    history = getattr(args, "history", ServerConfig.history)
    workers = getattr(args, "workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers: must be >= 1, got {workers}")
    base = LiveConfig()
    live = LiveConfig(key=getattr(args, "stream_key", base.key),
                      shards=getattr(args, "stream_shards", base.shards),
                      half_life=getattr(args, "half_life", base.half_life),
                      privacy_floor=getattr(args, "privacy_floor", base.privacy_floor),
                      weight=getattr(args, "live_weight", base.weight),
                      tail_share=getattr(args, "tail_share", base.tail_share))
    return ServerConfig(model_dir=args.model_dir, retrieval_dir=args.retrieval_dir,
                        redis_url=args.redis_url, admin_token=token,
                        admin_token_env=args.admin_token_env, history=history,
                        workers=workers,
                        cors_origins=tuple(getattr(args, "cors_origin", None) or ()),
                        live=live)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status."""
    import uvicorn

    from qac.storage import open_model_dir

    config = config_from_args(args)
    http = _http_protocol()
    # getattr: qac demo builds its own namespace
    access_log = bool(getattr(args, "access_log", False))
    if config.workers == 1:
        from qac.server.app import create_app

        uvicorn.run(create_app(config), host=args.host, port=args.port,
                    log_level=args.log_level, http=http, access_log=access_log,
                    proxy_headers=False)
        return 0
    # Several workers: check the model files once here (fail fast, with the file
    # named), then let each worker load them without re-hashing; the arrays are
    # memory-mapped, so the workers share one copy in the page cache.
    open_model_dir(config.model_dir, verify=True)
    if config.retrieval_dir:
        open_model_dir(config.retrieval_dir, verify=True)
    if config.redis_url is None:
        log.warning("%d workers without --redis-url: each worker keeps its own sessions, "
                    "so a session's context depends on which worker answers", config.workers)
    # the workers follow a reload through files in a directory of their own
    control = tempfile.mkdtemp(prefix="qac-serve-")
    try:
        worker = replace(config, verify_model=False, control_dir=control)
        os.environ.update(worker.to_env())
        _nodelay_listening_socket(uvicorn.Config)
        uvicorn.run(FACTORY, factory=True, host=args.host, port=args.port,
                    workers=config.workers, log_level=args.log_level, http=http,
                    access_log=access_log, proxy_headers=False)
    finally:
        shutil.rmtree(control, ignore_errors=True)
    return 0


def _http_protocol() -> Any:
    """uvicorn's httptools protocol sending each response in one write
    (:mod:`qac.server.http`), or uvicorn's choice when httptools is missing."""
    try:
        from qac.server.http import CoalescingHttpToolsProtocol
    except ImportError:
        return "auto"
    return CoalescingHttpToolsProtocol


def _nodelay_listening_socket(config_cls: Any) -> None:
    """Turn Nagle's algorithm off on the socket uvicorn's worker processes share.

    With several workers uvicorn binds the socket in the parent and asyncio in each
    worker does not set TCP_NODELAY on connections accepted from it, so a small
    response waits for the client's delayed ACK: ~40 ms per keep-alive request.
    On Linux, accepted sockets inherit TCP_NODELAY from the listening socket.
    """
    import socket

    bind = config_cls.bind_socket
    if getattr(bind, "_qac_nodelay", False):
        return

    def bind_socket(self: Any) -> socket.socket:
        sock: socket.socket = bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    bind_socket._qac_nodelay = True  # type: ignore[attr-defined]
    config_cls.bind_socket = bind_socket

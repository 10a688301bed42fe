"""Server configuration: one frozen dataclass, validated on creation.

Worker processes started by uvicorn (``--workers N``) re-create it from the
environment: :meth:`ServerConfig.to_env` writes everything but the admin token as
JSON into ``QAC_SERVER_CONFIG``, and names the environment variable that holds the
token, so the secret never travels through argv or a second variable.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from qac.errors import InputError
from qac.live import LiveConfig
from qac.session import MAX_HISTORY

ENV_CONFIG = "QAC_SERVER_CONFIG"
# what a browser sends in its Origin header: scheme://host[:port], nothing after
_ORIGIN = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


@dataclass(frozen=True)
class ServerConfig:
    """What a server serves and the limits it enforces.

    model_dir:        completer model directory (required).
    retrieval_dir:    retriever model directory; without it /v1/search answers 404.
    redis_url:        session store URL; None keeps sessions in this process.
    admin_token:      bearer token of POST /v1/admin/reload and GET/POST
                      /v1/admin/blocklist; None turns those endpoints off.
    admin_token_env:  name of the environment variable the token came from (how
                      worker processes find it again); not needed in-process.
    max_query_chars:  longest prefix, search text or submitted query (characters).
    max_k:            largest k (k is 1..max_k); default_k when absent.
    max_body_bytes:   largest request body.
    verify_model:     check every model file's SHA-256 on load (reload always does).
    history:          distinct past queries kept per session id in the store, and the
                      most fetched per completion (0..1000; 0: no history is kept or
                      fetched). A completion fetches those that start with what the
                      model selects by (``Completer.history_prefix``), and no more
                      than the model reads (``Completer.history_limit``, 200 by
                      default); none when the model does not use history.
    workers:          worker processes of this replica (what a reload waits for).
    control_dir:      directory the workers share to follow a reload (``qac serve``
                      makes one when workers > 1); None: reload acts on this process.
    reload_timeout:   seconds the reload check (a child process that loads and queries
                      the new model) may take, and a reload waits for the workers.
    cors_origins:     origins (``scheme://host[:port]``, or ``*`` for any) whose pages
                      may call the API from a browser (CORS); empty: same origin only.
    live:             the event stream and live overlay (:class:`qac.live.LiveConfig`):
                      with ``redis_url`` every submitted query is appended to the stream
                      and every worker tails it; without, each worker feeds its own.
    live_wait:        seconds a worker waits at start (and a reload) for its overlay to
                      catch up with the stream before it answers with it.
    """

    model_dir: str
    retrieval_dir: str | None = None
    redis_url: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    admin_token_env: str | None = None
    max_query_chars: int = 256
    max_k: int = 50
    default_k: int = 10
    max_body_bytes: int = 4096
    verify_model: bool = True
    history: int = 200
    cors_origins: tuple[str, ...] = ()
    workers: int = 1
    control_dir: str | None = None
    reload_timeout: float = 60.0
    live: LiveConfig = field(default_factory=LiveConfig)
    live_wait: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.live, dict):  # from_env hands back a JSON object
            object.__setattr__(self, "live", LiveConfig.from_dict(self.live))
        if not isinstance(self.live, LiveConfig):
            raise InputError("ServerConfig.live: a LiveConfig needed")
        if (isinstance(self.live_wait, bool) or not isinstance(self.live_wait, int | float)
                or not 0 <= self.live_wait <= 3600):
            raise InputError(f"ServerConfig.live_wait: seconds in 0..3600, "
                             f"got {self.live_wait!r}")
        if not self.model_dir:
            raise InputError("ServerConfig.model_dir: a completer model directory is needed")
        if self.admin_token is not None and not self.admin_token.strip():
            raise InputError("ServerConfig.admin_token: empty (leave it unset to turn "
                             "the reload endpoint off)")
        for name in ("max_query_chars", "max_k", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise InputError(f"ServerConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if (isinstance(self.history, bool) or not isinstance(self.history, int)
                or not 0 <= self.history <= MAX_HISTORY):
            raise InputError(f"ServerConfig.history: an int in 0..{MAX_HISTORY}, "
                             f"got {self.history!r}")
        if isinstance(self.cors_origins, str):
            raise InputError("ServerConfig.cors_origins: a tuple of origins, got the string "
                             f"{self.cors_origins!r}")
        # from_env hands back a JSON list; keep the frozen config hashable
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not (origin == "*" or _ORIGIN.fullmatch(origin)):
                raise InputError(f"ServerConfig.cors_origins: {origin!r} is not an origin "
                                 "(scheme://host[:port], no path or trailing slash, or *)")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"ServerConfig.workers: an int >= 1, got {self.workers!r}")
        if (isinstance(self.reload_timeout, bool)
                or not isinstance(self.reload_timeout, int | float)
                or not 0 < self.reload_timeout <= 3600):
            raise InputError(f"ServerConfig.reload_timeout: seconds in (0, 3600], "
                             f"got {self.reload_timeout!r}")
        if not 1 <= self.default_k <= self.max_k:
            raise InputError(f"ServerConfig.default_k: must be in 1..{self.max_k}, "
                             f"got {self.default_k}")

    def to_env(self) -> dict[str, str]:
        """Environment for worker processes (the token itself is left out)."""
        d = asdict(self)
        del d["admin_token"]
        return {ENV_CONFIG: json.dumps(d)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerConfig:
        """The inverse of :meth:`to_env`, reading the token from ``admin_token_env``."""
        env = dict(os.environ if environ is None else environ)
        raw = env.get(ENV_CONFIG)
        if raw is None:
            raise InputError(f"{ENV_CONFIG} is not set (start the server with `qac serve`)")
        try:
            d: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{ENV_CONFIG}: not JSON ({exc})") from exc
        token_env = d.get("admin_token_env")
        token = None
        if token_env:
            token = env.get(token_env)
            if not token:
                raise InputError(f"admin token variable {token_env} is unset or empty")
        return cls(**d, admin_token=token)

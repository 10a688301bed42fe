"""HTTP service for completion and retrieval (Starlette + uvicorn) and its demo page.

``create_app(ServerConfig(model_dir=...))`` builds the app; ``add_serve_arguments`` and
``run_serve`` make up ``qac serve``. Names load lazily, so building the ``qac``
command line does not import Starlette, prometheus_client or the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qac.server.app import create_app
    from qac.server.config import ServerConfig
    from qac.server.serve import add_serve_arguments, run_serve

__all__ = ["ServerConfig", "add_serve_arguments", "create_app", "run_serve"]

_HOMES = {"create_app": "qac.server.app", "ServerConfig": "qac.server.config",
          "add_serve_arguments": "qac.server.serve", "run_serve": "qac.server.serve"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qac.server' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)

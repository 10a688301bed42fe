"""HTTP service for completion and retrieval (Starlette + uvicorn) and its demo page.

``create_app(ServerConfig(model_dir=...))`` builds the app; ``add_serve_arguments`` and
``run_serve`` make up ``qac serve``.
"""

from qac.server.app import create_app
from qac.server.config import ServerConfig
from qac.server.serve import add_serve_arguments, run_serve

__all__ = ["ServerConfig", "add_serve_arguments", "create_app", "run_serve"]

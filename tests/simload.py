"""``sim/load.py`` as a module for the tests (``sim/`` holds scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "sim" / "load.py"
_spec = importlib.util.spec_from_file_location("sim_load", _PATH)
assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)
sys.modules["sim_load"] = load  # its dataclasses look their module up there
_spec.loader.exec_module(load)

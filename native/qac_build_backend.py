"""PEP 517 backend: setuptools plus the ``cffi_modules`` keyword.

pyproject.toml cannot pass setup() keywords, and ``cffi_modules`` is how cffi
compiles an API-mode extension during ``pip install``. This backend is
setuptools' own with the setup script supplied here instead of a setup.py.
"""

from __future__ import annotations

from setuptools import build_meta as _bm
from setuptools.build_meta import *  # noqa: F403  (re-export the PEP 517 hooks)

_SETUP = "from setuptools import setup\nsetup(cffi_modules=['native/build_ffi.py:ffibuilder'])\n"


class _Backend(_bm._BuildMetaBackend):
    def run_setup(self, setup_script: str = "setup.py") -> None:
        __file__ = setup_script  # noqa: F841  (setup scripts may read it)
        __name__ = "__main__"  # noqa: F841
        exec(compile(_SETUP, "qac-setup", "exec"), locals())


_backend = _Backend()
get_requires_for_build_wheel = _backend.get_requires_for_build_wheel
get_requires_for_build_sdist = _backend.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = _backend.prepare_metadata_for_build_wheel
build_wheel = _backend.build_wheel
build_sdist = _backend.build_sdist
if hasattr(_backend, "build_editable"):
    get_requires_for_build_editable = _backend.get_requires_for_build_editable
    prepare_metadata_for_build_editable = _backend.prepare_metadata_for_build_editable
    build_editable = _backend.build_editable

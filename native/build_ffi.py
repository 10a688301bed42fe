"""cffi API-mode build script for ``qac._native`` (named in ``cffi_modules``).

The cdef is read from native/qac.h and the part headers it includes: every
block between ``QAC_CDEF_BEGIN`` and ``QAC_CDEF_END``. All ``native/*.c`` files
are compiled. ``QAC_SANITIZE=1`` builds the same sources with AddressSanitizer
and UBSan instead of -O3 (CI runs the kernel tests under that build);
``QAC_FUZZ=1`` (with ``CC=clang``) with clang's coverage instrumentation for the
fuzz targets of tests/fuzz.

Run directly (``python native/build_ffi.py``) to build the module in place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
_BLOCK = re.compile(r"/\* QAC_CDEF_BEGIN \*/(.*?)/\* QAC_CDEF_END \*/", re.S)
_INCLUDE = re.compile(r'^#include "(qac_[a-z_]+\.h)"', re.M)
_DEFINE = re.compile(r"^#define (\w+) .*$", re.M)


def _cdef_of(header: Path) -> str:
    text = header.read_text()
    blocks = "\n".join(_BLOCK.findall(text))
    return _DEFINE.sub(r"#define \1 ...", blocks)


def read_cdef() -> str:
    top = HERE / "qac.h"
    parts = [_cdef_of(top)]
    for name in _INCLUDE.findall(top.read_text()):
        parts.append(_cdef_of(HERE / name))
    return "\n".join(parts)


def _flags() -> tuple[list[str], list[str]]:
    common = ["-std=c11", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    fuzz = os.environ.get("QAC_FUZZ", "")
    if fuzz:
        # tests/fuzz: clang's coverage instrumentation for atheris (libFuzzer): what
        # -fsanitize=fuzzer-no-link adds but its stack-depth tracing, whose symbol
        # atheris's libFuzzer does not export; plus the sanitizers QAC_FUZZ names
        # ("1": coverage only)
        cov = ["-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp",
               "-fno-omit-frame-pointer"]
        san = [] if fuzz == "1" else [f"-fsanitize={fuzz}"]
        return common + ["-O1", "-g"] + cov + san, ["-pthread"] + san
    if os.environ.get("QAC_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        return common + ["-O1", "-g"] + san, ["-pthread"] + san
    return common + ["-O3", "-fno-math-errno", "-fno-trapping-math"], ["-pthread"]


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
_cflags, _ldflags = _flags()
ffibuilder.set_source(
    "qac._native",
    '#include "qac.h"',
    sources=sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c")),
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["m"],
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=False)

"""What the fuzz targets (``fuzz_*.py`` beside this file) share.

A target is a module with ``setup()`` (loads what it needs; called once, lazily) and
``one_input(data: bytes)``, which must return normally for every input: an uncaught
exception, a failed check or a signal is a finding. Targets do not import atheris,
so :mod:`test_fuzz` replays their corpora in-process (and under ASan in CI).

Run under atheris (``run.py`` does this), a target is coverage-guided twice over:

* the ``qac`` package is imported under ``atheris.instrument_imports``, so every
  Python branch of qac feeds libFuzzer;
* when ``QAC_FUZZ_BUILD`` names a directory holding a copy of qac whose C kernel was
  built by clang with ``-fsanitize-coverage`` (``QAC_FUZZ=1 native/build_ffi.py``),
  that copy is imported instead and its C branches feed libFuzzer too. Their
  coverage hooks are libFuzzer's, inside atheris's ``core_with_libfuzzer`` module,
  which Python loads privately: :func:`_share_libfuzzer` makes its symbols global
  before the kernel is loaded, so the kernel's counters register with libFuzzer.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # sessionlog


class Input:
    """Reads a fuzz input as a stream of choices (bytes past the end read as 0), so
    every input is valid and small edits to it make small changes to the choices."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def int(self, lo: int, hi: int) -> int:
        """An int in lo..hi (inclusive)."""
        span = hi - lo + 1
        raw = self.take(8 if span > 1 << 16 else 2)
        return lo + int.from_bytes(raw.ljust(8, b"\0"), "little") % span

    def choice(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.int(0, len(options) - 1)]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def chunk(self, most: int = 64) -> bytes:
        """A length-prefixed piece of the input (length = the next byte, at most ``most``)."""
        return self.take(min(self.byte(), most))

    def text(self, most: int = 64) -> str:
        return self.chunk(most).decode("utf-8", "surrogateescape")

    def float(self) -> float:
        raw = self.take(8).ljust(8, b"\0")
        return float(struct.unpack("<d", raw)[0])

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def use_fuzz_build() -> str | None:
    """Import qac from ``$QAC_FUZZ_BUILD`` (the clang-instrumented copy) if set."""
    build = os.environ.get("QAC_FUZZ_BUILD")
    if build:
        sys.path.insert(0, build)
    return build


def _share_libfuzzer() -> bool:
    """Whether atheris runs this process; if it runs its built-in libFuzzer, make that
    module's symbols global (see the module docstring). A libFuzzer preloaded with a
    sanitizer (``asan_with_fuzzer.so``, which ``run.py --sanitize`` uses) is global
    already."""
    if "atheris" not in sys.modules:
        return False
    if "atheris.core_with_libfuzzer" in sys.modules:
        spec = importlib.util.find_spec("atheris.core_with_libfuzzer")
        assert spec is not None and spec.origin is not None
        ctypes.CDLL(spec.origin, mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD | os.RTLD_NOW)
    return True


def import_qac(load: Callable[[], Any]) -> Any:
    """Run ``load`` (which imports qac modules) instrumented when atheris runs."""
    use_fuzz_build()
    if not _share_libfuzzer():
        return load()
    import atheris

    with atheris.instrument_imports(include=["qac"]):
        out = load()
    native = sys.modules.get("qac._native")
    where = getattr(native, "__file__", "") or ""
    build = os.environ.get("QAC_FUZZ_BUILD")
    how = "coverage-instrumented" if build and where.startswith(build) else "not instrumented"
    print(f"qac-fuzz: C kernel {where} ({how})", file=sys.stderr, flush=True)
    return out


def fuzz_main(setup: Callable[[], None], one_input: Callable[[bytes], None]) -> None:
    """``python fuzz_x.py [libFuzzer args]``: fuzz the target with atheris. The target's
    setup (which imports qac) runs at the first input: only then is libFuzzer's
    module loaded, and the kernel's coverage counters must register with it."""
    import atheris

    ready = False

    def run(data: bytes) -> None:
        nonlocal ready
        if not ready:
            setup()
            ready = True
        one_input(data)

    atheris.Setup(sys.argv, run)
    atheris.Fuzz()


def small_models(cache: Path) -> dict[str, Path]:
    """A tiny completer and retriever, trained once into ``cache``."""
    from sessionlog import pl_log

    from qac.complete import Completer, CompleterConfig
    from qac.retrieve import Retriever, default_config

    out = {"completer": cache / "completer", "retriever": cache / "retriever"}
    if not (out["completer"] / "manifest.json").exists():
        Completer.train(pl_log().events, CompleterConfig(trie_depth=1)).save(out["completer"])
    if not (out["retriever"] / "manifest.json").exists():
        words = ["red", "blue", "shoes", "shirt", "socks", "hat", "green", "boots"]
        pairs = [(f"item{i % 40}", f"{words[i % 8]} {words[(i * 3) % 8]}") for i in range(200)]
        Retriever.train(pairs, config=default_config(threads=1)).save(out["retriever"])
    return out


def model_cache() -> Path:
    """Where the fuzz targets keep their tiny models (per process: each run trains its
    own in well under a second)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.gettempdir()) / f"qac-fuzz-models-{os.getpid()}"
    if not path.exists():
        path.mkdir()
        atexit.register(shutil.rmtree, path, True)
    return path

"""Run the fuzz targets of tests/fuzz under atheris (coverage-guided libFuzzer).

    python tests/fuzz/run.py                      # every target, 20 s each
    python tests/fuzz/run.py --seconds 3600 kernel loader   # for hours
    python tests/fuzz/run.py --sanitize kernel    # the kernel built with ASan + UBSan

Each target runs in its own process: ``fuzz_<name>.py`` with a fresh working corpus
seeded from ``corpus/<name>/`` (the checked-in seeds and every past crash, which
``test_fuzz.py`` replays as regression tests). When clang is on PATH, the C kernel is
first built into a copy of qac with clang's coverage instrumentation
(``QAC_FUZZ=1 native/build_ffi.py``), so its branches guide the fuzzer as well as
qac's Python ones; ``--sanitize`` adds ASan + UBSan to that build and preloads
atheris's ``asan_with_fuzzer.so`` (present when atheris was built from source with
clang: ``pip install --no-binary atheris atheris``).

A crash is saved as ``crashes/<name>-crash-<sha1>`` (its traceback in the log); copy
it into ``corpus/<name>/`` under a name that says what it was, with the fix. The
summary gives each target's coverage and corpus size at start and end: a corpus
that does not grow means coverage feedback is not reaching libFuzzer, which fails
the run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGETS = ("kernel", "text", "logs", "loader", "http")
_STATS = re.compile(r"#(\d+)\s+(INITED|NEW|REDUCE|pulse|DONE)\s+cov: (\d+) ft: (\d+) "
                    r"corp: (\d+)/")


def _native_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "native").iterdir()):
        if p.suffix in (".c", ".h", ".py"):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def build_kernel(cache: Path, sanitize: bool) -> Path | None:
    """A copy of qac whose kernel clang built with coverage (and sanitizers); None
    without clang. Rebuilt only when native/ changes; qac's Python is copied fresh."""
    clang = shutil.which("clang")
    if clang is None:
        print("run.py: no clang on PATH: the C kernel is not coverage-instrumented "
              "(only qac's Python guides the fuzzer)", file=sys.stderr)
        return None
    flavour = "address,undefined" if sanitize else "1"
    build = cache / f"{'san' if sanitize else 'cov'}-{_native_hash()}"
    if not list((build / "qac").glob("_native*.so")):
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        shutil.copytree(ROOT / "native", build / "native")
        shutil.copytree(ROOT / "qac", build / "qac",
                        ignore=shutil.ignore_patterns("_native*", "__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", build)
        env = {**os.environ, "CC": clang, "LDSHARED": f"{clang} -shared", "QAC_FUZZ": flavour}
        t0 = time.monotonic()
        subprocess.run([sys.executable, "native/build_ffi.py"], cwd=build, env=env,
                       check=True, capture_output=True)
        print(f"run.py: built the kernel with clang (QAC_FUZZ={flavour}) in "
              f"{time.monotonic() - t0:.0f} s: {build}", file=sys.stderr)
    else:
        shutil.rmtree(build / "qac" / "__pycache__", ignore_errors=True)
        for src in (ROOT / "qac").rglob("*.py"):
            dst = build / "qac" / src.relative_to(ROOT / "qac")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return build


def _asan_preload() -> str | None:
    try:
        import atheris
    except ImportError:
        return None
    path = Path(atheris.path()) / "asan_with_fuzzer.so"
    return str(path) if path.exists() else None


def run_target(name: str, seconds: int, build: Path | None, preload: str | None,
               crashes: Path, work: Path) -> dict[str, object]:
    """Fuzz one target for ``seconds``; its stats at start and end, and any crash."""
    corpus = work / name
    corpus.mkdir(parents=True)
    seeds = HERE / "corpus" / name
    seeds.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if build is not None:
        env["QAC_FUZZ_BUILD"] = str(build)
    if preload is not None:
        env["LD_PRELOAD"] = preload
        env["ASAN_OPTIONS"] = "detect_leaks=0:allocator_may_return_null=1"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    crashes.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(corpus), str(seeds),
            f"-max_total_time={seconds}", f"-artifact_prefix={crashes}/{name}-",
            "-rss_limit_mb=6144", "-timeout=60", "-print_final_stats=1"]
    t0 = time.monotonic()
    done = subprocess.run(args, env=env, capture_output=True, text=True, errors="replace",
                          timeout=seconds + 600)
    log = done.stdout + done.stderr
    (crashes / f"{name}.log").write_text(log)
    stats = [m.groups() for m in _STATS.finditer(log)]
    first = next((s for s in stats if s[1] == "INITED"), stats[0] if stats else None)
    last = stats[-1] if stats else None
    found = sorted(str(p) for p in crashes.glob(f"{name}-*") if p.suffix != ".log")
    return {
        "target": name, "exit": done.returncode, "seconds": round(time.monotonic() - t0),
        "runs": int(last[0]) if last else 0,
        "cov": (int(first[2]), int(last[2])) if first and last else None,
        "corp": (int(first[4]), int(last[4])) if first and last else None,
        "crashes": found,
        "c_coverage": "(coverage-instrumented)" in log,
        "log": str(crashes / f"{name}.log"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", default=list(TARGETS), help=f"any of {TARGETS}")
    ap.add_argument("--seconds", type=int, default=20, help="per target (default 20)")
    ap.add_argument("--sanitize", action="store_true",
                    help="build the kernel with ASan + UBSan (needs clang and atheris's "
                         "asan_with_fuzzer.so)")
    ap.add_argument("--crashes", type=Path, default=HERE / "crashes",
                    help="where crashes and logs go (default tests/fuzz/crashes)")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "qac-fuzz-build",
                    help="where the instrumented kernel is built")
    a = ap.parse_args(argv)
    bad = sorted(set(a.targets) - set(TARGETS))
    if bad:
        ap.error(f"unknown targets {bad}; known: {TARGETS}")
    preload = None
    if a.sanitize:
        preload = _asan_preload()
        if preload is None or shutil.which("clang") is None:
            ap.error("--sanitize needs clang and atheris built from source with it "
                     "(asan_with_fuzzer.so); see the module docstring")
    build = build_kernel(a.cache, a.sanitize)
    failed = False
    with tempfile.TemporaryDirectory(prefix="qac-fuzz-corpus-") as work:
        for name in a.targets:
            r = run_target(name, a.seconds, build, preload, a.crashes, Path(work))
            grew = r["corp"] is not None and r["corp"][1] > r["corp"][0]  # type: ignore[index]
            ok = r["exit"] == 0 and not r["crashes"] and grew
            failed |= not ok
            print(f"{name:7s} {'ok  ' if ok else 'FAIL'} {r['seconds']:>4} s  runs {r['runs']:>8}"
                  f"  cov {r['cov']}  corpus {r['corp']}  C coverage "
                  f"{'yes' if r['c_coverage'] else 'no'}"
                  + (f"  crashes {r['crashes']}" if r["crashes"] else "")
                  + ("" if grew else "  (corpus did not grow: no coverage feedback?)")
                  + ("" if ok else f"  log {r['log']}"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

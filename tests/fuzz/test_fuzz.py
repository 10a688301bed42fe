"""The fuzz targets in the test suite (issue 15).

* Every input under ``corpus/<target>/`` (seeds, and each crash a fuzzing run found,
  kept with its fix) is replayed through the target in this process: a regression
  test per crash. CI replays them under ASan + UBSan too (.ci/run).
* Every target is fuzzed for ``QAC_FUZZ_SECONDS`` (default 20) by ``run.py``: no
  crash, and its corpus must grow (coverage feedback reaches libFuzzer; with clang on
  PATH the C kernel's branches count too).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import TARGETS  # noqa: E402

REGRESSIONS = sorted(p for t in TARGETS for p in (HERE / "corpus" / t).glob("*"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_corpus_input_still_passes(path: Path) -> None:
    target = importlib.import_module(f"fuzz_{path.parent.name}")
    target.one_input(path.read_bytes())


def test_every_target_has_seeds_and_the_crashes_found_so_far() -> None:
    crashes = [p for p in REGRESSIONS if p.name.startswith("crash-")]
    assert len(crashes) >= 6  # the loader's and the HTTP handlers' (see their names)
    for t in TARGETS:
        assert list((HERE / "corpus" / t).glob("*")), t


@pytest.mark.slow
def test_each_target_fuzzes_without_a_crash_and_its_corpus_grows(tmp_path: Path) -> None:
    import atheris  # noqa: F401  (a test dependency: missing is a failure, not a skip)

    seconds = os.environ.get("QAC_FUZZ_SECONDS", "20")
    done = subprocess.run([sys.executable, str(HERE / "run.py"), "--seconds", seconds,
                           "--crashes", str(tmp_path / "crashes")],
                          capture_output=True, text=True, timeout=len(TARGETS) * 900)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.count(" ok ") == len(TARGETS), done.stdout

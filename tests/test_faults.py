"""sim/faults.py as a test (issue 15): Redis killed, stalled, refusing writes and
holding poisoned keys under load, a model directory swapped mid-load, a full disk
during save: 0 failed completions and no acknowledged write lost in each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_fault_scenario_holds() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "sim" / "faults.py"), "--rate", "80",
                           "--swap-seconds", "5"], capture_output=True, text=True,
                          timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if " ok " in ln or "FAIL" in ln]
    assert len(lines) == 6 and all(" ok " in ln for ln in lines), done.stdout
    for ln in lines:
        assert "completions failed 0" in ln, ln
        assert "lost" not in ln or "acknowledged writes lost 0" in ln, ln

"""sim/load.py's server-CPU probe: the CPU time of a process and its children, from
/proc, which the load bench divides by the requests it sent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from simload import load

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

#: a child that burns 1.5 s of CPU, then sleeps (a process that exited is not counted)
CHILD = ("import time\nt = time.process_time()\n"
         "while time.process_time() - t < 1.5: pass\ntime.sleep(30)\n")
PARENT = ("import subprocess, sys, time\n"
          f"subprocess.Popen([sys.executable, '-c', {CHILD!r}])\ntime.sleep(30)\n")


def test_a_busy_child_counts_for_its_parent() -> None:
    # the parent sleeps while its child burns: the tree's CPU time grows by about what
    # the child burns
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        before = load.process_tree_cpu(parent.pid)
        assert before is not None
        grown, deadline = 0.0, time.time() + 20
        while grown < 1.0 and time.time() < deadline:
            time.sleep(0.05)
            now = load.process_tree_cpu(parent.pid)
            assert now is not None
            grown = now - before
        assert grown >= 1.0
    finally:
        for child in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split():
            subprocess.run(["kill", child], check=False)
        parent.kill()
        parent.wait()


def test_a_process_that_is_gone_gives_none() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert load.process_tree_cpu(p.pid) is None

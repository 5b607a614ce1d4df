"""The memory benchmark's process-tree accounting, on this test's own processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from benchmarks.memory import descendants, process_memory


def test_descendants_include_children_and_grandchildren() -> None:
    code = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); time.sleep(30)"  # noqa: E501
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    try:
        tree = descendants(os.getpid())
        assert {os.getpid(), child.pid, grandchild} <= set(tree)
        assert child.pid in descendants(child.pid) and os.getpid() not in descendants(child.pid)
    finally:
        os.kill(grandchild, signal.SIGKILL)
        child.kill()
        child.wait()


def test_process_memory_reads_rss_and_pss() -> None:
    ours = process_memory(os.getpid())
    assert ours is not None
    assert ours["process"].startswith("python")
    assert 0 < ours["pss_mib"] <= ours["rss_mib"] < 4096


def test_a_process_that_has_gone_reads_as_none() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: its /proc entry is gone
    assert process_memory(finished.pid) is None

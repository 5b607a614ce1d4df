"""A replica brings its threads back to nice 0 where Ray started it nicer, or says why not."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from serving.replica import normal_priority


def run_in_thread(niceness: int) -> int:
    """Start a thread at ``niceness`` (raising it needs no privilege), call normal_priority
    there, and return the thread's niceness afterwards."""
    result: list[int] = []

    def body() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)  # on Linux: this thread only
        normal_priority()
        result.append(os.getpriority(os.PRIO_PROCESS, 0))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    return result[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering niceness needs CAP_SYS_NICE (root)")
def test_nice_thread_is_brought_back_to_zero() -> None:
    assert run_in_thread(15) == 0


def test_without_privilege_it_warns_and_carries_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(which: int, who: int, value: int) -> None:
        if value < os.getpriority(which, who):
            raise PermissionError("not permitted")

    real = os.setpriority
    monkeypatch.setattr(os, "setpriority", lambda w, who, v: refuse(w, who, v) or real(w, who, v))
    with caplog.at_level(logging.WARNING, logger="serving.server"):
        assert run_in_thread(15) == 15
    assert "RAY_worker_niceness=0" in caplog.text

"""The antigravity harness processes that tests start, found through psutil.

psutil is named in the ``test`` extra: IPython pulls it in only on some versions, and CI's
interpreter may already hold an IPython that does not.
"""

from __future__ import annotations

import time

import psutil


def _is_live_harness(proc: psutil.Process) -> bool:
    try:
        return proc.name().startswith("localharness") and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # it ended while we looked
        return False


def harness_pids() -> set[int]:
    """``localharness`` processes anywhere below this test process (kernels' children too)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if _is_live_harness(p)}


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as ended)."""
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.Error:
            pass
    return out


def wait_no_harness(timeout: float = 10.0) -> set[int]:
    """Wait until no harness runs below this process; the ones left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := harness_pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left

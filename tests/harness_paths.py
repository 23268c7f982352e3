"""Process helpers of the tests (Linux ``/proc``): a server's worker processes, and stopping
a server subprocess the way an operator does."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "parity_benchmarks_harness", Path(__file__).resolve().parent.parent / "benchmarks" / "harness.py")
_harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _harness
_spec.loader.exec_module(_harness)

child_pids = _harness.child_pids  # one reading of /proc for the benchmarks and the tests


def stop(server: subprocess.Popen, timeout: float = 30) -> str:
    """SIGINT to ``server`` (killed if it has not exited within ``timeout``); its stderr."""
    server.send_signal(signal.SIGINT)
    try:
        _out, err = server.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        _out, err = server.communicate()
    return err


def kill_a_worker(server: subprocess.Popen, pid: int, workers: int = 2, settle: float = 1.0) -> None:
    """SIGKILL worker ``pid`` of ``server`` and wait until the supervisor has started another
    in its place (``workers`` children again), plus ``settle`` seconds for it to build its app."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(child_pids(server.pid)) != workers or pid in child_pids(server.pid):
        assert time.monotonic() < deadline, "no worker was started in place of the dead one"
        time.sleep(0.1)
    time.sleep(settle)

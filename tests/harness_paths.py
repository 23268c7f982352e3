"""Process helpers of the tests (Linux ``/proc``)."""

from __future__ import annotations

import os


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (empty when it has none or is gone)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return sorted(set(out))

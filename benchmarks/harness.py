"""What every Parity benchmark measures the same way: latency percentiles, CPU seconds per
process and for the whole machine (from ``/proc``), the machine and the package versions.

The benchmark scripts import it by plain name (``benchmarks/`` is put on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Iterable, Sequence


def latency_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, p50/p90/p99/p99.9, min, max and mean in milliseconds of latencies in seconds."""
    import numpy as np

    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if len(ms) == 0:
        return {"count": 0}
    return {"count": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "p999_ms": round(float(np.percentile(ms, 99.9)), 4), "max_ms": round(float(ms.max()), 4),
            "min_ms": round(float(ms.min()), 4), "mean_ms": round(float(ms.mean()), 4)}


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _group_cpu(pid: int | Sequence[int]) -> float | None | list[float | None]:
    return proc_cpu(pid) if isinstance(pid, int) else [proc_cpu(p) for p in pid]


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (from ``/proc``; empty when it has none or is gone)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return sorted(set(out))


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, from ``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuWatch:
    """CPU seconds of named processes and of the whole machine over a phase: either
    ``with CpuWatch(pids) as cpu: ...`` (then ``cpu.report``) or ``watch = CpuWatch(pids).begin()``
    ... ``watch.end()`` (returns the report; call it while the processes still run)."""

    def __init__(self, pids: dict[str, int | Sequence[int]]):
        """``pids``: a name per process, or per group of processes (a list: their sum, e.g. a
        server's supervisor and its workers; each member is reported in ``members_cpu_s``)."""
        self.pids = dict(pids)
        self.report: dict[str, Any] = {}

    def begin(self) -> "CpuWatch":
        self.t0 = time.perf_counter()
        self.busy0 = machine_busy()
        self.cpu0 = {name: _group_cpu(pid) for name, pid in self.pids.items()}
        return self

    def end(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        busy = machine_busy() - self.busy0
        per, members = {}, {}
        for name, pid in self.pids.items():
            before, after = self.cpu0.get(name), _group_cpu(pid)
            if isinstance(before, list) and isinstance(after, list):
                spent = [None if b is None or a is None else round(a - b, 2) for b, a in zip(before, after)]
                members[name] = spent
                per[name] = None if None in spent else round(sum(spent), 2)
            else:
                per[name] = None if before is None or after is None else round(after - before, 2)
        known = sum(v for v in per.values() if v is not None)
        other = max(0.0, busy - known)
        cores = os.cpu_count() or 1
        self.report = {
            "wall_s": round(wall, 2), "cores": cores, "cpu_s": {**per, "other_processes": round(other, 2)},
            "machine_busy_s": round(busy, 2),
            "machine_busy_pct_of_all_cores": round(100 * busy / (wall * cores), 1) if wall else None,
            "pct_of_one_core": {**{k: (None if v is None else round(100 * v / wall, 1)) for k, v in per.items()},
                                "other_processes": round(100 * other / wall, 1) if wall else None},
        }
        if members:
            self.report["members_cpu_s"] = members
        return self.report

    def __enter__(self) -> "CpuWatch":
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        self.end()


def machine() -> dict[str, Any]:
    """Cores, platform, Python, memory and CPU model of this machine."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def code_hash(repo, paths: Iterable) -> str:
    """A hash of the measured code (``paths``: files under ``repo``): pins what was measured
    even when files are uncommitted, and shows whether they changed during the run."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(repo)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_state(repo, watched: Sequence[str], digest: str) -> dict[str, Any]:
    """The git commit, the uncommitted files among ``watched`` (paths under ``repo``) and the
    code hash ``digest``."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  check=True).stdout.rstrip("\n")
        except (OSError, subprocess.CalledProcessError):
            return None

    changed = git("status", "--porcelain", "--", *watched)
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": [line[3:] for line in changed.splitlines() if line.strip()] if changed else [],
            "code_sha256": digest}

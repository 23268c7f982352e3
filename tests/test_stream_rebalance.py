"""Two ``parity stream`` processes share the partitions; one is SIGKILLed mid-stream.

Events are produced while engine A runs alone, then engine B joins the same consumer group
(the group rebalances: each process holds part of the partitions and commits its own
batches), then A is killed while both work (with events still to apply). After A's session ends, B is assigned every
partition and drains. The offline log must hold every produced event exactly once, and the
online values of the busiest users and videos must equal the DuckDB training set over that
log at the same instant (event-time mode: every event applied once).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from parity.feature_store import FeatureStore
from stream_fixtures import assert_landed_once, assert_online_equals_training_set

RUN = [sys.executable, "-m", "parity.cli"]
SENT = 40_000


def parity(*args, cwd, timeout=180):
    result = subprocess.run([*RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


class Engine:
    """A ``parity stream`` process whose output lines are collected as they come."""

    def __init__(self, cwd, *extra):
        self.process = subprocess.Popen([*RUN, "stream", *extra], cwd=cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def assigned(self) -> list[set[str]]:
        """The partitions (``topic/partition``) of each ``assigned`` line so far."""
        return [{f"{topic}/{p}" for part in line.removeprefix("assigned ").split("; ")
                 for topic, ps in [part.split(" ", 1)] for p in ps.split(",")}
                for line in self.lines if line.startswith("assigned ")]

    def assignments(self) -> list[int]:
        return [len(a) for a in self.assigned()]

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.process.poll() is None, f"engine exited early: {self.lines}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.lines}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def test_two_engines_share_partitions_and_one_is_killed(tmp_path):
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    parity("apply", cwd=project)
    engines: list[Engine] = []
    producer = None
    try:
        parity("dev", "up", cwd=project)
        store = FeatureStore(project / "feature_store.yaml")
        producer = subprocess.Popen([*RUN, "produce", "--count", str(SENT), "--rate", "2000", "--seed", "5", "--quiet"],
                                    cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        a = Engine(project)
        engines.append(a)
        a.wait_for(lambda: a.assignments(), 60, "engine A's assignment")
        total = a.assignments()[0]
        b = Engine(project, "--idle-exit", "5")
        engines.append(b)
        # the group rebalances: both hold part of the partitions
        b.wait_for(lambda: b.assignments() and 0 < b.assignments()[-1] < total, 60, "engine B's share")
        a.wait_for(lambda: len(a.assignments()) >= 2 and a.assignments()[-1] < total, 30, "engine A's share")
        share_a, share_b = a.assigned()[-1], b.assigned()[-1]
        assert share_a and share_b and not share_a & share_b
        before = store.online_writer().read_progress()

        def both_committed() -> bool:  # each process advanced offsets of its own share
            now = store.online_writer().read_progress()
            moved = {k.removeprefix("offset/") for k, v in now.items() if k.startswith("offset/") and before.get(k) != v}
            return bool(moved & share_a) and bool(moved & share_b)

        b.wait_for(both_committed, 60, "both engines committing their shares")
        applied = sum(int(v) + 1 for k, v in store.online_writer().read_progress().items() if k.startswith("offset/"))
        assert applied < SENT, "everything was applied before the kill: nothing in flight"
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        # after A's session times out, B holds everything and drains
        b.wait_for(lambda: b.assignments()[-1] == total, 60, "engine B taking every partition")
        out, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err
        assert out.startswith(f"sent {SENT:,} events"), out
        assert b.process.wait(180) == 0, b.lines
        assert any(line.startswith("consumed ") and "dead letters: none" in line for line in b.lines), b.lines

        assert_landed_once(store, SENT)
        assert_online_equals_training_set(store)
    finally:
        for engine in engines:
            engine.stop()
        if producer is not None and producer.poll() is None:
            producer.kill()
        subprocess.run([*RUN, "dev", "down"], cwd=project, capture_output=True)

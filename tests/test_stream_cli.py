"""``parity stream`` end to end, with a SIGKILL in the middle: nothing lost, nothing twice.

The example project streams synthetic events from ``parity produce`` through the embedded
broker into the embedded Redis and the offline log. The engine is killed (SIGKILL) while it
works and restarted; after the drain, the offline log holds every produced event exactly
once, and the online values of a sample of users and videos equal the DuckDB training set
computed from that log at the same instant (event-time mode: every event is applied).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from parity.feature_store import FeatureStore
from stream_fixtures import assert_landed_once, assert_online_equals_training_set

RUN = [sys.executable, "-m", "parity.cli"]


def parity(*args, cwd, timeout=180):
    result = subprocess.run([*RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def test_stream_survives_a_sigkill_and_matches_the_training_set(tmp_path):
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    parity("apply", cwd=project)
    try:
        parity("dev", "up", cwd=project)
        sent = parity("produce", "--count", "6000", "--rate", "0", "--seed", "3", "--quiet", cwd=project)
        assert sent.stdout.startswith("sent 6,000 events"), sent.stdout
        engine = subprocess.Popen([*RUN, "stream"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        store = FeatureStore(project / "feature_store.yaml")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it once it has committed something
            progress = store.online_writer().read_progress()
            if any(k.startswith("offset/") for k in progress):
                break
            time.sleep(0.05)
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        assert any(k.startswith("offset/") for k in store.online_writer().read_progress()), "killed too early"
        drained = parity("stream", "--idle-exit", "4", cwd=project)
        assert "dead letters: none" in drained.stdout
        report = json.loads(parity("status", "--json", "--sample", "0", cwd=project).stdout)
        assert report["engine"]["events"] > 0  # committed with the batch, so the killed process's batch counts
        assert {v["view"] for v in report["views"]} >= {"user_engagement@1", "video_safety@1"}
        assert all(v["event_time_lag_s"] is not None for v in report["views"] if v["view"] != "user_profile@1"), report
        applied = {(p["topic"], p["partition"]): (p["applied_offset"], p["landed_offset"])
                   for p in report["partitions"]}
        assert applied and all(a == landed for a, landed in applied.values())
        table = parity("status", "--sample", "0", cwd=project).stdout
        assert "user_engagement@1" in table and "engine:" in table and "dead letters: none" in table

        assert_landed_once(store, 6000)
        assert_online_equals_training_set(store, 5)
    finally:
        subprocess.run([*RUN, "dev", "down"], cwd=project, capture_output=True)


def test_status_while_streaming_shows_rate_freshness_and_lag(tmp_path):
    """`parity status` taken while `parity produce` sends 2,000 events/s and `parity stream`
    applies them: a rate, every streamed view fresh with its lags, partitions with offsets."""
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    parity("apply", cwd=project)
    procs = []
    try:
        parity("dev", "up", cwd=project)
        procs.append(subprocess.Popen([*RUN, "produce", "--rate", "2000", "--duration", "20", "--quiet"],
                                      cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        procs.append(subprocess.Popen([*RUN, "stream"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        store = FeatureStore(project / "feature_store.yaml")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                k.startswith("offset/") for k in store.online_writer().read_progress()):
            time.sleep(0.1)
        time.sleep(2)  # a few batches in
        assert procs[0].poll() is None and procs[1].poll() is None, "producer and engine still running"
        report = json.loads(parity("status", "--json", "--sample", "2", cwd=project).stdout)
        assert procs[0].poll() is None, "the status was taken while events were still produced"
        engine = report["engine"]
        assert engine["events_per_s"] is not None and engine["events_per_s"] > 500, engine
        streamed = {v["view"]: v for v in report["views"] if v["view"] != "user_profile@1"}
        assert set(streamed) == {"user_engagement@1", "video_engagement@1", "video_safety@1", "creator_follows@1"}
        for view in streamed.values():
            assert view["ingestion_lag_s"] is not None and view["ingestion_lag_s"] < view["freshness_slo_s"], view
            assert not view["stale"] and view["event_time_lag_s"] is not None, view
        assert {p["topic"] for p in report["partitions"]} == {"video_events", "follow_events"}
        assert all(p["consumer_lag"] is not None and p["consumer_lag"] >= 0 for p in report["partitions"]), report
        table = parity("status", "--sample", "1", cwd=project).stdout
        rows = {line.split()[0]: line for line in table.splitlines() if "@" in line.split(" ", 1)[0]}
        assert all(rows[name].endswith("fresh") for name in streamed), table
        assert "events/s" in table and "video_events" in table, table
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        subprocess.run([*RUN, "dev", "down"], cwd=project, capture_output=True)

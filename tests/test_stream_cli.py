"""``parity stream`` end to end, with a SIGKILL in the middle: nothing lost, nothing twice.

The example project streams synthetic events from ``parity produce`` through the embedded
broker into the embedded Redis and the offline log. The engine is killed (SIGKILL) while it
works and restarted; after the drain, the offline log holds every produced event exactly
once, and the online values of a sample of users and videos equal the DuckDB training set
computed from that log at the same instant (event-time mode: every event is applied).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from parity.feature_store import FeatureStore
from parity.registry.durations import to_micros

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
        assert report["engine"]["events"] > 0  # best effort: a batch killed before publishing is not counted
        assert {v["view"] for v in report["views"]} >= {"user_engagement@1", "video_safety@1"}
        assert all(v["event_time_lag_s"] is not None for v in report["views"] if v["view"] != "user_profile@1")
        applied = {(p["topic"], p["partition"]): (p["applied_offset"], p["landed_offset"])
                   for p in report["partitions"]}
        assert applied and all(a == landed for a, landed in applied.values())
        table = parity("status", "--sample", "0", cwd=project).stdout
        assert "user_engagement@1" in table and "engine:" in table and "dead letters: none" in table

        scan = store.scan_sql("video_events")
        follows = store.scan_sql("follow_events")
        counts = duckdb.sql(f"SELECT count(*), count(DISTINCT (_partition, _offset)), count(DISTINCT event_id) "
                            f"FROM {scan}").fetchall()[0]
        follow_count = duckdb.sql(f"SELECT count(*) FROM {follows}").fetchall()[0][0]
        assert counts[0] == counts[1] == counts[2], counts          # each event landed once
        assert counts[0] + follow_count == 6000, (counts, follow_count)

        now = datetime.now(timezone.utc).replace(tzinfo=None)
        users = [r[0] for r in duckdb.sql(f"SELECT user_id FROM {scan} GROUP BY 1 ORDER BY count(*) DESC LIMIT 5")
                 .fetchall()]
        videos = [r[0] for r in duckdb.sql(f"SELECT video_id FROM {scan} GROUP BY 1 ORDER BY count(*) DESC LIMIT 5")
                  .fetchall()]
        features = ["user_engagement:plays_1h", "user_engagement:watch_ms_24h", "user_engagement:skips_1h",
                    "video_engagement:plays_10m", "video_engagement:likes_1h", "video_engagement:watch_ms_mean_24h"]
        online = store.get_online_features({"user_id": users, "video_id": videos}, features=features, now=now)
        spine = pa.table({"user_id": users, "video_id": videos, "ts": pa.array([now] * 5, pa.timestamp("us"))})
        offline = store.get_training_set(spine, features=features).to_pylist()
        for name in online.names:
            for i in range(5):
                got, want = online.values[name][i], offline[i][name]
                if isinstance(want, float):
                    assert abs(got - want) <= 1e-9 * max(abs(want), 1e-300), (name, i, got, want)
                else:
                    assert got == want, (name, i, got, want)
        assert sum(online.values["user_engagement__watch_ms_24h"]) > 0
    finally:
        subprocess.run([*RUN, "dev", "down"], cwd=project, capture_output=True)

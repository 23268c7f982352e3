"""The README's main job (``make demo`` = ``python -m parity.demo``), run as a user runs it.

In a fresh ``parity init`` project: it must exit 0, the live events must change online
values (the demo prints each watched value before and after streaming), and afterwards the
online store must agree with the DuckDB training set over the offline log at one instant:
the backfilled and materialized history plus the streamed events, read both ways.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from parity.feature_store import FeatureStore
from stream_fixtures import assert_online_equals_training_set

RUN = [sys.executable, "-m", "parity.cli"]
CHANGE = re.compile(r"^(\w+)\s+(\w+)=(\d+)\s+(.+?) \((\w+)\) -> (.+?) \((\w+)\)$")


def test_demo_streams_live_events_into_online_values(tmp_path):
    subprocess.run([*RUN, "init", "p"], cwd=tmp_path, check=True, capture_output=True)
    project = tmp_path / "p"
    try:
        demo = subprocess.run([sys.executable, "-m", "parity.demo", "feature_store.yaml"], cwd=project,
                              capture_output=True, text=True, timeout=600)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        section = demo.stdout.split("What the live events changed")[1]
        changes = [CHANGE.match(line).groups() for line in section.splitlines() if CHANGE.match(line)]
        assert len(changes) == 13, section  # 3 videos x 3 features + 2 users x 2 features
        for name, _key, _id, before, _was, after, status in changes:
            assert status == "ok", (name, status)  # streamed just now: fresh, present
            if name.endswith("_1h"):  # history ends at midnight: the last hour is the live events'
                assert int(after) > int(before), (name, before, after)
        assert "dead letters: none" in demo.stdout
        assert "warning:" not in demo.stderr, demo.stderr  # the backfill covers every view's retention
        store = FeatureStore(project / "feature_store.yaml")
        assert_online_equals_training_set(store, 3)
        # latest values with a 30 d ttl: the heaviest users' profiles, online as offline
        users = [r[0] for r in duckdb.sql(f"SELECT user_id FROM {store.scan_sql('video_events')} "
                                          f"GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 20").fetchall()]
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        online = store.get_online_features({"user_id": users}, features=["user_profile:*"], now=now)
        spine = pa.table({"user_id": users, "ts": pa.array([now] * len(users), pa.timestamp("us"))})
        offline = store.get_training_set(spine, features=["user_profile:*"]).to_pydict()
        assert any(v is not None for v in offline["user_profile__country"])
        for name in online.names:  # online timestamps are aware (UTC), the training set's naive UTC
            got = [v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in online.values[name]]
            assert got == offline[name], name
    finally:
        subprocess.run([*RUN, "dev", "down"], cwd=project, capture_output=True)

"""Checks shared by the end-to-end stream tests (example project, `parity stream` processes)."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pyarrow as pa

FEATURES = ["user_engagement:plays_1h", "user_engagement:watch_ms_24h", "user_engagement:skips_1h",
            "video_engagement:plays_10m", "video_engagement:likes_1h", "video_engagement:watch_ms_mean_24h"]


def assert_landed_once(store, sent: int) -> None:
    """The offline log holds every produced event exactly once (by Kafka position and event id)."""
    videos = duckdb.sql(f"SELECT count(*), count(DISTINCT (_partition, _offset)), count(DISTINCT event_id) "
                        f"FROM {store.scan_sql('video_events')}").fetchall()[0]
    follows = duckdb.sql(f"SELECT count(*), count(DISTINCT (_partition, _offset)) "
                         f"FROM {store.scan_sql('follow_events')}").fetchall()[0]
    assert videos[0] == videos[1] == videos[2], videos
    assert follows[0] == follows[1], follows
    assert videos[0] + follows[0] == sent, (videos, follows)


def assert_online_equals_training_set(store, n: int = 8) -> None:
    """Online values of the ``n`` busiest users and videos, at one instant, equal the DuckDB
    training set over the offline log at that instant (event-time mode: every event applied)."""
    scan = store.scan_sql("video_events")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    busiest = f"GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {n}"
    users = [r[0] for r in duckdb.sql(f"SELECT user_id FROM {scan} {busiest}").fetchall()]
    videos = [r[0] for r in duckdb.sql(f"SELECT video_id FROM {scan} {busiest}").fetchall()]
    online = store.get_online_features({"user_id": users, "video_id": videos}, features=FEATURES, now=now)
    spine = pa.table({"user_id": users, "video_id": videos, "ts": pa.array([now] * n, pa.timestamp("us"))})
    offline = store.get_training_set(spine, features=FEATURES).to_pylist()
    for name in online.names:
        for i in range(n):
            got, want = online.values[name][i], offline[i][name]
            if isinstance(want, float):
                assert abs(got - want) <= 1e-9 * max(abs(want), 1e-300), (name, i, got, want)
            else:
                assert got == want, (name, i, got, want)
    assert sum(online.values["user_engagement__watch_ms_24h"]) > 0

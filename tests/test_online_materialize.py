"""Bootstrap: backfilled tiles loaded by ``materialize`` answer like the training set.

Events land in the offline log, ``backfill`` writes the tiles, ``materialize`` loads them
into a real Redis, and lookups at hop-aligned and arbitrary times after the watermark
equal the DuckDB training set at the same times (event-time mode), and the oracle.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pytest

import oracle
from batch_fixtures import BASE, DEFS, EVENT_SCHEMA
from parity.registry.config import FeatureStoreConfig
from parity.registry.durations import to_micros
from parity.feature_store import FeatureStore

END = BASE + timedelta(days=1)


@pytest.fixture
def store(tmp_path, redis_server, redis):
    config = FeatureStoreConfig(project="m", root=tmp_path,
                                online_store={"type": "redis", "connection_string": redis_server.url})
    return FeatureStore(config, definitions=DEFS)


def make_events():
    rows = []
    for i in range(300):
        ts = BASE - timedelta(days=2) + timedelta(minutes=13 * i, microseconds=i)
        rows.append({"user_id": 1 + i % 3, "kind": "ab"[i % 2] if i % 7 else None, "amount": (i * 37) % 101 - 50,
                     "score": ((i * 13) % 17) / 8 if i % 5 else None, "ts": ts, "_ingested_at": ts,
                     "_applied_at": None, "_partition": -1, "_offset": i})
    return [r for r in rows if r["ts"] < END]


def test_materialized_tiles_answer_like_the_training_set_and_the_oracle(store):
    rows = make_events()
    store.offline_log.write(DEFS.source("ev"), pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), batch_id="b1")
    store.backfill(BASE - timedelta(days=40), END)
    clock = lambda: to_micros(END)  # noqa: E731
    summary = store.materialize(clock=clock)
    assert summary.tiles > 0
    reader = store.online_reader(clock=clock)
    for row in rows:
        row["_ts"], row["_order"] = row["ts"], (row["_partition"], row["_offset"])
    nows = [END, END + timedelta(minutes=5), END + timedelta(minutes=7, seconds=3), END + timedelta(hours=1),
            END + timedelta(hours=1, microseconds=1), END + timedelta(days=1)]
    spine = pa.table({"user_id": [u for _ in nows for u in (1, 2, 3, 9)],
                      "ts": pa.array([n for n in nows for _ in range(4)], pa.timestamp("us"))})
    training = store.get_training_set(spine, features=["u:*", "o:*"]).to_pylist()
    for i, now in enumerate(nows):
        result = reader.get_online_features({"user_id": [1, 2, 3, 9]}, features=["u:*", "o:*"], now=to_micros(now))
        for name in result.names:
            view_name, feature_name = name.split("__")
            view = DEFS.view(view_name)
            for j, uid in enumerate((1, 2, 3, 9)):
                got = result.values[name][j]
                offline = training[i * 4 + j][name]
                want = oracle.feature_value(view, view.feature(feature_name), rows, {"user_id": uid}, now)
                assert oracle.close(want, got), (name, uid, now, want, got)
                assert oracle.close(offline, got), (name, uid, now, offline, got)
        assert all(s == "missing" for s in result.status["u__n_10m"][3:]), "user 9 has no events"
    # idempotent: materializing again changes no stored value (only each entity's write counter)
    def contents():
        client = store._redis()
        return {k: {f: v for f, v in client.hgetall(k).items() if f != b"_v"} for k in client.keys("p:m:*e:*")}

    before = contents()
    store.materialize(clock=clock)
    assert contents() == before


def test_materialize_names_the_part_of_the_retention_no_backfill_covers(store, capsys):
    """Events logged two days before END, backfilled only over END's day: view ``o`` (1 h
    windows) loses nothing, view ``u`` (lifetime windows: it needs the whole log) misses the
    log's first day onwards; a backfill over the rest closes the gap."""
    rows = make_events()
    store.offline_log.write(DEFS.source("ev"), pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), batch_id="b1")
    store.backfill(BASE, END)
    clock = lambda: to_micros(END)  # noqa: E731
    views = store.materialize(clock=clock).views
    first_day = (BASE - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert views["o@1"]["gaps"] == []
    assert views["u@1"]["gaps"] == [(first_day.isoformat() + "+00:00", BASE.isoformat() + "+00:00")]
    store.backfill(first_day, BASE)
    assert store.materialize(clock=clock).views["u@1"]["gaps"] == []


def test_coverage_gaps_of_backfilled_ranges():
    from parity.serving.materialize import coverage_gaps

    def r(a, b):
        return {"start": f"2026-01-{a:02d}T00:00:00", "end": f"2026-01-{b:02d}T00:00:00"}

    day = to_micros(datetime(2026, 1, 2)) - to_micros(datetime(2026, 1, 1))
    t = lambda d: to_micros(datetime(2026, 1, d))  # noqa: E731
    assert coverage_gaps([r(1, 10)], t(3), t(10)) == []
    assert coverage_gaps([r(5, 10)], t(3), t(10)) == [(t(3), t(5))]
    assert coverage_gaps([r(6, 10), r(1, 4)], t(1), t(10)) == [(t(4), t(6))]  # unsorted, a hole
    assert coverage_gaps([r(1, 5), r(3, 8)], t(2), t(10)) == [(t(8), t(10))]  # overlapping, short end
    assert coverage_gaps([], t(2), t(3)) == [(t(2), t(3))]
    assert coverage_gaps([r(1, 2)], t(1) + day // 2, t(2)) == []

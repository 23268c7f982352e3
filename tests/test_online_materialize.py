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

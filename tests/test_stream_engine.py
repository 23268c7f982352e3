"""The embedded stream engine through a real broker and a real Redis, against the oracle.

Random events (out of order, late, ties on key and time, nulls) plus bad messages (not
JSON, wrong types, missing key or time, ts beyond max_future) are produced to a topic of
two partitions; the engine drains it. Then online lookups at random ``now`` equal the
oracle over the good events, the offline log holds exactly the good events (each once,
with their Kafka partition and offset, ``_applied_at`` after ``_ingested_at``), and the
dead letters are counted by reason.
"""

from __future__ import annotations

import json
from datetime import timedelta

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_fixtures import BASE, DEFS, events
from parity.registry.durations import to_micros
from parity.registry.models import KafkaFace
from parity.registry.offline_log import OfflineLog
from parity.streaming.engine import StreamEngine
from parity.streaming.kafka import ensure_topics, producer_config
from test_online_oracle import check, dyadic, nows_for

CLOCK = lambda: to_micros(BASE - timedelta(days=4))  # noqa: E731
BAD = [(b"{not json", "undecodable"), (b'{"user_id": "x", "ts": "2026-01-10T10:00:00Z"}', "schema_mismatch"),
       (b'{"kind": "a", "ts": "2026-01-10T10:00:00Z"}', "missing_key"), (b'{"user_id": 1}', "missing_timestamp"),
       (b'{"user_id": 1, "ts": "2099-01-01T00:00:00Z"}', "future_timestamp")]


def defs_on(topic: str):
    source = DEFS.source("ev").model_copy(update={"kafka": KafkaFace(topic=topic)})
    return DEFS.model_copy(update={"sources": [source]})


def encode(row) -> bytes:
    body = {k: v for k, v in row.items() if not k.startswith("_")}
    body["ts"] = row["ts"].isoformat() + "Z"
    return json.dumps(body).encode()


@st.composite
def scenario(draw):
    rows = dyadic(draw(events()))
    bad = draw(st.lists(st.sampled_from(BAD), max_size=4))
    return rows, bad, nows_for(draw, rows), draw(st.integers(1, 7))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(scenario())
def test_engine_matches_the_oracle_and_lands_every_good_event_once(kafka_broker, redis, tmp_path_factory, case):
    from confluent_kafka import Producer

    rows, bad, nows, batch = case
    redis.flushall()
    topic = f"ev-{tmp_path_factory.mktemp('t').name}"
    ensure_topics(kafka_broker.bootstrap_servers, {topic: 2})
    producer = Producer(producer_config(kafka_broker.bootstrap_servers))
    sent = []  # (partition, value, row)
    for i, row in enumerate(rows):
        sent.append((i % 2, encode(row), row))
    for j, (value, _reason) in enumerate(bad):
        sent.insert(min(len(sent), 2 * j + 1), (j % 2, value, None))
    for partition, value, _row in sent:
        producer.produce(topic, value=value, partition=partition)
    producer.flush(10)
    # the oracle's tie-break is the engine's: (Kafka partition, offset)
    next_offset = {0: 0, 1: 0}
    good = []
    for partition, _value, row in sent:
        if row is not None:
            row["_partition"], row["_offset"] = partition, next_offset[partition]
            row["_order"] = (partition, next_offset[partition])
            good.append(row)
        next_offset[partition] += 1
    log = OfflineLog(tmp_path_factory.mktemp("log"))
    engine = StreamEngine(defs_on(topic), project="t", redis=redis, bootstrap=kafka_broker.bootstrap_servers,
                          offline_log=log, group_id=f"g-{topic}", max_batch=batch, flush_interval=0.05,
                          clock=CLOCK)
    stats = engine.run(idle_exit=1.5)
    assert stats.consumed == len(sent)
    assert dict(stats.dead_letters) == {r: sum(1 for _v, reason in bad if reason == r) for _v, r in bad}
    known = {(v.name, r["user_id"]) for v in DEFS.feature_views for r in good}
    check(redis, good, nows, CLOCK, known)
    source = engine.sources[topic]
    landed = duckdb.sql(f"SELECT _partition, _offset, _applied_at >= _ingested_at AS ordered FROM "
                        f"{log.scan_sql(source)} ORDER BY 1, 2").fetchall() if good else []
    assert [(p, o) for p, o, _ in landed] == sorted((r["_partition"], r["_offset"]) for r in good)
    assert all(ok for _p, _o, ok in landed)

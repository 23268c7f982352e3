"""Bootstrap handoff: backfill from the log, materialize, stream on; nothing dropped or doubled.

An engine streams a first run of random events (out of order, ties, nulls, bad messages
mixed in) from a real broker into a real Redis and the offline log, then the online store
is lost (``FLUSHALL``) while more events arrive. The store is rebuilt the documented way:
``backfill(..., handoff=True)`` at a random cut time ``end`` (so the cut falls inside the
first run, with events on both sides of it in every partition, late ones included),
``materialize``, and a new engine process streams on from the stored offsets. Then:

- online lookups at random ``now`` equal the naive oracle over every good event of both
  runs (an event applied twice, or neither by the tiles nor by the engine, breaks it);
- the offline log holds each good event exactly once (the second engine re-applies the
  first run's tail without landing it again);
- the progress markers materialize stored are the cut computed here from what was sent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_fixtures import BASE, events
from parity.batch.backfill import backfill
from parity.registry.durations import HOUR, from_micros, to_micros
from parity.registry.offline_log import OfflineLog
from parity.registry.online.writer import OnlineWriter
from parity.serving.materialize import materialize
from parity.streaming.engine import StreamEngine
from parity.streaming.kafka import ensure_topics, producer_config
from test_online_oracle import check, dyadic
from test_stream_engine import BAD, CLOCK, defs_on, encode

START = BASE - timedelta(days=3)


def _hour_ceil(t: datetime) -> datetime:
    return from_micros(-(-to_micros(t) // HOUR) * HOUR).replace(tzinfo=None)


@st.composite
def scenario(draw):
    first = dyadic(draw(events()).copy())
    second = dyadic(draw(events()))
    bad = draw(st.lists(st.sampled_from(BAD), max_size=3))
    times = [r["ts"] for r in first]
    end = draw(st.sampled_from(times) if times and draw(st.booleans()) else
               st.integers(-2 * 86400, 3 * 86400).map(lambda s: BASE + timedelta(seconds=s)))
    # exact lookups: on hour boundaries (no partial tile), or after the seam's tile (the tail)
    resume = _hour_ceil(end)
    anywhere = st.integers(-50, 80).map(lambda h: START.replace(minute=0, second=0) + timedelta(hours=h))
    after = st.integers(0, 4 * 86400 * 10**6).map(lambda us: resume + timedelta(microseconds=us))
    later = [r["ts"] + d for r in first + second for d in (timedelta(0), timedelta(microseconds=1))
             if r["ts"] >= resume]
    choices = st.one_of(anywhere, after, st.sampled_from(later)) if later else st.one_of(anywhere, after)
    return first, second, bad, end, draw(st.lists(choices, min_size=1, max_size=5)), draw(st.integers(1, 6))


def _produce(producer, topic, rows, bad, next_offset):
    """Send rows (alternating partitions) with bad messages mixed in; give good rows their
    Kafka partition and offset (the engine's tie-break and the log's identity)."""
    sent = [(i % 2, encode(row), row) for i, row in enumerate(rows)]
    for j, (value, _reason) in enumerate(bad):
        sent.insert(min(len(sent), 2 * j + 1), (j % 2, value, None))
    for partition, value, row in sent:
        producer.produce(topic, value=value, partition=partition)
        if row is not None:
            row["_partition"], row["_offset"] = partition, next_offset[partition]
            row["_order"] = (partition, next_offset[partition])
        next_offset[partition] += 1
    producer.flush(10)
    return len(sent)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(scenario())
def test_backfill_materialize_then_stream_has_no_gap_and_no_double_count(kafka_broker, redis, tmp_path_factory,
                                                                          case):
    from confluent_kafka import Producer

    first, second, bad, end, nows, batch = case
    redis.flushall()
    topic = f"ho-{tmp_path_factory.mktemp('t').name}"
    defs = defs_on(topic)
    ensure_topics(kafka_broker.bootstrap_servers, {topic: 2})
    producer = Producer(producer_config(kafka_broker.bootstrap_servers))
    next_offset = {0: 0, 1: 0}
    log = OfflineLog(tmp_path_factory.mktemp("log"))

    def engine(group: str) -> StreamEngine:
        return StreamEngine(defs, project="t", redis=redis, bootstrap=kafka_broker.bootstrap_servers,
                            offline_log=log, group_id=group, max_batch=batch, flush_interval=0.05, clock=CLOCK)

    _produce(producer, topic, first, bad, next_offset)
    engine(f"a-{topic}").run(idle_exit=1.5)
    # the online store is lost; events keep arriving while it is rebuilt
    redis.flushall()
    _produce(producer, topic, second, bad[:1], next_offset)

    tiles = tmp_path_factory.mktemp("tiles")
    source = defs.source("ev")
    con = duckdb.connect()
    summary = backfill(con, defs, tiles, lambda name: log.scan_sql(defs.source(name)), START, end, handoff=True)
    expected_cut = {"applied": {}, "landed": {}}
    for p in (0, 1):
        mine = sorted((r["_offset"], r["ts"]) for r in first if r["_partition"] == p)
        if mine:
            after = [o for o, ts in mine if ts >= end]
            expected_cut["applied"][p] = after[0] - 1 if after else mine[-1][0]
            expected_cut["landed"][p] = mine[-1][0]
    assert summary.handoff == {topic: expected_cut}
    stored = materialize(OnlineWriter(redis, "t", defs, clock=CLOCK), defs, tiles)
    want_markers = {f"offset/{topic}/{p}": str(o) for p, o in expected_cut["applied"].items()}
    want_markers |= {f"landed/{topic}/{p}": str(o) for p, o in expected_cut["landed"].items()}
    assert stored.handoff == want_markers

    resumed = engine(f"b-{topic}")
    stats = resumed.run(idle_exit=1.5)
    assert stats.landed == len(second)  # the first run's tail is applied again, not landed again

    good = first + second
    known = {(v.name, r["user_id"]) for v in defs.feature_views for r in good}
    check(redis, good, nows, CLOCK, known)
    landed = duckdb.sql(f"SELECT _partition, _offset FROM {log.scan_sql(source)} ORDER BY 1, 2").fetchall() \
        if good else []
    assert landed == sorted((r["_partition"], r["_offset"]) for r in good)


def test_materialize_refuses_a_handoff_into_a_store_that_streamed_past_it(kafka_broker, redis, tmp_path, unique_topic):
    """A store an engine already advanced cannot take an older cut (it would double count)."""
    import pyarrow as pa
    import pytest

    from batch_fixtures import EVENT_SCHEMA
    from parity.errors import ParityError

    redis.flushall()
    topic = unique_topic("ho")
    defs = defs_on(topic)
    log = OfflineLog(tmp_path / "log")
    rows = [{"user_id": 1, "kind": "a", "amount": 1, "score": None, "ts": BASE + timedelta(minutes=i),
             "_ingested_at": BASE, "_applied_at": BASE, "_partition": 0, "_offset": i} for i in range(5)]
    log.write(defs.source("ev"), pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), batch_id="k-x")
    con = duckdb.connect()
    backfill(con, defs, tmp_path / "tiles", lambda name: log.scan_sql(defs.source(name)), START,
             BASE + timedelta(minutes=3), handoff=True)
    writer = OnlineWriter(redis, "t", defs, clock=CLOCK)
    advanced = writer.batch()
    advanced.set_progress({f"offset/{topic}/0": "9"})
    advanced.commit()
    with pytest.raises(ParityError, match=rf"already streamed {topic}/0 to offset 9, not the handoff's 2"):
        materialize(writer, defs, tmp_path / "tiles")
    with pytest.raises(ParityError, match="needs every online view of source ev; missing: u@1"):
        materialize(writer, defs, tmp_path / "tiles", views=["o"])

"""The serving cache (serving/tile_cache.py) never serves a value the oracle would not.

A reader keeps each entity's folded complete tiles between lookups and learns of changes
from Redis's invalidation pushes. These tests force every way the kept part can go stale
(a late event into a closed tile, a new event into the open tile, a hash that expires, a
flushed store, a lost tracking connection) and a status that changes without any write (a
stale watermark), and check every answer against the naive oracle, with one reader kept
across writes and across hypothesis examples.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
from batch_fixtures import BASE, DEFS, events
from parity.embedded import redis_client
from parity.registry.durations import to_micros
from parity.registry.online.accumulate import EventEvaluator, TileBuilder
from parity.registry.online.keys import entity_key, tail_key, view_prefix
from parity.registry.online.writer import ORDER, OnlineWriter
from parity.serving.lookup import OnlineReader
from test_online_oracle import dyadic, expected_age, nows_for
from test_online_statuses import DEFS as SDEFS, T0, ev, us, write

KEYS = [1, 2, 3, 4]
# every numeric windowed feature and the latest values of u (no lifetime window, no windowed
# `last`: the views the cache serves), and all of o (min/max included)
CACHED = ["u:n_10m", "u:amount_a_1h", "u:score_sum_1h", "u:score_mean_24h", "u:amount_min_7d", "u:score_max_30d",
          "u:amounts_nonnull_12h", "u:amount_mean_24h", "u:twice_sum_7d", "u:kind_latest", "u:score_latest", "o:*"]


@pytest.fixture(scope="module")
def shared_reader(redis_server):
    """One reader for every example of the module: flushes between examples must not leak."""
    client = redis_client(redis_server.url)
    reader = OnlineReader(client, "t", DEFS, clock=lambda: 0, cache_min_entities=1)
    yield reader
    reader.close()
    client.close()


class Store:
    """Writes events in batches as a stream engine does: absolute upserts of touched tiles."""

    def __init__(self, redis, clock):
        self.writer = OnlineWriter(redis, "t", DEFS, clock=clock)
        self.builders = {v.name: (EventEvaluator(DEFS, v, self.writer.layout(v)), TileBuilder(self.writer.layout(v)))
                         for v in DEFS.feature_views}
        self.rows: list[dict] = []

    def add(self, rows: list[dict]) -> None:
        batch = self.writer.batch()
        for view in DEFS.feature_views:
            evaluator, builder = self.builders[view.name]
            touched, recent = set(), []
            for row in rows:
                event = evaluator.evaluate(row, row["_partition"], row["_offset"])
                builder.add(event)
                recent.append(event)
                for res in builder.layout.resolutions:
                    touched.add((event.entity, res, event.ts - event.ts % res))
            for key in touched:
                batch.put_tile(view, key[0], key[1], key[2], builder.tiles[key])
            for entity in {e.entity for e in recent}:
                if builder.layout.latest:
                    batch.put_latest(view, entity, builder.latest[entity])
            batch.add_events(view, recent)
        batch.commit()
        self.rows.extend(rows)


def check_all(reader, rows, now_dt) -> None:
    now = to_micros(now_dt)
    result = reader.get_online_features({"user_id": KEYS}, features=CACHED, now=now)
    seen = {r["user_id"] for r in rows}
    for name, view, feature, i, uid, want in oracle.online_cells(result, DEFS, rows, "user_id", KEYS, now_dt):
        status = result.status[name][i]
        if feature.window is None:
            mine = [r for r in rows if r["user_id"] == uid and r.get(feature.column) is not None]
            assert status == ("missing" if not mine else "expired" if want is None else "ok"), (name, uid, status)
        else:
            assert status == ("ok" if uid in seen else "missing"), (name, uid, now_dt, status)
            if status == "ok":
                assert result.age_ms[name][i] == expected_age(view, rows, uid, now, list(view.features))


@st.composite
def stream(draw):
    rows = dyadic(draw(events()))
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=3)))
    return rows, cuts, nows_for(draw, rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(stream())
def test_a_kept_reader_equals_the_oracle_across_writes_and_flushes(redis, shared_reader, case):
    """Events arrive in batches (late ones into closed tiles, others into the open tile);
    after each batch every ``now`` is looked up twice (the second mostly from the cache)."""
    rows, cuts, nows = case
    redis.flushall()
    store = Store(redis, lambda: to_micros(BASE - timedelta(days=4)))
    for lo, hi in zip([0, *cuts], [*cuts, len(rows)]):
        store.add(rows[lo:hi])
        for now_dt in nows + nows:
            check_all(shared_reader, store.rows, now_dt)


def _count(reader, video, now):
    result = reader.get_online_features({"video_id": [video]}, features=["safety@1:reports_10m",
                                                                         "safety@1:severity_max_1h"], now=us(now))
    return (result.values["safety__v1__reports_10m"][0], result.values["safety__v1__severity_max_1h"][0],
            result.status["safety__v1__reports_10m"][0])


def test_late_and_open_tile_events_invalidate_what_is_kept(redis):
    rows = [ev(1, -30, severity=2), ev(1, 1, severity=1)]
    write(redis, rows, watermark=T0 + timedelta(minutes=7))
    now = T0 + timedelta(minutes=7)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    assert _count(reader, 1, now) == (1, 2, "ok")
    hits = reader.cache.stats.hits
    assert _count(reader, 1, now) == (1, 2, "ok")
    assert reader.cache.stats.hits > hits  # the second lookup used the kept part
    rows.append(ev(1, -4, severity=5))  # late: into the closed tile [T0-5m, T0) of the 10m window
    write(redis, rows, watermark=T0 + timedelta(minutes=7))
    assert _count(reader, 1, now) == (2, 5, "ok")
    rows.append(ev(1, 6, severity=7))  # into the open tile [T0+5m, now)
    write(redis, rows, watermark=T0 + timedelta(minutes=7))
    assert _count(reader, 1, now) == (3, 7, "ok")
    assert _count(reader, 1, now) == (3, 7, "ok")


def test_a_created_entity_is_not_kept_absent(redis):
    now = T0 + timedelta(minutes=7)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    write(redis, [ev(1, 1)], watermark=now)
    assert _count(reader, 2, now) == (0, None, "missing")
    assert _count(reader, 2, now) == (0, None, "missing")  # known absent: nothing read
    write(redis, [ev(1, 1), ev(2, -2, severity=4)], watermark=now)
    assert _count(reader, 2, now) == (1, 4, "ok")


def test_a_stale_watermark_shows_through_kept_parts(redis):
    write(redis, [ev(1, 1)], watermark=T0 + timedelta(minutes=5))
    reader = OnlineReader(redis, "s", SDEFS, cache_min_entities=1)
    assert _count(reader, 1, T0 + timedelta(minutes=5, seconds=30))[2] == "ok"
    # same open tile (kept parts are used), but the ingestion lag now exceeds the 1 min SLO
    assert _count(reader, 1, T0 + timedelta(minutes=6, seconds=30)) == (1, 1, "stale")
    assert reader.cache.stats.hits > 0


def test_an_expired_hash_is_missing_even_before_redis_reclaims_it(redis):
    now = T0 + timedelta(minutes=7)
    write(redis, [ev(1, 1, severity=3)], watermark=now)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    key = entity_key(view_prefix("s", "safety", 1), b"i1;")
    redis.pexpire(key, 400)  # as if its retention ended now
    assert _count(reader, 1, now) == (1, 3, "ok")
    assert _count(reader, 1, now) == (1, 3, "ok")
    rereads = reader.cache.stats.reread
    hz = redis.config_get("hz")["hz"]
    redis.config_set("hz", 1)  # reclaim expired keys at most once a second: the expiry time decides first
    try:
        time.sleep(0.5)
        assert _count(reader, 1, now) == (0, None, "missing")
    finally:
        redis.config_set("hz", hz)
    assert reader.cache.stats.reread > rereads


def test_a_flushed_and_rewritten_store_is_read_again(redis):
    now = T0 + timedelta(minutes=7)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    write(redis, [ev(1, 1, severity=3)], watermark=now)
    assert _count(reader, 1, now) == (1, 3, "ok")
    assert _count(reader, 1, now) == (1, 3, "ok")
    redis.flushall()
    write(redis, [ev(1, 2, severity=6), ev(1, 3, severity=1)], watermark=now)  # same keys, same write count
    assert _count(reader, 1, now) == (2, 6, "ok")


def test_a_lost_tracking_connection_drops_what_is_kept(redis):
    now = T0 + timedelta(minutes=7)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    write(redis, [ev(1, 1, severity=3)], watermark=now)
    assert _count(reader, 1, now) == (1, 3, "ok")
    tracker = reader.cache.tracker
    redis.client_kill_filter(_id=tracker._id)  # the server drops the tracking connection
    write(redis, [ev(1, 1, severity=3), ev(1, 2, severity=9)], watermark=now)  # its push is lost
    assert _count(reader, 1, now) == (2, 9, "ok")
    assert _count(reader, 1, now) == (2, 9, "ok")


def test_a_cache_of_zero_bytes_reads_everything(redis):
    now = T0 + timedelta(minutes=7)
    write(redis, [ev(1, 1, severity=3)], watermark=now)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_bytes=0)
    assert reader.cache is None
    assert _count(reader, 1, now) == (1, 3, "ok")


def _append_to_tail(redis, video: int, minutes: float, severity: int) -> None:
    """What a writer that only appends to the open tile's tail does: one ZADD, the entity's
    hash untouched (so only the tail's own invalidation can tell a kept reader)."""
    writer = OnlineWriter(redis, "s", SDEFS, clock=lambda: us(T0))
    view = next(v for v in SDEFS.feature_views if v.name == "safety" and v.version == 1)
    layout = writer.layout(view)
    row = ev(video, minutes, severity=severity)
    event = EventEvaluator(SDEFS, view, layout).evaluate(row, 0, 10_000 + int(minutes * 1000))
    member = ORDER.pack(event.ts, event.partition, event.offset) + layout.encode_numeric(event.value) \
        + layout.encode_complex(event.value)
    redis.zadd(tail_key(view_prefix("s", "safety", 1), b"i%d;" % video), {member: event.ts})


def test_a_tail_written_after_a_kept_read_is_seen(redis):
    """The open tile's fold is kept too (a fresh hit reads nothing): a write to the tail
    alone, the hash untouched, must reach the next lookup."""
    now = T0 + timedelta(minutes=7)
    write(redis, [ev(1, -30, severity=2), ev(1, 6, severity=1)], watermark=now)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    assert _count(reader, 1, now) == (1, 2, "ok")
    fresh = reader.cache.stats.fresh
    assert _count(reader, 1, now) == (1, 2, "ok")
    assert reader.cache.stats.fresh > fresh  # nothing of the entity was read
    hash_before = redis.hgetall(entity_key(view_prefix("s", "safety", 1), b"i1;"))
    _append_to_tail(redis, 1, 6.5, severity=8)
    assert redis.hgetall(entity_key(view_prefix("s", "safety", 1), b"i1;")) == hash_before
    assert _count(reader, 1, now) == (2, 8, "ok")
    assert _count(reader, 1, now) == (2, 8, "ok")


def test_a_kept_tail_fold_holds_only_between_its_events(redis):
    """An event stamped after ``now`` (ahead of the clock) is in the tail but not in the
    answer; once ``now`` passes it (same open tile, no write) it counts, and a lookup in the
    past (before an event it folded) does not count it."""
    write(redis, [ev(1, 6), ev(1, 8, severity=9)], watermark=T0 + timedelta(minutes=9))
    reader = OnlineReader(redis, "s", SDEFS, cache_min_entities=1)
    at = [T0 + timedelta(minutes=m) for m in (7, 7.5, 8.5, 9, 6.5, 5.5, 9.5)]
    want = [(1, 1), (1, 1), (2, 9), (2, 9), (1, 1), (0, None), (2, 9)]
    for now, (count, severity) in zip(at, want):
        assert _count(reader, 1, now)[:2] == (count, severity), now
    assert reader.cache.stats.fresh > 0


def test_an_expired_tail_is_not_served_from_what_is_kept(redis):
    now = T0 + timedelta(minutes=7)
    write(redis, [ev(1, -30, severity=2), ev(1, 6, severity=5)], watermark=now)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    redis.pexpire(tail_key(view_prefix("s", "safety", 1), b"i1;"), 400)
    assert _count(reader, 1, now) == (1, 5, "ok")
    assert _count(reader, 1, now) == (1, 5, "ok")
    hz = redis.config_get("hz")["hz"]
    redis.config_set("hz", 1)  # reclaim expired keys at most once a second: the expiry time decides first
    try:
        time.sleep(0.5)
        assert _count(reader, 1, now) == (0, 2, "ok")  # the open tile's event went with its tail
    finally:
        redis.config_set("hz", hz)


def test_fresh_hits_left_out_are_read_again_when_the_tail_stops_counting(redis):
    """Fresh hits are left out of the read; if the tail no longer covers the open tile (a
    bootstrap moved ``tail_from`` past its start), the view is read again in full."""
    now = T0 + timedelta(minutes=7)
    write(redis, [ev(1, -30, severity=2), ev(1, 6, severity=5), ev(2, 1, severity=3)], watermark=now)
    reader = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_min_entities=1)
    fresh = OnlineReader(redis, "s", SDEFS, clock=lambda: us(now), cache_bytes=0)
    features = ["safety@1:reports_10m", "safety@1:severity_max_1h"]
    want = fresh.get_online_features({"video_id": [1, 2, 3]}, features=features).values
    assert reader.get_online_features({"video_id": [1, 2, 3]}, features=features).values == want
    kept = reader.cache.stats.fresh
    assert reader.get_online_features({"video_id": [1, 2, 3]}, features=features).values == want
    assert reader.cache.stats.fresh > kept
    view = next(v for v in SDEFS.feature_views if v.name == "safety" and v.version == 1)
    batch = OnlineWriter(redis, "s", SDEFS, clock=lambda: us(T0)).batch()
    batch.set_tail_from(view, us(T0 + timedelta(minutes=6)))  # the tail is complete only from 6 min on
    batch.commit()
    want = fresh.get_online_features({"video_id": [1, 2, 3]}, features=features).values
    trips = reader.stats.round_trips
    assert reader.get_online_features({"video_id": [1, 2, 3]}, features=features).values == want
    assert reader.stats.round_trips == trips + 2  # the read without the fresh hits, then all of them

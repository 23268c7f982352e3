"""Statuses, ttl expiry, versions, composite keys, key encoding and bad requests (real Redis)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from parity.embedded import RedisServer, redis_client
from parity.registry.durations import MINUTE, to_micros
from parity.registry.models import Definitions, Entity, Feature, FeatureView, Source
from parity.registry.online.accumulate import EventEvaluator, TileBuilder
from parity.registry.online.keys import encode_entity
from parity.registry.online.writer import OnlineStoreUnavailable, OnlineWriter
from parity.registry.resolve import UnknownFeatureError
from parity.serving.lookup import BadRequest, OnlineReader, TooManyEntities

T0 = datetime(2026, 3, 1, 12, 0, 0)
SRC = Source(name="reports", schema={"video_id": "int64", "region": "string", "reason": "string",
                                     "severity": "int64", "ts": "timestamp"}, timestamp_field="ts")
VIEW1 = FeatureView(name="safety", version=1, entity="video", source="reports", owner="t", freshness_slo="1m",
                    features=[Feature(name="reports_10m", agg="count", window="10m"),
                              Feature(name="last_reason", agg="last", column="reason", ttl="30m", default="none"),
                              Feature(name="severity_max_1h", agg="max", column="severity", window="1h")])
VIEW2 = FeatureView(name="safety", version=2, entity="video", source="reports", owner="t", freshness_slo="1m",
                    features=[Feature(name="reports_10m", agg="count", window="10m", where="severity >= 2")])
REGIONAL = FeatureView(name="regional", entity="video_region", source="reports", owner="t",
                       key_columns={"video_id": "video_id", "region": "region"},
                       features=[Feature(name="reports_1h", agg="count", window="1h")])
DEFS = Definitions(entities=[Entity(name="video", join_keys={"video_id": "int64"}),
                             Entity(name="video_region", join_keys={"video_id": "int64", "region": "string"})],
                   sources=[SRC], feature_views=[VIEW1, VIEW2, REGIONAL])


def us(dt: datetime) -> int:
    return to_micros(dt)


def write(redis, rows, views=(VIEW1, VIEW2, REGIONAL), watermark=None, clock_at=T0 - timedelta(days=1)):
    writer = OnlineWriter(redis, "s", DEFS, clock=lambda: us(clock_at))
    batch = writer.batch()
    for view in views:
        evaluator, builder = EventEvaluator(DEFS, view, writer.layout(view)), TileBuilder(writer.layout(view))
        events = [evaluator.evaluate(r, 0, i) for i, r in enumerate(rows)]
        for e in events:
            builder.add(e)
        for (entity, res, start), value in builder.tiles.items():
            batch.put_tile(view, entity, res, start, value)
        for entity, value in builder.latest.items():
            batch.put_latest(view, entity, value)
        batch.add_events(view, events)
        if watermark is not None:
            batch.set_watermark(view, us(watermark))
    batch.commit()
    return writer


def ev(video, minutes, reason="spam", severity=1, region="eu"):
    return {"video_id": video, "region": region, "reason": reason, "severity": severity,
            "ts": T0 + timedelta(minutes=minutes)}


def reader(redis, now, **kw):
    return OnlineReader(redis, "s", DEFS, clock=lambda: us(now), **kw)


def test_each_status_is_forced(redis):
    write(redis, [ev(1, 0, "spam", 3), ev(1, 2, "abuse", 1), ev(2, -60, "nudity", 2)], watermark=T0 + timedelta(minutes=5))
    now = T0 + timedelta(minutes=5)
    result = reader(redis, now).get_online_features({"video_id": [1, 2, 3]}, features=["safety@1:*"])
    # video 1: fresh events, watermark 0 s behind -> ok
    assert result.values["safety__v1__reports_10m"] == [2, 0, 0]
    assert result.status["safety__v1__reports_10m"] == ["ok", "ok", "missing"]
    # latest value: ok for 1; video 2's last report is 65 min old with a 30 min ttl -> expired; 3 -> missing
    assert result.status["safety__v1__last_reason"] == ["ok", "expired", "missing"]
    assert result.values["safety__v1__last_reason"] == ["abuse", "none", "none"]  # the default, flagged
    assert result.defaulted["safety__v1__last_reason"] == [False, True, True]
    assert result.age_ms["safety__v1__last_reason"][0] == 3 * 60_000
    assert result.age_ms["safety__v1__reports_10m"][0] == 3 * 60_000
    assert result.values["safety__v1__severity_max_1h"] == [3, None, None]
    # the watermark falls behind the 1m SLO -> every present value of the view is stale
    later = T0 + timedelta(minutes=6, seconds=1)
    stale = reader(redis, later).get_online_features({"video_id": [1, 3]}, features=["safety@1:*"])
    assert stale.status["safety__v1__reports_10m"] == ["stale", "missing"]
    assert stale.status["safety__v1__last_reason"] == ["stale", "missing"]
    # a writer advancing the watermark clears it
    write(redis, [], watermark=later)
    assert reader(redis, later).get_online_features(
        {"video_id": [1]}, features=["safety@1:reports_10m"]).status["safety__v1__reports_10m"] == ["ok"]


def test_no_watermark_at_all_is_stale_when_the_view_has_an_slo(redis):
    write(redis, [ev(1, 0)])
    result = reader(redis, T0 + timedelta(minutes=1)).get_online_features({"video_id": [1]}, features=["safety@1:*"])
    assert set(result.status["safety__v1__reports_10m"]) == {"stale"}


def test_ttl_boundary_is_exact(redis):
    write(redis, [ev(1, 0, "spam")], watermark=T0 + timedelta(days=1))
    edge = T0 + timedelta(minutes=30)
    r = reader(redis, edge).get_online_features({"video_id": [1]}, features=["safety@1:last_reason"])
    assert (r.values["safety__v1__last_reason"], r.status["safety__v1__last_reason"]) == (["spam"], ["ok"])
    past = edge + timedelta(microseconds=1)
    r = reader(redis, past).get_online_features({"video_id": [1]}, features=["safety@1:last_reason"])
    assert (r.status["safety__v1__last_reason"], r.defaulted["safety__v1__last_reason"]) == (["expired"], [True])


def test_empty_windows_and_events_ahead_of_now(redis):
    write(redis, [ev(1, 0, severity=5), ev(1, 20, severity=9)], watermark=T0 + timedelta(days=1))
    # at T0 + 12 min the 10m window [floor(now - 10m, 5m), now) = [T0, T0 + 12m) holds the first event only
    r = reader(redis, T0 + timedelta(minutes=12)).get_online_features({"video_id": [1]}, features=["safety@1:*"])
    assert r.values["safety__v1__reports_10m"] == [1]
    assert r.values["safety__v1__severity_max_1h"] == [5], "the event at +20 min is not before now"
    assert r.values["safety__v1__last_reason"] == ["spam"]
    # at T0 + 70 min the 10m window [T0 + 60m, now) is empty: count 0, status still ok;
    # the 1h window [T0 + 10m, now) holds only the event at +20 min
    r = reader(redis, T0 + timedelta(minutes=70)).get_online_features({"video_id": [1]}, features=["safety@1:*"])
    assert r.values["safety__v1__reports_10m"] == [0]
    assert r.values["safety__v1__severity_max_1h"] == [9]
    assert r.status["safety__v1__reports_10m"] == ["ok"]


def test_two_versions_are_live_at_once(redis):
    write(redis, [ev(1, 0, severity=1), ev(1, 1, severity=3)], watermark=T0 + timedelta(days=1))
    r = reader(redis, T0 + timedelta(minutes=3)).get_online_features(
        {"video_id": [1]}, features=["safety@1:reports_10m", "safety@2:reports_10m"])
    assert r.names == ["safety__v1__reports_10m", "safety__v2__reports_10m"]
    assert (r.values["safety__v1__reports_10m"], r.values["safety__v2__reports_10m"]) == ([2], [1])


def test_composite_keys_and_forged_strings(redis):
    tricky = ["eu", "eu;", "", "s2:eu;", "i1;s2:eu", "ü"]
    rows = [ev(1, i, region=region) for i, region in enumerate(tricky)] + [ev(1, 10, region="eu")]
    write(redis, rows, views=(REGIONAL,), watermark=T0 + timedelta(days=1))
    r = reader(redis, T0 + timedelta(minutes=30)).get_online_features(
        {"video_id": [1] * 7 + [2], "region": tricky + ["missing", "eu"]}, features=["regional:reports_1h"])
    assert r.values["regional__reports_1h"] == [2, 1, 1, 1, 1, 1, 0, 0]
    assert r.status["regional__reports_1h"] == ["ok"] * 6 + ["missing", "missing"]
    codes = {encode_entity({"video_id": "int64", "region": "string"}, [1, t]) for t in tricky}
    assert len(codes) == len(tricky)


def test_bad_requests_name_the_item(redis):
    read = reader(redis, T0, max_entities=3)
    with pytest.raises(UnknownFeatureError, match="nope"):
        read.get_online_features({"video_id": [1]}, service="nope")
    with pytest.raises(UnknownFeatureError, match="no feature 'x'"):
        read.get_online_features({"video_id": [1]}, features=["safety:x"])
    with pytest.raises(UnknownFeatureError, match="unknown view 'ghost'"):
        read.get_online_features({"video_id": [1]}, features=["ghost:x"])
    with pytest.raises(BadRequest, match="'video_id' must be an integer"):
        read.get_online_features({"video_id": ["1"]}, features=["safety@1:reports_10m"])
    with pytest.raises(BadRequest, match="'video_id' must be an integer"):
        read.get_online_features({"video_id": [True]}, features=["safety@1:reports_10m"])
    with pytest.raises(BadRequest, match="missing join key.*'region'"):
        read.get_online_features({"video_id": [1]}, features=["regional:reports_1h"])
    with pytest.raises(BadRequest, match="unknown join key.*'user_id'"):
        read.get_online_features({"video_id": [1], "user_id": [1]}, features=["safety@1:reports_10m"])
    with pytest.raises(BadRequest, match="different lengths"):
        read.get_online_features({"video_id": [1, 2], "region": ["a", "b", "c"]}, features=["regional:reports_1h"])
    with pytest.raises(TooManyEntities, match="4 entity rows exceed the limit of 3"):
        read.get_online_features({"video_id": [1, 2, 3, 4]}, features=["safety@1:reports_10m"])


def test_redis_unreachable_is_a_typed_error():
    server = RedisServer.start()
    client = redis_client(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    read = OnlineReader(client, "s", DEFS, clock=lambda: us(T0))
    assert read.get_online_features({"video_id": [1]}, features=["safety@1:reports_10m"]).status
    server.stop()
    with pytest.raises(OnlineStoreUnavailable, match="unreachable"):
        read.get_online_features({"video_id": [1]}, features=["safety@1:reports_10m"])
    writer = OnlineWriter(client, "s", DEFS)
    batch = writer.batch()
    batch.set_watermark(VIEW1, 1)
    with pytest.raises(OnlineStoreUnavailable):
        batch.commit()


def test_keys_expire_and_old_tiles_are_pruned(redis):
    now = T0 + timedelta(hours=3)
    writer = write(redis, [ev(1, m) for m in range(0, 180, 5)], views=(VIEW2,), clock_at=now)
    key = b"p:s:safety:2:e:i1;"
    # VIEW2 keeps its 5m tiles for its 10m window + 5m hop + one tile; the key lives that long
    # past its newest tile (plus a minute of grace), on the writer's clock
    ttl_ms = redis.pttl(key)
    newest_end = T0 + timedelta(minutes=180)
    assert 0 < ttl_ms <= (newest_end + timedelta(minutes=20) - now).total_seconds() * 1000 + 60_000
    fields = redis.hkeys(key)
    starts = sorted(int(f.split(b":")[1]) * 5 * MINUTE for f in fields if b":" in f and not f.endswith(b"x"))
    assert starts and min(starts) >= us(now) - 20 * MINUTE, "tiles beyond retention are not written"
    assert writer.read_progress() == {}


def test_progress_markers_fence_a_stale_writer(redis):
    """Two writers of one partition: the one whose expected offset is stale writes nothing."""
    from parity.registry.online.writer import ProgressConflict

    first, second = (OnlineWriter(redis, "s", DEFS, clock=lambda: us(T0)) for _ in range(2))
    evaluator = EventEvaluator(DEFS, VIEW2, first.layout(VIEW2))
    event = evaluator.evaluate(ev(1, 0, severity=3), 0, 0)
    tile = TileBuilder(first.layout(VIEW2))
    tile.add(event)
    (entity, res, start), value = next(iter(tile.tiles.items()))
    batch = first.batch()
    batch.put_tile(VIEW2, entity, res, start, value)
    batch.set_progress({"reports/0": "1"}, expect={"reports/0": None})
    batch.commit()
    assert first.read_progress() == {"reports/0": "1"}
    stale = second.batch()
    stale.put_tile(VIEW2, (2,), res, start, value)
    stale.set_progress({"reports/0": "1"}, expect={"reports/0": None})
    with pytest.raises(ProgressConflict, match="reports/0 is '1', expected None"):
        stale.commit()
    assert not redis.exists(b"p:s:safety:2:e:i2;"), "a fenced batch writes nothing"
    ok = second.batch()
    ok.put_tile(VIEW2, (2,), res, start, value)
    ok.set_progress({"reports/0": "2"}, expect={"reports/0": "1"})
    ok.commit()
    assert redis.exists(b"p:s:safety:2:e:i2;") and second.read_progress() == {"reports/0": "2"}

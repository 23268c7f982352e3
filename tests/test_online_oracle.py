"""Online lookups against a real Redis equal the naive oracle at ``t = now``.

Random events (out of order, ties, nulls, several entities, filters, every hop class,
lifetime, last_k, latest-with-ttl) are folded into tiles by the reference aggregation and
written through ``OnlineWriter`` in random batches (each batch upserts the absolute values
of the tiles it touched, as a stream engine does). Lookups at random ``now`` (on event
times, a microsecond after them, on tile boundaries, anywhere) must equal
``tests/oracle.py`` exactly (floats: the test's floats are dyadic, so every summation
order is exact), with the status and the event-time age DESIGN.md and docs/online.md give.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
from batch_fixtures import BASE, DEFS, MICRO, events, offsets
from parity.registry.durations import to_micros
from parity.registry.online.accumulate import EventEvaluator, TileBuilder
from parity.registry.online.writer import OnlineWriter
from parity.registry.semantics import feature_window
from parity.serving.lookup import OnlineReader

KEYS = [1, 2, 3, 4]  # 4 never has events


def dyadic(rows):
    for row in rows:
        if row["score"] is not None:
            row["score"] = round(row["score"] * 8) / 8
        row["_ts"] = row["ts"]
        row["_order"] = (row["_partition"], row["_offset"])
    return rows


def write_all(redis, rows, batches, clock):
    """Fold ``rows`` into tiles and write them in ``batches`` slices (absolute upserts)."""
    writer = OnlineWriter(redis, "t", DEFS, clock=clock)
    builders = {v.name: (EventEvaluator(DEFS, v, writer.layout(v)), TileBuilder(writer.layout(v)))
                for v in DEFS.feature_views}
    bounds = sorted(set(batches) | {0, len(rows)})
    writer.known = set()  # (view, user_id) the store holds something for
    for lo, hi in zip(bounds, bounds[1:]):
        batch = writer.batch()
        for view in DEFS.feature_views:
            evaluator, builder = builders[view.name]
            touched, recent = set(), []
            for row in rows[lo:hi]:
                event = evaluator.evaluate(row, row["_partition"], row["_offset"])
                builder.add(event)
                recent.append(event)
                for res in builder.layout.resolutions:
                    touched.add((event.entity, res, event.ts - event.ts % res))
            for key in touched:
                if batch.put_tile(view, key[0], key[1], key[2], builder.tiles[key]):
                    writer.known.add((view.name, key[0][0]))
            for entity in {e.entity for e in recent}:
                if builder.layout.latest:
                    batch.put_latest(view, entity, builder.latest[entity])
                    writer.known.add((view.name, entity[0]))
            batch.add_events(view, recent)
        batch.commit()
    return writer


def expected_status(view, feature, rows, uid, now, value, known):
    mine = [r for r in rows if r["user_id"] == uid]
    if feature.window is None:
        if not any(r.get(feature.column) is not None for r in mine):
            return "missing"
        return "expired" if value is None else "ok"
    return "ok" if (view.name, uid) in known else "missing"


def expected_age(view, rows, uid, now, requested):
    starts = []
    for feature in requested:
        window = feature_window(view, feature)
        if window is not None:
            starts.append(None if window.is_lifetime else window.start(now))
    if not starts:
        return None
    lo = None if None in starts else min(starts)
    times = [to_micros(r["ts"]) for r in rows if r["user_id"] == uid]
    inside = [t for t in times if t < now and (lo is None or t >= lo)]
    return (now - max(inside)) / 1000.0 if inside else None


def check(redis, rows, nows, clock, known):
    reader = OnlineReader(redis, "t", DEFS, clock=clock)
    for now_dt in nows:
        now = to_micros(now_dt)
        result = reader.get_online_features({"user_id": KEYS}, features=["u:*", "o:*"], now=now)
        for name, view, feature, i, uid, want in oracle.online_cells(result, DEFS, rows, "user_id", KEYS, now_dt):
            status = result.status[name][i]
            assert status == expected_status(view, feature, rows, uid, now, want, known), (name, uid, now_dt, status)
            if feature.window is not None and status != "missing":
                age = expected_age(view, rows, uid, now, [f for f in view.features])
                assert result.age_ms[name][i] == age, (name, uid, now_dt, result.age_ms[name][i], age)


def nows_for(draw, rows):
    times = [r["ts"] + d for r in rows for d in (timedelta(0), MICRO, timedelta(minutes=30),
                                                  timedelta(hours=2), timedelta(hours=2) + MICRO)]
    choices = st.one_of(st.sampled_from(times), offsets.map(lambda d: BASE + d)) if times else \
        offsets.map(lambda d: BASE + d)
    return draw(st.lists(choices, min_size=1, max_size=6))


@st.composite
def scenario(draw):
    rows = dyadic(draw(events()))
    cuts = draw(st.lists(st.integers(0, len(rows)), max_size=3))
    return rows, cuts, nows_for(draw, rows)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(scenario())
def test_lookups_equal_the_oracle(redis, case):
    """Writer clock before every event: the tail holds every event, every ``now`` is exact."""
    rows, cuts, nows = case
    redis.flushall()
    clock = lambda: to_micros(BASE - timedelta(days=4))  # noqa: E731
    writer = write_all(redis, rows, cuts, clock)
    check(redis, rows, nows, clock, writer.known)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(scenario(), st.integers(-2 * 86400, 3 * 86400))
def test_lookups_after_the_tail_is_trimmed(redis, case, clock_offset_s):
    """Writer clock in the middle of the data: events before it are only in complete tiles
    (the tail is trimmed), and lookups at ``now`` at or after the clock are still exact."""
    rows, cuts, nows = case
    redis.flushall()
    writer_now = BASE + timedelta(seconds=clock_offset_s)
    clock = lambda: to_micros(writer_now)  # noqa: E731
    writer = write_all(redis, rows, cuts, clock)
    later = [n for n in nows if n >= writer_now] or [writer_now + timedelta(seconds=1)]
    check(redis, rows, later, clock, writer.known)

"""apply_events: batches merged into absolute tiles by concurrent writers lose nothing.

Two threads, each owning one "partition", apply their events in small batches to the same
entities at once (read, merge, upsert absolute values, taking turns under the apply lock). Lookups afterwards
equal the naive oracle, and each partition's progress marker ends at its last batch.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_fixtures import BASE, DEFS, events
from parity.registry.durations import to_micros
from parity.registry.online.accumulate import EventEvaluator
from parity.registry.online.apply import apply_events
from parity.registry.online.writer import COMMIT_TIME, OnlineWriter
from test_online_oracle import check, dyadic, nows_for

CLOCK = lambda: to_micros(BASE - timedelta(days=4))  # noqa: E731


def run_partition(redis, rows, partition, batch_size, errors):
    try:
        writer = OnlineWriter(redis.__class__(connection_pool=redis.connection_pool), "t", DEFS, clock=CLOCK)
        evaluators = {v.name: EventEvaluator(DEFS, v, writer.layout(v)) for v in DEFS.feature_views}
        previous = None
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            batch = [(view, [evaluators[view.name].evaluate(r, r["_partition"], r["_offset"]) for r in chunk])
                     for view in DEFS.feature_views]
            marker = str(chunk[-1]["_offset"])
            apply_events(writer, batch, progress={f"ev/{partition}": marker}, expect={f"ev/{partition}": previous})
            previous = marker
    except Exception as exc:  # surfaced by the test
        errors.append(exc)


@st.composite
def scenario(draw):
    rows = dyadic(draw(events()))
    for i, row in enumerate(rows):
        row["_partition"] = i % 2
        row["_order"] = (row["_partition"], row["_offset"])  # the tie-break the engines use
    return rows, draw(st.integers(1, 4)), nows_for(draw, rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(scenario())
def test_concurrent_writers_sharing_entities_lose_nothing(redis, case):
    rows, batch_size, nows = case
    redis.flushall()
    parts = [sorted((r for r in rows if r["_partition"] == p), key=lambda r: r["_offset"]) for p in (0, 1)]
    errors: list = []
    threads = [threading.Thread(target=run_partition, args=(redis, parts[p], p, batch_size, errors)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    known = {(v.name, r["user_id"]) for v in DEFS.feature_views for r in rows}
    check(redis, rows, nows, CLOCK, known)
    progress = OnlineWriter(redis, "t", DEFS).read_progress()
    assert progress == {f"ev/{p}": str(parts[p][-1]["_offset"]) for p in (0, 1) if parts[p]}


def test_a_lock_that_expired_untaken_costs_nothing(redis):
    """A merge outlasting the lock's expiry commits at once when nobody took the lock since
    (the epoch did not move)."""
    from parity.registry.online.keys import apply_lock_key

    redis.flushall()
    writer = OnlineWriter(redis, "t", DEFS, clock=CLOCK)
    view = DEFS.view("u")
    event = EventEvaluator(DEFS, view, writer.layout(view)).evaluate(
        {"user_id": 1, "kind": "a", "amount": 5, "score": 1.0, "ts": BASE}, 0, 0)
    used = apply_events(writer, [(view, [event])], progress={"ev/0": "0"},
                        after_read=lambda attempt: redis.delete(apply_lock_key("t")))
    assert used.attempts == 1 and writer.read_progress() == {"ev/0": "0"}


def test_a_write_between_read_and_commit_forces_a_re_merge(redis):
    """Writer A reads under the apply lock; the lock expires (deleted here) and writer B takes
    it and commits to the same entity; then A would commit: the lock's epoch moved, so A
    writes nothing, re-reads and re-merges, and both batches count (a lost update would show
    1, not 2)."""
    from parity.registry.online.keys import apply_lock_key

    a, b = (OnlineWriter(redis.__class__(connection_pool=redis.connection_pool), "t", DEFS, clock=CLOCK)
            for _ in range(2))
    view = DEFS.view("u")
    evaluator = EventEvaluator(DEFS, view, a.layout(view))
    row = {"user_id": 1, "kind": "a", "amount": 5, "score": 1.0, "ts": BASE}
    first, second = evaluator.evaluate(row, 0, 0), evaluator.evaluate(row, 1, 0)
    attempts = []

    def interleave(attempt):
        attempts.append(attempt)
        if attempt == 1:
            redis.delete(apply_lock_key("t"))  # A's lock expires
            apply_events(b, [(view, [second])])  # no markers: only the entity key is shared

    used = apply_events(a, [(view, [first])], progress={"ev/0": "0", "ev/0/at": COMMIT_TIME},
                        after_read=interleave)
    assert used.attempts == 2 and attempts == [1, 2]
    stored = OnlineWriter(redis, "t", DEFS).read_progress()
    assert stored["ev/0/at"] == str(used.committed_at) and abs(used.committed_at - time.time() * 1e6) < 5e6
    from parity.serving.lookup import OnlineReader

    result = OnlineReader(redis, "t", DEFS, clock=CLOCK).get_online_features(
        {"user_id": [1]}, features=["u:n_lifetime", "u:amount_a_1h"], now=to_micros(BASE + timedelta(minutes=1)))
    assert result.values["u__n_lifetime"] == [2] and result.values["u__amount_a_1h"] == [10]


STEPS = 150


def test_stream_applies_keep_keys_expiring_trimmed_and_pruned(redis):
    """apply_events refreshes expiries, trims tails and prunes old tiles once per finest tile
    per entity (not on every write): after a simulated week of hourly events the entity
    hash holds no tile past its resolution's retention, both keys expire, and writes within
    one finest tile skip the maintenance commands."""
    from parity.registry.online.keys import entity_key, tail_key, view_prefix

    redis.flushall()
    clock = {"now": to_micros(BASE)}
    writer = OnlineWriter(redis, "t", DEFS, clock=lambda: clock["now"])
    view = DEFS.view("o")
    layout = writer.layout(view)
    evaluator = EventEvaluator(DEFS, view, layout)
    prefix = view_prefix("t", "o", view.version)
    key, tail = entity_key(prefix, b"i1;"), tail_key(prefix, b"i1;")
    for step in range(STEPS):
        clock["now"] = to_micros(BASE + timedelta(hours=step))
        row = {"user_id": 1, "kind": "a", "amount": step, "ts": BASE + timedelta(hours=step, seconds=-30)}
        apply_events(writer, [(view, [evaluator.evaluate(row, 0, step)])])
    limit, _cuts = writer.prune_limits(layout, clock["now"])
    written = STEPS * len(layout.resolutions)  # distinct tiles written: one per resolution and step
    assert written > limit  # so the hash stays bounded only if it was pruned
    fields = redis.hkeys(key)
    assert 0 < len(fields) <= limit
    first = to_micros(BASE + timedelta(seconds=-30))
    finest = layout.resolutions[0]
    assert b"%d:%d" % (finest // 1_000_000, first // finest) not in fields  # the oldest tiles are gone
    assert redis.pttl(key) > 0 and redis.pttl(tail) > 0
    assert all(score >= writer.tail_floor(layout) for _m, score in redis.zrange(tail, 0, -1, withscores=True))
    # a second write in the same finest tile: tiles and tail only, no maintenance commands
    before = redis.info("commandstats")
    row = {"user_id": 1, "kind": "a", "amount": 1, "ts": BASE + timedelta(hours=STEPS - 1, seconds=-20)}
    apply_events(writer, [(view, [evaluator.evaluate(row, 0, 99)])])
    after = redis.info("commandstats")
    calls = lambda stats, name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)  # noqa: E731
    assert calls(after, "hset") == calls(before, "hset") + 1 and calls(after, "zadd") == calls(before, "zadd") + 1
    assert calls(after, "hlen") == calls(before, "hlen") and calls(after, "zremrangebyscore") == calls(
        before, "zremrangebyscore")
    assert calls(after, "pexpire") == calls(before, "pexpire")

    def commands_of_a_write_at(at, offset):
        clock["now"] = to_micros(at)
        row = {"user_id": 1, "kind": "a", "amount": 1, "ts": at - timedelta(seconds=1)}
        before = redis.info("commandstats")
        apply_events(writer, [(view, [evaluator.evaluate(row, 0, offset)])])
        after = redis.info("commandstats")
        return {name: calls(after, name) - calls(before, name) for name in ("pexpire", "zremrangebyscore")}

    last = BASE + timedelta(hours=STEPS - 1)
    finest = timedelta(microseconds=layout.finest)
    # the tail is trimmed (and its expiry refreshed) every second finest tile, the key's
    # expiry once half of it has passed
    assert commands_of_a_write_at(last + finest, 100) == {"pexpire": 0, "zremrangebyscore": 0}
    assert commands_of_a_write_at(last + 2 * finest, 101) == {"pexpire": 1, "zremrangebyscore": 1}
    half = timedelta(milliseconds=writer.expiry_ms(layout) // 2)
    assert commands_of_a_write_at(last + 2 * finest + half + finest, 102) == {"pexpire": 2, "zremrangebyscore": 1}
    assert redis.pttl(key) > half.total_seconds() * 1000

"""Training sets work when the data does not fit in DuckDB's memory limit.

The same training set is computed twice on real Parquet: with no limit, and with a
memory_limit far below the working set (DuckDB must spill to its temp directory). The two
must be identical, and a sample of rows must equal the naive oracle.
"""

from __future__ import annotations

import random
import resource


import numpy as np
import pyarrow as pa

from parity.batch.engine import connect, run_training_set
from parity.batch.offline_log import OfflineLog
from batch_fixtures import BASE, DEFS, EVENT_SCHEMA, RESOLVED, SOURCE
from oracle import close, feature_value

EVENTS = 600_000
SPINE = 150_000
USERS = 10_000
LIMIT_MB = 200


def make_events(seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    base_us = int((BASE - BASE.replace(year=1970, month=1, day=1, hour=0)).total_seconds() * 1e6)
    ts = base_us + rng.integers(-3 * 86400 * 10**6, 3 * 86400 * 10**6, EVENTS)
    lag = rng.integers(0, 5 * 10**6, EVENTS)
    amount = rng.integers(-100, 100, EVENTS)
    score = rng.normal(0, 100, EVENTS).round(3)
    return pa.table({
        "user_id": pa.array(rng.zipf(1.3, EVENTS) % USERS, pa.int64()),
        "kind": pa.array(rng.choice(np.array(["a", "b", "c"]), EVENTS)),
        "amount": pa.array(amount, pa.int64(), mask=rng.random(EVENTS) < 0.05),
        "score": pa.array(score, pa.float64(), mask=rng.random(EVENTS) < 0.05),
        "ts": pa.array(ts, pa.timestamp("us")),
        "_ingested_at": pa.array(ts + lag, pa.timestamp("us")),
        "_applied_at": pa.array(ts + lag + 200_000, pa.timestamp("us")),
        "_partition": pa.array(rng.integers(0, 4, EVENTS), pa.int32()),
        "_offset": pa.array(np.arange(EVENTS), pa.int64()),
    }, schema=EVENT_SCHEMA)


def make_spine(seed: int = 12) -> pa.Table:
    rng = np.random.default_rng(seed)
    base_us = int((BASE - BASE.replace(year=1970, month=1, day=1, hour=0)).total_seconds() * 1e6)
    return pa.table({
        "user_id": pa.array(rng.zipf(1.3, SPINE) % USERS, pa.int64()),
        "ts": pa.array(base_us + rng.integers(-2 * 86400 * 10**6, 3 * 86400 * 10**6, SPINE), pa.timestamp("us")),
        "label": pa.array(rng.integers(0, 2, SPINE), pa.int64()),
    })


def test_training_set_spills_and_stays_exact(tmp_path):
    log = OfflineLog(tmp_path / "log")
    events = make_events()
    log.write(SOURCE, events, batch_id="b1")
    scan = lambda name: log.scan_sql(DEFS.source(name))  # noqa: E731
    spine = make_spine()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    unlimited = run_training_set(connect(), DEFS, RESOLVED, spine, scan, mode="as_served").to_pylist()
    working_set = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    # the limit is far below what the same work takes without one
    assert working_set > 4 * LIMIT_MB * 2**20, working_set
    con = connect(memory_limit=f"{LIMIT_MB}MB", threads=1, temp_directory=tmp_path / "spill")
    limited = run_training_set(con, DEFS, RESOLVED, spine, scan, mode="as_served")
    assert limited.num_rows == SPINE
    got = limited.to_pylist()
    for i, (a, b) in enumerate(zip(got, unlimited)):
        assert a.keys() == b.keys()
        for column in a:  # floats may be added in another order: 1e-9 relative
            assert close(a[column], b[column]), (i, column, a[column], b[column])

    rows = events.to_pylist()
    by_user: dict[int, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append({**r, "_ts": r["ts"], "_visible": r["_applied_at"],
                                                     "_order": (r["_partition"], r["_offset"])})
    sample = random.Random(3).sample(range(SPINE), 25)
    for i in sample:
        row = got[i]
        for item in RESOLVED:
            want = feature_value(item.view, item.feature, by_user.get(row["user_id"], []),
                                 {"user_id": row["user_id"]}, row["ts"], "as_served")
            assert close(row[item.output_name], want), (i, item.output_name, row[item.output_name], want)



def test_event_time_running_totals_under_a_memory_limit_equal_the_oracle(tmp_path):
    """Event-time training sets read counts and integer sums from running totals kept by a
    streaming window over sorted events: with two threads, a spilling sort and 600k events,
    the order must hold (a sample of rows against the oracle)."""
    log = OfflineLog(tmp_path / "log")
    events = make_events(seed=21)
    log.write(SOURCE, events, batch_id="b1")
    scan = lambda name: log.scan_sql(DEFS.source(name))  # noqa: E731
    spine = make_spine(seed=22)
    # Two threads under 200 MB ran out of memory in 2 of 3 runs (DuckDB: "could not allocate
    # block"), so this test uses 400 MB; the 200 MB case is covered by the test above.
    con = connect(memory_limit=f"{2 * LIMIT_MB}MB", threads=2, temp_directory=tmp_path / "spill")
    got = run_training_set(con, DEFS, RESOLVED, spine, scan, mode="event_time").to_pylist()
    assert len(got) == SPINE
    by_user: dict[int, list[dict]] = {}
    for r in events.to_pylist():
        by_user.setdefault(r["user_id"], []).append({**r, "_ts": r["ts"], "_visible": r["_applied_at"],
                                                     "_order": (r["_partition"], r["_offset"])})
    # heavy users (zipf: user 1 has most events) are where an order slip would show
    heavy = [i for i, row in enumerate(got) if row["user_id"] in (1, 2, 3)][:3]
    for i in heavy + random.Random(5).sample(range(SPINE), 20):
        row = got[i]
        for item in RESOLVED:
            want = feature_value(item.view, item.feature, by_user.get(row["user_id"], []),
                                 {"user_id": row["user_id"]}, row["ts"], "event_time")
            assert close(row[item.output_name], want), (i, item.output_name, row[item.output_name], want)

"""Latest values equal the oracle on both paths, in both modes, straight from the spine (a plan
of latest values only; result in memory and to Parquet) and as one group among others:

- DuckDB: a hash join (one row per key) that falls back to the history when some spine row
  sees two rows of its key;
- in memory (Arrow and NumPy, :mod:`parity.batch.latest_arrow`): any number of rows per key;
  plus its key encoding and search on random keys of every kind, against a naive search,
  and the dispatch rule between the two."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.batch.engine import Phases, connect, run_training_set
from parity.registry.models import Definitions, Entity, Feature, FeatureView
from parity.registry.resolve import resolve
from batch_fixtures import EVENT_SCHEMA, SOURCE, events, spines
from oracle import close, feature_value

LATEST = FeatureView(name="p", entity="user", source="ev", owner="t", derived={"twice": "amount * 2"}, features=[
    Feature(name="kind", agg="last", column="kind", ttl="2h"),
    Feature(name="score", agg="last", column="score", ttl="30m"),
    Feature(name="amount_a", agg="last", column="amount", ttl="1d", where="kind = 'a'"),
    Feature(name="twice_big", agg="last", column="twice", ttl="3h", where="amount > 10"),
])
WINDOWED = FeatureView(name="w", entity="user", source="ev", owner="t", features=[
    Feature(name="n_1h", agg="count", window="1h"),
])
DEFS = Definitions(entities=[Entity(name="user", join_keys={"user_id": "int64"})], sources=[SOURCE],
                   feature_views=[LATEST, WINDOWED])
ONLY_LATEST = resolve(DEFS, features=["p:*"])
MIXED = resolve(DEFS, features=["w:n_1h", "p:*"])
SPINE_SCHEMA = pa.schema([("user_id", pa.int64()), ("ts", pa.timestamp("us")), ("label", pa.int64())])


def one_per_key(rows):
    """At most one row per user (the first of each)."""
    seen, kept = set(), []
    for row in rows:
        if row["user_id"] not in seen:
            seen.add(row["user_id"])
            kept.append(row)
    return kept


def compute(rows, spine, mode, resolved, out=None, latest="duckdb"):
    con = connect()
    con.register("events_arrow", pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
    phases = Phases()
    table = pa.Table.from_pylist(spine, schema=SPINE_SCHEMA)
    got = run_training_set(con, DEFS, resolved, table, lambda source: "events_arrow", mode=mode, out=out,
                           phases=phases, latest=latest)
    if out is not None:
        got = pq.read_table(got)
    return got.to_pylist(), list(phases.seconds)


def check(rows, spine, mode, resolved, out=None, latest="duckdb"):
    got, phases = compute(rows, spine, mode, resolved, out, latest)
    events_ = [{**r, "_ts": r["ts"], "_visible": r["_applied_at"] or r["_ingested_at"],
                "_order": (r["_partition"], r["_offset"])} for r in rows]
    assert len(got) == len(spine)
    for i, (g, s) in enumerate(zip(got, spine)):
        assert [g[c] for c in ("user_id", "ts", "label")] == [s["user_id"], s["ts"], s["label"]], "spine order"
        assert list(g) == ["user_id", "ts", "label"] + [item.output_name for item in resolved]
        for item in resolved:
            want = feature_value(item.view, item.feature, events_, {"user_id": s["user_id"]}, s["ts"], mode)
            assert close(g[item.output_name], want), (mode, i, item.output_name, g[item.output_name], want, s)
    return phases


def sees_two(rows, spine, mode):
    """Whether some spine row has two rows of its key that count at its time."""
    for s in spine:
        counted = [r for r in rows if r["user_id"] == s["user_id"] and r["ts"] < s["ts"]
                   and (mode == "event_time" or (r["_applied_at"] or r["_ingested_at"]) <= s["ts"])]
        if len(counted) >= 2:
            return True
    return False


MODES = st.sampled_from(["event_time", "as_served"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=MODES, to_file=st.booleans())
def test_one_row_per_key_takes_the_hash_join_from_the_spine(data, mode, to_file, tmp_path_factory):
    rows = one_per_key(data.draw(events()))
    out = tmp_path_factory.mktemp("ts") / "out.parquet" if to_file else None
    phases = check(rows, data.draw(spines(rows)), mode, ONLY_LATEST, out)
    assert phases == ["plan", "spine", "features: p v1 latest values by hash join, from the spine"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=MODES, to_file=st.booleans())
def test_several_rows_per_key_fall_back_to_the_history(data, mode, to_file, tmp_path_factory):
    rows = data.draw(events())
    spine = data.draw(spines(rows))
    out = tmp_path_factory.mktemp("ts") / "out.parquet" if to_file else None
    phases = check(rows, spine, mode, ONLY_LATEST, out)
    fell_back = "features: p v1 latest values from history (4 features)" in phases
    assert fell_back == sees_two(rows, spine, mode), phases


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=MODES, single=st.booleans())
def test_latest_group_among_others(data, mode, single):
    rows = data.draw(events())
    rows = one_per_key(rows) if single else rows
    spine = data.draw(spines(rows))
    phases = check(rows, spine, mode, MIXED)
    joined = "features: p v1 latest values by hash join (4 features)" in phases
    assert joined != sees_two(rows, spine, mode), phases


def test_forced_paths_by_hand():
    """One row per key joins straight from the spine; a second row before t falls back."""
    from datetime import datetime, timedelta

    t = datetime(2026, 1, 10, 12, 0)
    row = {"user_id": 1, "kind": "a", "amount": 20, "score": 1.5, "ts": t - timedelta(minutes=10),
           "_ingested_at": t - timedelta(minutes=10), "_applied_at": None, "_partition": -1, "_offset": 0}
    spine = [{"user_id": 1, "ts": t, "label": 0}, {"user_id": 2, "ts": t, "label": 1}]
    got, phases = compute([row], spine, "event_time", ONLY_LATEST)
    assert phases[-1] == "features: p v1 latest values by hash join, from the spine"
    assert got[0]["p__kind"] == "a" and got[0]["p__amount_a"] == 20 and got[0]["p__twice_big"] == 40
    assert got[1]["p__kind"] is None
    older = {**row, "kind": "b", "ts": t - timedelta(minutes=20), "_offset": 1}
    got, phases = compute([row, older], spine, "event_time", ONLY_LATEST)
    assert "features: p v1 latest values from history (4 features)" in phases
    assert got[0]["p__kind"] == "a"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=MODES, to_file=st.booleans(), single=st.booleans())
def test_in_memory_from_the_spine_equals_the_oracle(data, mode, to_file, single, tmp_path_factory):
    rows = data.draw(events())
    rows = one_per_key(rows) if single else rows
    out = tmp_path_factory.mktemp("ts") / "out.parquet" if to_file else None
    phases = check(rows, data.draw(spines(rows)), mode, ONLY_LATEST, out, latest="arrow")
    assert phases == ["plan", "spine", "features: p v1 latest values in memory, from the spine"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=MODES)
def test_in_memory_among_others_equals_the_oracle(data, mode):
    rows = data.draw(events())
    phases = check(rows, data.draw(spines(rows)), mode, MIXED, latest="arrow")
    assert "features: p v1 latest values in memory (4 features)" in phases


def test_both_paths_write_the_same_parquet(tmp_path):
    """Same schema and values whether the latest values come from DuckDB or from memory."""
    from datetime import datetime, timedelta

    t = datetime(2026, 1, 10, 12, 0)
    rows = [{"user_id": u, "kind": k, "amount": 20 + u, "score": 0.5 * u, "ts": t - timedelta(minutes=10 * u),
             "_ingested_at": t, "_applied_at": None, "_partition": -1, "_offset": u} for u, k in [(1, "a"), (2, None)]]
    spine = [{"user_id": u, "ts": t, "label": i} for i, u in enumerate((2, 1, 3, None))]
    tables = {}
    for latest in ("duckdb", "arrow"):
        got, _ = compute(rows, spine, "event_time", ONLY_LATEST, tmp_path / f"{latest}.parquet", latest)
        tables[latest] = pq.read_table(tmp_path / f"{latest}.parquet")
        assert got[1]["p__amount_a"] == 21
    assert tables["arrow"].schema == tables["duckdb"].schema
    assert tables["arrow"].equals(tables["duckdb"])


def naive_newest(codes, ts, g, p, o, point_codes, t, as_served):
    """Per point: the index of the greatest (ts, p, o) among rows of its code counting at t."""
    out = []
    for c, at in zip(point_codes, t):
        best = -1
        for i in range(len(codes)):
            counts = (g[i] <= at) if as_served else (ts[i] < at)
            if c >= 0 and codes[i] == c and counts and (best < 0 or (ts[i], p[i], o[i]) > (ts[best], p[best], o[best])):
                best = i
        out.append(best)
    return out


KEY_VALUES = {
    "int64": st.integers(-3, 3) | st.sampled_from([-2**62, 2**62]),
    "string": st.sampled_from(["a", "b", "", "ü"]),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kinds=st.lists(st.sampled_from(sorted(KEY_VALUES)), min_size=1, max_size=3),
       as_served=st.booleans())
def test_in_memory_search_equals_a_naive_search(data, kinds, as_served):
    """Keys of every kind (integers over a short or a huge range, strings, composite), ties and
    out-of-order rows: the codes match keys exactly, and each point finds the newest counting row."""
    import numpy as np

    from parity.batch.latest_arrow import encode_keys, newest_counting

    n = data.draw(st.integers(0, 25))
    m = data.draw(st.integers(1, 10))
    row_keys = [data.draw(st.lists(KEY_VALUES[k], min_size=n, max_size=n)) for k in kinds]
    point_keys = [data.draw(st.lists(KEY_VALUES[k] | st.none(), min_size=m, max_size=m)) for k in kinds]
    types = {"int64": pa.int64(), "string": pa.string()}
    codes, point_codes, ncodes = encode_keys([pa.chunked_array([pa.array(v, types[k])]) for v, k in zip(row_keys, kinds)],
                                             [pa.chunked_array([pa.array(v, types[k])]) for v, k in zip(point_keys, kinds)])
    rows_of = list(zip(*row_keys)) if n else []
    for i, key in enumerate(zip(*point_keys)):
        if key in rows_of:
            assert point_codes[i] == codes[rows_of.index(key)]
        else:  # no row has the key: -1, or a code no row has
            assert point_codes[i] == -1 or point_codes[i] not in codes
    for i in range(n):
        for j in range(n):
            assert (codes[i] == codes[j]) == (rows_of[i] == rows_of[j])
    assert all(0 <= c < ncodes for c in codes)
    small = st.integers(0, 6)
    ts = np.array(data.draw(st.lists(small, min_size=n, max_size=n)), dtype=np.int64)
    g = ts + 1 + (np.array(data.draw(st.lists(small, min_size=n, max_size=n)), dtype=np.int64) if as_served else 0)
    p = np.array(data.draw(st.lists(st.integers(-1, 1), min_size=n, max_size=n)), dtype=np.int64)
    o = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    t = np.array(data.draw(st.lists(st.integers(-1, 14), min_size=m, max_size=m)), dtype=np.int64)
    got = newest_counting(codes, ts, g, p, o, ncodes, point_codes, t, as_served)
    want = naive_newest(codes, ts, g, p, o, point_codes, t, as_served)
    # equal (ts, p, o) rows are the same event for the semantics: compare what they are, not where
    for a, b in zip(got, want):
        assert (a == -1) == (b == -1)
        if a >= 0:
            assert (codes[a], ts[a], p[a], o[a]) == (codes[b], ts[b], p[b], o[b])


def test_the_dispatch_rule():
    """In memory exactly when the working set fits an eighth of the memory limit; forced paths win."""
    from parity.batch.latest_arrow import MEMORY_SHARE, choose, working_set
    from parity.batch.training_set import plan_groups
    from parity.errors import ParityError

    group = plan_groups(ONLY_LATEST, "event_time", DEFS)[0]
    need = working_set(DEFS, group, 1_000_000, 1_000_000)
    assert choose("auto", DEFS, group, 1_000_000, 1_000_000, need * MEMORY_SHARE) == "arrow"
    assert choose("auto", DEFS, group, 1_000_000, 1_000_000, need * MEMORY_SHARE - 1) == "duckdb"
    assert choose("duckdb", DEFS, group, 1, 1, 10**12) == "duckdb"
    assert choose("arrow", DEFS, group, 10**12, 1, 1) == "arrow"
    with pytest.raises(ParityError):
        choose("pandas", DEFS, group, 1, 1, 1)


def test_composite_string_and_bool_keys_on_both_paths():
    """An entity keyed by (string, bool): null keys never match, both paths agree with the rule."""
    from datetime import datetime, timedelta

    from parity.registry.models import Source

    source = Source(name="kv", schema={"a": "string", "b": "bool", "kind": "string", "ts": "timestamp"},
                    timestamp_field="ts")
    view = FeatureView(name="k", entity="e", source="kv", owner="t",
                       features=[Feature(name="kind", agg="last", column="kind", ttl="2h")])
    defs = Definitions(entities=[Entity(name="e", join_keys={"a": "string", "b": "bool"})], sources=[source],
                       feature_views=[view])
    t = datetime(2026, 1, 10, 12)
    schema = pa.schema([("a", pa.string()), ("b", pa.bool_()), ("kind", pa.string()), ("ts", pa.timestamp("us")),
                        ("_ingested_at", pa.timestamp("us")), ("_applied_at", pa.timestamp("us")),
                        ("_partition", pa.int32()), ("_offset", pa.int64())])
    rows = [{"a": a, "b": b, "kind": kind, "ts": t - timedelta(minutes=ago), "_ingested_at": t, "_applied_at": None,
             "_partition": 0, "_offset": i}
            for i, (a, b, kind, ago) in enumerate([("x", True, "k1", 10), ("x", True, "k2", 5), ("x", False, "k3", 1),
                                                   ("y", True, "k4", 200), ("", None, "k5", 1)])]
    spine = pa.Table.from_pylist([{"a": a, "b": b, "ts": t} for a, b in
                                  [("x", True), ("x", False), ("y", True), ("z", True), (None, True), ("", None)]])
    for mode in ("event_time", "as_served"):
        for latest in ("arrow", "duckdb"):
            con = connect()
            con.register("kv_arrow", pa.Table.from_pylist(rows, schema=schema))
            got = run_training_set(con, defs, resolve(defs, features=["k:*"]), spine, lambda source: "kv_arrow",
                                   mode=mode, latest=latest)
            assert got.column("k__kind").to_pylist() == ["k2", "k3", None, None, None, None], (mode, latest)


TAKE_VALUES = {
    pa.int64(): st.integers(-2**63, 2**63 - 1),
    pa.float64(): st.floats(allow_nan=False),
    pa.bool_(): st.booleans(),
    pa.string(): st.text(max_size=5),
    pa.timestamp("us"): st.datetimes(),
    pa.list_(pa.int64()): st.lists(st.integers(0, 9), max_size=3),
}


@settings(max_examples=120, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(list(TAKE_VALUES)), chunks=st.integers(1, 3))
def test_take_live_equals_a_take_with_null_indices(data, dtype, chunks):
    """Flat columns taken plainly with the live mask as validity, others with null indices:
    the same array as one take with null indices (live rows hold values, as when chosen)."""
    import numpy as np

    from parity.batch.latest_arrow import take_live

    values = data.draw(st.lists(st.none() | TAKE_VALUES[dtype], min_size=1, max_size=30))
    n = data.draw(st.integers(0, 40))
    rows = data.draw(st.lists(st.integers(0, len(values) - 1), min_size=n, max_size=n))
    live = [data.draw(st.booleans()) and values[r] is not None for r in rows]
    cut = sorted(data.draw(st.lists(st.integers(0, len(values)), min_size=chunks - 1, max_size=chunks - 1)))
    bounds = [0, *cut, len(values)]
    column = pa.chunked_array([pa.array(values[a:b], type=dtype) for a, b in zip(bounds, bounds[1:])], type=dtype)
    got = take_live(column, np.array(rows, dtype=np.int64), np.array(live, dtype=bool))
    want = column.take(pa.array(rows, type=pa.int64(), mask=~np.array(live, dtype=bool)))
    assert got.type == dtype
    assert got.to_pylist() == want.to_pylist()
    assert got.null_count == want.null_count
    got.validate(full=True)


@pytest.mark.parametrize("latest", ["arrow", "duckdb"])
@pytest.mark.parametrize("resolved", [ONLY_LATEST, MIXED], ids=["direct", "general"])
def test_spine_faults_are_named_on_every_path(latest, resolved):
    """A null time, or a key value that is not of its key's type, is an error naming it, on
    every plan; with both, the null time is named (the key check runs only when the key
    column has another type)."""
    from datetime import datetime

    from parity.batch.training_set import SpineError

    t = datetime(2026, 1, 10, 12, 0)
    rows = [{"user_id": 1, "kind": "a", "amount": 3, "score": 0.5, "ts": datetime(2026, 1, 10, 11, 0),
             "_ingested_at": t, "_applied_at": None, "_partition": 0, "_offset": 0}]

    def run(spine):
        con = connect()
        con.register("events_arrow", pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
        return run_training_set(con, DEFS, resolved, spine, lambda source: "events_arrow", latest=latest)

    null_time = pa.table({"user_id": [1, 1, 2], "ts": pa.array([t, None, None], pa.timestamp("us"))})
    with pytest.raises(SpineError, match="2 spine rows have a null 'ts'"):
        run(null_time)
    text_keys = pa.table({"user_id": ["1", "x", None], "ts": pa.array([t, t, t], pa.timestamp("us"))})
    with pytest.raises(SpineError, match="1 spine values of 'user_id' are not int64"):
        run(text_keys)
    both = pa.table({"user_id": ["1", "x"], "ts": pa.array([t, None], pa.timestamp("us"))})
    with pytest.raises(SpineError, match="1 spine rows have a null 'ts'"):
        run(both)
    fine = run(pa.table({"user_id": ["1", "2"], "ts": pa.array([t, t], pa.timestamp("us"))}))
    assert fine.column("p__kind").to_pylist() == ["a", None]

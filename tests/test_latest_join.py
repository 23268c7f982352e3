"""Latest values by hash join (one row per key) equal the oracle, and fall back to the history
when some spine row sees two rows of its key: straight from the spine (a plan of latest
values only, in memory and to Parquet) and as one group among others, in both modes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
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


def compute(rows, spine, mode, resolved, out=None):
    con = connect()
    con.register("events_arrow", pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
    phases = Phases()
    table = pa.Table.from_pylist(spine, schema=SPINE_SCHEMA)
    got = run_training_set(con, DEFS, resolved, table, lambda source: "events_arrow", mode=mode, out=out,
                           phases=phases)
    if out is not None:
        got = pq.read_table(got)
    return got.to_pylist(), list(phases.seconds)


def check(rows, spine, mode, resolved, out=None):
    got, phases = compute(rows, spine, mode, resolved, out)
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

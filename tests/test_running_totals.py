"""Running totals in memory (:mod:`parity.batch.prefix_arrow`): the exact fixed-point limbs,
the fallback to DuckDB when a bound fails, and the dispatch rule. The values themselves
are checked against the oracle in test_training_set_oracle.py (both paths)."""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from parity.batch.engine import Phases, connect, memory_limit_bytes, run_training_set
from parity.batch.prefix import SCALES, PrefixGroup
from parity.batch.prefix_arrow import SHARE, choose, limb, limb_layout, limbs_to_double, working_set
from parity.registry.models import Definitions, Entity, Feature, FeatureView, Source
from parity.registry.resolve import resolve
from parity.registry.semantics import feature_window


@st.composite
def fixed_point(draw):
    """A scale ``S`` and doubles that are multiples of ``2**-S`` with all ``|x| * 2**S`` together
    below ``2**125`` (what :func:`parity.batch.prefix.exact_float_scales` guarantees)."""
    scale = draw(st.sampled_from(SCALES))
    n = draw(st.integers(1, 40))
    width = draw(st.integers(0, 53))
    top = min(width, 125 - 6 - scale if scale < 119 else 0)  # n <= 40 < 2**6
    values = [float(Fraction(draw(st.integers(-(2 ** top) + 1, 2 ** top - 1)), 2 ** scale)
                    * 2 ** draw(st.integers(0, max(0, 125 - 6 - top - scale)))) for _ in range(n)]
    return scale, values


@settings(max_examples=300, deadline=None)
@given(case=fixed_point(), data=st.data())
def test_limbs_are_exact_and_differences_round_once_or_so(case, data):
    scale, values = case
    x = np.array(values, dtype=np.float64)
    largest = float(np.abs(x).max()) * 2.0 ** scale
    limbs, bits = limb_layout(largest, len(x))
    parts = [limb(x, scale, k, limbs, bits) for k in range(limbs)]
    for i, value in enumerate(values):  # every value, exactly, from its limbs
        assert sum(int(p[i]) << (bits * k) for k, p in enumerate(parts)) == Fraction(value) * 2 ** scale
    totals = [np.concatenate([[0], np.cumsum(p)]) for p in parts]
    pairs = data.draw(st.lists(st.tuples(st.integers(0, len(x)), st.integers(0, len(x))), min_size=1, max_size=20))
    hi = np.array([b for _, b in pairs])
    lo = np.array([a for a, _ in pairs])
    got = limbs_to_double([t[hi] - t[lo] for t in totals], scale, bits)
    for (a, b), g in zip(pairs, got):
        want = sum(Fraction(v) for v in values[:b]) - sum(Fraction(v) for v in values[:a])
        if want == 0:
            assert g == 0
        else:
            assert abs(Fraction(float(g)) - want) <= abs(want) * Fraction(1, 2 ** 50), (a, b, g, float(want))


SOURCE = Source(name="ev", schema={"user_id": "int64", "amount": "int64", "ts": "timestamp"}, timestamp_field="ts")
VIEW = FeatureView(name="big", entity="user", source="ev", owner="t", features=[
    Feature(name="amount_1h", agg="sum", column="amount", window="1h"),
    Feature(name="n_1h", agg="count", window="1h"),
])
DEFS = Definitions(entities=[Entity(name="user", join_keys={"user_id": "int64"})], sources=[SOURCE],
                   feature_views=[VIEW])
SCHEMA = pa.schema([("user_id", pa.int64()), ("amount", pa.int64()), ("ts", pa.timestamp("us")),
                    ("_ingested_at", pa.timestamp("us")), ("_applied_at", pa.timestamp("us")),
                    ("_partition", pa.int32()), ("_offset", pa.int64())])


def _training_set(rows, spine, running):
    con = connect()
    con.register("ev_arrow", pa.Table.from_pylist(rows, schema=SCHEMA))
    phases = Phases()
    got = run_training_set(con, DEFS, resolve(DEFS, features=["big:*"]), spine, lambda source: "ev_arrow",
                           running=running, phases=phases)
    return got.to_pylist(), [name for name in phases.seconds if "running totals" in name]


def test_totals_that_may_pass_int64_fall_back_to_duckdb():
    """Four events of 2**61 (their total needs 64 bits): NumPy's int64 running totals could
    wrap, so the in-memory path declines and DuckDB computes the group; windows holding at
    most three of them fit int64 and agree with a sum by hand."""
    base = datetime(2026, 1, 10, 10, 0)
    rows = [{"user_id": 1, "amount": 2 ** 61, "ts": base + timedelta(minutes=30 * i), "_ingested_at": base,
             "_applied_at": base, "_partition": 0, "_offset": i} for i in range(4)]
    times = [base + timedelta(minutes=50), base + timedelta(minutes=95), base + timedelta(hours=3)]
    spine = pa.table({"user_id": [1, 1, 2], "ts": pa.array(times, pa.timestamp("us"))})
    got, steps = _training_set(rows, spine, "arrow")
    assert steps == ["features: big v1 running totals (2 features)"]
    for row, t in zip(got, times):
        start = t - timedelta(hours=1)
        start -= timedelta(minutes=start.minute % 5, seconds=start.second)  # floor(t - 1h, 5m)
        window = [r for r in rows if start <= r["ts"] < t and row["user_id"] == r["user_id"]]
        assert row["big__amount_1h"] == sum(r["amount"] for r in window)
        assert row["big__n_1h"] == len(window)
    small = [{**r, "amount": 7} for r in rows]  # the same events with small amounts stay in memory
    _, steps = _training_set(small, spine, "arrow")
    assert steps == ["features: big v1 running totals in memory (2 features)"]


def test_dispatch_in_memory_while_the_working_set_fits_its_share():
    group = PrefixGroup(VIEW, [(item, feature_window(VIEW, item.feature))
                               for item in resolve(DEFS, features=["big:*"])])
    need = working_set(DEFS, group, 1_000_000, 100_000)
    assert need > 0
    part, whole = SHARE
    least = -(-need * whole // part)  # the smallest memory limit whose share holds the working set
    assert choose("auto", DEFS, group, 1_000_000, 100_000, least) == "arrow"
    assert choose("auto", DEFS, group, 1_000_000, 100_000, least - 1) == "duckdb"
    assert working_set(DEFS, group, 2_000_000, 100_000) > need  # grows with the rows
    assert choose("duckdb", DEFS, group, 1, 1, 10 ** 12) == "duckdb"
    assert choose("arrow", DEFS, group, 10 ** 12, 10 ** 12, 1) == "arrow"


def test_the_memory_limit_lowered_for_the_arrays_comes_back_unchanged():
    """With ``running="auto"`` the in-memory path lowers DuckDB's limit while its arrays live,
    then sets it again: to the limit as it was, not to DuckDB's rounded display of it (which
    would shrink it a little on every group of every training set)."""
    base = datetime(2026, 1, 10, 10, 0)
    rows = [{"user_id": 1 + i % 3, "amount": i, "ts": base + timedelta(minutes=7 * i), "_ingested_at": base,
             "_applied_at": base, "_partition": 0, "_offset": i} for i in range(40)]
    spine = pa.table({"user_id": [1, 2, 3], "ts": pa.array([base + timedelta(hours=5)] * 3, pa.timestamp("us"))})
    con = connect("10GB")
    con.register("ev_arrow", pa.Table.from_pylist(rows, schema=SCHEMA))
    before = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    for _ in range(3):
        phases = Phases()
        run_training_set(con, DEFS, resolve(DEFS, features=["big:*"]), spine, lambda source: "ev_arrow",
                         running="auto", phases=phases)
        assert [n for n in phases.seconds if "running totals" in n] == ["features: big v1 running totals in memory (2 features)"]
        assert con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] == before
        assert memory_limit_bytes(con) == 10 * 10**9

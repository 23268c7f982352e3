"""The columnar evaluator (a micro-batch at a time) equals the row evaluator (an event at a
time) on random batches: every event's entity, time, ingest order, numeric record (integer
slots bit for bit, float slots by value) and complex partials, for every aggregation, filter and derived column of the
test views, plus composite string keys and bool / timestamp / string extremes."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_fixtures import DEFS, events
from parity.registry.durations import to_micros
from parity.registry.models import Definitions, Entity, Feature, FeatureView, Source
from parity.registry.online.accumulate import EventEvaluator
from parity.registry.expr.vector_eval import VectorUnsupported
from parity.registry.online.columnar import ColumnarEvaluator, ViewEvents, rows_to_columns
from parity.registry.online.layout import ViewLayout

EXTRA_SOURCE = Source(name="x", schema={"region": "string", "shop": "int32", "flag": "bool", "seen": "timestamp",
                                        "label": "string", "qty": "int64", "ts": "timestamp"}, timestamp_field="ts")
EXTRA = Definitions(
    entities=[Entity(name="shop", join_keys={"region": "string", "shop": "int32"})], sources=[EXTRA_SOURCE],
    feature_views=[FeatureView(name="s", entity="shop", source="x", owner="t", derived={"big": "qty * 3 > 10"},
                               features=[
        Feature(name="flag_min_1h", agg="min", column="flag", window="1h"),
        Feature(name="flag_max_1h", agg="max", column="flag", window="1h", where="big"),
        Feature(name="seen_max_24h", agg="max", column="seen", window="24h"),
        Feature(name="seen_min_24h", agg="min", column="seen", window="24h", where="label IS NOT NULL"),
        Feature(name="label_min_1h", agg="min", column="label", window="1h"),
        Feature(name="label_max_1h", agg="max", column="label", window="1h", where="NOT flag"),
        Feature(name="qty_sum_1h", agg="sum", column="qty", window="1h", where="label IN ('a', 'é')"),
        Feature(name="flag_last", agg="last", column="flag", ttl="1h"),
        Feature(name="seen_last3", agg="last_k", column="seen", k=3, window="1h"),
    ])])
BASE = datetime(2026, 1, 10, 10, 0)


@st.composite
def extra_rows(draw):
    rows = []
    for i in range(draw(st.integers(0, 25))):
        rows.append({
            "region": draw(st.sampled_from(["eu", "us", "", "s2:eu;"])),
            "shop": draw(st.sampled_from([1, 2, -(2**31)])),
            "flag": draw(st.one_of(st.none(), st.booleans())),
            "seen": draw(st.one_of(st.none(), st.integers(-10**6, 10**6).map(lambda s: to_micros(BASE) + s * 10**6))),
            "label": draw(st.one_of(st.none(), st.sampled_from(["a", "b", "é", ""]))),
            "qty": draw(st.one_of(st.none(), st.integers(-5, 9))),
            "ts": to_micros(BASE + timedelta(seconds=draw(st.integers(-7200, 7200)))),
            "_partition": draw(st.sampled_from([0, 1])), "_offset": i,
        })
    return rows


def both(defs, view, rows):
    layout = ViewLayout(defs, view)
    rows_events = [e for e in (EventEvaluator(defs, view, layout).evaluate(r, r["_partition"], r["_offset"])
                               for r in rows) if e is not None]
    want = ViewEvents.from_events(layout, rows_events)
    for i, spec in enumerate(layout.complex):  # the partials, exactly as the row evaluator builds them
        assert want.partials(i) == [p for e in rows_events if (p := e.value.partials.get(spec.feature.name)) is not None]
    return want, ColumnarEvaluator(defs, view, layout).evaluate_rows(rows)


def assert_same(want: ViewEvents, got: ViewEvents) -> None:
    assert len(got) == len(want)
    assert [got.entities[i] for i in got.entity] == [want.entities[i] for i in want.entity]
    assert [got.keys[i] for i in got.entity] == [want.keys[i] for i in want.entity]
    assert got.ts.tolist() == want.ts.tolist()
    assert got.partition.tolist() == want.partition.tolist() and got.offset.tolist() == want.offset.tolist()
    assert got.records.shape == want.records.shape
    n_int = want.layout.n_int  # ints bit for bit; floats by value (-0.0 == 0.0: the row path writes a
    # mean's -0.0 total as 0.0)
    differ = (got.records[:, :n_int] != want.records[:, :n_int]).any(axis=1)
    differ |= (got.records[:, n_int:].view(np.float64) != want.records[:, n_int:].view(np.float64)).any(axis=1)
    mismatch = np.flatnonzero(differ)
    assert not len(mismatch), (mismatch, want.layout.decode_numeric(want.records[mismatch[0]].tobytes()),
                               got.layout.decode_numeric(got.records[mismatch[0]].tobytes()))
    for i, (spec, a, b) in enumerate(zip(want.layout.complex, want.complex, got.complex)):
        assert b.index.tolist() == a.index.tolist(), spec.feature.name
        assert b.values == a.values and [type(v) for v in b.values] == [type(v) for v in a.values], spec.feature.name
        assert got.partials(i) == want.partials(i), spec.feature.name


@settings(max_examples=200, deadline=None)
@given(events())
def test_columnar_equals_rows_on_the_test_views(rows):
    rows = [{**r, "ts": to_micros(r["ts"])} for r in rows]
    for view in DEFS.feature_views:
        assert_same(*both(DEFS, view, rows))


@settings(max_examples=200, deadline=None)
@given(extra_rows())
def test_columnar_equals_rows_on_composite_keys_and_extremes(rows):
    assert_same(*both(EXTRA, EXTRA.feature_views[0], rows))


def test_overflowing_expression_falls_back_to_rows():
    rows = [{"region": "eu", "shop": 1, "flag": True, "seen": None, "label": "a", "qty": 2**62, "ts": to_micros(BASE),
             "_partition": 0, "_offset": 0},
            {"region": "eu", "shop": 1, "flag": False, "seen": None, "label": "a", "qty": 2, "ts": to_micros(BASE),
             "_partition": 0, "_offset": 1}]
    view = EXTRA.feature_views[0]
    evaluator = ColumnarEvaluator(EXTRA, view)
    with pytest.raises(VectorUnsupported):  # qty * 3 leaves int64 in the derived column
        evaluator.evaluate(rows_to_columns(rows, evaluator.source_schema), 2, np.zeros(2, dtype=np.int64),
                           np.arange(2))
    want, got = both(EXTRA, view, rows)  # evaluate_rows falls back to the row evaluator
    assert_same(want, got)
    slot = next(n.int_slots[0] for n in got.layout.numeric if n.feature.name == "qty_sum_1h")
    assert got.records[:, slot].tolist() == [2**62, 2]

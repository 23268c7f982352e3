"""Every aggregation has an entry in every engine's dispatch table (or a typed Unsupported)."""

from __future__ import annotations

from parity.batch.aggregates import AGGREGATES
from parity.registry import partials
from parity.registry.models import AGGS
from parity.registry.semantics import empty_value, output_dtype


def test_every_aggregation_is_rendered_by_every_engine():
    assert set(AGGREGATES) == set(AGGS), "DuckDB partial/combine/merge table"
    assert set(partials.MERGE) == set(AGGS), "Python partial merge (online composition)"
    for agg in AGGS:
        spec = AGGREGATES[agg]
        assert spec.partials and spec.combine and spec.merge
        output_dtype(agg, "int64")
        empty_value(agg, "int64")

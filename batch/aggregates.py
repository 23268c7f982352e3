"""DuckDB renderings of each aggregation: tile partials, and the merge of partials.

One table entry per aggregation (the dispatch is checked for completeness by the tests).
A *partial* summarises some events of one entity (a tile, or the events of one timestamp);
*merge* combines the partials of a window into the feature value. The empty-window values
come from :func:`parity.registry.semantics.empty_value`.

Ingest order, used to break ties on equal timestamps, is ``(ts, _partition, _offset)``:
the struct ``__key`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from parity.registry.expr import parse, render_sql
from parity.registry.models import Feature
from parity.registry.semantics import empty_value, output_dtype
from parity.registry.types import DUCKDB_TYPES, INTEGER_TYPES

ORDER_KEY = "{'ts': __ts, 'p': __p, 'o': __o}"


def q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class AggSpec:
    """How one aggregation is computed from tiles.

    ``partials(col, where, f)`` -> list of (suffix, aggregate SQL over events);
    ``combine(p, f)`` -> the same partials, aggregated over partial rows (coarser tiles);
    ``merge(p, f, flt)`` -> SQL over partial rows, where ``p(suffix)`` names a partial column
    and ``flt`` is the ``FILTER (WHERE ...)`` clause selecting the window's partials;
    ``value(p, f)`` -> what ``merge`` gives when a window has exactly one partial row: a
    plain expression over that row's partial columns (no aggregate, so no GROUP BY).
    """

    partials: Callable[[str | None, str, Feature], list[tuple[str, str]]]
    combine: Callable[[Callable[[str], str], Feature], list[tuple[str, str]]]
    merge: Callable[[Callable[[str], str], Feature, str], str]
    value: Callable[[Callable[[str], str], Feature], str]


def _nonnull(col: str | None, where: str) -> str:
    return where if col is None else f"({where}) AND {col} IS NOT NULL"


AGGREGATES: dict[str, AggSpec] = {
    "count": AggSpec(
        lambda col, w, f: [("c", f"count({col or '*'}) FILTER (WHERE {w})")],
        lambda p, f: [("c", f"sum({p('c')})::BIGINT")],
        lambda p, f, flt: f"coalesce(sum({p('c')}) {flt}, 0)::BIGINT",
        lambda p, f: f"coalesce({p('c')}, 0)::BIGINT",
    ),
    "sum": AggSpec(
        lambda col, w, f: [("s", f"sum({col}) FILTER (WHERE {w})")],
        lambda p, f: [("s", f"sum({p('s')})")],
        lambda p, f, flt: f"sum({p('s')}) {flt}",
        lambda p, f: p("s"),
    ),
    "mean": AggSpec(
        lambda col, w, f: [("s", f"sum({col}::DOUBLE) FILTER (WHERE {w})"), ("c", f"count({col}) FILTER (WHERE {w})")],
        lambda p, f: [("s", f"sum({p('s')})"), ("c", f"sum({p('c')})::BIGINT")],
        lambda p, f, flt: f"(sum({p('s')}) {flt}) / nullif(sum({p('c')}) {flt}, 0)",
        lambda p, f: f"{p('s')} / nullif({p('c')}, 0)",
    ),
    "min": AggSpec(
        lambda col, w, f: [("m", f"min({col}) FILTER (WHERE {w})")],
        lambda p, f: [("m", f"min({p('m')})")],
        lambda p, f, flt: f"min({p('m')}) {flt}",
        lambda p, f: p("m"),
    ),
    "max": AggSpec(
        lambda col, w, f: [("m", f"max({col}) FILTER (WHERE {w})")],
        lambda p, f: [("m", f"max({p('m')})")],
        lambda p, f, flt: f"max({p('m')}) {flt}",
        lambda p, f: p("m"),
    ),
    "last": AggSpec(
        lambda col, w, f: [("k", f"max({ORDER_KEY}) FILTER (WHERE {_nonnull(col, w)})"),
                           ("v", f"arg_max({col}, {ORDER_KEY}) FILTER (WHERE {_nonnull(col, w)})")],
        lambda p, f: [("k", f"max({p('k')})"), ("v", f"arg_max({p('v')}, {p('k')})")],
        lambda p, f, flt: f"arg_max({p('v')}, {p('k')}) {flt}",
        lambda p, f: p("v"),
    ),
    "last_k": AggSpec(
        lambda col, w, f: [("l", f"arg_max({{'k': {ORDER_KEY}, 'v': {col}}}, {ORDER_KEY}, {f.k}) "
                                 f"FILTER (WHERE {_nonnull(col, w)})")],
        lambda p, f: [("l", f"list_slice(list_sort(flatten(list({p('l')}) FILTER (WHERE {p('l')} IS NOT NULL)), "
                            f"'DESC'), 1, {f.k})")],
        lambda p, f, flt: (f"list_transform(list_slice(list_sort(flatten(list({p('l')}) {flt}), 'DESC'), 1, {f.k}), "
                           f"lambda x: x.v)"),
        lambda p, f: f"list_transform(list_slice(list_sort({p('l')}, 'DESC'), 1, {f.k}), lambda x: x.v)",
    ),
}


def finish(agg: str, merged: str, column_dtype: str | None) -> str:
    """Cast a merged value to the feature's type and apply the empty-window value."""
    dtype = output_dtype(agg, column_dtype)
    empty = empty_value(agg, column_dtype)
    if agg == "last_k":
        element = DUCKDB_TYPES[column_dtype]  # type: ignore[index]
        return f"coalesce({merged}, []::{element}[])"
    sql_type = DUCKDB_TYPES[dtype]
    if empty is None:
        return f"({merged})::{sql_type}"
    literal = "0" if column_dtype is None or column_dtype in INTEGER_TYPES or agg == "count" else "0.0"
    return f"coalesce(({merged})::{sql_type}, {literal})"



def spec_of(feature: Feature) -> AggSpec:
    """The aggregation table entry of a feature (a latest value merges like ``last``)."""
    return AGGREGATES["last" if feature.window is None else feature.agg]


def feature_partials(feature: Feature, schema: dict[str, str]) -> list[tuple[str, str]]:
    """(suffix, aggregate SQL over events) for each partial of one feature."""
    column = q(feature.column) if feature.column else None
    where = render_sql(parse(feature.where), "duckdb", schema) if feature.where else "TRUE"
    return spec_of(feature).partials(column, where, feature)

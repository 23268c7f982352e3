"""Windowed ``last`` and ``last_k`` without tiles (event-time mode): a list window read with an ASOF join.

For features of one view sharing a column and a ``where`` filter, the *candidates* are the
events of an entity that pass the filter and have the column set, in ingest order
``(ts, _partition, _offset)``. At spine time ``t`` the value of ``last_k(k)`` over
``[S, t)`` is the newest ``k`` candidates with ``S <= ts < t``, newest first; ``last`` is
the newest one. So:

1. each spine point finds, with an ASOF join, the newest candidate with ``ts < t`` (of a
   run of candidates with equal ``ts`` the last one, in ingest order: events at one
   instant are all before ``t`` or all not);
2. only for those candidates, a list window per entity (``ROWS k - 1 PRECEDING``) holds
   the ``k`` newest candidates up to and including it, as ``{ts, v}``;
3. the point keeps the elements with ``ts >= S`` (the window start from the semantics
   core), reversed: newest first.

No tile holds a list, and no aggregate merges lists. The empty-window value (``[]`` or
null) comes from :func:`parity.batch.aggregates.finish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from parity.batch.aggregates import finish, q
from parity.registry.expr import parse, render_sql
from parity.registry.models import Definitions, Feature, FeatureView
from parity.registry.resolve import ResolvedFeature
from parity.registry.schema import view_schema

RECENT_AGGS = ("last", "last_k")


def recent_eligible(feature: Feature) -> bool:
    """Windowed last and last_k (latest values with a ttl have their own path)."""
    return feature.window is not None and feature.agg in RECENT_AGGS


@dataclass
class RecentGroup:
    """The last / last_k features of one view over one (column, where) pair."""

    view: FeatureView
    column: str
    where: str | None
    features: list[tuple[ResolvedFeature, "object"]]  # (feature, its Window)


def recent_sql(defs: Definitions, group: RecentGroup, events: str, points: str, prefix: str,
               floor_sql: Callable[[str, int], str]) -> tuple[list[str], list[str]]:
    """Statements building the candidates and their lists, and the SELECT of the values per point."""
    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    key_list = ", ".join(keys)
    schema = view_schema(defs, group.view)
    where = render_sql(parse(group.where), "duckdb", schema) if group.where else "TRUE"
    column = q(group.column)
    depth = max(1 if item.feature.agg == "last" else item.feature.k for item, _ in group.features)
    lifetime = any(window.is_lifetime for _, window in group.features)
    longest = max((window.length + window.hop for _, window in group.features if not window.is_lifetime), default=0)
    bounds = [f"__ts < (SELECT max(__t) FROM {points})"]  # later candidates are after every point
    if not lifetime:
        bounds.append(f"__ts >= (SELECT min(__t) FROM {points}) - {longest}")
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    cand, hit, lists = f"{prefix}_cand", f"{prefix}_hit", f"{prefix}_lists"
    on_keys = " AND ".join(f"p.{k} = e.{k}" for k in keys)
    setup = [
        f"CREATE OR REPLACE TEMP TABLE {cand} AS SELECT {key_list}, __ts, __p, __o, {column} AS __v "
        f"FROM ({events}) SEMI JOIN (SELECT DISTINCT {key_list} FROM {points} WHERE {not_null}) USING ({key_list}) "
        f"WHERE ({where}) AND {column} IS NOT NULL AND {' AND '.join(bounds)}",
        f"CREATE OR REPLACE TEMP TABLE {hit} AS SELECT {', '.join('p.' + k for k in keys)}, p.__t, e.__ts AS __m "
        f"FROM {points} p ASOF LEFT JOIN (SELECT DISTINCT {key_list}, __ts FROM {cand}) e "
        f"ON {on_keys} AND p.__t > e.__ts",
        # the list of each candidate some point reads (the last of its run of equal ts)
        f"CREATE OR REPLACE TEMP TABLE {lists} AS SELECT {key_list}, __ts, __l FROM ("
        f"SELECT {key_list}, __ts, list({{'ts': __ts, 'v': __v}}) OVER __w AS __l, lead(__ts) OVER __w AS __next "
        f"FROM {cand} WINDOW __w AS (PARTITION BY {key_list} ORDER BY __ts, __p, __o "
        f"ROWS BETWEEN {depth - 1} PRECEDING AND CURRENT ROW)) "
        f"SEMI JOIN (SELECT DISTINCT {key_list}, __m AS __ts FROM {hit} WHERE __m IS NOT NULL) USING ({key_list}, __ts) "
        f"WHERE __next IS DISTINCT FROM __ts",
    ]
    values = []
    for item, window in group.features:
        feature = item.feature
        newest = "list_reverse(l.__l)"
        if not window.is_lifetime:
            start = floor_sql(f"h.__t - {window.length}", window.hop)
            newest = f"list_reverse(list_filter(l.__l, lambda x: x.ts >= {start}))"
        if feature.agg == "last":
            merged = f"({newest})[1].v"
        else:
            merged = f"list_transform(list_slice({newest}, 1, {feature.k}), lambda x: x.v)"
        values.append(f"{finish(feature.agg, merged, schema.get(feature.column))} AS {q(item.output_name)}")
    select = (f"SELECT {', '.join('h.' + k for k in keys)}, h.__t, {', '.join(values)} FROM {hit} h "
              f"LEFT JOIN {lists} l ON {' AND '.join(f'l.{k} = h.{k}' for k in keys)} AND l.__ts = h.__m")
    return setup, [select]


__all__ = ["RecentGroup", "recent_eligible", "recent_sql", "RECENT_AGGS"]

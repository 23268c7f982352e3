"""Latest values with a ttl by one hash join, when each point sees at most one row of its key.

A latest value at ``t`` is the newest qualifying event of the entity that counts at ``t``
(``ts < t``, and in as-served mode visible at ``t``), served if its ``ts >= t - ttl``.
In general that needs the entity's history (a running ``arg_max`` per entity, read with
an ASOF join: the UNBOUNDED group of :mod:`parity.batch.training_set`). But a snapshot
source usually holds one row per key, and then the history is that row:

    point LEFT JOIN rows ON same keys AND the row counts at t

gives each point every row that counts at ``t``. When that is at most one row per point
(the join returns exactly one row per point), the row is the newest one, and each
feature's value is that row's column if it passes the feature's ``where``, is not null and
is younger than the ttl; else null, as the history would say. When some point sees two or
more rows, the join returns more rows than points: the caller detects it from the row
count and falls back to the history. The check is the join's own result, not an
assumption about the data, so keys with several rows that all come after ``t`` still take
the join; and the join stops at one row more than the points (``limit``), so a source
with many rows per key is found out at the cost of one row per point.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.batch.aggregates import q
from parity.registry.durations import parse_duration
from parity.registry.expr import parse, render_sql
from parity.registry.models import Definitions, Feature, FeatureView
from parity.registry.resolve import ResolvedFeature
from parity.registry.schema import view_schema
from parity.registry.types import DUCKDB_TYPES


def latest_eligible(feature: Feature) -> bool:
    """A latest value (``last`` with a ttl and no window)."""
    return feature.window is None and feature.ttl is not None


@dataclass
class LatestGroup:
    """The latest values of one view."""

    view: FeatureView
    features: list[tuple[ResolvedFeature, None]]


def counts_from(mode: str) -> str:
    """The instant from which an event counts at ``t`` (it counts when this is ``<= t``):
    ``ts < t``, and in as-served mode visible at ``t``."""
    return "__ts + 1" if mode == "event_time" else "greatest(__ts + 1, __vis)"


def latest_join_sql(defs: Definitions, group: LatestGroup, events: str, target: str, mode: str,
                    carry: list[str], after: tuple[str, ...] = (), limit: str | None = None) -> str:
    """``SELECT <carry>, <features> FROM target p LEFT JOIN <rows> e``: every row of ``target``
    (entity keys ``__k_*`` and ``__t``) with every row of its key that counts at ``__t``.

    ``carry`` and ``after`` are expressions over ``p`` kept before and after the features. The result has one
    row per row of ``target`` exactly when no point sees two rows of its key. ``limit``
    (the number of rows of ``target`` plus one) stops the join as soon as it has shown that
    some point sees two rows: a source with many rows per key (an event stream) costs no
    more than one row per point before the caller falls back.
    """
    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    schema = view_schema(defs, group.view)
    columns = sorted({item.feature.column for item, _ in group.features})
    # each distinct where renders over the row's own columns, as a flag computed with the row
    flags = {text: f"__w{i}" for i, text in enumerate(sorted({i.feature.where for i, _ in group.features
                                                              if i.feature.where}))}
    values = []
    for item, _ in group.features:
        feature = item.feature
        column = f"e.{q(feature.column)}"
        flag = f"e.{flags[feature.where]} AND " if feature.where else ""
        live = f"{flag}{column} IS NOT NULL AND e.__ts >= p.__t - {parse_duration(feature.ttl)}"
        values.append(f"(CASE WHEN {live} THEN {column} END)::{DUCKDB_TYPES[schema[feature.column]]} "
                      f"AS {q(item.output_name)}")
    extra = "".join(f", coalesce({render_sql(parse(text), 'duckdb', schema)}, FALSE) AS {flag}"
                    for text, flag in flags.items())
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    rows = (f"SELECT {', '.join(keys)}, __ts, {counts_from(mode)} AS __g, "
            f"{', '.join(q(c) for c in columns)}{extra} FROM ({events}) WHERE {not_null}")
    on = " AND ".join([f"e.{k} = p.{k}" for k in keys] + ["e.__g <= p.__t"])
    sql = f"SELECT {', '.join([*carry, *values, *after])} FROM {target} p LEFT JOIN ({rows}) e ON {on}"
    return sql if limit is None else f"{sql} LIMIT {limit}"


__all__ = ["LatestGroup", "latest_eligible", "latest_join_sql", "counts_from"]

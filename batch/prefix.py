"""Windowed counts and integer sums from running totals, with no tiles (event-time mode).

For an entity and an additive, exactly invertible partial (a count, or a sum of integers),
the value over ``[S, t)`` is ``C(t) - C(S)`` where ``C(x)`` sums the events with
``ts < x``. One pass computes every such ``C`` of a view:

1. the view's events (and one sentinel row per spine entity at ``g = +inf``) are sorted by
   (entity keys, ``g = ts + 1``), and a *streaming* window (no PARTITION BY: one sequential
   scan) keeps, on each row, the total of every row *before* it in that order. Only the
   first row of each (keys, g) run is kept, so ties on ``ts`` count together;
2. a probe ``x`` (``t`` or a window start) reads, with an ASOF join, the first kept row
   with ``g > x``: its total is ``B + C(x)``, ``B`` being the total of the entities sorted
   before this one (the sentinel guarantees a row). ``B`` cancels in ``C(t) - C(S)``.
3. the probes of one spine point are pivoted back into one row.

Float sums are not computed this way: a difference of two large running float totals
loses the 1e-9 relative precision the contract asks for. min/max/last/last_k are not
invertible. Those stay on the tile path (:mod:`parity.batch.training_set`).

In as-served mode an event counts only when visible at ``t``: that is not a prefix of
one order, so as-served training sets keep the tile path for every feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.batch.aggregates import finish, q
from parity.registry.expr import parse, render_sql
from parity.registry.models import Definitions, Feature, FeatureView
from parity.registry.resolve import ResolvedFeature
from parity.registry.schema import view_schema
from parity.registry.types import INTEGER_TYPES

MAX_G = 9223372036854775807  # the sentinel's g: after every event of its entity
MIN_X = -9223372036854775807  # the probe of a lifetime window's start: before every event


def prefix_eligible(feature: Feature, schema: dict[str, str]) -> bool:
    """Whether a feature's partials are exact under subtraction (counts, integer sums and means)."""
    if feature.window is None:
        return False
    if feature.agg == "count":
        return True
    return feature.agg in ("sum", "mean") and schema.get(feature.column) in INTEGER_TYPES


def _atoms(feature: Feature, schema: dict[str, str]) -> dict[str, str]:
    """role -> per-event SQL, never null (0 when the event does not count)."""
    where = render_sql(parse(feature.where), "duckdb", schema) if feature.where else "TRUE"
    column = q(feature.column) if feature.column else None
    counted = where if column is None else f"({where}) AND {column} IS NOT NULL"
    count = f"(CASE WHEN {counted} THEN 1 ELSE 0 END)::BIGINT"
    if feature.agg == "count":
        return {"c": count}
    total = f"(CASE WHEN {counted} THEN {column} ELSE 0 END)::BIGINT"
    return {"s": total} if feature.agg == "sum" else {"s": total, "c": count}


@dataclass
class PrefixGroup:
    """The prefix-sum features of one view."""

    view: FeatureView
    features: list[tuple[ResolvedFeature, "object"]]  # (feature, its Window)


def prefix_sql(defs: Definitions, group: PrefixGroup, events: str, points: str, prefix: str,
               floor_sql) -> tuple[list[str], list[str]]:
    """Statements building the running totals, and the SELECT of the group's values per point."""
    entity = defs.entity(group.view.entity)
    keys = [q("__k_" + k) for k in entity.join_keys]
    key_list = ", ".join(keys)
    schema = view_schema(defs, group.view)
    atoms: dict[str, str] = {}  # SQL -> column name (shared by features with equal partials)
    starts: dict[str, int] = {}  # start expression -> probe id (0 is t itself)
    merges = []
    lifetime = False
    longest = 0
    for item, window in group.features:
        feature = item.feature
        names = {}
        for role, sql in _atoms(feature, schema).items():
            names[role] = atoms.setdefault(sql, f"__a{len(atoms)}")
        if window.is_lifetime:
            start, lifetime = str(MIN_X), True
        else:
            start = floor_sql(f"__t - {window.length}", window.hop)
            longest = max(longest, window.length + window.hop)
        probe = starts.setdefault(start, len(starts) + 1)
        diff = {role: f"(sum({name}) FILTER (WHERE __w = 0) - sum({name}) FILTER (WHERE __w = {probe}))"
                for role, name in names.items()}
        if feature.agg == "mean":
            merged = f"{diff['s']}::DOUBLE / nullif({diff['c']}, 0)"
        else:
            merged = diff["s" if feature.agg == "sum" else "c"]
        dtype = schema.get(feature.column) if feature.column else None
        merges.append(f"{finish(feature.agg, merged, dtype)} AS {q(item.output_name)}")

    names = list(atoms.values())
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    bounds = [f"__ts < (SELECT max(__t) FROM {points})"]  # later events come after every probe
    if not lifetime:  # earlier events add the same to every probe of their entity
        bounds.append(f"__ts >= (SELECT min(__t) FROM {points}) - {longest}")
    rows = (f"SELECT {key_list}, __ts + 1 AS __g, {', '.join(f'{sql} AS {name}' for sql, name in atoms.items())} "
            f"FROM ({events}) SEMI JOIN (SELECT DISTINCT {key_list} FROM {points} WHERE {not_null}) "
            f"USING ({key_list}) WHERE {' AND '.join(bounds)}")
    sentinels = (f"SELECT DISTINCT {key_list}, {MAX_G}::BIGINT AS __g, {', '.join(f'0::BIGINT AS {n}' for n in names)} "
                 f"FROM {points} WHERE {not_null}")
    lags = ", ".join(f"lag({k}) OVER () AS {q('__l' + k.strip(chr(34)))}" for k in [*keys, "__g"])
    first = " OR ".join(f"{q('__l' + k.strip(chr(34)))} IS DISTINCT FROM {k}" for k in [*keys, "__g"])
    totals = ", ".join(f"sum({n}) OVER (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - {n} AS {n}" for n in names)
    pre = f"{prefix}_pre"
    setup = [
        # the streaming window reads its input in the order of the subquery only when
        # insertion order is preserved
        "SET preserve_insertion_order = true",
        f"CREATE OR REPLACE TEMP TABLE {pre} AS SELECT {key_list}, __g, {', '.join(names)} FROM ("
        f"SELECT {key_list}, __g, {lags}, {totals} FROM (SELECT * FROM ({rows} UNION ALL {sentinels}) "
        f"ORDER BY {key_list}, __g)) WHERE {first}",
        "SET preserve_insertion_order = false",
    ]
    probes = " UNION ALL ".join(
        [f"SELECT {key_list}, __t, 0 AS __w, __t AS __x FROM {points}"]
        + [f"SELECT {key_list}, __t, {i} AS __w, {sql} AS __x FROM {points}" for sql, i in starts.items()])
    on = " AND ".join(f"p.{k} = e.{k}" for k in keys)
    select = (f"SELECT {key_list}, __t, {', '.join(merges)} FROM (SELECT {', '.join('p.' + k for k in keys)}, p.__t, "
              f"p.__w, {', '.join('e.' + n for n in names)} FROM ({probes}) p ASOF LEFT JOIN {pre} e "
              f"ON {on} AND p.__x < e.__g) GROUP BY {key_list}, __t")
    return setup, [select]


__all__ = ["PrefixGroup", "prefix_eligible", "prefix_sql"]

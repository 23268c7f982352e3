"""Windowed counts and sums from running totals, with no tiles (event-time mode).

For an entity and an additive, exactly invertible partial (a count, a sum of integers, or
a sum of floats held exactly in fixed point, below),
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

Float sums and means use the same running totals, but exact: a difference of two large
running *float* totals would lose the 1e-9 relative precision the contract asks for, so
each value ``x`` enters as the integer ``x * 2**S`` in a 128-bit HUGEINT. That is exact
when every ``x`` of the column is a multiple of ``2**-S`` and the total of all ``|x| *
2**S`` fits; :func:`exact_float_scales` checks both on the data before the plan is made
(multiplying a double by a power of two is exact, so the check is too) and picks ``S``.
The difference of two exact totals is exact; converting it back to a double rounds once.
A column that fails the check (values spanning too many binary orders of magnitude) keeps
the tile path. min/max are not invertible and stay there too; last/last_k have their
own shape (:mod:`parity.batch.recent`).

In as-served mode an event counts only when visible at ``t``: that is not a prefix of
one order, so as-served training sets keep the tile path for every feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parity.batch.aggregates import finish, q
from parity.registry.expr import parse, render_sql
from parity.registry.models import Definitions, Feature, FeatureView
from parity.registry.resolve import ResolvedFeature
from parity.registry.schema import view_schema
from parity.registry.types import FLOAT_TYPES, INTEGER_TYPES

MAX_G = 9223372036854775807  # the sentinel's g: after every event of its entity
MIN_X = -9223372036854775807  # the probe of a lifetime window's start: before every event


SCALES = tuple(range(0, 113, 8))  # fixed-point scales tried, in bits after the binary point
HEADROOM_BITS = 125  # every total of |x| * 2**S stays below 2**125 (HUGEINT holds 2**127)


def pow2(bits: int) -> str:
    """``2**bits`` as an exact DOUBLE literal."""
    return f"{2.0 ** bits!r}::DOUBLE"


def prefix_eligible(feature: Feature, schema: dict[str, str], scale: int | None = None) -> bool:
    """Whether a feature's partials are exact under subtraction: counts, integer sums and
    means, and float sums and means whose column has an exact fixed-point ``scale``."""
    if feature.window is None:
        return False
    if feature.agg == "count":
        return True
    if feature.agg not in ("sum", "mean"):
        return False
    dtype = schema.get(feature.column)
    return dtype in INTEGER_TYPES or (dtype in FLOAT_TYPES and scale is not None)


def float_columns(defs: Definitions, view: FeatureView) -> list[str]:
    """The float columns a view sums or averages over a window (candidates for fixed point)."""
    schema = view_schema(defs, view)
    return sorted({f.column for f in view.features if f.window is not None and f.agg in ("sum", "mean")
                   and schema.get(f.column) in FLOAT_TYPES})


def exact_float_scales(con, defs: Definitions, view: FeatureView, events: str) -> dict[str, int]:
    """column -> the smallest scale ``S`` of :data:`SCALES` at which every finite value of the
    column is an integer multiple of ``2**-S`` and all of them together stay below
    ``2**HEADROOM_BITS``; columns with no such scale (or non-finite values) are left out."""
    columns = float_columns(defs, view)
    if not columns:
        return {}
    checks = []
    for column in columns:
        x = f"{q(column)}::DOUBLE"
        checks += [f"count({x})", f"max(abs({x}))", f"bool_and(isfinite({x})) "]
        checks += [f"bool_and({x} * {pow2(s)} = round({x} * {pow2(s)}))" for s in SCALES]
    row = con.execute(f"SELECT {', '.join(checks)} FROM ({events})").fetchall()[0]
    found = {}
    width = 3 + len(SCALES)
    for i, column in enumerate(columns):
        count, largest, finite, *integral = row[i * width:(i + 1) * width]
        if not count:
            found[column] = 0
            continue
        if not finite:
            continue
        scale = next((s for s, ok in zip(SCALES, integral) if ok), None)
        if scale is not None and largest * 2.0 ** scale * count < 2.0 ** HEADROOM_BITS:
            found[column] = scale
    return found


def counted_sql(feature: Feature, schema: dict[str, str]) -> str:
    """When an event counts for a feature (it passes ``where`` and has the column set);
    may be null, which does not count."""
    where = render_sql(parse(feature.where), "duckdb", schema) if feature.where else "TRUE"
    return where if feature.column is None else f"({where}) AND {q(feature.column)} IS NOT NULL"


def scope_sql(defs: Definitions, group: PrefixGroup, events: str, points: str, by_key: bool = True) -> str:
    """``FROM ... WHERE ...``: the view's events that some point's totals need: a key of
    ``points`` (only ``by_key``: else every non-null key), before the last point, and (no
    lifetime window) not before the earliest window start (earlier events add the same to
    every probe of their entity)."""
    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    key_list = ", ".join(keys)
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    bounds = [f"__ts < (SELECT max(__t) FROM {points})"]  # later events come after every probe
    if not any(window.is_lifetime for _, window in group.features):
        longest = max(window.length + window.hop for _, window in group.features)
        bounds.append(f"__ts >= (SELECT min(__t) FROM {points}) - {longest}")
    if not by_key:
        return f"FROM ({events}) WHERE {not_null} AND {' AND '.join(bounds)}"
    return (f"FROM ({events}) SEMI JOIN (SELECT DISTINCT {key_list} FROM {points} WHERE {not_null}) "
            f"USING ({key_list}) WHERE {' AND '.join(bounds)}")


def _atoms(feature: Feature, schema: dict[str, str], scale: int | None = None) -> dict[str, str]:
    """role -> per-event SQL, never null (0 when the event does not count). Float columns
    enter as exact HUGEINT multiples of ``2**-scale``."""
    column = q(feature.column) if feature.column else None
    counted = counted_sql(feature, schema)
    count = f"(CASE WHEN {counted} THEN 1 ELSE 0 END)::BIGINT"
    if feature.agg == "count":
        return {"c": count}
    if schema.get(feature.column) in FLOAT_TYPES:
        total = f"(CASE WHEN {counted} THEN ({column}::DOUBLE * {pow2(scale)})::HUGEINT ELSE 0::HUGEINT END)"
    else:
        total = f"(CASE WHEN {counted} THEN {column} ELSE 0 END)::BIGINT"
    return {"s": total} if feature.agg == "sum" else {"s": total, "c": count}


@dataclass
class PrefixGroup:
    """The prefix-sum features of one view (``scales``: the fixed point of its float columns)."""

    view: FeatureView
    features: list[tuple[ResolvedFeature, "object"]]  # (feature, its Window)
    scales: dict[str, int] = field(default_factory=dict)


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
    for item, window in group.features:
        feature = item.feature
        names = {}
        scale = group.scales.get(feature.column) if feature.column else None
        for role, sql in _atoms(feature, schema, scale).items():
            names[role] = atoms.setdefault(sql, f"__a{len(atoms)}")
        if window.is_lifetime:
            start = str(MIN_X)
        else:
            start = floor_sql(f"__t - {window.length}", window.hop)
        probe = starts.setdefault(start, len(starts) + 1)
        diff = {role: f"(sum({name}) FILTER (WHERE __w = 0) - sum({name}) FILTER (WHERE __w = {probe}))"
                for role, name in names.items()}
        total = diff.get("s")
        if scale is not None and feature.agg != "count":  # exact fixed point back to a double: one rounding
            total = f"({total}::DOUBLE / {pow2(scale)})"
        if feature.agg == "mean":
            merged = f"{total}::DOUBLE / nullif({diff['c']}, 0)"
        else:
            merged = total if feature.agg == "sum" else diff["c"]
        dtype = schema.get(feature.column) if feature.column else None
        merges.append(f"{finish(feature.agg, merged, dtype)} AS {q(item.output_name)}")

    names = list(atoms.values())
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    rows = (f"SELECT {key_list}, __ts + 1 AS __g, {', '.join(f'{sql} AS {name}' for sql, name in atoms.items())} "
            + scope_sql(defs, group, events, points))
    zero = {name: ("0::HUGEINT" if "HUGEINT" in sql else "0::BIGINT") for sql, name in atoms.items()}
    sentinels = (f"SELECT DISTINCT {key_list}, {MAX_G}::BIGINT AS __g, {', '.join(f'{zero[n]} AS {n}' for n in names)} "
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


__all__ = ["PrefixGroup", "prefix_eligible", "prefix_sql", "exact_float_scales", "float_columns", "counted_sql",
           "scope_sql"]

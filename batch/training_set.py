"""Point-in-time training sets on DuckDB, exact to DESIGN.md's window rule.

For each view and each tile size ``h`` (a window's hop; 1 day for lifetime windows and
latest values), the value at spine time ``t`` merges:

1. **complete tiles**: partial aggregates per (entity, ``floor(ts, h)``) for tiles with
   ``floor(t - W, h) <= tile < floor(t, h)`` (start bound per feature);
2. **the open tile**: raw events with ``floor(t, h) <= ts < t``;
3. in **as-served** mode only, events count only if visible (``_applied_at``, or
   ``_ingested_at`` for batch-landed rows, ``<= t``). Tiles then hold only the events that
   were visible before their tile ended (certainly visible at ``t``); the others ("late")
   are joined one by one with ``visible <= t``.

Window starts come from :mod:`parity.registry.semantics`; partials and merges from
:mod:`parity.batch.aggregates`; filters and derived columns from the expression renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from parity.batch.aggregates import feature_partials, finish, q, spec_of
from parity.batch.latest import LatestGroup, latest_eligible, latest_join_sql
from parity.batch.latest_arrow import latest_table
from parity.batch.prefix import PrefixGroup, exact_float_scales, prefix_eligible, prefix_sql
from parity.batch.prefix_arrow import running_table
from parity.batch.recent import RecentGroup, recent_eligible, recent_sql
from parity.errors import ParityError
from parity.registry.durations import DAY, parse_duration
from parity.registry.expr import infer_type, parse, render_sql
from parity.registry.models import Definitions, FeatureView
from parity.registry.resolve import ResolvedFeature
from parity.registry.schema import view_schema
from parity.registry.semantics import feature_window
from parity.registry.types import DUCKDB_TYPES

MODES = ("event_time", "as_served")


class SpineError(ParityError):
    """The spine lacks a column, or a column has the wrong type."""


def floor_sql(expr: str, step: int | str) -> str:
    """``floor(expr, step)`` on integer microseconds, correct for negative values too."""
    return f"(({expr}) - ((({expr}) % ({step})) + ({step})) % ({step}))"


@dataclass
class Group:
    """Features of one view that share a tile size."""

    view: FeatureView
    tile: int
    features: list[tuple[ResolvedFeature, int | None]]  # (feature, window length; None = lifetime/latest)


Scales = dict[tuple[str, int], dict[str, int]]  # (view, version) -> float column -> fixed-point scale


AnyGroup = "Group | PrefixGroup | RecentGroup | LatestGroup"


def plan_groups(resolved: Iterable[ResolvedFeature], mode: str = "as_served",
                defs: Definitions | None = None, scales: Scales | None = None) -> list[AnyGroup]:
    """Groups of features computed together.

    The latest values of a view form one group (:mod:`parity.batch.latest`: a hash join
    when each point sees at most one row of its key, else the UNBOUNDED history below).
    In event-time mode, counts and sums/means (integer, or float with an exact fixed-point
    ``scales`` entry) of a view form one prefix-sum group (:mod:`parity.batch.prefix`), and
    windowed last/last_k one list group per (view, column, where) (:mod:`parity.batch.recent`).
    The rest share tile pyramids per (view, tile size).
    """
    groups: dict[tuple, AnyGroup] = {}
    for item in resolved:
        window = feature_window(item.view, item.feature)
        view_key = (item.view.name, item.view.version)
        if defs is not None and latest_eligible(item.feature):
            group = groups.setdefault((*view_key, "latest"), LatestGroup(item.view, []))
            group.features.append((item, None))
            continue
        view_scales = (scales or {}).get(view_key, {})
        if mode == "event_time" and defs is not None and window is not None \
                and prefix_eligible(item.feature, view_schema(defs, item.view), view_scales.get(item.feature.column)):
            group = groups.setdefault((*view_key, "prefix"), PrefixGroup(item.view, [], view_scales))
            group.features.append((item, window))
            continue
        if mode == "event_time" and defs is not None and window is not None and recent_eligible(item.feature):
            recent = (*view_key, "recent", item.feature.column, item.feature.where)
            group = groups.setdefault(recent, RecentGroup(item.view, item.feature.column, item.feature.where, []))
            group.features.append((item, window))
            continue
        if window is None or window.is_lifetime:
            tile, length = UNBOUNDED, None
        else:
            tile, length = window.hop, window.length
        group = groups.setdefault((*view_key, tile), Group(item.view, tile, []))
        group.features.append((item, length))
    return list(groups.values())


def events_sql(defs: Definitions, view: FeatureView, scan: str) -> str:
    """The view's events: entity keys, integer-microsecond times, ingest order, columns."""
    source = defs.source(view.source)
    entity = defs.entity(view.entity)
    keys = ", ".join(f"CAST({q(view.source_column_of(k))} AS {DUCKDB_TYPES[t]}) AS {q('__k_' + k)}"
                     for k, t in entity.join_keys.items())
    ts = q(source.timestamp_field)
    if source.kind == "snapshot":
        meta = f"epoch_us({ts}) AS __vis, -1 AS __p, 0::BIGINT AS __o"
    else:
        meta = ("epoch_us(coalesce(_applied_at, _ingested_at)) AS __vis, _partition AS __p, _offset AS __o")
    sql = f"SELECT *, {keys}, epoch_us({ts}) AS __ts, {meta} FROM {scan} WHERE {ts} IS NOT NULL"
    schema = dict(source.schema_)
    for name, text in view.derived.items():
        sql = f"SELECT *, ({render_sql(parse(text), 'duckdb', schema)}) AS {q(name)} FROM ({sql})"
        schema[name] = infer_type(parse(text), schema)
    return sql


# Lifetime windows and latest values form one group per view with no tiles (UNBOUNDED):
# their value at t is a running aggregate over the entity's whole history, read with an
# ASOF join. LIFETIME_START is the start every such feature's partial rows carry.
UNBOUNDED = 0
LIFETIME_START = -(2 ** 16) * DAY


def levels_for(length: int, h: int) -> int:
    """Dyadic levels needed so that every range of complete tiles of a window has a cover."""
    return ((length + h) // h).bit_length() - 1


def group_sql(defs: Definitions, group: Group, scan: str, mode: str, prefix: str,
              chunks: int = 1, points: str | None = None) -> tuple[list[str], list[str]]:
    """Statements that build the group's tile pyramid, and the SELECT of its values.

    The SELECT has one row per distinct (entity keys, t) of the spine. Complete tiles of a
    window ``[S, floor(t, h))`` are read as its maximal dyadic blocks (tiles of ``h * 2**L``
    aligned to their size): at most two per level, joined by equality, so heavy entities
    cost no more than light ones. Lifetime windows and latest values (the UNBOUNDED group)
    need no tiles: a running aggregate over each entity's history, ordered by the instant
    from which each event counts, is read at t with an ASOF join.
    """
    entity = defs.entity(group.view.entity)
    keys = [q("__k_" + k) for k in entity.join_keys]
    key_list = ", ".join(keys)
    h = group.tile
    schema = view_schema(defs, group.view)
    windows = sorted({length for _, length in group.features}, key=lambda w: (w is None, w or 0))
    window_id = {w: i for i, w in enumerate(windows)}
    partials: list[str] = []
    combines: list[str] = []
    names: list[str] = []
    merges: list[str] = []
    singles: list[str] = []  # the same values from exactly one partial row (the UNBOUNDED group)
    for index, (item, length) in enumerate(group.features):
        spec = spec_of(item.feature)
        column = (lambda suffix, i=index: f"__f{i}_{suffix}")
        for suffix, sql in feature_partials(item.feature, schema):
            partials.append(f"{sql} AS {column(suffix)}")
            names.append(column(suffix))
        combines += [f"{sql} AS {column(suffix)}" for suffix, sql in spec.combine(column, item.feature)]
        start = LIFETIME_START if length is None else floor_sql(f"__t - {length}", h)
        flt = f"FILTER (WHERE (__w = {window_id[length]} OR __w IS NULL) AND __start >= {start})"
        merged = spec.merge(column, item.feature, flt)
        column_dtype = schema.get(item.feature.column) if item.feature.column else None
        single = spec.value(column, item.feature)
        if item.feature.window is None:  # latest value: the last event before t, if younger than ttl
            ttl = parse_duration(item.feature.ttl)
            merged = f"CASE WHEN (max(__f{index}_k) {flt}).ts >= __t - {ttl} THEN {merged} END"
            merges.append(f"({merged})::{DUCKDB_TYPES[column_dtype]} AS {q(item.output_name)}")
            single = f"CASE WHEN (__f{index}_k).ts >= __t - {ttl} THEN {single} END"
            singles.append(f"({single})::{DUCKDB_TYPES[column_dtype]} AS {q(item.output_name)}")
        else:
            merges.append(f"{finish(item.feature.agg, merged, column_dtype)} AS {q(item.output_name)}")
            singles.append(f"{finish(item.feature.agg, single, column_dtype)} AS {q(item.output_name)}")

    ev, tiles = f"{prefix}_ev", f"{prefix}_tiles"
    pick = ", ".join(f"p.{k}" for k in keys)
    on_keys = " AND ".join(f"e.{k} = p.{k}" for k in keys)
    # every partial as a running aggregate over the window __win of the statement using it
    running = ", ".join(f"{sql.rsplit(' AS ', 1)[0]} OVER __win AS {name}" for sql, name in zip(partials, names))
    # the instant from which an event counts at t: ts < t, and (as served) visible at t
    counts_from = "__ts + 1" if mode == "event_time" else "greatest(__ts + 1, __vis)"
    setup: list[str] = []
    if points is None:
        points = f"{prefix}_points"
        setup.append(points_sql(points, key_list, chunks))
    if h == UNBOUNDED:
        # one running row per (entity, __g) run, read at t by one ASOF join: exactly one
        # partial row per point, so no merge (no GROUP BY)
        history = f"{prefix}_history"
        setup.append(f"CREATE OR REPLACE TEMP TABLE {history} AS SELECT {key_list}, __g, {running} FROM "
                     f"(SELECT *, {counts_from} AS __g FROM ({events_sql(defs, group.view, scan)}) "
                     f"WHERE {' AND '.join(k + ' IS NOT NULL' for k in keys)}) "
                     f"WINDOW __win AS (PARTITION BY {key_list} ORDER BY __g)")
        # (peers, rows with equal __g, hold equal running values: any one will do)
        select = (f"SELECT {pick}, p.__t, {', '.join(singles)} FROM {points} p ASOF LEFT JOIN {history} e "
                  f"ON {on_keys} AND p.__t >= e.__g")
        return setup, [select]
    prompt = "TRUE" if mode == "event_time" else f"__vis < __tile + {h}"
    setup += [
        f"CREATE OR REPLACE TEMP TABLE {ev} AS SELECT *, {floor_sql('__ts', h)} AS __tile "
        f"FROM ({events_sql(defs, group.view, scan)})",
        f"CREATE OR REPLACE TEMP TABLE {tiles} AS SELECT {key_list}, __tile AS __start, 0 AS __lvl, "
        f"{', '.join(partials)} FROM {ev} WHERE {prompt} GROUP BY ALL",
    ]
    top = max(levels_for(w, h) for w in windows)
    for level in range(1, top + 1):
        size = h << level
        setup.append(f"INSERT INTO {tiles} SELECT {key_list}, {floor_sql('__start', size)}, {level}, "
                     f"{', '.join(combines)} FROM {tiles} WHERE __lvl = {level - 1} GROUP BY ALL")

    end = floor_sql("p.__t", h)
    late = f"{prefix}_late"
    if mode == "as_served":
        # Events not yet visible when their tile closed ("late"): for every pyramid block
        # holding them, running partials in order of visibility, read at t with an ASOF
        # join on each cover block. Streamed data has few; batch-landed data has all.
        setup.append(
            f"CREATE OR REPLACE TEMP TABLE {late} AS SELECT {key_list}, __lvl, __start, __vis AS __g, "
            + running
            + f" FROM (SELECT *, l.range AS __lvl, {floor_sql('__tile', f'({h} * (1::BIGINT << l.range))')} AS __start "
            f"FROM {ev} CROSS JOIN range(0, {top + 1}) l WHERE NOT ({prompt})) "
            f"WINDOW __win AS (PARTITION BY {key_list}, __lvl, __start ORDER BY __vis)")
    parts = []
    for w in windows:
        start = floor_sql(f"p.__t - {w}", h)
        parent = floor_sql("a", "2 * size")
        covers = f"{prefix}_cover{window_id[w]}"
        # The maximal dyadic blocks inside [start, floor(t, h)): at most one per side per level.
        setup.append(
            f"CREATE OR REPLACE TEMP TABLE {covers} AS SELECT * FROM (SELECT {pick}, p.__t, l.lvl, l.size, s.side, "
            f"{start} AS lo, {end} AS hi, CASE WHEN s.side = 0 THEN -{floor_sql(f'-({start})', 'l.size')} "
            f"ELSE {floor_sql(end, 'l.size')} - l.size END AS a "
            f"FROM {points} p CROSS JOIN (SELECT range AS lvl, {h} * (1::BIGINT << range) AS size "
            f"FROM range(0, {levels_for(w, h) + 1})) l CROSS JOIN (VALUES (0), (1)) s(side)) "
            f"WHERE a >= lo AND a + size <= hi AND NOT ({parent} >= lo AND {parent} + 2 * size <= hi) "
            f"AND NOT (side = 1 AND a = -{floor_sql('-lo', 'size')})")
        parts.append(f"SELECT {', '.join('c.' + k for k in keys)}, c.__t, {window_id[w]} AS __w, t.__start, "
                     f"{', '.join('t.' + n for n in names)} FROM {covers} c JOIN {tiles} t ON "
                     + " AND ".join([f"t.{k} = c.{k}" for k in keys] + ["t.__lvl = c.lvl", "t.__start = c.a"]))
        if mode == "as_served":
            parts.append(f"SELECT {', '.join('p.' + k for k in keys)}, p.__t, {window_id[w]} AS __w, p.a AS __start, "
                         f"{', '.join('e.' + n for n in names)} FROM {covers} p ASOF JOIN {late} e ON {on_keys} "
                         f"AND e.__lvl = p.lvl AND e.__start = p.a AND p.__t >= e.__g")
    # The open tile [floor(t, h), t): running partials per (entity, tile) ordered by the
    # instant __g from which an event counts (ts < t, and visible in as-served mode), read
    # with an ASOF join at t. Peers (equal __g) share one running value.
    head = f"{prefix}_head"
    # only the tiles some spine row is open in need running partials
    setup.append(f"CREATE OR REPLACE TEMP TABLE {head} AS SELECT {key_list}, __tile, __g, " + running
                 + f" FROM (SELECT *, {counts_from} AS __g FROM {ev} SEMI JOIN "
                 f"(SELECT DISTINCT {key_list}, {floor_sql('__t', h)} AS __tile FROM {points}) USING ({key_list}, __tile)) "
                 f"WINDOW __win AS (PARTITION BY {key_list}, __tile ORDER BY __g)")
    parts.append(f"SELECT {pick}, p.__t, NULL AS __w, p.__b AS __start, {', '.join('e.' + n for n in names)} "
                 f"FROM (SELECT *, {floor_sql('__t', h)} AS __b FROM {points}) p ASOF JOIN {head} e "
                 f"ON {on_keys} AND e.__tile = p.__b AND p.__t >= e.__g")
    return setup, _merge_selects(setup, parts, prefix, key_list, points, merges, chunks)


def points_sql(points: str, key_list: str, chunks: int) -> str:
    """The distinct (entity keys, t) of the spine, each with its merge chunk."""
    return (f"CREATE OR REPLACE TEMP TABLE {points} AS SELECT *, hash({key_list}, __t) % {chunks} AS __chunk "
            f"FROM (SELECT DISTINCT {key_list}, __t FROM __spine)")


def _merge_selects(setup: list[str], parts: list[str], prefix: str, key_list: str, points: str,
                   merges: list[str], chunks: int) -> list[str]:
    """Materialise the partial rows; return the SELECTs merging them, one per chunk of points.

    The merge's states (lists for last_k) cannot spill, so a memory limit is honoured by
    merging a bounded number of points at a time.
    """
    union = "\n  UNION ALL\n  ".join(parts)
    merge = ", ".join(merges)
    if chunks == 1:
        return [f"WITH parts AS (\n  {union}\n)\nSELECT {key_list}, __t, {merge} FROM {points} "
                f"LEFT JOIN parts USING ({key_list}, __t) GROUP BY {key_list}, __t"]
    setup.append(f"CREATE OR REPLACE TEMP TABLE {prefix}_parts AS SELECT *, hash({key_list}, __t) % {chunks} "
                 f"AS __chunk FROM (\n  {union}\n)")
    return [f"SELECT {key_list}, __t, {merge} FROM (SELECT * FROM {points} WHERE __chunk = {chunk}) "
            f"LEFT JOIN (SELECT * FROM {prefix}_parts WHERE __chunk = {chunk}) USING ({key_list}, __t, __chunk) "
            f"GROUP BY {key_list}, __t" for chunk in range(chunks)]


def prepare_spine(con, defs: Definitions, resolved: list[ResolvedFeature], spine_table: str,
                  timestamp_column: str, *, materialize: bool = True, defer_null_times: bool = False):
    """Create ``__spine`` from the user's spine: typed entity keys, ``__t`` and ``__row``
    (a table, or with ``materialize=False`` a view for a plan that reads the spine once).

    Returns the user's column names, in order, and the check of null times when it was
    left to the caller, else None. It is left (``defer_null_times``) only when no key
    needs a check of its own (every key column already has its key's type), so an error
    names the same fault whoever checks: ``check(nulls)`` raises when ``nulls`` (the
    null times the caller counted, or None to count them here) is not 0.
    """
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {spine_table})").fetchall())
    columns = list(types)
    if timestamp_column not in columns:
        raise SpineError(f"the spine has no timestamp column {timestamp_column!r} (columns: {', '.join(columns)})",
                         hint="pass timestamp_column= naming the column that holds each row's time")
    if not types[timestamp_column].startswith(("TIMESTAMP", "DATE")):
        raise SpineError(f"spine column {timestamp_column!r} is {types[timestamp_column]}, not a timestamp",
                         hint="cast it to a timestamp (UTC) before asking for a training set")
    key_exprs = {}
    for item in resolved:
        for key, dtype in item.entity.join_keys.items():
            if key not in columns:
                raise SpineError(f"the spine has no column {key!r}, the join key of entity {item.entity.name} "
                                 f"needed by {item.ref}", hint=f"add {key!r} to the spine")
            key_exprs[key] = f"TRY_CAST({q(key)} AS {DUCKDB_TYPES[dtype]}) AS {q('__k_' + key)}"
    # every check in one scan of the spine; a key column of its key's type casts without loss
    null_times = f"count(*) FILTER (WHERE {q(timestamp_column)} IS NULL)"
    checks = []
    dtypes = {}
    for key in key_exprs:
        dtypes[key] = next(i.entity.join_keys[key] for i in resolved if key in i.entity.join_keys)
        if types[key] != DUCKDB_TYPES[dtypes[key]]:
            checks.append((key, f"count(*) FILTER (WHERE {q(key)} IS NOT NULL AND "
                                f"TRY_CAST({q(key)} AS {DUCKDB_TYPES[dtypes[key]]}) IS NULL)"))

    def check(bad: int | None = None) -> None:
        if bad is None:
            bad = con.execute(f"SELECT {null_times} FROM {spine_table}").fetchall()[0][0]
        if bad:
            raise SpineError(f"{bad} spine rows have a null {timestamp_column!r}", hint="drop or fill them")

    deferred = defer_null_times and not checks
    if not deferred:
        bad, *wrongs = con.execute(f"SELECT {', '.join([null_times, *(c for _, c in checks)])} "
                                   f"FROM {spine_table}").fetchall()[0]
        check(bad)
        for (key, _), wrong in zip(checks, wrongs):
            if wrong:
                dtype = dtypes[key]
                raise SpineError(f"{wrong} spine values of {key!r} are not {dtype}", hint=f"cast {key!r} to {dtype}")
    extra = ", ".join(key_exprs.values())
    con.execute(f"CREATE OR REPLACE TEMP {'TABLE' if materialize else 'VIEW'} __spine AS SELECT *, {extra}"
                f"{',' if extra else ''} epoch_us({q(timestamp_column)}) AS __t FROM {spine_table}")
    return [c for c in columns if c != "__row"], check if deferred else None


def float_scales(con, defs: Definitions, resolved: list[ResolvedFeature], scan_of: Callable[[str], str],
                 mode: str) -> Scales:
    """The exact fixed-point scale of every float column summed over a window, per view
    (event-time mode only; see :func:`parity.batch.prefix.exact_float_scales`)."""
    if mode != "event_time":
        return {}
    found: Scales = {}
    for item in resolved:
        key = (item.view.name, item.view.version)
        if key not in found:
            found[key] = exact_float_scales(con, defs, item.view, events_sql(defs, item.view, scan_of(item.view.source)))
    return found


def training_set_sql(defs: Definitions, resolved: list[ResolvedFeature], scan_of: Callable[[str], str],
                     mode: str, user_columns: list[str], *, step: Callable[..., str],
                     chunks: int = 1, scales: Scales | None = None, ordered: bool = True,
                     latest_path: Callable[[LatestGroup], str] = lambda group: "duckdb",
                     running_path: Callable[[PrefixGroup], tuple[str, int, int]] = lambda group: ("duckdb", 0, 0)) -> str:
    """The final SELECT: the spine's columns, then each feature, in spine order (``ordered``),
    or in any order with the spine's row number ``__row`` last (for the caller to order).

    ``step(name, setup, sql, fallback, arrow=None, deferred=(), sql_name=None)`` runs a
    group's setup statements, materialises its SELECT and returns the relation's name (the
    engine times each step and shows progress). ``fallback``, when not None, is ``(check,
    name, setup, sql)``: if the query ``check`` (``{relation}`` names the relation) is
    false, the relation is remade from those. ``arrow``, when not None, replaces the
    SELECT: a function of the connection returning the relation's rows as an Arrow table,
    or None when it cannot (then the ``deferred`` statements and the SELECT run, and the
    step is named ``sql_name``). ``latest_path(group)`` says where a view's latest values
    are computed: ``"arrow"`` (in memory, :mod:`parity.batch.latest_arrow`) or
    ``"duckdb"``; ``running_path(group)`` the same for running totals
    (:mod:`parity.batch.prefix_arrow`), with the bytes DuckDB leaves to the arrays.
    """
    if mode not in MODES:
        raise ParityError(f"unknown mode {mode!r}", hint="use event_time or as_served")
    joins = []
    outputs = []
    points_of: dict[str, tuple[str, list[str]]] = {}  # entity -> its points table, made once
    for index, group in enumerate(plan_groups(resolved, mode, defs, scales)):
        keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
        setup: list[str] = []
        if group.view.entity not in points_of:
            points = f"__points{len(points_of)}"
            setup.append(points_sql(points, ", ".join(keys), chunks))
            points_of[group.view.entity] = points
        points = points_of[group.view.entity]
        events = events_sql(defs, group.view, scan_of(group.view.source))
        fallback = arrow = sql_name = None
        deferred: list[str] = []
        if isinstance(group, PrefixGroup):
            more, sql = prefix_sql(defs, group, events, points, f"__g{index}", floor_sql)
            name = f"{group.view.name} v{group.view.version} running totals ({len(group.features)} features)"
            path, reserve, limit = running_path(group)
            if path == "arrow":
                deferred, more, sql_name = more, [], name
                name = (f"{group.view.name} v{group.view.version} running totals in memory "
                        f"({len(group.features)} features)")
                arrow = (lambda con, g=group, e=events, p=points, r=reserve, m=limit:
                         running_table(con, defs, g, e, p, r, m))
        elif isinstance(group, RecentGroup):
            more, sql = recent_sql(defs, group, events, points, f"__g{index}", floor_sql)
            name = f"{group.view.name} v{group.view.version} last values of {group.column} ({len(group.features)} features)"
        elif isinstance(group, LatestGroup) and latest_path(group) == "arrow":
            name = f"{group.view.name} v{group.view.version} latest values in memory ({len(group.features)} features)"
            more, sql = [], []
            arrow = (lambda con, g=group, e=events, p=points: latest_table(con, defs, g, e, p, mode))
        elif isinstance(group, LatestGroup):
            more = []
            sql = [latest_join_sql(defs, group, events, points, mode, [f"p.{k}" for k in keys] + ["p.__t"],
                                   limit=f"(SELECT count(*) FROM {points}) + 1")]
            name = f"{group.view.name} v{group.view.version} latest values by hash join ({len(group.features)} features)"
            # some point sees two rows of its key: the join has more rows than points; use the history
            history = Group(group.view, UNBOUNDED, list(group.features))
            fallback = (f"SELECT (SELECT count(*) FROM {{relation}}) = (SELECT count(*) FROM {points})",
                        f"{group.view.name} v{group.view.version} latest values from history "
                        f"({len(group.features)} features)",
                        *group_sql(defs, history, scan_of(group.view.source), mode, f"__g{index}", chunks, points))
        else:
            more, sql = group_sql(defs, group, scan_of(group.view.source), mode, f"__g{index}", chunks, points)
            name = f"{group.view.name} v{group.view.version} ({len(group.features)} features)"
        relation = step(name, setup + more, sql, fallback, arrow=arrow, deferred=deferred, sql_name=sql_name)
        alias = f"g{index}"
        on = " AND ".join([f"{alias}.{k} IS NOT DISTINCT FROM s.{k}" for k in keys] + [f"{alias}.__t = s.__t"])
        joins.append(f"LEFT JOIN {relation} {alias} ON {on}")
        outputs += [f"{alias}.{q(item.output_name)}" for item, _ in group.features]
    order = {item.output_name: i for i, item in enumerate(resolved)}
    outputs.sort(key=lambda c: order[c.split(".", 1)[1].strip('"')])
    user = ", ".join(f"s.{q(c)}" for c in user_columns)
    tail = "ORDER BY s.__row" if ordered else ""
    return f"SELECT {user}, {', '.join(outputs)}{'' if ordered else ', s.__row'} FROM __spine s {' '.join(joins)} {tail}"


def direct_sql(defs: Definitions, group: LatestGroup, scan_of: Callable[[str], str], mode: str,
               user_columns: list[str] | None, rows: int) -> str:
    """A training set of one view's latest values straight from the spine (``rows`` rows), no
    points table: the spine's ``user_columns`` (or none), the features, then ``__row``, in any
    order. It is right when it returns ``rows`` rows (:mod:`parity.batch.latest`)."""
    return latest_join_sql(defs, group, events_sql(defs, group.view, scan_of(group.view.source)), "__spine", mode,
                           [f"p.{q(c)}" for c in user_columns or []], ("p.__row",), limit=str(rows + 1))


def group_count(resolved: list[ResolvedFeature], mode: str = "as_served", defs: Definitions | None = None,
                scales: Scales | None = None) -> int:
    return len(plan_groups(resolved, mode, defs, scales))


__all__ = ["training_set_sql", "direct_sql", "prepare_spine", "group_sql", "plan_groups", "SpineError", "MODES",
           "group_count", "floor_sql", "float_scales"]

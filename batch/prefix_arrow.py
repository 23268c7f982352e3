"""Running totals in memory: a sort-merge in NumPy (event-time mode), DuckDB out of core.

The same method as :mod:`parity.batch.prefix` (the value over ``[S, t)`` is ``C(t) - C(S)``,
``C(x)`` the total of the entity's events counting at ``x``), with no ASOF join:

1. DuckDB reads the events some point may need (:func:`parity.batch.prefix.scope_sql`:
   non-null keys, times within the points' windows) once into Arrow: keys, ``ts``, and
   one column per distinct partial ("atom"): the value (0 when the event does not count)
   for a sum, a flag for a count (flags packed eight to a byte);
2. keys become integer codes shared with the points
   (:func:`parity.batch.latest_arrow.encode_keys`); each event gets the combined key
   ``code * span + (ts - tmin)`` (one int64; ``span`` covers every ``ts`` and probe), and
   the events are sorted by it once;
3. each atom's *exclusive* running total over that order is one ``cumsum``. A probe
   ``(code, x)`` reads ``E[i]``, ``i`` the number of events with a smaller combined key:
   the events of smaller codes (``B``, which cancels) plus this code's events counting at
   ``x`` (:func:`parity.registry.semantics.counted_before`: ``ts < x``, so ties on ``ts``
   count together). The points are sorted by ``(code, t)`` first, which sorts every probe
   too (window starts grow with ``t``), and the binary searches then walk the events once;
4. window starts come from the semantics core (``Window.start``: ``floor(t - W, h)``);
   a lifetime window's start is before every event. Values are finished by the rules of
   :func:`parity.batch.aggregates.finish`: counts and sums are the difference (0 for an
   empty window or a point whose key has no events), a mean is ``sum / count`` and null
   when the count is 0.

Exactness. Counts and integer sums are int64: a running total may wrap past 2**63, but
NumPy's int64 arithmetic is exact modulo 2**64, so the difference is exact whenever the
window's total fits int64; it is checked that it must (``max |x| * rows < 2**63``, else
DuckDB computes the group and raises, as it does, if a value overflows). Float sums use
the fixed point of :func:`parity.batch.prefix.exact_float_scales` (every ``x * 2**S`` an
integer, all of them together below ``2**125``): ``x * 2**S`` is split into 32-bit
*limbs* (each an exact integer, computed from the double by truncations that are all
exact), one running total per limb, so no int64 overflows (``rows < 2**30``); the exact
difference, carried back into non-negative limbs, becomes a double with a few roundings
(relative error about 1e-15; the DuckDB path rounds once). When the combined key would
not fit int64 or a bound fails, :func:`running_table` returns None and the caller runs
the DuckDB path.

:func:`choose` is the dispatch rule between this and DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parity.batch.aggregates import q
from parity.batch.prefix import PrefixGroup, counted_sql, scope_sql
from parity.registry.models import Definitions
from parity.registry.schema import view_schema
from parity.registry.semantics import Window, counted_before, empty_value, output_dtype
from parity.registry.types import FLOAT_TYPES

PATHS = ("auto", "arrow", "duckdb")
SHARE = (3, 4)  # in memory when the working set is at most 3/4 of batch.memory_limit; while its arrays
# live, DuckDB's limit is lowered by the working set (running_table), so both stay within the limit
ROW_BYTES = 48  # per event: ts and codes as read, combined key, sort order, sorted key (not all at once)
ATOM_ROW_BYTES = {"count": 1, "int": 8, "float": 8}  # per event and atom, as read
POINT_BYTES = 64  # per point: t, codes, combined key, sort order, sorted t and base, the probe at t
PROBE_BYTES = 8  # per point and window start: its index into the running totals
PAIR_BYTES = 8  # per point, (atom, window start) and limb: a difference
FEATURE_BYTES = 8  # per point and feature: the value
# (on the high side: at 50M events and 10M points, user_engagement's 12 features are estimated
# at 7.1 GB; a dev run's step peaked 5.5 GiB above the RSS before it, DuckDB included)
INT64_HEADROOM = 62  # bits: every running total of a limb stays below 2**62
MAX_ROWS = 1 << 30  # lower limbs get at least 32 bits up to here


@dataclass(frozen=True)
class Atom:
    """One additive partial: ``kind`` count (a flag), int (a BIGINT value) or float (a
    DOUBLE value, exact at ``scale``); ``counted``: when the event counts (SQL)."""

    kind: str
    counted: str
    column: str | None = None
    scale: int | None = None


@dataclass
class Plan:
    """The atoms, window starts and features of one group (features refer to both by index)."""

    atoms: list[Atom] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    features: list[tuple[str, str, str | None, dict[str, int], int]] = field(default_factory=list)
    # (output name, agg, column dtype, role -> atom, window)

    def pairs(self) -> set[tuple[int, int]]:
        """The (atom, window) differences the features read."""
        return {(atom, window) for _, _, _, roles, window in self.features for atom in roles.values()}


def plan_of(defs: Definitions, group: PrefixGroup) -> Plan:
    """Atoms shared by features with equal partials; window starts shared by equal windows."""
    schema = view_schema(defs, group.view)
    plan = Plan()
    atoms: dict[Atom, int] = {}
    windows: dict[Window, int] = {}
    for item, window in group.features:
        feature = item.feature
        dtype = schema.get(feature.column) if feature.column else None
        counted = counted_sql(feature, schema)
        roles = {}
        if feature.agg in ("count", "mean"):
            roles["c"] = atoms.setdefault(Atom("count", counted), len(atoms))
        if feature.agg in ("sum", "mean"):
            atom = Atom("float", counted, feature.column, group.scales[feature.column]) if dtype in FLOAT_TYPES \
                else Atom("int", counted, feature.column)
            roles["s"] = atoms.setdefault(atom, len(atoms))
        plan.features.append((item.output_name, feature.agg, dtype, roles, windows.setdefault(window, len(windows))))
    plan.atoms = list(atoms)
    plan.windows = list(windows)
    return plan


def working_set(defs: Definitions, group: PrefixGroup, rows: int, points: int) -> int:
    """Bytes the in-memory path needs for ``rows`` events and ``points`` points (on the high
    side: every event of the view's scan read)."""
    plan = plan_of(defs, group)
    keys = len(defs.entity(group.view.entity).join_keys)
    per_row = ROW_BYTES + 8 * keys + sum(ATOM_ROW_BYTES[atom.kind] for atom in plan.atoms)
    pairs = sum(2 if plan.atoms[atom].kind == "float" else 1 for atom, _ in plan.pairs())
    per_point = (POINT_BYTES + 8 * keys + PROBE_BYTES * len(plan.windows) + PAIR_BYTES * pairs
                 + FEATURE_BYTES * len(plan.features))
    return rows * per_row + points * per_point


def choose(requested: str, defs: Definitions, group: PrefixGroup, rows: int, points: int, memory_limit: int) -> str:
    """``"arrow"`` or ``"duckdb"``: the requested path, or with ``"auto"`` the in-memory path
    exactly when its :func:`working_set` is at most ``SHARE`` (3/4) of ``memory_limit``."""
    if requested not in PATHS:
        from parity.errors import ParityError

        raise ParityError(f"unknown running-total path {requested!r}", hint=f"use one of {', '.join(PATHS)}")
    if requested != "auto":
        return requested
    part, whole = SHARE
    return "arrow" if working_set(defs, group, rows, points) * whole <= memory_limit * part else "duckdb"


def flag_column(plan: Plan, index: int) -> tuple[str, int]:
    """Where count atom ``index`` is read: the packed flags column and its bit (eight a byte)."""
    counts = [i for i, atom in enumerate(plan.atoms) if atom.kind == "count"]
    at = counts.index(index)
    return f"__f{at // 8}", at % 8


def rows_sql(defs: Definitions, group: PrefixGroup, plan: Plan, events: str, points: str) -> str:
    """The events in scope: keys ``__k*``, ``__ts``, ``__a<i>`` per sum atom (0 when the
    event does not count), and the count atoms' flags packed eight to a byte ``__f<j>``."""
    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    parts = [*keys, "__ts"]
    flags: dict[str, list[str]] = {}
    for i, atom in enumerate(plan.atoms):
        if atom.kind == "count":
            column, bit = flag_column(plan, i)
            flags.setdefault(column, []).append(f"(CASE WHEN {atom.counted} THEN {1 << bit} ELSE 0 END)")
        elif atom.kind == "int":
            parts.append(f"(CASE WHEN {atom.counted} THEN {q(atom.column)} ELSE 0 END)::BIGINT AS __a{i}")
        else:
            parts.append(f"(CASE WHEN {atom.counted} THEN {q(atom.column)}::DOUBLE ELSE 0 END)::DOUBLE AS __a{i}")
    parts += [f"({' + '.join(bits)})::UTINYINT AS {column}" for column, bits in flags.items()]
    # no semi join with the points' keys: an entity no point has only adds rows to the sort
    return f"SELECT {', '.join(parts)} " + scope_sql(defs, group, events, points, by_key=False)


def limb_layout(largest: float, rows: int) -> tuple[int, int]:
    """``(limbs, bits)``: each lower limb holds ``bits`` bits, as many as keep a running
    total of ``rows`` of them below ``2**62``; limbs are added until the top limb's totals
    stay below ``2**62`` too (``largest``: the greatest ``|x| * 2**S``)."""
    bits = INT64_HEADROOM - max(rows, 1).bit_length()
    bound = largest * rows
    limbs = 1
    while bound >= 2.0 ** (INT64_HEADROOM + bits * (limbs - 1)):
        limbs += 1
    return limbs, bits


def limb(x, scale: int, index: int, limbs: int, bits: int):
    """Limb ``index`` (0: least significant) of the integers ``x * 2**scale`` (``x`` float64,
    each a multiple of ``2**-scale``), as int64: bits ``bits * index`` and up, below ``bits *
    (index + 1)`` but for the top limb, with the sign of ``x``. Exact: scaling by powers of
    two and truncating are exact, and so is the difference of two truncations that agree
    above bit ``bits * (index + 1)`` (Sterbenz)."""
    import numpy as np

    high = np.trunc(x * 2.0 ** (scale - bits * index))
    if index == limbs - 1:
        return high.astype(np.int64)
    above = np.trunc(x * 2.0 ** (scale - bits * (index + 1))) * 2.0 ** bits
    return (high - above).astype(np.int64)


def limbs_to_double(diffs: list, scale: int, bits: int):
    """The float64 nearest (within a few roundings) to ``sum(diffs[k] * 2**(bits * k)) *
    2**-scale``, the differences being exact int64 per limb: carried into non-negative lower
    limbs (of the magnitude, so no terms cancel), then summed from the top."""
    import numpy as np

    if len(diffs) == 1:
        return diffs[0].astype(np.float64) * 2.0 ** -scale

    def carried(parts):
        out, carry = [], 0
        for part in parts[:-1]:
            part = part + carry
            carry = part >> bits
            out.append(part & ((1 << bits) - 1))
        out.append(parts[-1] + carry)
        return out

    plus = carried(diffs)
    negative = plus[-1] < 0
    minus = carried([-d for d in diffs]) if negative.any() else plus
    value = np.zeros(len(diffs[0]), dtype=np.float64)
    for k in range(len(diffs) - 1, -1, -1):
        value += np.where(negative, minus[k], plus[k]).astype(np.float64) * 2.0 ** (bits * k - scale)
    return np.where(negative, -value, value)


def running_values(plan: Plan, rows, point_keys: list, t):
    """Each feature's values at the points ``(point_keys, t)`` (``t`` int64 microseconds),
    from ``rows`` (the Arrow result of :func:`rows_sql`): ``(order, values)``, the values
    (Arrow arrays, in the order of ``plan.features``) being those of the points taken in
    ``order``; None when a bound fails (the caller computes the group in DuckDB)."""
    import numpy as np
    import pyarrow as pa

    from parity.batch.latest_arrow import encode_keys
    from parity.registry.types import arrow_type

    n = rows.num_rows
    nkeys = len(point_keys)
    if n >= MAX_ROWS:
        return None
    codes, point_codes, ncodes = encode_keys([rows.column(i) for i in range(nkeys)], point_keys)
    ts = rows.column("__ts").to_numpy()
    rows = rows.drop_columns(rows.column_names[:nkeys + 1])
    tmin, tmax = (int(ts.min()), int(ts.max())) if n else (0, 0)
    span = tmax - tmin + 2  # offsets 0..span-1: every ts, and a probe after the last one
    if ncodes * span >= 2 ** 63:
        return None
    key = codes * span + (ts - tmin)
    del codes, ts
    order = np.argsort(key)
    key = key[order]

    has = point_codes >= 0
    base = np.where(has, point_codes, 0) * span
    del point_codes
    by_point = np.argsort(base + np.clip(t - tmin, 0, span - 1))  # (code, t): every probe sorted too
    t_sorted, base, has = t[by_point], base[by_point], has[by_point]

    def probe(x):
        """Index into the exclusive running totals: events before (code, x); 0 for no code."""
        return np.where(has, counted_before(key, base + np.clip(x - tmin, 0, span - 1)), 0)

    at_t = probe(t_sorted)
    starts = [probe(np.full(len(t_sorted), tmin) if window.is_lifetime else window.start(t_sorted))
              for window in plan.windows]
    del key, base, has, t_sorted

    pairs = plan.pairs()
    diffs: dict[tuple[int, int], list] = {}  # (atom, window) -> the difference per limb
    layout: dict[int, tuple[int, int]] = {}  # float atom -> (limbs, bits)
    packed: dict[str, object] = {}  # flags column -> its bytes in event order
    for index, atom in enumerate(plan.atoms):
        if atom.kind == "count":
            column, bit = flag_column(plan, index)
            if column not in packed:
                packed[column] = rows.column(column).to_numpy()[order]
            parts = [(packed[column] >> bit) & 1]
        else:
            values = rows.column(f"__a{index}").to_numpy()
            rows = rows.drop_columns([f"__a{index}"])
            if atom.kind == "int":
                largest = max(int(values.max()), -int(values.min())) if n else 0
                if largest * n >= 2 ** 63:
                    return None
                parts = [values[order]]
            else:
                largest = float(np.abs(values).max()) * 2.0 ** atom.scale if n else 0.0
                layout[index] = limbs, bits = limb_layout(largest, n)
                values = values[order]
                parts = [limb(values, atom.scale, k, limbs, bits) for k in range(limbs)]
            del values
        results = [[] for _ in plan.windows]
        for part in parts:
            totals = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(part, out=totals[1:], dtype=np.int64)
            at = totals[at_t]
            for window in range(len(plan.windows)):
                if (index, window) in pairs:
                    results[window].append(at - totals[starts[window]])
            del totals
        for window in range(len(plan.windows)):
            if (index, window) in pairs:
                diffs[index, window] = results[window]
        del parts
    del order, packed, rows

    out = []
    for _name, agg, dtype, roles, window in plan.features:
        empty = None  # points whose window has no counted event, where the value is not 0
        if agg == "count":
            value = diffs[roles["c"], window][0]
        else:
            atom = plan.atoms[roles["s"]]
            parts = diffs[roles["s"], window]
            total = limbs_to_double(parts, atom.scale, layout[roles["s"]][1]) if atom.kind == "float" else parts[0]
            if agg == "sum":
                value = total
            else:
                count = diffs[roles["c"], window][0]
                empty = count == 0
                value = total.astype(np.float64) / np.where(empty, 1, count)
        # counts and sums of an empty window are 0, as the difference is; a mean's is empty_value's
        value = value.astype(arrow_type(output_dtype(agg, dtype)).to_pandas_dtype(), copy=False)
        if empty is not None and empty.any():
            fill = empty_value(agg, dtype)
            if fill is not None:
                value[empty] = fill
            out.append(pa.array(value, mask=empty if fill is None else None))
        else:
            out.append(pa.array(value))
    return by_point, out


def running_table(con, defs: Definitions, group: PrefixGroup, events: str, points: str, reserve: int = 0,
                  limit: int = 0):
    """The group's values at every row of the DuckDB relation ``points`` (entity keys ``__k*``
    and ``__t``) as an Arrow table: the keys, ``__t``, then each feature; or None (the
    caller runs :func:`parity.batch.prefix.prefix_sql` instead).

    While the arrays live, DuckDB's memory limit ``limit`` (bytes, read once per run by the
    caller) is lowered by ``reserve`` bytes (DuckDB moves its temporary tables to disk to
    honour it), so both together stay within it; then ``limit`` is set again."""
    import pyarrow as pa

    from parity.batch.latest_arrow import BATCH_ROWS

    plan = plan_of(defs, group)
    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    if reserve and limit:
        part, whole = SHARE
        con.execute(f"SET memory_limit = '{max(limit - reserve, limit * (whole - part) // whole)}B'")
    try:
        at = con.sql(f"SELECT {', '.join(keys)}, __t FROM {points}").to_arrow_table(BATCH_ROWS)
        rows = con.sql(rows_sql(defs, group, plan, events, points)).to_arrow_table(BATCH_ROWS)
        found = running_values(plan, rows, at.columns[:len(keys)], at.column("__t").to_numpy())
    finally:
        if reserve and limit:
            con.execute(f"SET memory_limit = '{limit}B'")
    if found is None:
        return None
    order, values = found  # the points in the order of the values (the caller joins on keys and t)
    return pa.Table.from_arrays([*at.take(pa.array(order)).columns, *values],
                                names=[*at.column_names, *(f[0] for f in plan.features)])


__all__ = ["PATHS", "SHARE", "choose", "working_set", "plan_of", "rows_sql", "running_values", "running_table", "limb",
           "limbs_to_double", "limb_layout"]

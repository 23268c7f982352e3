"""Latest values in memory (Arrow and NumPy), when the view's rows fit.

A latest value at ``t`` (DESIGN.md, "Latest value with ttl") is, per feature, the newest
(greatest ``(ts, partition, offset)``) of the entity's rows that count at ``t`` (``ts < t``,
and in as-served mode visible at ``t``), pass the feature's ``where`` and hold a non-null
value; it is served when its ``ts >= t - ttl``, else null. The DuckDB renderings of the
same rule are :mod:`parity.batch.latest` (a hash join) and the UNBOUNDED history group of
:mod:`parity.batch.training_set`.

Here DuckDB reads the view's rows once into Arrow (:func:`rows_sql`: keys, times, the
features' columns and each ``where`` as a flag, rendered by the same expression renderer),
and NumPy finds each point's row:

1. keys become dense integer codes shared by the rows and the points (:func:`encode_keys`);
2. per class of features with the same eligible rows (same column nulls and ``where``),
   the rows are sorted once by ``(code, ts, partition, offset)`` (skipped when they already
   are), so a key's rows are a contiguous segment, oldest first;
3. event time: each point's row is the last of its segment with ``ts < t``, found by a
   binary search vectorised over all points at once (one step per doubling of the longest
   segment: one step when each key has one row). As served: the rows are also sorted by
   ``(code, counts-from instant)`` with a running maximum of the first order's rank, so the
   last row counting at ``t`` in that order names the newest row counting at ``t``;
4. each feature's values are one Arrow ``take`` of its column, null past the ttl: already
   in the points' order and typed as DuckDB would have typed them.

:func:`choose` is the dispatch rule between this and DuckDB (out of core).
"""

from __future__ import annotations

from parity.batch.aggregates import q
from parity.batch.latest import LatestGroup, counts_from
from parity.registry.durations import parse_duration
from parity.registry.expr import parse, render_sql
from parity.registry.models import Definitions
from parity.registry.schema import view_schema
from parity.registry.semantics import counts_at, latest_is_live
from parity.registry.types import DUCKDB_TYPES, NUMERIC_TYPES

PATHS = ("auto", "arrow", "duckdb")
MEMORY_SHARE = 8  # the in-memory path may use at most 1/MEMORY_SHARE of batch.memory_limit (DuckDB the rest)
ROW_BYTES = 96  # per row: keys, times and ingest order as read, codes, two sort orders, ranks
POINT_BYTES = 64  # per point: keys, t, code, search bounds, the row found
VALUE_BYTES = {"bool": 1, "timestamp": 8, **{t: 8 for t in NUMERIC_TYPES}}
OTHER_VALUE_BYTES = 48  # strings: offsets plus a short value, read once and taken once
BATCH_ROWS = 1 << 22  # Arrow batches fetched from DuckDB: few chunks, so no concatenation before a take


def working_set(defs: Definitions, group: LatestGroup, rows: int, points: int) -> int:
    """Bytes the in-memory path needs for ``rows`` rows of the view and ``points`` points (an
    estimate on the high side: every column read, and each feature's values taken once)."""
    schema = view_schema(defs, group.view)
    keys = len(defs.entity(group.view.entity).join_keys)
    columns = {item.feature.column for item, _ in group.features}
    per_row = ROW_BYTES + 8 * keys + sum(VALUE_BYTES.get(schema[c], OTHER_VALUE_BYTES) for c in columns)
    per_point = POINT_BYTES + 8 * keys + sum(VALUE_BYTES.get(schema[item.feature.column], OTHER_VALUE_BYTES)
                                             for item, _ in group.features)
    return rows * per_row + points * per_point


def choose(requested: str, defs: Definitions, group: LatestGroup, rows: int, points: int, memory_limit: int) -> str:
    """``"arrow"`` or ``"duckdb"``: the requested path, or with ``"auto"`` the in-memory path
    exactly when its :func:`working_set` is at most ``memory_limit / MEMORY_SHARE`` (``rows``:
    the rows of the view's scan, an upper bound of the rows read)."""
    if requested not in PATHS:
        from parity.errors import ParityError

        raise ParityError(f"unknown latest-value path {requested!r}", hint=f"use one of {', '.join(PATHS)}")
    if requested != "auto":
        return requested
    return "arrow" if working_set(defs, group, rows, points) * MEMORY_SHARE <= memory_limit else "duckdb"


def rows_sql(defs: Definitions, group: LatestGroup, events: str, mode: str) -> str:
    """The view's rows with non-null keys: ``__k*`` keys, ``__ts``, as served ``__g`` (the
    instant from which the row counts), ``__p``/``__o`` (ingest order), ``__c<i>`` the features' columns
    (cast like the SQL paths cast them) and ``__w<i>`` each distinct ``where`` (false when null).
    A snapshot has no ``__p``/``__o``: its rows all have the ingest order ``(-1, 0)``."""
    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    schema = view_schema(defs, group.view)
    columns = sorted({item.feature.column for item, _ in group.features})
    wheres = sorted({item.feature.where for item, _ in group.features if item.feature.where})
    visible = [f"{counts_from(mode)} AS __g"] if mode == "as_served" else []  # event time: ts + 1
    # a snapshot's rows all have the same ingest order (-1, 0): not read
    order = [] if defs.source(group.view.source).kind == "snapshot" else ["__p::BIGINT AS __p", "__o::BIGINT AS __o"]
    parts = [*keys, "__ts", *visible, *order]
    parts += [f"{q(c)}::{DUCKDB_TYPES[schema[c]]} AS __c{i}" for i, c in enumerate(columns)]
    parts += [f"coalesce({render_sql(parse(w), 'duckdb', schema)}, FALSE) AS __w{i}" for i, w in enumerate(wheres)]
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    return f"SELECT {', '.join(parts)} FROM ({events}) WHERE {not_null}"


def latest_values(group: LatestGroup, rows, point_keys: list, t, mode: str) -> list:
    """Each feature's values (Arrow arrays, in the order of ``group.features``) at the points
    ``(point_keys, t)``: ``rows`` is the Arrow result of :func:`rows_sql` in ``mode``,
    ``point_keys`` one Arrow array per join key (typed like the rows' keys), ``t`` int64
    microseconds."""
    import numpy as np
    import pyarrow as pa

    if any(column.num_chunks > 1 for column in rows.columns):
        rows = rows.combine_chunks()
    nkeys = len(point_keys)
    codes, point_codes, ncodes = encode_keys([rows.column(i) for i in range(nkeys)], point_keys)
    ts = rows.column("__ts").to_numpy()
    g = rows.column("__g").to_numpy() if mode == "as_served" else None  # event time: ts + 1, not needed
    snapshot = "__p" not in rows.column_names  # every row's ingest order is (-1, 0): no tie breaks
    p = None if snapshot else rows.column("__p").to_numpy()
    o = None if snapshot else rows.column("__o").to_numpy()
    # as served, rows visible when they happen (snapshots) count as in event time: one order is enough
    as_served = mode == "as_served" and not np.array_equal(g, ts + 1)
    columns = sorted({item.feature.column for item, _ in group.features})
    wheres = sorted({item.feature.where for item, _ in group.features if item.feature.where})
    found: dict[tuple, object] = {}  # eligible-row class -> row index per point (-1: none)
    taken: dict[tuple, object] = {}  # (class, ttl) -> the Arrow indices to take, null where no value
    out = []
    for item, _ in group.features:
        feature = item.feature
        values = rows.column(f"__c{columns.index(feature.column)}")
        flag = f"__w{wheres.index(feature.where)}" if feature.where else None
        key = (feature.column if values.null_count else None, flag)
        if key not in found:
            eligible = np.ones(rows.num_rows, dtype=bool)
            if values.null_count:
                eligible &= values.is_valid().to_numpy()
            if flag is not None:
                eligible &= rows.column(flag).to_numpy()
            chosen = None if eligible.all() else np.flatnonzero(eligible)

            def pick(a, chosen=chosen):
                return a if chosen is None or a is None else a[chosen]

            row = newest_counting(pick(codes), pick(ts), pick(g), pick(p), pick(o), ncodes, point_codes, t, as_served)
            if chosen is not None and len(chosen):
                row = np.where(row >= 0, chosen[np.maximum(row, 0)], -1)
            found[key] = row
        ttl = parse_duration(feature.ttl)
        if (key, ttl) not in taken:
            row = found[key]
            safe = np.maximum(row, 0)
            live = (row >= 0) & latest_is_live(ts[safe], t, ttl) if len(ts) else row >= 0
            taken[key, ttl] = (safe, live) if live.any() else None
        indices = taken[key, ttl]
        out.append(pa.chunked_array([pa.nulls(len(t), values.type)]) if indices is None else take_live(values, *indices))
    return out


def take_live(values, rows, live):
    """``values`` at ``rows`` (int64, every one a valid index), null where not ``live``.

    A take with null indices costs about twice a plain one, so for flat types (numbers,
    timestamps, strings) the rows are taken plainly and ``live`` becomes the result's
    validity (a live row's value is never null: the row was chosen among non-null
    values). Other types take with null indices."""
    import numpy as np
    import pyarrow as pa

    if _flat(values.type):
        taken = values.take(pa.array(rows))
        if taken.num_chunks == 1 and taken.chunk(0).offset == 0:
            array = taken.chunk(0)
            nulls = len(live) - int(np.count_nonzero(live))
            validity = None if nulls == 0 else pa.py_buffer(np.packbits(live, bitorder="little"))
            return pa.chunked_array([pa.Array.from_buffers(array.type, len(array),
                                                           [validity, *array.buffers()[1:]], null_count=nulls)])
    return values.take(pa.array(rows, mask=~live))


def _flat(dtype) -> bool:
    """A type whose arrays are a validity bitmap and data buffers, with no children or dictionary."""
    import pyarrow as pa

    types = pa.types
    return (types.is_integer(dtype) or types.is_floating(dtype) or types.is_boolean(dtype)
            or types.is_timestamp(dtype) or types.is_date(dtype) or types.is_time(dtype)
            or types.is_duration(dtype) or types.is_decimal(dtype) or types.is_string(dtype)
            or types.is_large_string(dtype) or types.is_binary(dtype) or types.is_large_binary(dtype))


def encode_keys(row_keys: list, point_keys: list):
    """Codes ``0..ncodes-1`` for the rows' keys and the same codes for the points' keys:
    ``(row codes, point codes, ncodes)``. A point's key that no row has (or a null key) gets
    -1, or (integers over a short range, coded as the value minus the smallest) a code no
    row has."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n, m = len(row_keys[0]), len(point_keys[0])
    if len(row_keys) == 1 and pa.types.is_integer(row_keys[0].type) and n:
        # integers over a short range: the value minus the smallest is the code, no hashing
        values = row_keys[0].to_numpy().astype(np.int64, copy=False)
        low, high = int(values.min()), int(values.max())
        if high - low <= 4 * n + 1024:
            points = pc.fill_null(point_keys[0], 0).to_numpy().astype(np.int64, copy=False)
            inside = point_keys[0].is_valid().to_numpy() & (points >= low) & (points <= high)
            return values - low, np.where(inside, points - low, -1), high - low + 1
    codes = np.zeros(n, dtype=np.int64)
    point_codes = np.zeros(m, dtype=np.int64)
    ncodes = 1
    for rows_column, points_column in zip(row_keys, point_keys):
        distinct = pc.unique(rows_column)
        column_codes = pc.index_in(rows_column, value_set=distinct).to_numpy()
        points_codes = pc.fill_null(pc.index_in(points_column, value_set=distinct), -1).to_numpy()
        codes = codes * len(distinct) + column_codes
        missing = (point_codes < 0) | (points_codes < 0)
        point_codes = np.where(missing, -1, point_codes * len(distinct) + points_codes)
        if len(row_keys) > 1:  # dense again, so the next product stays below n * distinct
            present, codes = np.unique(codes, return_inverse=True)
            if len(present):
                at = np.minimum(np.searchsorted(present, point_codes), len(present) - 1)
                point_codes = np.where((point_codes >= 0) & (present[at] == point_codes), at, -1)
            else:
                point_codes = np.full(m, -1, dtype=np.int64)
            ncodes = max(len(present), 1)
        else:
            ncodes = max(len(distinct), 1)
    return codes.astype(np.int64, copy=False), point_codes.astype(np.int64, copy=False), ncodes


def lex_order(*keys):
    """The permutation sorting rows by ``keys`` (most significant first; None keys are left
    out), or None when they already are sorted (checked in one pass per key, no sort)."""
    import numpy as np

    keys = tuple(key for key in keys if key is not None)
    n = len(keys[0])
    if n > 1:
        before = np.zeros(n - 1, dtype=bool)  # row i sorts strictly before row i + 1
        tied = np.ones(n - 1, dtype=bool)
        for key in keys:
            before |= tied & (key[:-1] < key[1:])
            tied &= key[:-1] == key[1:]
        if not (before | tied).all():
            return np.lexsort(keys[::-1])
    return None


def segments(sorted_codes, ncodes: int):
    """``(start, end)`` of each code's run in ``sorted_codes``."""
    import numpy as np

    counts = np.bincount(sorted_codes, minlength=ncodes)
    end = np.cumsum(counts)
    return end - counts, end


def last_before(values, start, end, point_codes, t, inclusive: bool):
    """For each point, the index of the last row of its code's segment ``[start, end)`` of
    ``values`` (sorted within segments) that counts at ``t``: by the event-time rule
    :func:`parity.registry.semantics.counts_at` (``< t``), or with ``inclusive`` (``values``
    are counts-from instants, :func:`parity.batch.latest.counts_from`) ``<= t``; or -1."""
    import numpy as np

    has = point_codes >= 0
    code = np.where(has, point_codes, 0)
    first = np.where(has, start[code], 0)
    if (end - start).max() <= 1:  # at most one row per code: no search
        probe = values[np.minimum(first, len(values) - 1)]
        counts = (probe <= t) if inclusive else counts_at(probe, t)
        return np.where(has & (end[code] > first) & counts, first, -1)
    low, high = first.copy(), np.where(has, end[code], 0)
    while True:
        active = low < high
        if not active.any():
            break
        mid = (low + high) >> 1
        probe = values[np.minimum(mid, len(values) - 1)]
        counts = (probe <= t) if inclusive else counts_at(probe, t)
        low = np.where(active & counts, mid + 1, low)
        high = np.where(active & ~counts, mid, high)
    return np.where(has & (low > first), low - 1, -1)


def newest_counting(codes, ts, g, p, o, ncodes: int, point_codes, t, as_served: bool):
    """For each point, the row (an index into these arrays) that is the newest ``(ts, p, o)``
    of its code among those counting at ``t``, or -1: counting means ``ts < t`` in event
    time, ``g <= t`` as served. ``p`` and ``o`` may be None (every row's are equal)."""
    import numpy as np

    if len(codes) == 0:
        return np.full(len(point_codes), -1, dtype=np.int64)
    order = lex_order(codes, ts, p, o)
    if not as_served:
        if order is None:  # already sorted (a snapshot written in key order): no gathers
            if len(codes) == ncodes and codes[0] == 0 and (codes[:-1] < codes[1:]).all():
                # and one row per code: row i has code i, no search
                has = point_codes >= 0
                return np.where(has & (ts[np.where(has, point_codes, 0)] < t), point_codes, -1)
            start, end = segments(codes, ncodes)
            return last_before(ts, start, end, point_codes, t, inclusive=False)
        start, end = segments(codes[order], ncodes)
        at = last_before(ts[order], start, end, point_codes, t, inclusive=False)
        return np.where(at >= 0, order[np.maximum(at, 0)], -1)
    if order is None:
        order = np.arange(len(codes))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    by_visibility = lex_order(codes, g)
    if by_visibility is None:
        by_visibility = np.arange(len(codes))
    # ranks of a code all exceed those of smaller codes, so one running maximum serves every segment
    newest = np.maximum.accumulate(rank[by_visibility])
    start, end = segments(codes[by_visibility], ncodes)
    at = last_before(g[by_visibility], start, end, point_codes, t, inclusive=True)
    return np.where(at >= 0, order[newest[np.maximum(at, 0)]], -1)


def latest_table(con, defs: Definitions, group: LatestGroup, events: str, points: str, mode: str):
    """The group's values at every row of the DuckDB relation ``points`` (entity keys ``__k*``
    and ``__t``), as an Arrow table: the keys, ``__t``, then each feature."""
    import pyarrow as pa

    keys = [q("__k_" + k) for k in defs.entity(group.view.entity).join_keys]
    at = con.sql(f"SELECT {', '.join(keys)}, __t FROM {points}").to_arrow_table(BATCH_ROWS)
    rows = con.sql(rows_sql(defs, group, events, mode)).to_arrow_table(BATCH_ROWS)
    values = latest_values(group, rows, at.columns[:len(keys)], at.column("__t").to_numpy(), mode)
    return pa.Table.from_arrays([*at.columns, *values],
                                names=[*at.column_names, *(item.output_name for item, _ in group.features)])


__all__ = ["PATHS", "choose", "working_set", "rows_sql", "latest_values", "latest_table", "encode_keys",
           "newest_counting"]

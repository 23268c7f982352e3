"""Running batch work on DuckDB: connection settings, spine input, phases with progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity.batch.aggregates import q
from parity.errors import ParityError
from parity.registry.models import Definitions
from parity.registry.resolve import ResolvedFeature


@dataclass
class Phases:
    """Wall time per phase, in order (reported by the CLI and the benchmarks)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


LIMIT_VARIABLE = "parity_memory_limit"  # the limit connect() set, in bytes (a DuckDB session variable)
DEFAULT_MEMORY_CAP = 10 * 10**9  # bytes: the default memory limit is at most 10 GB (9.3 GiB)


def default_memory_limit() -> str:
    """``batch.memory_limit`` when none is set: half the machine's RAM, at most 10 GB.

    DuckDB's own default (80% of RAM) leaves nothing for the Arrow results, the Python
    process and whatever else runs on the machine; out-of-core work spills past the limit.
    """
    import os

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 2 * DEFAULT_MEMORY_CAP
    return f"{min(DEFAULT_MEMORY_CAP, ram // 2) // 10**6}MB"


def connect(memory_limit: str | None = None, threads: int | None = None, temp_directory: str | Path | None = None,
            *, capped: bool = True):
    """A DuckDB connection for batch work (out of core: spills to ``temp_directory``).

    With no ``memory_limit``, :func:`default_memory_limit` applies when ``capped``, else
    DuckDB's own default (the backfill: its ``last_k`` aggregate states cannot spill, and
    at 50M events they do not fit in 8 GB).
    """
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    if memory_limit or capped:
        limit = memory_limit or default_memory_limit()
        exact = _bytes(limit)
        con.execute(f"SET memory_limit = '{limit if exact is None else f'{exact}B'}'")
        if exact is not None:  # DuckDB shows its limit rounded (10 GB as 9.3 GiB): keep the exact one
            con.execute(f"SET VARIABLE {LIMIT_VARIABLE} = {exact}")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if temp_directory:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{str(temp_directory).replace(chr(39), chr(39) * 2)}'")
    return con


def register_spine(con, spine: Any) -> str:
    """Make the spine a DuckDB relation ``__spine_in`` with a ``__row`` column (spine order)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(spine, (str, Path)):
        path = str(spine).replace("'", "''")
        suffix = Path(spine).suffix.lower()
        if not Path(spine).exists():
            raise ParityError(f"spine file {spine} not found")
        reader = {".parquet": "read_parquet", ".csv": "read_csv", ".jsonl": "read_json", ".json": "read_json",
                  ".ndjson": "read_json"}.get(suffix)
        if reader is None:
            raise ParityError(f"spine file {spine}: unknown format {suffix!r}", hint="use .parquet, .csv or .jsonl")
        names = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {reader}('{path}')").fetchall()}
        if reader == "read_parquet" and not names & {"__row", "file_row_number"}:
            # a view: the file's own row numbers, no copy
            con.execute(f"CREATE OR REPLACE TEMP VIEW __spine_in AS SELECT * EXCLUDE (file_row_number), "
                        f"file_row_number AS __row FROM read_parquet('{path}', file_row_number = true)")
            return "__spine_in"
        # numbered in file order: a streaming window reads its input in order only when
        # insertion order is preserved
        con.execute("SET preserve_insertion_order = true")
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE __spine_in AS SELECT *, (row_number() OVER ())::BIGINT - 1 "
                        f"AS __row FROM (SELECT * FROM {reader}('{path}') )")
        finally:
            con.execute("SET preserve_insertion_order = false")
        return "__spine_in"
    if not isinstance(spine, pa.Table):
        try:
            spine = pa.Table.from_pandas(spine, preserve_index=False)
        except Exception as exc:  # not a DataFrame either
            raise ParityError(f"cannot use a {type(spine).__name__} as a spine: {exc}",
                              hint="pass a pyarrow Table, a pandas DataFrame or a file path") from None
    if "__row" in spine.column_names:
        raise ParityError("spine column name __row is reserved")
    spine = spine.append_column("__row", pa.array(np.arange(spine.num_rows, dtype=np.int64)))
    con.register("__spine_arrow", spine)
    return "__spine_arrow"


POINTS_PER_CHUNK = 4_000_000
STATE_BYTES = 512  # a point's merge state per feature, on average (last_k lists are larger, but rare)


def merge_chunks(con, resolved: list[ResolvedFeature], rows: int) -> int:
    """How many chunks of points the final merge uses for ``rows`` spine rows: enough to fit
    DuckDB's memory limit."""
    budget = memory_limit_bytes(con) // 4  # leave room for the joins feeding the merge
    per_chunk = max(1_000, min(POINTS_PER_CHUNK, budget // (STATE_BYTES * max(1, len(resolved)))))
    return max(1, -(-rows // per_chunk))


def memory_limit_setting(con) -> str:
    """DuckDB's memory limit as it shows it (e.g. ``9.3 GiB``; ``SET memory_limit`` takes it back)."""
    return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]


def memory_limit_bytes(con) -> int:
    """DuckDB's memory limit in bytes: as :func:`connect` set it, else as DuckDB shows it
    (rounded: setting that value again would lower the limit a little)."""
    exact = con.execute(f"SELECT getvariable('{LIMIT_VARIABLE}')").fetchall()[0][0]
    return int(exact) if exact is not None else _bytes(memory_limit_setting(con))


def _bytes(text: str) -> int | None:
    """Bytes of a size as DuckDB writes or takes it (``9.3 GiB``, ``10GB``, ``512 MB``);
    None when it is not one."""
    import re

    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|bytes|b)?\s*", text, re.IGNORECASE)
    if found is None:
        return None
    number, unit = found.groups()
    scale = {"b": 1, "bytes": 1, "kib": 2**10, "kb": 10**3, "mib": 2**20, "mb": 10**6, "gib": 2**30, "gb": 10**9,
             "tib": 2**40, "tb": 10**12}[(unit or "b").lower()]
    return int(float(number) * scale)


def _execute(con, statement: str, phase: str):
    """Run one statement; DuckDB's out-of-memory becomes a typed error naming the phase."""
    import duckdb

    try:
        return con.execute(statement)
    except duckdb.OutOfMemoryException as exc:
        raise ParityError(f"out of memory computing {phase}: {str(exc).splitlines()[0]}",
                          hint="raise batch.memory_limit, lower batch.threads or set batch.temp_directory "
                               "in feature_store.yaml") from exc


def run_training_set(con, defs: Definitions, resolved: list[ResolvedFeature], spine: Any,
                     scan_of: Callable[[str], str], *, mode: str = "event_time", timestamp_column: str = "ts",
                     out: str | Path | None = None, progress: bool = False, phases: Phases | None = None,
                     latest: str = "auto", running: str = "auto"):
    """Compute a training set; return an Arrow table, or write Parquet to ``out`` and return its path.

    ``latest`` says where latest values are computed: ``"auto"`` (in memory when the view's
    rows fit, :func:`parity.batch.latest_arrow.choose`), ``"arrow"`` or ``"duckdb"``;
    ``running`` the same for running totals (:func:`parity.batch.prefix_arrow.choose`).
    """
    from parity.batch.latest_arrow import PATHS
    from parity.batch.training_set import MODES, float_scales, plan_groups, prepare_spine

    if mode not in MODES:
        raise ParityError(f"unknown mode {mode!r}", hint="use event_time or as_served")
    if latest not in PATHS:
        raise ParityError(f"unknown latest-value path {latest!r}", hint=f"use one of {', '.join(PATHS)}")
    if running not in PATHS:
        raise ParityError(f"unknown running-total path {running!r}", hint=f"use one of {', '.join(PATHS)}")
    phases = phases if phases is not None else Phases()
    started = time.perf_counter()
    scales = float_scales(con, defs, resolved, scan_of, mode)
    groups = plan_groups(resolved, mode, defs, scales)
    phases.record("plan", started)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(groups) + 2, desc="training set", unit="step")
    try:
        started = time.perf_counter()
        table = register_spine(con, spine)
        direct = _direct_group(groups)
        # the direct plan may leave the null-time check to the spine's read (None: it was made)
        columns, null_times = prepare_spine(con, defs, resolved, table, timestamp_column,
                                            materialize=direct is None, defer_null_times=direct is not None)
        phases.record("spine", started)
        if bar:
            bar.update(1)
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        sizes = _Sizes(con, scan_of)

        def latest_path(group) -> str:
            return _latest_path(defs, group, sizes, rows, latest)

        if direct is not None:
            if latest_path(direct) == "arrow":
                return _run_direct_arrow(con, defs, direct, scan_of, mode, columns, timestamp_column, out, phases,
                                         bar, null_times)
            if null_times is not None:
                null_times()
            result = _run_direct(con, defs, direct, scan_of, mode, columns, table, rows, out, phases, bar)
            if result is not None:
                return result
            con.execute("DROP VIEW __spine")  # some spine row sees two rows of its key: the general plan
            prepare_spine(con, defs, resolved, table, timestamp_column)
        def running_path(group) -> tuple[str, int, int]:
            return _running_path(defs, group, sizes, rows, running)

        return _run_groups(con, defs, resolved, scan_of, mode, columns, rows, scales, out, phases, bar, latest_path,
                           running_path)
    finally:
        if bar:
            bar.close()


class _Sizes:
    """The rows of each source's scan and DuckDB's memory limit, each asked of DuckDB once per run."""

    def __init__(self, con, scan_of: Callable[[str], str]) -> None:
        self._con, self._scan_of, self._rows = con, scan_of, {}
        self._limit: int | None = None

    def rows(self, source: str) -> int:
        if source not in self._rows:
            self._rows[source] = self._con.execute(f"SELECT count(*) FROM {self._scan_of(source)}").fetchall()[0][0]
        return self._rows[source]

    @property
    def memory_limit(self) -> int:
        if self._limit is None:
            self._limit = memory_limit_bytes(self._con)
        return self._limit


def _latest_path(defs, group, sizes: _Sizes, points: int, requested: str) -> str:
    """``"arrow"`` or ``"duckdb"`` for a view's latest values (:func:`parity.batch.latest_arrow.choose`,
    on the rows of the view's scan and DuckDB's memory limit)."""
    from parity.batch.latest_arrow import choose

    if requested != "auto":
        return choose(requested, defs, group, 0, 0, 0)
    return choose(requested, defs, group, sizes.rows(group.view.source), points, sizes.memory_limit)


def _running_path(defs, group, sizes: _Sizes, points: int, requested: str) -> tuple[str, int, int]:
    """``("arrow", bytes, limit)`` or ``("duckdb", 0, limit)`` for a view's running totals
    (:func:`parity.batch.prefix_arrow.choose` on the rows of the view's scan and DuckDB's
    memory limit); ``bytes``: the estimated working set, taken from DuckDB's limit while
    the arrays live (none when the path is forced: tests); ``limit``: DuckDB's limit as read
    once per run, restored after each group (DuckDB shows it rounded down, so a limit read
    back after every group would shrink a little each time)."""
    from parity.batch.prefix_arrow import choose, working_set

    if requested != "auto":
        return choose(requested, defs, group, 0, 0, 0), 0, 0
    rows = sizes.rows(group.view.source)
    path = choose(requested, defs, group, rows, points, sizes.memory_limit)
    return path, working_set(defs, group, rows, points) if path == "arrow" else 0, sizes.memory_limit


def _run_direct_arrow(con, defs, group, scan_of, mode, columns, timestamp_column, out, phases, bar,
                      null_times=None):
    """A view's latest values in memory (:mod:`parity.batch.latest_arrow`) at every spine row:
    the spine read once in file order, the values found in that order, set beside it.
    ``null_times``: the spine's null-time check when
    :func:`parity.batch.training_set.prepare_spine` left it to this read.
    """
    import pyarrow as pa

    from parity.batch.latest_arrow import BATCH_ROWS, latest_values, rows_sql
    from parity.batch.training_set import events_sql

    began = time.perf_counter()
    name = f"features: {group.view.name} v{group.view.version} latest values in memory, from the spine"
    if bar:
        bar.set_postfix_str(name)
    join_keys = defs.entity(group.view.entity).join_keys
    spine = ordered_scan(con, f"SELECT {', '.join(q(c) for c in columns)}, __row FROM __spine")
    if null_times is not None:
        null_times(spine.column(timestamp_column).null_count)
    found = _keys_and_times(spine, join_keys, timestamp_column)
    if found is None:  # keys or times of other types: DuckDB casts them, as for every other path
        typed = ordered_scan(con, f"SELECT {', '.join(q('__k_' + k) for k in join_keys)}, __t, __row FROM __spine")
        found = typed.columns[:len(join_keys)], typed.column("__t").to_numpy()
    rows = con.sql(rows_sql(defs, group, events_sql(defs, group.view, scan_of(group.view.source)), mode)) \
        .to_arrow_table(BATCH_ROWS)
    values = latest_values(group, rows, *found, mode)
    result = pa.Table.from_arrays(spine.columns[:len(columns)] + values,
                                  names=[*columns, *(item.output_name for item, _ in group.features)])
    if out is not None:
        _write_in_order(con, result, out, name)
        result = Path(out)
    phases.record(name, began)
    if bar:
        bar.update(2)
    return result


def _keys_and_times(spine, join_keys: dict[str, str], timestamp_column: str):
    """The spine's join keys and times (int64 microseconds) straight from its Arrow columns,
    when they already have the keys' types and microsecond timestamps; else None."""
    import pyarrow as pa

    from parity.registry.types import arrow_type

    keys = []
    for key, dtype in join_keys.items():
        column = spine.column(key)
        if column.type != arrow_type(dtype):
            return None
        keys.append(column)
    times = spine.column(timestamp_column)
    if not (pa.types.is_timestamp(times.type) and times.type.unit == "us"):
        return None
    return keys, times.cast(pa.int64()).to_numpy()


def _write_in_order(con, table, out: str | Path, phase: str) -> None:
    """Write an Arrow table to Parquet with DuckDB (the writer of every other path), rows in order."""
    target = str(out).replace("'", "''")
    con.register("__result_arrow", table)
    con.execute("SET preserve_insertion_order = true")
    try:
        _execute(con, f"COPY (SELECT * FROM __result_arrow) TO '{target}' (FORMAT parquet)", phase)
    finally:
        con.execute("SET preserve_insertion_order = false")
        con.unregister("__result_arrow")


def _direct_group(groups: list):
    """The plan's one group when it is a view's latest values (computed straight from the spine)."""
    from parity.batch.latest import LatestGroup

    return groups[0] if len(groups) == 1 and isinstance(groups[0], LatestGroup) else None


def _run_direct(con, defs, group, scan_of, mode, columns, table, rows: int, out, phases, bar):
    """One hash join of the spine with the view's rows; None when some spine row sees two rows.

    In memory, the join carries only the keys, ``__t`` and ``__row`` of the spine (the
    smaller hash table); the features are put in spine order by :func:`in_spine_order` and
    set beside the spine's own columns, read in file order.
    """
    import pyarrow as pa

    from parity.batch.training_set import direct_sql

    began = time.perf_counter()
    name = f"features: {group.view.name} v{group.view.version} latest values by hash join, from the spine"
    if bar:
        bar.set_postfix_str(name)
    if out is not None:
        target = str(out).replace("'", "''")
        sql = direct_sql(defs, group, scan_of, mode, columns, rows)
        written = _execute(con, f"COPY (SELECT * EXCLUDE (__row) FROM ({sql}) ORDER BY __row) TO '{target}' "
                                f"(FORMAT parquet)", name).fetchall()[0][0]
        result: Any = Path(out) if written == rows else None
    else:
        features = con.sql(direct_sql(defs, group, scan_of, mode, None, rows)).to_arrow_table()
        result = None
        if features.num_rows == rows:
            features = in_spine_order(features)
            spine = ordered_scan(con, f"SELECT {', '.join(q(c) for c in columns)}, __row FROM {table}")
            result = pa.Table.from_arrays(spine.columns + features.columns,
                                          names=spine.column_names + features.column_names)
    phases.record(name, began)
    if bar:
        bar.update(2)
    return result


def ordered_scan(con, sql: str):
    """``sql`` (a scan with a ``__row`` column) as Arrow in ``__row`` order, without ``__row``.

    With insertion order preserved, DuckDB returns a scan in file order; the row numbers
    are checked, and reordered if they are not.
    """
    import numpy as np

    from parity.batch.latest_arrow import BATCH_ROWS

    con.execute("SET preserve_insertion_order = true")
    try:
        table = con.sql(sql).to_arrow_table(BATCH_ROWS)
    finally:
        con.execute("SET preserve_insertion_order = false")
    rows = table.column("__row").to_numpy()
    if len(rows) and not (rows[0] == 0 and np.all(np.diff(rows) == 1)):
        return in_spine_order(table)
    return table.drop_columns(["__row"])


def in_spine_order(table):
    """``table`` (a ``__row`` column numbering the spine's rows 0..n-1, each once) in spine
    order, without ``__row``: a scatter of the row numbers, then one gather."""
    import numpy as np
    import pyarrow as pa

    rows = table.column("__row").to_numpy()
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = np.arange(len(rows), dtype=np.int64)
    return table.drop_columns(["__row"]).take(pa.array(order))


def _run_groups(con, defs, resolved, scan_of, mode, columns, rows: int, scales, out, phases, bar, latest_path,
                running_path):
    """The general plan: one relation per group of features, joined to the spine."""
    from parity.batch.training_set import training_set_sql

    counter = iter(range(10_000))

    def fill(relation: str, name: str, setup: list[str], selects: list[str], arrow=None, deferred=()) -> bool:
        """Make the relation; False when ``arrow`` could not and the SQL made it."""
        for statement in setup:
            _execute(con, statement, name)
        if arrow is not None:
            rows = arrow(con)
            if rows is not None:
                con.register("__step_arrow", rows)
                del rows
                try:
                    _execute(con, f"CREATE OR REPLACE TEMP TABLE {relation} AS SELECT * FROM __step_arrow", name)
                finally:
                    con.unregister("__step_arrow")
                return True
        for statement in deferred:
            _execute(con, statement, name)
        statements = [f"CREATE OR REPLACE TEMP TABLE {relation} AS {selects[0]}"]
        statements += [f"INSERT INTO {relation} {select}" for select in selects[1:]]
        for statement in statements:
            _execute(con, statement, name)
        return arrow is None

    def step(name: str, setup: list[str], selects: list[str], fallback=None, arrow=None, deferred=(),
             sql_name=None) -> str:
        began = time.perf_counter()
        relation = f"__group{next(counter)}"
        if bar:
            bar.set_postfix_str(name)
        if not fill(relation, name, setup, selects, arrow, deferred) and arrow is not None:
            name = sql_name or name
        if fallback is not None:
            check, other, more, others = fallback
            if not con.execute(check.format(relation=relation)).fetchall()[0][0]:
                name = other
                fill(relation, name, more, others)
        phases.record(f"features: {name}", began)
        if bar:
            bar.update(1)
        return relation

    sql = training_set_sql(defs, resolved, scan_of, mode, columns, step=step,
                           chunks=merge_chunks(con, resolved, rows), scales=scales, ordered=out is not None,
                           latest_path=latest_path, running_path=running_path)
    began = time.perf_counter()
    if bar:
        bar.set_postfix_str("assemble")
    try:
        if out is not None:
            target = str(out).replace("'", "''")
            con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
            return Path(out)
        return in_spine_order(con.sql(sql).to_arrow_table())
    finally:
        phases.record("assemble", began)
        if bar:
            bar.update(1)

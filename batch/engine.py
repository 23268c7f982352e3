"""Running batch work on DuckDB: connection settings, spine input, phases with progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity.errors import ParityError
from parity.registry.models import Definitions
from parity.registry.resolve import ResolvedFeature


@dataclass
class Phases:
    """Wall time per phase, in order (reported by the CLI and the benchmarks)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


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
        con.execute(f"SET memory_limit = '{memory_limit or default_memory_limit()}'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if temp_directory:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{str(temp_directory).replace(chr(39), chr(39) * 2)}'")
    return con


def register_spine(con, spine: Any) -> str:
    """Make the spine a DuckDB relation ``__spine_in`` with a ``__row`` column (spine order)."""
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
        con.execute(f"CREATE OR REPLACE TEMP TABLE __spine_in AS SELECT *, (row_number() OVER ())::BIGINT - 1 AS __row "
                    f"FROM (SELECT * FROM {reader}('{path}') )")
        return "__spine_in"
    if not isinstance(spine, pa.Table):
        try:
            spine = pa.Table.from_pandas(spine, preserve_index=False)
        except Exception as exc:  # not a DataFrame either
            raise ParityError(f"cannot use a {type(spine).__name__} as a spine: {exc}",
                              hint="pass a pyarrow Table, a pandas DataFrame or a file path") from None
    if "__row" in spine.column_names:
        raise ParityError("spine column name __row is reserved")
    spine = spine.append_column("__row", pa.array(range(spine.num_rows), pa.int64()))
    con.register("__spine_arrow", spine)
    return "__spine_arrow"


POINTS_PER_CHUNK = 4_000_000
STATE_BYTES = 512  # a point's merge state per feature, on average (last_k lists are larger, but rare)


def merge_chunks(con, resolved: list[ResolvedFeature], spine_table: str) -> int:
    """How many chunks of points the final merge uses: enough to fit DuckDB's memory limit."""
    rows = con.execute(f"SELECT count(*) FROM {spine_table}").fetchall()[0][0]
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    budget = _bytes(limit) // 4  # leave room for the joins feeding the merge
    per_chunk = max(1_000, min(POINTS_PER_CHUNK, budget // (STATE_BYTES * max(1, len(resolved)))))
    return max(1, -(-rows // per_chunk))


def _bytes(text: str) -> int:
    number, _, unit = text.strip().partition(" ")
    scale = {"bytes": 1, "kib": 2**10, "kb": 10**3, "mib": 2**20, "mb": 10**6, "gib": 2**30, "gb": 10**9,
             "tib": 2**40, "tb": 10**12}.get(unit.lower(), 1)
    return int(float(number) * scale)


def _execute(con, statement: str, phase: str) -> None:
    """Run one statement; DuckDB's out-of-memory becomes a typed error naming the phase."""
    import duckdb

    try:
        con.execute(statement)
    except duckdb.OutOfMemoryException as exc:
        raise ParityError(f"out of memory computing {phase}: {str(exc).splitlines()[0]}",
                          hint="raise batch.memory_limit, lower batch.threads or set batch.temp_directory "
                               "in feature_store.yaml") from exc


def run_training_set(con, defs: Definitions, resolved: list[ResolvedFeature], spine: Any,
                     scan_of: Callable[[str], str], *, mode: str = "event_time", timestamp_column: str = "ts",
                     out: str | Path | None = None, progress: bool = False, phases: Phases | None = None):
    """Compute a training set; return an Arrow table, or write Parquet to ``out`` and return its path."""
    from parity.batch.training_set import float_scales, group_count, prepare_spine, training_set_sql

    phases = phases if phases is not None else Phases()
    started = time.perf_counter()
    scales = float_scales(con, defs, resolved, scan_of, mode)
    phases.record("plan", started)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=group_count(resolved, mode, defs, scales) + 2, desc="training set", unit="step")
    started = time.perf_counter()
    table = register_spine(con, spine)
    columns = prepare_spine(con, defs, resolved, table, timestamp_column)
    phases.record("spine", started)
    if bar:
        bar.update(1)
    counter = iter(range(10_000))

    def step(name: str, setup: list[str], selects: list[str]) -> str:
        began = time.perf_counter()
        relation = f"__group{next(counter)}"
        if bar:
            bar.set_postfix_str(name)
        fill = [f"CREATE OR REPLACE TEMP TABLE {relation} AS {selects[0]}"]
        fill += [f"INSERT INTO {relation} {select}" for select in selects[1:]]
        for statement in [*setup, *fill]:
            _execute(con, statement, name)
        phases.record(f"features: {name}", began)
        if bar:
            bar.update(1)
        return relation

    sql = training_set_sql(defs, resolved, scan_of, mode, columns, step=step,
                           chunks=merge_chunks(con, resolved, table), scales=scales)
    began = time.perf_counter()
    if bar:
        bar.set_postfix_str("assemble")
    try:
        if out is not None:
            target = str(out).replace("'", "''")
            con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
            result: Any = Path(out)
        else:
            result = con.sql(sql).to_arrow_table()
    finally:
        phases.record("assemble", began)
        if bar:
            bar.update(1)
            bar.close()
    return result

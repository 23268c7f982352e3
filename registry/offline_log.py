"""The offline event log: every event of a source, as a Hive-partitioned Parquet dataset.

One writer for every producer: ``parity land`` (files landed in batch), the streaming
engine (Kafka events) and the benchmark generator all go through :class:`OfflineLog`.

Layout::

    <offline_log root>/
      <source offline_log.path, default the source name>/
        date=YYYY-MM-DD/<batch_id>.parquet      one file per (batch_id, UTC date of the event ts)
        _landings/                              bookkeeping of ``parity land`` (parity.batch.land)
      _rejects/<source>/<batch_id>.jsonl        rows ``parity land`` refused, with the reason

``date`` is the UTC date of the source's timestamp field. It lives only in the directory
name: the files do not carry a ``date`` column, and readers scan with
``hive_partitioning = false``.

Columns of every file, in this order:

- the source schema's columns, under their own names, typed from the dtype
  (``timestamp`` -> ``timestamp[us]`` without a zone, meaning UTC; ``int64`` -> int64;
  ``string`` -> string; ...);
- ``_ingested_at timestamp[us]`` (not null): when the platform received the event (the
  Kafka message timestamp for streamed events; the landing time, or the file's own
  ``_ingested_at`` column, for landed events);
- ``_applied_at timestamp[us]`` (nullable): when the event's effect became visible in the
  online store; null for batch-landed rows (never applied online);
- ``_partition int32`` (not null): the Kafka partition for streamed rows, ``-1`` for
  batch-landed rows;
- ``_offset int64`` (not null): the Kafka offset for streamed rows, the landing sequence
  for landed rows (it increases across every landing of the source).

**Ingest order** is ``(_partition, _offset)`` ascending. It breaks ties between events
with equal timestamps (``last`` takes the greatest ts, then the greatest ingest order).
Landed rows (partition -1) therefore come before streamed rows with the same ts, and
within a landing, a later row of the file comes later.

Durability: each file is written under a temporary name (``.<batch_id>.<random>.tmp``,
which no reader glob matches), fsync'ed, then ``os.replace``'d into place, so a crash
never leaves a half-written Parquet file. Writing a batch id again replaces that batch's
files (and removes its files for dates the new content no longer has): a batch is
idempotent by construction.

pyarrow is imported lazily: ``import parity.batch`` stays cheap.
"""

from __future__ import annotations

import glob as _glob
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from parity.registry.types import arrow_type as _arrow_type
from parity.errors import ParityError
from parity.registry.models import Source
from parity.registry.types import DUCKDB_TYPES

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from parity.registry.config import FeatureStoreConfig

META_COLUMNS: tuple[str, ...] = ("_ingested_at", "_applied_at", "_partition", "_offset")
META_DUCKDB_TYPES: dict[str, str] = {
    "_ingested_at": "TIMESTAMP",
    "_applied_at": "TIMESTAMP",
    "_partition": "INTEGER",
    "_offset": "BIGINT",
}
LANDED_PARTITION = -1
PARTITION_PREFIX = "date="
REJECTS_DIR = "_rejects"
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_US_PER_DAY = 86_400_000_000


def arrow_type(dtype: str) -> "pa.DataType":
    """The Arrow type of a Parity dtype (the offline log's physical type: naive UTC timestamps)."""
    return _arrow_type(dtype)


def sql_string(text: str | os.PathLike) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A quoted SQL identifier (double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _columns(source: Source) -> list[tuple[str, str]]:
    """(name, DuckDB type) of every column of the log of ``source``, in file order."""
    cols = [(name, DUCKDB_TYPES[dtype]) for name, dtype in source.schema_.items()]
    return cols + [(name, META_DUCKDB_TYPES[name]) for name in META_COLUMNS]


def _empty_relation(columns: list[tuple[str, str]]) -> str:
    select = ", ".join(f"CAST(NULL AS {typ}) AS {sql_ident(name)}" for name, typ in columns)
    return f"(SELECT {select} WHERE false)"


def snapshot_scan_sql(source: Source, root_dir: str | Path) -> str:
    """A DuckDB table expression reading a snapshot source (``kind: snapshot``).

    ``snapshot.path`` (a Parquet file or glob) is resolved against ``root_dir`` (the
    project root, the folder of feature_store.yaml). Only the schema's columns are
    selected, in schema order. Raises ParityError when no file matches.
    """
    if source.snapshot is None:
        raise ParityError(
            f"source {source.name}: kind snapshot needs a `snapshot: {{path: ...}}`",
            hint="add `snapshot: {path: data/<name>/*.parquet}` to the source",
        )
    pattern = Path(source.snapshot.path)
    if not pattern.is_absolute():
        pattern = Path(root_dir) / pattern
    if not _glob.glob(str(pattern)):
        raise ParityError(
            f"source {source.name}: no snapshot file matches {pattern}",
            hint="write the snapshot Parquet file(s) there, or fix `snapshot.path`",
        )
    select = ", ".join(
        f"CAST({sql_ident(name)} AS {DUCKDB_TYPES[dtype]}) AS {sql_ident(name)}"
        for name, dtype in source.schema_.items()
    )
    return f"(SELECT {select} FROM read_parquet({sql_string(pattern)}, union_by_name = true))"


class OfflineLog:
    """The offline event log under ``root`` (the ``offline_log.path`` of feature_store.yaml).

    ``project_root`` resolves relative ``snapshot.path`` globs of snapshot sources
    (default: the current directory).
    """

    def __init__(self, root: str | Path, *, project_root: str | Path | None = None) -> None:
        self.root = Path(root)
        self.project_root = Path(project_root) if project_root is not None else Path(".")

    @classmethod
    def from_config(cls, config: "FeatureStoreConfig") -> "OfflineLog":
        return cls(config.path(config.offline_log.path), project_root=config.root)

    # -- layout -------------------------------------------------------------------------

    def source_dir(self, source: Source) -> Path:
        relative = source.offline_log.path if source.offline_log and source.offline_log.path else source.name
        return self.root / relative

    def rejects_dir(self, source: Source) -> Path:
        return self.root / REJECTS_DIR / source.name

    def arrow_schema(self, source: Source) -> "pa.Schema":
        """Source columns (nullable, except the timestamp field) then the meta columns."""
        import pyarrow as pa

        fields = [
            pa.field(name, arrow_type(dtype), nullable=name != source.timestamp_field)
            for name, dtype in source.schema_.items()
        ]
        fields += [
            pa.field("_ingested_at", pa.timestamp("us"), nullable=False),
            pa.field("_applied_at", pa.timestamp("us"), nullable=True),
            pa.field("_partition", pa.int32(), nullable=False),
            pa.field("_offset", pa.int64(), nullable=False),
        ]
        return pa.schema(fields)

    def files(self, source: Source) -> list[Path]:
        """Every data file of the source (sorted)."""
        return sorted(self.source_dir(source).glob(f"{PARTITION_PREFIX}*/*.parquet"))

    def first_day(self, source: Source) -> "dt.date | None":
        """The earliest date partition holding a data file (None: the log is empty)."""
        import datetime as dt

        files = self.files(source)  # sorted: date=YYYY-MM-DD folders sort by date
        return dt.date.fromisoformat(files[0].parent.name[len(PARTITION_PREFIX):]) if files else None

    def batch_ids(self, source: Source) -> set[str]:
        return {path.stem for path in self.files(source)}

    # -- reading ------------------------------------------------------------------------

    def scan_sql(self, source: Source) -> str:
        """A DuckDB table expression reading the whole source, columns in :meth:`arrow_schema` order.

        Usable as ``SELECT ... FROM <scan_sql> AS e``. With no file yet it is an empty,
        typed relation. The glob is expanded when the query runs, so files landed after
        this call are read, unless the log was empty when it was called. Snapshot
        sources read their ``snapshot.path`` instead (:func:`snapshot_scan_sql`).
        """
        if source.kind == "snapshot":
            return snapshot_scan_sql(source, self.project_root)
        columns = _columns(source)
        if not self.files(source):
            return _empty_relation(columns)
        pattern = self.source_dir(source) / f"{PARTITION_PREFIX}*" / "*.parquet"
        select = ", ".join(sql_ident(name) for name, _ in columns)
        return (
            f"(SELECT {select} FROM read_parquet({sql_string(pattern)}, "
            f"hive_partitioning = false, union_by_name = true))"
        )

    # -- writing ------------------------------------------------------------------------

    def conform(self, source: Source, table: "pa.Table | pa.RecordBatch") -> "pa.Table":
        """``table`` cast to :meth:`arrow_schema` (same columns; compatible types only).

        Raises ParityError naming the column when a column is missing or unexpected,
        cannot be cast safely, or is null where the log requires a value (the timestamp
        field, ``_ingested_at``, ``_partition``, ``_offset``).
        """
        import pyarrow as pa

        schema = self.arrow_schema(source)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        have = table.column_names
        missing = [name for name in schema.names if name not in have]
        extra = [name for name in have if name not in schema.names]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing column(s) " + ", ".join(missing))
            if extra:
                parts.append("unexpected column(s) " + ", ".join(extra))
            raise ParityError(
                f"offline log of source {source.name}: " + "; ".join(parts),
                hint=f"a batch has exactly the columns {', '.join(schema.names)}",
            )
        arrays = []
        for target in schema:
            column = table.column(target.name)
            if column.type != target.type:
                column = _cast(column, target, source.name)
            if not target.nullable and column.null_count:
                raise ParityError(
                    f"offline log of source {source.name}: column {target.name} has "
                    f"{column.null_count} null value(s); it must not be null"
                )
            arrays.append(column)
        return pa.Table.from_arrays(arrays, schema=schema)

    def write(self, source: Source, table: "pa.Table", *, batch_id: str) -> list[Path]:
        """Write one batch; replaces any earlier content of ``batch_id``. Returns the files."""
        return self.write_batches(source, table.to_batches(), batch_id=batch_id)

    def write_batches(
        self, source: Source, batches: Iterable["pa.RecordBatch | pa.Table"], *, batch_id: str
    ) -> list[Path]:
        """Streaming form of :meth:`write`: bounded memory, one file per date of the batch.

        Each input is conformed (see :meth:`conform`) and split by the UTC date of the
        timestamp field into one Parquet writer per date. Nothing becomes visible until
        every input has been written: then each file is fsync'ed and ``os.replace``'d into
        ``date=YYYY-MM-DD/<batch_id>.parquet``, and older files of ``batch_id`` for dates
        no longer present are removed. On an error, the temporary files are removed and
        the batch's previous files are left untouched.
        """
        import numpy as np
        import pyarrow.parquet as pq

        if not _BATCH_ID.match(batch_id):
            raise ParityError(
                f"bad batch id {batch_id!r}: use letters, digits, '_', '-' and '.' (up to 128 characters)"
            )
        schema = self.arrow_schema(source)
        ts_field = source.timestamp_field
        base = self.source_dir(source)
        writers: dict[int, tuple["pq.ParquetWriter", Path]] = {}
        try:
            for batch in batches:
                table = self.conform(source, batch)
                if table.num_rows == 0:
                    continue
                ts = table.column(ts_field).combine_chunks()
                days = np.floor_divide(ts.cast("int64").to_numpy(zero_copy_only=False), _US_PER_DAY)
                first, last = days.min(), days.max()
                if first == last:
                    groups = [(int(first), table)]
                else:
                    order = np.argsort(days, kind="stable")
                    sorted_days = days[order]
                    table = table.take(order)
                    cuts = np.flatnonzero(np.diff(sorted_days)) + 1
                    starts = np.concatenate(([0], cuts))
                    ends = np.concatenate((cuts, [len(sorted_days)]))
                    groups = [
                        (int(sorted_days[s]), table.slice(s, e - s)) for s, e in zip(starts, ends)
                    ]
                for day, part in groups:
                    if day not in writers:
                        folder = base / _partition_name(day)
                        folder.mkdir(parents=True, exist_ok=True)
                        tmp = folder / f".{batch_id}.{uuid.uuid4().hex}.tmp"
                        writers[day] = (_parquet_writer(tmp, schema), tmp)
                    writers[day][0].write_table(part)
        except BaseException:
            for writer, tmp in writers.values():
                try:
                    writer.close()
                finally:
                    tmp.unlink(missing_ok=True)
            raise
        written: list[Path] = []
        try:
            for writer, tmp in writers.values():
                writer.close()
                _fsync(tmp)
        except BaseException:
            for _, tmp in writers.values():
                tmp.unlink(missing_ok=True)
            raise
        for day, (_, tmp) in sorted(writers.items()):
            final = tmp.parent / f"{batch_id}.parquet"
            os.replace(tmp, final)
            _fsync_dir(tmp.parent)
            written.append(final)
        keep = set(written)
        for stale in base.glob(f"{PARTITION_PREFIX}*/{batch_id}.parquet"):
            if stale not in keep:
                stale.unlink(missing_ok=True)
        return written


def _partition_name(day: int) -> str:
    import datetime as dt

    return f"{PARTITION_PREFIX}{(dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()}"


def _parquet_writer(path: Path, schema: "pa.Schema"):
    import pyarrow.parquet as pq

    return pq.ParquetWriter(
        str(path),
        schema,
        compression="zstd",
        compression_level=1,
        # low-cardinality columns (event types, countries) stay dictionary-encoded; a column of
        # unique values (event ids) gives up early instead of building a 1 MiB dictionary first
        dictionary_pagesize_limit=64 << 10,
        coerce_timestamps="us",
        allow_truncated_timestamps=False,
    )


def _cast(column, target, source_name: str):
    import pyarrow as pa

    try:
        if pa.types.is_timestamp(column.type) and pa.types.is_timestamp(target.type):
            # zoned -> naive keeps the UTC instant; ns -> us truncates the sub-microsecond part
            return column.cast(target.type, safe=column.type.unit != "ns")
        return column.cast(target.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ParityError(
            f"offline log of source {source_name}: column {target.name} of type {column.type} "
            f"cannot be stored as {target.type}: {exc}",
            hint="cast the column to the source schema's type before writing",
        ) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# -- backfilled tile tables (written by the batch backfill, loaded by the online bootstrap) --

def tiles_view_dir(root: Path, view) -> Path:
    """``<tiles root>/<view>/v<version>``: a view version's backfilled tiles and ``_backfill.json``."""
    return Path(root) / view.name / f"v{view.version}"


def tiles_resolution_dir(root: Path, view, resolution: int) -> Path:
    """``.../res=<resolution>``: its tiles of one resolution, ``date=YYYY-MM-DD/*.parquet``."""
    from parity.registry.durations import format_duration

    return tiles_view_dir(root, view) / f"res={format_duration(resolution)}"

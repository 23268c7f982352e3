"""``parity land SOURCE FILE...``: validate files of events and land them in the offline log.

Each file (Parquet, JSON lines, or CSV with a header) is read by DuckDB and validated
row by row, vectorised in SQL:

- every schema column must be castable to its dtype. A present value that does not parse
  rejects the row (``column watch_ms: 'abc' is not int64``). Integers must be integral
  (``1.5`` is not an int64; ``1.0`` and ``1e3`` are). A column absent from the file is
  all null;
- the timestamp field must be present and not null (``missing timestamp ts``). It may be
  an ISO-8601 string (a ``Z`` or an offset is converted to UTC; no offset means UTC), a
  TIMESTAMP (taken as UTC) or a TIMESTAMPTZ. It is stored as naive UTC microseconds;
- each key column must be present and not null (``missing key user_id``);
- as for streamed events, ``ts`` may be at most the source's ``max_future`` (default 5m)
  ahead of ``_ingested_at`` (``ts more than 5m ahead of _ingested_at``);
- a JSON record with none of the schema's fields (``{}``, not an object, or a line that is
  not valid JSON) is rejected as a whole, with its line text in ``_raw``.

Columns of the file that are not in the schema are not landed (for CSV and Parquet, they
appear in the rejects file). If the file has an ``_ingested_at`` column it is used (nulls
fall back to ``now``), else every row gets ``now``. ``_applied_at``, ``_partition`` and ``_offset`` of the file,
if any, are ignored: landed rows get ``_applied_at`` null, ``_partition`` -1 and
``_offset`` from the source's landing sequence.

Good rows land through :meth:`OfflineLog.write_batches` as batch ``land-<hash>`` where the
hash is sha256 of the source name and of the file's sha256: the same bytes always give the
same batch id. Bad rows go to ``<offline_log root>/_rejects/<source>/<batch_id>.jsonl``,
one JSON object per row: the row's values (typed where they parsed, the original string
where they did not), ``_reason``, ``_file`` and ``_row``, the 1-based number of the record
in the file (the CSV header and blank JSON lines are not counted). Nothing is dropped:
landed + rejected == rows read.

Idempotence: after a file has landed, ``<source dir>/_landings/<batch_id>.json`` records
it (written last, atomically). Landing the same bytes again is skipped. A crash before the
manifest is written leaves at worst the batch's files, which the next landing of that file
replaces (same batch id).

Landing sequence: ``_offset`` = base + (row - 1), where ``[base, base + bound)`` is
reserved, under an ``fcntl`` lock on ``_landings/sequence.lock``, from the counter in
``_landings/sequence.json`` before the file is read. ``bound`` is an upper bound of the
file's row count taken for free while hashing (Parquet: its row count; JSON lines and
CSV: newlines + 1; a JSON array: its size in bytes). Concurrent landings therefore get
disjoint offset ranges, and a later landing always has greater offsets. Offsets of rejected
rows (and of a crashed landing) are simply unused.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from parity.batch.offline_log import LANDED_PARTITION, OfflineLog, sql_ident, sql_string
from parity.errors import ParityError
from parity.registry.durations import parse_duration
from parity.registry.models import Definitions, Source
from parity.registry.types import DUCKDB_TYPES, INTEGER_TYPES

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
LANDINGS_DIR = "_landings"
BATCH_ROWS = 500_000
_CHUNK = 8 << 20
_RAW_PREVIEW = 80
_INGESTED = "_ingested_at"
_NO_FIELD = "undecodable or empty JSON record"

_INT_SOURCES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                "UINTEGER", "UBIGINT", "UHUGEINT", "BOOLEAN")
_FRACTIONAL_SOURCES = ("FLOAT", "DOUBLE", "DECIMAL")
_TIME_SOURCES = ("TIMESTAMP", "DATE")  # TIMESTAMP, TIMESTAMP_S/MS/NS, TIMESTAMP WITH TIME ZONE, DATE


@dataclass
class LandingSummary:
    """What one ``land_files`` call did.

    ``reasons`` counts problems by kind (``column watch_ms: not int64``, ``missing key
    user_id``, ...); a row with two problems counts under both. ``rejects_path`` is the
    rejects file when one file had rejects, their folder when several did, else None.
    """

    source: str
    files: int = 0
    skipped_files: int = 0
    landed_rows: int = 0
    rejected_rows: int = 0
    rejects_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    read_rows: int = 0
    batch_ids: list[str] = field(default_factory=list)
    rejects_files: list[Path] = field(default_factory=list)


def source_key_columns(defs: Definitions, source_name: str) -> list[str]:
    """The source columns that carry an entity key in some view reading ``source_name``."""
    keys: list[str] = []
    for view in defs.feature_views:
        if view.source != source_name:
            continue
        entity = defs.entity(view.entity)
        for join_key in entity.join_keys if entity else ():
            column = view.source_column_of(join_key)
            if column not in keys:
                keys.append(column)
    return keys


def batch_id_for(source: Source, file_sha256: str) -> str:
    """The batch id of a file landed into ``source``: same source + same bytes, same id."""
    digest = hashlib.sha256(f"{source.name}\0{file_sha256}".encode()).hexdigest()
    return f"land-{digest[:32]}"


def land_files(
    log: OfflineLog,
    source: Source,
    files: Sequence[str | Path],
    *,
    key_columns: Sequence[str],
    progress: bool = False,
    now: dt.datetime | None = None,
) -> LandingSummary:
    """Validate ``files`` against ``source``'s schema and land their good rows in ``log``."""
    if source.kind != "stream":
        raise ParityError(
            f"source {source.name} is a snapshot: it is read from its snapshot.path, not landed",
            hint=f"copy the Parquet file(s) to {source.snapshot.path if source.snapshot else 'its snapshot.path'}",
        )
    unknown = [k for k in key_columns if k not in source.schema_]
    if unknown:
        raise ParityError(f"source {source.name} has no column {', '.join(unknown)} (key columns)")
    if source.timestamp_field not in source.schema_:
        raise ParityError(f"source {source.name}: timestamp field {source.timestamp_field} is not in the schema")
    paths = [Path(f) for f in files]
    for path in paths:
        _format_of(path)
        if not path.is_file():
            raise ParityError(f"{path}: no such file")
    now = _utc_naive(now or dt.datetime.now(dt.timezone.utc))

    import duckdb

    summary = LandingSummary(source=source.name, files=len(paths))
    reasons: Counter[str] = Counter()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = true")  # row numbers and offsets follow file order
        for path in paths:
            _land_one(con, log, source, path, list(key_columns), now, progress, summary, reasons)
    finally:
        con.close()
    summary.reasons = dict(sorted(reasons.items()))
    if len(summary.rejects_files) == 1:
        summary.rejects_path = summary.rejects_files[0]
    elif summary.rejects_files:
        summary.rejects_path = log.rejects_dir(source)
    return summary


# -- one file ------------------------------------------------------------------------------


def _land_one(con, log: OfflineLog, source: Source, path: Path, keys: list[str], now: dt.datetime,
              progress: bool, summary: LandingSummary, reasons: Counter) -> None:
    fmt = _format_of(path)
    sha, newlines, size = _hash_file(path)
    batch_id = batch_id_for(source, sha)
    landings = log.source_dir(source) / LANDINGS_DIR
    manifest = landings / f"{batch_id}.json"
    (landings / "locks").mkdir(parents=True, exist_ok=True)
    with _locked(landings / "locks" / f"{batch_id}.lock"):
        if manifest.exists():
            summary.skipped_files += 1
            return
        if fmt == "json":
            fmt = "json_array" if _first_byte(path) == b"[" else "jsonl"
        if fmt == "parquet":
            bound = _parquet_rows(con, path)
        elif fmt == "json_array":
            bound = size
        else:
            bound = newlines + 1
        base = _reserve_offsets(log, source, landings, bound)
        landing = _FileLanding(con, log, source, path, fmt, keys, now, base, bound, batch_id)
        try:
            written = log.write_batches(source, landing.good_batches(progress), batch_id=batch_id)
            rejects = landing.finish_rejects()
        except BaseException:
            landing.abort_rejects()
            raise
        record = {
            "batch_id": batch_id,
            "source": source.name,
            "file": str(path.resolve()),
            "sha256": sha,
            "format": fmt,
            "read_rows": landing.read_rows,
            "landed_rows": landing.landed_rows,
            "rejected_rows": landing.rejected_rows,
            "offsets": [base, base + bound],
            "ingested_at": now.isoformat() + "Z",
            "files": [str(p.relative_to(log.root)) for p in written],
            "rejects": str(rejects) if rejects else None,
            "landed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        _atomic_write(manifest, json.dumps(record, indent=2).encode())
    summary.batch_ids.append(batch_id)
    summary.read_rows += landing.read_rows
    summary.landed_rows += landing.landed_rows
    summary.rejected_rows += landing.rejected_rows
    reasons.update(landing.reasons)
    if rejects:
        summary.rejects_files.append(rejects)


class _FileLanding:
    """Reads one file through DuckDB, yields its good rows, writes its bad rows."""

    def __init__(self, con, log: OfflineLog, source: Source, path: Path, fmt: str, keys: list[str],
                 now: dt.datetime, base: int, bound: int, batch_id: str) -> None:
        self.con, self.log, self.source, self.path, self.fmt = con, log, source, path, fmt
        self.keys, self.now, self.base, self.bound, self.batch_id = keys, now, base, bound, batch_id
        self.read_rows = self.landed_rows = self.rejected_rows = 0
        self.reasons: Counter[str] = Counter()
        self.rejects_final = log.rejects_dir(source) / f"{batch_id}.jsonl"
        self.rejects_tmp: Path | None = None
        self._rejects_fh: IO[str] | None = None
        self._lines: _LineCursor | None = None
        self.sql, self.extras = self._build_sql()

    # SQL ---------------------------------------------------------------------------------

    def _reader(self) -> str:
        path = sql_string(self.path)
        if self.fmt == "parquet":
            return f"read_parquet({path})"
        if self.fmt == "csv":
            return f"read_csv({path}, header = true, all_varchar = true)"
        names = list(self.source.schema_) + ([_INGESTED] if _INGESTED not in self.source.schema_ else [])
        columns = "{" + ", ".join(f"{sql_string(n)}: 'VARCHAR'" for n in names) + "}"
        form = "array" if self.fmt == "json_array" else "newline_delimited"
        return f"read_json({path}, format = '{form}', columns = {columns}, ignore_errors = true)"

    def _file_columns(self) -> dict[str, str]:
        import duckdb

        try:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM {self._reader()}").fetchall()
        except duckdb.Error as exc:  # the file is not readable as its format
            raise _read_error(self.path, self.fmt, exc) from None
        return {name: typ for name, typ, *_ in rows}

    def _build_sql(self) -> tuple[str, list[str]]:
        have = self._file_columns()
        schema = dict(self.source.schema_)
        checked = list(schema.items())
        if _INGESTED not in schema and _INGESTED in have:
            checked.append((_INGESTED, "timestamp"))
        extras = [n for n in have if n not in schema and n != _INGESTED]
        inner, level2, reason_parts, problem_parts = [], [], [], []
        for i, (name, dtype) in enumerate(checked):
            src_type = have.get(name)
            if src_type is None:
                inner.append(f"CAST(NULL AS {DUCKDB_TYPES[dtype]}) AS __v{i}, TRUE AS __ok{i}, NULL AS __r{i}")
                continue
            value, ok = _convert(sql_ident(name), src_type, dtype)
            inner.append(f"{value} AS __v{i}, {ok} AS __ok{i}, {sql_ident(name)} AS __r{i}")
            preview = f"left(CAST(__r{i} AS VARCHAR), {_RAW_PREVIEW})"
            bad = f"__r{i} IS NOT NULL AND NOT coalesce(__ok{i}, FALSE)"
            reason_parts.append(
                f"CASE WHEN {bad} THEN 'column {name}: ''' || {preview} || ''' is not {dtype}' END"
            )
            problem_parts.append(f"CASE WHEN {bad} THEN 'column {name}: not {dtype}' END")
        index = {name: i for i, (name, _) in enumerate(checked)}
        required = [(self.source.timestamp_field, "missing timestamp")] + [(k, "missing key") for k in self.keys]
        for name, label in required:
            i = index[name]
            reason_parts.append(f"CASE WHEN __r{i} IS NULL THEN '{label} {name}' END")
            problem_parts.append(f"CASE WHEN __r{i} IS NULL THEN '{label} {name}' END")
        # the streaming contract's rule: ts at most max_future ahead of _ingested_at
        now = f"TIMESTAMP '{self.now.isoformat(sep=' ')}'"
        ingested = f"coalesce(__v{index[_INGESTED]}, {now})" if _INGESTED in index else now
        ts = f"__v{index[self.source.timestamp_field]}"
        ahead = f"{ts} > {ingested} + to_microseconds({parse_duration(self.source.max_future)})"
        label = f"ts more than {self.source.max_future} ahead of _ingested_at"
        reason_parts.append(f"CASE WHEN {ahead} THEN '{label}' END")
        problem_parts.append(f"CASE WHEN {ahead} THEN '{label}' END")
        raws_present = [f"__r{index[n]}" for n, _ in checked if n in have]
        inner += [f"{sql_ident(n)} AS __x{j}" for j, n in enumerate(extras)]
        reason = f"concat_ws('; ', {', '.join(reason_parts)})"
        problems = f"concat_ws('|', {', '.join(problem_parts)})"
        if self.fmt in ("jsonl", "json_array"):
            no_field = (" AND ".join(f"{r} IS NULL" for r in raws_present)) if raws_present else "TRUE"
            no_field_msg = "record has none of the schema fields (empty, not a JSON object, or not valid JSON)"
            reason = f"CASE WHEN {no_field} THEN '{no_field_msg}' ELSE {reason} END"
            problems = f"CASE WHEN {no_field} THEN '{_NO_FIELD}' ELSE {problems} END"
        for i, (name, _) in enumerate(checked):
            level2.append(f"__v{i}, __ok{i}")
        level2 += [f"__r{i}" for i in range(len(checked))] + [f"__x{j}" for j in range(len(extras))]
        outer = []
        for i, (name, _) in enumerate(checked):
            if name == _INGESTED:
                continue
            outer.append(f"__v{i} AS {sql_ident(name)}")
        outer.append(f"{ingested} AS _ingested_at")
        outer += ["_reason", "_problems"]
        for i, (name, _) in enumerate(checked):
            if name in have:
                outer.append(f"CASE WHEN _reason IS NOT NULL THEN CAST(__r{i} AS VARCHAR) END AS __raw{i}")
                outer.append(f"CASE WHEN _reason IS NOT NULL THEN coalesce(__ok{i}, FALSE) END AS __okout{i}")
        for j, _ in enumerate(extras):
            outer.append(f"CASE WHEN _reason IS NOT NULL THEN CAST(__x{j} AS VARCHAR) END AS __extra{j}")
        sql = (
            f"SELECT {', '.join(outer)} FROM ("
            f"SELECT {', '.join(level2)}, NULLIF({reason}, '') AS _reason, NULLIF({problems}, '') AS _problems "
            f"FROM (SELECT {', '.join(inner)} FROM {self._reader()}))"
        )
        self.checked = checked
        self.have = have
        return sql, extras

    # rows --------------------------------------------------------------------------------

    def good_batches(self, progress: bool) -> Iterator["pa.RecordBatch"]:
        import duckdb
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        from tqdm import tqdm

        schema = self.log.arrow_schema(self.source)
        names = list(self.source.schema_) + ["_ingested_at"]
        bar = tqdm(total=self.bound, unit="row", unit_scale=True, desc=self.path.name,
                   file=sys.stderr, disable=not progress, leave=True)
        try:
            try:
                reader = self.con.sql(self.sql).to_arrow_reader(BATCH_ROWS)
                batches = iter(reader)
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    n = batch.num_rows
                    if n == 0:
                        continue
                    first = self.read_rows
                    self.read_rows += n
                    bar.update(n)
                    if self.read_rows > self.bound:
                        raise ParityError(f"{self.path}: more rows than the bound {self.bound} (internal error)")
                    reason = batch.column("_reason")
                    offsets = pa.array(np.arange(self.base + first, self.base + first + n, dtype=np.int64))
                    if reason.null_count == n:
                        good, good_offsets = batch, offsets
                    else:
                        bad_mask = pc.is_valid(reason)
                        self._write_rejects(batch.filter(bad_mask), first, np.flatnonzero(
                            bad_mask.to_numpy(zero_copy_only=False)))
                        good_mask = pc.invert(bad_mask)
                        good = batch.filter(good_mask)
                        good_offsets = offsets.filter(good_mask)
                    if good.num_rows == 0:
                        continue
                    self.landed_rows += good.num_rows
                    arrays = [good.column(name) for name in names]
                    arrays += [
                        pa.nulls(good.num_rows, pa.timestamp("us")),
                        pa.array(np.full(good.num_rows, LANDED_PARTITION, dtype=np.int32)),
                        good_offsets,
                    ]
                    yield pa.RecordBatch.from_arrays(arrays, names=schema.names)
            except duckdb.Error as exc:
                raise _read_error(self.path, self.fmt, exc) from None
        except BaseException:
            self.abort_rejects()
            raise
        else:
            bar.total = self.read_rows
            bar.refresh()
        finally:
            bar.close()

    def _write_rejects(self, bad: "pa.RecordBatch", first: int, positions) -> None:
        if self._rejects_fh is None:
            self.rejects_final.parent.mkdir(parents=True, exist_ok=True)
            self.rejects_tmp = self.rejects_final.parent / f".{self.batch_id}.{uuid.uuid4().hex}.tmp"
            self._rejects_fh = open(self.rejects_tmp, "w", encoding="utf-8")
        values = {name: bad.column(name).to_pylist() for name in bad.schema.names}
        file_name = str(self.path)
        out = self._rejects_fh
        assert out is not None
        records: list[dict[str, Any]] = []
        no_field: dict[int, dict[str, Any]] = {}
        for k, position in enumerate(positions):
            row_number = first + int(position) + 1
            record: dict[str, Any] = {}
            for i, (name, dtype) in enumerate(self.checked):
                if name not in self.have:
                    continue
                raw = values[f"__raw{i}"][k]
                if name == _INGESTED and raw is None:
                    continue
                if raw is not None and name != _INGESTED and values[f"__okout{i}"][k]:
                    record[name] = _json_value(values[name][k])  # parsed: the typed value
                else:
                    record[name] = raw  # null, or the original text that did not parse
            for j, name in enumerate(self.extras):
                record[name] = values[f"__extra{j}"][k]
            record["_reason"] = values["_reason"][k]
            record["_file"] = file_name
            record["_row"] = row_number
            problems = values["_problems"][k] or ""
            self.reasons.update(problems.split("|"))
            if problems == _NO_FIELD:
                no_field[row_number] = record
            records.append(record)
        if no_field:
            if self._lines is None:
                self._lines = _LineCursor(self.path)
            lines = self._lines.take(sorted(no_field)) if self.fmt == "jsonl" else {}
            for row_number, record in no_field.items():
                record["_raw"] = lines.get(row_number)
        out.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        self.rejected_rows += len(positions)

    def finish_rejects(self) -> Path | None:
        if self._lines is not None:
            self._lines.close()
        if self._rejects_fh is None:
            self.rejects_final.unlink(missing_ok=True)
            return None
        self._rejects_fh.flush()
        os.fsync(self._rejects_fh.fileno())
        self._rejects_fh.close()
        self._rejects_fh = None
        assert self.rejects_tmp is not None
        os.replace(self.rejects_tmp, self.rejects_final)
        return self.rejects_final

    def abort_rejects(self) -> None:
        if self._lines is not None:
            self._lines.close()
        if self._rejects_fh is not None:
            self._rejects_fh.close()
            self._rejects_fh = None
        if self.rejects_tmp is not None:
            self.rejects_tmp.unlink(missing_ok=True)


def _convert(col: str, src_type: str, dtype: str) -> tuple[str, str]:
    """(value expression, acceptance expression) casting ``col`` of DuckDB type ``src_type`` to ``dtype``.

    The acceptance expression is only consulted when the value is present (not null).
    """
    target = DUCKDB_TYPES[dtype]
    src = src_type.upper()
    as_text = col if src == "VARCHAR" else f"CAST({col} AS VARCHAR)"
    if src == target:
        return col, "TRUE"
    if dtype == "string":
        return as_text, "TRUE"
    if dtype == "timestamp":
        if src.startswith(_TIME_SOURCES):
            value = f"CAST({col} AS TIMESTAMP)"
        else:
            value = f"CAST(TRY_CAST({as_text} AS TIMESTAMPTZ) AS TIMESTAMP)"
        return value, f"isfinite({value})"
    if dtype in INTEGER_TYPES:
        if src.startswith(_INT_SOURCES):
            value = f"TRY_CAST({col} AS {target})"
            return value, f"{value} IS NOT NULL"
        if src.startswith(_FRACTIONAL_SOURCES):
            value = f"TRY_CAST({col} AS {target})"
            return value, f"{value} IS NOT NULL AND {col} = {value}"
        value = f"TRY_CAST({as_text} AS {target})"
        return value, f"{value} IS NOT NULL AND TRY_CAST({as_text} AS DOUBLE) = {value}"
    # float32, float64, bool
    if src.startswith(_INT_SOURCES + _FRACTIONAL_SOURCES) or src == "VARCHAR":
        value = f"TRY_CAST({col} AS {target})"
    else:
        value = f"TRY_CAST({as_text} AS {target})"
    return value, f"{value} IS NOT NULL"


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# -- files, locks, state --------------------------------------------------------------------


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ParityError(
            f"{path}: unknown file format {path.suffix or '(no extension)'!r}",
            hint="land Parquet (.parquet), JSON lines (.jsonl, .ndjson, .json) or CSV with a header (.csv)",
        )
    return fmt


def _read_error(path: Path, fmt: str, exc: Exception) -> ParityError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kind = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSON lines", "json_array": "a JSON array"}.get(fmt, fmt)
    return ParityError(
        f"{path}: cannot be read as {kind}: {first}",
        hint="fix the file (nothing was landed from it) and land it again",
    )


def _hash_file(path: Path) -> tuple[str, int, int]:
    """sha256 hex digest, number of line breaks (``\\n`` or a lone ``\\r``) and size of a file, in one pass."""
    digest = hashlib.sha256()
    lf = cr = size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            lf += chunk.count(b"\n")
            cr += chunk.count(b"\r")
            size += len(chunk)
    return digest.hexdigest(), max(lf, cr), size


def _parquet_rows(con, path: Path) -> int:
    import duckdb

    try:
        [(rows,)] = con.execute(f"SELECT count(*) FROM read_parquet({sql_string(path)})").fetchall()
    except duckdb.Error as exc:
        raise _read_error(path, "parquet", exc) from None
    return int(rows)


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        while chunk := fh.read(4096):
            stripped = chunk.lstrip()
            if stripped.startswith(b"\xef\xbb\xbf"):
                stripped = stripped[3:].lstrip()
            if stripped:
                return stripped[:1]
    return b""


class _LineCursor:
    """Reads the text of given records (1-based; blank lines not counted) of a JSON-lines file.

    Calls must ask for increasing record numbers: the file is read once, front to back.
    """

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")
        self._number = 0

    def take(self, wanted: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        pending = iter(wanted)
        target = next(pending, None)
        while target is not None:
            line = self._fh.readline()
            if not line:
                break
            if not line.strip():
                continue
            self._number += 1
            if self._number == target:
                found[target] = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
                target = next(pending, None)
        return found

    def close(self) -> None:
        self._fh.close()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _reserve_offsets(log: OfflineLog, source: Source, landings: Path, count: int) -> int:
    """Reserve ``count`` landing offsets of ``source``; returns the first one."""
    state = landings / "sequence.json"
    with _locked(landings / "sequence.lock"):
        if state.exists():
            next_offset = int(json.loads(state.read_text(encoding="utf-8"))["next_offset"])
        else:
            next_offset = _recover_next_offset(log, source)
        _atomic_write(state, json.dumps({"next_offset": next_offset + count}).encode())
    return next_offset


def _recover_next_offset(log: OfflineLog, source: Source) -> int:
    """1 + the greatest landed offset in the log (0 for a fresh source), when the state is lost."""
    if not log.files(source):
        return 0
    import duckdb

    with duckdb.connect() as con:
        [(top,)] = con.execute(
            f"SELECT max(_offset) FROM {log.scan_sql(source)} WHERE _partition = {LANDED_PARTITION}"
        ).fetchall()
    return 0 if top is None else int(top) + 1


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value

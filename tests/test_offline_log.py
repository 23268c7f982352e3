"""The offline event log writer (parity.batch.offline_log): layout, types, idempotent batches.

Real files, read back with real DuckDB through ``OfflineLog.scan_sql``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parity.batch.offline_log import META_COLUMNS, OfflineLog, snapshot_scan_sql
from parity.errors import ParityError
from parity.registry.models import Source

SOURCE = Source.model_validate(
    {
        "name": "clicks",
        "schema": {"user_id": "int64", "item": "string", "score": "float64", "n": "int32",
                   "ok": "bool", "ts": "timestamp"},
        "timestamp_field": "ts",
        "offline_log": {"path": "click_log"},
    }
)
T0 = dt.datetime(2026, 1, 1, 23, 59, 59, 999999)
T1 = dt.datetime(2026, 1, 2, 0, 0, 0)
T2 = dt.datetime(2026, 1, 5, 12, 30, 0, 123456)


def rows_table(rows: list[tuple], *, partition: int = 3, first_offset: int = 100) -> pa.Table:
    """A table in arrow_schema order from (user_id, item, score, n, ok, ts) tuples."""
    cols = list(zip(*rows)) if rows else [[]] * 6
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array(cols[0], pa.int64()),
            "item": pa.array(cols[1], pa.string()),
            "score": pa.array(cols[2], pa.float64()),
            "n": pa.array(cols[3], pa.int32()),
            "ok": pa.array(cols[4], pa.bool_()),
            "ts": pa.array(cols[5], pa.timestamp("us")),
            "_ingested_at": pa.array([T2 + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us")),
            "_applied_at": pa.array([None if i % 2 else T2 for i in range(n)], pa.timestamp("us")),
            "_partition": pa.array([partition] * n, pa.int32()),
            "_offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
        }
    )


ROWS = [
    (1, "a", 0.5, 1, True, T0),
    (2, None, None, None, None, T1),
    (1, "it's", 1e-9, -3, False, T2),
    (3, "c", 2.25, 7, True, T1),
]


def read_all(log: OfflineLog, source: Source = SOURCE) -> list[tuple]:
    return duckdb.sql(f"SELECT * FROM {log.scan_sql(source)} ORDER BY _partition, _offset").fetchall()


def expected(rows: list[tuple], *, partition: int = 3, first_offset: int = 100) -> list[tuple]:
    return [
        (*row, T2 + dt.timedelta(seconds=i), None if i % 2 else T2, partition, first_offset + i)
        for i, row in enumerate(rows)
    ]


def test_arrow_schema_is_source_columns_then_meta_columns():
    schema = OfflineLog("/nowhere").arrow_schema(SOURCE)
    assert schema.names == [*SOURCE.schema_, *META_COLUMNS]
    assert META_COLUMNS == ("_ingested_at", "_applied_at", "_partition", "_offset")
    types = {f.name: f.type for f in schema}
    assert types["user_id"] == pa.int64() and types["n"] == pa.int32() and types["ok"] == pa.bool_()
    assert types["item"] == pa.string() and types["score"] == pa.float64()
    assert types["ts"] == pa.timestamp("us") and types["ts"].tz is None
    assert types["_ingested_at"] == pa.timestamp("us") and types["_applied_at"] == pa.timestamp("us")
    assert types["_partition"] == pa.int32() and types["_offset"] == pa.int64()
    nullable = {f.name: f.nullable for f in schema}
    assert nullable["_applied_at"] and nullable["item"]
    assert not nullable["_ingested_at"] and not nullable["_partition"] and not nullable["_offset"]


def test_round_trip_partitions_by_utc_date_and_reads_back_the_same_rows_and_types(tmp_path):
    log = OfflineLog(tmp_path / "log")
    written = log.write(SOURCE, rows_table(ROWS), batch_id="b1")
    base = tmp_path / "log" / "click_log"
    assert log.source_dir(SOURCE) == base
    assert written == [base / "date=2026-01-01" / "b1.parquet", base / "date=2026-01-02" / "b1.parquet",
                       base / "date=2026-01-05" / "b1.parquet"]
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) == [
        "date=2026-01-01/b1.parquet", "date=2026-01-02/b1.parquet", "date=2026-01-05/b1.parquet"]
    # the date lives in the path only; the files carry exactly the schema's columns
    assert pq.read_schema(written[1]).names == log.arrow_schema(SOURCE).names
    assert pq.read_table(written[1]).num_rows == 2
    assert read_all(log) == expected(ROWS)
    described = duckdb.sql(f"DESCRIBE SELECT * FROM {log.scan_sql(SOURCE)}").fetchall()
    assert [(name, typ) for name, typ, *_ in described] == [
        ("user_id", "BIGINT"), ("item", "VARCHAR"), ("score", "DOUBLE"), ("n", "INTEGER"),
        ("ok", "BOOLEAN"), ("ts", "TIMESTAMP"), ("_ingested_at", "TIMESTAMP"),
        ("_applied_at", "TIMESTAMP"), ("_partition", "INTEGER"), ("_offset", "BIGINT")]
    assert log.batch_ids(SOURCE) == {"b1"}


def test_rewriting_a_batch_replaces_it_and_drops_its_dates_no_longer_present(tmp_path):
    log = OfflineLog(tmp_path)
    log.write(SOURCE, rows_table(ROWS), batch_id="b1")
    log.write(SOURCE, rows_table(ROWS[:1], partition=5, first_offset=0), batch_id="other")
    new_rows = [(9, "z", 1.0, 1, True, T1), (8, "y", 2.0, 2, False, T1)]
    assert log.write(SOURCE, rows_table(new_rows), batch_id="b1") == [
        tmp_path / "click_log" / "date=2026-01-02" / "b1.parquet"]
    assert not (tmp_path / "click_log" / "date=2026-01-01" / "b1.parquet").exists()
    assert not (tmp_path / "click_log" / "date=2026-01-05" / "b1.parquet").exists()
    assert read_all(log) == expected(new_rows) + expected(ROWS[:1], partition=5, first_offset=0)
    assert log.batch_ids(SOURCE) == {"b1", "other"}
    # the same content again: still one copy
    log.write(SOURCE, rows_table(new_rows), batch_id="b1")
    assert len(read_all(log)) == 3
    # an empty batch removes the batch
    assert log.write(SOURCE, rows_table([]), batch_id="b1") == []
    assert log.batch_ids(SOURCE) == {"other"}
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_empty_log_scans_as_an_empty_typed_relation(tmp_path):
    log = OfflineLog(tmp_path / "does-not-exist-yet")
    rel = duckdb.sql(f"SELECT * FROM {log.scan_sql(SOURCE)}")
    assert rel.fetchall() == []
    assert rel.columns == [*SOURCE.schema_, *META_COLUMNS]
    assert [str(t) for t in rel.types] == ["BIGINT", "VARCHAR", "DOUBLE", "INTEGER", "BOOLEAN",
                                          "TIMESTAMP", "TIMESTAMP", "TIMESTAMP", "INTEGER", "BIGINT"]
    assert log.batch_ids(SOURCE) == set()
    # and a source without offline_log.path lives under its own name
    plain = SOURCE.model_copy(update={"offline_log": None})
    assert log.source_dir(plain) == tmp_path / "does-not-exist-yet" / "clicks"


def test_paths_with_quotes_are_escaped_in_sql(tmp_path):
    log = OfflineLog(tmp_path / "it's a 'log'")
    log.write(SOURCE, rows_table(ROWS), batch_id="b1")
    assert "it''s a ''log''" in log.scan_sql(SOURCE)
    assert read_all(log) == expected(ROWS)


def test_compatible_types_are_cast_and_zoned_timestamps_become_utc(tmp_path):
    log = OfflineLog(tmp_path)
    table = rows_table(ROWS[:1])
    paris = dt.timezone(dt.timedelta(hours=1))
    zoned = pa.array([dt.datetime(2026, 1, 2, 0, 30, tzinfo=paris)], pa.timestamp("us", tz="Europe/Paris"))
    table = table.set_column(table.schema.get_field_index("ts"), "ts", zoned)
    table = table.set_column(0, "user_id", pa.array([1], pa.int32()))
    table = table.set_column(table.schema.get_field_index("_offset"), "_offset", pa.array([7], pa.int32()))
    # columns in another order are fine too
    table = table.select(list(reversed(table.column_names)))
    [path] = log.write(SOURCE, table, batch_id="cast")
    assert path.parent.name == "date=2026-01-01"  # 00:30+01:00 is 23:30 UTC the day before
    [row] = read_all(log)
    assert row[0] == 1 and row[5] == dt.datetime(2026, 1, 1, 23, 30) and row[-1] == 7


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.set_column(0, "user_id", pa.array(["x"])), "column user_id"),
        (lambda t: t.set_column(2, "score", pa.array(["nope"])), "column score"),
        (lambda t: t.set_column(3, "n", pa.array([2**40], pa.int64())), "column n"),
        (lambda t: t.drop_columns(["item"]), "missing column(s) item"),
        (lambda t: t.append_column("date", pa.array(["2026-01-01"])), "unexpected column(s) date"),
        (lambda t: t.set_column(5, "ts", pa.array([None], pa.timestamp("us"))), "column ts has 1 null"),
        (lambda t: t.set_column(6, "_ingested_at", pa.array([None], pa.timestamp("us"))),
         "column _ingested_at has 1 null"),
    ],
)
def test_incompatible_tables_are_refused_naming_the_column(tmp_path, change, message):
    log = OfflineLog(tmp_path)
    log.write(SOURCE, rows_table(ROWS), batch_id="b1")
    with pytest.raises(ParityError, match=message.replace("(", r"\(").replace(")", r"\)")):
        log.write(SOURCE, change(rows_table(ROWS[:1])), batch_id="b1")
    # the batch's previous files are untouched and no temporary file is left
    assert read_all(log) == expected(ROWS)
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_a_failure_midway_leaves_the_previous_batch_intact(tmp_path):
    log = OfflineLog(tmp_path)
    log.write(SOURCE, rows_table(ROWS), batch_id="b1")

    def batches():
        yield rows_table([(5, "new", 1.0, 1, True, T0)]).to_batches()[0]
        raise RuntimeError("crash while producing the batch")

    with pytest.raises(RuntimeError):
        log.write_batches(SOURCE, batches(), batch_id="b1")
    assert read_all(log) == expected(ROWS)
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_write_batches_streams_many_batches_into_one_file_per_date(tmp_path):
    log = OfflineLog(tmp_path)
    parts = [rows_table(ROWS, first_offset=10 * i) for i in range(5)]
    written = log.write_batches(SOURCE, (p.to_batches()[0] for p in parts), batch_id="many")
    assert [p.parent.name for p in written] == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-05"]
    assert len(read_all(log)) == 20
    assert duckdb.sql(f"SELECT count(DISTINCT _offset) FROM {log.scan_sql(SOURCE)}").fetchall() == [(20,)]


def test_bad_batch_ids_are_refused(tmp_path):
    with pytest.raises(ParityError, match="bad batch id"):
        OfflineLog(tmp_path).write(SOURCE, rows_table(ROWS), batch_id="../escape")


def test_snapshot_sources_read_their_snapshot_glob(tmp_path):
    profile = Source.model_validate(
        {"name": "profile", "kind": "snapshot", "schema": {"user_id": "int64", "country": "string",
                                                          "updated_at": "timestamp"},
         "timestamp_field": "updated_at", "snapshot": {"path": "data/profile/*.parquet"}}
    )
    log = OfflineLog(tmp_path / "data" / "offline_log", project_root=tmp_path)
    with pytest.raises(ParityError, match="no snapshot file matches"):
        log.scan_sql(profile)
    (tmp_path / "data" / "profile").mkdir(parents=True)
    pq.write_table(pa.table({"country": ["fr", "de"], "user_id": pa.array([1, 2], pa.int32()),
                             "updated_at": pa.array([T0, T1], pa.timestamp("ms"))}),
                   tmp_path / "data" / "profile" / "part-0.parquet")
    rel = duckdb.sql(f"SELECT * FROM {log.scan_sql(profile)} ORDER BY user_id")
    assert rel.columns == ["user_id", "country", "updated_at"]
    assert [str(t) for t in rel.types] == ["BIGINT", "VARCHAR", "TIMESTAMP"]
    assert rel.fetchall() == [(1, "fr", dt.datetime(2026, 1, 1, 23, 59, 59, 999000)), (2, "de", T1)]
    assert snapshot_scan_sql(profile, tmp_path) == log.scan_sql(profile)


def test_importing_the_writer_and_the_landing_imports_no_engine():
    code = ("import sys, parity.batch, parity.batch.offline_log, parity.batch.land; "
            "print([m for m in ('duckdb', 'pyarrow', 'numpy', 'tqdm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

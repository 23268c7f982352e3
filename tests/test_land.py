"""``parity land``'s library function (parity.batch.land): validation, rejects, idempotence, offsets.

Real files (JSON lines, CSV, Parquet), real DuckDB, real processes. The source is the
example project's ``video_events``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from defs_fixtures import ROOT
from parity.batch.land import LANDINGS_DIR, batch_id_for, land_files, source_key_columns
from parity.batch.offline_log import OfflineLog
from parity.errors import ParityError
from parity.registry.loader import load_definitions

DEFS = load_definitions(ROOT / "feature_defs").definitions
SOURCE = DEFS.source("video_events")
KEYS = source_key_columns(DEFS, "video_events")
COLUMNS = list(SOURCE.schema_)  # event_id user_id video_id creator_id event_type watch_ms completion ts
NOW = dt.datetime(2026, 2, 1, 12, 0, 0, 250000)

# (row values as the producer wrote them, reason or None). A missing key is None here:
# absent from the JSON object, an empty CSV field, a null in Parquet.
ROWS: list[tuple[dict, str | None]] = [
    ({"event_id": "e1", "user_id": "1", "video_id": "10", "creator_id": "100", "event_type": "play",
      "watch_ms": "1000", "completion": "0.5", "ts": "2026-01-01T10:00:00Z"}, None),
    ({"event_id": "e2", "user_id": "2", "video_id": "10", "creator_id": "100", "event_type": "play",
      "watch_ms": "abc", "completion": "0.1", "ts": "2026-01-01T10:00:01Z"},
     "column watch_ms: 'abc' is not int64"),
    ({"event_id": "e3", "user_id": "3", "video_id": "11", "creator_id": "100", "event_type": "skip",
      "watch_ms": "7", "completion": "0.0", "ts": "yesterday"},
     "column ts: 'yesterday' is not timestamp"),
    ({"event_id": "e4", "user_id": None, "video_id": "11", "creator_id": "100", "event_type": "like",
      "watch_ms": None, "completion": None, "ts": "2026-01-01T11:00:00Z"}, "missing key user_id"),
    ({"event_id": "e5", "user_id": "5", "video_id": "12", "creator_id": "101", "event_type": "play",
      "watch_ms": "20", "completion": "1", "ts": None}, "missing timestamp ts"),
    # null non-key columns are fine; an offset is converted to UTC (crosses midnight)
    ({"event_id": "e6", "user_id": "6", "video_id": "12", "creator_id": None, "event_type": "share",
      "watch_ms": None, "completion": None, "ts": "2026-01-01T23:30:00-02:00"}, None),
    ({"event_id": "e7", "user_id": "x", "video_id": "13", "creator_id": "101", "event_type": "play",
      "watch_ms": "1.5", "completion": "0.2", "ts": "2026-01-02 08:00:00.123456"},
     "column user_id: 'x' is not int64; column watch_ms: '1.5' is not int64"),
    # no zone means UTC; microseconds are kept; 2.0 is an integral int64
    ({"event_id": "e8", "user_id": "8", "video_id": "13", "creator_id": "101", "event_type": "play",
      "watch_ms": "2.0", "completion": "1e-1", "ts": "2026-01-02 08:00:00.123456"}, None),
    ({"event_id": "e9", "user_id": "9", "video_id": None, "creator_id": "101", "event_type": "play",
      "watch_ms": "5", "completion": "0.3", "ts": None}, "missing timestamp ts; missing key video_id"),
]
GOOD = [
    ("e1", 1, 10, 100, "play", 1000, 0.5, dt.datetime(2026, 1, 1, 10, 0, 0)),
    ("e6", 6, 12, None, "share", None, None, dt.datetime(2026, 1, 2, 1, 30, 0)),
    ("e8", 8, 13, 101, "play", 2, 0.1, dt.datetime(2026, 1, 2, 8, 0, 0, 123456)),
]
GOOD_ROW_NUMBERS = [1, 6, 8]
REJECTED = [(i + 1, reason) for i, (_, reason) in enumerate(ROWS) if reason]
REASONS = {
    "column watch_ms: not int64": 2,
    "column ts: not timestamp": 1,
    "column user_id: not int64": 1,
    "missing key user_id": 1,
    "missing key video_id": 1,
    "missing timestamp ts": 2,
}


def write_jsonl(path: Path, rows=ROWS) -> Path:
    with open(path, "w") as fh:
        for values, _ in rows:
            obj = {}
            for name, value in values.items():
                if value is None:
                    if name in ("user_id", "ts"):
                        continue  # absent key: the same as null
                    obj[name] = None
                    continue
                # numbers as JSON numbers where they are numbers
                try:
                    obj[name] = json.loads(value) if name not in ("event_id", "event_type", "ts") else value
                except json.JSONDecodeError:
                    obj[name] = value
            fh.write(json.dumps(obj) + "\n")
    return path


def write_csv(path: Path, rows=ROWS) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for values, _ in rows:
            writer.writerow(["" if values[c] is None else values[c] for c in COLUMNS])
    return path


def write_parquet(path: Path, rows=ROWS) -> Path:
    """A raw export: every column a string, as an upstream system without a schema writes it."""
    pq.write_table(pa.table({c: pa.array([v[c] for v, _ in rows], pa.string()) for c in COLUMNS}), path)
    return path


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


def landed(log: OfflineLog, columns: str = "*") -> list[tuple]:
    return duckdb.sql(f"SELECT {columns} FROM {log.scan_sql(SOURCE)} ORDER BY _partition, _offset").fetchall()


def rejects(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_key_columns_come_from_the_views_reading_the_source():
    assert KEYS == ["user_id", "video_id"]
    assert source_key_columns(DEFS, "follow_events") == ["creator_id"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_land_validates_rows_lands_the_good_ones_and_rejects_the_bad_ones(tmp_path, fmt):
    log = OfflineLog(tmp_path / "log")
    path = WRITERS[fmt](tmp_path / f"events.{fmt}")
    summary = land_files(log, SOURCE, [path], key_columns=KEYS, now=NOW)

    assert (summary.files, summary.skipped_files) == (1, 0)
    assert summary.read_rows == len(ROWS)
    assert summary.landed_rows == len(GOOD) and summary.rejected_rows == len(REJECTED)
    assert summary.landed_rows + summary.rejected_rows == summary.read_rows
    assert summary.reasons == REASONS

    # landed rows are exactly the good rows, with their values, in file order
    rows = landed(log)
    assert [row[: len(COLUMNS)] for row in rows] == GOOD
    offsets = [row[-1] for row in rows]
    assert [o - offsets[0] for o in offsets] == [n - GOOD_ROW_NUMBERS[0] for n in GOOD_ROW_NUMBERS]
    assert {row[-4:-1] for row in rows} == {(NOW, None, -1)}  # _ingested_at, _applied_at, _partition
    source_dir = log.source_dir(SOURCE)
    assert sorted(p.parent.name for p in source_dir.glob("date=*/*.parquet")) == ["date=2026-01-01",
                                                                                 "date=2026-01-02"]

    # every bad row is in the rejects file with its reason, file and row number
    assert summary.rejects_path == tmp_path / "log" / "_rejects" / "video_events" / f"{summary.batch_ids[0]}.jsonl"
    got = rejects(summary.rejects_path)
    assert [(r["_row"], r["_reason"]) for r in got] == REJECTED
    assert {r["_file"] for r in got} == {str(path)}
    by_row = {r["_row"]: r for r in got}
    # the original text where it did not parse, typed values where it did
    assert by_row[2]["watch_ms"] == "abc" and by_row[2]["user_id"] == 2 and by_row[2]["event_id"] == "e2"
    assert by_row[3]["ts"] == "yesterday"
    assert by_row[7]["user_id"] == "x" and by_row[7]["watch_ms"] == "1.5" and by_row[7]["completion"] == 0.2
    assert by_row[4]["user_id"] is None and by_row[4]["ts"] == "2026-01-01T11:00:00Z"
    assert summary.landed_rows + len(got) == summary.read_rows

    # the landing is recorded, last
    manifest = json.loads((source_dir / LANDINGS_DIR / f"{summary.batch_ids[0]}.json").read_text())
    assert manifest["read_rows"] == 9 and manifest["landed_rows"] == 3 and manifest["rejected_rows"] == 6
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_typed_parquet_timestamptz_and_float_values_are_checked_natively(tmp_path):
    zone = dt.timezone(dt.timedelta(hours=5))
    table = pa.table({
        "event_id": ["a", "b", "c"],
        "user_id": pa.array([1, 2, 3], pa.int32()),
        "video_id": pa.array([10, 20, 30], pa.int64()),
        "watch_ms": pa.array([10.0, 2.5, None], pa.float64()),
        "completion": pa.array([1, 0, 1], pa.int64()),
        "ts": pa.array([dt.datetime(2026, 1, 1, 3, 0, tzinfo=zone)] * 3, pa.timestamp("ns", tz="Asia/Karachi")),
        "_ingested_at": pa.array([dt.datetime(2026, 1, 1, 0, 0, 1), None, None], pa.timestamp("ms")),
        "note": ["x", "y", "z"],
    })
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    log = OfflineLog(tmp_path / "log")
    summary = land_files(log, SOURCE, [path], key_columns=KEYS, now=NOW)
    assert (summary.landed_rows, summary.rejected_rows) == (2, 1)
    assert landed(log, "event_id, user_id, watch_ms, completion, creator_id, event_type, ts, _ingested_at") == [
        ("a", 1, 10, 1.0, None, None, dt.datetime(2025, 12, 31, 22, 0), dt.datetime(2026, 1, 1, 0, 0, 1)),
        ("c", 3, None, 1.0, None, None, dt.datetime(2025, 12, 31, 22, 0), NOW),
    ]
    [bad] = rejects(summary.rejects_path)
    assert bad["_reason"] == "column watch_ms: '2.5' is not int64" and bad["_row"] == 2
    assert bad["note"] == "y" and bad["ts"] == "2025-12-31T22:00:00Z"


def test_ingested_at_from_the_file_is_used_and_bad_values_reject_the_row(tmp_path):
    path = tmp_path / "with_ingest.csv"
    path.write_text(textwrap.dedent("""\
        event_id,user_id,video_id,ts,_ingested_at
        a,1,10,2026-01-01T00:00:00Z,2026-01-01T00:00:05+00:00
        b,2,10,2026-01-01T00:00:01Z,
        c,3,10,2026-01-01T00:00:02Z,soon
        d,4,10,2026-01-01T00:05:05Z,2026-01-01T00:00:05Z
        e,5,10,2026-01-01T00:05:06Z,2026-01-01T00:00:05Z
        f,6,10,2026-02-01T12:05:00.250001Z,
        """))
    log = OfflineLog(tmp_path / "log")
    summary = land_files(log, SOURCE, [path], key_columns=KEYS, now=NOW)
    assert landed(log, "event_id, _ingested_at") == [
        ("a", dt.datetime(2026, 1, 1, 0, 0, 5)), ("b", NOW), ("d", dt.datetime(2026, 1, 1, 0, 0, 5))]
    # ts at most max_future (5m) ahead of _ingested_at, as for streamed events
    assert summary.reasons == {"column _ingested_at: not timestamp": 1, "ts more than 5m ahead of _ingested_at": 2}
    got = rejects(summary.rejects_path)
    assert [(r["_row"], r["_reason"]) for r in got] == [
        (3, "column _ingested_at: 'soon' is not timestamp"), (5, "ts more than 5m ahead of _ingested_at"),
        (6, "ts more than 5m ahead of _ingested_at")]
    assert got[0]["_ingested_at"] == "soon"


def test_json_records_that_are_not_objects_or_not_json_are_rejected_with_their_text(tmp_path):
    path = tmp_path / "messy.jsonl"
    path.write_text(
        '{"event_id": "a", "user_id": 1, "video_id": 2, "ts": "2026-01-01T00:00:00Z"}\n'
        "\n"
        "{not json\n"
        "[1, 2]\n"
        "{}\n"
        '{"event_id": "b", "user_id": 1, "video_id": 2, "ts": "2026-01-01T00:00:01Z", "unknown": {"x": 1}}\n'
    )
    log = OfflineLog(tmp_path / "log")
    summary = land_files(log, SOURCE, [path], key_columns=KEYS, now=NOW)
    assert (summary.read_rows, summary.landed_rows, summary.rejected_rows) == (5, 2, 3)
    assert [r[0] for r in landed(log)] == ["a", "b"]
    got = rejects(summary.rejects_path)
    assert [(r["_row"], r["_raw"]) for r in got] == [(2, "{not json"), (3, "[1, 2]"), (4, "{}")]
    assert summary.reasons == {"undecodable or empty JSON record": 3}


def test_a_json_array_file_lands_too(tmp_path):
    path = tmp_path / "events.json"
    path.write_text(json.dumps([
        {"event_id": "a", "user_id": 1, "video_id": 2, "ts": "2026-01-01T00:00:00Z"},
        {"event_id": "b", "user_id": 1, "video_id": 2, "ts": "2026-01-01T00:00:01Z"},
    ]))
    summary = land_files(OfflineLog(tmp_path / "log"), SOURCE, [path], key_columns=KEYS)
    assert (summary.landed_rows, summary.rejected_rows) == (2, 0)
    assert summary.rejects_path is None


def test_landing_the_same_file_again_adds_nothing_and_a_new_file_gets_higher_offsets(tmp_path):
    log = OfflineLog(tmp_path / "log")
    first = write_jsonl(tmp_path / "a.jsonl")
    one = land_files(log, SOURCE, [first], key_columns=KEYS, now=NOW)
    before = landed(log)
    again = land_files(log, SOURCE, [first], key_columns=KEYS, now=NOW + dt.timedelta(hours=1))
    assert (again.files, again.skipped_files, again.landed_rows, again.rejected_rows) == (1, 1, 0, 0)
    assert landed(log) == before
    # the same bytes under another name are the same batch
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(first.read_bytes())
    assert land_files(log, SOURCE, [copy], key_columns=KEYS).skipped_files == 1
    assert landed(log) == before

    second = write_csv(tmp_path / "b.csv")
    two = land_files(log, SOURCE, [second, first], key_columns=KEYS, now=NOW)
    assert (two.files, two.skipped_files, two.landed_rows) == (2, 1, len(GOOD))
    assert one.batch_ids != two.batch_ids
    old = {row[-1] for row in before}
    offsets = [o for (o,) in landed(log, "_offset")]
    assert len(offsets) == len(set(offsets)) == 2 * len(GOOD)
    new = set(offsets) - old
    assert len(new) == len(GOOD) and min(new) > max(old)


def test_a_crash_before_the_manifest_relands_the_same_batch_without_duplicates(tmp_path):
    log = OfflineLog(tmp_path / "log")
    path = write_csv(tmp_path / "a.csv")
    summary = land_files(log, SOURCE, [path], key_columns=KEYS, now=NOW)
    # simulate a crash after the data files, before the manifest
    (log.source_dir(SOURCE) / LANDINGS_DIR / f"{summary.batch_ids[0]}.json").unlink()
    again = land_files(log, SOURCE, [path], key_columns=KEYS, now=NOW)
    assert again.skipped_files == 0 and again.batch_ids == summary.batch_ids
    assert [r[: len(COLUMNS)] for r in landed(log)] == GOOD
    assert len(rejects(again.rejects_path)) == len(REJECTED)


def test_a_lost_sequence_state_resumes_after_the_greatest_landed_offset(tmp_path):
    log = OfflineLog(tmp_path / "log")
    land_files(log, SOURCE, [write_csv(tmp_path / "a.csv")], key_columns=KEYS)
    top = max(o for (o,) in landed(log, "_offset"))
    (log.source_dir(SOURCE) / LANDINGS_DIR / "sequence.json").unlink()
    land_files(log, SOURCE, [write_jsonl(tmp_path / "b.jsonl")], key_columns=KEYS)
    offsets = [o for (o,) in landed(log, "_offset")]
    assert len(offsets) == 2 * len(GOOD) and min(offsets[len(GOOD):]) > top


def test_batch_id_depends_on_the_source_and_the_bytes_only(tmp_path):
    assert batch_id_for(SOURCE, "ab" * 32) == batch_id_for(SOURCE, "ab" * 32)
    assert batch_id_for(SOURCE, "ab" * 32) != batch_id_for(DEFS.source("follow_events"), "ab" * 32)
    assert batch_id_for(SOURCE, "ab" * 32).startswith("land-")


def test_unknown_formats_and_unreadable_files_are_refused_with_the_file_named(tmp_path):
    log = OfflineLog(tmp_path / "log")
    odd = tmp_path / "events.xlsx"
    odd.write_text("x")
    with pytest.raises(ParityError, match=r"events\.xlsx.*unknown file format") as err:
        land_files(log, SOURCE, [odd], key_columns=KEYS)
    assert ".parquet" in err.value.hint and ".jsonl" in err.value.hint and ".csv" in err.value.hint
    with pytest.raises(ParityError, match="no such file"):
        land_files(log, SOURCE, [tmp_path / "missing.csv"], key_columns=KEYS)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ParityError, match=r"broken\.parquet: cannot be read as Parquet"):
        land_files(log, SOURCE, [broken], key_columns=KEYS)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("event_id,user_id,video_id,ts\n" + "a,1,2,2026-01-01\n" * 3000 + "b,1,2,2026-01-01,x,y\n")
    with pytest.raises(ParityError, match=r"ragged\.csv: cannot be read as CSV"):
        land_files(log, SOURCE, [ragged], key_columns=KEYS)
    # nothing was landed or recorded from the refused files, and nothing half-written is left
    assert landed(log) == []
    assert list(log.source_dir(SOURCE).glob(f"{LANDINGS_DIR}/*.json")) == [
        log.source_dir(SOURCE) / LANDINGS_DIR / "sequence.json"]
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []
    with pytest.raises(ParityError, match="snapshot"):
        land_files(log, DEFS.source("user_profile"), [odd], key_columns=[])
    with pytest.raises(ParityError, match="no column nope"):
        land_files(log, SOURCE, [ragged], key_columns=["nope"])


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    land_files(OfflineLog(tmp_path / "log"), SOURCE, [write_csv(tmp_path / "a.csv")], key_columns=KEYS,
               progress=True)
    captured = capsys.readouterr()
    assert "a.csv" in captured.err and captured.out == ""


LANDER = """
import sys, time
from pathlib import Path
from parity.batch.land import land_files, source_key_columns
from parity.batch.offline_log import OfflineLog
from parity.registry.loader import load_definitions
defs = load_definitions(sys.argv[1]).definitions
start = float(sys.argv[4])
while time.time() < start:
    time.sleep(0.005)
s = land_files(OfflineLog(sys.argv[2]), defs.source("video_events"), [Path(sys.argv[3])],
               key_columns=source_key_columns(defs, "video_events"))
print(s.landed_rows)
"""


def test_concurrent_landings_get_disjoint_offset_ranges(tmp_path):
    n = 60_000
    for name, mod in (("one", 0), ("two", 1)):
        duckdb.sql(
            f"COPY (SELECT '{name}-' || range AS event_id, range AS user_id, range % 97 AS video_id, "
            f"TIMESTAMP '2026-01-01' + to_microseconds(range * 1000) AS ts FROM range({n})) "
            f"TO '{tmp_path / (name + '.csv')}' (HEADER)"
        )
    script = tmp_path / "lander.py"
    script.write_text(LANDER)
    start = time.time() + 2.0
    procs = [
        subprocess.Popen([sys.executable, str(script), str(ROOT / "feature_defs"), str(tmp_path / "log"),
                          str(tmp_path / f"{name}.csv"), str(start)], stdout=subprocess.PIPE, text=True)
        for name in ("one", "two")
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [int(o.strip()) for o in outs] == [n, n]
    log = OfflineLog(tmp_path / "log")
    ranges = duckdb.sql(
        f"SELECT split_part(event_id, '-', 1) AS f, count(*), count(DISTINCT _offset), min(_offset), max(_offset) "
        f"FROM {log.scan_sql(SOURCE)} GROUP BY f ORDER BY min(_offset)"
    ).fetchall()
    assert [r[1:3] for r in ranges] == [(n, n), (n, n)]
    (_, _, _, _, first_max), (_, _, _, second_min, _) = ranges
    assert first_max < second_min

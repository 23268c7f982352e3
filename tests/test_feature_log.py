"""Feature logging for online serving: sampled, non-blocking, atomic Parquet appends."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from parity.errors import ParityError
from parity.serving.feature_log import FeatureLogger, LoggedColumn, read_feature_log

NOW = 1_717_243_200_000_000  # 2024-06-01T12:00:00Z in µs
COLUMNS = [
    LoggedColumn("video_engagement__plays_1h", "int64"),
    LoggedColumn("video_engagement__watch_mean_1h", "float64"),
    LoggedColumn("video_profile__title", "string"),
    LoggedColumn("video_profile__is_live", "bool"),
    LoggedColumn("video_engagement__last_play_at", "timestamp"),
    LoggedColumn("video_engagement__last_users", "list<int64>"),
]


def request(i: int, rows: int = 2) -> dict:
    """A served response with ``rows`` entity rows, every dtype, nulls and empty lists."""
    ids = [f"v{i}-{r}" for r in range(rows)]
    values = {
        "video_engagement__plays_1h": [i * 10 + r for r in range(rows)],
        "video_engagement__watch_mean_1h": [None if r % 2 else i + 0.25 for r in range(rows)],
        "video_profile__title": [f"title {i}/{r}" for r in range(rows)],
        "video_profile__is_live": [r % 2 == 0 for r in range(rows)],
        "video_engagement__last_play_at": [NOW - 1_000 * r if r else None for r in range(rows)],
        "video_engagement__last_users": [[i, r, 7] if r % 2 == 0 else [] for r in range(rows)],
    }
    statuses = {c.name: ["PRESENT" if r % 2 == 0 else "DEFAULT" for r in range(rows)] for c in COLUMNS}
    ages = {"video_engagement__plays_1h": [12.5 if r % 2 == 0 else None for r in range(rows)]}
    return dict(request_id=f"req-{i}", now_us=NOW + i, feature_set="video_ranking",
                keys={"video_id": ("string", ids), "region": ("int32", [i % 3] * rows)},
                columns=COLUMNS, values=values, statuses=statuses, ages_ms=ages)


def expected_rows(req: dict) -> list[dict]:
    rows = []
    for r in range(len(req["keys"]["video_id"][1])):
        row = {"request_id": req["request_id"], "now": req["now_us"], "row": r}
        row.update({k: v[r] for k, (_, v) in req["keys"].items()})
        row.update({name: v[r] for name, v in req["values"].items()})
        row.update({f"{name}__status": v[r] for name, v in req["statuses"].items()})
        row.update({f"{name}__age_ms": v[r] for name, v in req["ages_ms"].items()})
        rows.append(row)
    return rows


def as_logged(table: pa.Table) -> list[dict]:
    """Rows of a read-back table with timestamps as integer µs, sorted by (request, row)."""
    table = table.set_column(table.schema.get_field_index("now"), "now", table["now"].cast(pa.int64()))
    ts = "video_engagement__last_play_at"
    table = table.set_column(table.schema.get_field_index(ts), ts, table[ts].cast(pa.int64()))
    return sorted(table.to_pylist(), key=lambda row: (row["request_id"], row["row"]))


@pytest.fixture
def make_logger(tmp_path: Path):
    loggers: list[FeatureLogger] = []

    def make(**kwargs) -> FeatureLogger:
        logger = FeatureLogger(kwargs.pop("root", tmp_path / "log"), **kwargs)
        loggers.append(logger)
        return logger

    yield make
    for logger in loggers:
        logger.close()


def test_logged_rows_read_back_exactly_with_types(make_logger, tmp_path):
    logger = make_logger(flush_interval=60)
    requests = [request(i, rows=1 + i) for i in range(4)]
    assert all(logger.log(**req) for req in requests)
    logger.flush()

    table = read_feature_log(tmp_path / "log", "video_ranking")
    assert as_logged(table) == sorted((row for req in requests for row in expected_rows(req)),
                                      key=lambda row: (row["request_id"], row["row"]))
    schema = table.schema
    assert schema.field("now").type == pa.timestamp("us", tz="UTC")
    assert schema.field("row").type == pa.int32()
    assert schema.field("region").type == pa.int32()
    assert schema.field("video_engagement__last_play_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("video_engagement__last_users").type == pa.list_(pa.int64())
    assert pa.types.is_dictionary(schema.field("video_profile__title__status").type)
    assert schema.field("video_engagement__plays_1h__age_ms").type == pa.float64()
    assert "video_profile__title__age_ms" not in schema.names
    assert logger.stats == {"sampled": 4, "skipped": 0, "dropped": 0, "written_rows": 10, "files": 1, "errors": 0}
    files = list((tmp_path / "log" / "video_ranking" / "date=2024-06-01").iterdir())
    assert len(files) == 1 and files[0].name.startswith("part-") and files[0].name.endswith(".parquet")


def test_reading_everything_adds_the_feature_set_and_unifies_schemas(make_logger, tmp_path):
    logger = make_logger()
    logger.log(**request(1))
    other = request(2) | {"feature_set": "user_home", "columns": COLUMNS[:1],
                          "values": {COLUMNS[0].name: [1, 2]}, "statuses": {COLUMNS[0].name: ["PRESENT"] * 2}}
    logger.log(**other)
    logger.flush()
    table = read_feature_log(tmp_path / "log")
    assert sorted(set(table["feature_set"].to_pylist())) == ["user_home", "video_ranking"]
    assert table.num_rows == 4
    assert read_feature_log(tmp_path / "missing").num_rows == 0


def test_size_and_interval_trigger_writes_without_flush(make_logger, tmp_path):
    by_rows = make_logger(root=tmp_path / "a", flush_rows=4, flush_interval=60)
    by_time = make_logger(root=tmp_path / "b", flush_interval=0.05)
    for i in range(2):
        by_rows.log(**request(i))
    by_time.log(**request(9))
    deadline = time.monotonic() + 5
    while (by_rows.stats["files"] < 1 or by_time.stats["files"] < 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert by_rows.stats["written_rows"] == 4 and by_time.stats["written_rows"] == 2


def test_sample_rate_zero_logs_nothing(make_logger, tmp_path):
    logger = make_logger(sample_rate=0.0)
    assert not any(logger.log(**request(i)) for i in range(20))
    logger.flush()
    assert logger.stats == {"sampled": 0, "skipped": 20, "dropped": 0, "written_rows": 0, "files": 0, "errors": 0}
    assert read_feature_log(tmp_path / "log").num_rows == 0


def test_sampling_is_per_request_and_deterministic_with_a_seed(make_logger, tmp_path):
    def run(root: Path) -> tuple[list[bool], FeatureLogger]:
        logger = make_logger(root=root, sample_rate=0.5, seed=7)
        accepted = [logger.log(**request(i, rows=3)) for i in range(200)]
        logger.flush()
        return accepted, logger

    first, logger = run(tmp_path / "one")
    second, _ = run(tmp_path / "two")
    assert first == second and 0 < sum(first) < 200
    stats = logger.stats
    assert stats["sampled"] == sum(first) and stats["skipped"] == 200 - sum(first)
    table = read_feature_log(tmp_path / "one", "video_ranking")
    assert stats["written_rows"] == table.num_rows == 3 * sum(first)
    # A request is logged whole or not at all.
    logged = {f"req-{i}" for i, ok in enumerate(first) if ok}
    counts = {rid: table["request_id"].to_pylist().count(rid) for rid in logged}
    assert set(table["request_id"].to_pylist()) == logged and set(counts.values()) == {3}


def test_full_queue_drops_at_once_and_counts_drops(make_logger, tmp_path, monkeypatch):
    logger = make_logger(queue_size=1, flush_rows=1)
    entered, release = threading.Event(), threading.Event()
    real_write = logger._write_table

    def blocked(directory, table):
        entered.set()
        release.wait(10)
        return real_write(directory, table)

    monkeypatch.setattr(logger, "_write_table", blocked)
    assert logger.log(**request(0))
    assert entered.wait(5)  # the writer holds request 0 and is stuck writing it
    assert logger.log(**request(1))  # fills the one queue slot
    for i in range(2, 6):
        started = time.perf_counter()
        assert logger.log(**request(i)) is False
        assert time.perf_counter() - started < 0.05
    assert logger.stats["dropped"] == 4
    release.set()
    logger.flush()
    assert sorted(set(read_feature_log(tmp_path / "log")["request_id"].to_pylist())) == ["req-0", "req-1"]
    assert logger.stats == {"sampled": 6, "skipped": 0, "dropped": 4, "written_rows": 4, "files": 2, "errors": 0}


def test_write_error_is_counted_and_the_writer_keeps_going(make_logger, tmp_path, monkeypatch, caplog):
    logger = make_logger()
    real_write, calls = logger._write_table, []

    def fail_once(directory, table):
        calls.append(directory)
        if len(calls) == 1:
            raise OSError("disk full")
        return real_write(directory, table)

    monkeypatch.setattr(logger, "_write_table", fail_once)
    with caplog.at_level(logging.ERROR, logger="parity.serving.feature_log"):
        logger.log(**request(0))
        logger.flush()
    assert logger.stats["errors"] == 1 and "disk full" in caplog.text
    logger.log(**request(1))
    logger.flush()
    assert read_feature_log(tmp_path / "log")["request_id"].to_pylist() == ["req-1", "req-1"]
    assert logger.stats["written_rows"] == 2 and logger.stats["files"] == 1


def test_a_request_with_bad_values_is_an_error_and_the_rest_of_its_batch_is_written(make_logger, tmp_path):
    logger = make_logger()
    bad = request(0)
    bad["values"] = bad["values"] | {"video_engagement__plays_1h": ["not a number", 1]}
    assert logger.log(**request(1)) and logger.log(**bad) and logger.log(**request(2))
    logger.flush()
    assert logger.stats["errors"] == 1
    assert sorted(set(read_feature_log(tmp_path / "log")["request_id"].to_pylist())) == ["req-1", "req-2"]
    logger.log(**bad)
    logger.flush()
    assert logger.stats["errors"] == 2 and logger.stats["written_rows"] == 4 and logger.stats["files"] == 1


def test_unwritable_root_is_counted_as_an_error_and_writing_resumes(make_logger, tmp_path):
    root = tmp_path / "log"
    root.write_text("a file where the log folder should be")  # fails even as root, unlike chmod
    logger = make_logger(root=root)
    logger.log(**request(0))
    logger.flush()
    assert logger.stats["errors"] == 1 and logger.stats["files"] == 0
    root.unlink()
    logger.log(**request(1))
    logger.flush()
    assert read_feature_log(root)["request_id"].to_pylist() == ["req-1", "req-1"]
    assert logger.stats["errors"] == 1 and logger.stats["files"] == 1


def test_feature_set_cannot_escape_root(make_logger, tmp_path):
    root = tmp_path / "deep" / "log"
    logger = make_logger(root=root)
    for name in ["../x", "../../escape", "/abs/path", "..", "a/../../b", "..\\win"]:
        assert logger.log(**request(0) | {"feature_set": name})
    logger.flush()
    written = [p for p in tmp_path.rglob("*.parquet")]
    assert len(written) == 6
    assert all(root.resolve() in p.resolve().parents for p in written)
    assert all(p.parent.parent.parent == root for p in written)  # root/<one folder>/date=/part
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_malformed_requests_raise_typed_errors(make_logger):
    logger = make_logger()
    short = request(0)
    short["statuses"] = short["statuses"] | {COLUMNS[0].name: ["PRESENT"]}
    with pytest.raises(ParityError, match="rows"):
        logger.log(**short)
    with pytest.raises(ParityError, match="unknown dtype"):
        logger.log(**request(0) | {"keys": {"video_id": ("uuid", ["a", "b"])}})
    with pytest.raises(ParityError, match="collide"):
        logger.log(**request(0) | {"keys": {"row": ("int64", [1, 2])}})
    with pytest.raises(ParityError, match="empty"):
        logger.log(**request(0) | {"feature_set": ""})
    with pytest.raises(ParityError, match="now_us"):
        logger.log(**request(0) | {"now_us": 10**30})
    assert logger.stats["sampled"] == 0


def test_closed_logger_drops(make_logger):
    logger = make_logger()
    logger.close()
    assert logger.log(**request(0)) is False
    assert logger.stats["dropped"] == 1


def test_a_watcher_sees_every_count_from_every_thread(make_logger, tmp_path):
    logger = make_logger(sample_rate=0.5, seed=3, flush_rows=5, queue_size=4)
    for i in range(30):  # counted before the watcher: reported when it starts watching
        logger.log(**request(i))
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def counted(name: str, n: int) -> None:
        with lock:
            seen[name] = seen.get(name, 0) + n

    logger.watch(counted)
    threads = [threading.Thread(target=lambda k=k: [logger.log(**request(100 * k + i, rows=3)) for i in range(50)])
               for k in range(1, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logger.flush()
    stats = logger.stats
    assert stats["written_rows"] > 0 and stats["skipped"] > 0
    assert seen == {name: n for name, n in stats.items() if n}

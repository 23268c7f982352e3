"""benchmarks/generate.py: deterministic synthetic data for the example, written into the offline log."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import subprocess
import sys

import duckdb
import pytest

from defs_fixtures import ROOT
from parity.batch.offline_log import OfflineLog
from parity.registry.loader import load_definitions
from parity.registry.types import DUCKDB_TYPES

SCALE, DAYS, START = 20_000, 3, dt.date(2026, 1, 1)
DEFS = load_definitions(ROOT / "feature_defs").definitions


def _load_generator():
    spec = importlib.util.spec_from_file_location("parity_benchmarks_generate", ROOT / "benchmarks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder whose data/ was filled by the CLI (the example's layout)."""
    root = tmp_path_factory.mktemp("project")
    assert gen.main(["--scale", str(SCALE), "--days", str(DAYS), "--out", str(root / "data" / "offline_log"),
                     "--seed", "7", "--start", START.isoformat(), "--no-progress"]) == 0
    return root


def log_of(root) -> OfflineLog:
    return OfflineLog(root / "data" / "offline_log", project_root=root)


def digest(log: OfflineLog) -> str:
    """sha256 of every value of every source, in ingest order."""
    h = hashlib.sha256()
    for name, order in (("video_events", "_partition, _offset"), ("follow_events", "_partition, _offset"),
                        ("user_profile", "user_id")):
        for row in duckdb.sql(f"SELECT * FROM {log.scan_sql(DEFS.source(name))} ORDER BY {order}").fetchall():
            h.update(repr(row).encode())
    return h.hexdigest()


def q(sql: str):
    return duckdb.sql(sql).fetchall()


def test_help_is_complete():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generate.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--scale", "--days", "--out", "--seed", "--start", "--profiles", "--no-progress"):
        assert option in out
    assert "user_profile" in out and "follow_events" in out


def test_the_log_reads_back_with_the_source_schemas(project):
    log = log_of(project)
    for name in ("video_events", "follow_events", "user_profile"):
        source = DEFS.source(name)
        rel = duckdb.sql(f"SELECT * FROM {log.scan_sql(source)}")
        expected = {col: DUCKDB_TYPES[dtype] for col, dtype in source.schema_.items()}
        if source.kind == "stream":
            expected |= {"_ingested_at": "TIMESTAMP", "_applied_at": "TIMESTAMP", "_partition": "INTEGER",
                         "_offset": "BIGINT"}
        assert dict(zip(rel.columns, map(str, rel.types))) == expected
    # the profile snapshot sits where the example's snapshot.path glob finds it
    assert DEFS.source("user_profile").snapshot.path == "data/user_profile/*.parquet"
    assert (project / "data" / "user_profile" / "part-0.parquet").is_file()
    # one partition (and one gen-<date> batch) per day
    days = sorted(p.name for p in (project / "data" / "offline_log" / "video_events").iterdir())
    assert days == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    assert log.batch_ids(DEFS.source("video_events")) == {"gen-2026-01-01", "gen-2026-01-02", "gen-2026-01-03"}


def test_generated_batches_have_exactly_the_log_schema():
    log = OfflineLog("/unused")
    for name in ("video_events", "follow_events"):
        want = [(f.name, f.type) for f in log.arrow_schema(DEFS.source(name))]
        batches = list(gen.generate(5_000, 2, 3, START, source=name))
        assert len(batches) == 2  # one per day
        for batch in batches:
            assert [(f.name, f.type) for f in batch.schema] == want
    users, _, _ = gen.cardinalities(5_000)
    assert sum(b.num_rows for b in gen.generate(5_000, 2, 3, START, source="user_profile")) == users


def test_counts_proportions_and_consistency(project):
    log = log_of(project)
    v = log.scan_sql(DEFS.source("video_events"))
    f = log.scan_sql(DEFS.source("follow_events"))
    p = log.scan_sql(DEFS.source("user_profile"))
    users, videos, creators = gen.cardinalities(SCALE)
    assert (users, videos, creators) == (400, 80, 10)
    assert q(f"SELECT count(*), count(DISTINCT event_id) FROM {v}") == [(SCALE, SCALE)]
    assert q(f"SELECT count(*) FROM {f}") == [(SCALE // 20,)]
    assert q(f"SELECT count(*), count(DISTINCT user_id), min(user_id), max(user_id) FROM {p}") == [
        (users, users, 1, users)]
    shares = dict(q(f"SELECT event_type, count(*) / {SCALE} FROM {v} GROUP BY 1"))
    for kind, share in {"play": 0.70, "skip": 0.15, "like": 0.08, "share": 0.03, "comment": 0.03,
                        "report": 0.01}.items():
        assert abs(shares[kind] - share) < max(0.01, share * 0.3), (kind, shares[kind])
    # ids stay in their ranges; every video has one creator
    assert q(f"SELECT max(user_id) <= {users}, max(video_id) <= {videos}, max(creator_id) <= {creators}, "
             f"min(user_id) >= 1 FROM {v}") == [(True, True, True, True)]
    assert q(f"SELECT max(n) FROM (SELECT video_id, count(DISTINCT creator_id) AS n FROM {v} GROUP BY 1)") == [(1,)]
    # plays and skips always have watch_ms and completion; others often do not
    assert q(f"SELECT count(*) FROM {v} WHERE event_type IN ('play', 'skip') AND (watch_ms IS NULL "
             f"OR completion IS NULL)") == [(0,)]
    [(null_share,)] = q(f"SELECT avg(CASE WHEN watch_ms IS NULL THEN 1.0 ELSE 0 END) FROM {v} "
                        f"WHERE event_type NOT IN ('play', 'skip')")
    assert 0.6 < null_share < 0.8
    assert q(f"SELECT count(*) FROM {v} WHERE (watch_ms IS NULL) <> (completion IS NULL)") == [(0,)]
    assert q(f"SELECT min(completion) >= 0, max(completion) <= 1, "
             f"max(completion) FILTER (WHERE event_type = 'skip') <= 0.1001 FROM {v}") == [(True, True, True)]
    # skew: the most popular tenth of the videos gets far more than a tenth of the events
    [(top,)] = q(f"SELECT sum(c) FILTER (WHERE rn <= {videos // 10}) / sum(c) FROM "
                 f"(SELECT count(*) AS c, row_number() OVER (ORDER BY count(*) DESC) AS rn FROM {v} GROUP BY video_id)")
    assert top > 0.3
    # time: inside the days, diurnal, ~1% ingested late (out of order), applied after ingested
    assert q(f"SELECT min(ts) >= TIMESTAMP '2026-01-01', max(ts) < TIMESTAMP '2026-01-04' FROM {v}") == [(True, True)]
    [(evening, morning)] = q(f"SELECT count(*) FILTER (WHERE hour(ts) BETWEEN 18 AND 21), "
                             f"count(*) FILTER (WHERE hour(ts) BETWEEN 6 AND 9) FROM {v}")
    assert evening > 2.5 * morning
    [(late, microseconds)] = q(f"SELECT avg(CASE WHEN _ingested_at - ts >= INTERVAL 1 SECOND THEN 1.0 ELSE 0 END), "
                               f"count(DISTINCT microsecond(ts) % 1000) FROM {v}")
    assert 0.005 < late < 0.02 and microseconds > 900
    assert q(f"SELECT min(_ingested_at > ts), min(_applied_at > _ingested_at) FROM {v}") == [(True, True)]
    # ingest order: offsets count per partition, in _ingested_at order within a day
    assert q(f"SELECT count(*) FROM (SELECT _partition, count(*) AS n, min(_offset) AS lo, max(_offset) AS hi, "
             f"count(DISTINCT _offset) AS d FROM {v} GROUP BY 1) WHERE lo <> 0 OR hi <> n - 1 OR d <> n") == [(0,)]
    assert q(f"SELECT count(*) FROM {v} WHERE _partition <> user_id % 8") == [(0,)]
    # profiles: plausible values
    assert q(f"SELECT count(*) FROM {p} WHERE signup_ts > updated_at OR country IS NULL OR language IS NULL "
             f"OR age_bucket IS NULL") == [(0,)]


def test_same_arguments_give_identical_data_and_another_seed_does_not(project, tmp_path):
    again = tmp_path / "again"
    gen.write_all(SCALE, DAYS, 7, START, again / "data" / "offline_log",
                  again / "data" / "user_profile" / "part-0.parquet", progress=False)
    assert digest(log_of(again)) == digest(log_of(project))
    # byte-identical files, too
    for path in sorted((project / "data").rglob("*.parquet")):
        twin = again / path.relative_to(project)
        assert twin.read_bytes() == path.read_bytes(), path
    other = tmp_path / "other"
    gen.write_all(SCALE, DAYS, 8, START, other / "data" / "offline_log",
                  other / "data" / "user_profile" / "part-0.parquet", progress=False)
    assert digest(log_of(other)) != digest(log_of(project))


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        gen.main(["--scale", "0", "--out", "/tmp/unused"])
    with pytest.raises(SystemExit):
        gen.main(["--scale", str(gen.MAX_SCALE + 1), "--out", "/tmp/unused"])
    assert "--scale must be in" in capsys.readouterr().err
    with pytest.raises(ValueError):
        next(gen.generate(10, 1, 7, START, source="nope"))

"""The batch CLI end to end: land -> training-set -> Parquet, with a progress bar; backfill."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

EVENTS = [
    '{"event_id": "a", "user_id": 1, "video_id": 10, "creator_id": 7, "event_type": "play", "watch_ms": 1000, '
    '"completion": 1.0, "ts": "2026-01-10T09:00:00Z"}',
    '{"event_id": "b", "user_id": 1, "video_id": 10, "creator_id": 7, "event_type": "like", '
    '"ts": "2026-01-10T09:30:00Z"}',
    '{"event_id": "c", "user_id": 1, "video_id": 10, "creator_id": 7, "event_type": "play", "watch_ms": "lots", '
    '"ts": "2026-01-10T09:31:00Z"}',
    '{"event_id": "d", "video_id": 10, "creator_id": 7, "event_type": "play", "ts": "2026-01-10T09:32:00Z"}',
    '{"event_id": "e", "user_id": 2, "video_id": 10, "creator_id": 7, "event_type": "play"}',
]


def parity(*args, cwd, check=True):
    result = subprocess.run([sys.executable, "-m", "parity.cli", *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_land_training_set_backfill(tmp_path):
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    parity("apply", cwd=project)
    (project / "events.jsonl").write_text("\n".join(EVENTS) + "\n")
    landed = json.loads(parity("land", "video_events", "events.jsonl", "--json", "--quiet", cwd=project).stdout)
    assert (landed["landed_rows"], landed["rejected_rows"]) == (2, 3)
    assert landed["reasons"] == {"column watch_ms: not int64": 1, "missing key user_id": 1, "missing timestamp ts": 1}
    rejects = [json.loads(line) for line in open(landed["rejects_path"])]
    assert sorted(r["_row"] for r in rejects) == [3, 4, 5]
    assert all(r["_reason"] for r in rejects)

    (project / "spine.csv").write_text("user_id,video_id,ts,label\n1,10,2026-01-10 10:00:00,1\n"
                                       "1,10,2026-01-10 09:00:00,0\n3,99,2026-01-10 10:00:00,1\n")
    result = parity("training-set", "--spine", "spine.csv", "--out", "train.parquet", "--features",
                    "user_engagement:watch_ms_1h,user_engagement:plays_24h,video_engagement:likes_1h", cwd=project)
    assert "training set: 100%" in result.stderr, "a progress bar runs to completion"
    assert result.stdout.startswith("wrote 3 rows to train.parquet")
    rows = pq.read_table(project / "train.parquet").to_pylist()
    assert [r["label"] for r in rows] == [1, 0, 1], "spine order and labels are kept"
    # at 10:00 the 1h window is [09:00, 10:00): the 09:00 play counts; at exactly 09:00 it does not
    assert [r["user_engagement__watch_ms_1h"] for r in rows] == [1000, 0, 0]
    assert [r["user_engagement__plays_24h"] for r in rows] == [1, 0, 0]
    assert [r["video_engagement__likes_1h"] for r in rows] == [1, 0, 0]

    missing = parity("training-set", "--spine", "spine.csv", "--out", "x.parquet", "--service", "nope",
                     cwd=project, check=False)
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0] == "error: unknown feature service 'nope'"

    filled = json.loads(parity("backfill", "--start", "2026-01-10", "--end", "2026-01-11", "--views",
                               "user_engagement", "--json", "--quiet", cwd=project).stdout)
    assert filled["files"] == 3 and filled["tiles"] > 0   # resolutions 5m, 1h and 1d (for the 7d windows), one date

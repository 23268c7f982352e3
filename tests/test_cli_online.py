"""The online CLI end to end: land -> backfill -> dev up -> materialize -> get -> dev down."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from test_cli_batch import parity


def test_materialize_and_get_from_the_cli(tmp_path):
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    parity("apply", cwd=project)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    events = []
    for i, minutes in enumerate((50, 40, 30, 3)):
        ts = (now - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
        events.append(json.dumps({"event_id": str(i), "user_id": 1, "video_id": 10, "creator_id": 7,
                                  "event_type": "report" if i else "play", "watch_ms": 900, "completion": 0.5,
                                  "ts": ts}))
    (project / "events.jsonl").write_text("\n".join(events) + "\n")
    parity("land", "video_events", "events.jsonl", "--quiet", cwd=project)
    start = (now - timedelta(days=1)).date().isoformat()
    end = (now + timedelta(seconds=1)).isoformat()
    parity("backfill", "--start", start, "--end", end, "--quiet", "--views", "video_safety", "video_engagement",
           cwd=project)
    try:
        up = parity("dev", "up", cwd=project)
        assert up.stdout.startswith("redis: redis://127.0.0.1:")
        loaded = json.loads(parity("materialize", "--json", "--quiet", "--views", "video_safety", "video_engagement",
                                   cwd=project).stdout)
        assert loaded["video_safety@1"]["tiles"] > 0
        got = json.loads(parity("get", "--service", "safety_screen", "--entity", "video_id=10,11", "--json",
                                cwd=project).stdout)
        features = got["features"]
        assert features["video_safety__reports_1h"]["values"] == [3, 0]
        assert features["video_safety__reports_1h"]["status"][1] == "missing"
        assert features["video_engagement__plays_1h"]["values"] == [1, 0]
        # the view's 30s freshness SLO: materialize recorded a watermark of `end`, a few seconds ago at most
        assert features["video_safety__reports_1h"]["status"][0] in ("ok", "stale")
        bad = parity("get", "--service", "nope", "--entity", "video_id=1", cwd=project, check=False)
        assert bad.returncode == 1 and bad.stderr.startswith("error: unknown feature service 'nope'")
    finally:
        down = parity("dev", "down", cwd=project)
    assert "redis" in down.stdout
    assert parity("dev", "status", cwd=project).stdout.splitlines() == ["redis: not running", "kafka: not running"]

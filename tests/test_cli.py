"""The `parity` CLI end to end on the example project: init, plan, apply, versions, list, describe."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


def parity(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "parity.cli", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"parity {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture()
def project(tmp_path) -> Path:
    parity("init", str(tmp_path / "proj"), cwd=tmp_path)
    return tmp_path / "proj"


def test_plan_apply_and_version_bump(project):
    planned = parity("plan", cwd=project)
    assert planned.stdout.startswith("plan against registry revision 0: 13 to add, 0 to change, 0 to remove")
    assert "  + add    view user_engagement v1" in planned.stdout

    applied = parity("apply", cwd=project)
    assert applied.stdout.rstrip().endswith("applied: registry is at revision 1")
    again = parity("apply", cwd=project)
    assert "no changes" in again.stdout and "nothing to apply" in again.stdout

    # change what a feature means without a version bump: refused, field named, exit 1
    user = project / "feature_defs" / "user.yaml"
    text = user.read_text()
    user.write_text(text.replace("{name: watch_ms_1h, agg: sum, column: watch_ms, window: 1h,",
                                 "{name: watch_ms_1h, agg: sum, column: watch_ms, window: 2h,"))
    refused = parity("plan", cwd=project, check=False)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[0] == (
        "error: feature_defs/user.yaml: view user_engagement, feature watch_ms_1h, field window: "
        "window changed from 1h to 2h without a version bump "
        "(fix: bump `version` to 2; version 1 stays live until you remove it)")
    assert refused.stderr.splitlines()[-1].startswith("hint: ")
    assert parity("apply", cwd=project, check=False).returncode == 1

    # bump the version: the plan adds v2 beside v1
    user.write_text(user.read_text().replace("name: user_engagement\n    version: 1",
                                             "name: user_engagement\n    version: 2"))
    planned = parity("plan", cwd=project)
    assert "  + add    view user_engagement v2 (version 1 stays live)" in planned.stdout
    assert "  = keep   view user_engagement v1 (superseded, stays live)" in planned.stdout
    parity("apply", cwd=project)
    listing = json.loads(parity("list", "--json", cwd=project).stdout)
    versions = [(v["name"], v["version"], v["status"]) for v in listing["feature_views"]
                if v["name"] == "user_engagement"]
    assert versions == [("user_engagement", 1, "live (superseded)"), ("user_engagement", 2, "live")]
    assert listing["revision"] == 2

    # describe each version: the windows differ
    v1 = json.loads(parity("describe", "user_engagement@1", "--json", cwd=project).stdout)
    v2 = json.loads(parity("describe", "user_engagement", "--json", cwd=project).stdout)
    assert v1["version"] == 1 and v2["version"] == 2
    assert [f["window"] for f in v1["features"] if f["name"] == "watch_ms_1h"] == ["1h"]
    assert [f["window"] for f in v2["features"] if f["name"] == "watch_ms_1h"] == ["2h"]

    # retire v1 explicitly
    parity("apply", "--retire", "user_engagement@1", cwd=project)
    listing = json.loads(parity("list", "--json", cwd=project).stdout)
    assert [v["version"] for v in listing["feature_views"] if v["name"] == "user_engagement"] == [2]
    history = json.loads(parity("history", "--json", cwd=project).stdout)
    assert [h["revision"] for h in history] == [3, 2, 1]


def test_describe_shows_windows_hops_tiles_retention_owner_and_filter_sql(project):
    parity("apply", cwd=project)
    info = json.loads(parity("describe", "user_engagement", "--json", cwd=project).stdout)
    assert info["owner"] == "ranking@short.video"
    assert info["tile_resolutions"] == ["5m", "1h", "1d"]  # hops, plus 1d tiles for the 7d windows
    assert info["retention"] == "7d1h"  # longest window 7d + its 1h hop
    f = {x["name"]: x for x in info["features"]}
    assert (f["watch_ms_24h"]["window"], f["watch_ms_24h"]["hop"], f["watch_ms_24h"]["type"]) == ("24h", "1h", "int64")
    assert f["last_watched_videos"]["agg"] == "last_k(20)"
    assert f["last_watched_videos"]["type"] == "list<int64>"
    assert f["plays_1h"]["output_column"] == "user_engagement__plays_1h"
    assert f["plays_1h"]["where_duckdb"] == "(\"event_type\" = 'play')"
    text = parity("describe", "creator_follows", cwd=project).stdout
    assert "retention:   forever" in text and "tiles:       1h, 1d" in text
    missing = parity("describe", "nope", cwd=project, check=False)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        "error: no live view 'nope' in the registry",
        "hint: live views: creator_follows, user_engagement, user_profile, video_engagement, video_safety"]


def test_bad_definitions_fail_plan_with_one_line_per_problem(project):
    (project / "feature_defs" / "broken.yaml").write_text(
        "feature_views:\n  - {name: broken, entity: user, source: video_events, owner: me,\n"
        "     features: [{name: f, agg: sum, column: event_type, window: 7m}]}\n")
    result = parity("plan", cwd=project, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "error: 2 problems in the definitions:"
    assert lines[1].startswith("  - feature_defs/broken.yaml: view broken, feature f, field window: window 7m")
    assert lines[2].startswith("  - feature_defs/broken.yaml: view broken, feature f, field column: sum over")
    assert "Traceback" not in result.stderr


def test_two_concurrent_applies_one_wins_registry_intact(project):
    procs = [subprocess.Popen([sys.executable, "-m", "parity.cli", "apply"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(60), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 1])
    for code, out, err in results:
        if code == 1:
            assert re.search(r"changed since it was read: expected revision 0, found revision 1", err), err
    listing = json.loads(parity("list", "--json", cwd=project).stdout)
    assert listing["revision"] == 1
    assert len(listing["feature_views"]) == 5
    assert len(json.loads(parity("history", "--json", cwd=project).stdout)) == 1


def test_help_is_complete():
    out = subprocess.run([sys.executable, "-m", "parity.cli", "--help"], capture_output=True, text=True).stdout
    for command in ("init", "plan", "apply", "list", "describe", "history"):
        assert command in out
    for command in ("plan", "apply", "list", "describe", "history", "init"):
        sub = subprocess.run([sys.executable, "-m", "parity.cli", command, "--help"], capture_output=True,
                             text=True)
        assert sub.returncode == 0 and "usage: parity " + command in sub.stdout


def test_missing_config_is_one_line_and_a_hint(tmp_path):
    result = parity("list", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: feature_store.yaml: not found",
                                          "hint: run `parity init DIR`, or pass --config"]

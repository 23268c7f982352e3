"""Smoke test of the online benchmark (benchmarks/bench_online.py): its ``--quick`` mode on tiny
sizes, in process, end to end (private redis-server, tiles through OnlineWriter, Feast, the HTTP
server subprocess and the load generator).

It checks that the JSON result has p50/p99 figures for every shape and every way of measuring,
and that the benchmark's data is right: a sample of Parity lookups, taken right after the
benchmark populated the store, equals the values the naive oracle (tests/oracle.py, nested
loops over events) computes from the generated events themselves.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import oracle

MODULE_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_online.py"

TINY = ["--quick", "--events", "3000", "--users", "150", "--videos", "600", "--seconds", "1",
        "--rate", "200", "--connections", "8", "--warmup-seconds", "0.2", "--inproc-seconds", "0.4",
        "--ranking-seconds", "0.5", "--ranking-concurrency", "2"]


def load_bench():
    spec = importlib.util.spec_from_file_location("parity_bench_online_smoke", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def oracle_rows(bench, events, view: str, entity_id: int) -> list[dict]:
    rows = []
    for i in np.flatnonzero(events.entity(view) == entity_id):
        row = events.row(int(i))
        row["_ts"] = row["ts"].astimezone(timezone.utc).replace(tzinfo=None)
        row["_order"] = (0, int(i))
        rows.append(row)
    return rows


def check_against_oracle(bench, context: dict, found: dict) -> None:
    """Runs inside the benchmark, right after it populated the store."""
    from parity.registry.online.writer import wall_clock_us

    reader, defs, events = context["reader"], context["defs"], context["events"]
    mismatches, checked = [], 0
    for view_name, key in ((bench.USER_VIEW, "user_id"), (bench.VIDEO_VIEW, "video_id")):
        view = defs.view(view_name)
        ids = events.entity(view_name)
        counts = np.bincount(ids)
        rng = np.random.default_rng(3)
        sample = [int(np.argmax(counts))] + [int(x) for x in ids[rng.integers(0, len(ids), 3)]] + [10**9]
        sample = list(dict.fromkeys(sample))
        now = wall_clock_us()
        t = datetime(1970, 1, 1) + timedelta(microseconds=now)  # exact (no float seconds)
        result = reader.get_online_features({key: sample}, features=[f"{view_name}:*"], now=now)
        for row, entity_id in enumerate(sample):
            rows = oracle_rows(bench, events, view_name, entity_id)
            for feature in view.features:
                want = oracle.feature_value(view, feature, rows, {key: entity_id}, t)
                got = result.values[f"{view_name}__{feature.name}"][row]
                status = result.status[f"{view_name}__{feature.name}"][row]
                checked += 1
                if not oracle.close(want, got):
                    mismatches.append((view_name, entity_id, feature.name, want, got))
                # the store holds tiles for an entity with events inside its view's longest window
                longest = timedelta(days=7) if view_name == bench.USER_VIEW else timedelta(hours=24)
                expected = "ok" if any(t - longest <= r["_ts"] < t for r in rows) else None
                if entity_id == 10**9:
                    expected = "missing"
                if expected is not None and status != expected:
                    mismatches.append((view_name, entity_id, feature.name, f"status {expected}", status))
    found["checked"], found["mismatches"] = checked, mismatches


@pytest.mark.slow
def test_quick_benchmark_runs_and_its_data_is_right(tmp_path):
    bench = load_bench()
    found: dict = {}
    results_path = tmp_path / "online.json"
    code = bench.main([*TINY, "--results", str(results_path)],
                      on_populated=lambda context: check_against_oracle(bench, context, found))
    assert code == 0

    # the benchmark's sample of lookups equals the oracle over the generated events
    assert found["checked"] >= 2 * 50 + 2 * 20, found  # at least the busiest and an absent entity per view
    assert found["mismatches"] == [], found["mismatches"][:10]

    results = json.loads(results_path.read_text())
    for key in ("date_utc", "machine", "versions", "source", "command"):
        assert results[key], key
    assert results["source"]["commit"]
    assert results["verification"]["ok"] and results["verification"]["values"] > 0
    assert results["verification"]["tiles"]["tiles"] > 0

    def has_percentiles(block: dict) -> None:
        assert block["p50_ms"] > 0 and block["p99_ms"] >= block["p50_ms"], block

    for shape in ("single", "ranking"):
        has_percentiles(results["inprocess"][shape])
        has_percentiles(results["feast"][shape])
        assert results["feast_ratio_p99"][shape] > 0
    has_percentiles(results["http"]["single"]["latency_from_scheduled"])
    has_percentiles(results["http"]["single"]["latency_from_sent"])
    has_percentiles(results["http"]["ranking"]["latency"])
    has_percentiles(results["http"]["ranking_c1"]["latency"])
    has_percentiles(results["http"]["single_capacity"]["latency"])
    extra = [k for k in results["http"] if k.startswith("single_at_")]
    assert extra, list(results["http"])
    has_percentiles(results["http"][extra[0]]["latency_from_scheduled"])
    assert results["http"]["single"]["errors"] == 0, results["http"]["single"]["error_kinds"]
    assert results["http"]["ranking"]["errors"] == 0, results["http"]["ranking"]["error_kinds"]
    assert results["inprocess"]["single"]["features"] == 50
    assert results["inprocess"]["ranking"]["features"] == 36
    assert results["inprocess"]["ranking"]["entity_rows"] == bench.RANKING_VIDEOS
    assert results["inprocess"]["single"]["redis_reply_bytes_per_lookup"] > 0
    assert set(results["verdicts"]) >= {"inprocess_single_p99", "http_single_p99", "http_ranking_p99",
                                        "feast_ratio_ranking", "data_verified"}
    for phase in (results["inprocess"]["single"], results["http"]["single"]):
        assert phase["cpu"]["cpu_s"]["redis_server"] is not None
    assert results["http"]["single"]["cpu"]["cpu_s"]["server"] is not None

"""Smoke test of the stream benchmark (benchmarks/bench_stream.py): its ``--quick`` mode end to end
(private redis-server and broker, ``parity init`` + ``apply``, engine subprocesses, the producer
subprocess, probes and the poller).

Not a performance assertion: it checks that every phase ran to completion and that the JSON
carries positive rates, the phase split, and a non-empty list of probe latencies.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

MODULE_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_stream.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("parity_bench_stream_smoke", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_runs_every_phase(tmp_path):
    bench = load_bench()
    results_path = tmp_path / "stream.json"
    assert bench.main(["--quick", "--results", str(results_path)]) == 0

    results = json.loads(results_path.read_text())
    for key in ("date_utc", "machine", "versions", "source", "command", "setup"):
        assert results[key], key
    assert results["preproduce"]["events"] == results["args"]["events"] > 0
    total = results["preproduce"]["events"]

    for key in ("consume_1000", "consume_1000_orjson_loads"):
        block = results["raw_ceiling"][key]
        assert block["complete"] and block["events_per_s"] > 0, block

    for key, processes in (("throughput", 1), ("scaling_two_processes", 2)):
        block = results[key]
        assert block["processes"] == processes
        assert block["complete"], block["checks"]
        assert block["events"] == total and block["events_per_s"] > 0
        assert block["checks"]["offline_log_rows"]["video_events"] + block["checks"]["offline_log_rows"][
            "follow_events"] == total
        assert set(block["phase_seconds"]) >= {"consume", "decode", "evaluate", "apply", "land"}
        assert block["phase_seconds"]["apply"] > 0 and block["phase_seconds"]["land"] > 0
        assert len(block["per_process"]) == processes
        assert sum(p["consumed"] for p in block["per_process"]) == total
        assert block["cpu"]["cpu_s"]["redis_server"] is not None and block["cpu"]["cpu_s"]["broker"] is not None
    two = results["scaling_two_processes"]["per_process"]
    assert all(p["consumed"] > 0 for p in two), two  # each process got partitions
    assert results["scaling"]["speedup"] > 0

    fresh = results["freshness"]
    assert fresh["producer"]["sent"] > 0 and fresh["producer"]["errors"] == 0
    assert fresh["probes"]["sent"] > 0 and fresh["probes"]["never_visible"] == 0, fresh["probes"]
    assert fresh["latencies_ms"] and all(x > 0 for x in fresh["latencies_ms"])
    lat = fresh["latency_under_load"]
    assert lat["count"] == len(fresh["latencies_ms"]) and lat["p99_ms"] >= lat["p50_ms"] > 0
    engine = fresh["engine_applied_minus_ingested"]
    assert engine["events_in_load_window"] > 0 and engine["p50_ms"] > 0
    assert set(results["verdicts"]) == {"throughput", "freshness_p99"}

"""The Feast online baseline (benchmarks/feast_online.py) returns exactly the values it wrote.

A private redis-server runs on a free port for this module. Each populate mode gets its own
Redis database, so a value read back can only come from that mode's own writes.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

MODULE_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "feast_online.py"
N_USERS, N_VIDEOS = 50, 600
# Feast's DuckDB offline store (through ibis) calls a DuckDB method DuckDB 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")


def _load_module():
    spec = importlib.util.spec_from_file_location("parity_bench_feast_online", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fo = _load_module()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("these tests need redis-server on PATH (Debian: apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not start (exit code {proc.poll()})")
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module", params=[("write", 0, 11), ("materialize", 1, 12)],
                ids=lambda p: p[0])
def baseline(request, redis_port, tmp_path_factory):
    populate, db, seed = request.param
    workdir = tmp_path_factory.mktemp(f"feast-{populate}")
    b = fo.setup_feast(f"redis://127.0.0.1:{redis_port}/{db}", workdir, N_USERS, N_VIDEOS, seed=seed,
                       populate=populate, batch_rows=256)
    yield b
    b.close()


def _assert_column(got: list, expected: np.ndarray, name: str) -> None:
    assert len(got) == len(expected), name
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g is not None, f"{name}[{i}] is missing"
        if expected.dtype.kind == "i":
            assert isinstance(g, int) and g == int(e), f"{name}[{i}]: {g!r} != {int(e)}"
        else:
            assert isinstance(g, float) and g == float(e), f"{name}[{i}]: {g!r} != {float(e)!r}"


def test_single_returns_the_written_user_values(baseline):
    for user_id in (1, 17, N_USERS):
        got = baseline.lookup("single", user_id, [])
        expected = fo.feature_values("user_stats", [user_id], baseline.seed)
        assert set(got) == {"user_id", *expected}
        assert got["user_id"] == [user_id]
        assert len(expected) == 50
        for name, values in expected.items():
            _assert_column(got[name], values, name)


def test_ranking_returns_the_written_video_and_user_values(baseline):
    rng = np.random.default_rng(3)
    user_id = 23
    video_ids = (rng.choice(N_VIDEOS, size=500, replace=False) + 1).tolist()
    got = baseline.lookup("ranking", user_id, video_ids)

    videos = fo.feature_values("video_stats", video_ids, baseline.seed)
    user = fo.feature_values("user_stats", [user_id], baseline.seed)
    user_requested = [ref.split(":", 1)[1] for ref in baseline.features["ranking"] if ref.startswith("user_stats:")]
    assert len(videos) == 20 and len(user_requested) == fo.DEFAULT_RANKING_USER_FEATURES
    assert set(got) == {"user_id", "video_id", *videos, *user_requested}
    assert got["video_id"] == video_ids
    assert got["user_id"] == [user_id] * 500
    for name, values in videos.items():
        _assert_column(got[name], values, name)
    for name in user_requested:
        _assert_column(got[name], np.repeat(user[name], 500), name)


def test_ids_outside_the_populated_range_are_missing(baseline):
    got = baseline.lookup("ranking", N_USERS + 1, [1, N_VIDEOS + 1], features=["video_stats:v_i64_00",
                                                                            "user_stats:u_f64_01"])
    assert got["v_i64_00"][0] == int(fo.feature_values("video_stats", [1], baseline.seed)["v_i64_00"][0])
    assert got["v_i64_00"][1] is None
    assert got["u_f64_01"] == [None, None]


def test_measure_reports_latency_figures(baseline):
    result = baseline.measure("ranking", iterations=3, warmup=1)
    assert result["calls"] == 3 and result["entity_rows"] == 500 and result["features"] == 36
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert math.isclose(result["rps"], 1e3 / result["mean_ms"], rel_tol=1e-9)
    single = baseline.measure("single", iterations=5, warmup=1)
    assert single["calls"] == 5 and single["features"] == 50


def test_connection_string_from_url():
    assert fo.redis_connection_string("redis://127.0.0.1:6390/2") == "127.0.0.1:6390,db=2"
    assert fo.redis_connection_string("redis://localhost") == "localhost:6379"
    assert fo.redis_connection_string("rediss://u:p%40ss@h:1/0") == "h:1,db=0,username=u,password=p@ss,ssl=true"
    with pytest.raises(ValueError):
        fo.redis_connection_string("http://h:1")

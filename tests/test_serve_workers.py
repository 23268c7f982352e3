"""``parity serve`` with several worker processes (``serving/server.py``): each forked worker
keeps its own serving cache, kept exact by its own invalidation tracking; the supervisor
hands new connections to the workers in turn, and starts a worker
that dies again.

A real Redis, the real supervisor in a subprocess, real HTTP on fresh connections (each
lands on one worker or the other); every answer is compared with counts computed here from
the events written, before and after a write that changes what the workers keep. ``/metrics``
is scraped on fresh connections (so from each worker in turn) and must report every worker's
requests, those of a worker that was killed included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from harness_paths import child_pids, kill_a_worker, stop
from http_fixtures import PROJECT, write_tiles
from parity.embedded import free_port

TESTS = Path(__file__).resolve().parent
VIDEOS = [f"v{i}" for i in range(12)]  # at least the reader's cache_min_entities: the cache is used
SERVER = f"""
import os, sys
sys.path.insert(0, {str(TESTS)!r})
from pathlib import Path
from http_fixtures import DEFS, PROJECT
from parity.registry.config import FeatureStoreConfig
from parity.serving.server import serve
serving = {{"feature_log": {{"path": sys.argv[4]}}}} if len(sys.argv) > 4 else {{}}
serve(FeatureStoreConfig(project=PROJECT, root=Path(sys.argv[3]), serving=serving), sys.argv[1], DEFS, "127.0.0.1",
      int(sys.argv[2]), int(os.environ.get("TEST_WORKERS", "2")))
"""


def _rows(plays: dict[str, int], at: datetime) -> list[dict]:
    rows = []
    for video, n in plays.items():
        for i in range(n):
            rows.append({"user_id": 1, "video_id": video, "watch_s": 1.0, "liked": i % 2 == 0,
                         "ts": at + timedelta(seconds=i)})
    return rows


def _answers(url: str, connections: int) -> list[tuple[list, list]]:
    out = []
    for _ in range(connections):  # a fresh connection each: in turn to each worker
        with httpx.Client(base_url=url, timeout=10) as client:
            body = client.post("/v1/features", json={"features": ["video_stats:plays_1h", "video_stats:likes_24h"],
                                                     "entities": {"video_id": VIDEOS}}).raise_for_status().json()
            features = body["features"]
            out.append((features["video_stats__plays_1h"]["values"], features["video_stats__plays_1h"]["status"]))
    return out


def _connections(pid: int, port: int) -> set[int]:
    """Socket inodes of process ``pid`` that are established TCP connections to local ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], int(fields[9])
            if local_port == port and state == "01" and inode in inodes:  # 01: ESTABLISHED
                found.add(inode)
    return found


def _expected(plays: dict[str, int]) -> tuple[list, list]:
    return [plays.get(v, 0) for v in VIDEOS], ["stale" if v in plays else "missing" for v in VIDEOS]


def test_two_workers_each_keep_an_exact_cache(redis, redis_server, tmp_path):
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    plays = {"v0": 3, "v1": 1, "v2": 5}
    rows = _rows(plays, now - timedelta(minutes=30))
    write_tiles(redis, rows)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, redis_server.url, str(port), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200 and len(child_pids(server.pid)) == 2:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else ""
            time.sleep(0.1)
        workers = child_pids(server.pid)
        time.sleep(1.0)  # the second worker may still be building its app
        assert _answers(url, 24) == [_expected(plays)] * 24  # every worker's cache now keeps these
        # a late event for v0 and a first one for v3 (30 and 10 minutes ago): both workers must see them
        plays = {"v0": 4, "v1": 1, "v2": 5, "v3": 2}
        rows += _rows({"v0": 1}, now - timedelta(minutes=30, seconds=-30)) + _rows({"v3": 2}, now - timedelta(minutes=10))
        write_tiles(redis, rows)
        assert _answers(url, 24) == [_expected(plays)] * 24
        assert child_pids(server.pid) == workers  # no worker died meanwhile
        # four keep-alive connections opened at once: two on each worker; closed, and four more
        # opened at once (before the workers may have noticed the closes): two on each again
        for _pool in range(2):
            clients = [httpx.Client(base_url=url, timeout=10) for _ in range(4)]
            try:
                for client in clients:
                    assert client.get("/v1/health").status_code == 200
                assert sorted(len(_connections(pid, port)) for pid in workers) == [2, 2]
            finally:
                for client in clients:
                    client.close()
        kill_a_worker(server, workers[0])  # a worker dies: another takes its place
        assert _answers(url, 8) == [_expected(plays)] * 8
        workers = child_pids(server.pid)
    finally:
        err = stop(server)
    assert server.returncode == 0, err
    assert "Traceback" not in err, err
    assert err.count("starting another") == 1, err  # the one killed, nothing else
    for pid in workers:  # the workers stopped with the supervisor
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def _start(redis_server, tmp_path: Path, *extra: str, workers: int = 2,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``parity serve`` with ``workers`` in a subprocess (its temporary files under
    tmp_path/tmp), once every worker answers."""
    port = free_port()
    (tmp_path / "tmp").mkdir()
    server = subprocess.Popen([sys.executable, "-c", SERVER, redis_server.url, str(port), str(tmp_path), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path / "tmp"), "TEST_WORKERS": str(workers),
                                   **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if len(child_pids(server.pid)) == (workers if workers > 1 else 0) and all(
                    httpx.get(f"{url}/v1/health", timeout=1).status_code == 200 for _ in range(2)):
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(server.communicate()[1])
        time.sleep(0.1)


def _metric(text: str, name: str) -> float:
    found = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert len(found) == 1, (name, text)
    return float(found[0].rsplit(" ", 1)[1])


def _scrapes(url: str, n: int) -> list[str]:
    out = []
    for _ in range(n):  # a fresh connection each: each worker in turn answers the scrape
        with httpx.Client(base_url=url, timeout=10) as client:
            out.append(client.get("/metrics").raise_for_status().text)
    return out


def test_metrics_count_every_worker(redis, redis_server, tmp_path):
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    write_tiles(redis, _rows({"v0": 3, "v1": 1}, now - timedelta(minutes=30)))
    server, url = _start(redis_server, tmp_path, str(tmp_path / "log"))
    features = 'parity_requests_total{code="200",endpoint="/v1/features"}'
    body = {"features": ["video_stats:plays_1h"], "entities": {"video_id": VIDEOS}}
    sent = 0
    try:
        workers = child_pids(server.pid)

        def send(connections: int, per_connection: int) -> None:
            nonlocal sent
            for _ in range(connections):  # each connection to the next worker, its requests kept alive on it
                with httpx.Client(base_url=url, timeout=10) as client:
                    for _ in range(per_connection):
                        client.post("/v1/features", json=body).raise_for_status()
                        sent += 1

        def check(scrapes: list[str]) -> None:
            for text in scrapes:
                assert _metric(text, features) == sent
                assert _metric(text, "parity_lookup_seconds_count") == sent
                assert _metric(text, 'parity_lookup_seconds_bucket{le="+Inf"}') == sent
                assert _metric(text, "parity_lookup_entities_total") == sent * len(VIDEOS)
                assert _metric(text, "parity_fast_path_answers_total") == sent
                assert _metric(text, "parity_stream_metrics_available") == 1  # read once, by the worker scraped
                assert _metric(text, "parity_feature_log_dropped_total") == 0

        send(5, 3)
        first = _scrapes(url, 4)
        check(first)
        scraped = [_metric(text, 'parity_requests_total{code="200",endpoint="/metrics"}') for text in first[1:]]
        assert scraped == [1, 2, 3]  # each scrape counted (after it answered), whichever worker took it
        # the feature log's rows are counted by whichever worker wrote them (each flushes within 5 s)
        deadline = time.monotonic() + 20
        while _metric(_scrapes(url, 1)[0], "parity_feature_log_written_rows_total") != sent * len(VIDEOS):
            assert time.monotonic() < deadline, _scrapes(url, 1)[0]
            time.sleep(0.5)
        kill_a_worker(server, workers[0])  # its counts must stay in the totals
        check(_scrapes(url, 4))
        send(3, 2)
        check(_scrapes(url, 4))
    finally:
        err = stop(server)
    assert server.returncode == 0, err
    assert "Traceback" not in err, err
    assert list((tmp_path / "tmp").iterdir()) == []  # the metrics files were removed


def test_one_worker_counts_its_own_requests_even_in_a_multiprocess_environment(redis, redis_server, tmp_path):
    """``--workers 1`` keeps its own registry; ``PROMETHEUS_MULTIPROC_DIR`` set by whoever
    started it changes where prometheus_client keeps values, not what a scrape reports."""
    write_tiles(redis, _rows({"v0": 3}, datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=30)))
    outside = tmp_path / "outside"
    outside.mkdir()
    server, url = _start(redis_server, tmp_path, workers=1, env={"PROMETHEUS_MULTIPROC_DIR": str(outside)})
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(7):
                client.post("/v1/features", json={"features": ["video_stats:plays_1h"],
                                                  "entities": {"video_id": VIDEOS}}).raise_for_status()
        for text in _scrapes(url, 3):
            assert _metric(text, 'parity_requests_total{code="200",endpoint="/v1/features"}') == 7
            assert _metric(text, "parity_lookup_entities_total") == 7 * len(VIDEOS)
            assert _metric(text, "parity_stream_metrics_available") == 1
    finally:
        err = stop(server)
    assert server.returncode == 0, err

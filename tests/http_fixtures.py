"""Definitions, tiles and a real uvicorn server for the HTTP API tests.

Three entities (an int key, a string key, a composite of both), a feature service, every
status (``ok``, ``missing``, ``expired`` through a ttl, ``stale`` through a freshness SLO
without a watermark), a default, a timestamp-valued and a list-valued feature. Tiles are
written the way the stream engine writes them: events folded by ``TileBuilder`` and
upserted through ``OnlineWriter`` (writer clock before every event, so the tail is whole).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Iterator

import httpx
import uvicorn

from parity.embedded import free_port
from parity.registry.durations import to_micros
from parity.registry.models import Definitions, Entity, Feature, FeatureService, FeatureView, Source
from parity.registry.online.accumulate import EventEvaluator, TileBuilder
from parity.registry.online.writer import OnlineWriter

PROJECT = "t"
BASE = datetime(2026, 1, 10, 10, 0, 0)
NOW = to_micros(BASE + timedelta(hours=2, minutes=3))

SOURCE = Source(name="ev", schema={"user_id": "int64", "video_id": "string", "watch_s": "float64", "liked": "bool",
                                   "ts": "timestamp"}, timestamp_field="ts")
DEFS = Definitions(
    entities=[Entity(name="user", join_keys={"user_id": "int64"}),
              Entity(name="video", join_keys={"video_id": "string"}),
              Entity(name="pair", join_keys={"user_id": "int64", "video_id": "string"})],
    sources=[SOURCE],
    feature_views=[
        FeatureView(name="user_stats", entity="user", source="ev", owner="t", features=[
            Feature(name="plays_1h", agg="count", window="1h"),
            Feature(name="watch_sum_24h", agg="sum", column="watch_s", window="24h"),
            Feature(name="last_video", agg="last", column="video_id", ttl="30m", default="none"),
            Feature(name="last_seen", agg="last", column="ts", window="24h"),
            Feature(name="recent_videos", agg="last_k", column="video_id", k=3, window="1h")]),
        FeatureView(name="video_stats", entity="video", source="ev", owner="t", freshness_slo="1h", features=[
            Feature(name="plays_1h", agg="count", window="1h"),
            Feature(name="likes_24h", agg="count", window="24h", where="liked")]),
        FeatureView(name="pair_stats", entity="pair", source="ev", owner="t", features=[
            Feature(name="plays_24h", agg="count", window="24h")]),
    ],
    feature_services=[FeatureService(name="ranking", features=["user_stats:*", "video_stats:*",
                                                               "pair_stats:plays_24h"])])


def event_rows() -> list[dict]:
    """Users 1-3 and videos v0-v4 over two hours; user 3's newest event (11:17) is 46 min
    before NOW, so its ``last_video`` (ttl 30m) is expired."""
    rows = []
    for i in range(18):
        rows.append({"user_id": 1 + i % 3, "video_id": f"v{i % 5}", "watch_s": i / 4, "liked": i % 2 == 0,
                     "ts": BASE + timedelta(minutes=7 * i)})
    for i in (14, 17):
        rows[i]["user_id"] = 1
    return rows


def write_tiles(redis, rows: list[dict] | None = None, project: str = PROJECT, defs: Definitions = DEFS) -> None:
    """Fold ``rows`` into tiles and upsert them (absolute values) in one batch."""
    rows = event_rows() if rows is None else rows
    writer = OnlineWriter(redis, project, defs, clock=lambda: to_micros(BASE - timedelta(days=1)))
    batch = writer.batch()
    for view in defs.feature_views:
        evaluator, builder = EventEvaluator(defs, view, writer.layout(view)), TileBuilder(writer.layout(view))
        events = []
        for offset, row in enumerate(rows):
            event = evaluator.evaluate(row, 0, offset)
            if event is not None:
                builder.add(event)
                events.append(event)
        for (entity, resolution, start), value in builder.tiles.items():
            batch.put_tile(view, entity, resolution, start, value)
        for entity, value in builder.latest.items():
            batch.put_latest(view, entity, value)
        batch.add_events(view, events)
    batch.commit()


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server (httptools, uvloop) on a free port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http="httptools",
                                           loop="uvloop"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class AsgiClient:
    """A synchronous httpx client of an ASGI app (``httpx.ASGITransport``, no socket)."""

    def __init__(self, app, headers: dict[str, str] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://parity.test",
                                         headers=headers)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, path, **kwargs))

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()

    def __enter__(self) -> "AsgiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

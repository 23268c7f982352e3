"""The stream engine's freshness figures on ``/metrics`` and in ``parity status``, through a
real broker and a real Redis.

A known number of good events and of bad ones per dead-letter reason go to a topic of two
partitions; the engine drains it in small batches. Then a scrape of the HTTP app over the
same Redis shows exactly those counts (events, dead letters by reason, the latency
histogram's count = good events), the tiles the engine wrote, no consumer lag, and sane
per-view gauges; ``status()`` agrees. With Redis stopped, a scrape still answers 200 without
the stream families and counts the failure.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_fixtures import AsgiClient
from parity.embedded import RedisServer, redis_client
from parity.registry.offline_log import OfflineLog
from parity.serving.app import create_app
from parity.serving.lookup import OnlineReader
from parity.serving.status import render, status
from parity.serving.stream_metrics import cumulative_buckets
from parity.streaming.decode import REASONS
from parity.streaming.engine import StreamEngine
from parity.streaming.kafka import ensure_topics, producer_config
from test_stream_engine import BAD, defs_on

PROJECT = "sm"
GOOD = 40
BAD_COUNTS = {reason: i + 1 for i, reason in enumerate(REASONS)}  # 1, 2, ... per reason: a mix-up shows


def scrape(http) -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed: ``{(sample name, sorted labels): value}``."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def named(samples: dict, name: str) -> dict[tuple, float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture(scope="module")
def drained(kafka_broker, redis_server, tmp_path_factory):
    """Produce GOOD good events and BAD_COUNTS bad ones to two partitions, drain them with the
    engine; yields (redis client, definitions, engine stats, messages per partition)."""
    from confluent_kafka import Producer

    client = redis_client(redis_server.url)
    client.flushall()
    topic = f"ev-{tmp_path_factory.mktemp('metrics').name}"
    ensure_topics(kafka_broker.bootstrap_servers, {topic: 2})
    base = defs_on(topic)
    views = [v.model_copy(update={"freshness_slo": "1h"}) if v.name == "u" else v for v in base.feature_views]
    defs = base.model_copy(update={"feature_views": views})
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=10)
    values = [json.dumps({"user_id": i % 5, "kind": "ab"[i % 2], "amount": i, "score": i / 4,
                          "ts": (start + timedelta(seconds=i)).isoformat() + "Z"}).encode() for i in range(GOOD)]
    bad = {reason: value for value, reason in BAD}
    values += [bad[reason] for reason, count in BAD_COUNTS.items() for _ in range(count)]
    random.Random(7).shuffle(values)
    producer = Producer(producer_config(kafka_broker.bootstrap_servers))
    per_partition = {0: 0, 1: 0}
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % 2)
        per_partition[i % 2] += 1
    producer.flush(10)
    engine = StreamEngine(defs, project=PROJECT, redis=client, bootstrap=kafka_broker.bootstrap_servers,
                          offline_log=OfflineLog(tmp_path_factory.mktemp("log")), group_id=f"g-{topic}",
                          max_batch=7, flush_interval=0.05)
    stats = engine.run(idle_exit=1.5)
    assert stats.consumed == GOOD + sum(BAD_COUNTS.values())
    assert dict(stats.dead_letters) == BAD_COUNTS
    yield client, defs, stats, per_partition
    client.close()


def test_metrics_count_what_was_sent(drained):
    client, defs, stats, per_partition = drained
    reader = OnlineReader(client, PROJECT, defs)
    with AsgiClient(create_app(reader, tokens=[], require_auth=False, project=PROJECT)) as http:
        samples = scrape(http)
        again = scrape(http)
    assert samples[("parity_stream_metrics_available", ())] == 1
    assert samples[("parity_stream_events_total", ())] == GOOD + sum(BAD_COUNTS.values())
    assert samples[("parity_stream_batches_total", ())] == stats.batches > 1
    assert samples[("parity_stream_tiles_written_total", ())] == stats.tiles > 0
    assert named(samples, "parity_stream_dead_letters_total") == {
        (("reason", r),): float(n) for r, n in BAD_COUNTS.items()}

    # the histogram: cumulative buckets ending in +Inf, count = good events, no made-up _sum
    buckets = named(samples, "parity_stream_applied_minus_ingested_seconds_bucket")
    ordered = sorted(((float(dict(labels)["le"]), value) for labels, value in buckets.items()))
    assert ordered[-1] == (float("inf"), GOOD) and len(ordered) == 14
    assert all(a[1] <= b[1] for a, b in zip(ordered, ordered[1:]))
    assert samples[("parity_stream_applied_minus_ingested_seconds_count", ())] == GOOD
    assert not named(samples, "parity_stream_applied_minus_ingested_seconds_sum")

    # drained: no consumer lag; the applied offsets are the partitions' last ones
    lag = named(samples, "parity_stream_consumer_lag")
    applied = named(samples, "parity_stream_applied_offset")
    assert {dict(k)["partition"] for k in lag} == {"0", "1"}
    assert all(v == 0 for v in lag.values()), lag
    assert {dict(k)["partition"]: v for k, v in applied.items()} == {
        str(p): n - 1 for p, n in per_partition.items()}

    # per view: both online views; "u" has a 1h SLO and is fresh, "o" has none
    ingestion = named(samples, "parity_view_ingestion_lag_seconds")
    event_time = named(samples, "parity_view_event_time_lag_seconds")
    assert set(ingestion) == set(event_time) == {(("view", "u@1"),), (("view", "o@1"),)}
    assert all(0 <= v < 60 for v in ingestion.values()), ingestion  # watermarked at the drain's last batch
    assert all(9 * 60 - GOOD < v < 30 * 60 for v in event_time.values()), event_time  # newest event: ~9 min ago
    assert named(samples, "parity_view_stale") == {(("view", "u@1"),): 0, (("view", "o@1"),): 0}
    assert named(samples, "parity_view_freshness_slo_seconds") == {(("view", "u@1"),): 3600}

    # a second scrape reads Redis again: the lags are taken at scrape time
    assert again[("parity_stream_events_total", ())] == samples[("parity_stream_events_total", ())]
    assert again[("parity_view_ingestion_lag_seconds", (("view", "u@1"),))] >= ingestion[(("view", "u@1"),)]
    assert not named(again, "parity_errors_total")


def test_status_report_has_end_offsets_and_no_lag_after_the_drain(drained):
    client, defs, stats, per_partition = drained
    report = status(client, PROJECT, defs, sample=0)
    partitions = {p["partition"]: p for p in report["partitions"]}
    assert set(partitions) == {0, 1}
    for number, p in partitions.items():
        assert p["applied_offset"] == p["landed_offset"] == per_partition[number] - 1
        assert p["end_offset"] == p["applied_offset"] + 1
        assert p["consumer_lag"] == 0
    engine = report["engine"]
    assert engine["events"] == GOOD + sum(BAD_COUNTS.values()) and engine["events_per_s"] is None
    assert engine["tiles"] == stats.tiles and engine["batches"] == stats.batches
    assert engine["dead_letters"] == BAD_COUNTS
    assert sum(engine["applied_minus_ingested_buckets"].values()) == GOOD
    json.dumps(report)  # what `parity status --json` prints
    table = render(report)
    assert "engine:" in table and f"{stats.tiles:,} tiles written" in table
    header, *rows = table.splitlines()[-3:]
    assert header.split()[-1] == "lag" and all(row.split()[-1] == "0" for row in rows), table


def test_unknown_end_offset_is_no_lag_figure(redis):
    """Offsets stored without the engine (a bootstrap handoff): applied, lag unknown."""
    from parity.registry.online.keys import progress_key

    redis.hset(progress_key(PROJECT), mapping={"offset/ev/0": 41, "landed/ev/0": 41})
    report = status(redis, PROJECT, defs_on("ev"), sample=0)
    assert report["partitions"] == [{"topic": "ev", "partition": 0, "applied_offset": 41, "landed_offset": 41,
                                     "end_offset": None, "consumer_lag": None}]
    assert render(report).splitlines()[-1].split()[-1] == "-"
    with AsgiClient(create_app(OnlineReader(redis, PROJECT, defs_on("ev")), tokens=[], require_auth=False,
                               project=PROJECT)) as http:
        samples = scrape(http)
    assert named(samples, "parity_stream_applied_offset") == {(("partition", "0"), ("topic", "ev")): 41}
    assert not named(samples, "parity_stream_consumer_lag")
    assert samples[("parity_stream_events_total", ())] == 0
    assert samples[("parity_stream_applied_minus_ingested_seconds_count", ())] == 0
    assert named(samples, "parity_view_stale") == {(("view", "u@1"),): 0, (("view", "o@1"),): 0}
    assert not named(samples, "parity_view_ingestion_lag_seconds")  # no watermark yet: no figure


def test_scrape_with_redis_stopped_is_200_without_the_stream_families():
    server = RedisServer.start()
    try:
        client = redis_client(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        app = create_app(OnlineReader(client, PROJECT, defs_on("ev")), tokens=[], require_auth=False,
                         project=PROJECT)
        with AsgiClient(app) as http:
            assert scrape(http)[("parity_stream_metrics_available", ())] == 1
            server.stop()
            response = http.get("/metrics")
            assert response.status_code == 200, response.text
            assert "Traceback" not in response.text
            samples = scrape(http)
    finally:
        server.stop()
    assert samples[("parity_stream_metrics_available", ())] == 0
    assert samples[("parity_errors_total", (("type", "metrics_redis"),))] == 2  # both scrapes after the stop
    assert not [name for name, _labels in samples if name.startswith(("parity_stream_", "parity_view_"))
                and name != "parity_stream_metrics_available"]
    assert samples[("parity_requests_total", (("code", "200"), ("endpoint", "/metrics")))] >= 2


def test_cumulative_buckets():
    got = dict(cumulative_buckets({"0.005": 2, "1.0": 3, "inf": 1, "7.5": 4}))
    assert list(got)[-1] == "+Inf" and got["+Inf"] == 10
    assert got["0.005"] == 2 and got["0.5"] == 2 and got["1.0"] == 5 and got["5.0"] == 5
    assert got["7.5"] == 9 and got["60.0"] == 9  # a bound the engine no longer uses still counts
    assert list(got) == sorted(got, key=float)

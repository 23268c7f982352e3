"""A view's watermark is held back by its slowest partition (the ``stale`` rule's input).

Partition 1 holds old messages (Kafka timestamps ten minutes back) the engine has not
applied yet while it applies partition 0's fresh ones: the view must not claim to be
complete past partition 1's backlog. The engine is driven batch by batch (``process``)
with messages read from a real broker, after an assignment of both partitions.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from batch_fixtures import BASE
from parity.registry.offline_log import OfflineLog
from parity.registry.online.keys import meta_key, view_prefix
from parity.serving.status import status
from parity.streaming.engine import StreamEngine
from parity.streaming.kafka import consumer_config, ensure_topics, producer_config
from test_stream_engine import defs_on

NOW_MS = int(time.time() * 1000)


class _Assigner:
    def assign(self, partitions):
        pass


def _read(bootstrap, topic, partition, count):
    consumer = Consumer(consumer_config(bootstrap, f"read-{topic}-{partition}"))
    consumer.assign([TopicPartition(topic, partition, 0)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        got += [m for m in consumer.consume(count, 0.5) if m.error() is None]
    consumer.close()
    assert len(got) == count
    return got


def test_a_lagging_partition_holds_the_watermark_back(kafka_broker, redis, tmp_path, unique_topic):
    redis.flushall()
    topic = unique_topic("wm")
    defs = defs_on(topic)
    bootstrap = kafka_broker.bootstrap_servers
    ensure_topics(bootstrap, {topic: 2})
    producer = Producer(producer_config(bootstrap))
    old_ms, new_ms = NOW_MS - 600_000, NOW_MS - 1_000
    for i in range(5):
        body = f'{{"user_id": {i + 1}, "ts": "{BASE.isoformat()}Z", "amount": 1}}'.encode()
        producer.produce(topic, value=body, partition=1, timestamp=old_ms + i)
        producer.produce(topic, value=body, partition=0, timestamp=new_ms + i)
    producer.flush(10)
    now_us = NOW_MS * 1000
    engine = StreamEngine(defs, project="w", redis=redis, bootstrap=bootstrap, offline_log=OfflineLog(tmp_path),
                          clock=lambda: now_us)
    engine._on_assign(_Assigner(), [TopicPartition(topic, 0), TopicPartition(topic, 1)])

    def watermark(view_name="u"):
        view = defs.view(view_name)
        raw = redis.hget(meta_key(view_prefix("w", view.name, view.version)), "watermark")
        return None if raw is None else int(raw)

    engine.process(_read(bootstrap, topic, 0, 5), caught_up=False)  # partition 1 not consumed yet
    assert watermark() == 0 and watermark("o") == 0
    report = {v["view"]: v for v in status(redis, "w", defs, sample=0)["views"]}
    assert report["u@1"]["ingestion_lag_s"] > 600

    engine.process(_read(bootstrap, topic, 1, 3), caught_up=False)  # two old messages still unapplied
    assert watermark() == (old_ms + 2) * 1000

    engine.process(_read(bootstrap, topic, 1, 5)[3:], caught_up=True)  # every partition drained
    assert watermark() == now_us and watermark("o") == now_us

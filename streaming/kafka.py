"""Kafka plumbing shared by the streaming side: topic creation and client settings.

confluent-kafka is imported inside the functions only, so ``import parity`` (and
``import parity.streaming.kafka``) never loads it.

Measured on the embedded broker (Tansu, memory storage) with confluent-kafka 2.16, 2 cores:

- a consumer group's first assignment waits about ``session.timeout.ms / 2`` (the broker
  holds the JoinGroup that long for other members): ~23 s with librdkafka's default 45 s,
  ~3 s with the 6 s of :func:`consumer_config`. ``assign()`` of explicit partitions joins
  no group and fetches at once; commits of explicit offsets work either way;
- reading 200k stored messages of ~180 bytes (8 partitions): ~0.55M msg/s with ``poll()``
  per message, ~0.85-0.93M msg/s with ``consume(num_messages=1000)`` (10000 is slower,
  ~0.7M), ~0.58M msg/s once each value is decoded with orjson. The fetch settings change
  these by less than the run-to-run noise: the Python loop, not the broker, is the limit;
- the broker's high watermark (ListOffsets "latest", ``get_watermark_offsets``) is the base
  offset of the partition's last record batch + 1, not its last offset + 1: after one batch
  of 1000 messages (offsets 0-999) it says 1. Message offsets themselves are right. So do
  not use high watermarks, consumer lag, ``auto.offset.reset=latest`` or partition EOF to
  decide anything; resume from stored offsets, start ``earliest``;
- memory storage keeps every message (about 290 bytes of broker memory per 180-byte
  message, no retention) and loses everything when the broker stops.
"""

from __future__ import annotations

import logging
import time

from parity.errors import ParityError

#: librdkafka's own log lines (connection refused, ...) go to this logger, not to stderr.
LOG = logging.getLogger("parity.kafka")
LOG.addHandler(logging.NullHandler())

BROKER_HINT = ("run `parity dev up` (the embedded broker), or set streaming.bootstrap_servers in "
               "feature_store.yaml to a running Kafka")


class StreamingError(ParityError):
    """A Kafka broker is unreachable, or refused an operation."""


def _import():
    try:
        import confluent_kafka
    except ImportError:
        raise StreamingError("confluent-kafka is not installed", hint="pip install 'parity[streaming]'") from None
    return confluent_kafka


def admin_client(bootstrap: str, **overrides):
    _import()
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "logger": LOG, **overrides})


def wait_for_broker(bootstrap: str, timeout: float = 10.0, admin=None):
    """The cluster metadata, once a broker at ``bootstrap`` answers; else :class:`StreamingError`."""
    kafka = _import()
    admin = admin or admin_client(bootstrap)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except kafka.KafkaException as exc:
        raise StreamingError(f"the Kafka broker at {bootstrap} did not answer within {timeout:g} s "
                             f"({exc.args[0].str() if exc.args else exc})", hint=BROKER_HINT) from None
    if not metadata.brokers:
        raise StreamingError(f"the Kafka cluster at {bootstrap} reports no broker", hint=BROKER_HINT)
    return metadata


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
    """Create the missing ``topics`` (name -> partitions, replication 1) and wait until the
    metadata shows every topic with a leader for each partition.

    A topic that already exists keeps its partitions (TOPIC_ALREADY_EXISTS is not an error).
    Returns the partition count of each topic as the broker reports it.
    """
    kafka = _import()
    from confluent_kafka.admin import NewTopic

    for name, partitions in topics.items():
        if int(partitions) < 1:
            raise StreamingError(f"topic {name}: partitions must be at least 1, got {partitions}")
    deadline = time.monotonic() + timeout
    admin = admin_client(bootstrap)
    metadata = wait_for_broker(bootstrap, timeout=min(timeout, 5.0), admin=admin)
    missing = [name for name in topics if name not in metadata.topics or metadata.topics[name].error is not None]
    if missing:
        futures = admin.create_topics([NewTopic(name, int(topics[name]), 1) for name in missing],
                                      request_timeout=timeout, operation_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except kafka.KafkaException as exc:
                error = exc.args[0]
                if error.code() != kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StreamingError(f"could not create topic {name} on {bootstrap}: {error.str()}",
                                         hint="check the broker's log, or create the topic yourself") from None
            except Exception as exc:  # noqa: BLE001 - a timeout of the future itself
                raise StreamingError(f"could not create topic {name} on {bootstrap}: {exc}",
                                     hint="check the broker's log, or create the topic yourself") from None
    while True:
        metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        found = {}
        for name in topics:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                break
            if any(p.leader < 0 or p.error is not None for p in topic.partitions.values()):
                break
            found[name] = len(topic.partitions)
        else:
            return found
        if time.monotonic() >= deadline:
            waiting = ", ".join(sorted(set(topics) - set(found)))
            raise StreamingError(f"topics {waiting} did not appear in the metadata of {bootstrap} "
                                 f"within {timeout:g} s", hint="check the broker's log")
        time.sleep(0.05)


def producer_config(bootstrap: str, **overrides) -> dict:
    """Producer settings tuned for throughput: batches of up to 10k messages / 1 MB, 5 ms
    linger, no compression, acks from every in-sync replica."""
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "batch.size": 1_048_576,
        "compression.type": "none",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 30_000,
        "logger": LOG,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group_id: str, **overrides) -> dict:
    """Consumer settings for the engine: manual commits of explicit offsets (nothing stored or
    committed automatically), earliest start, a short session (a group's first assignment
    waits half of it on the embedded broker), large fetches that return as soon as data is
    there. Pair with ``consume(num_messages=1000)``."""
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 100,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "queued.min.messages": 200_000,
        "logger": LOG,
    }
    config.update(overrides)
    return config

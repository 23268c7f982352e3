"""A real Redis server for the online-store tests: started once per session on a free port.

Never the Redis that may run on 6379: the fixture starts its own (`redis-server` on PATH).
"""

from __future__ import annotations

import pytest

from parity.embedded import RedisServer, redis_client


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server):
    client = redis_client(redis_server.url)
    client.flushall()
    yield client
    client.close()

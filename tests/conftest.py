# Shared test fixtures. PostgreSQL fixtures (postgres_server_url, postgres_database_url) live in
# tests/conftest_postgres.py, Redis ones in conftest_redis.py and the Kafka broker (kafka_broker) in
# conftest_kafka.py, loaded as plugins. pytest runs with --import-mode=importlib, which
# does not put tests/ on sys.path, so add it for the plugin import.
import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))

pytest_plugins = ["conftest_postgres", "conftest_redis", "conftest_kafka"]

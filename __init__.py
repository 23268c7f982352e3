"""Parity: a streaming feature platform.

A feature is defined once (YAML or Python, see ``parity.registry``) and the same
definition drives batch (DuckDB), streaming and online serving.

Importing this package is cheap on purpose: it starts no JVM, opens no socket, reads no
config and imports no engine (pyflink, confluent_kafka, feast, redis, duckdb).
"""

from parity.errors import ParityError

__version__ = "0.1.0"
__all__ = ["ParityError", "__version__"]


def __getattr__(name: str):
    """``parity.Client`` is imported on first access (httpx is not imported with ``parity``)."""
    if name == "Client":
        from parity.serving.client import Client

        return Client
    raise AttributeError(f"module 'parity' has no attribute {name!r}")

"""``parity serve``: the HTTP API of one project under uvicorn.

:func:`run_server` checks everything that can be wrong before binding (the online store's
URL, authentication, the registry's definitions), then runs uvicorn with httptools and
uvloop. With ``workers > 1`` uvicorn needs an import string, so each worker process
rebuilds the app with :func:`app_from_env` from the validated config the parent put in the
environment; each worker then has its own Redis pool, feature logger and ``/metrics``
counters (Prometheus scrapes one worker per request).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from parity.registry.config import FeatureStoreConfig
from parity.registry.models import Definitions
from parity.serving.app import auth_settings, create_app
from parity.serving.feature_log import FeatureLogger

WORKER_ENV = "PARITY_SERVE_WORKER_CONFIG"


def _definitions(config: FeatureStoreConfig) -> Definitions:
    from parity.feature_store import FeatureStore

    return FeatureStore(config).definitions


def feature_logger_for(config: FeatureStoreConfig) -> FeatureLogger | None:
    """The feature logger ``serving.feature_log`` asks for (None when it has no ``path``)."""
    settings = getattr(config.serving, "feature_log", None)
    path = getattr(settings, "path", None)
    if not path:
        return None
    return FeatureLogger(config.path(path), sample_rate=getattr(settings, "sample_rate", 1.0),
                         queue_size=getattr(settings, "queue_size", 1000))


def build_app(config: FeatureStoreConfig, redis_url: str, host: str, definitions: Definitions | None = None) -> FastAPI:
    """The serving app of ``config``'s project, reading the Redis at ``redis_url``."""
    from parity.embedded import redis_client
    from parity.serving.lookup import OnlineReader

    tokens, required = auth_settings(config.serving, host)
    defs = definitions if definitions is not None else _definitions(config)
    reader = OnlineReader(redis_client(redis_url), config.project, defs, max_entities=config.serving.max_entities)
    app = create_app(reader, tokens=tokens, require_auth=required, feature_logger=feature_logger_for(config),
                     project=config.project)
    _tune_gc()
    return app


def _tune_gc() -> None:
    """A server process holds its definitions, layouts and plans for its whole life: freeze
    them out of the collector's generations, and collect young objects less often (a lookup
    of 500 entities allocates tens of thousands of small objects; collections during it
    added about a third to its p99 in benchmarks/bench_online.py's profile)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def app_from_env() -> FastAPI:
    """uvicorn factory of a worker process (``workers > 1``): the app from :data:`WORKER_ENV`."""
    spec = json.loads(os.environ[WORKER_ENV])
    config = FeatureStoreConfig.model_validate({**spec["config"], "root": Path(spec["root"])})
    return build_app(config, spec["redis_url"], spec["host"])


def check_port(host: str, port: int) -> None:
    """``ConfigError`` when ``host:port`` cannot be bound (in use, or not a local address),
    said in one line before uvicorn would log its own error and exit."""
    import socket

    from parity.errors import ConfigError

    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                          hint="pick another --port / --host, or stop what is using it") from None


def run_server(config: FeatureStoreConfig, host: str | None = None, port: int | None = None, workers: int = 1,
               log_level: str = "warning") -> None:
    """Serve ``config``'s project on ``host:port`` (default: ``serving.host``/``serving.port``)
    until interrupted. Raises ``ParityError`` before binding when the online store, the
    authentication settings or the registry are not usable."""
    import uvicorn

    from parity.embedded import online_store_url

    host = host or config.serving.host
    port = config.serving.port if port is None else port
    if workers < 1:
        from parity.errors import ConfigError

        raise ConfigError(f"--workers {workers}: must be at least 1")
    redis_url = online_store_url(config)
    tokens, required = auth_settings(config.serving, host)
    defs = _definitions(config)
    check_port(host, port)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "http": "httptools", "loop": "uvloop",
               "timeout_graceful_shutdown": 10}
    auth = "bearer token required" if required or tokens else "no auth (loopback)"
    print(f"parity: serving project {config.project} on http://{host}:{port} ({workers} worker(s), {auth}; "
          f"{len(defs.feature_views)} views, {len(defs.feature_services)} services)", file=sys.stderr, flush=True)
    if workers == 1:
        uvicorn.run(build_app(config, redis_url, host, defs), **options)
        return
    os.environ[WORKER_ENV] = json.dumps({"config": config.model_dump(mode="json"), "root": str(config.root),
                                         "redis_url": redis_url, "host": host})
    uvicorn.run("parity.serving.server:app_from_env", factory=True, workers=workers, **options)

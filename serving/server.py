"""``parity serve``: the HTTP API of one project under uvicorn.

:func:`run_server` checks everything that can be wrong before binding (the online store's
URL, authentication, the registry's definitions), then runs uvicorn with httptools and
uvloop. By default it runs one worker process per core (:func:`default_workers`): one
Python process answers lookups on one core at a time, so under concurrent ranking requests
a single process is the bottleneck (docs/benchmarks.md, "Online serving"). With
``workers > 1`` a supervisor forks the workers after loading the definitions once (every
worker serves the same registry revision); each worker builds its own app after the fork:
its own Redis pool, serving cache and invalidation tracking connection (so each cache is
kept exact by its own tracker), feature logger and ``/metrics`` counters (Prometheus
scrapes one worker per request).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from fastapi import FastAPI

from parity.registry.config import FeatureStoreConfig
from parity.registry.models import Definitions
from parity.serving.app import auth_settings, create_app
from parity.serving.feature_log import FeatureLogger

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


def default_workers() -> int:
    """Worker processes of ``parity serve`` without ``--workers``: the cores this process may
    run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


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


def run_server(config: FeatureStoreConfig, host: str | None = None, port: int | None = None,
               workers: int | None = None, log_level: str = "warning") -> None:
    """Serve ``config``'s project on ``host:port`` (default: ``serving.host``/``serving.port``)
    with ``workers`` processes (default: :func:`default_workers`) until interrupted. Raises
    ``ParityError`` before binding when the online store, the authentication settings or the
    registry are not usable."""
    from parity.embedded import online_store_url

    host = host or config.serving.host
    port = config.serving.port if port is None else port
    workers = default_workers() if workers is None else workers
    if workers < 1:
        from parity.errors import ConfigError

        raise ConfigError(f"--workers {workers}: must be at least 1")
    redis_url = online_store_url(config)
    tokens, required = auth_settings(config.serving, host)
    defs = _definitions(config)
    check_port(host, port)
    auth = "bearer token required" if required or tokens else "no auth (loopback)"
    print(f"parity: serving project {config.project} on http://{host}:{port} ({workers} worker(s), {auth}; "
          f"{len(defs.feature_views)} views, {len(defs.feature_services)} services)", file=sys.stderr, flush=True)
    serve(config, redis_url, defs, host, port, workers, log_level)


def serve(config: FeatureStoreConfig, redis_url: str, defs: Definitions, host: str, port: int, workers: int,
          log_level: str = "warning") -> None:
    """Run uvicorn with ``parity serve``'s options: the app of ``config`` and ``defs`` on
    ``host:port``, in ``workers`` processes (``run_server`` checks its arguments first).

    Several workers each listen on a socket of their own bound to the same address
    (``SO_REUSEPORT``: the kernel spreads new connections over the sockets by their
    addresses). One shared socket would not spread them: the worker that wakes first takes
    every connection waiting (a client opening its pool of keep-alive connections at once
    would land on one worker)."""
    import uvicorn

    options: dict[str, Any] = {"log_level": log_level, "http": "httptools", "loop": "uvloop",
                               "timeout_graceful_shutdown": 10}
    if workers == 1:
        uvicorn.run(build_app(config, redis_url, host, defs), host=host, port=port, **options)
        return
    sockets = [_reuse_port_socket(host, port) for _ in range(workers)]
    _Supervisor(sockets, lambda: build_app(config, redis_url, host, defs), options).run()


def _reuse_port_socket(host: str, port: int):
    import socket

    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Supervisor:
    """Forked worker processes, one per socket, each building its own app (its own Redis pool,
    serving cache and tracking connection) after the fork; a worker that dies is started
    again on the same socket (the connections queued there meanwhile wait for it). SIGINT or
    SIGTERM to this process stops every worker gracefully (uvicorn's shutdown) and returns."""

    def __init__(self, sockets: list, make_app, options: dict[str, Any]) -> None:
        self.sockets, self.make_app, self.options = sockets, make_app, options
        self.pids: dict[int, int] = {}  # worker pid -> its socket's index
        self.stopping = False

    def _start(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.setpgrp()  # Ctrl-C reaches the supervisor only, which stops each worker once
                _die_with_parent()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                sock = self.sockets[index]
                for n, other in enumerate(self.sockets):
                    if n != index:
                        other.close()
                import uvicorn

                server = uvicorn.Server(uvicorn.Config(self.make_app(), **self.options))
                server.run(sockets=[sock])
                code = 0
            except BaseException:  # noqa: BLE001 - a worker reports and exits; the supervisor restarts it
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.pids[pid] = index

    def _stop(self, *_args: Any) -> None:
        self.stopping = True
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(len(self.sockets)):
                self._start(index)
            while self.pids:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                index = self.pids.pop(pid, None)
                if index is not None and not self.stopping:
                    print(f"parity: worker {pid} exited ({_exit_reason(status)}); starting another",
                          file=sys.stderr, flush=True)
                    time.sleep(0.5)  # a worker that fails at once must not spin
                    if not self.stopping:
                        self._start(index)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in self.sockets:
                sock.close()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"

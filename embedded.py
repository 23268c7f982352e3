"""Embedded infrastructure: a real Redis server started by Parity when none is configured.

Used by ``parity serve`` / ``parity materialize`` without ``online_store.connection_string``,
by the demo, and by the test fixtures. The server is the ``redis-server`` binary on PATH
(or ``PARITY_REDIS_SERVER``), on a free loopback port, without persistence, and it is
stopped when :meth:`RedisServer.stop` is called or the process exits.
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
class RedisServer:
    """A private ``redis-server`` process. ``url`` is ``redis://127.0.0.1:<port>/0``."""

    port: int
    process: subprocess.Popen
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, port: int | None = None, timeout: float = 10.0) -> "RedisServer":
        binary = _find_redis()
        last_error = ""
        for _attempt in range(5):
            chosen = port or free_port()
            workdir = tempfile.mkdtemp(prefix="parity-redis-")
            process = subprocess.Popen(
                [binary, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", workdir, "--protected-mode", "yes", "--loglevel", "warning"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            server = cls(chosen, process, workdir)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    last_error = (process.stdout.read() or b"").decode(errors="replace")[-400:] if process.stdout else ""
                    break
                if server.ping():
                    atexit.register(server.stop)
                    return server
                time.sleep(0.02)
            server.stop()
            if port:
                break
        raise EmbeddedServerError(f"redis-server did not start: {last_error.strip() or 'timed out'}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

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


def redis_client(url: str, **kwargs):
    """A redis-py client for ``url`` (binary replies, short timeouts)."""
    import redis

    options = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0, "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
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


def running_redis(root) -> dict | None:
    entry = read_state(root).get("redis")
    if entry and _alive(int(entry["pid"])):
        return entry
    return None


def stop_embedded(root) -> list[str]:
    """Stop every server ``parity dev up`` recorded for the project; returns what stopped."""
    import signal

    state = read_state(root)
    stopped = []
    for name, entry in list(state.items()):
        pid = int(entry.get("pid", 0))
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
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

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

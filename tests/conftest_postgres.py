"""PostgreSQL for tests: a server for the session and a fresh database per test.

Loaded as a pytest plugin (``pytest_plugins = ["conftest_postgres"]`` in tests/conftest.py).

Server, in order: ``$PARITY_TEST_POSTGRES_URL``; else the probe URL
(``$PARITY_TEST_POSTGRES_PROBE_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``)
if a server answers there; else a private server started with ``initdb``/``pg_ctl`` in a temporary
directory (as the ``postgres`` user when running as root) and stopped at session end.
These fixtures never skip: without a server the test fails and says why.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

import pytest

DEFAULT_PROBE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _psycopg():  # type: ignore[no-untyped-def]
    try:
        import psycopg
    except ImportError:
        pytest.fail("PostgreSQL tests need psycopg: pip install 'parity[test]' (or 'psycopg[binary]')")
    return psycopg


def _reachable(url: str) -> str | None:
    """None if a server answers at ``url``, else the connection error text."""
    try:
        with _psycopg().connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # any failure means "not usable"; the text goes into the message
        return str(exc).strip() or type(exc).__name__


def _find_pg_bin(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _PrivateServer:
    """A throwaway PostgreSQL cluster in a temporary directory."""

    def __init__(self) -> None:
        initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.fail("no PostgreSQL server reachable and initdb/pg_ctl not found (PATH or "
                        "/usr/lib/postgresql/*/bin); install PostgreSQL or set PARITY_TEST_POSTGRES_URL")
        self.pg_ctl = pg_ctl
        self.prefix: list[str] = []
        as_root = os.geteuid() == 0
        # as root, stay under /tmp: the postgres user must be able to reach the directory
        self.root = Path(tempfile.mkdtemp(prefix="parity-pg-", dir="/tmp" if as_root else None))
        if as_root:  # initdb refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no `postgres` user to run initdb as; "
                            "set PARITY_TEST_POSTGRES_URL or run the tests as a normal user")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self._run([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        self.started = False
        for _ in range(3):  # the free port may be taken between probe and start
            self.port = _free_port()
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            result = self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l",
                                str(self.root / "server.log"), "-w", "-t", "60", "start"], check=False)
            if result.returncode == 0:
                self.started = True
                break
        if not self.started:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            self.cleanup()
            pytest.fail(f"could not start a private PostgreSQL server:\n{log}")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.prefix + argv, capture_output=True, text=True, cwd=self.root)
        if check and result.returncode != 0:
            self.cleanup()
            pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def cleanup(self) -> None:
        if getattr(self, "started", False):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (maintenance database) the tests may create databases on."""
    explicit = os.environ.get("PARITY_TEST_POSTGRES_URL")
    if explicit:
        error = _reachable(explicit)
        if error:
            pytest.fail(f"PARITY_TEST_POSTGRES_URL={explicit} is not reachable: {error}")
        yield explicit
        return
    probe = os.environ.get("PARITY_TEST_POSTGRES_PROBE_URL", DEFAULT_PROBE_URL)
    if _reachable(probe) is None:
        yield probe
        return
    server = _PrivateServer()
    try:
        error = _reachable(server.url)
        if error:
            pytest.fail(f"private PostgreSQL server at {server.url} started but is not reachable: {error}")
        yield server.url
    finally:
        server.cleanup()


def _with_dbname(url: str, dbname: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture
def postgres_database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a new, empty database, dropped after the test."""
    psycopg = _psycopg()
    name = f"parity_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_dbname(postgres_server_url, name)
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')

"""The registry store: applied definitions, recorded atomically with content hashes and history.

A SQLite file by default, PostgreSQL for ``postgresql://`` URLs. Every write is one optimistic
transaction (:meth:`RegistryStore.commit`): lock the store, check that the revision the caller
planned against is still current, apply the changes, append a history row. Every put/delete is
also kept per object, so older specs can be read back. A store object is not thread-safe.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pathlib
import socket
import sqlite3
import urllib.parse
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from parity.errors import RegistryConflictError, RegistryError

SCHEMA_VERSION = 1
APP_MARKER = "parity-registry"
KINDS = ("entity", "source", "view", "service")
_PG_SCHEMA_LOCK = 0x5041524954590001  # advisory lock key ("PARITY" 1) held while creating tables

_TABLES = {  # name -> columns; {int} is INTEGER/BIGINT, {ts} the timestamp type of the backend
    "parity_meta": "id INTEGER PRIMARY KEY CHECK (id = 1), app TEXT NOT NULL, "
    "schema_version INTEGER NOT NULL, revision {int} NOT NULL",
    "parity_objects": "kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, "
    "spec TEXT NOT NULL, content_hash TEXT NOT NULL, applied_revision {int} NOT NULL, "
    "live INTEGER NOT NULL, PRIMARY KEY (kind, name, version)",
    "parity_history": "revision {int} PRIMARY KEY, applied_at {ts} NOT NULL, applied_by TEXT NOT NULL, "
    "summary TEXT NOT NULL, state_hash TEXT NOT NULL, changes TEXT NOT NULL",
    "parity_object_history": "revision {int} NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, "
    "version INTEGER NOT NULL, op TEXT NOT NULL, spec TEXT, content_hash TEXT NOT NULL, "
    "PRIMARY KEY (kind, name, version, revision)",
}


@dataclass(frozen=True)
class StoredObject:
    """One live object as stored."""
    kind: str  # "entity" | "source" | "view" | "service"
    name: str
    version: int  # view version (>= 1); 0 for unversioned kinds
    spec: dict
    content_hash: str
    applied_revision: int  # revision that last wrote this object


@dataclass(frozen=True)
class Snapshot:
    """The registry at one revision (0 when empty): live objects keyed ``(kind, name, version)``."""
    revision: int
    objects: dict[tuple[str, str, int], StoredObject]


@dataclass(frozen=True)
class Change:
    """One write: ``put`` (``spec`` required) or ``delete``."""
    op: str
    kind: str
    name: str
    version: int
    spec: dict | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One applied revision; ``state_hash`` covers all live objects after it."""
    revision: int
    applied_at: datetime
    applied_by: str
    summary: str
    state_hash: str
    changes: list[Change]


def _canonical(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(spec: dict) -> str:
    """sha256 hex of the canonical JSON of ``spec`` (sorted keys, no whitespace)."""
    try:
        return hashlib.sha256(_canonical(spec).encode("utf-8")).hexdigest()
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"spec is not JSON-serialisable: {exc}") from exc


def state_hash(content_hashes: list[str]) -> str:
    """sha256 hex over the sorted content hashes of all live objects, concatenated."""
    return hashlib.sha256("".join(sorted(content_hashes)).encode("ascii")).hexdigest()


def default_applied_by() -> str:
    """``user@host pid N`` for this process."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _as_utc(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _encode(change: Change) -> tuple[str | None, str | None]:
    """Validate one change; ``(canonical spec JSON, content hash)`` for a put, Nones for a delete."""
    where = f"{change.kind} {change.name!r} version {change.version}"
    if change.op not in ("put", "delete"):
        raise RegistryError(f"{where}: unknown op {change.op!r} (expected put or delete)")
    if change.kind not in KINDS:
        raise RegistryError(f"{where}: unknown kind (expected one of {', '.join(KINDS)})")
    if not isinstance(change.name, str) or not change.name or type(change.version) is not int:
        raise RegistryError(f"{where}: the name must be a non-empty string and the version an int")
    if (change.version < 1) if change.kind == "view" else (change.version != 0):
        raise RegistryError(f"{where}: " + ("view versions start at 1" if change.kind == "view"
                                            else "only views are versioned; use version 0"))
    if change.op == "delete":
        return None, None
    if not isinstance(change.spec, dict):
        raise RegistryError(f"{where}: a put needs a dict spec, got {type(change.spec).__name__}")
    try:
        text = _canonical(change.spec)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{where}: spec is not JSON-serialisable: {exc}") from exc
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


Query = Callable[..., list[tuple]]  # q(sql with ? placeholders, *params) -> rows


class RegistryStore(ABC):
    """The store API; :class:`SqliteStore` and :class:`PostgresStore` provide transactions."""

    location: str  # for messages (passwords redacted)
    _conn: Any = None
    _lock_suffix = ""  # appended to the meta-row SELECT that starts a commit

    @abstractmethod
    def _tx(self, *, write: bool) -> Any:
        """Context manager: one transaction yielding a :data:`Query`; any exception rolls back.

        ``write=True`` takes the store's write lock (or waits for it) before yielding.
        """

    def close(self) -> None:
        """Release the connection. Idempotent."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self, q: Query, int_type: str, ts_type: str) -> None:
        for table, columns in _TABLES.items():
            q(f"CREATE TABLE IF NOT EXISTS {table} ({columns.format(int=int_type, ts=ts_type)})")
        q("INSERT INTO parity_meta (id, app, schema_version, revision) VALUES (1, ?, ?, 0) "
          "ON CONFLICT (id) DO NOTHING", APP_MARKER, SCHEMA_VERSION)

    def _check_meta(self, q: Query) -> None:
        try:
            rows = q("SELECT app, schema_version FROM parity_meta WHERE id = 1")
        except RegistryError as exc:
            raise self._not_registry(f"its parity_meta table is unreadable ({exc})") from exc
        if not rows or rows[0][0] != APP_MARKER:
            raise self._not_registry("its parity_meta table has no Parity marker")
        if rows[0][1] > SCHEMA_VERSION:
            raise RegistryError(
                f"registry {self.location} has schema version {rows[0][1]}, written by a newer Parity; "
                f"this Parity reads schema version {SCHEMA_VERSION}",
                hint="upgrade parity (pip install -U parity) to use this registry")

    def _not_registry(self, why: str) -> RegistryError:
        return RegistryError(f"{self.location} is not a Parity registry: {why}",
                             hint="point `registry` in feature_store.yaml at a new file or an empty database")

    def snapshot(self) -> Snapshot:
        """All live objects at the current revision, read in one consistent transaction."""
        with self._tx(write=False) as q:
            revision = q("SELECT revision FROM parity_meta WHERE id = 1")[0][0]
            rows = q("SELECT kind, name, version, spec, content_hash, applied_revision "
                     "FROM parity_objects WHERE live = 1")
        return Snapshot(revision, {(kind, name, version): StoredObject(kind, name, version, json.loads(spec),
                                                                       chash, applied)
                                   for kind, name, version, spec, chash, applied in rows})

    def history(self, limit: int | None = None) -> list[HistoryEntry]:
        """Applied revisions, newest first (at most ``limit``)."""
        if limit is not None and limit < 0:
            raise RegistryError(f"history limit must be >= 0, got {limit}")
        sql = ("SELECT revision, applied_at, applied_by, summary, state_hash, changes "
               "FROM parity_history ORDER BY revision DESC")
        with self._tx(write=False) as q:
            rows = q(sql + " LIMIT ?", limit) if limit is not None else q(sql)
        return [HistoryEntry(rev, _as_utc(at), by, summary, shash, [Change(**c) for c in json.loads(changes)])
                for rev, at, by, summary, shash, changes in rows]

    def object_history(self, kind: str, name: str) -> list[tuple[int, int, str, str]]:
        """``(revision, version, op, content_hash)`` of every write to one object, oldest first.

        For a delete, ``content_hash`` is the hash of the spec that was deleted.
        """
        with self._tx(write=False) as q:
            rows = q("SELECT revision, version, op, content_hash FROM parity_object_history "
                     "WHERE kind = ? AND name = ? ORDER BY revision, version", kind, name)
        return [(rev, version, op, chash) for rev, version, op, chash in rows]

    def object_spec_at(self, kind: str, name: str, version: int, revision: int) -> dict | None:
        """The object's spec as of ``revision``; None if it was absent (or deleted) then."""
        with self._tx(write=False) as q:
            rows = q("SELECT op, spec FROM parity_object_history WHERE kind = ? AND name = ? "
                     "AND version = ? AND revision <= ? ORDER BY revision DESC LIMIT 1",
                     kind, name, version, revision)
        return json.loads(rows[0][1]) if rows and rows[0][0] == "put" else None

    def commit(self, changes: list[Change], *, expected_revision: int, summary: str,
               applied_by: str | None = None) -> int:
        """Apply ``changes`` in one transaction if the store is still at ``expected_revision``.

        Returns the new revision; an empty change list returns the current one without writing.
        Raises :class:`RegistryConflictError` if another process committed since that revision.
        """
        encoded: list[tuple[Change, str | None, str | None]] = []
        seen: set[tuple[str, str, int]] = set()
        for change in changes:
            encoded.append((change, *_encode(change)))
            key = (change.kind, change.name, change.version)
            if key in seen:
                raise RegistryError(f"{change.kind} {change.name!r} version {change.version} "
                                    "appears twice in one commit")
            seen.add(key)
        by = applied_by or default_applied_by()
        with self._tx(write=True) as q:
            current = q("SELECT revision FROM parity_meta WHERE id = 1" + self._lock_suffix)[0][0]
            if current != expected_revision:
                raise self._conflict(q, expected_revision, current)
            if not encoded:
                return current
            revision = current + 1
            for change, spec_json, chash in encoded:
                self._apply(q, revision, change, spec_json, chash)
            live = [row[0] for row in q("SELECT content_hash FROM parity_objects WHERE live = 1")]
            log = [{"op": c.op, "kind": c.kind, "name": c.name, "version": c.version, "spec": c.spec}
                   for c, _, _ in encoded]
            q("INSERT INTO parity_history (revision, applied_at, applied_by, summary, state_hash, changes) "
              "VALUES (?, ?, ?, ?, ?, ?)", revision, self._now(), by, summary, state_hash(live),
              json.dumps(log, sort_keys=True))
            q("UPDATE parity_meta SET revision = ? WHERE id = 1", revision)
        return revision

    def _apply(self, q: Query, revision: int, change: Change, spec_json: str | None,
               chash: str | None) -> None:
        key = (change.kind, change.name, change.version)
        if change.op == "put":
            q("INSERT INTO parity_objects (kind, name, version, spec, content_hash, applied_revision, live) "
              "VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (kind, name, version) DO UPDATE SET "
              "spec = excluded.spec, content_hash = excluded.content_hash, "
              "applied_revision = excluded.applied_revision, live = 1", *key, spec_json, chash, revision)
        else:
            rows = q("SELECT content_hash FROM parity_objects WHERE kind = ? AND name = ? AND version = ? "
                     "AND live = 1", *key)
            if not rows:
                raise RegistryError(f"cannot delete {change.kind} {change.name!r} version {change.version} "
                                    f"from registry {self.location}: it is not live there",
                                    hint="run `parity plan` again")
            chash = rows[0][0]
            q("UPDATE parity_objects SET live = 0, applied_revision = ? "
              "WHERE kind = ? AND name = ? AND version = ?", revision, *key)
        q("INSERT INTO parity_object_history (revision, kind, name, version, op, spec, content_hash) "
          "VALUES (?, ?, ?, ?, ?, ?, ?)", revision, *key, change.op, spec_json, chash)

    def _conflict(self, q: Query, expected: int, found: int) -> RegistryConflictError:
        rows = q("SELECT applied_by, applied_at FROM parity_history WHERE revision = ?", found)
        by = (f" (applied by {rows[0][0]} at {_as_utc(rows[0][1]).isoformat(timespec='seconds')})"
              if rows else "")
        return RegistryConflictError(
            f"registry {self.location} changed since it was read: expected revision {expected}, "
            f"found revision {found}{by}; run the command again to plan against the new state",
            hint="run the command again")

    def _now(self) -> Any:
        return datetime.now(timezone.utc).isoformat()


class SqliteStore(RegistryStore):
    """A registry in one SQLite file: WAL journal, ``BEGIN IMMEDIATE`` writes, 30 s busy timeout
    (a commit holds the lock for milliseconds, but its fsync can stall for seconds while
    another job floods the disk)."""

    BUSY_TIMEOUT_S = 30.0

    def __init__(self, path: pathlib.Path) -> None:
        self.path, self.location = path, str(path)
        if path.is_dir():
            raise RegistryError(f"registry {path} is a directory, expected a SQLite file",
                                hint="point `registry` at a file path such as data/registry.db")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), timeout=self.BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(f"cannot open registry {path}: {exc}") from exc
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT_S * 1000)}")
            with self._tx(write=True) as q:  # serialises concurrent first opens
                tables = {r[0] for r in q("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "parity_meta" not in tables:
                    foreign = sorted(t for t in tables if not t.startswith("sqlite_"))
                    if foreign:
                        raise self._not_registry(f"it holds other tables ({', '.join(foreign[:5])})")
                    self._create_schema(q, "INTEGER", "TEXT")
                self._check_meta(q)
            # only once it is known to be ours: a foreign database is left exactly as it was
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RegistryError(f"registry {path}: cannot switch to WAL journal mode (got {mode})")
        except sqlite3.Error as exc:
            self.close()
            raise self._wrap(exc) from exc
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Query]:
        conn = self._conn
        if conn is None:
            raise RegistryError(f"registry {self.location} is closed")

        def q(sql: str, *params: Any) -> list[tuple]:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._wrap(exc) from exc

        q("BEGIN IMMEDIATE" if write else "BEGIN")  # a WAL read transaction sees one snapshot
        try:
            yield q
            q("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back; nothing was committed
            raise

    def _wrap(self, exc: BaseException) -> RegistryError:
        text = str(exc)
        if "not a database" in text:
            return self._not_registry(f"{text} (a SQLite registry file was expected)")
        if "malformed" in text:
            return RegistryError(f"registry {self.location} is corrupt: {text}",
                                 hint="restore the registry file from a backup")
        if "locked" in text or "busy" in text:
            return RegistryError(f"registry {self.location} stayed locked by another process for "
                                 f"{self.BUSY_TIMEOUT_S:.0f} s",
                                 hint="wait for the other parity command to finish, then retry")
        return RegistryError(f"registry {self.location}: {text}")


class PostgresStore(RegistryStore):
    """A registry in PostgreSQL tables ``parity_*``; a commit locks the single meta row."""

    _lock_suffix = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        self.location = _redact(url)
        try:
            import psycopg
        except ImportError as exc:
            raise RegistryError(f"registry {self.location} is a PostgreSQL URL but psycopg is not "
                                "installed; run: pip install 'parity[postgres]'",
                                hint="pip install 'parity[postgres]'") from exc
        self._errors = psycopg.Error
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            self._conn.execute("SET lock_timeout = '10s'")
        except psycopg.Error as exc:
            self.close()
            raise RegistryError(f"cannot connect to registry {self.location}: {str(exc).strip()}",
                                hint="check the URL and that the server is running") from exc
        try:
            with self._tx(write=True) as q:
                q("SELECT pg_advisory_xact_lock(?)", _PG_SCHEMA_LOCK)  # serialises concurrent first opens
                if q("SELECT to_regclass('parity_meta')")[0][0] is None:
                    self._create_schema(q, "BIGINT", "TIMESTAMPTZ")
                self._check_meta(q)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Query]:
        conn, errors = self._conn, self._errors
        if conn is None:
            raise RegistryError(f"registry {self.location} is closed")

        def q(sql: str, *params: Any) -> list[tuple]:
            try:
                cur = conn.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
            except errors as exc:
                raise RegistryError(f"registry {self.location}: {str(exc).strip()}") from exc

        try:
            with conn.transaction():
                # a commit waits on the meta row lock and must then see the newest rows (READ
                # COMMITTED); reads want one snapshot across their statements (REPEATABLE READ)
                level = "READ COMMITTED" if write else "REPEATABLE READ READ ONLY"
                q(f"SET TRANSACTION ISOLATION LEVEL {level}")
                yield q
        except errors as exc:  # COMMIT failed or the connection broke
            raise RegistryError(f"registry {self.location}: {str(exc).strip()}") from exc

    def _now(self) -> Any:
        return datetime.now(timezone.utc)


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_store(location: str | os.PathLike[str], *, base_dir: pathlib.Path | None = None) -> RegistryStore:
    """Open the registry at ``location``, creating it (and parent directories) if needed.

    ``postgresql://``/``postgres://`` URLs open a :class:`PostgresStore`; anything else is a SQLite
    file path, relative paths resolving against ``base_dir`` (default: the working directory).
    ``sqlite:///relative.db`` and ``sqlite:////absolute.db`` URLs work too (SQLAlchemy convention).
    """
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    if text.startswith("sqlite://"):
        if not text.startswith("sqlite:///") or text == "sqlite:///":
            raise RegistryError(f"registry URL {text!r} has no file path; "
                                "use sqlite:///relative.db or sqlite:////absolute/path.db")
        text = text[len("sqlite:///"):]
    path = pathlib.Path(text).expanduser()
    return SqliteStore(path if path.is_absolute() else (base_dir or pathlib.Path.cwd()) / path)

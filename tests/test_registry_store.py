"""The registry store on real SQLite files and a real PostgreSQL server (no mocks).

Every backend test runs twice via ``store_location``: a fresh SQLite file and a fresh PostgreSQL
database (see tests/conftest_postgres.py for where the server comes from).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import sqlite3
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from parity.errors import RegistryConflictError, RegistryError
from parity.registry.store import (
    Change,
    RegistryStore,
    SqliteStore,
    content_hash,
    open_store,
    state_hash,
)

if str(Path(__file__).parent) not in sys.path:  # children import the workers by plain name
    sys.path.append(str(Path(__file__).parent))

PROCESS_TIMEOUT_S = 120


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A location for a store that does not exist yet: a SQLite path or an empty Postgres database."""
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "registry.db")
    else:
        yield request.getfixturevalue("postgres_database_url")


def _put(kind: str, name: str, version: int, **spec: Any) -> Change:
    return Change("put", kind, name, version, {"name": name, **spec})


def _expected_state_hash(live_specs: list[dict]) -> str:
    hashes = sorted(hashlib.sha256(json.dumps(s, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
                    for s in live_specs)
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def _replay_and_check(store: RegistryStore) -> dict[tuple[str, str, int], dict]:
    """Replay the whole history oldest first; every state hash must match the replayed state."""
    live: dict[tuple[str, str, int], dict] = {}
    entries = list(reversed(store.history()))
    assert [e.revision for e in entries] == list(range(1, len(entries) + 1))
    for entry in entries:
        for change in entry.changes:
            key = (change.kind, change.name, change.version)
            if change.op == "put":
                live[key] = change.spec  # type: ignore[assignment]
            else:
                del live[key]
        assert entry.state_hash == _expected_state_hash(list(live.values())), entry.revision
    snap = store.snapshot()
    assert {k: o.spec for k, o in snap.objects.items()} == live
    return live


# -- 1. round trip, versions, deletes, history -----------------------------------------------------


def test_content_hash_is_sha256_of_canonical_json() -> None:
    spec = {"b": 1, "a": [1, "x", {"z": None, "y": 2.5}]}
    canonical = '{"a":[1,"x",{"y":2.5,"z":null}],"b":1}'
    assert content_hash(spec) == hashlib.sha256(canonical.encode()).hexdigest()
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    assert state_hash([]) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(RegistryError, match="JSON"):
        content_hash({"x": object()})


def test_round_trip_versions_deletes_and_history(store_location: str) -> None:
    entity = _put("entity", "user", 0, keys=["user_id"])
    source = _put("source", "events", 0, path="data/events.parquet")
    view_v1 = _put("view", "engagement", 1, features=["clicks_1h"])
    view_v2 = _put("view", "engagement", 2, features=["clicks_1h", "views_1d"])
    before = datetime.now(timezone.utc) - timedelta(seconds=5)

    with open_store(store_location) as store:
        empty = store.snapshot()
        assert (empty.revision, empty.objects) == (0, {})
        assert store.history() == []
        rev1 = store.commit([entity, source, view_v1, view_v2], expected_revision=0, summary="first apply")
        assert rev1 == 1

    with open_store(store_location) as store:  # survives reopening
        snap = store.snapshot()
        assert snap.revision == 1
        assert set(snap.objects) == {("entity", "user", 0), ("source", "events", 0),
                                     ("view", "engagement", 1), ("view", "engagement", 2)}
        for change in (entity, source, view_v1, view_v2):
            obj = snap.objects[(change.kind, change.name, change.version)]
            assert obj.spec == change.spec
            assert obj.content_hash == content_hash(change.spec)  # type: ignore[arg-type]
            assert obj.applied_revision == 1

        # revision 2: change view v1, delete the source; v2 stays live untouched
        view_v1b = _put("view", "engagement", 1, features=["clicks_1h"], ttl="2d")
        rev2 = store.commit([view_v1b, Change("delete", "source", "events", 0)], expected_revision=1,
                            summary="edit v1, drop source", applied_by="alice@laptop pid 7")
        assert rev2 == 2
        snap = store.snapshot()
        assert ("source", "events", 0) not in snap.objects
        assert snap.objects[("view", "engagement", 1)].spec == view_v1b.spec
        assert snap.objects[("view", "engagement", 1)].applied_revision == 2
        assert snap.objects[("view", "engagement", 2)].applied_revision == 1

        # old specs stay readable; deleted objects read as None after the delete
        assert store.object_spec_at("view", "engagement", 1, 0) is None
        assert store.object_spec_at("view", "engagement", 1, 1) == view_v1.spec
        assert store.object_spec_at("view", "engagement", 1, 2) == view_v1b.spec
        assert store.object_spec_at("view", "engagement", 2, 2) == view_v2.spec
        assert store.object_spec_at("source", "events", 0, 1) == source.spec
        assert store.object_spec_at("source", "events", 0, 2) is None
        source_hash = content_hash(source.spec)  # type: ignore[arg-type]
        assert store.object_history("source", "events") == [(1, 0, "put", source_hash),
                                                             (2, 0, "delete", source_hash)]
        assert store.object_history("view", "engagement") == [
            (1, 1, "put", content_hash(view_v1.spec)),  # type: ignore[arg-type]
            (1, 2, "put", content_hash(view_v2.spec)),  # type: ignore[arg-type]
            (2, 1, "put", content_hash(view_v1b.spec)),  # type: ignore[arg-type]
        ]

        # revision 3: the deleted source comes back live
        assert store.commit([source], expected_revision=2, summary="restore source") == 3
        snap = store.snapshot()
        assert snap.objects[("source", "events", 0)].applied_revision == 3
        assert store.object_spec_at("source", "events", 0, 3) == source.spec

        # an empty change list writes nothing
        assert store.commit([], expected_revision=3, summary="no-op") == 3
        assert store.snapshot().revision == 3

        history = store.history()
        assert [h.revision for h in history] == [3, 2, 1]
        assert [h.summary for h in history] == ["restore source", "edit v1, drop source", "first apply"]
        assert history[1].applied_by == "alice@laptop pid 7"
        assert f"pid {multiprocessing.current_process().pid}" in history[0].applied_by
        for entry in history:
            assert entry.applied_at.tzinfo is not None and entry.applied_at.utcoffset() == timedelta(0)
            assert before <= entry.applied_at <= datetime.now(timezone.utc) + timedelta(seconds=5)
        assert history[2].changes == [entity, source, view_v1, view_v2]
        assert history[1].changes == [view_v1b, Change("delete", "source", "events", 0)]
        assert history[2].state_hash == _expected_state_hash([entity.spec, source.spec, view_v1.spec,
                                                              view_v2.spec])  # type: ignore[list-item]
        assert history[1].state_hash == _expected_state_hash(
            [entity.spec, view_v1b.spec, view_v2.spec])  # type: ignore[list-item]
        assert history[0].state_hash == state_hash([o.content_hash for o in snap.objects.values()])
        assert [h.revision for h in store.history(limit=1)] == [3]
        _replay_and_check(store)


def test_failed_commit_rolls_back_everything(store_location: str) -> None:
    with open_store(store_location) as store:
        store.commit([_put("entity", "user", 0)], expected_revision=0, summary="one")
        with pytest.raises(RegistryError, match="not live"):
            store.commit([_put("entity", "other", 0), Change("delete", "view", "missing", 1)],
                         expected_revision=1, summary="half")
        with pytest.raises(RegistryError, match="needs a dict spec"):
            store.commit([Change("put", "entity", "x", 0)], expected_revision=1, summary="bad")
        with pytest.raises(RegistryError, match="only views are versioned"):
            store.commit([_put("entity", "x", 3)], expected_revision=1, summary="bad")
        with pytest.raises(RegistryError, match="twice"):
            store.commit([_put("entity", "x", 0), _put("entity", "x", 0)], expected_revision=1, summary="bad")
        snap = store.snapshot()
        assert snap.revision == 1 and set(snap.objects) == {("entity", "user", 0)}
        assert len(store.history()) == 1
        assert store.object_history("entity", "other") == []
        # the store is still writable after the failures
        assert store.commit([_put("entity", "other", 0)], expected_revision=1, summary="two") == 2


def test_stale_revision_in_one_process_conflicts(store_location: str) -> None:
    with open_store(store_location) as first, open_store(store_location) as second:
        seen = second.snapshot()
        first.commit([_put("entity", "user", 0)], expected_revision=0, summary="s", applied_by="bob@ci pid 1")
        with pytest.raises(RegistryConflictError) as info:
            second.commit([_put("entity", "item", 0)], expected_revision=seen.revision, summary="t")
        message = str(info.value)
        assert "expected revision 0, found revision 1" in message
        assert "applied by bob@ci pid 1" in message and "run the command again" in message
        assert second.snapshot().revision == 1


# -- 2. and 3. real concurrency: separate processes ------------------------------------------------


def _worker(name: str) -> Callable[..., None]:
    """A worker function as spawned children can import it.

    pytest (importlib mode) names this module ``tests.test_registry_store``, which a child cannot
    import; tests/ is on sys.path (inherited by children), so use the module under its file name.
    """
    return getattr(importlib.import_module(Path(__file__).stem), name)


def _commit_once_worker(location: str, name: str, barrier: Any, results: Any) -> None:
    try:
        with open_store(location) as store:
            snap = store.snapshot()
            barrier.wait(timeout=60)
            try:
                rev = store.commit([_put("entity", name, 0, by=name)], expected_revision=snap.revision,
                                   summary=f"{name} wins")
                results.put((name, "ok", str(rev)))
            except RegistryConflictError as exc:
                results.put((name, "conflict", str(exc)))
    except BaseException as exc:  # report everything; the parent asserts
        results.put((name, "error", repr(exc)))


def _stress_worker(location: str, worker: int, commits: int, barrier: Any, results: Any) -> None:
    conflicts = 0
    try:
        with open_store(location) as store:
            barrier.wait(timeout=60)
            done = 0
            for _attempt in range(5000):
                if done == commits:
                    break
                snap = store.snapshot()
                changes = [_put("entity", f"w{worker}_{done}", 0, n=done),
                           _put("view", "shared", 1, last_writer=worker, n=done)]
                if done % 3 == 2:  # some deletes too
                    changes.append(Change("delete", "entity", f"w{worker}_{done - 1}", 0))
                try:
                    store.commit(changes, expected_revision=snap.revision, summary=f"w{worker} #{done}")
                    done += 1
                except RegistryConflictError:
                    conflicts += 1
            results.put((worker, "ok" if done == commits else "gave up", conflicts))
    except BaseException as exc:  # report everything; the parent asserts
        results.put((worker, "error", repr(exc)))


def _run_processes(target: str, arg_sets: list[tuple]) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(arg_sets)), ctx.Queue()
    procs = [ctx.Process(target=_worker(target), args=(*args, barrier, results)) for args in arg_sets]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=PROCESS_TIMEOUT_S) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=PROCESS_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    return outcomes


def _sqlite_integrity(location: str) -> None:
    if location.startswith("postgres"):
        return
    conn = sqlite3.connect(location)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_two_processes_commit_at_once_exactly_one_wins(store_location: str) -> None:
    outcomes = _run_processes("_commit_once_worker", [(store_location, "alpha"), (store_location, "beta")])
    by_status = {status: (name, detail) for name, status, detail in outcomes}
    assert sorted(status for _, status, _ in outcomes) == ["conflict", "ok"], outcomes
    winner, revision = by_status["ok"]
    loser, message = by_status["conflict"]
    assert revision == "1"
    assert "expected revision 0, found revision 1" in message, message
    assert "changed since it was read" in message and "applied by" in message
    with open_store(store_location) as store:
        snap = store.snapshot()
        assert snap.revision == 1
        assert set(snap.objects) == {("entity", winner, 0)}
        assert snap.objects[("entity", winner, 0)].spec == {"name": winner, "by": winner}
        history = store.history()
        assert [h.revision for h in history] == [1] and history[0].summary == f"{winner} wins"
        assert store.object_history("entity", loser) == []
        _replay_and_check(store)
    _sqlite_integrity(store_location)


@pytest.mark.slow
def test_four_processes_forty_commits_with_retries(store_location: str) -> None:
    workers, commits = 4, 10
    outcomes = _run_processes("_stress_worker", [(store_location, w, commits) for w in range(workers)])
    assert sorted(status for _, status, _ in outcomes) == ["ok"] * workers, outcomes
    print("conflicts retried per worker:", [conflicts for _, _, conflicts in outcomes])
    with open_store(store_location) as store:
        snap = store.snapshot()
        assert snap.revision == workers * commits
        history = store.history()
        assert sorted(h.revision for h in history) == list(range(1, workers * commits + 1))
        live = _replay_and_check(store)
        # every worker's last commit left its entity live; deletes removed every third one's predecessor
        for w in range(workers):
            names = {name for kind, name, _ in live if kind == "entity" and name.startswith(f"w{w}_")}
            assert names == {f"w{w}_{i}" for i in range(commits) if i % 3 != 1}
            assert len(store.object_history("entity", f"w{w}_0")) == 1
        shared = store.object_history("view", "shared")
        assert [row[0] for row in shared] == list(range(1, workers * commits + 1))
    _sqlite_integrity(store_location)


# -- 4. things that are not (this version of) a registry -------------------------------------------


def test_sqlite_file_with_other_tables_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError) as info:
        open_store(str(path))
    assert str(path) in str(info.value) and "not a Parity registry" in str(info.value)
    assert "customers" in str(info.value) and info.value.hint
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["customers"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the rows you are looking for\n" * 100)
    with pytest.raises(RegistryError) as info:
        open_store(str(path))
    assert str(path) in str(info.value) and "not a Parity registry" in str(info.value)
    assert path.read_text().startswith("these are not")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="is a directory"):
        open_store(str(tmp_path))


def _set_meta(location: str, sql: str) -> None:
    if location.startswith("postgres"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute(sql)
    else:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        lite = sqlite3.connect(location)
        lite.execute(sql)
        lite.commit()
        lite.close()


def test_newer_schema_version_is_refused(store_location: str) -> None:
    open_store(store_location).close()
    _set_meta(store_location, "UPDATE parity_meta SET schema_version = 99")
    with pytest.raises(RegistryError) as info:
        open_store(store_location)
    message = str(info.value)
    assert "schema version 99" in message and "newer Parity" in message and "upgrade" in info.value.hint


def test_foreign_meta_table_is_refused(store_location: str) -> None:
    _set_meta(store_location, "CREATE TABLE parity_meta (id INTEGER, colour TEXT)")
    with pytest.raises(RegistryError, match="not a Parity registry"):
        open_store(store_location)


def test_wrong_marker_is_refused(store_location: str) -> None:
    open_store(store_location).close()
    _set_meta(store_location, "UPDATE parity_meta SET app = 'something-else'")
    with pytest.raises(RegistryError, match="no Parity marker"):
        open_store(store_location)


# -- opening ---------------------------------------------------------------------------------------


def test_paths_and_urls(tmp_path: Path) -> None:
    with open_store("nested/dir/reg.db", base_dir=tmp_path) as store:
        assert isinstance(store, SqliteStore)
        assert store.location == str(tmp_path / "nested" / "dir" / "reg.db")
    assert (tmp_path / "nested" / "dir" / "reg.db").exists()
    with open_store(f"sqlite:///{tmp_path}/abs.db") as store:
        assert store.location == str(tmp_path / "abs.db")
    with open_store("sqlite:///rel.db", base_dir=tmp_path) as store:
        assert store.location == str(tmp_path / "rel.db")
    store = open_store(tmp_path / "closed.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(RegistryError, match="closed"):
        store.snapshot()


def test_unreachable_postgres_is_a_registry_error_with_redacted_password() -> None:
    url = "postgresql://someone:s3cret@127.0.0.1:1/nowhere"
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        open_store(url)
    assert "s3cret" not in str(info.value) and "someone:***@127.0.0.1:1" in str(info.value)
    assert time.monotonic() - start < 30


def test_missing_psycopg_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` raise ImportError
    with pytest.raises(RegistryError, match=r"pip install 'parity\[postgres\]'"):
        open_store("postgres://postgres@127.0.0.1:5432/postgres")

"""Feature logging for online serving: what was served, for the consistency check.

Optional and sampled: a response is logged whole or not at all (``random.Random(seed)``
per request). ``FeatureLogger.log`` checks the shapes and ``put_nowait``s onto a bounded
queue, so it never blocks a request; a full queue is a counted drop. A daemon thread drains
the queue, buffers requests per (feature_set, date, schema) and writes each buffer as a new
Parquet file, atomically (temp name in the same folder, then ``os.replace``), at
``root/<feature_set>/date=YYYY-MM-DD/part-<utc time>-<uuid>.parquet``.

One row per entity row of a request: ``request_id`` (string), ``now`` (timestamp[us, UTC]),
``row`` (int32, position in the request), each join key, each feature column, then
``<name>__status`` (dictionary string) and ``<name>__age_ms`` (float64, when given).
pyarrow is imported only by the writer thread and ``read_feature_log``.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from parity.registry.types import arrow_type as _arrow_type
from parity.errors import ParityError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

_SCALAR_DTYPES = frozenset({"bool", "int32", "int64", "float32", "float64", "string", "timestamp", "date"})
_US_PER_DAY = 86_400_000_000
_STOP = object()


@dataclass(frozen=True)
class LoggedColumn:
    """One feature column of a response: its output name and Parity dtype (or ``list<T>``)."""

    name: str
    dtype: str


@dataclass(frozen=True)
class _Request:
    request_id: str
    now_us: int
    folder: str
    date: str
    rows: int
    keys: dict[str, tuple[str, list]]
    columns: list[LoggedColumn]
    values: dict[str, list]
    statuses: dict[str, list[str]]
    ages_ms: dict[str, list[float | None]]

    def batch_key(self) -> tuple:
        """Requests with equal keys share a file: same folder, date and schema."""
        return (self.folder, self.date, tuple((k, d) for k, (d, _) in self.keys.items()),
                tuple((c.name, c.dtype) for c in self.columns), tuple(self.ages_ms))


@functools.lru_cache(maxsize=1024)
def safe_folder(feature_set: str) -> str:
    """The folder of ``feature_set``, which cannot leave ``root``: characters other than
    letters, digits and ``_ . - =`` become ``_``, and so do leading dots (``../x`` → ``___x``)."""
    if not feature_set:
        raise ParityError("feature log: feature_set is empty", hint="pass the served feature service's name")
    return re.sub(r"^\.+", lambda m: "_" * len(m.group()), re.sub(r"[^A-Za-z0-9_.=-]", "_", feature_set))


@functools.lru_cache(maxsize=256)
def _check_dtype(dtype: str) -> None:
    if dtype.startswith("list<") and dtype.endswith(">"):
        return _check_dtype(dtype[5:-1])
    if dtype not in _SCALAR_DTYPES:
        raise ParityError(f"feature log: unknown dtype {dtype!r}",
                          hint=f"use one of {sorted(_SCALAR_DTYPES)} or list<T>")


@functools.lru_cache(maxsize=64)
def _date(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, timezone.utc).strftime("%Y-%m-%d")


def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type of a logged dtype; ``timestamp`` values are integer µs, stored as UTC."""
    return _arrow_type(dtype, tz="UTC")


class FeatureLogger:
    """Sampled, non-blocking logger of served feature vectors (see the module docstring).

    ``stats``: requests ``sampled`` (chosen) or ``skipped`` by sampling; ``dropped`` (sampled
    but the queue was full or the logger closed); ``written_rows`` and ``files`` on disk;
    ``errors``: batches that failed to write plus requests whose values do not convert. Each
    error is logged with ``logging`` and its rows are discarded; the writer thread goes on.
    """

    def __init__(self, root: Path, sample_rate: float = 1.0, queue_size: int = 1000,
                 flush_rows: int = 50_000, flush_interval: float = 5.0, seed: int | None = None) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ParityError(f"feature log: sample_rate {sample_rate} is not in [0, 1]")
        self.root, self.sample_rate = Path(root), sample_rate
        self.flush_rows, self.flush_interval = max(1, flush_rows), flush_interval
        self._rng = random.Random(seed)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._lock = threading.Lock()
        self._stats = {"sampled": 0, "skipped": 0, "dropped": 0, "written_rows": 0, "files": 0, "errors": 0}
        self._closed = False
        self._watchers: list[Callable[[str, int], None]] = []
        self._thread = threading.Thread(target=self._run, name="parity-feature-log", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._lock:
            return dict(self._stats)

    def watch(self, counted: Callable[[str, int], None]) -> None:
        """Call ``counted(name, n)`` whenever a counter of ``stats`` grows by ``n`` (from any
        thread, the writer's included), and now with each counter's count so far."""
        with self._lock:
            self._watchers.append(counted)
            counts = dict(self._stats)
        for name, n in counts.items():
            if n:
                counted(name, n)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n
            watchers = tuple(self._watchers)
        for counted in watchers:
            counted(name, n)

    def log(self, *, request_id: str, now_us: int, feature_set: str, keys: dict[str, tuple[str, list]],
            columns: list[LoggedColumn], values: dict[str, list], statuses: dict[str, list[str]],
            ages_ms: dict[str, list[float | None]] | None = None) -> bool:
        """Enqueue one response: True if enqueued, False if not sampled or dropped. Never blocks.

        A sampled request is checked first and raises ``ParityError`` if malformed (row counts,
        dtypes, colliding column names, ``now_us``); skipped ones are not checked. The lists
        are handed over, not copied: do not mutate them afterwards.
        """
        if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            self._count("skipped")
            return False
        request = _checked(request_id, now_us, feature_set, keys, columns, values, statuses, ages_ms or {})
        self._count("sampled")
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(request)
        except queue.Full:
            self._count("dropped")
            return False
        return True

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything enqueued so far is written (or counted as an error);
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline, marker = time.monotonic() + timeout, threading.Event()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            raise TimeoutError(f"feature log: queue still full after {timeout}s") from None
        if not marker.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"feature log: not flushed after {timeout}s")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer thread; later requests are dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("feature log: writer still busy after %ss; closing without a final write", timeout)
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        """Writer loop: write every buffer when ``flush_rows`` rows are buffered, when the
        oldest buffered request is ``flush_interval`` seconds old, on flush and on close."""
        buffers: dict[tuple, list[_Request]] = {}
        buffered_rows, oldest = 0, 0.0
        while True:
            wait = None if not buffers else max(0.0, oldest + self.flush_interval - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, _Request):
                oldest = oldest if buffers else time.monotonic()
                buffers.setdefault(item.batch_key(), []).append(item)
                buffered_rows += item.rows
            due = buffered_rows >= self.flush_rows or time.monotonic() >= oldest + self.flush_interval
            if buffers and (due or item is _STOP or isinstance(item, threading.Event)):
                for requests in buffers.values():
                    self._write_batch(requests)
                buffers, buffered_rows = {}, 0
            if isinstance(item, threading.Event):  # a flush marker
                item.set()
            if item is _STOP:
                return

    def _write_batch(self, requests: list[_Request]) -> None:
        """Convert and write one batch; a request whose values do not convert is left out alone."""
        directory = self.root / requests[0].folder / f"date={requests[0].date}"
        try:
            try:
                table = _to_table(requests)
            except Exception:  # find the requests that do not convert, write the rest
                table = _to_table([r for r in requests if self._converts(r)], requests[0])
            if table.num_rows:
                self._write_table(directory, table)
        except Exception:
            log.exception("feature log: failed to write %d requests to %s", len(requests), directory)
            self._count("errors")
            return
        if table.num_rows:
            self._count("written_rows", table.num_rows)
            self._count("files")

    def _converts(self, request: _Request) -> bool:
        try:
            return _to_table([request]) is not None
        except Exception:
            log.exception("feature log: request %r has values that do not match their dtypes", request.request_id)
            self._count("errors")
            return False

    def _write_table(self, directory: Path, table: pa.Table) -> Path:
        """Write ``table`` as a new part file in ``directory``, atomically."""
        import pyarrow.parquet as pq

        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = directory / f"part-{stamp}-{uuid.uuid4().hex}.parquet"
        temp = directory / f".{path.name}.tmp"  # a leading dot: readers and datasets skip it
        try:
            pq.write_table(table, temp)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        return path


def _checked(request_id: str, now_us: int, feature_set: str, keys: dict[str, tuple[str, list]],
             columns: list[LoggedColumn], values: dict[str, list], statuses: dict[str, list[str]],
             ages_ms: dict[str, list[float | None]]) -> _Request:
    """The request as queued, or ``ParityError`` saying what is malformed."""
    where = f"feature log {feature_set!r}, request {request_id!r}"
    if not keys:
        raise ParityError(f"{where}: no join keys")
    names = ["request_id", "now", "row", *keys, *(c.name for c in columns),
             *(f"{c.name}__status" for c in columns), *(f"{n}__age_ms" for n in ages_ms)]
    if len(set(names)) != len(names):
        raise ParityError(f"{where}: column names collide: {names}", hint="rename the join key or feature")
    given = {c.name for c in columns}
    if set(values) != given or set(statuses) != given or not set(ages_ms) <= given:
        raise ParityError(f"{where}: values and statuses must name exactly the columns, ages_ms some of them")
    for dtype in [d for d, _ in keys.values()] + [c.dtype for c in columns]:
        _check_dtype(dtype)
    rows = len(next(iter(keys.values()))[1])
    if any(len(v) != rows for v in [*(v for _, v in keys.values()), *values.values(), *statuses.values(),
                                    *ages_ms.values()]):
        raise ParityError(f"{where}: every key, value, status and age list must have {rows} rows")
    try:
        date = _date(now_us // _US_PER_DAY)
    except (TypeError, ValueError, OverflowError, OSError):
        raise ParityError(f"{where}: now_us {now_us!r} is not a time in microseconds") from None
    return _Request(request_id, now_us, safe_folder(feature_set), date, rows, keys, columns, values, statuses, ages_ms)


def _to_table(requests: list[_Request], first: _Request | None = None) -> pa.Table:
    """One Arrow table for requests of one ``batch_key``; ``first`` gives the schema."""
    import pyarrow as pa

    first = first or requests[0]

    def flat(get: Any, arrow: pa.DataType) -> pa.Array:
        return pa.array([v for r in requests for v in get(r)], arrow)

    data = {"request_id": flat(lambda r: [r.request_id] * r.rows, pa.string()),
            "now": flat(lambda r: [r.now_us] * r.rows, pa.timestamp("us", tz="UTC")),
            "row": flat(lambda r: range(r.rows), pa.int32())}
    for key, (dtype, _) in first.keys.items():
        data[key] = flat(lambda r: r.keys[key][1], arrow_type(dtype))
    for c in first.columns:
        data[c.name] = flat(lambda r: r.values[c.name], arrow_type(c.dtype))
    for c in first.columns:
        data[f"{c.name}__status"] = flat(lambda r: r.statuses[c.name], pa.string()).dictionary_encode()
    for name in first.ages_ms:
        data[f"{name}__age_ms"] = flat(lambda r: r.ages_ms[name], pa.float64())
    return pa.table(data)


def read_feature_log(root: Path, feature_set: str | None = None) -> pa.Table:
    """Every logged row under ``root``: of one ``feature_set``, or of all of them with a
    ``feature_set`` column (the folder name). Files are read in path order; differing schemas
    are unified, missing columns read as null. No files: a table with no columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    folders = ([root / safe_folder(feature_set)] if feature_set is not None
               else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    tables = []
    for folder in folders:
        for path in sorted(folder.glob("date=*/part-*.parquet")):
            table = pq.ParquetFile(path).read()
            if feature_set is None:
                table = table.append_column("feature_set", pa.array([folder.name] * table.num_rows, pa.string()))
            tables.append(table)
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

"""The embedded stream engine (``parity stream``): Kafka -> online tiles + offline log.

One loop, micro-batched (``streaming.max_batch`` messages or ``flush_interval``):

1. consume from every stream source's topic in a consumer group;
2. decode each message against its source (:mod:`parity.streaming.decode`); bad ones go to
   the dead-letter sink with their reason, and still advance the offsets;
3. evaluate each online view's derived columns, filters and partials
   (:class:`~parity.registry.online.accumulate.EventEvaluator`);
4. apply the batch to the online store (:func:`~parity.registry.online.apply.apply_events`):
   the new absolute tiles, the open tile's events and, in the same transaction, the
   consumed offsets ``offset/<topic>/<partition>`` (compare-and-set: a process that lost a
   partition is fenced off) and the Redis time of the commit ``applied_at/<topic>/<partition>``;
5. land the batch's good events in the offline log with ``_ingested_at`` (the Kafka
   timestamp), ``_applied_at`` (that commit time), ``_partition`` and ``_offset``, as one
   file per (topic, partition, first offset, last offset); then record
   ``landed/<topic>/<partition>``.

Exactly-once effects: offsets live in Redis with the tiles, and on every assignment the
engine resumes from them (Kafka's own committed offsets are only informational). A crash
before step 4 commits loses nothing (the batch is consumed again); a crash between 4 and 5
leaves an applied but unlanded batch, which the engine re-reads and lands, without applying
it again, under the same file name and ``applied_at``.

Rebalances: a process whose partition moved to another member while it worked gets a
:class:`~parity.registry.online.writer.ProgressConflict` from step 4 (the new owner moved
the offsets it expected); it drops the batch, writes nothing, and seeks back to the stored
offsets. ``landed/<topic>/<partition>`` only ever grows (a late lander cannot move it back).

Bootstrap handoff: ``parity materialize`` of a backfill made with ``--handoff`` stores
``offset/...`` (the last offset whose event is in the backfilled tiles) and ``landed/...``
(the last offset already in the offline log). The engine applies from the first and lands
only what is after the second, so the seam neither drops nor doubles an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from parity.registry.models import Definitions
from parity.registry.offline_log import OfflineLog
from parity.registry.online.columnar import ColumnarEvaluator, rows_to_columns
from parity.registry.online.apply import apply_events, begin_apply
from parity.registry.online.keys import LATENCY_BUCKETS
from parity.registry.online.writer import COMMIT_TIME, OnlineWriter, ProgressConflict, wall_clock_us
from parity.streaming.decode import DeadLetter, SourceDecoder, kafka_ingested_at

LOG = logging.getLogger("parity.stream")
MAX_SCRIPT = "local old = redis.call('HGET', KEYS[1], ARGV[1]) " \
             "if not old or tonumber(ARGV[2]) > tonumber(old) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end"
# (field, value) pairs: each field keeps the greatest value it was given
MAX_FIELDS_SCRIPT = "for i = 1, #ARGV, 2 do local old = redis.call('HGET', KEYS[1], ARGV[i]) " \
                    "if not old or tonumber(ARGV[i + 1]) > tonumber(old) then " \
                    "redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end end"
#: A backlog this large is applied at once rather than waiting ``flush_interval`` for more.
PROMPT_BATCH = 1000
PHASES = ("consume", "decode", "evaluate", "apply", "land", "land_wait", "publish")


@dataclass
class EngineStats:
    consumed: int = 0
    applied: int = 0
    landed: int = 0
    batches: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    last_commit_us: int | None = None
    tiles: int = 0  #: tile records written
    conflicts: int = 0  #: batches dropped because another process owned their partitions
    seconds: Counter = field(default_factory=Counter)  #: wall time per phase (see PHASES)


def _marker(kind: str, topic: str, partition: int) -> str:
    return f"{kind}/{topic}/{partition}"


class StreamEngine:
    def __init__(self, defs: Definitions, *, project: str, redis, bootstrap: str, offline_log: OfflineLog,
                 group_id: str = "parity", max_batch: int = 20000, flush_interval: float = 0.2,
                 dead_letter_dir: Path | None = None, dead_letter_topics: bool = False,
                 clock: Callable[[], int] = wall_clock_us,
                 consumer_overrides: dict | None = None,
                 on_partitions: Callable[[str, dict[str, list[int]]], None] | None = None):
        self.defs = defs
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.max_batch = max_batch
        self.flush_interval = flush_interval
        self.offline_log = offline_log
        self.dead_letter_dir = dead_letter_dir
        self.dead_letter_topics = dead_letter_topics
        self._dlq_producer = None
        self.clock = clock
        self.consumer_overrides = consumer_overrides or {}
        self.on_partitions = on_partitions  # ("assigned" | "revoked", {topic: [partitions]}) on every change
        self.writer = OnlineWriter(redis, project, defs, clock=clock)
        self.stats = EngineStats()
        self.sources = {s.kafka.topic: s for s in defs.sources if s.kind == "stream" and s.kafka}
        self.views = {topic: [v for v in defs.feature_views if v.online and v.source == s.name]
                      for topic, s in self.sources.items()}
        self.evaluators = {(v.name, v.version): ColumnarEvaluator(defs, v, self.writer.layout(v))
                           for views in self.views.values() for v in views}
        self.decoders = {}
        for topic, source in self.sources.items():
            keys = sorted({v.source_column_of(k) for v in self.views[topic]
                           for k in (defs.entity(v.entity).join_keys if defs.entity(v.entity) else {})})
            self.decoders[topic] = SourceDecoder(source, keys)
        self._stored: dict[str, str | None] = {}
        self._landed: dict[tuple[str, int], int] = {}  # the offline log holds offsets <= this
        self._marks: dict[tuple[str, int], int] = {}  # assigned partition -> ingestion time applied up to
        self._consumer = None
        self._published_dead: Counter = Counter()
        self._replay: dict[tuple[str, int], int] = {}  # partitions with applied but unlanded offsets
        self._assigned = False
        self._partitions: int | None = None
        self._replay_rows: dict[tuple[str, int], list] = {}
        self._land_pool = None  # one background thread landing the last committed batch
        self._sync_pool = None  # its helpers: the batch's files written side by side
        self._landing = None
        self._pending = None  # the last batch sent, its outcome not read yet: (PendingApply, its facts...)

    # -- assignment: resume from the offsets stored with the tiles ------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        progress = self.writer.read_progress()
        for tp in partitions:
            applied = progress.get(_marker("offset", tp.topic, tp.partition))
            landed = progress.get(_marker("landed", tp.topic, tp.partition))
            self._stored[_marker("offset", tp.topic, tp.partition)] = applied
            self._landed[(tp.topic, tp.partition)] = -1 if landed is None else int(landed)
            mark = progress.get(_marker("mark", tp.topic, tp.partition))
            self._marks[(tp.topic, tp.partition)] = 0 if mark is None else int(mark)  # unknown: not complete
            start = None if applied is None else int(applied) + 1
            if applied is not None and (landed is None or int(landed) < int(applied)):
                first = 0 if landed is None else int(landed) + 1
                self._replay[(tp.topic, tp.partition)] = int(applied)
                start = first
            tp.offset = OFFSET_BEGINNING if start is None else start
        consumer.assign(partitions)
        self._assigned = True
        self._report("assigned", partitions)

    def _report(self, what: str, partitions) -> None:
        if self.on_partitions is not None and partitions:
            grouped: dict[str, list[int]] = {}
            for tp in partitions:
                grouped.setdefault(tp.topic, []).append(tp.partition)
            self.on_partitions(what, {t: sorted(ps) for t, ps in sorted(grouped.items())})

    def _on_revoke(self, consumer, partitions) -> None:
        self._finish_pending()
        self._wait_landing()
        self._report("revoked", partitions)
        for tp in partitions:
            self._stored.pop(_marker("offset", tp.topic, tp.partition), None)
            self._landed.pop((tp.topic, tp.partition), None)
            self._marks.pop((tp.topic, tp.partition), None)
            self._replay.pop((tp.topic, tp.partition), None)
            self._replay_rows.pop((tp.topic, tp.partition), None)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, idle_exit: float | None = None) -> EngineStats:
        """Consume until ``stop`` is set (or, with ``idle_exit``, after that many idle seconds)."""
        from confluent_kafka import Consumer

        from parity.streaming.kafka import consumer_config

        consumer = Consumer(consumer_config(self.bootstrap, self.group_id, **self.consumer_overrides))
        self._consumer = consumer
        consumer.subscribe(list(self.sources), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        idle_since = time.monotonic()
        try:
            while not (stop and stop.is_set()):
                began = time.perf_counter()
                messages = [m for m in self._next_batch(consumer) if m.error() is None]
                self.stats.seconds["consume"] += time.perf_counter() - began
                if messages:
                    self.process(messages, caught_up=len(messages) < self.max_batch, overlap=True)
                    idle_since = time.monotonic()
                else:
                    self._finish_pending()
                    if self._assigned:
                        self._heartbeat()
                if idle_exit is not None and not self._owns_everything(consumer):
                    idle_since = time.monotonic()  # not idle: the group is still (re)assigning partitions
                if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
        finally:
            try:
                self._finish_pending()
            finally:
                self._wait_landing()
                consumer.close()
            if self._dlq_producer is not None:
                self._dlq_producer.flush(10)
        return self.stats

    def _next_batch(self, consumer) -> list:
        """The next micro-batch: what the client has fetched already, at once when that is
        :data:`PROMPT_BATCH` messages (or a tenth of ``max_batch``) or more: a backlog built up
        while the last batch was applied, so waiting would only add latency; otherwise
        whatever arrives within ``flush_interval``, up to ``max_batch`` (at a low rate, fewer
        and larger batches, so fewer offline-log files)."""
        messages = consumer.consume(num_messages=self.max_batch, timeout=0)
        if len(messages) < max(1, min(PROMPT_BATCH, self.max_batch // 10)):
            messages += consumer.consume(num_messages=self.max_batch - len(messages), timeout=self.flush_interval)
        return messages

    def _owns_everything(self, consumer) -> bool:
        """True when this process holds every partition of its topics (``--idle-exit`` drains
        only then: after a crash, the dead member keeps partitions until its session ends)."""
        if self._partitions is None:
            metadata = consumer.list_topics(timeout=5)
            self._partitions = sum(len(metadata.topics[t].partitions) for t in self.sources if t in metadata.topics)
        return len(consumer.assignment()) >= self._partitions

    def _watermark_topics(self) -> list:
        return [(v, topic) for topic, views in self.views.items() for v in views]

    def _heartbeat(self) -> None:
        """No traffic: every assigned partition is applied up to now (keeps the views from
        turning stale), committed only while this process still owns them."""
        now = self.clock()
        progress, expect = {}, {}
        for (topic, partition) in self._marks:
            self._marks[(topic, partition)] = now
            progress[_marker("mark", topic, partition)] = str(now)
            expect[_marker("offset", topic, partition)] = self._stored.get(_marker("offset", topic, partition))
        if not progress:
            return
        try:
            apply_events(self.writer, [], progress=progress, expect=expect, watermark_topics=self._watermark_topics())
        except ProgressConflict as conflict:
            LOG.info("heartbeat dropped: %s", conflict)

    def process(self, messages, caught_up: bool = True, overlap: bool = False) -> None:
        """Apply and land one micro-batch of Kafka messages. With ``overlap`` (the run loop's
        way), return once its transaction is sent: the next call (or :meth:`_finish_pending`)
        waits for its outcome, lands it and publishes its counters, so Redis executes a batch
        while the engine consumes, decodes and evaluates the next."""
        clock = time.perf_counter
        began = clock()
        by_partition: dict[tuple[str, int], list] = {}
        for message in messages:
            by_partition.setdefault((message.topic(), message.partition()), []).append(message)
        fresh: dict[tuple[str, int], list] = {}
        for key, items in by_partition.items():
            limit = self._replay.get(key)
            if limit is not None:  # an applied batch to land again: gather it whole, over several polls
                pending = self._replay_rows.setdefault(key, [])
                pending.extend(m for m in items if m.offset() <= limit)
                items = [m for m in items if m.offset() > limit]
                if pending and pending[-1].offset() >= limit:
                    self._land_replay(key, self._replay_rows.pop(key), limit)
            if items:
                fresh[key] = items
        if not fresh:
            return
        consumed = sum(len(v) for v in fresh.values())
        rows_of: dict[tuple[str, int], list[dict]] = {}
        events = {}
        dead: list[tuple[str, DeadLetter]] = []
        decoding = evaluating = 0.0
        for (topic, partition), items in fresh.items():
            started = clock()
            decoder = self.decoders[topic]
            rows = []
            for message in items:
                decoded = decoder.decode(message.value() or b"", partition=partition, offset=message.offset(),
                                         ingested_at_us=kafka_ingested_at(message))
                if isinstance(decoded, DeadLetter):
                    dead.append((topic, decoded))
                    continue
                rows.append(decoded)
            rows_of[(topic, partition)] = rows
            decoding += clock() - started
        started = clock()
        landable: dict[str, tuple] = {}  # topic -> its rows' columns, and each partition's span of them
        for topic in {t for t, _p in fresh}:  # each topic's rows, every partition at once
            rows, spans = [], {}
            for (t, p), part in rows_of.items():
                if t == topic:
                    spans[p] = (len(rows), len(rows) + len(part))
                    rows.extend(part)
            if not rows:
                continue
            columns = rows_to_columns(rows, dict(self.sources[topic].schema_))
            landable[topic] = (columns, rows, spans)
            for view in self.views[topic]:
                events[(view.name, view.version)] = (view, self.evaluators[(view.name, view.version)].evaluate_rows(
                    rows, columns=columns))
        evaluating += clock() - started
        self.stats.seconds["decode"] += decoding
        self.stats.seconds["evaluate"] += evaluating
        # the previous batch's outcome (Redis ran its transaction while this one was decoded)
        if self._finish_pending():  # fenced off: this batch was read after it, so drop it too
            self._fenced(fresh, None)
            return
        progress, expect = {}, {}
        for (topic, partition), items in fresh.items():
            name = _marker("offset", topic, partition)
            progress[name] = str(items[-1].offset())
            progress[_marker("applied_at", topic, partition)] = COMMIT_TIME
            expect[name] = self._stored.get(name)
        # completeness per partition: up to its last message's ingestion time, or, when this
        # poll drained every assigned partition, up to now; a view's watermark is the least
        # mark of its topic (WATERMARK_FROM_MARKS), so one lagging partition holds it back
        for (topic, partition), items in fresh.items():
            last = kafka_ingested_at(items[-1])
            self._marks[(topic, partition)] = max(self._marks.get((topic, partition), 0), last)
        if caught_up:
            now = self.clock()
            for key in self._marks:
                self._marks[key] = max(self._marks[key], now)
        for (topic, partition), mark in self._marks.items():
            progress[_marker("mark", topic, partition)] = str(mark)
        started = clock()
        try:  # the previous batch's landing must be done before this commit moves applied_at
            pending = begin_apply(self.writer, list(events.values()), progress=progress, expect=expect,
                                  watermark_topics=self._watermark_topics(),
                                  after_read=lambda _attempt: self._wait_landing(),
                                  extra=self._committed_counters(events, consumed))
        except ProgressConflict as conflict:
            self.stats.seconds["apply"] += clock() - started
            self._fenced(fresh, conflict)
            return
        self.stats.seconds["apply"] += clock() - started
        self._pending = (pending, fresh, rows_of, events, dead, consumed, landable, progress)
        if not overlap:
            self._finish_pending()
        self.stats.seconds["process"] += clock() - began

    def _finish_pending(self) -> bool:
        """Wait for the outcome of the batch whose transaction was sent last (if any), then
        land it (in the background), send its dead letters and publish its counters. Returns
        True when it was fenced off (another process owns its partitions: nothing written)."""
        if self._pending is None:
            return False
        clock = time.perf_counter
        (pending, fresh, rows_of, events, dead, consumed, landable, progress), self._pending = self._pending, None
        started = clock()
        try:
            batch = pending.finish()
        except ProgressConflict as conflict:  # lost the lock, and the partitions before the retry
            self.stats.seconds["apply"] += clock() - started
            self._fenced(fresh, conflict)
            return True
        self.stats.seconds["apply"] += clock() - started
        for name, value in progress.items():
            if name.startswith("offset/"):
                self._stored[name] = value
        for topic, letter in dead:  # after the commit: a fenced-off batch sends none
            self._dead_letter(topic, letter)
        self.stats.consumed += consumed
        self.stats.batches += 1
        self.stats.applied += sum(len(v[1]) for v in events.values())
        self.stats.tiles += batch.tiles
        self.stats.last_commit_us = batch.committed_at
        todo = []
        for (topic, partition), items in fresh.items():
            landed = self._landed.get((topic, partition), -1)
            if items[-1].offset() <= landed:
                continue  # already in the offline log (a bootstrap handoff): applied, not landed again
            first = next(m.offset() for m in items if m.offset() > landed)
            columns, rows, spans = landable.get(topic, (None, [], {}))
            lo, hi = spans.get(partition, (0, 0))
            while lo < hi and rows[lo]["_offset"] <= landed:
                lo += 1
            todo.append((topic, partition, first, items[-1].offset(), columns, rows, lo, hi))
        self._land_later(todo, batch.committed_at)
        started = clock()
        self._publish(fresh, rows_of, events, batch)
        self.stats.seconds["publish"] += clock() - started
        return False

    def _land_later(self, todo: list, applied_at: int) -> None:
        """Land a committed batch in a background thread, so writing and syncing its Parquet
        files overlaps the next batch's decoding, evaluation and merge. At most one batch is
        applied but not landed: the next commit waits for this landing (it would move
        ``applied_at``, which a replay after a crash stamps on the rows it lands)."""
        if not todo:
            return
        if self._land_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._land_pool = ThreadPoolExecutor(1, thread_name_prefix="parity-land")
            self._sync_pool = ThreadPoolExecutor(8, thread_name_prefix="parity-land-file")

        def land() -> None:
            started = time.perf_counter()
            tables: dict[str, object] = {}
            for topic, _partition, _first, _last, columns, rows, lo, hi in todo:
                if hi > lo and topic not in tables:
                    tables[topic] = self._arrow_rows(topic, columns, rows, applied_at)
            # one file per partition, written and synced side by side (fsync waits on the disk)
            done = [self._sync_pool.submit(self._land, topic, partition, first, last,
                                           tables[topic].slice(lo, hi - lo) if hi > lo else None)
                    for topic, partition, first, last, _columns, _rows, lo, hi in todo]
            self.stats.landed += sum(future.result() for future in done)
            self.stats.seconds["land"] += time.perf_counter() - started

        self._landing = self._land_pool.submit(land)

    def _wait_landing(self) -> None:
        """Wait for the batch being landed (re-raises its error: the process then stops, and
        a restart lands the batch again from the broker)."""
        landing, self._landing = self._landing, None
        if landing is not None:
            started = time.perf_counter()
            landing.result()
            self.stats.seconds["land_wait"] += time.perf_counter() - started

    def _committed_counters(self, events, consumed: int) -> list[tuple]:
        """The engine counters that commit with the batch, so a crash cannot leave them behind
        its tiles: events and batches, and each view's ``newest_ts`` (event-time lag)."""
        from parity.registry.online.keys import engine_key

        key = engine_key(self.writer.project)
        out: list[tuple] = [(b"HINCRBY", key, b"events", consumed), (b"HINCRBY", key, b"batches", 1)]
        pairs = [x for view, items in events.values() if len(items)
                 for x in (f"newest_ts/{view.name}@{view.version}", int(items.ts.max()))]
        if pairs:
            out.append((b"EVAL", MAX_FIELDS_SCRIPT, 1, key, *pairs))
        return out

    def _fenced(self, fresh, conflict: ProgressConflict | None) -> None:
        """Another process moved this batch's offsets (it owns those partitions now): nothing
        was written; forget the batch and seek back to the stored offsets. ``conflict`` None:
        a batch consumed after a fenced-off one, dropped with it (not counted again)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._wait_landing()

        if conflict is not None:
            self.stats.conflicts += 1
            LOG.warning("batch dropped: %s", conflict)
        progress = self.writer.read_progress()
        for topic, partition in fresh:
            name = _marker("offset", topic, partition)
            stored = progress.get(name)
            self._stored[name] = stored
            landed = progress.get(_marker("landed", topic, partition))
            self._landed[(topic, partition)] = -1 if landed is None else int(landed)
            if self._consumer is not None:
                try:  # nothing stored yet: from the beginning, as on assignment
                    self._consumer.seek(TopicPartition(topic, partition,
                                                       OFFSET_BEGINNING if stored is None else int(stored) + 1))
                except Exception as exc:  # the partition is no longer assigned: the rebalance resumes it
                    LOG.info("no seek on %s/%s: %s", topic, partition, exc)

    def _publish(self, fresh, rows_of, events, batch) -> None:
        """Freshness counters for ``parity status`` and /metrics, in ``p:<project>:_engine``
        (best effort, outside the batch's transaction, summed over engine processes): tiles
        written, dead letters by reason, the applied_at - ingested_at histogram, and per
        partition the end offset the broker last reported (``end/<topic>/<partition>``, for
        consumer lag). Events, batches and the newest applied event time per view commit with
        the batch (:meth:`_committed_counters`)."""
        from parity.registry.online.keys import engine_key

        committed_at = batch.committed_at
        pipe = self.writer.client.pipeline(transaction=False)
        key = engine_key(self.writer.project)
        pipe.hincrby(key, "tiles", batch.tiles)
        for reason, count in self.stats.dead_letters.items():
            delta = count - self._published_dead[reason]
            if delta:
                pipe.hincrby(key, f"dead/{reason}", delta)
        for (topic, partition), items in fresh.items():
            end = items[-1].offset() + 1
            if self._consumer is not None:
                from confluent_kafka import TopicPartition

                try:
                    _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                    end = max(end, high)
                except Exception:  # no cached figure yet
                    pass
            pipe.eval(MAX_SCRIPT, 1, key, f"end/{topic}/{partition}", end)
        ingested = np.fromiter((row["_ingested_at"] for rows in rows_of.values() for row in rows), dtype=np.int64)
        if len(ingested):  # each event in the first bucket its latency fits (the last: "inf")
            latency = (committed_at - ingested) / 1e6
            found = np.bincount(np.searchsorted(np.asarray(LATENCY_BUCKETS), latency, side="left"),
                                minlength=len(LATENCY_BUCKETS) + 1)
            for bucket, count in zip((*LATENCY_BUCKETS, "inf"), found.tolist()):
                if count:
                    pipe.hincrby(key, f"latency_le/{bucket}", count)
        pipe.hset(key, "last_batch_at", committed_at)
        try:
            pipe.execute()
        except Exception as exc:  # counters only: the batch itself is committed and landed
            LOG.warning("engine counters not published: %s", exc)
            return
        self._published_dead = Counter(self.stats.dead_letters)

    def _arrow_rows(self, topic: str, columns, rows: list[dict], applied_at: int):
        """The offline log's table of decoded rows (their columns already built for the
        evaluation), stamped with ``applied_at``."""
        import numpy as np
        import pyarrow as pa

        n = len(rows)
        arrays = []
        schema = self.offline_log.arrow_schema(self.sources[topic])
        for f in schema:
            if f.name == "_applied_at":
                arrays.append(pa.array(np.full(n, applied_at, dtype=np.int64)).cast(f.type))
            elif f.name in ("_ingested_at", "_partition", "_offset"):
                values = np.fromiter((r[f.name] for r in rows), dtype=np.int64, count=n)
                arrays.append(pa.array(values).cast(f.type))
            else:
                vec = columns[f.name]
                if pa.types.is_timestamp(f.type):  # timestamps are integer microseconds
                    arrays.append(pa.array(vec.values, mask=vec.null).cast(f.type))
                else:
                    arrays.append(pa.array(vec.values, type=f.type, mask=vec.null))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _land(self, topic: str, partition: int, first: int, last: int, table) -> int:
        """Write offsets ``first..last`` of a partition to the offline log (``table``: their
        good rows, or None), then move ``landed/<topic>/<partition>`` forward. Returns the
        rows landed."""
        if table is not None and table.num_rows:
            self.offline_log.write(self.sources[topic], table, batch_id=f"k-{topic}-{partition}-{first}-{last}")
        # only ever forward: a process that lost the partition may land its last batch late
        self.writer.client.eval(MAX_SCRIPT, 1, self.writer_progress_key, _marker("landed", topic, partition), last)
        self._landed[(topic, partition)] = max(last, self._landed.get((topic, partition), -1))
        return 0 if table is None else table.num_rows

    @property
    def writer_progress_key(self) -> bytes:
        from parity.registry.online.keys import progress_key

        return progress_key(self.writer.project)

    def _land_replay(self, key: tuple[str, int], messages: list, limit: int) -> None:
        """Land an applied-but-unlanded batch again (after a crash), never applying it twice."""
        topic, partition = key
        self._finish_pending()
        self._wait_landing()
        progress = self.writer.read_progress()
        applied_at = int(progress[_marker("applied_at", topic, partition)])
        decoder = self.decoders[topic]
        rows = []
        for message in messages:
            decoded = decoder.decode(message.value() or b"", partition=partition, offset=message.offset(),
                                     ingested_at_us=kafka_ingested_at(message))
            if not isinstance(decoded, DeadLetter):
                rows.append(decoded)
        table = None
        if rows:
            table = self._arrow_rows(topic, rows_to_columns(rows, dict(self.sources[topic].schema_)), rows, applied_at)
        self.stats.landed += self._land(topic, partition, messages[0].offset(), limit, table)
        self._replay.pop(key, None)

    def dead_letter_topic(self, topic: str) -> str:
        """The source's ``kafka.dead_letter_topic``, else ``<topic>.dlq``."""
        face = self.sources[topic].kafka
        return face.dead_letter_topic or f"{topic}.dlq"

    def _dead_letter(self, topic: str, letter: DeadLetter) -> None:
        """Send a bad message to the dead-letter sink (a topic, or a JSON-lines file per
        partition) with its reason. At least once: a batch re-consumed after a crash sends
        its dead letters again."""
        self.stats.dead_letters[letter.reason] += 1
        if self.dead_letter_topics:
            if self._dlq_producer is None:
                from confluent_kafka import Producer

                from parity.streaming.kafka import ensure_topics, producer_config

                ensure_topics(self.bootstrap, {self.dead_letter_topic(t): 1 for t in self.sources})
                self._dlq_producer = Producer(producer_config(self.bootstrap))
            self._dlq_producer.produce(self.dead_letter_topic(topic), value=letter.to_bytes(),
                                       headers={"reason": letter.reason})
            self._dlq_producer.poll(0)
        if self.dead_letter_dir is not None:
            folder = self.dead_letter_dir / topic
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"partition-{letter.partition}.jsonl", "ab") as out:
                out.write(letter.to_bytes() + b"\n")

"""The crash test of the embedded stream engine: many SIGKILLs while a live stream is produced.

A project from ``parity init`` (the example definitions) on ``parity dev up`` (embedded Redis
and broker). ``parity produce`` sends ``PARITY_CRASH_EVENTS`` events (default 1,000,000) at
a rate that keeps it producing through the kills; meanwhile ``parity stream`` is SIGKILLed
``PARITY_CRASH_KILLS`` times (default 10) at seeded random moments and restarted: most a
random 0.5-6 s after the new process committed its first batch (with a backlog: mid-batch);
some at a random moment of its start (maybe still waiting for its partitions); some as soon
as a batch is seen applied but not yet landed (the crash window the replay path covers).
Then ``parity stream --idle-exit 5`` drains the rest.

Checks, all after the fact:

1. the offline log holds every produced event exactly once: per source, count == distinct
   (partition, offset) == distinct event_id; the total is what ``parity produce`` delivered;
   and the log equals, row for row, the messages read back from the broker directly (a
   consumer of its own, outside the engine's group);
2. for **every** entity of every streamed online view (every user, video and creator in the
   log, plus a few absent ones), the online values at one ``now`` equal the naive oracle
   (``tests/oracle.py``) over that entity's events read back from the log (tie-break
   ``_order`` = (partition, offset), the engine's), and every status is the one the oracle
   implies (``ok``; ``missing`` for an entity without events; either when all its events
   are past the view's tile retention; never ``stale``). The oracle reads the offline log
   only, never the online store.

Long: marked ``long`` and deselected by default; ``pytest -m long tests/test_stream_crash.py -s``
runs it and prints a summary. Knobs (environment): PARITY_CRASH_EVENTS, PARITY_CRASH_KILLS,
PARITY_CRASH_SEED, PARITY_CRASH_RATE (events/s; default EVENTS / (KILLS * 25 s), so that
production outlasts the kill cycles, each ~15-20 s: a restarted process waits for the dead
member's session to end before it gets the partitions back).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest

import oracle
from parity.feature_store import FeatureStore
from parity.registry.durations import to_micros
from parity.registry.semantics import resolution_retention

pytestmark = pytest.mark.long

RUN = [sys.executable, "-m", "parity.cli"]
EVENTS = int(os.environ.get("PARITY_CRASH_EVENTS", "1000000"))
KILLS = int(os.environ.get("PARITY_CRASH_KILLS", "10"))
SEED = int(os.environ.get("PARITY_CRASH_SEED", "20250"))
RATE = float(os.environ.get("PARITY_CRASH_RATE", "0")) or max(100.0, EVENTS / (KILLS * 25.0))
CHUNK = 400  # entities per online lookup
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # how `parity produce` writes ts


def parity(*args, cwd, timeout=300):
    result = subprocess.run([*RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class Engines:
    """``parity stream`` processes, each with its own log file."""

    def __init__(self, project: Path, logs: Path):
        self.project, self.logs, self.started = project, logs, []

    def start(self, *args: str) -> subprocess.Popen:
        log = self.logs / f"stream-{len(self.started):02d}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([*RUN, "stream", *args], cwd=self.project, stdout=out, stderr=subprocess.STDOUT)
        process.log = log
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


def applied_total(progress: dict) -> int:
    """Sum of the applied offsets: it moves only when a process commits a batch."""
    return sum(int(v) for k, v in progress.items() if k.startswith("offset/"))


def unlanded(progress: dict) -> dict[str, tuple[int, int]]:
    """Partitions with an applied batch not (yet) in the offline log: {partition: (landed, applied)}."""
    out = {}
    for name, value in progress.items():
        if name.startswith("offset/"):
            landed = progress.get("landed/" + name[len("offset/"):])
            landed = -1 if landed is None else int(landed)
            if landed < int(value):
                out[name[len("offset/"):]] = (landed, int(value))
    return out


class Backlog:
    """Messages in the broker not yet applied: high watermarks minus applied offsets (a lower
    bound: the embedded broker's high watermarks lag behind by up to a record batch)."""

    def __init__(self, bootstrap: str, topics: list[str]):
        from confluent_kafka import Consumer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"crash-lag-{os.getpid()}",
                                  "enable.auto.commit": False})
        metadata = self.consumer.list_topics(timeout=10)
        self.partitions = [(t, p) for t in topics for p in metadata.topics[t].partitions]

    def __call__(self, progress: dict) -> int:
        from confluent_kafka import TopicPartition

        total = 0
        for topic, partition in self.partitions:
            end = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            total += max(0, end - int(progress.get(f"offset/{topic}/{partition}", -1)) - 1)
        return total

    def close(self) -> None:
        self.consumer.close()


def wait_for_topics(bootstrap: str, topics: list[str], timeout: float = 60) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        existing = admin.list_topics(timeout=5).topics
        if all(t in existing and existing[t].partitions for t in topics):
            return
        time.sleep(0.2)
    raise AssertionError(f"the producer did not create {topics} within {timeout} s")


def broker_table(bootstrap: str, topic: str, fields: dict[str, str], idle: float = 5.0) -> pa.Table:
    """Every message of ``topic``, read straight from the broker (assigned partitions, no
    group membership, nothing committed): ``_partition``, ``_offset`` and the JSON fields
    (``ts`` kept as the string the producer sent). Reads until ``idle`` seconds bring
    nothing: the embedded broker's high watermarks lag the true end offsets (by its last
    record batch per partition, it seems), so they cannot tell where a partition ends."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"crash-check-{os.getpid()}-{topic}",
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest", "fetch.max.bytes": 52_428_800})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        names = list(fields)
        columns = {name: [] for name in ["_partition", "_offset", *names]}
        pieces = []
        deadline = time.monotonic() + 900
        last = time.monotonic()
        while time.monotonic() - last < idle:
            assert time.monotonic() < deadline, f"reading {topic} back from the broker took too long"
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                assert message.error() is None, message.error()
                body = orjson.loads(message.value())
                assert set(body) == set(names), body
                columns["_partition"].append(message.partition())
                columns["_offset"].append(message.offset())
                for name in names:
                    columns[name].append(body[name])
                last = time.monotonic()
            if len(columns["_offset"]) >= 100_000:
                pieces.append(pa.table(columns))
                columns = {name: [] for name in columns}
        pieces.append(pa.table(columns))
        return pa.concat_tables(pieces)
    finally:
        consumer.close()


def grouped_rows(scan: str, key: str, batch_rows: int = 50_000):
    """(entity, its rows) for every entity of a source, from the offline log, sorted by entity."""
    reader = duckdb.sql(f"SELECT * FROM {scan} ORDER BY {key}, _partition, _offset").to_arrow_reader(batch_rows)
    current, rows = None, []
    for batch in reader:
        for row in batch.to_pylist():
            if row[key] != current and rows:
                yield current, rows
                rows = []
            current = row[key]
            rows.append(row)
    if rows:
        yield current, rows


def must_hold(view, events: list[dict], now_us: int) -> str:
    """Whether the online store must hold the entity in ``view`` at ``now``: "no" (no events:
    ``missing``), "yes" (an event whose tile outlives ``now`` at some resolution: the writer,
    whose clock is before ``now``, stored it and keeps the key past its retention horizon), or
    "either" (every event is past retention: never stored, or aged out; docs/online.md calls
    that ``missing``). Derived from the definitions' retention rule, not from the store."""
    if not events:
        return "no"
    keep = resolution_retention(view)
    for event in events:
        ts = to_micros(event["_ts"])
        for resolution, retained in keep.items():
            if retained is None or ts - ts % resolution + resolution + retained > now_us:
                return "yes"
    return "either"


def expected_statuses(feature, events: list[dict], want, held: str) -> set[str]:
    """The statuses the oracle implies (SLOs are not exceeded right after the drain)."""
    if feature.window is None:
        if not any(e.get(feature.column) is not None for e in events):
            return {"missing"}
        return {"expired"} if want is None else {"ok"}
    return {"yes": {"ok"}, "no": {"missing"}, "either": {"ok", "missing"}}[held]


def check_entities(store, views, key: str, timestamp_field: str, entities, now: datetime, tally: dict) -> None:
    """Online lookups of one chunk of entities against the oracle over their logged events."""
    values = [entity for entity, _rows in entities]
    features = [f"{v.name}:{f.name}" for v in views for f in v.features]
    online = store.get_online_features({key: values}, features=features, now=now)
    now_us = to_micros(now)
    for i, (entity, rows) in enumerate(entities):
        events = []
        for row in rows:
            event = dict(row)
            event["_ts"] = row[timestamp_field]
            event["_order"] = (row["_partition"], row["_offset"])
            events.append(event)
        for view in views:
            held = must_hold(view, events, now_us)
            for feature in view.features:
                name = f"{view.name}__{feature.name}"
                want = oracle.feature_value(view, feature, events, {key: entity}, now)
                got = online.values[name][i]
                assert oracle.close(want, got, rel=1e-9), (name, key, entity, now, want, got, len(events))
                status = online.status[name][i]
                assert status in expected_statuses(feature, events, want, held), (name, key, entity, now, status,
                                                                                  held, len(events))
            tally[(view.name, held, online.status[f"{view.name}__{view.features[0].name}"][i])] += 1


def test_stream_engine_survives_many_sigkills_while_producing(tmp_path):
    rng = random.Random(SEED)
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    parity("apply", cwd=project)
    logs = tmp_path / "logs"
    logs.mkdir()
    engines = Engines(project, logs)
    producer = produced_out = None
    summary = {"events": EVENTS, "rate": RATE, "kills planned": KILLS, "seed": SEED}
    began = time.monotonic()
    try:
        parity("dev", "up", cwd=project)
        store = FeatureStore(project / "feature_store.yaml")
        defs = store.definitions
        from parity.embedded import kafka_bootstrap

        bootstrap = kafka_bootstrap(store.config, start=False)
        stream_sources = {s.name: s for s in defs.sources if s.kind == "stream" and s.kafka}
        writer = store.online_writer()

        # -- produce in the background, kill the engine again and again while it runs ----------
        produced_out = open(logs / "produce.out", "wb")
        producer = subprocess.Popen([*RUN, "produce", "--count", str(EVENTS), "--rate", f"{RATE:g}", "--seed",
                                     str(SEED), "--quiet"], cwd=project, stdout=produced_out,
                                    stderr=subprocess.STDOUT)
        wait_for_topics(bootstrap, [s.kafka.topic for s in stream_sources.values()])
        produce_started = time.monotonic()
        kills = []
        backlog = Backlog(bootstrap, [s.kafka.topic for s in stream_sources.values()])
        for k in range(KILLS):
            before = applied_total(writer.read_progress())
            engine = engines.start()
            started = time.monotonic()
            mode = rng.choices(["start", "gap", "random"], weights=[2, 2, 6])[0]
            delay = rng.uniform(1.0, 10.0) if mode == "start" else rng.uniform(0.5, 6.0)
            if mode == "start":  # a random moment of its start: maybe before any commit
                time.sleep(delay)
            else:
                deadline = started + 120
                while applied_total(writer.read_progress()) == before:  # its first commit
                    assert engine.poll() is None, f"parity stream exited by itself:\n{tail(engine.log)}"
                    if producer.poll() is not None and time.monotonic() - started > 30:
                        break  # nothing left to commit: kill it anyway
                    assert time.monotonic() < deadline, f"no commit within 120 s:\n{tail(engine.log)}"
                    time.sleep(0.02)
                if mode == "gap":  # between a batch's commit and its landing, if caught in `delay` s
                    until = time.monotonic() + delay
                    while time.monotonic() < until and not unlanded(writer.read_progress()):
                        time.sleep(0.002)
                else:
                    time.sleep(delay)
            assert engine.poll() is None, f"parity stream exited by itself:\n{tail(engine.log)}"
            producing = producer.poll() is None
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            progress = writer.read_progress()
            kills.append({"kill": k + 1, "mode": mode, "delay_s": round(delay, 2),
                          "alive_s": round(time.monotonic() - started, 1),
                          "committed": applied_total(progress) != before, "producing": producing,
                          "backlog": backlog(progress), "unlanded": unlanded(progress)})
            print(f"kill {k + 1}: {kills[-1]}", flush=True)
        backlog.close()

        # -- drain: a last process runs until 5 s without messages ---------------------------
        drain = engines.start("--idle-exit", "5")
        producer.wait(timeout=EVENTS / RATE + 600)
        produced_at = time.monotonic()
        produced_out.close()
        produced = (logs / "produce.out").read_text()
        assert producer.returncode == 0, produced
        match = re.search(r"sent ([\d,]+) events \(([^)]*)\).* ([\d,]+) errors", produced)
        assert match, produced
        sent = int(match.group(1).replace(",", ""))
        assert sent == EVENTS and match.group(3) == "0", produced
        if drain.poll() is not None:  # it idled out before the producer ended: drain again
            assert drain.returncode == 0, tail(drain.log)
            drain = engines.start("--idle-exit", "5")
        drain.wait(timeout=3600)
        drained_at = time.monotonic()
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        out = drain.log.read_text()
        assert drain.returncode == 0, out
        assert "dead letters: none" in out, out

        during = sum(1 for k in kills if k["producing"])
        summary.update({
            "kills": len(kills), "kills while producing": during,
            "kills after a commit of the killed process": sum(1 for k in kills if k["committed"]),
            "kills leaving an applied but unlanded batch": sum(1 for k in kills if k["unlanded"]),
            "kills with a backlog > 1 batch (mid-batch)": sum(1 for k in kills if k["backlog"] > 5000),
            "engine processes": len(engines.started), "engine restarts": len(engines.started) - 1,
            "produce s": round(produced_at - produce_started, 1), "drain s (after the producer ended)":
                round(drained_at - produced_at, 1), "drain output": out.strip().splitlines()[-1],
            "batches dropped (fenced)": sum(p.log.read_text(errors="replace").count("batch dropped")
                                            for p in engines.started),
        })
        assert len(kills) >= KILLS
        assert during > len(kills) / 2, kills  # most kills hit a live stream

        report = json.loads(parity("status", "--json", "--sample", "0", cwd=project).stdout)
        applied = {(p["topic"], p["partition"]): (p["applied_offset"], p["landed_offset"])
                   for p in report["partitions"]}
        assert applied and all(a == landed for a, landed in applied.values()), applied
        assert not report["engine"]["dead_letters"], report["engine"]

        # -- check 1: the offline log holds each produced event exactly once --------------------
        checked_at = time.monotonic()
        total = 0
        for name, source in stream_sources.items():
            scan = store.scan_sql(name)
            count, places, ids = duckdb.sql(f"SELECT count(*), count(DISTINCT (_partition, _offset)), "
                                            f"count(DISTINCT event_id) FROM {scan}").fetchall()[0]
            assert count == places == ids, (name, count, places, ids)
            total += count
            fields = {c: t for c, t in source.schema_.items()}
            kafka = broker_table(bootstrap, source.kafka.topic, fields)
            assert kafka.num_rows == count, (name, kafka.num_rows, count)
            columns = ", ".join(f'"{c}"' for c in fields if c != source.timestamp_field)
            ts = source.timestamp_field
            logged = f"SELECT _partition, _offset, {columns}, strftime(\"{ts}\", '{TS_FORMAT}') AS ts_text FROM {scan}"
            sent_rows = f"SELECT _partition, _offset, {columns}, \"{ts}\" AS ts_text FROM kafka"
            only_log = duckdb.sql(f"SELECT count(*) FROM ({logged} EXCEPT ALL {sent_rows})").fetchall()[0][0]
            only_kafka = duckdb.sql(f"SELECT count(*) FROM ({sent_rows} EXCEPT ALL {logged})").fetchall()[0][0]
            assert only_log == only_kafka == 0, (name, only_log, only_kafka)
        assert total == sent == EVENTS, (total, sent)

        # -- check 2: online == oracle for every entity, at one `now` ----------------------------
        groups = {}  # (source, key) -> views
        for view in defs.feature_views:
            if view.online and view.source in stream_sources:
                (join_key,) = defs.entity(view.entity).join_keys
                groups.setdefault((view.source, join_key, view.source_column_of(join_key)), []).append(view)
        assert {v.name for vs in groups.values() for v in vs} >= {"user_engagement", "video_engagement",
                                                                  "video_safety", "creator_follows"}
        entities_checked, tally = {}, Counter()
        for (source_name, join_key, column), views in groups.items():
            scan = store.scan_sql(source_name)
            timestamp_field = stream_sources[source_name].timestamp_field
            chunk, seen, biggest = [], 0, None
            for entity, rows in grouped_rows(scan, column):
                if entity is None:
                    continue
                chunk.append((entity, rows))
                seen += 1
                biggest = entity if biggest is None else max(biggest, entity)
                if len(chunk) >= CHUNK:
                    check_entities(store, views, join_key, timestamp_field, chunk, now, tally)
                    chunk = []
            absent = [(biggest + 1, []), (biggest + 1000, []), (-7, [])]  # never seen: missing everywhere
            check_entities(store, views, join_key, timestamp_field, chunk + absent, now, tally)
            distinct = duckdb.sql(f"SELECT count(DISTINCT {column}) FROM {scan}").fetchall()[0][0]
            assert seen == distinct, (column, seen, distinct)
            entities_checked[f"{join_key} ({', '.join(v.name for v in views)})"] = seen
        summary.update({"entities checked": entities_checked,
                        "(view, must hold, status): entities": dict(sorted(tally.items())),
                        "check s": round(time.monotonic() - checked_at, 1),
                        "wall s": round(time.monotonic() - began, 1)})
        print("\ncrash test summary:\n" + "\n".join(f"  {k}: {v}" for k, v in summary.items()), flush=True)
    finally:
        engines.kill_all()
        if producer is not None and producer.poll() is None:
            producer.send_signal(signal.SIGKILL)
            producer.wait(10)
        if produced_out is not None:
            produced_out.close()
        subprocess.run([*RUN, "dev", "down"], cwd=project, capture_output=True, timeout=120)


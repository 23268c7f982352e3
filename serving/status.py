"""``parity status``: per-view freshness and the stream engine's counters, read from Redis.

Per online view: its watermark (the instant its input is complete up to) and the ingestion
lag ``now - watermark`` against its ``freshness_slo`` (the same rule that marks served
values ``stale``), and the event-time lag ``now - newest applied event time``. Per
partition: the offset applied with the tiles, the offset landed in the offline log, the end
offset the engine last saw and the consumer lag ``end - (applied + 1)``. Engine: events,
events/s over the sampling interval, batches, tile records written, dead letters by
reason, and the ``applied_at - ingested_at`` histogram (bucket counts and percentiles as
bucket upper bounds).

The end offset (``end/<topic>/<partition>`` in the engine's hash) is the larger of the high
watermark the engine's consumer last got from the broker and its last consumed offset + 1,
as of the engine's last batch on that partition. On Kafka the high watermark is the
partition's end when the broker answered; the embedded broker (Tansu) can report the base
offset of the partition's last record batch + 1, up to one producer batch short, so there
the consumer lag is a lower bound. While the engine is stopped the end offset is not
refreshed: the lag is as of its last batch (the views' ingestion lag keeps growing).

:mod:`parity.serving.stream_metrics` exposes the same report on ``/metrics``.
"""

from __future__ import annotations

import time
from typing import Any

from parity.registry.durations import from_micros, parse_duration
from parity.registry.models import Definitions
from parity.registry.online.keys import engine_key, meta_key, progress_key, view_prefix
from parity.registry.online.writer import wall_clock_us
from parity.registry.semantics import ingestion_lag_exceeds


def _iso(us: int | None) -> str | None:
    return None if us is None else from_micros(us).isoformat()


def _percentile(buckets: dict[str, int], q: float) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    ordered = sorted(buckets.items(), key=lambda kv: _bound(kv[0]))
    seen = 0
    for bound, count in ordered:
        seen += count
        if seen >= q * total:
            return float("inf") if bound == "inf" else float(bound)
    return None


def _bound(name: str) -> float:
    return float("inf") if name == "inf" else float(name)


def status(client, project: str, defs: Definitions, sample: float = 1.0) -> dict[str, Any]:
    """The report (JSON-ready). With ``sample > 0``, the engine's counters are read twice,
    ``sample`` seconds apart, for ``events_per_s``; with 0, once and the rate is None."""
    first = None
    if sample > 0:
        first = {k.decode(): v.decode() for k, v in client.hgetall(engine_key(project)).items()}
        time.sleep(sample)
    engine = {k.decode(): v.decode() for k, v in client.hgetall(engine_key(project)).items()}
    now = wall_clock_us()
    views = []
    for view in defs.feature_views:
        if not view.online:
            continue
        raw = client.hget(meta_key(view_prefix(project, view.name, view.version)), "watermark")
        watermark = int(raw) if raw else None
        newest = engine.get(f"newest_ts/{view.name}@{view.version}")
        lag = None if watermark is None else (now - watermark) / 1e6
        slo = parse_duration(view.freshness_slo) / 1e6 if view.freshness_slo else None
        views.append({
            "view": f"{view.name}@{view.version}", "freshness_slo_s": slo, "watermark": _iso(watermark),
            "ingestion_lag_s": lag, "stale": ingestion_lag_exceeds(view, watermark, now),
            "newest_event": _iso(int(newest)) if newest else None,
            "event_time_lag_s": (now - int(newest)) / 1e6 if newest else None,
        })
    progress = {k.decode(): v.decode() for k, v in client.hgetall(progress_key(project)).items()}
    partitions = []
    for name, value in sorted(progress.items()):
        if name.startswith("offset/"):
            _kind, topic, partition = name.rsplit("/", 2)
            applied = int(value)
            end = engine.get(f"end/{topic}/{partition}")
            end = None if end is None else int(end)
            partitions.append({"topic": topic, "partition": int(partition), "applied_offset": applied,
                               "landed_offset": int(progress[f"landed/{topic}/{partition}"])
                               if f"landed/{topic}/{partition}" in progress else None,
                               "end_offset": end,
                               "consumer_lag": None if end is None else max(0, end - (applied + 1))})
    buckets = {k.split("/", 1)[1]: int(v) for k, v in engine.items() if k.startswith("latency_le/")}
    events = int(engine.get("events", 0))
    rate = (events - int(first.get("events", 0))) / sample if first is not None else None
    return {
        "now": _iso(now), "views": views, "partitions": partitions,
        "engine": {
            "events": events, "events_per_s": rate, "batches": int(engine.get("batches", 0)),
            "tiles": int(engine.get("tiles", 0)),
            "last_batch_at": _iso(int(engine["last_batch_at"])) if "last_batch_at" in engine else None,
            "dead_letters": {k.split("/", 1)[1]: int(v) for k, v in engine.items() if k.startswith("dead/")},
            # non-cumulative counts per bucket upper bound (seconds; "inf" for the rest)
            "applied_minus_ingested_buckets": dict(sorted(buckets.items(), key=lambda kv: _bound(kv[0]))),
            "applied_minus_ingested_p50_s": _percentile(buckets, 0.5),
            "applied_minus_ingested_p99_s": _percentile(buckets, 0.99),
        },
    }


def render(report: dict[str, Any]) -> str:
    def num(value, unit="s"):
        if value == float("inf"):  # a percentile past the histogram's last bound
            return "inf"
        return "-" if value is None else f"{value:,.1f}{unit}"

    lines = [f"status at {report['now']}", "", f"{'view':28} {'slo':>6} {'ingest lag':>11} {'event lag':>10}  state"]
    for v in report["views"]:
        state = "STALE" if v["stale"] else "fresh"
        lines.append(f"{v['view']:28} {num(v['freshness_slo_s']):>6} {num(v['ingestion_lag_s']):>11} "
                     f"{num(v['event_time_lag_s']):>10}  {state}")
    e = report["engine"]
    dead = ", ".join(f"{k} {n}" for k, n in sorted(e["dead_letters"].items())) or "none"
    lines += ["", f"engine: {e['events']:,} events, {num(e['events_per_s'], '')} events/s, {e['batches']:,} batches, "
              f"{e['tiles']:,} tiles written, last batch {e['last_batch_at'] or '-'}",
              f"        applied - ingested: p50 <= {num(e['applied_minus_ingested_p50_s'])}, "
              f"p99 <= {num(e['applied_minus_ingested_p99_s'])}; dead letters: {dead}", ""]
    lines.append(f"{'topic':24} {'partition':>9} {'applied':>10} {'landed':>10} {'lag':>8}")
    for p in report["partitions"]:
        landed = "-" if p["landed_offset"] is None else f"{p['landed_offset']:,}"
        lag = "-" if p["consumer_lag"] is None else f"{p['consumer_lag']:,}"
        lines.append(f"{p['topic']:24} {p['partition']:>9} {p['applied_offset']:>10,} {landed:>10} {lag:>8}")
    return "\n".join(lines)

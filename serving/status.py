"""``parity status``: per-view freshness and the stream engine's counters, read from Redis.

Per online view: its watermark (the instant its input is complete up to) and the ingestion
lag ``now - watermark`` against its ``freshness_slo`` (the same rule that marks served
values ``stale``), and the event-time lag ``now - newest applied event time``. Per
partition: the offset applied with the tiles and the offset landed in the offline log.
Engine: events, events/s over the sampling interval, dead letters by reason, and the
``applied_at - ingested_at`` latency percentiles from the engine's histogram (bucket upper
bounds).
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
    ordered = sorted(buckets.items(), key=lambda kv: float("inf") if kv[0] == "inf" else float(kv[0]))
    seen = 0
    for bound, count in ordered:
        seen += count
        if seen >= q * total:
            return float("inf") if bound == "inf" else float(bound)
    return None


def status(client, project: str, defs: Definitions, sample: float = 1.0) -> dict[str, Any]:
    first = {k.decode(): v.decode() for k, v in client.hgetall(engine_key(project)).items()}
    if sample > 0:
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
            _kind, topic, partition = name.split("/", 2)
            partitions.append({"topic": topic, "partition": int(partition), "applied_offset": int(value),
                               "landed_offset": int(progress[f"landed/{topic}/{partition}"])
                               if f"landed/{topic}/{partition}" in progress else None})
    buckets = {k.split("/", 1)[1]: int(v) for k, v in engine.items() if k.startswith("latency_le/")}
    events = int(engine.get("events", 0))
    rate = (events - int(first.get("events", 0))) / sample if sample > 0 else None
    return {
        "now": _iso(now), "views": views, "partitions": partitions,
        "engine": {
            "events": events, "events_per_s": rate, "batches": int(engine.get("batches", 0)),
            "last_batch_at": _iso(int(engine["last_batch_at"])) if "last_batch_at" in engine else None,
            "dead_letters": {k.split("/", 1)[1]: int(v) for k, v in engine.items() if k.startswith("dead/")},
            "applied_minus_ingested_p50_s": _percentile(buckets, 0.5),
            "applied_minus_ingested_p99_s": _percentile(buckets, 0.99),
        },
    }


def render(report: dict[str, Any]) -> str:
    def num(value, unit="s"):
        return "-" if value is None else f"{value:,.1f}{unit}"

    lines = [f"status at {report['now']}", "", f"{'view':28} {'slo':>6} {'ingest lag':>11} {'event lag':>10}  state"]
    for v in report["views"]:
        state = "STALE" if v["stale"] else "fresh"
        lines.append(f"{v['view']:28} {num(v['freshness_slo_s']):>6} {num(v['ingestion_lag_s']):>11} "
                     f"{num(v['event_time_lag_s']):>10}  {state}")
    e = report["engine"]
    dead = ", ".join(f"{k} {n}" for k, n in sorted(e["dead_letters"].items())) or "none"
    lines += ["", f"engine: {e['events']:,} events, {num(e['events_per_s'], '')} events/s, {e['batches']:,} batches, "
              f"last batch {e['last_batch_at'] or '-'}",
              f"        applied - ingested: p50 <= {num(e['applied_minus_ingested_p50_s'])}, "
              f"p99 <= {num(e['applied_minus_ingested_p99_s'])}; dead letters: {dead}", ""]
    lines.append(f"{'topic':24} {'partition':>9} {'applied':>10} {'landed':>10}")
    for p in report["partitions"]:
        landed = "-" if p["landed_offset"] is None else f"{p['landed_offset']:,}"
        lines.append(f"{p['topic']:24} {p['partition']:>9} {p['applied_offset']:>10,} {landed:>10}")
    return "\n".join(lines)

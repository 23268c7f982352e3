"""The stream engine's freshness figures on Prometheus ``/metrics``, read at scrape time.

:class:`StreamMetrics` is a custom ``prometheus_client`` collector. Every scrape calls
:func:`parity.serving.status.status` with ``sample=0`` (the report ``parity status --json``
prints, so both always agree) and turns it into these families:

===========================================================  =======  ==================================
metric                                                       type     meaning
===========================================================  =======  ==================================
``parity_view_ingestion_lag_seconds{view}``                  gauge    now - the view's watermark
``parity_view_event_time_lag_seconds{view}``                 gauge    now - newest applied event time
``parity_view_stale{view}``                                  gauge    1 when served values are ``stale``
``parity_view_freshness_slo_seconds{view}``                  gauge    the view's ``freshness_slo``
``parity_stream_events_total``                               counter  messages consumed and applied
``parity_stream_batches_total``                              counter  micro-batches committed
``parity_stream_tiles_written_total``                        counter  tile records written
``parity_stream_dead_letters_total{reason}``                 counter  bad messages by reason
``parity_stream_consumer_lag{topic,partition}``              gauge    messages behind the end offset
``parity_stream_applied_offset{topic,partition}``            gauge    last offset applied
``parity_stream_applied_minus_ingested_seconds``             histo.   applied_at - ingested_at
``parity_stream_metrics_available``                          gauge    1 when this scrape read them
===========================================================  =======  ==================================

A view (or partition) whose figure is unknown (no watermark, no event applied, no end offset
seen yet) has no sample in that family rather than a made-up value. The histogram has
``_bucket`` and ``_count`` series but no ``_sum``: the engine keeps bucket counts only, and
a sum made up from bucket bounds would not be the true one.

The counters are the engine's, kept in Redis and summed over its processes (best effort: a
batch whose process died before publishing is not counted). Events per second are
``rate(parity_stream_events_total[...])``.

A Redis error while reading leaves those families out of the scrape (the request still
answers 200 with the HTTP server's own metrics), sets ``parity_stream_metrics_available`` to
0 and counts ``parity_errors_total{type="metrics_redis"}``; the error is logged, never sent.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from parity.registry.models import Definitions
from parity.serving.status import status
from parity.registry.online.keys import DEAD_LETTER_REASONS, LATENCY_BUCKETS  # always exposed, 0 until seen

log = logging.getLogger(__name__)


def _bound(name: str) -> float:
    return float("inf") if name in ("inf", "+Inf") else float(name)


def cumulative_buckets(counts: dict[str, int]) -> list[tuple[str, float]]:
    """Prometheus ``(le, cumulative count)`` pairs, ``+Inf`` last, from the engine's
    non-cumulative counts keyed by upper bound (``"0.005"``, ..., ``"inf"``). Every bound of
    :data:`LATENCY_BUCKETS` is present, plus any other bound found in ``counts``."""
    per_bound: dict[float, int] = {b: 0 for b in LATENCY_BUCKETS}
    per_bound[float("inf")] = 0
    for name, count in counts.items():
        bound = _bound(name)
        per_bound[bound] = per_bound.get(bound, 0) + int(count)
    out, seen = [], 0
    for bound in sorted(per_bound):
        seen += per_bound[bound]
        out.append((floatToGoString(bound), float(seen)))
    return out


class StreamMetrics:
    """Collector of the stream engine's freshness figures for one project's Redis.

    ``on_error(kind)`` is called (with ``"metrics_redis"``, or ``"metrics_internal"`` for any
    other failure) when a scrape could not read them."""

    def __init__(self, client, project: str, defs: Definitions,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.client, self.project, self.defs = client, project, defs
        self.on_error = on_error

    def describe(self) -> list:
        return []  # read at scrape time only (nothing is read from Redis at registration)

    def collect(self) -> Iterator[Metric]:
        import redis

        try:
            families = list(self.families(status(self.client, self.project, self.defs, sample=0)))
        except redis.RedisError as exc:
            log.warning("/metrics: stream figures not read from Redis: %s: %s", type(exc).__name__, exc)
            yield from self._unavailable("metrics_redis")
            return
        except Exception:
            log.exception("/metrics: stream figures not read")
            yield from self._unavailable("metrics_internal")
            return
        yield from families
        yield GaugeMetricFamily("parity_stream_metrics_available",
                                "1 when this scrape read the stream engine's figures from Redis, 0 when it could not "
                                "(the parity_view_* and parity_stream_* families are then absent)", 1)

    def _unavailable(self, kind: str) -> Iterator[Metric]:
        if self.on_error is not None:
            self.on_error(kind)
        yield GaugeMetricFamily("parity_stream_metrics_available",
                                "1 when this scrape read the stream engine's figures from Redis, 0 when it could not "
                                "(the parity_view_* and parity_stream_* families are then absent)", 0)

    @staticmethod
    def families(report: dict[str, Any]) -> Iterator[Metric]:
        """The metric families of one :func:`~parity.serving.status.status` report."""
        ingestion = GaugeMetricFamily(
            "parity_view_ingestion_lag_seconds",
            "Now minus the view's watermark (the instant its input is complete up to); absent before the first "
            "watermark", labels=["view"])
        event_time = GaugeMetricFamily(
            "parity_view_event_time_lag_seconds",
            "Now minus the newest event time the stream engine applied to the view; absent before the first event",
            labels=["view"])
        stale = GaugeMetricFamily(
            "parity_view_stale",
            "1 when the view's ingestion lag exceeds its freshness_slo (or it has an SLO and no watermark): "
            "its served values are marked stale", labels=["view"])
        slo = GaugeMetricFamily("parity_view_freshness_slo_seconds",
                                "The view's freshness_slo (views without one have no sample)", labels=["view"])
        for view in report["views"]:
            name = [view["view"]]
            if view["ingestion_lag_s"] is not None:
                ingestion.add_metric(name, view["ingestion_lag_s"])
            if view["event_time_lag_s"] is not None:
                event_time.add_metric(name, view["event_time_lag_s"])
            stale.add_metric(name, 1.0 if view["stale"] else 0.0)
            if view["freshness_slo_s"] is not None:
                slo.add_metric(name, view["freshness_slo_s"])
        yield from (ingestion, event_time, stale, slo)

        engine = report["engine"]
        yield CounterMetricFamily(
            "parity_stream_events",
            "Kafka messages the stream engine consumed and applied, dead letters included (summed over its "
            "processes); events per second: rate() of this counter", engine["events"])
        yield CounterMetricFamily("parity_stream_batches", "Micro-batches the stream engine committed",
                                  engine["batches"])
        yield CounterMetricFamily("parity_stream_tiles_written", "Tile records the stream engine wrote to Redis",
                                  engine["tiles"])
        dead = CounterMetricFamily("parity_stream_dead_letters",
                                   "Messages sent to the dead-letter sink, by reason", labels=["reason"])
        counts = dict.fromkeys(DEAD_LETTER_REASONS, 0) | engine["dead_letters"]
        for reason, count in sorted(counts.items()):
            dead.add_metric([reason], count)
        yield dead

        lag = GaugeMetricFamily(
            "parity_stream_consumer_lag",
            "Messages between the offset applied and the partition's end offset as of the engine's last batch on it "
            "(exact on Kafka; a lower bound on the embedded broker, whose end offsets can be one producer batch "
            "short); absent before the engine saw an end offset", labels=["topic", "partition"])
        applied = GaugeMetricFamily("parity_stream_applied_offset",
                                    "The last offset applied to the online store (stored with the tiles)",
                                    labels=["topic", "partition"])
        for p in report["partitions"]:
            labels = [p["topic"], str(p["partition"])]
            applied.add_metric(labels, p["applied_offset"])
            if p["consumer_lag"] is not None:
                lag.add_metric(labels, p["consumer_lag"])
        yield from (lag, applied)

        histogram = Metric(
            "parity_stream_applied_minus_ingested_seconds",
            "Per good event, the Redis time of the transaction that applied it minus its Kafka timestamp; "
            "no _sum series: the engine keeps bucket counts only", "histogram")
        buckets = cumulative_buckets(engine["applied_minus_ingested_buckets"])
        for le, count in buckets:
            histogram.add_sample(histogram.name + "_bucket", {"le": le}, count)
        histogram.add_sample(histogram.name + "_count", {}, buckets[-1][1])
        yield histogram

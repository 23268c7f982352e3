"""The Python front end: the same models as YAML, with short constructors for features.

A Python file under ``feature_defs/`` defines objects at module level; the loader keeps
every module-level Entity, Source, FeatureView and FeatureService (nothing is inferred
from the call stack)::

    from parity.registry.dsl import Entity, FeatureView, Count, Sum

    user = Entity(name="user", join_keys={"user_id": "int64"})
    user_engagement = FeatureView(
        name="user_engagement", entity="user", source="video_events", owner="ranking@short.video",
        features=[Count("plays_1h", window="1h", where="event_type = 'play'"),
                  Sum("watch_ms_1h", column="watch_ms", window="1h")],
    )
"""

from __future__ import annotations

from parity.registry.models import (
    Entity,
    Feature,
    FeatureService,
    FeatureView,
    KafkaFace,
    OfflineLogFace,
    Scalar,
    SnapshotFace,
    Source,
)

Kafka = KafkaFace
OfflineLog = OfflineLogFace
Snapshot = SnapshotFace


def Count(name: str, *, window: str, where: str | None = None, column: str | None = None,
          description: str = "") -> Feature:
    """Rows in the window (or non-null values of ``column``)."""
    return Feature(name=name, agg="count", column=column, window=window, where=where, description=description)


def Sum(name: str, *, column: str, window: str, where: str | None = None, description: str = "") -> Feature:
    return Feature(name=name, agg="sum", column=column, window=window, where=where, description=description)


def Mean(name: str, *, column: str, window: str, where: str | None = None, description: str = "") -> Feature:
    return Feature(name=name, agg="mean", column=column, window=window, where=where, description=description)


def Min(name: str, *, column: str, window: str, where: str | None = None, description: str = "") -> Feature:
    return Feature(name=name, agg="min", column=column, window=window, where=where, description=description)


def Max(name: str, *, column: str, window: str, where: str | None = None, description: str = "") -> Feature:
    return Feature(name=name, agg="max", column=column, window=window, where=where, description=description)


def Last(name: str, *, column: str, window: str, where: str | None = None, description: str = "") -> Feature:
    """The value of the newest event in the window."""
    return Feature(name=name, agg="last", column=column, window=window, where=where, description=description)


def LastK(name: str, *, column: str, k: int, window: str, where: str | None = None,
          description: str = "") -> Feature:
    """The ``k`` newest values in the window, newest first."""
    return Feature(name=name, agg="last_k", column=column, k=k, window=window, where=where, description=description)


def Latest(name: str, *, column: str, ttl: str, default: Scalar | None = None, description: str = "") -> Feature:
    """The latest value, served only while younger than ``ttl`` (then null, status expired)."""
    return Feature(name=name, agg="last", column=column, ttl=ttl, default=default, description=description)


__all__ = ["Entity", "Source", "FeatureView", "FeatureService", "Feature", "Kafka", "OfflineLog", "Snapshot",
           "Count", "Sum", "Mean", "Min", "Max", "Last", "LastK", "Latest"]

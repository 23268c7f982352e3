"""A deliberately naive oracle of DESIGN.md's semantics: nested loops over events, no cleverness.

It shares nothing with the engines but the expression evaluator (itself differential-tested
against DuckDB). Hops, window bounds, ttl and empty values are re-derived here from the
DESIGN.md text, in plain datetime arithmetic.

An event is a dict with the source columns plus:
  ``_ts``       event time (aware or naive UTC datetime)
  ``_visible``  when it became visible online: ``_applied_at``, or ``_ingested_at`` for
                batch-landed rows (as-served mode counts only ``_visible <= t``)
  ``_order``    ingest order, a tuple; the greater one wins ties on ``_ts``
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from parity.registry.expr import compile_python, parse

EPOCH = datetime(1970, 1, 1)


def naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def duration(text: str) -> timedelta:
    units = {"us": "microseconds", "ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    total = timedelta()
    for number, unit in re.findall(r"(\d+)(us|ms|s|m|h|d)", text):
        total += timedelta(**{units[unit]: int(number)})
    return total


def hop_of(window: timedelta) -> timedelta:
    if window < timedelta(hours=12):
        return timedelta(minutes=5)
    if window < timedelta(days=12):
        return timedelta(hours=1)
    return timedelta(days=1)


def floor_time(value: datetime, step: timedelta) -> datetime:
    micros = (value - EPOCH) // timedelta(microseconds=1)
    step_us = step // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=(micros // step_us) * step_us)


@lru_cache(maxsize=None)
def evaluator(text: str):
    """The Python evaluator of an expression (cached: parsing is not what is under test)."""
    return compile_python(parse(text))


def derived_row(event: dict, derived: dict[str, str]) -> dict:
    row = dict(event)
    for name, text in derived.items():
        row[name] = evaluator(text)(row)
    return row


def feature_value(view, feature, events: list[dict], key: dict, t: datetime, mode: str = "event_time"):
    """The value of one feature for one entity at time ``t``, by brute force."""
    t = naive(t)
    rows = []
    for event in events:
        if any(event.get(view.key_columns.get(k, k)) != v for k, v in key.items()):
            continue
        if mode == "as_served" and naive(event["_visible"]) > t:
            continue
        row = derived_row(event, view.derived)
        if feature.where is not None and evaluator(feature.where)(row) is not True:
            continue
        rows.append(row)

    if feature.window is None:  # latest value with ttl
        candidates = [r for r in rows if naive(r["_ts"]) < t and r.get(feature.column) is not None]
        if not candidates:
            return None
        last = max(candidates, key=lambda r: (naive(r["_ts"]), r["_order"]))
        return last[feature.column] if naive(last["_ts"]) >= t - duration(feature.ttl) else None

    if feature.window == "lifetime":
        inside = [r for r in rows if naive(r["_ts"]) < t]
    else:
        length = duration(feature.window)
        hop = duration(view.hops[feature.window]) if feature.window in view.hops else hop_of(length)
        start = floor_time(t - length, hop)
        inside = [r for r in rows if start <= naive(r["_ts"]) < t]

    if feature.agg == "count":
        if feature.column is None:
            return len(inside)
        return sum(1 for r in inside if r.get(feature.column) is not None)
    values = [r for r in inside if r.get(feature.column) is not None]
    if feature.agg == "sum":
        total = 0
        for r in values:
            total += r[feature.column]
        return total
    if feature.agg == "mean":
        return sum(r[feature.column] for r in values) / len(values) if values else None
    if feature.agg == "min":
        return min((r[feature.column] for r in values), default=None)
    if feature.agg == "max":
        return max((r[feature.column] for r in values), default=None)
    ordered = sorted(values, key=lambda r: (naive(r["_ts"]), r["_order"]), reverse=True)
    if feature.agg == "last":
        return ordered[0][feature.column] if ordered else None
    if feature.agg == "last_k":
        return [r[feature.column] for r in ordered[: feature.k]]
    raise ValueError(f"oracle does not know {feature.agg}")


def close(a, b, rel: float = 1e-9) -> bool:
    """Equality for feature values: floats within a relative tolerance, everything else exact."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return abs(a - b) <= rel * max(abs(a), abs(b)) or a == b
    return a == b


def online_cells(result, defs, events: list[dict], key: str, ids: list, t: datetime):
    """Every cell of an online lookup ``result`` (entities ``{key: ids}`` at ``t``), checked
    exactly against :func:`feature_value`; yields ``(name, view, feature, i, id, want)`` for
    the caller's status and age checks."""
    for name in result.names:
        view_name, feature_name = name.split("__")
        view = defs.view(view_name)
        feature = view.feature(feature_name)
        for i, entity in enumerate(ids):
            want = feature_value(view, feature, events, {key: entity}, t)
            got = result.values[name][i]
            assert close(want, got, rel=0.0), (name, entity, t, want, got)
            yield name, view, feature, i, entity, want

"""Events -> tile partials in Python: the reference aggregation every online producer shares.

:class:`EventEvaluator` turns one source event into the entity it belongs to and its
per-feature partials (derived columns and ``where`` filters evaluated with the registry's
Python evaluator). :class:`TileBuilder` folds events into absolute tile values at every
stored resolution, plus the newest latest values and the recent events of the open tile:
what :class:`~parity.registry.online.writer.OnlineWriter` upserts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from parity.registry.durations import floor_to, to_micros
from parity.registry.expr import compile_python, parse
from parity.registry.models import Definitions, FeatureView
from parity.registry.online.layout import TileValue, ViewLayout


def _micros(value: Any) -> Any:
    return to_micros(value) if isinstance(value, datetime) else value


@dataclass(frozen=True)
class Event:
    """One accepted event of a view: its entity, time, ingest order and partials."""

    entity: tuple
    ts: int
    partition: int
    offset: int
    value: TileValue


class EventEvaluator:
    """Evaluates a view's derived columns, filters and partials on source rows."""

    def __init__(self, defs: Definitions, view: FeatureView, layout: ViewLayout | None = None):
        self.view = view
        self.layout = layout or ViewLayout(defs, view)
        source = defs.source(view.source)
        self.ts_field = source.timestamp_field if source else "ts"
        self.key_columns = [view.source_column_of(k) for k in self.layout.join_keys]
        schema = dict(source.schema_) if source else {}
        self.derived = []
        for name, text in view.derived.items():
            self.derived.append((name, compile_python(parse(text), schema)))
            schema = self.layout.schema
        self.timestamp_columns = {c for c, t in self.layout.schema.items() if t == "timestamp"}
        self.features = []
        self.filters = []  # each distinct `where` once: features sharing one reuse its result per event
        distinct: dict[str, int] = {}
        for feature in view.features:
            where = None
            if feature.where:
                if feature.where not in distinct:
                    distinct[feature.where] = len(self.filters)
                    self.filters.append(compile_python(parse(feature.where), self.layout.schema))
                where = distinct[feature.where]
            agg = "last" if feature.window is None else feature.agg
            self.features.append((feature.name, agg, feature.column, where))

    def entity_of(self, row: Mapping[str, Any]) -> tuple | None:
        """The entity key values of a row (None when a key is null)."""
        values = tuple(row.get(c) for c in self.key_columns)
        return None if any(v is None for v in values) else values

    def evaluate(self, row: Mapping[str, Any], partition: int = 0, offset: int = 0) -> Event | None:
        """The event's partials, or None when its entity key or time is null."""
        entity = self.entity_of(row)
        ts = _micros(row.get(self.ts_field))
        if entity is None or ts is None:
            return None
        if self.derived:
            row = dict(row)
            for name, evaluate in self.derived:
                row[name] = evaluate(row)
        order = (ts, partition, offset)
        value = TileValue(rows=1, max_ts=ts)
        passed = [None] * len(self.filters)
        for name, agg, column, where in self.features:
            if where is not None:
                ok = passed[where]
                if ok is None:
                    ok = passed[where] = self.filters[where](row) is True
                if not ok:
                    continue
            item = row.get(column) if column else None
            if column is not None and item is None:
                continue
            if column in self.timestamp_columns:
                item = _micros(item)
            if agg == "count":
                value.partials[name] = 1
            elif agg == "sum":
                value.partials[name] = item
            elif agg == "mean":
                value.partials[name] = (float(item), 1)
            elif agg in ("min", "max"):
                value.partials[name] = item
            elif agg == "last":
                value.partials[name] = (order, item)
            else:  # last_k
                value.partials[name] = [(order, item)]
        return Event(entity, ts, partition, offset, value)


@dataclass
class TileBuilder:
    """Folds events into absolute tile values (a test reference and a stream-engine helper)."""

    layout: ViewLayout
    tiles: dict[tuple, TileValue] = field(default_factory=dict)    # (entity, resolution, start) -> value
    latest: dict[tuple, TileValue] = field(default_factory=dict)   # entity -> newest latest values
    events: dict[tuple, list[Event]] = field(default_factory=dict)  # entity -> events (for the tail)

    def add(self, event: Event) -> None:
        merge = self.layout.merge_values
        for resolution in self.layout.resolutions:
            key = (event.entity, resolution, floor_to(event.ts, resolution))
            old = self.tiles.get(key)
            self.tiles[key] = event.value if old is None else merge([old, event.value])
        if self.layout.latest:
            latest = TileValue(partials={c.feature.name: event.value.partials.get(c.feature.name)
                                         for c in self.layout.latest})
            old = self.latest.get(event.entity)
            self.latest[event.entity] = latest if old is None else merge([old, latest])
        self.events.setdefault(event.entity, []).append(event)

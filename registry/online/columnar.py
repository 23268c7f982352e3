"""Events -> tile partials, one micro-batch at a time (column-wise).

:class:`ColumnarEvaluator` does for a whole batch of source rows what
:class:`~parity.registry.online.accumulate.EventEvaluator` does for one row: it finds each
event's entity, evaluates the view's derived columns and ``where`` filters (with the vector
evaluator, :mod:`parity.registry.expr.vector_eval`) and builds each event's partials. The
result, :class:`ViewEvents`, holds them column-wise:

- ``records``: one numeric record per event, exactly the bytes
  :meth:`ViewLayout.encode_numeric` gives that event's partials (an int64 matrix; float
  slots are float64 bit patterns), so a writer merges thousands of them with
  :class:`~parity.registry.online.layout.NumericFold` and writes them without re-encoding;
- ``complex``: per complex feature (``last``, ``last_k``, min/max of strings, latest
  values), the events that carry a partial and their values.

``tests/test_columnar.py`` holds both evaluators equal on random batches. A batch the
vector evaluator refuses (an int64 overflow in an expression) is evaluated row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from parity.registry.expr import parse
from parity.registry.expr.vector_eval import Vec, VectorUnsupported, column_vec, compile_vector, kind_of, passes
from parity.registry.models import Definitions, FeatureView
from parity.registry.online.keys import encode_entity
from parity.registry.online.layout import MAX_TS, ROWS, ViewLayout


@dataclass
class ComplexColumn:
    """The events (indices into the batch) that carry a partial of one complex feature, and
    the feature column's value at each (Python objects; ``None`` only for a latest value
    without a column)."""

    index: np.ndarray
    values: list


@dataclass
class ViewEvents:
    """One view's accepted events of a micro-batch, column-wise."""

    layout: ViewLayout
    entities: list[bytes]     # distinct encoded entity keys
    entity: np.ndarray        # per event: index into ``entities``
    keys: list[tuple]         # per distinct entity: its key values (join-key order)
    ts: np.ndarray            # per event: event time, µs
    partition: np.ndarray
    offset: np.ndarray
    records: np.ndarray       # (events, record width) int64: each event's numeric record
    complex: list[ComplexColumn]  # in ``layout.complex`` order

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def view(self) -> FeatureView:
        return self.layout.view

    def partials(self, spec_index: int) -> list:
        """The partials of complex feature ``spec_index``, one per entry of its column (in
        :class:`ComplexColumn` order): ``last`` -> ``(order key, value)``, ``last_k`` ->
        ``[(order key, value)]``, string min/max -> the value. Computed once per batch."""
        def build(agg: str, orders, values) -> list:
            if agg == "last":
                return [(order, value) for order, value in zip(orders, values)]
            return [[(order, value)] for order, value in zip(orders, values)]
        return self._complex("_partials", spec_index, build)

    def json_partials(self, spec_index: int) -> list:
        """:meth:`partials` in their JSON shapes (lists, as the complex field stores them):
        ``last`` and each ``last_k`` entry -> ``[[ts, partition, offset], value]``, string
        min/max -> the value. What the stream merge works on, without tuples to convert."""
        return self._complex("_json_partials", spec_index,
                             lambda agg, orders, values: [[list(order), value] for order, value in zip(orders, values)])

    def _complex(self, name: str, spec_index: int, build) -> list:
        """One shape of a complex feature's partials, built once per batch: string min/max are
        the values themselves; ``last``/``last_k`` are ``build(agg, order keys, values)``."""
        cache = self.__dict__.setdefault(name, {})
        found = cache.get(spec_index)
        if found is None:
            spec, column = self.layout.complex[spec_index], self.complex[spec_index]
            if spec.agg in ("min", "max"):
                found = list(column.values)
            else:
                index = column.index
                orders = zip(self.ts[index].tolist(), self.partition[index].tolist(), self.offset[index].tolist())
                found = build(spec.agg, orders, column.values)
            cache[spec_index] = found
        return found

    @classmethod
    def from_events(cls, layout: ViewLayout, events: Sequence) -> "ViewEvents":
        """From row-wise :class:`~parity.registry.online.accumulate.Event` objects."""
        codes: dict[bytes, int] = {}
        keys: list[tuple] = []
        entity = np.zeros(len(events), dtype=np.int64)
        for i, event in enumerate(events):
            code = encode_entity(layout.join_keys, event.entity)
            if code not in codes:
                codes[code] = len(codes)
                keys.append(tuple(event.entity))
            entity[i] = codes[code]
        blobs = b"".join(layout.encode_numeric(e.value) for e in events)
        width = layout.n_int + layout.n_float
        records = np.frombuffer(blobs, dtype="<i8").reshape(len(events), width).copy()
        columns = []
        for spec in layout.complex:
            index, values = [], []
            for i, event in enumerate(events):
                partial = event.value.partials.get(spec.feature.name)
                if partial is None:
                    continue
                index.append(i)
                values.append(partial if spec.agg in ("min", "max") else
                              partial[1] if spec.agg == "last" else partial[0][1])
            columns.append(ComplexColumn(np.asarray(index, dtype=np.int64), values))
        return cls(layout, list(codes), entity, keys,
                   np.asarray([e.ts for e in events], dtype=np.int64),
                   np.asarray([e.partition for e in events], dtype=np.int64),
                   np.asarray([e.offset for e in events], dtype=np.int64), records, columns)


def rows_to_columns(rows: Sequence[Mapping[str, Any]], schema: Mapping[str, str]) -> dict[str, Vec]:
    """Decoded source rows (timestamps as int µs) -> one :class:`Vec` per schema column."""
    return {name: column_vec([r.get(name) for r in rows], dtype) for name, dtype in schema.items()}


class ColumnarEvaluator:
    """Evaluates a view's derived columns, filters and partials on a batch of source rows."""

    def __init__(self, defs: Definitions, view: FeatureView, layout: ViewLayout | None = None):
        from parity.registry.online.accumulate import EventEvaluator

        self.view = view
        self.layout = layout = layout or ViewLayout(defs, view)
        self.rows = EventEvaluator(defs, view, layout)  # the fallback, and its column facts
        source = defs.source(view.source)
        self.source_schema = dict(source.schema_) if source else {}
        self.ts_field = self.rows.ts_field
        self.key_columns = self.rows.key_columns
        schema = dict(self.source_schema)
        self.derived = []
        for name, text in view.derived.items():
            expr = parse(text)
            self.derived.append((name, compile_vector(expr, schema)))
            schema = dict(layout.schema)
        self.schema = dict(layout.schema)
        self.filters = []
        distinct: dict[str, int] = {}
        self.where_of: dict[str, int | None] = {}
        for feature in view.features:
            if feature.where and feature.where not in distinct:
                distinct[feature.where] = len(self.filters)
                self.filters.append(compile_vector(parse(feature.where), self.schema))
            self.where_of[feature.name] = distinct[feature.where] if feature.where else None
        self.width = layout.n_int + layout.n_float

    def evaluate(self, columns: Mapping[str, Vec], n: int, partition: np.ndarray, offset: np.ndarray) -> ViewEvents:
        """The batch's events of this view (rows with a null key or time are dropped)."""
        layout = self.layout
        ts_vec = columns[self.ts_field]
        keep = ~ts_vec.null
        key_vecs = [columns[c] for c in self.key_columns]
        for vec in key_vecs:
            keep &= ~vec.null
        if not keep.all():
            index = np.flatnonzero(keep)
            columns = {name: Vec(v.values[index], v.null[index]) for name, v in columns.items()}
            key_vecs = [Vec(v.values[index], v.null[index]) for v in key_vecs]
            ts_vec, partition, offset, n = columns[self.ts_field], partition[index], offset[index], len(index)
        ts = ts_vec.values.astype(np.int64, copy=False)
        batch = dict(columns)
        for name, evaluate in self.derived:
            batch[name] = evaluate(batch, n)
        kept = [passes(f(batch, n)) for f in self.filters]
        entities, entity, keys = self._entities(key_vecs, n)
        records = np.zeros((n, self.width), dtype=np.int64)
        ints = records[:, :layout.n_int]
        floats = records[:, layout.n_int:].view(np.float64)
        ints[:, ROWS] = 1
        ints[:, MAX_TS] = ts
        for slot in layout.numeric:
            mask, values = self._mask(slot.feature, kept, batch, n)
            agg = slot.agg
            if agg == "count":
                ints[:, slot.int_slots[0]] = mask
            elif agg == "sum" and slot.int_slots:
                ints[:, slot.int_slots[0]] = np.where(mask, values.values, 0)
            elif agg == "sum":
                floats[:, slot.float_slots[0]] = np.where(mask, values.values, 0.0)
            elif agg == "mean" or slot.float_slots:  # mean: count, total; min/max of floats: present, value
                ints[:, slot.int_slots[0]] = mask
                floats[:, slot.float_slots[0]] = np.where(mask, values.values.astype(np.float64), 0.0)
            else:  # min/max of int, bool, timestamp: value, present
                ints[:, slot.int_slots[0]] = np.where(mask, values.values.astype(np.int64), 0)
                ints[:, slot.int_slots[1]] = mask
        complex_columns = []
        for spec in layout.complex:
            mask, values = self._mask(spec.feature, kept, batch, n)
            index = np.flatnonzero(mask)
            if values is None:
                picked = [None] * len(index)
            else:
                picked = values.values[index].tolist()
                if spec.column_dtype == "bool":
                    picked = [bool(v) for v in picked]
            complex_columns.append(ComplexColumn(index, picked))
        return ViewEvents(layout, entities, entity, keys, ts, np.asarray(partition, dtype=np.int64),
                          np.asarray(offset, dtype=np.int64), records, complex_columns)

    def evaluate_rows(self, rows: Sequence[Mapping[str, Any]], partition: Sequence[int] | None = None,
                      offset: Sequence[int] | None = None, columns: Mapping[str, Vec] | None = None) -> ViewEvents:
        """:meth:`evaluate` of decoded rows (``columns``: the rows' :func:`rows_to_columns`,
        when the caller has them already, e.g. shared by the views of one source). A batch
        the vector evaluator refuses is evaluated row by row by the :class:`EventEvaluator`."""
        n = len(rows)
        part = np.asarray(partition if partition is not None else [r.get("_partition", 0) for r in rows], dtype=np.int64)
        offs = np.asarray(offset if offset is not None else [r.get("_offset", 0) for r in rows], dtype=np.int64)
        try:
            return self.evaluate(columns if columns is not None else rows_to_columns(rows, self.source_schema),
                                 n, part, offs)
        except VectorUnsupported:
            events = [self.rows.evaluate(r, int(p), int(o)) for r, p, o in zip(rows, part.tolist(), offs.tolist())]
            return ViewEvents.from_events(self.layout, [e for e in events if e is not None])

    def _mask(self, feature, kept: list[np.ndarray], batch: Mapping[str, Vec], n: int):
        where = self.where_of[feature.name]
        mask = kept[where] if where is not None else np.ones(n, dtype=bool)
        if not feature.column:
            return mask, None
        values = batch.get(feature.column)
        return mask & ~values.null, values

    def _entities(self, key_vecs: list[Vec], n: int) -> tuple[list[bytes], np.ndarray, list[tuple]]:
        join_keys = self.layout.join_keys
        if len(key_vecs) == 1 and kind_of(next(iter(join_keys.values()))) == "int":
            distinct, entity = np.unique(key_vecs[0].values, return_inverse=True)
            values = distinct.tolist()
            return [b"i%d;" % v for v in values], entity.astype(np.int64, copy=False), [(v,) for v in values]
        columns = [v.values.tolist() for v in key_vecs]
        index: dict[tuple, int] = {}
        entity = np.empty(n, dtype=np.int64)
        for i, key in enumerate(zip(*columns)):
            found = index.get(key)
            if found is None:
                found = index[key] = len(index)
            entity[i] = found
        keys = list(index)
        return [encode_entity(join_keys, k) for k in keys], entity, keys

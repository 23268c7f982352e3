"""How one view version's tile partials are laid out in the online store.

Every producer of tiles (bootstrap, the embedded stream engine, the Flink sink) encodes
through :class:`ViewLayout`, and serving decodes through it, so the byte layout is written
once. docs/online.md describes it for operators.

A tile value has two parts:

- **numeric**: a fixed-width little-endian record, ``int64[n_int]`` then
  ``float64[n_float]``. Every tile of a view has the same width, so serving decodes
  hundreds of tiles with one ``numpy.frombuffer`` and merges them with array sums. An
  all-zero record is the empty tile (counts 0, sums 0, presence flags 0).
- **complex**: a JSON array, one entry per complex feature (``last``, ``last_k``,
  ``min``/``max`` of strings, and every latest value), in the partial shapes of
  :mod:`parity.registry.partials` with order keys as ``[ts, partition, offset]``.

Numeric slots per windowed feature:

| agg | int64 slots | float64 slots |
|---|---|---|
| count | count | |
| sum of integers | sum | |
| sum of floats | | sum |
| mean | count | sum |
| min / max of int, bool, timestamp | value, present | |
| min / max of floats | present | value |

Two hidden int64 slots lead every record: ``rows`` (events in the tile, before any
``where``) and ``max_ts`` (the newest event time in it, valid when rows > 0); serving
reports a value's event-time age from them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from parity.registry.models import Definitions, Feature, FeatureView
from parity.registry.partials import merge
from parity.registry.schema import view_schema
from parity.registry.semantics import feature_window, resolution_retention, retention, tile_resolutions
from parity.registry.types import FLOAT_TYPES

ROWS, MAX_TS = 0, 1  # the hidden int64 slots


@dataclass(frozen=True)
class NumericFeature:
    """Where one numeric windowed feature's partial lives in the record."""

    feature: Feature
    agg: str
    int_slots: tuple[int, ...]
    float_slots: tuple[int, ...]
    column_dtype: str | None


@dataclass(frozen=True)
class ComplexFeature:
    feature: Feature
    agg: str  # "last" for latest values
    index: int  # position in the complex JSON array
    column_dtype: str | None
    latest: bool


@dataclass
class TileValue:
    """The absolute partials of one tile (or one event): what writers upsert.

    ``partials`` maps feature name -> partial (shapes of :mod:`parity.registry.partials`,
    order keys ``(ts, partition, offset)`` with ``ts`` in microseconds). A feature
    missing from it, or None, is empty.
    """

    rows: int = 0
    max_ts: int | None = None
    partials: dict[str, Any] = field(default_factory=dict)


def _is_complex(agg: str, dtype: str | None) -> bool:
    return agg in ("last", "last_k") or (agg in ("min", "max") and dtype == "string")


class ViewLayout:
    """The slot layout of one view version (a pure function of its definition)."""

    def __init__(self, defs: Definitions, view: FeatureView):
        self.view = view
        self.schema = view_schema(defs, view)
        entity = defs.entity(view.entity)
        self.join_keys: dict[str, str] = dict(entity.join_keys) if entity else {}
        self.resolutions = tile_resolutions(view)
        self.retention = retention(view)
        self.resolution_retention = resolution_retention(view)
        self.windows = {f.name: feature_window(view, f) for f in view.features}  # None: latest value
        self.numeric: list[NumericFeature] = []
        self.complex: list[ComplexFeature] = []
        n_int, n_float = 2, 0
        for feature in view.features:
            dtype = self.schema.get(feature.column) if feature.column else None
            window = feature_window(view, feature)
            if window is None or _is_complex(feature.agg, dtype):
                agg = "last" if window is None else feature.agg
                self.complex.append(ComplexFeature(feature, agg, len(self.complex), dtype, window is None))
                continue
            ints: list[int] = []
            floats: list[int] = []
            is_float = dtype in FLOAT_TYPES
            if feature.agg == "count" or (feature.agg == "sum" and not is_float):
                ints.append(n_int)
                n_int += 1
            elif feature.agg == "sum":
                floats.append(n_float)
                n_float += 1
            elif feature.agg == "mean":
                ints.append(n_int)
                floats.append(n_float)
                n_int, n_float = n_int + 1, n_float + 1
            elif is_float:  # min / max of floats: present flag, value
                ints.append(n_int)
                floats.append(n_float)
                n_int, n_float = n_int + 1, n_float + 1
            else:  # min / max of int, bool, timestamp: value, present flag
                ints.extend((n_int, n_int + 1))
                n_int += 2
            self.numeric.append(NumericFeature(feature, feature.agg, tuple(ints), tuple(floats), dtype))
        self.n_int, self.n_float = n_int, n_float
        self.width = 8 * (n_int + n_float)
        self._struct = struct.Struct(f"<{n_int}q{n_float}d")
        self.zero = bytes(self.width)
        self.complex_names = frozenset(c.feature.name for c in self.complex)
        # complex partials holding floats are written by the stdlib (NaN stays NaN), others by orjson
        self.float_complex = any(c.column_dtype in FLOAT_TYPES for c in self.complex)
        self.fold = NumericFold(self)
        self.latest = [c for c in self.complex if c.latest]
        self.windowed_complex = [c for c in self.complex if not c.latest]

    @property
    def finest(self) -> int | None:
        return self.resolutions[0] if self.resolutions else None

    # -- encoding ------------------------------------------------------------------------
    def encode_numeric(self, value: TileValue) -> bytes:
        ints = [0] * self.n_int
        floats = [0.0] * self.n_float
        ints[ROWS] = value.rows
        ints[MAX_TS] = value.max_ts if value.max_ts is not None else 0
        for slot in self.numeric:
            partial = value.partials.get(slot.feature.name)
            if partial is None:
                continue
            if slot.agg in ("count", "sum"):
                if slot.int_slots:
                    ints[slot.int_slots[0]] = int(partial)
                else:
                    floats[slot.float_slots[0]] = float(partial)
            elif slot.agg == "mean":
                total, count = partial
                ints[slot.int_slots[0]] = int(count)
                floats[slot.float_slots[0]] = float(total or 0.0)
            elif slot.float_slots:
                ints[slot.int_slots[0]] = 1
                floats[slot.float_slots[0]] = float(partial)
            else:
                ints[slot.int_slots[0]] = int(partial)
                ints[slot.int_slots[1]] = 1
        return self._struct.pack(*ints, *floats)

    def decode_numeric(self, blob: bytes) -> TileValue:
        """The inverse of :meth:`encode_numeric` (used by writers that read-modify-write)."""
        values = self._struct.unpack(blob)
        ints, floats = values[: self.n_int], values[self.n_int:]
        out = TileValue(rows=ints[ROWS], max_ts=ints[MAX_TS] if ints[ROWS] else None)
        for slot in self.numeric:
            if slot.agg in ("count", "sum"):
                out.partials[slot.feature.name] = ints[slot.int_slots[0]] if slot.int_slots else floats[slot.float_slots[0]]
            elif slot.agg == "mean":
                count = ints[slot.int_slots[0]]
                out.partials[slot.feature.name] = (floats[slot.float_slots[0]], count) if count else None
            elif slot.float_slots:
                out.partials[slot.feature.name] = floats[slot.float_slots[0]] if ints[slot.int_slots[0]] else None
            else:
                present = ints[slot.int_slots[1]]
                out.partials[slot.feature.name] = _from_int(ints[slot.int_slots[0]], slot.column_dtype) if present else None
        return out

    def encode_complex(self, value: TileValue, latest: bool | None = None) -> bytes:
        """JSON of the complex partials (``latest``: only latest values, or only windowed)."""
        items = self.complex if latest is None else (self.latest if latest else self.windowed_complex)
        return encode_partials([value.partials.get(c.feature.name) for c in items], self.float_complex)

    def decode_complex(self, blob: bytes | None, latest: bool | None = None) -> list[Any]:
        items = self.complex if latest is None else (self.latest if latest else self.windowed_complex)
        if not blob:
            return [None] * len(items)
        raw = _loads(blob)
        return [_from_json(entry, c.agg) for entry, c in zip(raw, items)]

    def merge_values(self, values: Iterable[TileValue]) -> TileValue:
        """Merge tile values (e.g. events into a tile) with the partial merges of the registry."""
        values = list(values)
        out = TileValue(rows=sum(v.rows for v in values))
        stamps = [v.max_ts for v in values if v.rows and v.max_ts is not None]
        out.max_ts = max(stamps) if stamps else None
        for feature in self.view.features:
            agg = "last" if feature.window is None else feature.agg
            parts = [p for v in values if (p := v.partials.get(feature.name)) is not None]
            if parts:
                out.partials[feature.name] = merge(agg, parts, feature.k)
        return out


def encode_partials(partials: list, floats: bool = True) -> bytes:
    """The complex JSON of a list of partials (one per complex feature, None for empty).
    ``floats``: the partials may hold floats; they are written with the stdlib, which keeps
    NaN and infinities (orjson would write them as null)."""
    if not partials:
        return b"[]"
    if not floats:
        return orjson.dumps(partials)
    return json.dumps([_jsonable(p) for p in partials], separators=(",", ":"), allow_nan=True).encode()


def _loads(blob: bytes) -> Any:
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError:  # NaN / Infinity tokens of a float partial
        return json.loads(blob)


def _from_int(value: int, dtype: str | None) -> Any:
    return bool(value) if dtype == "bool" else value


def _jsonable(partial: Any) -> Any:
    if isinstance(partial, tuple):
        return [_jsonable(p) for p in partial]
    if isinstance(partial, list):
        return [_jsonable(p) for p in partial]
    return partial


def _key(raw: list) -> tuple:
    return tuple(raw)


def _from_json(entry: Any, agg: str) -> Any:
    if entry is None:
        return None
    if agg == "last":
        return (_key(entry[0]), entry[1])
    if agg == "last_k":
        return [(_key(item[0]), item[1]) for item in entry]
    return entry


class NumericFold:
    """Merges many numeric records at once: for each group of records (``encode_numeric``
    bytes, as int64 rows), the record of their merged partials. It equals
    ``encode_numeric(merge_values(decode_numeric(r) for r in group))`` slot for slot (float
    sums may differ in the last bit: numpy may add in another order), and is what lets a
    stream engine merge a micro-batch into thousands of tiles without a Python loop per
    feature.

    Slot rules (see the module docstring): counts, integer and float sums, mean counts and
    totals, and ``rows`` add; ``max_ts`` is the newest of the records that have rows;
    ``min`` / ``max`` keep the least / greatest present value and OR their present flag.
    """

    def __init__(self, layout: ViewLayout):
        self.n_int, self.n_float = layout.n_int, layout.n_float
        self.width = layout.n_int + layout.n_float
        int_add, float_add = [ROWS], []
        self.int_extremes: list[tuple[int, int, bool]] = []  # (value slot, present slot, is_min)
        self.float_extremes: list[tuple[int, int, bool]] = []  # (float value slot, int present slot, is_min)
        for slot in layout.numeric:
            if slot.agg in ("count", "sum", "mean"):
                int_add.extend(slot.int_slots)
                float_add.extend(slot.float_slots)
            elif slot.float_slots:
                self.float_extremes.append((slot.float_slots[0], slot.int_slots[0], slot.agg == "min"))
            else:
                self.int_extremes.append((slot.int_slots[0], slot.int_slots[1], slot.agg == "min"))
        self.int_add, self.float_add = int_add, float_add

    def records(self, blobs: list[bytes]) -> "np.ndarray":
        """``encode_numeric`` records as an int64 matrix (one row each)."""
        import numpy as np

        return np.frombuffer(b"".join(blobs), dtype="<i8").reshape(len(blobs), self.width)

    def reduce(self, rows: "np.ndarray", starts: "np.ndarray") -> "np.ndarray":
        """Merge the groups of ``rows`` (int64 records) that begin at ``starts`` (sorted)."""
        import numpy as np

        big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        out = np.zeros((len(starts), self.width), dtype=np.int64)
        ints, out_ints = rows[:, :self.n_int], out[:, :self.n_int]
        floats = rows[:, self.n_int:].view(np.float64)
        out_floats = out[:, self.n_int:].view(np.float64)
        out_ints[:, self.int_add] = np.add.reduceat(ints[:, self.int_add], starts, axis=0)
        has_rows = out_ints[:, ROWS] > 0
        newest = np.maximum.reduceat(np.where(ints[:, ROWS] > 0, ints[:, MAX_TS], small), starts)
        out_ints[:, MAX_TS] = np.where(has_rows, newest, 0)
        for value, present, is_min in self.int_extremes:
            seen = ints[:, present] != 0
            op = np.minimum if is_min else np.maximum
            best = op.reduceat(np.where(seen, ints[:, value], big if is_min else small), starts)
            any_seen = np.maximum.reduceat(seen.astype(np.int64), starts)
            out_ints[:, value] = np.where(any_seen > 0, best, 0)
            out_ints[:, present] = any_seen
        if self.float_add:
            out_floats[:, self.float_add] = np.add.reduceat(floats[:, self.float_add], starts, axis=0)
        for value, present, is_min in self.float_extremes:
            seen = ints[:, present] != 0
            op = np.minimum if is_min else np.maximum
            best = op.reduceat(np.where(seen, floats[:, value], np.inf if is_min else -np.inf), starts)
            any_seen = np.maximum.reduceat(seen.astype(np.int64), starts)
            out_floats[:, value] = np.where(any_seen > 0, best, 0.0)
            out_ints[:, present] = any_seen
        return out

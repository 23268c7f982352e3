"""Merging what the read script returned: numeric records for many entities at once
(numpy), complex partials and latest values per entity (the registry's partial merges).

Columns of a view's reply, per entity: ``[cover tiles ..., open tile, lifetime prefix ...,
tail events ...]`` (see :mod:`parity.serving.read_plan`). Numeric records are folded in two
parts: the **complete** part of each window (its cover's complete tiles and lifetime prefix;
it only changes when a writer writes one of those tiles, so :mod:`parity.serving.tile_cache`
may keep it) and the **open** part (the open tile's record or its tail events before
``now``, shared by every window), then one into the other. Folding follows the record's
slot rules (:class:`~parity.registry.online.layout.NumericFold`): counts, sums, ``rows``
add; ``max_ts`` is the newest of the records with rows; min / max keep the best present
value. An all-zero record is the identity, so absent tiles cost nothing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from parity.registry.online.layout import MAX_TS, ROWS, ViewLayout
from parity.registry.online.writer import ORDER
from parity.serving.read_plan import ReadPlan

LOWEST = int(np.iinfo(np.int64).min)
HIGHEST = int(np.iinfo(np.int64).max)


def tail_latest(layout: ViewLayout, member: bytes) -> list:
    """Latest-value partials of one tail event (its complex part carries every complex feature)."""
    raw = member[ORDER.size + layout.width:]
    decoded = layout.decode_complex(raw, latest=None) if raw else [None] * len(layout.complex)
    return [decoded[c.index] for c in layout.latest]


def last_before(items: list[list], pos: int, now: int, layout: ViewLayout):
    best = None
    for entry in items:
        partial = entry[pos]
        if partial is not None and partial[0][0] < now and (best is None or partial[0] > best[0]):
            best = partial
    return best


def decode_complex_columns(layout: ViewLayout, entry) -> dict:
    tiles = [layout.decode_complex(b, latest=None) for b in entry[3]]
    windowed_idx = [c.index for c in layout.windowed_complex]
    tiles = [[t[i] for i in windowed_idx] for t in tiles]
    tail = []
    for member in entry[2]:
        raw = member[ORDER.size + layout.width:]
        decoded = layout.decode_complex(raw, latest=None) if raw else [None] * len(layout.complex)
        tail.append([decoded[i] for i in windowed_idx])
    return {"tiles": tiles, "tail": tail}


@lru_cache(maxsize=256)
def record_dtype(layout: ViewLayout) -> np.dtype:
    return np.dtype([("i", "<i8", (layout.n_int,)), ("f", "<f8", (layout.n_float,))])


def present_records(layout: ViewLayout, entries, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ints, floats)`` of shape ``(entities, columns, slots)``: each entry's present
    ``(column, record)`` pairs placed at their column (the rest stay zero records); tail
    events are :func:`tail_records`'."""
    width = layout.width
    row_bytes = n_cols * width
    buf = bytearray(len(entries) * row_bytes)
    for u, entry in enumerate(entries):
        if entry[0] != 1:
            continue
        base = u * row_bytes
        present = entry[1] if n_cols else ()
        for i in range(0, len(present), 2):
            off = base + (present[i] - 1) * width
            buf[off:off + width] = present[i + 1]
    records = np.frombuffer(buf, dtype=record_dtype(layout)).reshape(len(entries), n_cols)
    return records["i"], records["f"]


def tail_records(layout: ViewLayout, entries) -> tuple[np.ndarray, np.ndarray]:
    """``(ints, floats)`` ``(E, longest tail, ·)`` of the entries' tail events (zero-padded);
    only the entries that have a tail are visited."""
    with_tail = [u for u, e in enumerate(entries) if e[0] == 1 and e[2]]
    if not with_tail:
        return np.zeros((len(entries), 0, layout.n_int), np.int64), np.zeros((len(entries), 0, layout.n_float))
    width = layout.width
    t_max = max(len(entries[u][2]) for u in with_tail)
    buf = bytearray(len(entries) * t_max * width)
    head, end = ORDER.size, ORDER.size + width
    for u in with_tail:
        off = u * t_max * width
        for member in entries[u][2]:
            buf[off:off + width] = member[head:end]
            off += width
    records = np.frombuffer(buf, dtype=record_dtype(layout)).reshape(len(entries), t_max)
    return records["i"], records["f"]


def fold_columns(layout: ViewLayout, ints: np.ndarray, floats: np.ndarray, masks: np.ndarray | None):
    """Fold each window's columns: ``ints (E, C, n_int)``, ``floats (E, C, n_float)`` and
    ``masks (W, C)`` (bool; None: one window of every column) give the merged records
    ``(E, W, n_int)``, ``(E, W, n_float)``."""
    n_ent, n_cols = ints.shape[0], ints.shape[1]
    n_win = 1 if masks is None else masks.shape[0]
    if n_cols == 0 or n_ent == 0:
        return (np.zeros((n_ent, n_win, layout.n_int), np.int64), np.zeros((n_ent, n_win, layout.n_float), np.float64))
    if masks is None:  # additive slots; the others are replaced below
        out_i, out_f = ints.sum(axis=1, keepdims=True), floats.sum(axis=1, keepdims=True)
        inside = np.ones((1, 1, n_cols), dtype=bool)
    else:
        out_i = np.matmul(masks.astype(np.int64), ints)
        out_f = np.matmul(masks.astype(np.float64), floats) if layout.n_float else \
            np.zeros((n_ent, n_win, 0), np.float64)
        inside = masks[None, :, :]
    stamps = np.where(ints[:, :, ROWS] > 0, ints[:, :, MAX_TS], LOWEST)
    newest = np.where(inside, stamps[:, None, :], LOWEST).max(axis=2)
    out_i[:, :, MAX_TS] = np.where(out_i[:, :, ROWS] > 0, newest, 0)
    fold = layout.fold
    for value, present, is_min in fold.int_extremes:
        _extreme_columns(out_i, out_i, ints[:, :, value], ints[:, :, present], inside, value, present, is_min,
                         HIGHEST if is_min else LOWEST)
    for value, present, is_min in fold.float_extremes:
        _extreme_columns(out_f, out_i, floats[:, :, value], ints[:, :, present], inside, value, present, is_min,
                         np.inf if is_min else -np.inf)
    return out_i, out_f


def _extreme_columns(out_v, out_i, values, flags, inside, value, present, is_min, fill) -> None:
    seen = (flags != 0)[:, None, :] & inside
    chosen = np.where(seen, values[:, None, :], fill)
    best = chosen.min(axis=2) if is_min else chosen.max(axis=2)
    found = seen.any(axis=2)
    out_v[:, :, value] = np.where(found, best, 0)
    out_i[:, :, present] = found


def fold_pair(layout: ViewLayout, ai: np.ndarray, af: np.ndarray, bi: np.ndarray, bf: np.ndarray):
    """The fold of two records (or arrays of them, broadcast): ``a`` then ``b``."""
    out_i = ai + bi
    out_f = af + bf
    ta = np.where(ai[..., ROWS] > 0, ai[..., MAX_TS], LOWEST)
    tb = np.where(bi[..., ROWS] > 0, bi[..., MAX_TS], LOWEST)
    out_i[..., MAX_TS] = np.where(out_i[..., ROWS] > 0, np.maximum(ta, tb), 0)
    fold = layout.fold
    for value, present, is_min in fold.int_extremes:
        _extreme_pair(out_i, out_i, ai[..., value], bi[..., value], ai[..., present], bi[..., present], value,
                      present, is_min)
    for value, present, is_min in fold.float_extremes:
        _extreme_pair(out_f, out_i, af[..., value], bf[..., value], ai[..., present], bi[..., present], value,
                      present, is_min)
    return out_i, out_f


def _extreme_pair(out_v, out_i, va, vb, pa, pb, value, present, is_min) -> None:
    pa, pb = pa != 0, pb != 0
    both = np.minimum(va, vb) if is_min else np.maximum(va, vb)
    best = np.where(pa & pb, both, np.where(pa, va, vb))
    found = pa | pb
    out_v[..., value] = np.where(found, best, 0)
    out_i[..., present] = found


@lru_cache(maxsize=1024)
def _extractors(layout: ViewLayout, windows: tuple, wanted: frozenset) -> tuple:
    """Per wanted numeric feature: (name, kind, window position, int slots, float slots, is bool)."""
    index = {window: w for w, window in enumerate(windows)}
    out = []
    for slot in layout.numeric:
        if slot.feature.name not in wanted:
            continue
        if slot.agg == "count" or (slot.agg == "sum" and slot.int_slots):
            kind = "int"
        elif slot.agg in ("sum", "mean"):
            kind = "float" if slot.agg == "sum" else "mean"
        else:
            kind = "float_extreme" if slot.float_slots else "int_extreme"
        out.append((slot.feature.name, kind, index[layout.windows[slot.feature.name]], slot.int_slots,
                    slot.float_slots, slot.column_dtype == "bool"))
    return tuple(out)


def window_values(layout: ViewLayout, windows: tuple, ints: np.ndarray, floats: np.ndarray, exists,
                  now: int, wanted: frozenset) -> dict:
    """Values of the wanted numeric features from the merged records ``(E, W, ·)`` of each
    window, and each entity's age (its newest event in any of the windows)."""
    values: dict[str, list] = {}
    columns: dict[int, tuple[list, list]] = {}  # per window: its slots as Python lists
    per_slot = ints.shape[0] > 16  # many entities: convert only the slots read (few: a window at once is cheaper)
    for name, kind, w, int_slots, float_slots, is_bool in _extractors(layout, windows, wanted):
        if per_slot:
            si, sf = _Slots(ints[:, w]), _Slots(floats[:, w])
        else:
            found = columns.get(w)
            if found is None:
                found = columns[w] = (ints[:, w, :].T.tolist(), floats[:, w, :].T.tolist())
            si, sf = found
        if kind == "int":
            values[name] = si[int_slots[0]]
        elif kind == "float":
            values[name] = sf[float_slots[0]]
        elif kind == "mean" and not per_slot:
            values[name] = [t / c if c else None for t, c in zip(sf[float_slots[0]], si[int_slots[0]])]
        elif kind == "mean":
            counts = ints[:, w, int_slots[0]]
            with np.errstate(divide="ignore", invalid="ignore"):
                means = (floats[:, w, float_slots[0]] / counts).tolist()
            for u in np.flatnonzero(counts == 0).tolist():
                means[u] = None
            values[name] = means
        else:
            if kind == "float_extreme":
                present, best = si[int_slots[0]], sf[float_slots[0]]
            else:
                present, best = si[int_slots[1]], si[int_slots[0]]
            out = [b if p else None for b, p in zip(best, present)]
            values[name] = [None if v is None else bool(v) for v in out] if is_bool else out
    if ints.shape[1]:
        newest = np.where(ints[:, :, ROWS] > 0, ints[:, :, MAX_TS], LOWEST).max(axis=1)
    else:
        newest = np.full(ints.shape[0], LOWEST)
    if not per_slot:
        ages = [None if n == LOWEST or not e else (now - n) / 1000.0 for n, e in zip(newest.tolist(), exists)]
        return {"values": values, "age": ages}
    none = (newest == LOWEST) | ~np.asarray(exists, dtype=bool)
    ages = ((now - np.where(none, now, newest)) / 1000.0).tolist()
    for u in np.flatnonzero(none).tolist():
        ages[u] = None
    return {"values": values, "age": ages}


class _Slots:
    """``slots[k]``: slot ``k`` of records ``(E, slots)`` as a Python list."""

    __slots__ = ("records",)

    def __init__(self, records: np.ndarray) -> None:
        self.records = records

    def __getitem__(self, k: int) -> list:
        return self.records[:, k].tolist()


def reply_columns(plan: ReadPlan, use_tail: int, n_life: int, now: int) -> tuple[int, int]:
    """``(open_cols, n_cols)``: whether the reply carries the open tile's record (a lookup
    whose tail is not complete), and the stored columns before the tail events."""
    open_cols = 0 if use_tail or not plan.open_field or now == plan.open_start else 1
    return open_cols, len(plan.fields) + open_cols + n_life


def complete_masks(plan: ReadPlan, n_life: int) -> np.ndarray:
    """Per window, its columns among ``[cover tiles ..., lifetime prefix ...]``."""
    masks = np.zeros((len(plan.windows), len(plan.fields) + n_life), dtype=bool)
    for w, base in enumerate(plan.window_fields):
        masks[w, :len(plan.fields)] = base
        masks[w, len(plan.fields):] = plan.window_lifetime[w]
    return masks


def split_columns(ints, floats, n_fields: int, open_cols: int, n_cols: int):
    """``((ints, floats) of the complete columns, (ints, floats) of the open ones)``."""
    if open_cols == 0 and n_cols == n_fields:
        return (ints[:, :n_fields], floats[:, :n_fields]), (ints[:, n_fields:], floats[:, n_fields:])
    complete = np.r_[0:n_fields, n_fields + open_cols:n_cols]
    opened = np.r_[n_fields:n_fields + open_cols, n_cols:ints.shape[1]]
    return (ints[:, complete], floats[:, complete]), (ints[:, opened], floats[:, opened])


def open_part(layout: ViewLayout, entries, open_records) -> tuple[np.ndarray, np.ndarray]:
    """``(ints, floats)`` ``(E, 1, ·)``: each entry's open part, the fold of its open tile's
    record column (``open_records``, ``(E, 0 or 1, ·)``: when the tail is not complete) and
    its tail events before ``now``."""
    ti, tf = tail_records(layout, entries)
    oi, of = open_records
    if oi.shape[1]:
        ti, tf = np.concatenate([oi, ti], axis=1), np.concatenate([of, tf], axis=1)
    return fold_columns(layout, ti, tf, None)  # one record per entity, (E, 1, ·): folds into every window


def tail_span(entry, open_start: int, open_end: int) -> tuple[int, int]:
    """``(lo, hi)``: the instants ``now`` for which the fold of ``entry``'s tail events before
    its lookup's ``now`` stays the same: after its newest event, up to its next event in the
    open tile (the read script's 7th item), or the tile's end."""
    tail, after = entry[2], entry[6]
    lo = ORDER.unpack_from(tail[-1])[0] + 1 if tail else open_start
    hi = ORDER.unpack_from(after[0])[0] if after else open_end
    return lo, hi


def fold_complete(layout: ViewLayout, plan: ReadPlan, entries, use_tail: int, n_life: int, now: int):
    """For fully read entries: ``(ints, floats)`` of each window's folded complete part
    ``(E, W, ·)``, and ``(ints, floats)`` of the open tile's record column ``(E, 0 or 1, ·)``."""
    open_cols, n_cols = reply_columns(plan, use_tail, n_life, now)
    ints, floats = present_records(layout, entries, n_cols)
    (ci, cf), (oi, of) = split_columns(ints, floats, len(plan.fields), open_cols, n_cols)
    ci, cf = fold_columns(layout, ci, cf, complete_masks(plan, n_life))
    return (ci, cf), (oi, of)


def finish_numeric(layout: ViewLayout, plan: ReadPlan, complete, opened, exists, now: int, wanted) -> dict:
    """Window values of every wanted numeric feature for every entity, plus entity ages:
    the complete parts ``(E, W, ·)`` folded with the open parts ``(E, 1, ·)``
    (:func:`open_part`)."""
    fi, ff = fold_pair(layout, complete[0], complete[1], opened[0], opened[1])
    return window_values(layout, plan.windows, fi, ff, exists, now, wanted)

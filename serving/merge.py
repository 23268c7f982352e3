"""Merging what the read script returned: numeric records for many entities at once
(numpy), complex partials and latest values per entity (the registry's partial merges).

Columns of a view's reply, per entity: ``[cover tiles ..., open tile, lifetime prefix ...,
tail events ...]`` (see :mod:`parity.serving.read_plan`).
"""

from __future__ import annotations

import numpy as np

from parity.registry.online.layout import MAX_TS, ROWS, ViewLayout
from parity.registry.online.writer import ORDER
from parity.serving.read_plan import ReadPlan


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


def _record_dtype(layout: ViewLayout) -> np.dtype:
    return np.dtype([("i", "<i8", (layout.n_int,)), ("f", "<f8", (layout.n_float,))])


def merge_numeric(layout: ViewLayout, plan: ReadPlan, entries, exists, use_tail: int, n_life: int, now: int,
                   wanted: set[str]) -> dict:
    """Window values of every numeric feature for every entity, plus entity ages."""
    n_ent = len(entries)
    n_fields = len(plan.fields)
    width = layout.width
    open_cols = 0 if use_tail or not plan.open_field or now == plan.open_start else 1
    n_cols = n_fields + open_cols + n_life
    tails = [e[2] if e[0] == 1 else [] for e in entries]
    t_max = max((len(t) for t in tails), default=0)
    dtype = _record_dtype(layout)
    total = n_cols + t_max
    row_bytes = total * width
    # the reply lists only the tiles present: (column, record) pairs; absent ones stay zero
    buf = bytearray(n_ent * row_bytes)
    head, end = ORDER.size, ORDER.size + width
    for u, entry in enumerate(entries):
        if entry[0] != 1:
            continue
        base = u * row_bytes
        present = entry[1]
        for i in range(0, len(present), 2):
            off = base + (present[i] - 1) * width
            buf[off:off + width] = present[i + 1]
        off = base + n_cols * width
        for member in tails[u]:
            buf[off:off + width] = member[head:end]
            off += width
    records = np.frombuffer(buf, dtype=dtype).reshape(n_ent, total)
    ints, floats = records["i"], records["f"]
    masks = []
    for w, base_mask in enumerate(plan.window_fields):
        life = np.full(n_life, plan.window_lifetime[w], dtype=bool)
        masks.append(np.concatenate([base_mask, np.ones(open_cols, dtype=bool), life, np.ones(t_max, dtype=bool)]))
    values: dict[str, list] = {}
    # every window's sums for every entity in two products: (W, C) @ (E, C, S) -> (E, W, S)
    stacked = np.array(masks, dtype=np.int64).reshape(len(masks), total)
    all_i = np.matmul(stacked, ints) if layout.n_int else np.zeros((n_ent, len(masks), 0), np.int64)
    all_f = np.matmul(stacked.astype(np.float64), floats) if layout.n_float else \
        np.zeros((n_ent, len(masks), 0), np.float64)
    sums_i = [all_i[:, w, :] for w in range(len(masks))]
    sums_f = [all_f[:, w, :] for w in range(len(masks))]
    window_index = {window: w for w, window in enumerate(plan.windows)}
    for slot in layout.numeric:
        if slot.feature.name not in wanted:
            continue
        w = window_index[layout.windows[slot.feature.name]]
        si, sf = sums_i[w], sums_f[w]
        if slot.agg == "count" or (slot.agg == "sum" and slot.int_slots):
            values[slot.feature.name] = si[:, slot.int_slots[0]].tolist()
        elif slot.agg == "sum":
            values[slot.feature.name] = sf[:, slot.float_slots[0]].tolist()
        elif slot.agg == "mean":
            count = si[:, slot.int_slots[0]]
            sums = sf[:, slot.float_slots[0]]
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = sums / np.where(count == 0, 1, count)
            values[slot.feature.name] = [m if c else None for m, c in zip(mean.tolist(), count.tolist())]
        else:
            values[slot.feature.name] = _extreme(slot, ints, floats, masks[w])
    rows = ints[:, :, ROWS]
    lowest = int(np.iinfo(np.int64).min)
    newest = np.where(rows > 0, ints[:, :, MAX_TS], lowest).max(axis=1) if total else np.full(n_ent, lowest)
    ages = [None if n == lowest or not e else (now - n) / 1000.0
            for n, e in zip(newest.tolist(), exists.tolist())]
    return {"values": values, "age": ages}


def _extreme(slot, ints, floats, mask) -> list:
    pick_min = slot.agg == "min"
    if slot.float_slots:
        present = ints[:, mask, slot.int_slots[0]] > 0
        data = floats[:, mask, slot.float_slots[0]]
        fill = np.inf if pick_min else -np.inf
    else:
        present = ints[:, mask, slot.int_slots[1]] > 0
        data = ints[:, mask, slot.int_slots[0]]
        info = np.iinfo(np.int64)
        fill = info.max if pick_min else info.min
    chosen = np.where(present, data, fill)
    best = chosen.min(axis=1) if pick_min else chosen.max(axis=1)
    any_present = present.any(axis=1)
    out = [b if p else None for b, p in zip(best.tolist(), any_present.tolist())]
    if slot.column_dtype == "bool":
        out = [None if v is None else bool(v) for v in out]
    return out

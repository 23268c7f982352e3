"""Merge a micro-batch of one view's events into the tiles stored for them.

A stream engine applies a batch in three steps (driven by
:func:`parity.registry.online.apply.apply_events`):

1. :func:`plan_reads`: the tiles the batch touches, one *group* per (entity, resolution,
   tile start) still inside its resolution's retention, and the hash fields to read per
   entity: every touched tile's numeric record, the complex partials (windowed ``last``,
   ``last_k``, string min/max, and latest values, which the ttl slow path reads from tiles)
   only of tiles that receive one, the entity's latest values (``L``) only when events
   carry some;
2. the read (one Lua call for every view of the batch);
3. :func:`merge_into`: the new absolute tile values. All numeric records of the view merge
   in one :class:`~parity.registry.online.layout.NumericFold` pass (each group's stored
   record first, then its events); complex partials and latest values merge per group
   with :mod:`parity.registry.partials`; the open tile's events go to the tail. The
   values are queued on a :class:`~parity.registry.online.writer.WriteBatch`.

A tile that receives no complex partial keeps its stored complex field (or has none: an
absent field is the empty partial), so a batch only rewrites what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from parity.registry.online.columnar import ViewEvents
from parity.registry.online.keys import LATEST_FIELD, UPKEEP_FIELD, entity_key, view_prefix
from parity.registry.online.layout import TileValue, encode_partials
from parity.registry.online.writer import OnlineWriter, WriteBatch, _EntityWrite
from parity.registry.partials import merge


@dataclass
class ViewPlan:
    """What one view's batch touches, and what it reads."""

    events: ViewEvents
    group_entity: np.ndarray       # per group: entity index
    group_resolution: np.ndarray   # per group: resolution (µs)
    group_start: np.ndarray        # per group: tile start (µs)
    event_group: list[np.ndarray]  # per resolution: each event's group, -1 when too old to keep
    complex_items: dict[int, list[tuple[int, int]]]  # group -> [(complex spec, position in its column)]
    latest_items: dict[int, list[tuple[int, int]]]   # entity -> [(latest spec, position in its column)]
    entities: list[int] = field(default_factory=list)       # entities read and written, in read order
    keys: list[bytes] = field(default_factory=list)          # their hash keys
    fields: list[list[bytes]] = field(default_factory=list)  # per entity: the fields read (``_m`` last)
    slots: list[list[int]] = field(default_factory=list)     # per entity: the group of each numeric field
    tile_names: list[bytes] = field(default_factory=list)    # per group: its numeric record's field


def _tile_fields(resolution: int, starts: np.ndarray) -> list[bytes]:
    seconds = resolution // 1_000_000
    return [b"%d:%d" % (seconds, i) for i in (starts // resolution).tolist()]


def plan_reads(writer: OnlineWriter, events: ViewEvents) -> ViewPlan:
    layout = events.layout
    clock = writer.clock()
    n = len(events)
    entity, ts = events.entity, events.ts
    g_entity, g_res, g_start, event_group = [], [], [], []
    total = 0
    for resolution in layout.resolutions:
        starts = ts - ts % resolution
        keep = layout.resolution_retention.get(resolution)
        ok = np.ones(n, dtype=bool) if keep is None else starts + resolution + keep > clock
        gid = np.full(n, -1, dtype=np.int64)
        if ok.any():
            index = starts[ok] // resolution
            low = int(index.min())
            span = int(index.max()) - low + 1
            distinct, inverse = np.unique(entity[ok] * span + (index - low), return_inverse=True)
            gid[ok] = total + inverse
            g_entity.append(distinct // span)
            g_res.append(np.full(len(distinct), resolution, dtype=np.int64))
            g_start.append((distinct % span + low) * resolution)
            total += len(distinct)
        event_group.append(gid)
    plan = ViewPlan(events, _concat(g_entity), _concat(g_res), _concat(g_start), event_group, {}, {})
    for i in range(len(layout.complex)):  # a tile's complex field holds latest values too (the ttl slow path)
        index = events.complex[i].index
        for gid in event_group:
            for j, g in enumerate(gid[index].tolist()):
                if g >= 0:
                    plan.complex_items.setdefault(g, []).append((i, j))
    for i, spec in enumerate(layout.complex):
        if spec.latest:
            for j, ent in enumerate(entity[events.complex[i].index].tolist()):
                plan.latest_items.setdefault(ent, []).append((i, j))
    prefix = view_prefix(writer.project, layout.view.name, layout.view.version)
    by_entity = np.argsort(plan.group_entity, kind="stable")
    bounds = np.searchsorted(plan.group_entity[by_entity], np.arange(len(events.entities) + 1))
    names = []
    for resolution in layout.resolutions:
        chosen = plan.group_resolution == resolution
        names_r = _tile_fields(resolution, plan.group_start[chosen])
        names.append((np.flatnonzero(chosen).tolist(), names_r))
    tile_name: list[bytes] = [b""] * len(plan.group_entity)
    for positions, names_r in names:
        for g, name in zip(positions, names_r):
            tile_name[g] = name
    plan.tile_names = tile_name
    order, bound = by_entity.tolist(), bounds.tolist()
    complex_items, latest_items = plan.complex_items, plan.latest_items
    entities, keys, all_fields, slots = plan.entities, plan.keys, plan.fields, plan.slots
    head = entity_key(prefix, b"")  # + the entity's code
    for ent, code in enumerate(events.entities):
        groups = order[bound[ent]:bound[ent + 1]]
        latest = ent in latest_items
        if not groups and not latest:
            continue  # every event too old for every tile, and no latest value
        fields = [tile_name[g] for g in groups]
        if complex_items:
            fields += [tile_name[g] + b"x" for g in groups if g in complex_items]
        if latest:
            fields.append(LATEST_FIELD)
        fields.append(UPKEEP_FIELD)
        entities.append(ent)
        keys.append(head + code)
        all_fields.append(fields)
        slots.append(groups)
    return plan


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def merge_into(batch: WriteBatch, writer: OnlineWriter, plan: ViewPlan, stored: list[list]) -> int:
    """Queue ``plan``'s new absolute values on ``batch``; ``stored``: per read entity, the
    values of its fields. Returns the tile records written."""
    events = plan.events
    layout = events.layout
    view = layout.view
    fold = layout.fold
    n_groups = len(plan.group_entity)
    stored_complex: dict[int, bytes | None] = {}
    stored_latest: dict[int, bytes | None] = {}
    created: list[int] = []  # per read entity: the fields this write creates (every field read but _m)
    flat_slots: list[int] = []
    flat_blobs: list[bytes | None] = []
    complex_items, latest_items = plan.complex_items, plan.latest_items
    for ent, slots, values in zip(plan.entities, plan.slots, stored):
        k = len(slots)
        flat_slots += slots
        flat_blobs += values[:k]
        created.append(values[:-1].count(None))
        if complex_items:
            position = k
            for g in slots:
                if g in complex_items:
                    stored_complex[g] = values[position]
                    position += 1
        if ent in latest_items:
            stored_latest[ent] = values[-2]
    # numeric: every group's stored record first, then its events, in one fold
    rows = []
    if n_groups:
        zero = layout.zero
        stored_rows = fold.records([blob or zero for blob in flat_blobs])
        rows.append(np.empty_like(stored_rows))
        rows[0][np.asarray(flat_slots, dtype=np.int64)] = stored_rows  # in group order
    groups = [np.arange(n_groups)]
    for gid in plan.event_group:
        chosen = gid >= 0
        rows.append(events.records[chosen])
        groups.append(gid[chosen])
    merged_raw = b""
    if n_groups:
        everything = np.vstack(rows)
        labels = np.concatenate(groups)
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], np.arange(n_groups))
        merged_raw = fold.reduce(everything[order], starts).tobytes()
    width = layout.width
    vw = batch._view(view)
    complex_json = _merge_complex(plan, stored_complex)
    names = plan.tile_names
    entities = vw.entities
    upkeep = _Upkeep(writer, layout, events)
    for ent, slots, values, new in zip(plan.entities, plan.slots, stored, created):
        item = entities.get(events.entities[ent])
        if item is None:
            item = entities[events.entities[ent]] = _EntityWrite()
        upkeep.decide(item, ent, values[-1], new)
        fields = item.fields
        for g in slots:
            name = names[g]
            fields[name] = merged_raw[g * width:(g + 1) * width]
            if g in complex_json:
                fields[name + b"x"] = complex_json[g]
    if n_groups:
        first = int(plan.group_start.min())
        vw.min_ts = first if vw.min_ts is None else min(vw.min_ts, first)
    for ent, items in plan.latest_items.items():
        _merge_latest(batch, view, layout, events, ent, items, stored_latest.get(ent))
    _queue_tail(batch, writer, events)
    return n_groups


class _Upkeep:
    """Decides, from an entity's ``_m`` field (:data:`~parity.registry.online.keys.UPKEEP_FIELD`),
    what a stream write must do besides writing values, and the field's new value:

    - refresh the key's expiry when it was last refreshed more than half the expiry ago (a
      new key has no ``_m``: at once);
    - prune old tiles once the writes since the last prune created a fifth of the hash's
      expected size in new fields (so the hash stays within :meth:`OnlineWriter.prune_limits`);
    - trim the tail and refresh its expiry (three finest tiles and five minutes) when it was
      last done two or more finest tiles ago; the tail key then lives at least until the next
      time that is due.

    So an entity written often costs one ``HSET`` and one ``ZADD`` per batch, without a
    size check or expiry command, and processes share the upkeep state.
    """

    def __init__(self, writer: OnlineWriter, layout, events: ViewEvents):
        now = writer.clock()
        self.now_s = now // 1_000_000
        expiry = writer.expiry_ms(layout)
        self.refresh_after_s = None if expiry is None else expiry // 2000
        limit, _cuts = writer.prune_limits(layout, now)
        self.prune_after = max(8, limit // 5)
        finest = layout.finest
        self.tile = now // finest if finest else -1
        floor = writer.tail_floor(layout) if writer.tail and finest else None
        self.tailed = set() if floor is None else set(np.unique(events.entity[events.ts >= floor]).tolist())

    def decide(self, item: _EntityWrite, ent: int, raw: bytes | None, created: int) -> None:
        n, refreshed, trimmed = map(int, raw.split(b":")) if raw else (0, -1, -1)
        n += created
        prune = item.prune = n >= self.prune_after
        if prune:
            n = 0
        after = self.refresh_after_s
        expire = item.expire = after is not None and (refreshed < 0 or self.now_s - refreshed > after)
        if expire:
            refreshed = self.now_s
        trim = item.trim_tail = ent in self.tailed and (trimmed < 0 or self.tile - trimmed >= 2)
        if trim:
            trimmed = self.tile
        item.fields[UPKEEP_FIELD] = b"%d:%d:%d" % (n, refreshed, trimmed)


def _merge_complex(plan: ViewPlan, stored: dict[int, bytes | None]) -> dict[int, bytes]:
    """New complex JSON of every group that receives a complex partial."""
    events = plan.events
    layout = events.layout
    partials = [events.partials(i) for i in range(len(layout.complex))]
    specs = [(spec.agg, spec.feature.k) for spec in layout.complex]
    out: dict[int, bytes] = {}
    for g, items in plan.complex_items.items():
        parts: list[list] = [[p] for p in layout.decode_complex(stored.get(g))]
        for spec, j in items:
            parts[spec].append(partials[spec][j])
        out[g] = encode_partials([merge(agg, part, k) for (agg, k), part in zip(specs, parts)], layout.float_complex)
    return out


def _merge_latest(batch: WriteBatch, view, layout, events: ViewEvents, ent: int, items, stored: bytes | None) -> None:
    parts = []
    if stored:
        parts.append(TileValue(partials={c.feature.name: p for c, p in
                                         zip(layout.latest, layout.decode_complex(stored, latest=True))}))
    for spec, j in items:
        parts.append(TileValue(partials={layout.complex[spec].feature.name: events.partials(spec)[j]}))
    batch.put_latest(view, events.entities[ent], layout.merge_values(parts))


def _queue_tail(batch: WriteBatch, writer: OnlineWriter, events: ViewEvents) -> None:
    """The open tile's events, one tail member each: order key, numeric record, complex JSON."""
    layout = events.layout
    if not writer.tail or layout.finest is None or not len(events):
        return
    floor = writer.tail_floor(layout)
    index = np.flatnonzero(events.ts >= floor)
    if not len(index):
        return
    head = np.empty((len(index), 3 + layout.n_int + layout.n_float), dtype="<i8")
    head[:, 0] = events.ts[index]
    head[:, 1] = events.partition[index]
    head[:, 2] = events.offset[index]
    head[:, 3:] = events.records[index]
    raw = head.tobytes()
    size = head.shape[1] * 8
    empty = layout.encode_complex(TileValue())
    own: dict[int, list] = {}
    if layout.complex:
        for spec, column in enumerate(events.complex):
            chosen = events.ts[column.index] >= floor  # the entries of events in the tail
            for e, partial in zip(column.index[chosen].tolist(),
                                  [p for p, c in zip(events.partials(spec), chosen.tolist()) if c]):
                if e not in own:
                    own[e] = [None] * len(layout.complex)
                own[e][spec] = partial
    vw = batch._view(layout.view)
    entities = vw.entities
    entity, names = events.entity, events.entities
    for j, (e, ent, score) in enumerate(zip(index.tolist(), entity[index].tolist(), events.ts[index].tolist())):
        extra = own.get(e)
        tail_json = empty if extra is None else encode_partials(extra, layout.float_complex)
        item = entities.get(names[ent])
        if item is None:
            item = entities[names[ent]] = _EntityWrite()
        item.tail[raw[j * size:(j + 1) * size] + tail_json] = score

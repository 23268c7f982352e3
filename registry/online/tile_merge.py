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

import json
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np
import orjson

from parity.registry.online.columnar import ViewEvents
from parity.registry.online.keys import LATEST_FIELD, UPKEEP_FIELD, entity_key, tail_key, view_prefix
from parity.registry.online.layout import TileValue, _loads
from parity.registry.online.resp import pack
from parity.registry.online.writer import PRUNE_SCRIPT, OnlineWriter, _ViewWrite


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
    key_args: list[bytes] = field(default_factory=list)      # the same as protocol bytes
    tile_names: list[bytes] = field(default_factory=list)    # per group: its numeric record's field
    reads: list[bytes] = field(default_factory=list)         # per entity: its HMGET, packed
    resp: dict[bytes, bytes] = field(default_factory=dict)   # field name -> its protocol bytes
    # the groups by entity (``order``; entity e's are order[bounds[e]:bounds[e + 1]]), which of
    # them receive a complex partial, and per entity: groups, complex groups, latest, fields read
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bounds: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    has_complex: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    complex_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    latest: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    n_fields: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    name_args: list[bytes] = field(default_factory=list)     # per group in ``order``: its field, as protocol bytes


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
    n_entities, n_groups = len(events.entities), len(plan.group_entity)
    order = np.argsort(plan.group_entity, kind="stable")
    counts = np.bincount(plan.group_entity, minlength=n_entities)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    tile_name: list[bytes] = [b""] * n_groups
    for resolution in layout.resolutions:
        chosen = np.flatnonzero(plan.group_resolution == resolution)
        for g, name in zip(chosen.tolist(), _tile_fields(resolution, plan.group_start[chosen])):
            tile_name[g] = name
    plan.tile_names = tile_name
    complex_items, latest_items = plan.complex_items, plan.latest_items
    has_complex = np.zeros(n_groups, dtype=bool)
    if complex_items:
        has_complex[np.fromiter(complex_items, dtype=np.int64, count=len(complex_items))] = True
    complex_counts = np.bincount(plan.group_entity[has_complex], minlength=n_entities)
    latest = np.zeros(n_entities, dtype=bool)
    if latest_items:
        latest[np.fromiter(latest_items, dtype=np.int64, count=len(latest_items))] = True
    n_fields = counts + complex_counts + latest + 1
    read = np.flatnonzero((counts > 0) | latest)  # else every event too old for every tile, and no latest value
    plan.order, plan.bounds, plan.has_complex, plan.counts = order, bounds, has_complex, counts
    plan.complex_counts, plan.latest = complex_counts, latest
    plan.n_fields = n_fields[read]
    # each distinct field name's protocol bytes once (a batch's groups share a few tile names)
    resp: dict[bytes, bytes] = {}
    for name in set(tile_name):
        resp[name] = bulk(name)
        resp[name + b"x"] = bulk(name + b"x")
    resp[LATEST_FIELD], resp[UPKEEP_FIELD] = bulk(LATEST_FIELD), bulk(UPKEEP_FIELD)
    plan.resp = resp
    # every read's numeric fields in one buffer, entity after entity; complex fields in another
    order_list = order.tolist()
    plan.name_args = names = [resp[tile_name[g]] for g in order_list]
    numeric = b"".join(names)
    at = np.concatenate([[0], np.cumsum(np.fromiter(map(len, names), dtype=np.int64, count=n_groups))])
    num_lo, num_hi = at[bounds[read]].tolist(), at[bounds[read + 1]].tolist()
    if complex_items:
        cx_names = [resp[tile_name[g] + b"x"] for g in order[has_complex[order]].tolist()]
        complexes = b"".join(cx_names)
        cx_at = np.concatenate([[0], np.cumsum(np.fromiter(map(len, cx_names), dtype=np.int64, count=len(cx_names)))])
        cx_bounds = np.concatenate([[0], np.cumsum(complex_counts)])
        cx_lo, cx_hi = cx_at[cx_bounds[read]].tolist(), cx_at[cx_bounds[read + 1]].tolist()
    else:
        complexes, cx_lo, cx_hi = b"", [0] * len(read), [0] * len(read)
    last = resp[UPKEEP_FIELD]
    with_latest = resp[LATEST_FIELD] + last
    head = entity_key(prefix, b"")  # + the entity's code
    codes = events.entities
    entities, keys, key_args, reads = plan.entities, plan.keys, plan.key_args, plan.reads
    for ent, nf, a, b, c, d, lat in zip(read.tolist(), plan.n_fields.tolist(), num_lo, num_hi, cx_lo, cx_hi,
                                        latest[read].tolist()):
        key = head + codes[ent]
        key_arg = b"$%d\r\n%b\r\n" % (len(key), key)
        entities.append(ent)
        keys.append(key)
        key_args.append(key_arg)
        reads.append(b"*%d\r\n$5\r\nHMGET\r\n%b%b%b%b" % (nf + 2, key_arg, numeric[a:b], complexes[c:d],
                                                              with_latest if lat else last))
    return plan


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def merge_into(vw: _ViewWrite, writer: OnlineWriter, plan: ViewPlan, stored: list[list]) -> tuple[int, list[bytes]]:
    """The commands (packed) that write ``plan``'s new absolute values; ``stored``: per read
    entity, the values of its fields. Returns (tile records written, commands). Notes the
    view's ``min_ts`` and that it was written on ``vw`` (for its markers)."""
    events = plan.events
    layout = events.layout
    fold = layout.fold
    n_groups = len(plan.group_entity)
    read = np.asarray(plan.entities, dtype=np.int64)
    out: list[bytes] = []
    floor = writer.tail_floor(layout) if writer.tail and layout.finest is not None else None
    trim_of: dict[int, bool] = {}
    if len(read):
        # where each stored value is in the flat list of replies: per read entity its fields
        # (numeric of each group, complex of each group that has one, L, _m), entity after entity
        flat = list(chain.from_iterable(stored))
        at = np.concatenate([[0], np.cumsum(plan.n_fields)])
        position = np.full(len(events.entities), -1, dtype=np.int64)
        position[read] = np.arange(len(read))
        order, bounds, has_complex = plan.order, plan.bounds, plan.has_complex
        owner = plan.group_entity[order]  # per group, by entity
        start = at[position[owner]]
        numeric_at = start + np.arange(n_groups) - bounds[owner]
        absent = np.fromiter((v is None for v in flat), dtype=bool, count=len(flat)).astype(np.int64)
        mark_at = at[1:] - 1
        created = (np.add.reduceat(absent, at[:-1]) - absent[mark_at]).tolist()
        marks = [flat[i] for i in mark_at.tolist()]
        stored_complex: dict[int, bytes | None] = {}
        if plan.complex_items:
            chosen = has_complex[order]
            before = np.cumsum(chosen) - chosen  # complex groups before each, over all entities
            first_of = np.concatenate([[0], np.cumsum(plan.complex_counts)])  # per entity, the same at its start
            complex_at = start + plan.counts[owner] + before - first_of[owner]
            stored_complex = dict(zip(order[chosen].tolist(), [flat[i] for i in complex_at[chosen].tolist()]))
        stored_latest = {ent: flat[i] for ent, i in zip(plan.entities, (at[1:] - 2).tolist())
                         if ent in plan.latest_items}
        pairs = b""
        pair_at = np.zeros(n_groups + 1, dtype=np.int64)
        if n_groups:
            # numeric: every group's stored record first, then its events, in one fold
            zero = layout.zero
            stored_rows = fold.records([flat[i] or zero for i in numeric_at.tolist()])
            rows = [np.empty_like(stored_rows)]
            rows[0][order] = stored_rows  # in group order
            groups = [np.arange(n_groups)]
            for gid in plan.event_group:
                chosen = gid >= 0
                rows.append(events.records[chosen])
                groups.append(gid[chosen])
            everything = np.vstack(rows)
            labels = np.concatenate(groups)
            by_label = np.argsort(labels, kind="stable")
            starts = np.searchsorted(labels[by_label], np.arange(n_groups))
            merged = fold.reduce(everything[by_label], starts)[order]  # by entity
            # each group's field and record as protocol bytes, entity after entity, in one buffer
            head = b"$%d\r\n" % layout.width
            size = len(head) + layout.width + 2
            framed = np.empty((n_groups, size), dtype=np.uint8)
            framed[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
            framed[:, len(head):-2] = merged.astype("<i8", copy=False).view(np.uint8).reshape(n_groups, layout.width)
            framed[:, -2:] = np.frombuffer(b"\r\n", dtype=np.uint8)
            raw = framed.tobytes()
            parts: list = [b""] * (2 * n_groups)
            parts[0::2] = plan.name_args
            parts[1::2] = [raw[i:i + size] for i in range(0, n_groups * size, size)]
            pairs = b"".join(parts)
            pair_at[1:] = np.cumsum(np.fromiter(map(len, plan.name_args), dtype=np.int64, count=n_groups) + size)
            first = int(plan.group_start.min())
            vw.min_ts = first if vw.min_ts is None else min(vw.min_ts, first)
        complex_json = _merge_complex(plan, stored_complex)
        latest_json = {ent: _merge_latest(layout, events, ent, items, stored_latest.get(ent))
                       for ent, items in plan.latest_items.items()}
        names = plan.tile_names
        order_list = order.tolist() if complex_json else []
        upkeep = _Upkeep(writer, layout, events)
        expire = writer.expiry_ms(layout)
        expire_arg = None if expire is None else bulk(b"%d" % expire)
        over_full: list[bytes] = []
        decide = upkeep.decide
        upkeep_name = plan.resp[UPKEEP_FIELD]
        lows, highs = pair_at[bounds[read]].tolist(), pair_at[bounds[read + 1]].tolist()
        n_fields = (plan.counts[read] + plan.complex_counts[read] + plan.latest[read] + 1).tolist()
        for ent, key, key_arg, lo, hi, mark, new, nf, n_complex in zip(
                plan.entities, plan.keys, plan.key_args, lows, highs, marks, created, n_fields,
                plan.complex_counts[read].tolist()):
            extra = b""
            if n_complex:
                extra = b"".join([bulk(names[g] + b"x") + bulk(complex_json[g])
                                  for g in order_list[bounds[ent]:bounds[ent + 1]] if g in complex_json])
            if latest_json:
                found = latest_json.get(ent)
                if found is not None:
                    extra += bulk(LATEST_FIELD) + bulk(found)
            mark, refresh, prune, trim_of[ent] = decide(ent, mark, new)
            out.append(b"*%d\r\n$4\r\nHSET\r\n%b%b%b%b$%d\r\n%b\r\n" % (
                2 + 2 * nf, key_arg, pairs[lo:hi], extra, upkeep_name, len(mark), mark))
            if refresh and expire_arg is not None:
                out.append(b"*3\r\n$7\r\nPEXPIRE\r\n%b%b" % (key_arg, expire_arg))
            if prune:
                over_full.append(key)
        if over_full:
            _max_fields, cuts = writer.prune_limits(layout, writer.clock())
            if cuts:
                out.append(pack((b"EVAL", PRUNE_SCRIPT, len(over_full), *over_full, len(cuts) // 2, *cuts)))
        vw.written = True
    if floor is not None:
        out += _tail_commands(vw, layout, events, floor, trim_of)
    return n_groups, out


def bulk(value: bytes) -> bytes:
    """One bulk string of the Redis protocol."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


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

    def decide(self, ent: int, raw: bytes | None, created: int) -> tuple[bytes, bool, bool, bool]:
        """(the new ``_m``, refresh the key's expiry, prune it, trim its tail)."""
        n, refreshed, trimmed = map(int, raw.split(b":")) if raw else (0, -1, -1)
        n += created
        prune = n >= self.prune_after
        if prune:
            n = 0
        after = self.refresh_after_s
        expire = after is not None and (refreshed < 0 or self.now_s - refreshed > after)
        if expire:
            refreshed = self.now_s
        trim = ent in self.tailed and (trimmed < 0 or self.tile - trimmed >= 2)
        if trim:
            trimmed = self.tile
        return b"%d:%d:%d" % (n, refreshed, trimmed), expire, prune, trim


_first = itemgetter(0)


def _merge_complex(plan: ViewPlan, stored: dict[int, bytes | None]) -> dict[int, bytes]:
    """New complex JSON of every group that receives a complex partial. Works on the JSON
    shapes (lists) of the stored and new partials, with the registry's merge rules
    (:mod:`parity.registry.partials`): ``last_k`` the k newest by order key, ``last`` the
    newest, min/max the least/greatest; an empty ``last_k`` is ``[]``."""
    events = plan.events
    layout = events.layout
    n_spec = len(layout.complex)
    news = [events.json_partials(i) for i in range(n_spec)]
    specs = [(spec.agg, spec.feature.k or 0) for spec in layout.complex]
    empty_k = [i for i, (agg, _k) in enumerate(specs) if agg == "last_k"]
    dump = _dump_floats if layout.float_complex else orjson.dumps
    out: dict[int, bytes] = {}
    for g, items in plan.complex_items.items():
        blob = stored.get(g)
        parts = _loads(blob) if blob else [None] * n_spec
        touched: dict[int, list] = {}
        for spec, j in items:
            found = touched.get(spec)
            if found is None:
                touched[spec] = [news[spec][j]]
            else:
                found.append(news[spec][j])
        for spec, new in touched.items():
            agg, k = specs[spec]
            current = parts[spec]
            if agg == "last_k":
                if current:
                    new = current + new
                if len(new) > 1:
                    new.sort(key=_first, reverse=True)
                parts[spec] = new[:k]
            elif agg == "last":
                if current is not None:
                    new.append(current)
                parts[spec] = max(new, key=_first)
            elif agg == "min":
                parts[spec] = min(new) if current is None else min(current, min(new))
            else:
                parts[spec] = max(new) if current is None else max(current, max(new))
        for spec in empty_k:
            if parts[spec] is None:
                parts[spec] = []
        out[g] = dump(parts)
    return out


def _dump_floats(partials: list) -> bytes:
    return json.dumps(partials, separators=(",", ":"), allow_nan=True).encode()


def _merge_latest(layout, events: ViewEvents, ent: int, items, stored: bytes | None) -> bytes:
    """The entity's new ``L`` field: its stored latest values merged with the batch's."""
    parts = []
    if stored:
        parts.append(TileValue(partials={c.feature.name: p for c, p in
                                         zip(layout.latest, layout.decode_complex(stored, latest=True))}))
    for spec, j in items:
        parts.append(TileValue(partials={layout.complex[spec].feature.name: events.partials(spec)[j]}))
    return layout.encode_complex(layout.merge_values(parts), latest=True)


def _tail_commands(vw: _ViewWrite, layout, events: ViewEvents, floor: int, trim_of: dict[int, bool]) -> list[bytes]:
    """The open tile's events, one tail member each (order key, numeric record, complex
    JSON; score: the event time), as one ``ZADD`` per entity; where the entity's upkeep says
    so (``trim_of``; an entity not read: always), the trim and expiry of its tail."""
    index = np.flatnonzero(events.ts >= floor)
    if not len(index):
        return []
    index = index[np.argsort(events.entity[index], kind="stable")]  # by entity, in batch order
    head = np.empty((len(index), 3 + layout.n_int + layout.n_float), dtype="<i8")
    head[:, 0] = events.ts[index]
    head[:, 1] = events.partition[index]
    head[:, 2] = events.offset[index]
    head[:, 3:] = events.records[index]
    raw = head.tobytes()
    size = head.shape[1] * 8
    n_spec = len(layout.complex)
    empty = layout.encode_complex(TileValue())
    own: dict[int, list] = {}
    if n_spec:
        for spec, column in enumerate(events.complex):
            agg = layout.complex[spec].agg
            partials = events.json_partials(spec)
            kept = (events.ts[column.index] >= floor).tolist()  # the entries of events in the tail
            for e, partial, keep in zip(column.index.tolist(), partials, kept):
                if not keep:
                    continue
                found = own.get(e)
                if found is None:
                    found = own[e] = [None] * n_spec
                found[spec] = [partial] if agg == "last_k" else partial
        dump = _dump_floats if layout.float_complex else orjson.dumps
        own = {e: dump(parts) for e, parts in own.items()}
    entity = events.entity[index]
    cuts = np.flatnonzero(np.diff(entity)) + 1
    bounds = [0] + cuts.tolist() + [len(index)]
    owners = entity[[0] + cuts.tolist()].tolist()
    # every member's score and value as protocol bytes, in one buffer: entities are contiguous
    # in it, so an entity's members are one slice (members with complex partials: below)
    chunks, width = _members(events.ts[index], raw, size, empty)
    special = np.zeros(len(index), dtype=np.int64)
    if own:
        special[np.isin(index, np.fromiter(own, dtype=np.int64, count=len(own)))] = 1
    mixed = np.add.reduceat(special, bounds[:-1]).tolist()
    scores = events.ts[index].tolist()
    positions = index.tolist()
    tails = tail_key(vw.prefix, b"")  # + the entity's code
    names = events.entities
    ttl = bulk(b"%d" % ((3 * layout.finest) // 1000 + 300_000))
    below = bulk(b"(%d" % floor)
    out: list[bytes] = []
    for ent, lo, hi, odd in zip(owners, bounds, bounds[1:], mixed):
        key = tails + names[ent]
        key_arg = b"$%d\r\n%b\r\n" % (len(key), key)
        if width is None:
            members = b"".join([chunks[j] if positions[j] not in own else
                                _member(raw[j * size:(j + 1) * size] + own[positions[j]], scores[j])
                                for j in range(lo, hi)])
        elif odd:
            members = b"".join([chunks[j * width:(j + 1) * width] if positions[j] not in own else
                                _member(raw[j * size:(j + 1) * size] + own[positions[j]], scores[j])
                                for j in range(lo, hi)])
        else:
            members = chunks[lo * width:hi * width]
        out.append(b"*%d\r\n$4\r\nZADD\r\n%b%b" % (2 + 2 * (hi - lo), key_arg, members))
        if trim_of.get(ent, True):
            out.append(b"*4\r\n$16\r\nZREMRANGEBYSCORE\r\n%b$4\r\n-inf\r\n%b" % (key_arg, below))
            out.append(b"*3\r\n$7\r\nPEXPIRE\r\n%b%b" % (key_arg, ttl))
    return out


def _member(member: bytes, score: int) -> bytes:
    """A tail member's score and value, as the two bulk strings of a ``ZADD``."""
    text = b"%d" % score
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(text), text, len(member), member)


_DIGITS = 16  # event times in µs from 2001-09-09 to 2286-11-20 have 16 decimal digits


def _members(ts: np.ndarray, raw: bytes, size: int, suffix: bytes) -> tuple[bytes | list[bytes], int | None]:
    """:func:`_member` of every event (its ``size`` bytes of ``raw`` + ``suffix``, score
    ``ts``): (one buffer of them, each ``width`` bytes, width), built with numpy when every
    time has :data:`_DIGITS` digits; else (a list of them, None)."""
    n = len(ts)
    head = b"$%d\r\n" % _DIGITS
    value = b"\r\n$%d\r\n" % (size + len(suffix))
    width = len(head) + _DIGITS + len(value) + size + len(suffix) + 2
    if not n or int(ts.min()) < 10 ** (_DIGITS - 1) or int(ts.max()) >= 10 ** _DIGITS:
        return [_member(raw[j * size:(j + 1) * size] + suffix, t) for j, t in enumerate(ts.tolist())], None
    out = np.empty((n, width), dtype=np.uint8)
    row = np.frombuffer(head + bytes(_DIGITS) + value + bytes(size) + suffix + b"\r\n", dtype=np.uint8)
    out[:] = row
    digits = out[:, len(head):len(head) + _DIGITS]
    rest = ts.astype(np.int64)
    for d in range(_DIGITS - 1, -1, -1):
        digits[:, d] = 48 + rest % 10
        rest = rest // 10
    at = len(head) + _DIGITS + len(value)
    out[:, at:at + size] = np.frombuffer(raw, dtype=np.uint8).reshape(n, size)
    return out.tobytes(), width

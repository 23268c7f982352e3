"""Apply a batch of events to the online store: read, merge, upsert absolute values.

Stream engines (the embedded one, the Flink sink) hand over the events of a micro-batch;
:func:`apply_events` turns them into the new **absolute** values of every tile they touch
and writes those through :class:`~parity.registry.online.writer.OnlineWriter`, with the
batch's progress markers, in one transaction. Concurrency is optimistic:

1. ``WATCH`` the touched entity keys and the progress key;
2. check the expected progress markers (a writer that lost its partitions is fenced off:
   :class:`~parity.registry.online.writer.ProgressConflict`, nothing written);
3. read the touched tiles and latest values (one Lua call), merge the batch into them: the
   numeric records of every touched tile of a view at once
   (:class:`~parity.registry.online.layout.NumericFold`), the complex partials and latest
   values with the registry's partial merges;
4. ``MULTI`` / ``EXEC`` the absolute values, the tail events and the markers.

If another writer changed a watched entity in between (two engine processes whose
partitions share an entity), ``EXEC`` fails and the batch is re-read and re-merged, so no
update is lost and none is applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from parity.errors import ParityError
from parity.registry.durations import floor_to
from parity.registry.models import FeatureView
from parity.registry.online.accumulate import Event
from parity.registry.online.keys import (
    LATEST_FIELD, complex_field, encode_entity, entity_key, progress_key, tile_field, view_prefix,
)
from parity.registry.online.layout import TileValue
from parity.registry.online.writer import OnlineWriter, ProgressConflict
from parity.registry.partials import merge

READ_TILES = r"""
local out = {}
local i = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  if n > 0 then out[k] = redis.call('HMGET', KEYS[k], unpack(ARGV, i, i + n - 1)) else out[k] = {} end
  i = i + n
end
return out
"""


@dataclass(frozen=True)
class AppliedBatch:
    """``attempts`` used; ``committed_at``: the Redis server's time of the commit (µs), when
    progress markers were written (the instant the batch became visible: its ``applied_at``);
    ``tiles``: the tile records the batch wrote."""

    attempts: int
    committed_at: int | None
    tiles: int = 0  #: tile records written (every resolution)


class ApplyRetriesExhausted(ParityError):
    """The batch kept colliding with other writers."""


def _touched(writer: OnlineWriter, view: FeatureView, events: Sequence[Event]):
    """Per encoded entity: its events and the tiles they touch (resolution, start)."""
    layout = writer.layout(view)
    out: dict[bytes, tuple[tuple, list[Event], set[tuple[int, int]]]] = {}
    for event in events:
        code = encode_entity(layout.join_keys, event.entity)
        entry = out.setdefault(code, (event.entity, [], set()))
        entry[1].append(event)
        for resolution in layout.resolutions:
            entry[2].add((resolution, floor_to(event.ts, resolution)))
    return out


def apply_events(writer: OnlineWriter, events: Sequence[tuple[FeatureView, Sequence[Event]]], *,
                 progress: Mapping[str, str] | None = None, expect: Mapping[str, str | None] | None = None,
                 watermarks: Sequence[tuple[FeatureView, int]] = (), retries: int = 20,
                 after_read: Callable[[int], None] | None = None) -> AppliedBatch:
    """Merge ``events`` (per view) into the store and commit them with ``progress``;
    returns an :class:`AppliedBatch`. A progress marker whose value is
    :data:`~parity.registry.online.writer.COMMIT_TIME` is set to the commit's server time.
    ``after_read(attempt)`` runs between the read and the write
    (a seam for tests that interleave writers)."""
    import redis

    client = writer.client
    read_sha = client.script_load(READ_TILES)
    writer.ensure_scripts()
    plans = []
    for view, items in events:
        layout = writer.layout(view)
        prefix = view_prefix(writer.project, view.name, view.version)
        has_complex = bool(layout.complex)
        for code, (entity, mine, tiles) in _touched(writer, view, items).items():
            fields = []
            for resolution, start in sorted(tiles):
                fields.append(tile_field(resolution, start))
                if has_complex:
                    fields.append(complex_field(resolution, start))
            if layout.latest:
                fields.append(LATEST_FIELD)
            plans.append((view, layout, code, entity, mine, sorted(tiles), fields, entity_key(prefix, code)))
    pkey = progress_key(writer.project)
    for attempt in range(1, retries + 1):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(pkey, *[p[7] for p in plans])
                if expect:
                    names = list(expect)
                    current = pipe.hmget(pkey, names)
                    found = {n: (None if v is None else v.decode()) for n, v in zip(names, current)}
                    moved = sorted(n for n in names if found[n] != expect[n])
                    if moved:
                        pipe.unwatch()
                        raise ProgressConflict(
                            "progress markers moved: " + ", ".join(f"{n} is {found[n]!r}, expected {expect[n]!r}"
                                                                     for n in moved),
                            hint="another writer owns these partitions now; drop this batch and resume from "
                                 "the stored markers")
                args = []
                for plan in plans:
                    args += [len(plan[6]), *plan[6]]
                stored = pipe.evalsha(read_sha, len(plans), *[p[7] for p in plans], *args) if plans else []
                batch = writer.batch()
                first = 0
                while first < len(plans):  # plans come grouped by view
                    last = first
                    while last < len(plans) and plans[last][0] is plans[first][0]:
                        last += 1
                    _merge_view(batch, plans[first:last], stored[first:last])
                    first = last
                for view, mark in watermarks:
                    batch.set_watermark(view, mark)
                argv = [(vw, writer._args(vw)) for vw in batch._views.values()]
                if after_read is not None:
                    after_read(attempt)
                pipe.multi()
                writer._queue(pipe, argv, dict(progress or {}))
                replies = pipe.execute()
                self_time = int(replies[-1]) if progress else None
                return AppliedBatch(attempt, self_time, sum(len(p[5]) for p in plans))
            except redis.WatchError:
                continue
    raise ApplyRetriesExhausted(f"a batch of {sum(len(v) for _view, v in events)} events collided with other "
                                f"writers {retries} times", hint="fewer engine processes, or smaller batches")


def _merge_view(batch, plans, stored) -> None:
    """Merge one view's events into its stored tiles: every numeric record in one
    :class:`NumericFold` pass, complex partials per tile, latest values per entity."""
    import numpy as np

    view, layout = plans[0][0], plans[0][1]
    fold = layout.fold
    tiles: list[tuple[int, int, int, dict]] = []  # (plan, resolution, start, stored fields)
    blobs: list[bytes] = []
    index: dict[tuple[int, int, int], int] = {}
    for i, (plan, values) in enumerate(zip(plans, stored)):
        fields = dict(zip(plan[6], values))
        for resolution, start in plan[5]:
            index[(i, resolution, start)] = len(tiles)
            tiles.append((i, resolution, start, fields))
            blobs.append(fields.get(tile_field(resolution, start)) or layout.zero)
    records: list[bytes] = []
    group: list[int] = []
    source: list[int] = []
    by_tile: dict[int, list[Event]] = {}
    encoded: list[list[bytes]] = []
    for i, plan in enumerate(plans):
        mine_records = []
        for event in plan[4]:
            record = layout.encode_numeric(event.value)
            mine_records.append(record)
            records.append(record)
            for resolution in layout.resolutions:
                t = index[(i, resolution, floor_to(event.ts, resolution))]
                group.append(t)
                source.append(len(records) - 1)
                if layout.complex:
                    by_tile.setdefault(t, []).append(event)
        encoded.append(mine_records)
    everything = np.vstack([fold.records(blobs), fold.records(records)[np.asarray(source, dtype=np.int64)]])
    groups = np.concatenate([np.arange(len(tiles)), np.asarray(group, dtype=np.int64)])
    order = np.argsort(groups, kind="stable")  # each tile's stored record first, then its events in order
    starts = np.searchsorted(groups[order], np.arange(len(tiles)))
    merged = fold.reduce(everything[order], starts)
    raw, width = merged.tobytes(), layout.width
    rows = merged[:, 0].tolist()
    for t, (i, resolution, start, fields) in enumerate(tiles):
        complex_json = None
        if layout.complex:
            parts = by_tile.get(t, [])
            old = (layout.decode_complex(fields.get(complex_field(resolution, start)))
                   if fields.get(tile_field(resolution, start)) else [None] * len(layout.complex))
            value = TileValue()
            for spec, partial in zip(layout.complex, old):
                merged_partial = merge(spec.agg, [partial] + [e.value.partials.get(spec.feature.name) for e in parts],
                                       spec.feature.k)
                if merged_partial is not None:
                    value.partials[spec.feature.name] = merged_partial
            complex_json = layout.encode_complex(value)
        batch.put_encoded_tile(view, plans[i][2], resolution, start, raw[t * width:(t + 1) * width], complex_json,
                               rows[t])
    for i, (plan, values) in enumerate(zip(plans, stored)):
        _merge_latest(batch, plan, values, encoded[i])


def _merge_latest(batch, plan, values, records) -> None:
    view, layout, code, entity, mine, tiles, fields, _key = plan
    stored = dict(zip(fields, values))
    if layout.latest:
        raw = stored.get(LATEST_FIELD)
        parts = []
        if raw:
            parts.append(TileValue(partials={c.feature.name: p for c, p in
                                             zip(layout.latest, layout.decode_complex(raw, latest=True))}))
        parts += [TileValue(partials={c.feature.name: e.value.partials.get(c.feature.name) for c in layout.latest})
                  for e in mine]
        batch.put_latest(view, code, layout.merge_values(parts))
    batch.add_events(view, mine, numeric=records, entity=code)

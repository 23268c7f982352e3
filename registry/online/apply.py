"""Apply a batch of events to the online store: read, merge, upsert absolute values.

Stream engines (the embedded one, the Flink sink) hand over the events of a micro-batch;
:func:`apply_events` turns them into the new **absolute** values of every tile they touch
and writes those through :class:`~parity.registry.online.writer.OnlineWriter`, with the
batch's progress markers, in one transaction. Concurrency is optimistic, without ``WATCH`` (which costs the server about 10 µs per
watched key, and made two engine processes collide on the shared progress hash):

1. check the expected progress markers (a writer that lost its partitions is fenced off:
   :class:`~parity.registry.online.writer.ProgressConflict`, nothing written);
2. read the touched tiles and latest values, and each touched entity's write counter
   (``_v``, bumped by every write of the entity), in one Lua call; merge the batch into
   them: the numeric records of every touched tile of a view at once
   (:class:`~parity.registry.online.layout.NumericFold`), the complex partials and latest
   values with the registry's partial merges;
3. ``MULTI``: a guard script that checks the markers and the counters again, then the
   absolute values, the tail events and the markers, then ``EXEC``. If the guard finds a
   difference it raises a flag that makes every later script of the transaction write
   nothing (and the transaction's last command clears it).

If another writer changed a touched entity in between (two engine processes whose
partitions share an entity), the guard aborts the write and the batch is re-read and
re-merged, so no update is lost and none is applied twice; moved markers raise
:class:`~parity.registry.online.writer.ProgressConflict`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from parity.errors import ParityError
from parity.registry.durations import floor_to
from parity.registry.models import FeatureView
from parity.registry.online.accumulate import Event
from parity.registry.online.keys import (
    LATEST_FIELD, VERSION_FIELD, abort_key, apply_lock_key, complex_field, encode_entity, entity_key, meta_key, progress_key, tile_field,
    view_prefix,
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


# First command of an apply transaction: checks that the expected progress markers and every
# touched entity's write counter are what the batch read; if not, it raises the abort flag and
# every later script of the transaction writes nothing. KEYS: progress, abort flag, entities.
# ARGV: n markers, (name, expected value or '' for absent) pairs, then one counter per entity.
GUARD = r"""
local n = tonumber(ARGV[2])
local moved = {}
for m = 0, n - 1 do
  local got = redis.call('HGET', KEYS[1], ARGV[3 + 2 * m])
  if got == false then got = '' end
  if got ~= ARGV[4 + 2 * m] then moved[#moved + 1] = ARGV[3 + 2 * m] end
end
local base = 3 + 2 * n
local changed = 0
for k = 4, #KEYS do
  local v = redis.call('HGET', KEYS[k], '_v')
  if v == false then v = '' end
  if v ~= ARGV[base + k - 4] then changed = changed + 1 end
end
local holder = redis.call('GET', KEYS[3])
local locked = 0
if holder and holder ~= ARGV[1] then locked = 1 end
if #moved > 0 or changed > 0 or locked == 1 then redis.call('SET', KEYS[2], '1') end
return {changed, moved, locked}
"""
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
#: After this many attempts lost to other writers, a writer takes the project's apply lock:
#: other writers' commits then abort until it has committed (no writer starves).
LOCK_AFTER = 3
LOCK_TTL_MS = 30_000


# Last write of an apply transaction with ``watermark_topics``: each view's watermark becomes
# the least completeness mark ``mark/<topic>/<partition>`` of its topic (the ingestion time
# every partition is applied up to), so one lagging partition holds the view back.
# KEYS: progress, abort flag, then one meta key per view; ARGV: the topic of each view.
WATERMARK_FROM_MARKS = r"""
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local fields = redis.call('HGETALL', KEYS[1])
for k = 3, #KEYS do
  local prefix = 'mark/' .. ARGV[k - 2] .. '/'
  local least = nil
  for f = 1, #fields, 2 do
    if string.sub(fields[f], 1, #prefix) == prefix then
      local v = tonumber(fields[f + 1])
      if least == nil or v < least then least = v end
    end
  end
  if least ~= nil then redis.call('HSET', KEYS[k], 'watermark', string.format('%d', least)) end
end
return 0
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
                 after_read: Callable[[int], None] | None = None,
                 watermark_topics: Sequence[tuple[FeatureView, str]] = ()) -> AppliedBatch:
    """Merge ``events`` (per view) into the store and commit them with ``progress``;
    returns an :class:`AppliedBatch`. A progress marker whose value is
    :data:`~parity.registry.online.writer.COMMIT_TIME` is set to the commit's server time.
    ``after_read(attempt)`` runs between the read and the write
    (a seam for tests that interleave writers). ``watermark_topics``: (view, topic) pairs
    whose watermark is set, in the same transaction, to the least ``mark/<topic>/<p>``
    progress marker (stream engines commit one per partition: the ingestion time it is
    applied up to)."""
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
    pkey, abort = progress_key(writer.project), abort_key(writer.project)
    guard_sha = client.script_load(GUARD)
    marks_sha = client.script_load(WATERMARK_FROM_MARKS) if watermark_topics else None
    marks_keys = [meta_key(view_prefix(writer.project, v.name, v.version)) for v, _t in watermark_topics]
    keys = [p[7] for p in plans]
    args = []
    for plan in plans:
        args += [len(plan[6]) + 1, *plan[6], VERSION_FIELD]
    expected = list((expect or {}).items())
    lock, token, held = apply_lock_key(writer.project), uuid.uuid4().hex, False
    try:
        for attempt in range(1, retries + 1):
            if attempt > LOCK_AFTER and not held:
                held = _take_lock(client, lock, token)
            if expected:  # fail early; the guard checks again, atomically with the write
                current = client.hmget(pkey, [n for n, _v in expected])
                found = {n: (None if v is None else v.decode()) for (n, _w), v in zip(expected, current)}
                _raise_if_moved(expect, sorted(n for n, want in expected if found[n] != want), found)
            stored = client.evalsha(read_sha, len(plans), *keys, *args) if plans else []
            versions = [values[-1] or b"" for values in stored]
            batch = writer.batch()
            first = 0
            while first < len(plans):  # plans come grouped by view
                last = first
                while last < len(plans) and plans[last][0] is plans[first][0]:
                    last += 1
                _merge_view(batch, plans[first:last], [values[:-1] for values in stored[first:last]])
                first = last
            for view, mark in watermarks:
                batch.set_watermark(view, mark)
            argv = [(vw, writer._args(vw)) for vw in batch._views.values()]
            if after_read is not None:
                after_read(attempt)
            with client.pipeline(transaction=True) as pipe:  # MULTI ... EXEC: nothing runs in between
                flat = [x for name, want in expected for x in (name, "" if want is None else want)]
                pipe.evalsha(guard_sha, 3 + len(keys), pkey, abort, lock, *keys, token, len(expected), *flat,
                             *versions)
                writer._queue(pipe, argv, dict(progress or {}))
                if marks_sha:
                    pipe.evalsha(marks_sha, 2 + len(marks_keys), pkey, abort, *marks_keys,
                                 *[t for _v, t in watermark_topics])
                pipe.delete(abort)
                replies = pipe.execute()
            changed, moved, locked = replies[0]
            if moved:
                names = [m.decode() for m in moved]
                current = client.hmget(pkey, names)
                _raise_if_moved(expect, names,
                                {n: (None if v is None else v.decode()) for n, v in zip(names, current)})
            if locked:  # another writer holds the apply lock: let it commit, then read again
                _wait_for_unlock(client, lock)
                continue
            if changed:
                continue  # another writer wrote a touched entity since the read: read and merge again
            committed_at = int(replies[-3 if marks_sha else -2]) if progress else None
            return AppliedBatch(attempt, committed_at, sum(len(p[5]) for p in plans))
        raise ApplyRetriesExhausted(f"a batch of {sum(len(v) for _view, v in events)} events collided with other "
                                    f"writers {retries} times", hint="fewer engine processes, or smaller batches")
    finally:
        if held:
            client.eval(RELEASE, 1, lock, token)


def _take_lock(client, lock: bytes, token: str, timeout: float = 2 * LOCK_TTL_MS / 1000) -> bool:
    """Wait for the project's apply lock (an expiring key) and take it."""
    deadline = time.monotonic() + timeout
    while not client.set(lock, token, nx=True, px=LOCK_TTL_MS):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _wait_for_unlock(client, lock: bytes, timeout: float = LOCK_TTL_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while client.exists(lock) and time.monotonic() < deadline:
        time.sleep(0.005)


def _raise_if_moved(expect, moved: list[str], found: dict) -> None:
    if moved:
        raise ProgressConflict(
            "progress markers moved: " + ", ".join(f"{n} is {found.get(n)!r}, expected {expect[n]!r}" for n in moved),
            hint="another writer owns these partitions now; drop this batch and resume from the stored markers")


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

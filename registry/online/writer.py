"""OnlineWriter: the one write path into the online store (Redis).

Bootstrap (``parity materialize``), the embedded stream engine and the Flink sink all write
through it. Writes are **idempotent upserts of absolute partial values**: a tile is
replaced by its new absolute value, never incremented, so replaying a batch after a crash
leaves the store as if it had been applied once. A batch's tiles, recent events,
watermarks and progress markers (e.g. consumed Kafka offsets) are committed in one
``MULTI``/``EXEC`` transaction of one Lua call per view, so a reader or a restarting
writer sees all of a batch or none of it.

Per entity, each commit also:

- extends the entity key's expiry to the view's retention horizon past the newest tile it
  holds (measured on the writer's clock; lifetime views never expire);
- prunes tiles older than their resolution's retention once the hash grows past its
  expected size (Redis 7.0 has no per-field expiry);
- keeps the *tail*: the events of the open finest tile, individually, so a lookup at
  ``now`` counts exactly the events with ``ts < now`` in it. Tail entries older than one
  finest tile before the writer's clock are trimmed; the view's ``tail_from`` marker
  records from where the tail is complete.

Redis commands used: HSET, HLEN, HKEYS, HDEL, PEXPIRE (NX/GT, Redis >= 7.0), ZADD,
ZREMRANGEBYSCORE. The script builds entity keys from the view prefix, so it needs a single
Redis (or all keys of a view on one Cluster slot).

Stream writers that merge into stored values go through
:func:`~parity.registry.online.apply.apply_events`, which writes with plain commands
(plain commands built by :func:`~parity.registry.online.tile_merge.merge_into`) under the
project's apply lock.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from parity.errors import ParityError
from parity.registry.durations import floor_to, parse_duration
from parity.registry.models import Definitions, FeatureView
from parity.registry.online.accumulate import Event
from parity.registry.online.keys import (
    LATEST_FIELD, abort_key, complex_field, encode_entity, meta_key, progress_key, tile_field,
    view_prefix,
)
from parity.registry.online.layout import TileValue, ViewLayout

ORDER = struct.Struct("<qqq")  # tail member prefix: ts, partition, offset

# Deletes the tiles of hash h older than their resolution's first kept index (cuts:
# resolution in seconds -> index), in both scripts below.
PRUNE_FUNCTION = r"""
local function prune(h, cuts)
  local stale = {}
  for _, f in ipairs(redis.call('HKEYS', h)) do
    local res, idx = string.match(f, '^(%d+):(%-?%d+)')
    if res and cuts[res] and tonumber(idx) < cuts[res] then stale[#stale + 1] = f end
  end
  for s = 1, #stale, 1000 do redis.call('HDEL', h, unpack(stale, s, math.min(s + 999, #stale))) end
end
"""

WRITE_SCRIPT = PRUNE_FUNCTION + r"""
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local prefix = ARGV[1]
local max_fields = tonumber(ARGV[2])
local n_cut = tonumber(ARGV[3])
local i = 4
local cuts = {}
for c = 1, n_cut do cuts[ARGV[i]] = tonumber(ARGV[i + 1]); i = i + 2 end
local tail_floor = ARGV[i]
local tail_ttl = tonumber(ARGV[i + 1])
local n_entities = tonumber(ARGV[i + 2])
i = i + 3
local function chunked(cmd, key, first, count)
  local pos = first
  local last = first + count - 1
  while pos <= last do
    local upto = math.min(pos + 999, last)
    redis.call(cmd, key, unpack(ARGV, pos, upto))
    pos = upto + 1
  end
end
for e = 1, n_entities do
  local ent = ARGV[i]
  local expire = tonumber(ARGV[i + 1])
  local nf = tonumber(ARGV[i + 2])
  i = i + 3
  local h = prefix .. 'e:' .. ent
  if nf > 0 then chunked('HSET', h, i, 2 * nf); i = i + 2 * nf end
  if expire > 0 then
    redis.call('PEXPIRE', h, expire, 'NX')
    redis.call('PEXPIRE', h, expire, 'GT')
  end
  if max_fields > 0 and n_cut > 0 and redis.call('HLEN', h) > max_fields then prune(h, cuts) end
  local nt = tonumber(ARGV[i])
  i = i + 1
  if nt > 0 then
    local t = prefix .. 't:' .. ent
    chunked('ZADD', t, i, 2 * nt)
    i = i + 2 * nt
    if tail_floor ~= '-inf' then redis.call('ZREMRANGEBYSCORE', t, '-inf', '(' .. tail_floor) end
    if tail_ttl > 0 then redis.call('PEXPIRE', t, tail_ttl) end
  end
end
local meta = prefix .. 'meta'
local n_meta = tonumber(ARGV[i])
i = i + 1
for m = 1, n_meta do
  local name, how, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local old = redis.call('HGET', meta, name)
  if how == 'set' or not old
     or (how == 'max' and tonumber(value) > tonumber(old))
     or (how == 'min' and tonumber(value) < tonumber(old)) then
    redis.call('HSET', meta, name, value)
  end
end
return n_entities
"""

PROGRESS_SCRIPT = r"""
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
for i = 1, #ARGV, 2 do
  local value = ARGV[i + 1]
  if value == '$COMMIT_TIME' then value = now end
  redis.call('HSET', KEYS[1], ARGV[i], value)
end
return now
"""
# Prunes the entity hashes KEYS (found over their expected size by a stream engine's read).
# ARGV: n cuts, then (resolution in seconds, first kept index) pairs.
PRUNE_SCRIPT = PRUNE_FUNCTION + r"""
local cuts = {}
for c = 1, tonumber(ARGV[1]) do cuts[ARGV[2 * c]] = tonumber(ARGV[2 * c + 1]) end
for k = 1, #KEYS do prune(KEYS[k], cuts) end
return #KEYS
"""

COMMIT_TIME = "$COMMIT_TIME"  # a progress marker value replaced by the Redis server's time of the commit (µs)


class OnlineStoreUnavailable(ParityError):
    """Redis cannot be reached (or refused the command)."""


class ProgressConflict(ParityError):
    """A batch expected progress markers another writer has moved: nothing was written.

    This is how a writer that lost its Kafka partitions (a zombie after a rebalance) is
    fenced off: its batch expected offsets the new owner has already advanced.
    """


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _EntityWrite:
    fields: dict[bytes, bytes] = field(default_factory=dict)
    tail: dict[bytes, int] = field(default_factory=dict)  # member -> score
    horizon_end: int | None = None  # newest instant the key must survive until (event time)


@dataclass
class _ViewWrite:
    layout: ViewLayout
    prefix: bytes
    entities: dict[bytes, _EntityWrite] = field(default_factory=dict)
    meta: list[tuple[str, str, str]] = field(default_factory=list)
    min_ts: int | None = None
    written: bool = False  # a stream merge wrote entities of the view (their commands are its own)


class WriteBatch:
    """Tiles, latest values, recent events and markers committed together by :meth:`commit`."""

    def __init__(self, writer: "OnlineWriter"):
        self.writer = writer
        self._views: dict[tuple[str, int], _ViewWrite] = {}
        self._progress: dict[str, str] = {}
        self._expect: dict[str, str | None] = {}

    def _view(self, view: FeatureView) -> _ViewWrite:
        key = (view.name, view.version)
        found = self._views.get(key)
        if found is None:
            layout = self.writer.layout(view)
            found = self._views[key] = _ViewWrite(layout, view_prefix(self.writer.project, view.name, view.version))
        return found

    def _entity(self, vw: _ViewWrite, entity: Sequence[Any] | bytes) -> _EntityWrite:
        encoded = entity if isinstance(entity, bytes) else encode_entity(vw.layout.join_keys, entity)
        return vw.entities.setdefault(encoded, _EntityWrite())

    def put_tile(self, view: FeatureView, entity: Sequence[Any] | bytes, resolution: int, start: int,
                 value: TileValue) -> bool:
        """Upsert one tile's absolute value. Returns False (and writes nothing) when the tile
        is older than its resolution's retention on the writer's clock."""
        layout = self._view(view).layout
        return self.put_encoded_tile(view, entity, resolution, start, layout.encode_numeric(value),
                                     layout.encode_complex(value) if layout.complex else None, value.rows)

    def put_encoded_tile(self, view: FeatureView, entity: Sequence[Any] | bytes, resolution: int, start: int,
                         numeric: bytes, complex_json: bytes | None, rows: int) -> bool:
        """:meth:`put_tile` of a value already encoded by the view's layout (``rows``: its
        event count): for writers that merge records in bulk."""
        vw = self._view(view)
        layout = vw.layout
        if resolution not in layout.resolutions or start % resolution:
            raise ParityError(f"view {view.name} v{view.version} has no tile of resolution {resolution} at {start}",
                              hint=f"resolutions: {list(layout.resolutions)}")
        keep = layout.resolution_retention.get(resolution)
        end = start + resolution
        if keep is not None and end + keep <= self.writer.clock():
            return False
        item = self._entity(vw, entity)
        item.fields[tile_field(resolution, start)] = numeric
        if layout.complex:
            item.fields[complex_field(resolution, start)] = complex_json
        horizon = None if keep is None else end + keep
        item.horizon_end = _later(item.horizon_end, horizon, keep is None)
        if rows:
            vw.min_ts = start if vw.min_ts is None else min(vw.min_ts, start)
        return True

    def put_latest(self, view: FeatureView, entity: Sequence[Any] | bytes, value: TileValue) -> None:
        """Upsert the entity's newest latest-value partials (absolute, every latest feature)."""
        vw = self._view(view)
        item = self._entity(vw, entity)
        item.fields[LATEST_FIELD] = vw.layout.encode_complex(value, latest=True)
        stamps = [p[0][0] for p in value.partials.values() if p is not None]
        if stamps:
            ttl = max((parse_duration(c.feature.ttl) for c in vw.layout.latest if c.feature.ttl), default=0)
            item.horizon_end = _later(item.horizon_end, max(stamps) + ttl, False)

    def add_events(self, view: FeatureView, events: Iterable[Event], numeric: Sequence[bytes] | None = None,
                   entity: bytes | None = None) -> None:
        """Record recent events in the tail (events before the tail floor are skipped).
        ``numeric``: the events' records, when the caller has encoded them already;
        ``entity``: their encoded entity, when they all share it."""
        vw = self._view(view)
        layout = vw.layout
        floor = self.writer.tail_floor(layout)
        for i, event in enumerate(events):
            if floor is not None and event.ts < floor:
                continue
            item = self._entity(vw, event.entity if entity is None else entity)
            member = (ORDER.pack(event.ts, event.partition, event.offset)
                      + (layout.encode_numeric(event.value) if numeric is None else numeric[i])
                      + layout.encode_complex(event.value))
            item.tail[member] = event.ts

    def set_watermark(self, view: FeatureView, watermark_us: int) -> None:
        """The view's input is complete up to ``watermark_us`` (ingestion time): drives ``stale``."""
        self._view(view).meta.append(("watermark", "max", str(int(watermark_us))))

    def set_tail_from(self, view: FeatureView, instant_us: int) -> None:
        """The tail is complete for events at or after ``instant_us`` (set by bootstrap)."""
        self._view(view).meta.append(("tail_from", "max", str(int(instant_us))))

    def set_progress(self, markers: Mapping[str, str], expect: Mapping[str, str | None] | None = None) -> None:
        """Progress markers (offsets, watermarks) committed atomically with the batch.

        ``expect``: the values the markers must still hold for the commit to happen (None:
        absent). If any differs at commit time, :meth:`commit` raises
        :class:`ProgressConflict` and writes nothing (checked under ``WATCH``, so a marker
        moved by another writer between the check and the commit also aborts it).
        """
        self._progress.update({str(k): str(v) for k, v in markers.items()})
        if expect:
            self._expect.update({str(k): None if v is None else str(v) for k, v in expect.items()})

    def commit(self) -> None:
        try:
            self.writer._commit(self._views.values(), self._progress, self._expect)
        finally:
            self._views.clear()
            self._progress.clear()
            self._expect.clear()


def _later(current: int | None, candidate: int | None, forever: bool) -> int | None:
    if forever or current == -1:
        return -1
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


class OnlineWriter:
    """Writes tiles into Redis for one project. ``clock()`` returns microseconds (injectable)."""

    def __init__(self, client, project: str, defs: Definitions, clock: Callable[[], int] = wall_clock_us,
                 tail: bool = True):
        self.client = client
        self.project = project
        self.defs = defs
        self.clock = clock
        self.tail = tail
        self._layouts: dict[tuple[str, int], ViewLayout] = {}
        self._write = client.register_script(WRITE_SCRIPT)
        self._progress = client.register_script(PROGRESS_SCRIPT)
        self._loaded = False

    def layout(self, view: FeatureView) -> ViewLayout:
        key = (view.name, view.version)
        if key not in self._layouts:
            self._layouts[key] = ViewLayout(self.defs, view)
        return self._layouts[key]

    def batch(self) -> WriteBatch:
        return WriteBatch(self)

    def tail_floor(self, layout: ViewLayout) -> int | None:
        """Events before this instant are not kept individually (one finest tile of slack)."""
        if layout.finest is None:
            return None
        return floor_to(self.clock(), layout.finest) - layout.finest

    def read_progress(self) -> dict[str, str]:
        raw = self._call(lambda: self.client.hgetall(progress_key(self.project)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _call(self, fn):
        import redis

        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OnlineStoreUnavailable(f"online store (Redis) unreachable: {exc}",
                                         hint="check online_store.connection_string, or start one with `parity dev up`")

    def prune_limits(self, layout: ViewLayout, now: int) -> tuple[int, list[str]]:
        """(the field count past which an entity hash is pruned, the cuts: (resolution in
        seconds, first kept tile index) pairs) of a view at ``now``."""
        cuts = []
        max_fields = 1
        per_tile = 2 if (layout.windowed_complex or layout.latest) else 1
        for resolution, keep in layout.resolution_retention.items():
            if keep is None:
                max_fields += 10_000
                continue
            cuts += [str(resolution // 1_000_000), str(floor_to(now - keep, resolution) // resolution)]
            max_fields += per_tile * (keep // resolution + 2)
        return int(max_fields * 1.25) + 8, cuts

    def expiry_ms(self, layout: ViewLayout) -> int | None:
        """How long after a write an entity key of the view must live (None: forever): its
        longest tile retention, or ttl, past the latest instant an event may carry (the
        source's ``max_future``), plus a minute. Later writes only extend it."""
        if any(keep is None for keep in layout.resolution_retention.values()):
            return None
        horizon = max((r + keep for r, keep in layout.resolution_retention.items()), default=0)
        horizon = max([horizon] + [parse_duration(c.feature.ttl) for c in layout.latest if c.feature.ttl])
        source = self.defs.source(layout.view.source)
        ahead = parse_duration(source.max_future) if source is not None else 0
        return (horizon + ahead) // 1000 + 60_000

    def meta_command(self, vw: _ViewWrite) -> tuple | None:
        """The command that moves a stream batch's view markers (``watermark``, ``min_ts``,
        ``tail_from``), or None. A stream batch's writes themselves are plain commands built
        by :func:`~parity.registry.online.tile_merge.merge_into`; the caller runs both in a
        guarded transaction (:func:`~parity.registry.online.apply.apply_events`). Scripts go
        as ``EVAL`` (the server caches them by digest), so a server that lost its script
        cache cannot fail one command of the transaction."""
        floor = self.tail_floor(vw.layout) if self.tail else None
        meta = self._meta(vw, floor)
        if not meta:
            return None
        return (b"EVAL", WRITE_SCRIPT, 2, meta_key(vw.prefix), abort_key(self.project), vw.prefix, 0, 0,
                "-inf", 0, 0, len(meta), *[x for m in meta for x in m])

    def progress_command(self, progress: Mapping[str, str]) -> tuple:
        """The command that stores progress markers (a :data:`COMMIT_TIME` value becomes the
        server's time of the commit, which the command returns)."""
        return (b"EVAL", PROGRESS_SCRIPT, 2, progress_key(self.project), abort_key(self.project),
                *[x for kv in progress.items() for x in kv])

    def _meta(self, vw: _ViewWrite, floor: int | None) -> list[tuple[str, str, str]]:
        meta = list(vw.meta)
        if vw.min_ts is not None:
            meta.append(("min_ts", "min", str(vw.min_ts)))
        if floor is not None and (vw.entities or vw.written) and self.tail:
            meta.append(("tail_from", "max", str(floor)))
        return meta

    def _args(self, vw: _ViewWrite) -> list:
        layout = vw.layout
        now = self.clock()
        max_fields, cuts = self.prune_limits(layout, now)
        floor = self.tail_floor(layout) if self.tail else None
        tail_ttl = 0 if layout.finest is None else (3 * layout.finest) // 1000 + 300_000
        args: list = [vw.prefix, max_fields, len(cuts) // 2, *cuts,
                      "-inf" if floor is None else str(floor), tail_ttl, len(vw.entities)]
        for encoded, item in vw.entities.items():
            if item.horizon_end is None or item.horizon_end == -1:
                expire = 0
            else:
                expire = max(1000, (item.horizon_end - now) // 1000 + 60_000)
            args += [encoded, expire, len(item.fields)]
            for name, blob in item.fields.items():
                args += [name, blob]
            tail = item.tail if self.tail else {}
            args.append(len(tail))
            for member, score in tail.items():
                args += [score, member]
        meta = self._meta(vw, floor)
        args.append(len(meta))
        for name, how, value in meta:
            args += [name, how, value]
        return args

    def ensure_scripts(self) -> None:
        if not self._loaded:
            self.client.script_load(WRITE_SCRIPT)
            self.client.script_load(PROGRESS_SCRIPT)
            self._loaded = True

    def _queue(self, pipe, argv, progress: Mapping[str, str]) -> None:
        """Queue a batch's write scripts (and its progress markers) on a MULTI pipeline. Each
        script first checks the abort flag a guard script may have set earlier in the
        same transaction (:func:`~parity.registry.online.apply.apply_events`)."""
        abort = abort_key(self.project)
        for vw, args in argv:
            pipe.evalsha(self._write.sha, 2, meta_key(vw.prefix), abort, *args)
        if progress:
            flat = [x for kv in progress.items() for x in kv]
            pipe.evalsha(self._progress.sha, 2, progress_key(self.project), abort, *flat)

    def _commit(self, views: Iterable[_ViewWrite], progress: Mapping[str, str],
                expect: Mapping[str, str | None] | None = None) -> None:
        import redis

        views = list(views)
        if not views and not progress:
            return
        pkey = progress_key(self.project)
        argv = [(vw, self._args(vw)) for vw in views]

        def run():
            self.ensure_scripts()
            with self.client.pipeline(transaction=True) as pipe:
                if expect:
                    pipe.watch(pkey)
                    names = list(expect)
                    current = pipe.hmget(pkey, names)
                    found = {n: (None if v is None else v.decode()) for n, v in zip(names, current)}
                    moved = {n: (expect[n], found[n]) for n in names if found[n] != expect[n]}
                    if moved:
                        pipe.unwatch()
                        raise ProgressConflict(
                            "progress markers moved: " + ", ".join(f"{n} is {got!r}, expected {want!r}"
                                                                     for n, (want, got) in sorted(moved.items())),
                            hint="another writer owns these partitions now; drop this batch and resume "
                                 "from the stored markers")
                    pipe.multi()
                self._queue(pipe, argv, progress)
                try:
                    pipe.execute()
                except redis.WatchError:
                    raise ProgressConflict("progress markers moved while committing",
                                           hint="another writer owns these partitions now; drop this batch "
                                                "and resume from the stored markers") from None

        try:
            self._call(run)
        except redis.exceptions.NoScriptError:
            self._loaded = False
            self._call(run)
        except redis.exceptions.ResponseError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            self._loaded = False
            self._call(run)

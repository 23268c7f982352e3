"""What one lookup of one view reads, and which stored columns each feature merges.

For a view and a request time ``now`` the plan lists the hash fields of every complete
tile any requested window's cover needs (the covers come from
:func:`parity.registry.semantics.tile_cover`; nothing here re-derives a window rule), the
open finest tile ``[floor(now, f), now)``, and the lifetime prefix. Each window gets a
boolean mask over the *columns* the read returns::

    [cover tiles ..., open tile, lifetime prefix tiles ..., tail events ...]

The open tile comes from the tail (its events one by one, only those with ``ts < now``);
when the tail is not complete that far back (``now`` before the view's ``tail_from``),
from the open tile's stored record instead. Plans depend on ``now`` only through
``floor(now, finest)``, so they are cached per finest tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from parity.registry.durations import floor_to
from parity.registry.online.keys import complex_field, tile_field
from parity.registry.online.layout import ViewLayout
from parity.registry.semantics import Window, feature_window, tile_cover

# One call per view. KEYS: the view's meta hash, then one entity hash per entity. ARGV: the
# view prefix, the cover's fields, the open tile's field, the tail's score range, the lifetime
# prefix, whether complex and latest partials are wanted, one mode character per entity, and
# the range after ``now`` in the open tile. Modes (tile_cache.py): '0' when serving keeps the
# entity's complete part (only its tail and latest values are read, and only while the tail
# covers the open tile), '3' when it keeps its tail's fold too (only latest values are read),
# '2' when serving knows its hash does not exist (nothing is read), anything else reads it all
# (the modes end with one more character, so they are not empty even when every entity is left out).
# With modes, the reply also carries the server's clock (ms), each fully read hash's expiry
# time (PEXPIRETIME), and for each tail read the first event after it in the open tile (the
# instant up to which its fold holds) and the tail's expiry time: a kept part is only used
# while its keys have not expired, even if Redis has not reclaimed them.


@dataclass(frozen=True)
class ReadPlan:
    fields: tuple[bytes, ...]            # complete cover tiles, in column order
    open_field: bytes | None             # the open finest tile's record (fallback when no tail)
    open_start: int | None               # floor(now, finest): first instant of the open tile
    lifetime_res: int | None             # resolution of lifetime prefix tiles (the coarsest)
    lifetime_end: int | None             # prefix tiles end here (exclusive)
    windows: tuple[Window, ...]
    window_fields: tuple[np.ndarray, ...]  # per window: bool mask over ``fields``
    window_lifetime: tuple[bool, ...]


def window_key(layout: ViewLayout, feature) -> Window | None:
    return feature_window(layout.view, feature)


def _cover_fields(start: int | None, now: int, resolutions: tuple[int, ...]):
    tiles = tile_cover(start, now, resolutions)
    complete = [t for t in tiles if not t.open and t.resolution is not None]
    prefix = [t for t in tiles if t.resolution is None]
    return complete, (prefix[0].end if prefix else None)


@lru_cache(maxsize=4096)
def _plan(layout: ViewLayout, open_start: int, windows: tuple[Window, ...]) -> ReadPlan:
    """The plan at any ``now`` in ``[open_start, open_start + finest)`` (now > open_start),
    or exactly at ``now == open_start`` (no open tile) — both give the same complete tiles."""
    resolutions = layout.resolutions
    order: dict[bytes, int] = {}
    per_window: list[list[int]] = []
    lifetime_end = None
    lifetime: list[bool] = []
    for window in windows:
        start = window.start(open_start) if not window.is_lifetime else None
        # covers are computed at the tile start; the open part [open_start, now) is added separately
        complete, prefix_end = _cover_fields(start, open_start, resolutions) if (
            start is None or start < open_start) else ([], None)
        positions = []
        for tile in complete:
            name = tile_field(tile.resolution, tile.start)
            if name not in order:
                order[name] = len(order)
            positions.append(order[name])
        per_window.append(positions)
        lifetime.append(window.is_lifetime)
        if window.is_lifetime:
            lifetime_end = prefix_end
    masks = []
    for positions in per_window:
        mask = np.zeros(len(order), dtype=bool)
        mask[positions] = True
        masks.append(mask)
    finest = resolutions[0]
    return ReadPlan(
        fields=tuple(order),
        open_field=tile_field(finest, open_start), open_start=open_start,
        lifetime_res=resolutions[-1] if lifetime_end is not None else None, lifetime_end=lifetime_end,
        windows=windows, window_fields=tuple(masks), window_lifetime=tuple(lifetime))


_RECENT: dict[tuple[int, int, int], tuple[ViewLayout, tuple, ReadPlan]] = {}


def plan_for(layout: ViewLayout, windows: tuple[Window, ...], now: int) -> ReadPlan:
    """The plan of ``windows`` at ``now`` (a lookup asks several times: the last plans are
    kept by identity of their layout and windows, which hashes no ``Window``)."""
    start = floor_to(now, layout.resolutions[0])
    key = (id(layout), id(windows), start)
    found = _RECENT.get(key)
    if found is not None and found[0] is layout and found[1] is windows:
        return found[2]
    plan = _plan(layout, start, windows)
    if len(_RECENT) > 256:
        _RECENT.clear()
    _RECENT[key] = (layout, windows, plan)  # layout and windows are kept: their ids stay theirs
    return plan


def latest_cover(layout: ViewLayout, ttl: int, now: int) -> list[bytes]:
    """Complex fields of the complete tiles covering ``[floor(now - ttl, coarsest),
    floor(now, finest))``: the slow path of a latest value whose newest stored event is not
    before ``now``. (Starting on a coarse boundary covers more than the ttl; the ttl rule
    is applied to the value found.)"""
    coarsest, finest = layout.resolutions[-1], layout.resolutions[0]
    start = floor_to(now - ttl, coarsest)
    open_start = floor_to(now, finest)
    if start >= open_start:
        return []
    complete, _ = _cover_fields(start, open_start, layout.resolutions)
    return [complex_field(t.resolution, t.start) for t in complete]


READ_SCRIPT = r"""
local prefix = ARGV[1]
local nf = tonumber(ARGV[2])
local fields = {}
for j = 1, nf do fields[j] = ARGV[2 + j] end
local i = 3 + nf
local open_field, tail_lo, tail_hi = ARGV[i], ARGV[i + 1], ARGV[i + 2]
local life_res, life_end = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
local want_complex, want_latest = ARGV[i + 5] == '1', ARGV[i + 6] == '1'
local modes = ARGV[i + 7] or ''
local next_lo, tail_end = ARGV[i + 8], ARGV[i + 9]
local meta = redis.call('HMGET', KEYS[1], 'watermark', 'tail_from', 'min_ts')
local use_tail = 0
if open_field ~= '' and (not meta[2] or tonumber(tail_lo) >= tonumber(meta[2])) then use_tail = 1 end
local read = {}
for j = 1, nf do read[j] = fields[j] end
if open_field ~= '' and use_tail == 0 then read[#read + 1] = open_field end
local n_life = 0
if life_res > 0 and meta[3] then
  local first = math.floor(tonumber(meta[3]) / (life_res * 1000000))
  for idx = first, life_end - 1 do read[#read + 1] = life_res .. ':' .. idx; n_life = n_life + 1 end
end
local cx = {}
if want_complex then for j = 1, #read do cx[j] = read[j] .. 'x' end end
local clock = {0, 0}
if modes ~= '' then clock = redis.call('TIME') end
local out = {{meta[1] or false, meta[2] or false, use_tail, n_life, clock[1] * 1000 + math.floor(clock[2] / 1000)}}
for k = 2, #KEYS do
  local h = KEYS[k]
  local mode = string.byte(modes, k - 1)
  local kept = use_tail == 1 and (mode == 48 or mode == 51)
  local t = prefix .. 't:' .. string.sub(h, #prefix + 3)
  local entry
  if kept then entry = {1} elseif mode == 50 then entry = {0} else entry = {redis.call('EXISTS', h)} end
  if kept then
    entry[2] = {}
    if mode == 51 then entry[3] = {} else entry[3] = redis.call('ZRANGEBYSCORE', t, tail_lo, tail_hi) end
    entry[4] = {}
    if want_latest then entry[5] = redis.call('HGET', h, 'L') or false else entry[5] = false end
    if mode == 48 then
      entry[6] = false
      entry[7] = redis.call('ZRANGEBYSCORE', t, next_lo, tail_end, 'LIMIT', 0, 1)
      entry[8] = redis.call('PEXPIRETIME', t)
    end
  elseif entry[1] == 1 then
    local present = {}
    if #read > 0 then
      local vals = redis.call('HMGET', h, unpack(read))
      for j = 1, #read do
        if vals[j] then present[#present + 1] = j; present[#present + 1] = vals[j] end
      end
    end
    entry[2] = present
    if use_tail == 1 then
      entry[3] = redis.call('ZRANGEBYSCORE', t, tail_lo, tail_hi)
    else
      entry[3] = {}
    end
    if want_complex and #cx > 0 then entry[4] = redis.call('HMGET', h, unpack(cx)) else entry[4] = {} end
    if want_latest then entry[5] = redis.call('HGET', h, 'L') or false else entry[5] = false end
    if modes ~= '' then
      entry[6] = redis.call('PEXPIRETIME', h)
      if use_tail == 1 then
        entry[7] = redis.call('ZRANGEBYSCORE', t, next_lo, tail_end, 'LIMIT', 0, 1)
        entry[8] = redis.call('PEXPIRETIME', t)
      end
    end
  end
  out[#out + 1] = entry
end
return out
"""

SLOW_SCRIPT = r"""
local out = {}
for k = 1, #KEYS do out[k] = redis.call('HMGET', KEYS[k], unpack(ARGV)) end
return out
"""

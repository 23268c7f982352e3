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


def plan_for(layout: ViewLayout, windows: tuple[Window, ...], now: int) -> ReadPlan:
    finest = layout.resolutions[0]
    return _plan(layout, floor_to(now, finest), windows)


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

"""The semantics core: window -> hop -> tiles, ttl, empty-window values, retention.

Every engine (DuckDB batch, the embedded stream engine, Flink, online serving) calls
these functions; none re-derives them. DESIGN.md "Window semantics" is the contract:

- A window of length W has a hop h(W): 5 min under 12 h, 1 h from 12 h to under 12 d,
  1 d from 12 d on. A view may override it. W must be a multiple of h(W).
- The value at time t aggregates exactly the events with ``floor(t - W, h) <= ts < t``.
  ``lifetime`` means ``ts < t``.
- Online, ``[floor(now - W, h), now)`` is covered by tiles: coarse ones for the old
  part, finer ones toward ``now``, and the open finest tile ``[floor(now, f), now)`` last.

Times are integer microseconds since the epoch (see :mod:`parity.registry.durations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from parity.registry.durations import DAY, HOUR, LIFETIME, MINUTE, floor_to, parse_duration
from parity.registry.models import Feature, FeatureView
from parity.registry.types import INTEGER_TYPES, sum_type

# (upper bound of W, exclusive) -> hop. The table *is* the DESIGN.md rule.
HOP_CLASSES: tuple[tuple[int | None, int], ...] = (
    (12 * HOUR, 5 * MINUTE),
    (12 * DAY, HOUR),
    (None, DAY),
)


def default_hop(window: int) -> int:
    """h(W) by the DESIGN.md table (``window`` in microseconds)."""
    for upper, hop in HOP_CLASSES:
        if upper is None or window < upper:
            return hop
    raise AssertionError("unreachable: the last hop class is open-ended")


@dataclass(frozen=True)
class Window:
    """A resolved window: ``length`` and ``hop`` in microseconds; both None for lifetime."""

    length: int | None
    hop: int | None

    @property
    def is_lifetime(self) -> bool:
        return self.length is None

    def start(self, t: int) -> int | None:
        """First instant inside the window at ``t``: ``floor(t - W, h)``; None for lifetime."""
        if self.length is None or self.hop is None:
            return None
        return floor_to(t - self.length, self.hop)

    def bounds(self, t: int) -> tuple[int | None, int]:
        """``[start, t)``: the half-open interval of event times aggregated at ``t``."""
        return self.start(t), t

    def contains(self, ts: int, t: int) -> bool:
        start = self.start(t)
        return (start is None or start <= ts) and ts < t


def resolve_window(window: str, hop_override: str | None = None) -> Window:
    """Parse a window string (``"1h"``, ``"lifetime"``) with an optional hop override."""
    if window.strip().lower() == LIFETIME:
        return Window(None, None)
    length = parse_duration(window)
    hop = parse_duration(hop_override) if hop_override else default_hop(length)
    return Window(length, hop)


def hop_override(view: FeatureView, window: str) -> str | None:
    """The view's hop override for ``window``, matched on the duration, not the spelling."""
    if not view.hops:
        return None
    length = parse_duration(window)
    for key, hop in view.hops.items():
        if parse_duration(key) == length:
            return hop
    return None


def feature_window(view: FeatureView, feature: Feature) -> Window | None:
    """The resolved window of a feature; None for a latest-value (ttl) feature."""
    if feature.window is None:
        return None
    if feature.window.strip().lower() == LIFETIME:
        return Window(None, None)
    return resolve_window(feature.window, hop_override(view, feature.window))


def view_resolutions(view: FeatureView) -> tuple[int, ...]:
    """Tile resolutions a view needs, finest first: the hops of its windows.

    A lifetime window adds the 1 d resolution (its prefix is built from day tiles). A view
    with no windowed feature needs no tiles: ``()``.
    """
    found: set[int] = set()
    for feature in view.features:
        window = feature_window(view, feature)
        if window is None:
            continue
        found.add(DAY if window.is_lifetime else window.hop)  # type: ignore[arg-type]
    return tuple(sorted(found))


def is_divisibility_chain(resolutions: Iterable[int]) -> bool:
    """True when each resolution divides the next coarser one (needed for aligned covers)."""
    ordered = sorted(resolutions)
    return all(coarse % fine == 0 for fine, coarse in zip(ordered, ordered[1:]))


@dataclass(frozen=True)
class Tile:
    """One piece of a window cover: events with ``start <= ts < end``.

    ``resolution`` is the tile size. ``open`` marks the still-open finest tile, clipped at
    ``now`` (``end == now``). ``resolution is None`` marks a lifetime prefix (``start`` is
    None: everything before ``end``).
    """

    resolution: int | None
    start: int | None
    end: int
    open: bool = False


def tile_cover(start: int | None, now: int, resolutions: Iterable[int]) -> list[Tile]:
    """Cover ``[start, now)`` exactly with disjoint tiles, oldest first.

    ``start`` must be aligned to the finest resolution (window starts are aligned to their
    hop, and hops form a divisibility chain). Greedy from the left: at each position take
    the coarsest tile that is aligned there and complete before ``floor(now, finest)``;
    then the open finest tile up to ``now``. ``start is None`` (lifetime) begins with a
    prefix tile ending at ``floor(now, coarsest)``.
    """
    ordered = sorted(set(resolutions))
    if not ordered:
        raise ValueError("a tile cover needs at least one resolution")
    if not is_divisibility_chain(ordered):
        raise ValueError(f"resolutions {ordered} do not form a divisibility chain")
    finest = ordered[0]
    complete_end = floor_to(now, finest)
    tiles: list[Tile] = []
    if start is None:
        position = floor_to(now, ordered[-1])
        tiles.append(Tile(None, None, position))
    else:
        if start % finest:
            raise ValueError(f"window start {start} is not aligned to the finest resolution {finest}")
        if start > now:
            raise ValueError("window start after now")
        position = start
    coarse_first = ordered[::-1]
    while position < complete_end:
        for resolution in coarse_first:
            if position % resolution == 0 and position + resolution <= complete_end:
                tiles.append(Tile(resolution, position, position + resolution))
                position += resolution
                break
        else:  # unreachable for aligned starts on a chain; never loop forever
            raise ValueError(f"no tile of {ordered} fits at {position}")
    if position < now:
        tiles.append(Tile(finest, position, now, open=True))
    return tiles


def cover_size_bound(window: Window, resolutions: Iterable[int]) -> int:
    """An upper bound on ``len(tile_cover(...))`` for this window, at any ``now``.

    Left and right ramps use at most ``coarser/finer - 1`` tiles per step of the chain;
    the middle uses coarsest tiles; plus the open tile (and the lifetime prefix).
    """
    ordered = sorted(set(resolutions))
    ramps = sum(coarse // fine - 1 for fine, coarse in zip(ordered, ordered[1:]))
    if window.is_lifetime:
        return 1 + ramps + 1
    span = window.length + window.hop  # type: ignore[operator]
    return 2 * ramps + span // ordered[-1] + 2


def counts_at(ts, t):
    """The event-time rule: an event counts at ``t`` exactly when ``ts < t`` (events at
    ``t`` itself do not; equal timestamps count together). Scalars or NumPy arrays."""
    return ts < t


def counted_before(sorted_keys, probes):
    """For each probe, how many of ``sorted_keys`` (ascending) count at it by :func:`counts_at`:
    the number of keys ``< probe``, one binary search each (NumPy arrays). The vectorised
    form of the same rule, so running totals and latest values cannot drift apart."""
    import numpy as np

    return np.searchsorted(sorted_keys, probes, side="left")


def latest_is_live(last_ts: int, t: int, ttl: int) -> bool:
    """The ttl rule: the last event before ``t`` is served only if ``last_ts >= t - ttl``."""
    return last_ts >= t - ttl


def output_dtype(agg: str, column_dtype: str | None) -> str:
    """The value type of an aggregation ("list<T>" for last_k)."""
    if agg == "count":
        return "int64"
    if agg == "sum":
        return sum_type(column_dtype or "int64")
    if agg == "mean":
        return "float64"
    if agg == "last_k":
        return f"list<{column_dtype}>"
    return column_dtype or "int64"


def empty_value(agg: str, column_dtype: str | None) -> Any:
    """The value of an aggregation over an empty window (DESIGN.md)."""
    if agg == "count":
        return 0
    if agg == "sum":
        return 0 if (column_dtype or "int64") in INTEGER_TYPES else 0.0
    if agg == "last_k":
        return []
    return None


def retention(view: FeatureView) -> int | None:
    """How long a view's online state must be kept, in microseconds; None = forever.

    Windowed features need their longest ``W + h`` (late events are applied while their
    tiles are retained); latest values need their ttl; lifetime needs everything.
    """
    horizon = 0
    for feature in view.features:
        window = feature_window(view, feature)
        if window is not None and window.is_lifetime:
            return None
        if window is not None:
            horizon = max(horizon, window.length + window.hop)  # type: ignore[operator]
        elif feature.ttl is not None:
            horizon = max(horizon, parse_duration(feature.ttl))
    return horizon


def _longest_window(view: FeatureView) -> int:
    lengths = [w.length for f in view.features if (w := feature_window(view, f)) is not None and w.length]
    return max(lengths, default=0)


def tile_resolutions(view: FeatureView) -> tuple[int, ...]:
    """Resolutions a view's tiles are *stored* at (online store and backfill), finest first.

    The hops of its windows (:func:`view_resolutions`), plus levels that shorten covers,
    added only where they keep the divisibility chain:

    - 1 d for latest values, lifetime windows and windows of 2 d or more (a 7 d window
      with a 1 h hop is then covered by about 50 tiles instead of 170);
    - 1 h and 1 d for latest values (their ttl cover starts on a coarse boundary).
    """
    found = set(view_resolutions(view))
    has_latest = any(f.window is None for f in view.features)
    wanted = []
    if has_latest:
        wanted.append(HOUR)
    if has_latest or _longest_window(view) >= 2 * DAY or any(
            (w := feature_window(view, f)) is not None and w.is_lifetime for f in view.features):
        wanted.append(DAY)
    for extra in wanted:
        if is_divisibility_chain(found | {extra}):
            found.add(extra)
    return tuple(sorted(found))


def resolution_retention(view: FeatureView) -> dict[int, int | None]:
    """How long tiles of each stored resolution must be kept (microseconds; None = forever).

    A resolution r is read (a) as the hop of windows W (their covers reach back W + r),
    (b) on the right ramp of a coarser window's cover (up to the next coarser level), and
    (c) at the coarsest level by every cover's old part and by latest-value covers
    (ttl plus one coarsest tile). Lifetime windows keep the coarsest level forever.
    """
    levels = tile_resolutions(view)
    keep: dict[int, int | None] = {r: 0 for r in levels}
    for fine, coarse in zip(levels, levels[1:]):
        keep[fine] = coarse + fine
    coarsest = levels[-1] if levels else None
    for feature in view.features:
        window = feature_window(view, feature)
        if window is None:
            if coarsest is not None and feature.ttl is not None:
                keep[coarsest] = _max_keep(keep[coarsest], parse_duration(feature.ttl) + coarsest)
        elif window.is_lifetime:
            keep[coarsest] = None  # type: ignore[index]
        else:
            span = window.length + window.hop  # type: ignore[operator]
            keep[window.hop] = _max_keep(keep[window.hop], span)  # type: ignore[index]
            if coarsest is not None:
                keep[coarsest] = _max_keep(keep[coarsest], span + coarsest)
    return keep


def _max_keep(current: int | None, candidate: int) -> int | None:
    return None if current is None else max(current, candidate)


def ingestion_lag_exceeds(view: FeatureView, watermark: int | None, now: int) -> bool:
    """The ``stale`` rule: the view has a freshness SLO and its ingestion lag ``now -
    watermark`` exceeds it; a view with an SLO and no watermark yet is stale (fail closed)."""
    if not view.freshness_slo:
        return False
    return watermark is None or now - watermark > parse_duration(view.freshness_slo)

"""The complete part of each window, per entity, kept between lookups.

A window's value at ``now`` folds the complete tiles of its cover (every tile that ends by
``floor(now, finest)``) with the open finest tile. For all ``now`` inside one finest tile
the complete tiles are the same (:func:`~parity.serving.read_plan.plan_for`), and their
stored records change only when a writer writes one of them: a late event, a backfill, a
re-materialization. So a lookup may reuse the folded complete part of an entity from an
earlier lookup, and read from Redis only the open tile's events (the tail), as long as
nothing changed the entity's hash since that earlier read.

"Nothing changed" is what :class:`~parity.serving.invalidation.InvalidationTracker` tells:
Redis pushes a message for every write, expiry or deletion of an entity hash, and a flush.
The protocol of a lookup (:class:`CacheView`):

1. under the lock, apply the pushes seen so far and note the tracker's epoch ``e0``; split
   the request's entities into **hits** (their part is kept for this plan) and **misses**;
2. one round trip: the misses' cover tiles and everyone's tail (the hits' tiles are not read);
3. ``sync()`` the tracker: every change executed before the round trip is now known;
4. a hit whose hash changed after ``e0`` is read again in full (its kept part may predate
   the change); a miss is kept only if its hash did not change after ``e0`` (else its
   read may predate a change whose push was already applied).

An entity whose hash does not exist is kept as absent (its creation is a change too). Views with lifetime windows or windowed
complex features (``last``, ``last_k``, string extremes), lookups whose tail does not reach
back to the open tile, and a tracker that is unavailable all fall back to full reads.
Memory is bounded (``max_bytes``); when full, the oldest plans are dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from parity.registry.online.layout import ViewLayout
from parity.serving.invalidation import InvalidationTracker, TrackingUnavailable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    kept: int = 0
    reread: int = 0  # hits found changed after their read: read again in full
    unavailable: int = 0  # lookups that could not use the cache (tracking lost)


class PlanPart:
    """Folded complete parts of one view's windows at one open tile, for many entities."""

    def __init__(self, layout: ViewLayout, n_windows: int, capacity: int = 256):
        self.index: dict[bytes, int] = {}
        self.n_windows = n_windows
        self.ints = np.zeros((capacity, n_windows, layout.n_int), np.int64)
        self.floats = np.zeros((capacity, n_windows, layout.n_float), np.float64)
        self.expires = np.zeros(capacity, np.int64)  # the hash's PEXPIRETIME (ms) when read; -1: none
        self.used = 0

    @property
    def nbytes(self) -> int:
        return self.ints.nbytes + self.floats.nbytes + self.expires.nbytes

    def add(self, codes: list[bytes], ints: np.ndarray, floats: np.ndarray, expires: list[int]) -> int:
        """Keep ``codes``' parts; returns the bytes the arrays grew by."""
        need = self.used + len(codes)
        grown = 0
        if need > len(self.ints):
            size = max(need, 2 * len(self.ints))
            before = self.nbytes
            self.ints = _grow(self.ints, size)
            self.floats = _grow(self.floats, size)
            self.expires = _grow(self.expires, size)
            grown = self.nbytes - before
        rows = np.arange(self.used, need)
        self.ints[rows] = ints
        self.floats[rows] = floats
        self.expires[rows] = expires
        for code, row in zip(codes, rows.tolist()):
            self.index[code] = row
        self.used = need
        return grown


    def add_absent(self, codes: list[bytes]) -> None:
        for code in codes:
            self.index[code] = -1


def _grow(array: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size,) + array.shape[1:], array.dtype)
    out[:len(array)] = array
    return out


@dataclass
class Split:
    """One view's entities in one lookup: which are hits, and what was noted for them."""

    part: PlanPart | None
    epoch: int = 0
    hits: list[int] = field(default_factory=list)  # positions among the request's unique entities
    absent: list[int] = field(default_factory=list)  # known not to exist (nothing is read)
    hit_ints: np.ndarray | None = None
    hit_floats: np.ndarray | None = None
    hit_expires: list[int] = field(default_factory=list)


class TileCache:
    """Per (view layout, windows, open tile) :class:`PlanPart`, invalidated by a tracker."""

    def __init__(self, client, prefixes: list[bytes], max_bytes: int = 256 << 20, max_plans: int = 64):
        """``prefixes``: entity-hash key prefix (``p:<project>:<view>:<version>:e:``) of
        every view that may be cached."""
        self.tracker = InvalidationTracker(client, prefixes)
        self.max_bytes, self.max_plans = max_bytes, max_plans
        self.stats = CacheStats()
        self._parts: OrderedDict[tuple, tuple[bytes, PlanPart]] = OrderedDict()
        self._applied = 0
        self._bytes = 0
        self._lock = threading.Lock()

    # -- invalidation ----------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Apply the pushes the tracker has seen since the last call (under the lock)."""
        self._applied, changed = self.tracker.changes(self._applied)
        if changed is None:
            self._parts.clear()
            self._bytes = 0
            return
        if not changed or not self._parts:
            return
        for prefix, part in self._parts.values():
            size = len(prefix)
            for key in changed:
                if key.startswith(prefix):
                    part.index.pop(key[size:], None)

    # -- a lookup's protocol -----------------------------------------------------------------
    def split(self, layout: ViewLayout, prefix: bytes, windows: tuple, open_start: int, codes: list[bytes]) -> Split:
        """Step 1: the hits among ``codes`` (their kept parts copied out) and the epoch."""
        if self.tracker.disabled:
            return Split(None)
        if not self.tracker.connected:  # (re)connect first: what this lookup reads can then be kept
            try:
                self.tracker.sync()
            except TrackingUnavailable:
                self.stats.unavailable += 1
                return Split(None)
        key = (id(layout), windows, open_start)
        with self._lock:
            self._catch_up()
            found = self._parts.get(key)
            if found is None:
                part = PlanPart(layout, len(windows))
                self._parts[key] = (prefix, part)
                self._bytes += part.nbytes
                self._evict()
            else:
                part = found[1]
                self._parts.move_to_end(key)
            index = part.index
            hits, rows, absent = [], [], []
            for u, code in enumerate(codes):
                row = index.get(code)
                if row is None:
                    continue
                if row < 0:
                    absent.append(u)
                else:
                    hits.append(u)
                    rows.append(row)
            out = Split(part, self._applied, hits, absent)
            if rows:
                out.hit_ints = part.ints[rows]
                out.hit_floats = part.floats[rows]
                out.hit_expires = part.expires[rows].tolist()
        self.stats.hits += len(hits) + len(absent)
        self.stats.misses += len(codes) - len(hits) - len(absent)
        return out

    def sync(self) -> bool:
        """Step 3, once per lookup after its round trip: False when the tracker is lost
        (then :meth:`settle` keeps nothing and finds every hit stale)."""
        try:
            self.tracker.sync()
            return True
        except TrackingUnavailable:
            self.stats.unavailable += 1
            return False

    def settle(self, split: Split, synced: bool, prefix: bytes, codes: list[bytes], kept: list[int],
               ints: np.ndarray, floats: np.ndarray, expires: list[int], missing: list[int], clock_ms: int) -> list[int]:
        """Step 4, after :meth:`sync`: keep the parts of the entities read at positions
        ``kept`` (``ints``/``floats``: their folded parts, ``expires``: their hashes'
        expiry times, in that order) and the absence of those at ``missing``, unless their
        hash changed after the split; return the hits (kept or absent) that must be read
        again: changed, or expired by the server's clock ``clock_ms`` (a hash past its expiry
        time is gone, whether or not Redis has reclaimed it and said so)."""
        cached = split.hits + split.absent
        expired = [u for u, at in zip(split.hits, split.hit_expires) if at >= 0 and at <= clock_ms + 1]
        if not synced:
            with self._lock:
                self._catch_up()
            self.stats.reread += len(cached)
            return cached
        with self._lock:
            self._catch_up()
            _epoch, changed = self.tracker.changes(split.epoch)
            if changed is None:
                stale = cached
            else:
                stale = [u for u in cached if prefix + codes[u] in changed] if changed else []
                if expired:
                    stale = sorted(set(stale) | set(expired))
                keep = [i for i, u in enumerate(kept) if not changed or prefix + codes[u] not in changed]
                gone = [codes[u] for u in missing if not changed or prefix + codes[u] not in changed]
                if gone and split.part is not None:
                    split.part.add_absent(gone)
                if keep and split.part is not None and any(v[1] is split.part for v in self._parts.values()):
                    if len(keep) < len(kept):
                        ints, floats = ints[keep], floats[keep]
                    self._bytes += split.part.add([codes[kept[i]] for i in keep], ints, floats,
                                                  [expires[i] for i in keep])
                    self.stats.kept += len(keep)
                    self._evict()
        self.stats.reread += len(stale)
        return stale

    def _evict(self) -> None:
        while (self._bytes > self.max_bytes or len(self._parts) > self.max_plans) and len(self._parts) > 1:
            _key, (_prefix, part) = self._parts.popitem(last=False)
            self._bytes -= part.nbytes
        if self._bytes > self.max_bytes and self._parts:  # one plan larger than the bound: start it over
            self._parts.clear()
            self._bytes = 0

    def close(self) -> None:
        self.tracker.close()

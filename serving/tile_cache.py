"""The complete part of each window, and the open tile's fold, per entity, kept between lookups.

A window's value at ``now`` folds the complete tiles of its cover (every tile that ends by
``floor(now, finest)``) with the open finest tile. For all ``now`` inside one finest tile
the complete tiles are the same (:func:`~parity.serving.read_plan.plan_for`), and their
stored records change only when a writer writes one of them: a late event, a backfill, a
re-materialization. So a lookup may reuse the folded complete part of an entity from an
earlier lookup, and read from Redis only the open tile's events (the tail), as long as
nothing changed the entity's hash since that earlier read.

The open tile's part is kept too. Its tail (the sorted set of the open tile's events) is a
key of its own, and a lookup at ``now`` folds the tail's events with ``ts < now``. That fold
stays the same for every ``now`` in ``[lo, hi]``: ``lo`` is one microsecond after the newest
event it folded (or the open tile's start), ``hi`` the time of the next event in the open
tile (or the tile's end). An entity whose kept tail fold covers ``now`` is a **fresh** hit:
nothing of it is read from Redis at all (only its latest values, when asked for). A hit
whose kept fold does not cover ``now`` (an event stamped ahead of the clock came due, or a
lookup in the past) has its tail read again, as before.

"Nothing changed" is what :class:`~parity.serving.invalidation.InvalidationTracker` tells:
Redis pushes a message for every write, expiry or deletion of an entity hash or tail, and a
flush. The protocol of a lookup (:class:`TileCache`):

1. under the lock, apply the pushes seen so far and note the tracker's epoch ``e0``; split
   the request's entities into **hits** (their part is kept for this plan; **fresh** ones
   also have a tail fold that covers ``now``) and **misses**;
2. one round trip: the misses' cover tiles and tails, the tails of the hits that are not
   fresh (fresh hits are not read);
3. ``sync()`` the tracker: every change executed before the round trip is now known;
4. a hit whose hash changed after ``e0`` (a fresh hit: its hash or its tail) is read again
   in full (its kept part may predate the change); what was read is kept only if its hash
   and tail did not change after ``e0`` (else its read may predate a change whose push was
   already applied).

Kept parts carry the expiry times of the hash and the tail (``PEXPIRETIME``): a hit whose
key is past its expiry on the server's clock is read again, whether or not Redis has reclaimed
the key yet. An entity whose hash does not exist is kept as absent (its creation is a change
too). Views with lifetime windows or windowed complex features (``last``, ``last_k``, string extremes), lookups whose tail does not reach
back to the open tile, and a tracker that is unavailable all fall back to full reads.
Memory is bounded (``max_bytes``); when full, the oldest plans are dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from itertools import repeat
from dataclasses import dataclass, field

import numpy as np

from parity.registry.online.keys import tail_prefix_of
from parity.registry.online.layout import ViewLayout
from parity.serving.invalidation import InvalidationTracker, TrackingUnavailable
from parity.serving.merge import tail_span


@dataclass
class CacheStats:
    hits: int = 0  # entities whose complete part (or absence) was kept
    misses: int = 0
    kept: int = 0
    fresh: int = 0  # hits whose tail fold was kept too: nothing of them read
    reread: int = 0  # hits found changed after their read: read again in full
    unavailable: int = 0  # lookups that could not use the cache (tracking lost)


NO_TAIL = np.iinfo(np.int64).max  # ``tail_lo`` of a row without a kept tail fold: never covers ``now``


class PlanPart:
    """Folded complete parts of one view's windows at one open tile, and the fold of each
    entity's tail, for many entities."""

    def __init__(self, layout: ViewLayout, n_windows: int, capacity: int = 256):
        self.index: dict[bytes, int] = {}
        self.n_windows = n_windows
        self.ints = np.zeros((capacity, n_windows, layout.n_int), np.int64)
        self.floats = np.zeros((capacity, n_windows, layout.n_float), np.float64)
        self.open_ints = np.zeros((capacity, layout.n_int), np.int64)
        self.open_floats = np.zeros((capacity, layout.n_float), np.float64)
        self.tail_lo = np.full(capacity, NO_TAIL, np.int64)  # the tail fold covers lo <= now <= hi
        self.tail_hi = np.zeros(capacity, np.int64)
        self.expires = np.zeros(capacity, np.int64)  # the hash's PEXPIRETIME (ms) when read; -1: none
        self.tail_expires = np.full(capacity, -1, np.int64)  # the tail's; -1: none (or no tail key)
        self.used = 0

    _ARRAYS = ("ints", "floats", "open_ints", "open_floats", "tail_lo", "tail_hi", "expires", "tail_expires")

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._ARRAYS)

    def add(self, codes: list[bytes], ints: np.ndarray, floats: np.ndarray, expires: list[int]) -> tuple[np.ndarray, int]:
        """Keep ``codes``' complete parts; returns their rows and the bytes the arrays grew by."""
        need = self.used + len(codes)
        grown = 0
        if need > len(self.ints):
            size = max(need, 2 * len(self.ints))
            before = self.nbytes
            for name in self._ARRAYS:
                setattr(self, name, _grow(getattr(self, name), size))
            self.tail_lo[self.used:] = NO_TAIL
            grown = self.nbytes - before
        rows = np.arange(self.used, need)
        self.ints[rows] = ints
        self.floats[rows] = floats
        self.expires[rows] = expires
        self.tail_lo[rows] = NO_TAIL
        for code, row in zip(codes, rows.tolist()):
            self.index[code] = row
        self.used = need
        return rows, grown

    def set_tails(self, rows, tails: "TailFolds", at) -> None:
        """Keep the tail folds ``tails[at]`` for ``rows``."""
        self.open_ints[rows] = tails.ints[at]
        self.open_floats[rows] = tails.floats[at]
        self.tail_lo[rows] = tails.lo[at]
        self.tail_hi[rows] = tails.hi[at]
        self.tail_expires[rows] = tails.expires[at]

    def add_absent(self, codes: list[bytes]) -> None:
        for code in codes:
            self.index[code] = -1


def _grow(array: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size,) + array.shape[1:], array.dtype)
    out[:len(array)] = array
    return out


@dataclass
class TailFolds:
    """What one lookup read of its entities' tails, per request position (``(E, ·)`` arrays):
    the fold of the events before ``now``, the ``[lo, hi]`` it is valid for, and the tail
    key's expiry time (ms; -1: none)."""

    ints: np.ndarray
    floats: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    expires: np.ndarray

    @classmethod
    def read(cls, layout: ViewLayout, open_start: int, entries, ints: np.ndarray, floats: np.ndarray) -> "TailFolds":
        """The folds ``ints``/``floats`` ``(E, 1, ·)`` of a view's reply ``entries``, and for the
        entries whose tail was read, the span of ``now`` they hold for and their tail's expiry."""
        n = len(entries)
        lo = np.zeros(n, np.int64)
        hi = np.zeros(n, np.int64)
        expires = np.full(n, -1, np.int64)
        open_end = open_start + layout.resolutions[0]
        for u, entry in enumerate(entries):
            if len(entry) > 7:
                lo[u], hi[u] = tail_span(entry, open_start, open_end)
                expires[u] = entry[7]
        return cls(ints[:, 0], floats[:, 0], lo, hi, expires)


@dataclass
class Split:
    """One view's entities in one lookup: which are hits, and what was noted for them."""

    part: PlanPart | None
    epoch: int = 0
    hits: list[int] = field(default_factory=list)  # positions among the request's unique entities
    fresh: list[int] = field(default_factory=list)  # hits whose tail fold covers now (not read at all)
    absent: list[int] = field(default_factory=list)  # known not to exist (nothing is read)
    hit_rows: list[int] = field(default_factory=list)
    hit_ints: np.ndarray | None = None
    hit_floats: np.ndarray | None = None
    hit_expires: list[int] = field(default_factory=list)  # the earlier of hash and tail expiry (-1: none)
    fresh_ints: np.ndarray | None = None  # the kept tail folds of ``fresh``
    fresh_floats: np.ndarray | None = None
    skipped: bool = False  # the fresh hits were left out of the read (then a reply without a tail reads all again)


class TileCache:
    """Per (view layout, windows, open tile) :class:`PlanPart`, invalidated by a tracker."""

    def __init__(self, client, prefixes: list[bytes], max_bytes: int = 256 << 20, max_plans: int = 64):
        """``prefixes``: entity-hash key prefix (``p:<project>:<view>:<version>:e:``) of
        every view that may be cached (their tails, ``...:t:``, are tracked too)."""
        self.tracker = InvalidationTracker(client, [*prefixes, *map(tail_prefix_of, prefixes)])
        self.max_bytes, self.max_plans = max_bytes, max_plans
        self.stats = CacheStats()
        self._parts: OrderedDict[tuple, tuple[bytes, bytes, PlanPart]] = OrderedDict()
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
        for prefix, tails, part in self._parts.values():
            size = len(prefix)
            for key in changed:
                if key.startswith(prefix) or key.startswith(tails):
                    part.index.pop(key[size:], None)

    # -- a lookup's protocol -----------------------------------------------------------------
    def split(self, layout: ViewLayout, prefix: bytes, windows: tuple, open_start: int, codes: list[bytes],
              now: int | None = None) -> Split:
        """Step 1: the hits among ``codes`` (their kept parts copied out), the fresh ones among
        them (kept tail folds that cover ``now``; None: none is fresh) and the epoch."""
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
                self._parts[key] = (prefix, tail_prefix_of(prefix), part)
                self._bytes += part.nbytes
                self._evict()
            else:
                part = found[2]
                self._parts.move_to_end(key)
            found_rows = np.fromiter(map(part.index.get, codes, repeat(-2, len(codes))), np.int64, len(codes))
            hits = np.flatnonzero(found_rows >= 0)
            absent = np.flatnonzero(found_rows == -1).tolist()
            out = Split(part, self._applied, hits.tolist(), [], absent)
            if len(hits):
                rows = found_rows[hits]
                out.hit_rows = rows.tolist()
                out.hit_ints = part.ints[rows]
                out.hit_floats = part.floats[rows]
                hash_at, tail_at = part.expires[rows], part.tail_expires[rows]
                out.hit_expires = np.where((tail_at >= 0) & ((hash_at < 0) | (tail_at < hash_at)), tail_at,
                                           hash_at).tolist()
                if now is not None:
                    covered = (part.tail_lo[rows] <= now) & (now <= part.tail_hi[rows])
                    if covered.any():
                        at = np.flatnonzero(covered)
                        out.fresh = hits[at].tolist()
                        out.fresh_ints = part.open_ints[rows[at]]
                        out.fresh_floats = part.open_floats[rows[at]]
        self.stats.hits += len(out.hits) + len(absent)
        self.stats.fresh += len(out.fresh)
        self.stats.misses += len(codes) - len(out.hits) - len(absent)
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
               ints: np.ndarray, floats: np.ndarray, expires: list[int], missing: list[int], clock_ms: int,
               tails: TailFolds | None = None) -> list[int]:
        """Step 4, after :meth:`sync`: keep the parts of the entities read at positions
        ``kept`` (``ints``/``floats``: their folded parts, ``expires``: their hashes'
        expiry times, in that order) and the absence of those at ``missing``, unless their
        hash changed after the split; keep the tail folds ``tails`` (per position; None: no
        tail was read) of the kept entities and of the hits that are not fresh, unless their
        hash or tail changed after the split. Return the hits (kept or absent) that must be
        read again: changed (a fresh hit: its hash or its tail), or expired by the server's
        clock ``clock_ms`` (a key past its expiry time is gone, whether or not Redis has
        reclaimed it and said so)."""
        cached = split.hits + split.absent
        expired = [u for u, at in zip(split.hits, split.hit_expires) if 0 <= at <= clock_ms + 1]
        if not synced:
            with self._lock:
                self._catch_up()
            self.stats.reread += len(cached)
            return cached
        tprefix = tail_prefix_of(prefix)
        with self._lock:
            self._catch_up()
            _epoch, changed = self.tracker.changes(split.epoch)
            if changed is None:
                stale = cached
            else:
                fresh = set(split.fresh)
                if changed:
                    stale = [u for u in cached if prefix + codes[u] in changed
                             or (u in fresh and tprefix + codes[u] in changed)]
                    untouched = [not (prefix + c in changed or tprefix + c in changed) for c in codes]
                else:
                    stale, untouched = [], None
                if expired:
                    stale = sorted(set(stale) | set(expired))
                part = split.part
                alive = part is not None and any(v[2] is part for v in self._parts.values())
                keep = [i for i, u in enumerate(kept) if untouched is None or untouched[u]]
                gone = [codes[u] for u in missing if untouched is None or untouched[u]]
                if gone and part is not None:
                    part.add_absent(gone)
                if keep and alive:
                    if len(keep) < len(kept):
                        ints, floats = ints[keep], floats[keep]
                    at = [kept[i] for i in keep]
                    rows, grown = part.add([codes[u] for u in at], ints, floats, [expires[i] for i in keep])
                    self._bytes += grown
                    if tails is not None:
                        part.set_tails(rows, tails, at)
                    self.stats.kept += len(keep)
                if tails is not None and alive:
                    bad = set(stale)
                    refreshed = [(row, u) for u, row in zip(split.hits, split.hit_rows)
                                 if u not in fresh and u not in bad and (untouched is None or untouched[u])
                                 and part.index.get(codes[u]) == row]
                    if refreshed:
                        part.set_tails([r for r, _u in refreshed], tails, [u for _r, u in refreshed])
                self._evict()
        self.stats.reread += len(stale)
        return stale

    def _evict(self) -> None:
        while (self._bytes > self.max_bytes or len(self._parts) > self.max_plans) and len(self._parts) > 1:
            _key, (_prefix, _tails, part) = self._parts.popitem(last=False)
            self._bytes -= part.nbytes
        if self._bytes > self.max_bytes and self._parts:  # one plan larger than the bound: start it over
            self._parts.clear()
            self._bytes = 0

    def close(self) -> None:
        self.tracker.close()

"""Which online-store keys changed: Redis's server-assisted client-side caching, read only.

A serving process that keeps anything derived from Redis (:mod:`parity.serving.tile_cache`)
must learn of every change to what it keeps: a writer's upsert (a late event into a
closed tile, a new event into the open one), a key that expired or was deleted, a flushed
or restarted store. :class:`InvalidationTracker` holds one RESP3 connection with
``CLIENT TRACKING ON BCAST PREFIX <prefix> ...``: from then on Redis pushes an
``invalidate`` message naming every key under those prefixes that is written, expires or
is deleted, and ``invalidate null`` when the database is flushed. Nothing is stored in
Redis for it and writers are unchanged.

**Ordering.** Redis queues the push for a change on this connection before it executes
any later command. :meth:`InvalidationTracker.sync` sends ``CLIENT ID`` and reads up to its
answer, so after ``sync()`` returns, every change executed before that command has been
seen (and the answer, the connection's id, proves that the connection is still the one
tracking was turned on for, not one the client library silently reconnected). A reader that read keys at instant *t* and calls ``sync()`` afterwards therefore
knows of every change up to *t* and beyond. A lost connection (a restart, a network
fault) may have lost pushes: it counts as "everything changed".

Changes are numbered (:attr:`epoch`) and kept in a short log, so a caller can ask what
changed since an epoch it noted (:meth:`changes`); an epoch older than the log
counts as "everything changed".
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterable

from parity.errors import ParityError


class TrackingUnavailable(ParityError):
    """The tracking connection failed: whatever was derived from the store may be stale."""


class InvalidationTracker:
    """Invalidation pushes for keys under ``prefixes``, on a connection of ``client``'s kind."""

    def __init__(self, client, prefixes: Iterable[bytes], log_size: int = 8192):
        self.client = client
        self.prefixes = sorted(set(prefixes))
        self.epoch = 0
        self.disabled = False  # the server refused tracking (e.g. an ACL): nothing may be cached
        self._log: deque[tuple[int, tuple[bytes, ...] | None]] = deque(maxlen=log_size)
        self._conn = None
        self._id = None  # the tracking connection's CLIENT ID
        self._lock = threading.Lock()

    # -- the log ---------------------------------------------------------------------------
    def _note(self, keys: tuple[bytes, ...] | None) -> None:
        self.epoch += 1
        self._log.append((self.epoch, keys))

    def changes(self, since: int) -> tuple[int, set[bytes] | None]:
        """``(epoch, keys)``: the current epoch and the keys changed after ``since`` (as far as
        the last :meth:`sync` knows), or None for "everything" (a flush, a lost connection,
        or an epoch older than the log)."""
        with self._lock:
            if since >= self.epoch:
                return self.epoch, set()
            if not self._log or self._log[0][0] > since + 1:
                return self.epoch, None
            out: set[bytes] = set()
            for number, keys in reversed(self._log):
                if number <= since:
                    break
                if keys is None:
                    return self.epoch, None
                out.update(keys)
            return self.epoch, out

    def _on_push(self, message) -> None:
        if len(message) >= 2 and message[0] in (b"invalidate", "invalidate"):
            keys = message[1]
            self._note(None if keys is None else tuple(k.encode() if isinstance(k, str) else k for k in keys))

    # -- the connection ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _connect(self) -> None:
        import redis

        pool = self.client.connection_pool
        kwargs = {**pool.connection_kwargs, "protocol": 3}
        conn = pool.connection_class(**kwargs)
        try:
            conn.connect()
            conn._parser.set_invalidation_push_handler(self._on_push)
            args: list = ["CLIENT", "TRACKING", "ON", "BCAST"]
            for prefix in self.prefixes:
                args += ["PREFIX", prefix]
            conn.send_command(*args)
            conn.read_response()
            conn.send_command("CLIENT", "ID")
            self._id = conn.read_response()
        except redis.ResponseError:
            conn.disconnect()
            self.disabled = True
            raise TrackingUnavailable("the online store refused CLIENT TRACKING: serving caches nothing") from None
        except Exception:
            conn.disconnect()
            raise
        self._conn = conn
        self._note(None)  # whatever was derived before this connection may predate changes it never saw

    def sync(self) -> int:
        """Read every push queued before now; returns the new :attr:`epoch`. Raises
        :class:`TrackingUnavailable` (after noting "everything changed") when the connection
        fails."""
        import redis

        with self._lock:
            if self.disabled:
                raise TrackingUnavailable("invalidation tracking is disabled")
            try:
                if self._conn is None:
                    self._connect()
                self._conn.send_command("CLIENT", "ID")
                if self._conn.read_response() != self._id:  # the client reconnected on its own: untracked
                    raise redis.ConnectionError("the tracking connection was replaced")
            except TrackingUnavailable:
                raise
            except (redis.RedisError, OSError) as exc:
                self.close_locked()
                self._note(None)
                raise TrackingUnavailable(f"invalidation tracking lost: {exc}") from None
            return self.epoch

    def close_locked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.disconnect()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()

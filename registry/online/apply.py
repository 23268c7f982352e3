"""Apply a batch of events to the online store: read, merge, upsert absolute values.

Stream engines (the embedded one, the Flink sink) hand over the events of a micro-batch;
:func:`apply_events` turns them into the new **absolute** values of every tile they touch
and writes those through :class:`~parity.registry.online.writer.OnlineWriter`, with the
batch's progress markers, in one transaction:

1. take the project's **apply lock** (``SET NX PX`` with a random token; it expires after
   a few seconds, so a crashed writer holds nobody up for long) and with it the next
   *epoch* (a counter of takings). Writers that merge into stored values take turns: while
   one reads, merges and writes, no other writes;
2. check the expected progress markers (a writer that lost its partitions is fenced off:
   :class:`~parity.registry.online.writer.ProgressConflict`, nothing written);
3. read the touched tiles and latest values (plain pipelined ``HMGET`` commands) and merge the
   batch into them (:mod:`parity.registry.online.tile_merge`): the numeric records of every
   touched tile of a view at once (:class:`~parity.registry.online.layout.NumericFold`),
   the complex partials and latest values with the registry's partial merges;
4. ``WATCH`` the epoch, check it is still ours, and ``MULTI``: the absolute values as
   plain commands (``HSET``, ``ZADD``, ``PEXPIRE``: no script per entity), the markers,
   and the lock's release; ``EXEC``.

If the lock expired during a long merge and another writer took it (and may have written),
the epoch moved: the check or the ``WATCH`` stops the ``EXEC``, nothing of the batch is
written, and it is read and merged again. A lock that merely expired, with nobody taking it
since, costs nothing: the epoch is unchanged. So no update is lost and none is applied twice,
whatever the merge's duration.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import hiredis

from parity.errors import ParityError
from parity.registry.models import FeatureView
from parity.registry.online.accumulate import Event
from parity.registry.online.columnar import ViewEvents
from parity.registry.online.keys import apply_lock_key, meta_key, progress_key, view_prefix
from parity.registry.online.resp import RawConnection, RawExchangeError, pack
from parity.registry.online.tile_merge import merge_into, plan_reads
from parity.registry.online.writer import OnlineStoreUnavailable, OnlineWriter, ProgressConflict

# Renews the apply lock's expiry if the token still holds it: 1, else 0.
# Takes the apply lock (KEYS[1]) for token ARGV[1] if it is free, and returns the new epoch
# (KEYS[2], counting every taking of the lock); else 0.
TAKE = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end return 0"
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
LOCK_TTL_MS = 5_000


# Last write of an apply transaction with ``watermark_topics``: each view's watermark becomes
# the least completeness mark ``mark/<topic>/<partition>`` of its topic (the ingestion time
# every partition is applied up to), so one lagging partition holds the view back.
# KEYS: progress, then one meta key per view; ARGV: the topic of each view.
WATERMARK_FROM_MARKS = r"""
local fields = redis.call('HGETALL', KEYS[1])
for k = 2, #KEYS do
  local prefix = 'mark/' .. ARGV[k - 1] .. '/'
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


def apply_events(writer: OnlineWriter, events: Sequence[tuple[FeatureView, Sequence[Event] | ViewEvents]], *,
                 progress: Mapping[str, str] | None = None, expect: Mapping[str, str | None] | None = None,
                 watermarks: Sequence[tuple[FeatureView, int]] = (), retries: int = 20,
                 after_read: Callable[[int], None] | None = None,
                 watermark_topics: Sequence[tuple[FeatureView, str]] = (),
                 extra: Sequence[tuple] = ()) -> AppliedBatch:
    """Merge ``events`` (per view) into the store and commit them with ``progress``;
    returns an :class:`AppliedBatch`. A progress marker whose value is
    :data:`~parity.registry.online.writer.COMMIT_TIME` is set to the commit's server time.
    ``after_read(attempt)`` runs between the read and the write
    (a seam for tests that interleave writers). ``watermark_topics``: (view, topic) pairs
    whose watermark is set, in the same transaction, to the least ``mark/<topic>/<p>``
    progress marker (stream engines commit one per partition: the ingestion time it is
    applied up to). ``extra``: more commands for the same transaction (e.g. an engine's
    counters that must not lag its commits)."""
    return begin_apply(writer, events, progress=progress, expect=expect, watermarks=watermarks, retries=retries,
                       after_read=after_read, watermark_topics=watermark_topics, extra=extra).finish()


def begin_apply(writer: OnlineWriter, events: Sequence[tuple[FeatureView, Sequence[Event] | ViewEvents]], *,
                progress: Mapping[str, str] | None = None, expect: Mapping[str, str | None] | None = None,
                watermarks: Sequence[tuple[FeatureView, int]] = (), retries: int = 20,
                after_read: Callable[[int], None] | None = None,
                watermark_topics: Sequence[tuple[FeatureView, str]] = (),
                extra: Sequence[tuple] = (), first_attempt: int = 1) -> "PendingApply":
    """:func:`apply_events` up to sending the transaction: returns a :class:`PendingApply`
    whose :meth:`~PendingApply.finish` reads the outcome (the caller may work meanwhile, e.g.
    decode its next batch while Redis executes this one). Raises
    :class:`~parity.registry.online.writer.ProgressConflict` before anything is sent.
    ``first_attempt``: the number of this batch's first attempt (a retry's)."""
    client = writer.client
    writer.ensure_scripts()
    plans = []
    for view, items in events:
        batch_events = items if isinstance(items, ViewEvents) else ViewEvents.from_events(writer.layout(view), items)
        if len(batch_events):
            plans.append(plan_reads(writer, batch_events))
    pkey = progress_key(writer.project)
    with_marks = bool(watermark_topics)
    marks_keys = [meta_key(view_prefix(writer.project, v.name, v.version)) for v, _t in watermark_topics]
    expected = list((expect or {}).items())
    lock, token = apply_lock_key(writer.project), uuid.uuid4().hex
    epoch_key = lock + b":epoch"
    again = (writer, events, dict(progress=progress, expect=expect, watermarks=watermarks, after_read=after_read,
                                  watermark_topics=watermark_topics, extra=extra))
    first = first_attempt
    for attempt in range(first, first + retries):
        epoch = _take_lock(client, lock, epoch_key, token)
        released = False
        try:
            if expected:
                current = client.hmget(pkey, [n for n, _v in expected])
                found = {n: (None if v is None else v.decode()) for (n, _w), v in zip(expected, current)}
                _raise_if_moved(expect, sorted(n for n, want in expected if found[n] != want), found)
            stored = _read(client, plans)
            batch = writer.batch()
            packed: list[bytes] = []
            tiles = 0
            for plan, values in zip(plans, stored):
                written, commands = merge_into(batch._view(plan.events.view), writer, plan, values)
                tiles += written
                packed += commands
            for view, mark in watermarks:
                batch.set_watermark(view, mark)
            if after_read is not None:
                after_read(attempt)
            commands = [c for vw in batch._views.values() if (c := writer.meta_command(vw)) is not None]
            commands.extend(extra)
            if progress:
                commands.append(writer.progress_command(dict(progress)))
            if with_marks:
                commands.append((b"EVAL", WATERMARK_FROM_MARKS, 1 + len(marks_keys), pkey, *marks_keys,
                                 *[t for _v, t in watermark_topics]))
            commands.append((b"DEL", lock))
            raw = _send_commit(client, epoch_key, epoch, packed + [pack(c) for c in commands])
            if raw is None:
                continue  # the lock expired and another writer took it: read and merge again
            released = True  # by the transaction's DEL (or by finish(), should it fail)
            offset = -3 if with_marks else -2
            return PendingApply(raw, len(packed) + len(commands), offset if progress else None, attempt, tiles,
                                (lock, token), again, first + retries - attempt - 1)
        finally:
            if not released:
                client.eval(RELEASE, 1, lock, token)
    raise ApplyRetriesExhausted(f"a batch of {sum(len(v) for _view, v in events)} events lost the apply lock "
                                f"{retries} times", hint="fewer engine processes, or smaller batches")


class PendingApply:
    """A batch whose transaction is sent (its connection is held until :meth:`finish`)."""

    def __init__(self, raw, n_commands: int, committed_reply: int | None, attempt: int, tiles: int,
                 lock: tuple[bytes, str], again: tuple, retries_left: int):
        self.raw, self.n_commands, self.committed_reply = raw, n_commands, committed_reply
        self.attempt, self.tiles, self.lock, self.again, self.retries_left = attempt, tiles, lock, again, retries_left
        self.outcome: AppliedBatch | None = None

    def finish(self) -> AppliedBatch:
        """The batch's outcome, once: when another writer took the apply lock before the
        transaction ran (nothing was written), the batch is read, merged and sent again, and
        waited for. Raises what :func:`apply_events` raises."""
        if self.outcome is not None:
            return self.outcome
        writer, events, options = self.again
        try:
            result = _receive_commit(self.raw, self.n_commands)
        except BaseException:
            try:  # a refused batch wrote nothing and still holds the lock; free it if it is ours
                writer.client.eval(RELEASE, 1, *self.lock)
            except Exception:  # the store is unreachable: the lock expires by itself
                pass
            raise
        if result is None:  # another writer took the lock after the check: EXEC did nothing
            if self.retries_left <= 0:
                raise ApplyRetriesExhausted(f"a batch lost the apply lock {self.attempt} times",
                                            hint="fewer engine processes, or smaller batches")
            self.outcome = begin_apply(writer, events, retries=self.retries_left, first_attempt=self.attempt + 1,
                                       **options).finish()
            return self.outcome
        committed_at = int(result[self.committed_reply]) if self.committed_reply is not None else None
        self.outcome = AppliedBatch(self.attempt, committed_at, self.tiles)
        return self.outcome


def _read(client, plans) -> list[list[list]]:
    """Per plan: the stored values of every read entity's fields."""
    packed = [read for plan in plans for read in plan.reads]
    if not packed:
        return [[] for _plan in plans]
    with _raw(client) as raw:
        replies = raw.exchange(packed)
    out, first = [], 0
    for plan in plans:
        out.append(replies[first:first + len(plan.keys)])
        first += len(plan.keys)
    return out


def _send_commit(client, epoch_key: bytes, epoch: int, packed: list[bytes]):
    """Send the ``packed`` commands as one transaction if nobody took the apply lock since
    ``epoch``: ``WATCH`` the epoch, check it, ``MULTI`` ... ``EXEC``. Returns the (entered)
    connection whose replies :func:`_receive_commit` reads, or None when another writer took
    the lock (then nothing was sent)."""
    raw = _raw(client)
    connection = raw.__enter__()
    try:
        _ok, current = connection.exchange([pack((b"WATCH", epoch_key)), pack((b"GET", epoch_key))])
        if current is None or int(current) != epoch:
            connection.exchange([pack((b"UNWATCH",))])
            raw.__exit__(None, None, None)
            return None
        connection.send_transaction(packed)
    except BaseException as exc:
        raw.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return raw


def _receive_commit(raw, n: int) -> list | None:
    """The replies of a transaction sent by :func:`_send_commit` (``n`` commands; the
    connection goes back to the pool), or None when another writer took the lock after the
    check (``EXEC`` did nothing)."""
    try:
        replies = raw.inner.receive_transaction(n)
    except BaseException as exc:
        raw.__exit__(type(exc), exc, exc.__traceback__)
        raise
    raw.__exit__(None, None, None)
    result = replies[-1]
    if result is None:
        return None
    errors = [r for r in replies[:-1] if isinstance(r, hiredis.ReplyError)]
    if isinstance(result, hiredis.ReplyError) or errors:
        raise ParityError(f"the online store refused a batch: {result if not errors else errors[0]}",
                          hint="check the Redis server's version (7.0 or newer) and its logs")
    failed = [r for r in result if isinstance(r, hiredis.ReplyError)]
    if failed:
        raise ParityError(f"the online store failed a command of a committed batch: {failed[0]}",
                          hint="check the Redis server's memory limit and its logs")
    return result


class _raw:
    """:class:`RawConnection`, with a failed exchange reported as the store being unreachable."""

    def __init__(self, client):
        self.inner = RawConnection(client)

    def __enter__(self) -> RawConnection:
        try:
            return self.inner.__enter__()
        except OSError as exc:
            raise OnlineStoreUnavailable(f"online store (Redis) unreachable: {exc}") from exc

    def __exit__(self, kind, value, traceback) -> None:
        self.inner.__exit__(kind, value, traceback)
        if isinstance(value, RawExchangeError):
            raise OnlineStoreUnavailable(str(value), hint="check the Redis server; the batch was not "
                                         "acknowledged and is applied again from the stored offsets") from value


def _take_lock(client, lock: bytes, epoch_key: bytes, token: str) -> int:
    """Wait for the project's apply lock and take it (a holder that died frees it within
    :data:`LOCK_TTL_MS`); returns the epoch of this taking."""
    while True:
        epoch = client.eval(TAKE, 2, lock, epoch_key, token, LOCK_TTL_MS)
        if epoch:
            return int(epoch)
        time.sleep(0.002)


def _raise_if_moved(expect, moved: list[str], found: dict) -> None:
    if moved:
        raise ProgressConflict(
            "progress markers moved: " + ", ".join(f"{n} is {found.get(n)!r}, expected {expect[n]!r}" for n in moved),
            hint="another writer owns these partitions now; drop this batch and resume from the stored markers")

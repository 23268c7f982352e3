"""Apply a batch of events to the online store: read, merge, upsert absolute values.

Stream engines (the embedded one, the Flink sink) hand over the events of a micro-batch;
:func:`apply_events` turns them into the new **absolute** values of every tile they touch
and writes those through :class:`~parity.registry.online.writer.OnlineWriter`, with the
batch's progress markers, in one transaction:

1. take the project's **apply lock** (``SET NX PX`` with a random token; it expires after
   a few seconds, so a crashed writer holds nobody up for long). Writers that merge into
   stored values take turns: while one reads, merges and writes, no other writes;
2. check the expected progress markers (a writer that lost its partitions is fenced off:
   :class:`~parity.registry.online.writer.ProgressConflict`, nothing written);
3. read the touched tiles and latest values (plain pipelined ``HMGET`` commands) and merge the
   batch into them (:mod:`parity.registry.online.tile_merge`): the numeric records of every
   touched tile of a view at once (:class:`~parity.registry.online.layout.NumericFold`),
   the complex partials and latest values with the registry's partial merges;
4. renew the lock if it is still ours, ``WATCH`` it, and ``MULTI``: the absolute values as
   plain commands (``HSET``, ``ZADD``, ``PEXPIRE``: no script per entity), the markers,
   and the lock's release; ``EXEC``.

If the lock expired during a long merge and another writer took it (and wrote), the renewal
fails or the ``WATCH`` aborts the ``EXEC``: nothing of the batch is written, and it is read
and merged again. So no update is lost and none is applied twice.
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
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
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
    for attempt in range(1, retries + 1):
        _take_lock(client, lock, token)
        try:
            if expected:
                current = client.hmget(pkey, [n for n, _v in expected])
                found = {n: (None if v is None else v.decode()) for (n, _w), v in zip(expected, current)}
                _raise_if_moved(expect, sorted(n for n, want in expected if found[n] != want), found)
            stored = _read(client, plans)
            batch = writer.batch()
            tiles, over_full = 0, {}
            due: dict[int, list[bytes]] = {}
            for plan, (values, sizes) in zip(plans, stored):
                tiles += merge_into(batch, writer, plan, values)
                limit, _cuts = writer.prune_limits(plan.events.layout, writer.clock())
                over_full[id(plan.events.layout)] = [k for k, n in zip(plan.keys, sizes) if n is not None and n > limit]
                due[id(plan.events.layout)] = [k for k, d in zip(plan.keys, plan.due) if d]
            for view, mark in watermarks:
                batch.set_watermark(view, mark)
            if after_read is not None:
                after_read(attempt)
            commands = [c for vw in batch._views.values()
                        for c in writer.apply_commands(vw, over_full.get(id(vw.layout), ()), due.get(id(vw.layout), ()))]
            commands.extend(extra)
            if progress:
                commands.append(writer.progress_command(dict(progress)))
            if with_marks:
                commands.append((b"EVAL", WATERMARK_FROM_MARKS, 1 + len(marks_keys), pkey, *marks_keys,
                                 *[t for _v, t in watermark_topics]))
            commands.append((b"DEL", lock))
            done = _commit(client, lock, token, commands)
            if done is None:
                continue  # the lock expired and another writer took it: read and merge again
            for plan in plans:  # expiries refreshed, sizes checked, tails trimmed in this finest tile
                writer.mark_maintained([k for k, d in zip(plan.keys, plan.due) if d],
                                       writer.maintenance_stamp(plan.events.layout))
            committed_at = int(done[-3 if with_marks else -2]) if progress else None
            return AppliedBatch(attempt, committed_at, tiles)
        finally:
            client.eval(RELEASE, 1, lock, token)
    raise ApplyRetriesExhausted(f"a batch of {sum(len(v) for _view, v in events)} events lost the apply lock "
                                f"{retries} times", hint="fewer engine processes, or smaller batches")


def _read(client, plans) -> list[tuple[list[list], list[int | None]]]:
    """Per plan: the stored values of every read entity's fields, and the size of each entity
    hash whose maintenance is due (None for the others)."""
    packed = []
    for plan in plans:
        for key, fields, due in zip(plan.keys, plan.fields, plan.due):
            packed.append(pack((b"HMGET", key, *fields)))
            if due:
                packed.append(pack((b"HLEN", key)))
    if not packed:
        return [([], []) for _plan in plans]
    with _raw(client) as raw:
        replies = iter(raw.exchange(packed))
    out = []
    for plan in plans:
        values, sizes = [], []
        for due in plan.due:
            values.append(next(replies))
            sizes.append(next(replies) if due else None)
        out.append((values, sizes))
    return out


def _commit(client, lock: bytes, token: str, commands: list[tuple]) -> list | None:
    """Run ``commands`` in one transaction if the lock is still ``token``'s: renew it,
    ``WATCH`` it, check it, ``MULTI`` ... ``EXEC``. Returns the commands' replies, or None
    when the lock was lost (then nothing was written)."""
    with _raw(client) as raw:
        renewed, _ok, holder = raw.exchange([pack((b"EVAL", RENEW, 1, lock, token, LOCK_TTL_MS)),
                                             pack((b"WATCH", lock)), pack((b"GET", lock))])
        if renewed != 1 or holder != token.encode():
            raw.exchange([pack((b"UNWATCH",))])
            return None
        packed = [pack((b"MULTI",))] + [pack(c) for c in commands] + [pack((b"EXEC",))]
        replies = raw.exchange(packed)
    result = replies[-1]
    if result is None:
        return None  # the lock expired (or was taken) after the check: EXEC did nothing
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


def _take_lock(client, lock: bytes, token: str) -> None:
    """Wait for the project's apply lock and take it (a holder that died frees it within
    :data:`LOCK_TTL_MS`)."""
    while not client.set(lock, token, nx=True, px=LOCK_TTL_MS):
        time.sleep(0.002)


def _raise_if_moved(expect, moved: list[str], found: dict) -> None:
    if moved:
        raise ProgressConflict(
            "progress markers moved: " + ", ".join(f"{n} is {found.get(n)!r}, expected {expect[n]!r}" for n in moved),
            hint="another writer owns these partitions now; drop this batch and resume from the stored markers")

"""Online store key layout and the typed encoding of entity keys.

Keys (all under one project prefix, so several projects share a Redis)::

    p:<project>:<view>:<version>:e:<entity key>      hash: tiles and latest values of one entity
    p:<project>:<view>:<version>:t:<entity key>      sorted set: recent events (the open tile)
    p:<project>:<view>:<version>:meta                hash: watermark, tail_from, min_ts
    p:<project>:_progress                            hash: writers' progress markers
    p:<project>:_engine                              hash: the stream engine's freshness counters

Project and view names match ``[A-Za-z0-9_]`` (checked by the definition models), so a
``:`` never appears inside them. An entity key encodes each join key's *typed* value,
self-delimiting, in the entity's join-key order:

- int32 / int64: ``i<decimal>;``
- bool: ``b0;`` / ``b1;``
- string: ``s<utf-8 byte length>:<bytes>;``

A string's length prefix makes its content opaque, so no value (``"1;i2"``, ``":"``, an
empty string) can produce another key's encoding, and composite keys concatenate safely.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from parity.errors import ParityError


class EntityKeyError(ParityError):
    """A join key value is missing or has the wrong type."""


INT_BOUNDS = {"int32": 2**31, "int64": 2**63}  # an integer key of the type lies in [-bound, bound)
INT_FORMAT = b"i%d;"


def encode_value(name: str, dtype: str, value: Any) -> bytes:
    if value is None:
        raise EntityKeyError(f"join key {name!r} is null", hint="every entity row needs every join key")
    if dtype in ("int32", "int64"):
        if type(value) is not int:
            raise EntityKeyError(f"join key {name!r} must be an integer ({dtype}), got {type(value).__name__} {value!r}",
                                 hint=f"send {name} as a JSON number")
        bound = INT_BOUNDS[dtype]
        if not -bound <= value < bound:
            raise EntityKeyError(f"join key {name!r} = {value} is out of range for {dtype}")
        return INT_FORMAT % value
    if dtype == "bool":
        if type(value) is not bool:
            raise EntityKeyError(f"join key {name!r} must be a boolean, got {type(value).__name__} {value!r}")
        return b"b1;" if value else b"b0;"
    if dtype == "string":
        if type(value) is not str:
            raise EntityKeyError(f"join key {name!r} must be a string, got {type(value).__name__} {value!r}",
                                 hint=f"send {name} as a JSON string")
        raw = value.encode("utf-8", "surrogatepass")
        return b"s%d:%s;" % (len(raw), raw)
    raise EntityKeyError(f"join key {name!r} has type {dtype}, which cannot be a key")


def encode_ints(dtype: str, values: Sequence[Any]) -> list[bytes] | None:
    """:func:`encode_value` of many ``int32``/``int64`` values at once (a read helper for
    lookups of hundreds of entities); None when any value is not a valid one (encode them one
    by one then, for the error)."""
    bound = INT_BOUNDS[dtype]
    if not values or set(map(type, values)) != {int} or not -bound <= min(values) <= max(values) < bound:
        return None
    return list(map(INT_FORMAT.__mod__, values))


def encode_entity(join_keys: Mapping[str, str], values: Sequence[Any]) -> bytes:
    """The encoding of one entity (``values`` in ``join_keys`` order)."""
    return b"".join(encode_value(name, dtype, value) for (name, dtype), value in zip(join_keys.items(), values))


def view_prefix(project: str, view: str, version: int) -> bytes:
    return f"p:{project}:{view}:{version}:".encode()


ENTITY_PART, TAIL_PART = b"e:", b"t:"  # after the view prefix: an entity's hash, its tail


def entity_key(prefix: bytes, entity: bytes) -> bytes:
    return prefix + ENTITY_PART + entity


def tail_key(prefix: bytes, entity: bytes) -> bytes:
    return prefix + TAIL_PART + entity


def tail_prefix_of(entity_prefix: bytes) -> bytes:
    """The key prefix of a view's tails, from that of its entity hashes
    (``entity_key(view prefix, b"")``)."""
    return tail_key(entity_prefix[:-len(ENTITY_PART)], b"")


def meta_key(prefix: bytes) -> bytes:
    return prefix + b"meta"


def progress_key(project: str) -> bytes:
    return f"p:{project}:_progress".encode()


def abort_key(project: str) -> bytes:
    """Flag set by a guarded transaction's first script when its checks fail: the rest of
    that transaction then writes nothing (it is deleted by the transaction's last command)."""
    return f"p:{project}:_abort".encode()


def apply_lock_key(project: str) -> bytes:
    """The project's apply lock: a writer that kept losing to others takes it (with a token and
    an expiry); other writers' commits abort while it is held."""
    return f"p:{project}:_apply_lock".encode()


#: Hash field of an entity key with its upkeep by stream writers, ``<n>:<e>:<t>``: tile fields
#: created since the last prune, when its expiry was last refreshed (seconds), and the finest
#: tile index when its tail was last trimmed and given its expiry (-1: never). Readers ignore it.
UPKEEP_FIELD = b"_m"


def engine_key(project: str) -> bytes:
    """Hash of the stream engine's freshness counters (``parity status``, ``/metrics``)."""
    return f"p:{project}:_engine".encode()


#: Dead-letter reasons of stream events (the decoder's and the counters' ``dead/<reason>``).
DEAD_LETTER_REASONS = ("undecodable", "schema_mismatch", "missing_key", "missing_timestamp", "future_timestamp")
#: Upper bounds (seconds) of the engine's ``latency_le/<bound>`` applied_at - ingested_at counters.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def tile_field(resolution: int, start: int) -> bytes:
    """Hash field of a tile's numeric record: ``<resolution in seconds>:<start / resolution>``."""
    return b"%d:%d" % (resolution // 1_000_000, start // resolution)


def complex_field(resolution: int, start: int) -> bytes:
    """Hash field of a tile's complex partials (JSON)."""
    return tile_field(resolution, start) + b"x"


LATEST_FIELD = b"L"  # the newest latest-value partials of the entity (JSON)

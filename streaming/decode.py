"""Raw Kafka message values -> validated source rows, or dead letters.

:class:`SourceDecoder` turns one message value (bytes) of a source's topic into a row
``{column: value, ..., "_ingested_at": us, "_partition": p, "_offset": o}`` (what
:class:`~parity.registry.online.accumulate.EventEvaluator` consumes and the offline log
lands), or into a :class:`DeadLetter` with one of the fixed reasons of DESIGN.md:

- ``undecodable``: not valid UTF-8, not valid JSON (orjson's strict JSON: no NaN, no
  trailing content, numbers beyond the float range), a null/empty value, or a JSON value
  that is not an object (``value is a JSON array, not an object``);
- ``missing_key``: a key column (an entity join-key column of some online view using the
  source, passed in) absent or null;
- ``missing_timestamp``: the timestamp field absent or null;
- ``schema_mismatch``: a present, non-null value of the wrong type or out of range
  (``column watch_ms: expected int64, got string 'lots'``). The rules per dtype are those of
  :mod:`parity.registry.event_schema`: strict integers (no bools, no floats, even ``1.0``),
  numbers for floats (ints converted), ``true``/``false`` for bools, and timestamps as
  ISO-8601 with a timezone (``Z`` or an offset; naive times are rejected) or as integer
  epoch microseconds (what ``live_events`` yields before the producer formats it);
- ``future_timestamp``: ``ts`` more than the source's ``max_future`` (default 5m) ahead of
  the message's ``ingested_at`` (exactly ``max_future`` ahead is accepted).

When several problems occur, the reason is the first of missing_key, missing_timestamp,
schema_mismatch, future_timestamp (the last only when ``ts`` itself is valid), and
``detail`` lists every problem, separated by ``; `` (keys first, then schema order).

Every schema column other than the keys and the timestamp field is optional: absent or
null gives None. Fields that are not in the schema are ignored (producers may add fields
before the definitions do). Timestamps come out as int microseconds since the epoch (UTC).

Speed: a per-source function is generated once (one inline type check per column, ISO
``...SS.ffffffZ`` timestamps through a cache of parsed seconds), so a valid message costs
one ``orjson.loads`` plus straight-line code. Anything it does not accept falls back to the
slow, authoritative path, which also words the dead letter; the two agree by construction
(the fast path only accepts what the slow path accepts, with the same values).

Never imports ``parity.batch``.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from parity.errors import ParityError
from parity.registry.online.keys import DEAD_LETTER_REASONS
from parity.registry.durations import format_duration, parse_duration
from parity.registry.event_schema import (FLOAT32_MAX, INT_RANGES, MAX_US, MIN_US, check_value,
                                          format_instant, seconds_prefix_us)
from parity.registry.models import Source

REASONS = DEAD_LETTER_REASONS
_PRIORITY = {"missing_key": 0, "missing_timestamp": 1, "schema_mismatch": 2, "future_timestamp": 3}
_PREFIX_CACHE_MAX = 100_000

try:  # orjson is a dependency; the stdlib fallback mirrors its number handling
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    orjson = None

    def _parse_float(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            raise ValueError("number is infinity when parsed as double")
        return value

    def _parse_int(text: str):
        value = int(text)
        return value if -(2**63) <= value <= 2**64 - 1 else float(value)

    def _no_constant(text: str):
        raise ValueError(f"unexpected constant {text}")

    def _loads(value):
        if not isinstance(value, str):
            value = bytes(value).decode("utf-8")
        return json.loads(value, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_no_constant)


@dataclass(frozen=True)
class DeadLetter:
    """One bad message: why (``reason``, one of :data:`REASONS`), in words (``detail``),
    and where it came from, with its raw value."""

    reason: str
    detail: str
    source: str
    partition: int
    offset: int
    raw: bytes
    ingested_at: int | None = None  # microseconds since the epoch, when known

    def to_json(self) -> dict:
        """A JSON-ready record for a dead-letter topic or file. ``raw`` is the value as text
        when it is valid UTF-8 (``raw_encoding: "utf-8"``), else base64 (``"base64"``)."""
        raw = self.raw or b""
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        record = {"reason": self.reason, "detail": self.detail, "source": self.source,
                  "partition": self.partition, "offset": self.offset, "raw": text, "raw_encoding": encoding}
        if self.ingested_at is not None:
            record["ingested_at"] = format_instant(self.ingested_at)
        return record

    def to_bytes(self) -> bytes:
        """:meth:`to_json` as one compact JSON line (a dead-letter message value)."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def _json_kind(value) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def kafka_ingested_at(message) -> int:
    """The Kafka message timestamp in microseconds (the wall clock when it has none)."""
    kind, ms = message.timestamp()
    if kind == 0 or ms is None or ms < 0:  # TIMESTAMP_NOT_AVAILABLE
        return time.time_ns() // 1000
    return ms * 1000


class SourceDecoder:
    """Decodes one source's message values. ``key_columns``: the source columns that carry
    an entity join key in some online view using the source (they must be present and
    non-null). ``clock_of_message(message) -> int`` gives a Kafka message's ``ingested_at``
    in :meth:`decode_batch` (default: its Kafka timestamp, see :func:`kafka_ingested_at`)."""

    def __init__(self, source: Source, key_columns: list[str],
                 clock_of_message: Callable[[Any], int] | None = None) -> None:
        schema = dict(source.schema_)
        missing = [k for k in key_columns if k not in schema]
        if missing:
            raise ParityError(f"source {source.name} has no column {', '.join(missing)} (key columns)")
        ts_field = source.timestamp_field
        if schema.get(ts_field) != "timestamp":
            raise ParityError(f"source {source.name}: timestamp field {ts_field} is not a timestamp column "
                              "of its schema")
        self.source = source
        self.name = source.name
        self.schema = schema
        self.ts_field = ts_field
        self.key_columns = list(dict.fromkeys(key_columns))
        self.max_future = parse_duration(source.max_future or "5m")
        self.clock_of_message = clock_of_message or kafka_ingested_at
        self._prefixes: dict[str, int] = {}
        self._fast = self._compile()

    # -- public -----------------------------------------------------------------------------

    def decode(self, value: bytes, *, partition: int, offset: int, ingested_at_us: int) -> dict | DeadLetter:
        """One message value -> its row, or a :class:`DeadLetter`. Never raises on bad input."""
        try:
            obj = _loads(value)
        except Exception:
            return self._undecodable(value, partition, offset, ingested_at_us)
        if type(obj) is dict:
            try:
                row = self._fast(obj, ingested_at_us, partition, offset)
            except Exception:  # e.g. float() of a huge int: let the slow path word it
                row = None
            if row is not None:
                return row
            return self._slow(obj, value, partition, offset, ingested_at_us)
        return self._dead("undecodable", f"value is a JSON {_json_kind(obj)}, not an object",
                          value, partition, offset, ingested_at_us)

    def decode_batch(self, messages: Iterable) -> tuple[list[dict], list[DeadLetter]]:
        """Decode many messages: Kafka messages (``value()``, ``partition()``, ``offset()``,
        ingested_at from ``clock_of_message``; messages whose ``error()`` is set, such as
        partition EOF events, are skipped) or ``(value, partition, offset, ingested_at_us)``
        tuples. Returns the good rows and the dead letters, each in input order."""
        rows: list[dict] = []
        dead: list[DeadLetter] = []
        decode, clock = self.decode, self.clock_of_message
        add_row, add_dead = rows.append, dead.append
        for message in messages:
            if type(message) is tuple:
                value, partition, offset, ingested = message
            else:
                if message.error() is not None:
                    continue
                value, partition, offset, ingested = (message.value(), message.partition(), message.offset(),
                                                      clock(message))
            out = decode(value, partition=partition, offset=offset, ingested_at_us=ingested)
            if type(out) is dict:
                add_row(out)
            else:
                add_dead(out)
        return rows, dead

    # -- slow, authoritative path ---------------------------------------------------------------

    def _dead(self, reason: str, detail: str, value, partition: int, offset: int, ingested: int) -> DeadLetter:
        raw = b"" if value is None else value.encode("utf-8", "surrogatepass") if isinstance(value, str) \
            else bytes(value)
        return DeadLetter(reason, detail, self.name, partition, offset, raw, ingested)

    def _undecodable(self, value, partition: int, offset: int, ingested: int) -> DeadLetter:
        if value is None:
            detail = "value is null (a tombstone), not a JSON object"
        elif not isinstance(value, (bytes, bytearray, memoryview, str)):
            detail = f"value is a {type(value).__name__}, not bytes"
            value = repr(value)
        elif len(value) == 0:
            detail = "value is empty, not a JSON object"
        else:
            detail = None
            if not isinstance(value, str):
                try:
                    bytes(value).decode("utf-8")
                except UnicodeDecodeError as exc:
                    detail = f"value is not valid UTF-8: {exc.reason} at byte {exc.start}"
            if detail is None:
                try:
                    _loads(value)
                    detail = "value is not valid JSON"
                except Exception as exc:
                    detail = f"value is not valid JSON: {exc}"
        return self._dead("undecodable", detail, value, partition, offset, ingested)

    def _slow(self, obj: dict, value, partition: int, offset: int, ingested: int) -> dict | DeadLetter:
        problems: list[tuple[str, str]] = []
        required = self.key_columns + ([self.ts_field] if self.ts_field not in self.key_columns else [])
        for name in required:
            if obj.get(name) is None:
                what = "null" if name in obj else "absent"
                if name in self.key_columns:
                    problems.append(("missing_key", f"missing key {name} ({what})"))
                else:
                    problems.append(("missing_timestamp", f"missing timestamp {name} ({what})"))
        row: dict[str, Any] = {}
        for name, dtype in self.schema.items():
            item = obj.get(name)
            if item is None:
                row[name] = None
                continue
            converted, problem = check_value(dtype, item)
            if problem is not None:
                problems.append(("schema_mismatch", f"column {name}: {problem}"))
            row[name] = converted
        ts = row[self.ts_field]
        if ts is not None and not any(reason == "schema_mismatch" and detail.startswith(f"column {self.ts_field}:")
                                      for reason, detail in problems):
            ahead = ts - ingested
            if ahead > self.max_future:
                problems.append(("future_timestamp",
                                 f"ts {format_instant(ts)} is {format_duration(ahead)} ahead of ingested_at "
                                 f"{format_instant(ingested)} (max_future {format_duration(self.max_future)})"))
        if problems:
            reason = min((r for r, _ in problems), key=_PRIORITY.__getitem__)
            return self._dead(reason, "; ".join(d for _, d in problems), value, partition, offset, ingested)
        row["_ingested_at"] = ingested
        row["_partition"] = partition
        row["_offset"] = offset
        return row

    # -- fast path ----------------------------------------------------------------------------

    def _prefix_us(self, prefix: str) -> int | None:
        us = self._prefixes.get(prefix)
        if us is None:
            us = seconds_prefix_us(prefix)
            if us is not None:
                if len(self._prefixes) >= _PREFIX_CACHE_MAX:
                    self._prefixes.clear()
                self._prefixes[prefix] = us
        return us

    def _compile(self) -> Callable:
        """Generate ``fast(obj, ingested, partition, offset) -> row | None``: straight-line
        checks of every column; None sends the message to the slow path."""
        env: dict[str, Any] = {"prefix_us": self._prefix_us, "FLOAT32_MAX": FLOAT32_MAX,
                               "int": int, "float": float, "str": str, "bool": bool, "type": type, "abs": abs}
        lines = ["def fast(obj, ingested, partition, offset):", "    get = obj.get"]
        names = []
        for i, (name, dtype) in enumerate(self.schema.items()):
            v = f"v{i}"
            names.append((name, v))
            required = name in self.key_columns or name == self.ts_field
            lines.append(f"    {v} = get({name!r})")
            if required:
                lines.append(f"    if {v} is None: return None")
                pad = "    "
            else:
                lines.append(f"    if {v} is not None:")
                pad = "        "
            if dtype in INT_RANGES:
                low, high = INT_RANGES[dtype]
                lines.append(f"{pad}if type({v}) is not int or {v} < {low} or {v} > {high}: return None")
            elif dtype in ("float32", "float64"):
                limit = " or abs({v}) > FLOAT32_MAX".format(v=v) if dtype == "float32" else ""
                lines += [f"{pad}if type({v}) is int: {v} = float({v})",
                          f"{pad}elif type({v}) is not float: return None",
                          f"{pad}if {v} - {v} != 0{limit}: return None"]
            elif dtype == "bool":
                lines.append(f"{pad}if type({v}) is not bool: return None")
            elif dtype == "string":
                lines.append(f"{pad}if type({v}) is not str: return None")
            elif dtype == "timestamp":
                lines += [
                    f"{pad}if type({v}) is str:",
                    f"{pad}    if len({v}) != 27 or {v}[26] != 'Z' or {v}[19] != '.': return None",
                    f"{pad}    f = {v}[20:26]",
                    f"{pad}    if not (f.isascii() and f.isdigit()): return None",
                    f"{pad}    s = prefix_us({v}[:19])",
                    f"{pad}    if s is None: return None",
                    f"{pad}    {v} = s + int(f)",
                    f"{pad}elif type({v}) is not int or {v} < {MIN_US} or {v} > {MAX_US}: return None",
                ]
            else:  # pragma: no cover - DType is closed
                lines.append(f"{pad}return None")
        ts_var = dict(names)[self.ts_field]
        lines.append(f"    if {ts_var} - ingested > {self.max_future}: return None")
        items = ", ".join(f"{name!r}: {v}" for name, v in names)
        lines.append(f"    return {{{items}, '_ingested_at': ingested, '_partition': partition, '_offset': offset}}")
        code = "\n".join(lines)
        exec(compile(code, f"<parity decoder {self.name}>", "exec"), env)
        self._fast_source = code
        return env["fast"]

"""streaming/decode.py: raw Kafka values -> rows or dead letters with exact reasons."""

from __future__ import annotations

import base64
import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity.registry.event_schema import MAX_US, MIN_US, format_instant
from parity.registry.models import Source
from parity.streaming.decode import DeadLetter, SourceDecoder

T0 = 1_768_035_600_000_000  # 2026-01-10T09:00:00Z
T0_ISO = "2026-01-10T09:00:00.000000Z"
SCHEMA = {"event_id": "string", "user_id": "int64", "n32": "int32", "watch_ms": "int64", "completion": "float64",
          "f32": "float32", "liked": "bool", "seen_at": "timestamp", "ts": "timestamp"}


def make_source(schema=None, max_future="5m") -> Source:
    return Source.model_validate({"name": "video_events", "schema": schema or SCHEMA, "timestamp_field": "ts",
                                  "max_future": max_future})


DEC = SourceDecoder(make_source(), ["user_id"])


def decode(value, ingested=T0):
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    return DEC.decode(value, partition=3, offset=42, ingested_at_us=ingested)


def event(**changes):
    base = {"event_id": "e1", "user_id": 7, "ts": T0_ISO}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_valid_row_has_typed_values_and_ingest_metadata():
    row = decode(event(n32=5, watch_ms=1200, completion=1, f32=0.5, liked=True, seen_at="2026-01-10T10:00:00+01:00",
                       extra={"ignored": [1, 2]}))
    assert row == {"event_id": "e1", "user_id": 7, "n32": 5, "watch_ms": 1200, "completion": 1.0, "f32": 0.5,
                   "liked": True, "seen_at": T0, "ts": T0, "_ingested_at": T0, "_partition": 3, "_offset": 42}
    assert type(row["completion"]) is float


def test_optional_columns_may_be_absent_or_null():
    row = decode(event(watch_ms=None, liked=None))
    assert row["watch_ms"] is None and row["liked"] is None and row["completion"] is None


def test_integer_epoch_microseconds_are_accepted_as_timestamps():
    assert decode(event(ts=T0 - 1))["ts"] == T0 - 1


@pytest.mark.parametrize("ts, expected", [
    ("2026-01-10T09:00:00Z", T0),
    ("2026-01-10T09:00:00.5Z", T0 + 500_000),
    ("2026-01-10 09:00:00.123456Z", T0 + 123_456),
    ("2026-01-10T04:00:00-05:00", T0),
    ("2026-01-10T09:00:00.123456000Z", T0 + 123_456),
    ("2026-01-10T10:00:00.000001+0100", T0 + 1),
])
def test_iso_timestamp_forms(ts, expected):
    assert decode(event(ts=ts))["ts"] == expected


HOSTILE = [
    # (value, reason, detail)
    (b"hello", "undecodable", None),
    (b"[1, 2]", "undecodable", "value is a JSON array, not an object"),
    (b'"just a string"', "undecodable", "value is a JSON string, not an object"),
    (b"null", "undecodable", "value is a JSON null, not an object"),
    (b"42", "undecodable", "value is a JSON number, not an object"),
    (b'{"user_id": 7, "ts": "2026-01', "undecodable", None),
    (b"", "undecodable", "value is empty, not a JSON object"),
    (None, "undecodable", "value is null (a tombstone), not a JSON object"),
    (b'{"user_id": 7, "event_id": "\xff\xfe", "ts": "2026-01-10T09:00:00Z"}', "undecodable",
     "value is not valid UTF-8: invalid start byte at byte 28"),
    (b'{"user_id": 7, "ts": "2026-01-10T09:00:00Z", "completion": NaN}', "undecodable", None),
    (b'{"user_id": 7, "ts": "2026-01-10T09:00:00Z", "completion": 1e400}', "undecodable", None),
    (event(watch_ms="lots"), "schema_mismatch", "column watch_ms: expected int64, got string 'lots'"),
    (event(watch_ms=True), "schema_mismatch", "column watch_ms: expected int64, got bool true"),
    (event(watch_ms=1.5), "schema_mismatch", "column watch_ms: expected int64, got float 1.5"),
    (event(watch_ms=1.0), "schema_mismatch", "column watch_ms: expected int64, got float 1.0"),
    (event(watch_ms=2**63), "schema_mismatch",
     "column watch_ms: expected int64, got int 9223372036854775808 (out of range)"),
    (event(watch_ms=2**64), "schema_mismatch", "column watch_ms: expected int64, got float 1.8446744073709552e+19"),
    (event(n32=2**31), "schema_mismatch", "column n32: expected int32, got int 2147483648 (out of range)"),
    (event(n32=-(2**31) - 1), "schema_mismatch", "column n32: expected int32, got int -2147483649 (out of range)"),
    (event(completion="0.5"), "schema_mismatch", "column completion: expected float64, got string '0.5'"),
    (event(completion=False), "schema_mismatch", "column completion: expected float64, got bool false"),
    (event(f32=1e39), "schema_mismatch", "column f32: expected float32, got float 1e+39 (out of range)"),
    (event(liked=1), "schema_mismatch", "column liked: expected bool, got int 1"),
    (event(liked="true"), "schema_mismatch", "column liked: expected bool, got string 'true'"),
    (event(event_id=12), "schema_mismatch", "column event_id: expected string, got int 12"),
    (event(event_id={"a": 1}), "schema_mismatch", "column event_id: expected string, got object"),
    (event(watch_ms=[1]), "schema_mismatch", "column watch_ms: expected int64, got array"),
    (event(seen_at=True), "schema_mismatch", "column seen_at: expected timestamp, got bool true"),
    (event(seen_at=1.5), "schema_mismatch", "column seen_at: expected timestamp, got float 1.5"),
    (event(seen_at=MAX_US + 1), "schema_mismatch",
     "column seen_at: expected timestamp, got int 253402300800000000 (out of range for epoch microseconds)"),
    (event(user_id=...), "missing_key", "missing key user_id (absent)"),
    (event(user_id=None), "missing_key", "missing key user_id (null)"),
    (event(user_id="7"), "schema_mismatch", "column user_id: expected int64, got string '7'"),
    (event(ts=...), "missing_timestamp", "missing timestamp ts (absent)"),
    (event(ts=None), "missing_timestamp", "missing timestamp ts (null)"),
    (event(ts="2026-01-10T09:00:00"), "schema_mismatch",
     "column ts: expected timestamp, got string '2026-01-10T09:00:00' (no timezone: add 'Z' or an offset such as "
     "'+00:00')"),
    (event(ts="yesterday"), "schema_mismatch",
     "column ts: expected timestamp, got string 'yesterday' (not an ISO-8601 date-time)"),
    (event(ts="2026-02-30T09:00:00Z"), "schema_mismatch",
     "column ts: expected timestamp, got string '2026-02-30T09:00:00Z' (not a valid date-time)"),
    (event(ts="2026-01-10T09:00:00.1234567Z"), "schema_mismatch",
     "column ts: expected timestamp, got string '2026-01-10T09:00:00.1234567Z' (finer than microsecond precision)"),
    (event(ts="2026-01-10"), "schema_mismatch",
     "column ts: expected timestamp, got string '2026-01-10' (not an ISO-8601 date-time)"),
    (event(ts={"$date": 1}), "schema_mismatch", "column ts: expected timestamp, got object"),
    (event(ts=T0 + 300_000_001), "future_timestamp",
     "ts 2026-01-10T09:05:00.000001Z is 5m1us ahead of ingested_at 2026-01-10T09:00:00.000000Z (max_future 5m)"),
    (event(user_id=None, ts=None, watch_ms="x"), "missing_key",
     "missing key user_id (null); missing timestamp ts (null); column watch_ms: expected int64, got string 'x'"),
    (event(ts=None, watch_ms="x"), "missing_timestamp",
     "missing timestamp ts (null); column watch_ms: expected int64, got string 'x'"),
    (event(ts=T0 + 600_000_000, watch_ms="x"), "schema_mismatch",
     "column watch_ms: expected int64, got string 'x'; ts 2026-01-10T09:10:00.000000Z is 10m ahead of ingested_at "
     "2026-01-10T09:00:00.000000Z (max_future 5m)"),
]


@pytest.mark.parametrize("value, reason, detail", HOSTILE)
def test_hostile_inputs_become_dead_letters_with_exact_reasons(value, reason, detail):
    out = decode(value)
    assert isinstance(out, DeadLetter), out
    assert out.reason == reason
    if detail is None:
        assert out.detail.startswith("value is not valid JSON: "), out.detail
    else:
        assert out.detail == detail
    assert (out.source, out.partition, out.offset, out.ingested_at) == ("video_events", 3, 42, T0)
    raw = value if isinstance(value, bytes) else b"" if value is None else json.dumps(value).encode()
    assert out.raw == raw


def test_max_future_bound_is_inclusive():
    assert decode(event(ts=T0 + 300_000_000))["ts"] == T0 + 300_000_000
    assert decode(event(ts="2026-01-10T09:05:00.000000Z"))["ts"] == T0 + 300_000_000
    assert decode(event(ts="2026-01-10T09:05:00.000001Z")).reason == "future_timestamp"
    assert decode(event(ts=T0 - 10 * 86_400_000_000))["ts"] == T0 - 10 * 86_400_000_000  # late events are fine


def test_source_max_future_is_honoured():
    dec = SourceDecoder(make_source(max_future="1s"), ["user_id"])
    value = json.dumps(event(ts=T0 + 1_000_001)).encode()
    assert dec.decode(value, partition=0, offset=0, ingested_at_us=T0).reason == "future_timestamp"


def test_dead_letter_to_json_text_or_base64():
    text = decode(b"[1]").to_json()
    assert text == {"reason": "undecodable", "detail": "value is a JSON array, not an object", "source": "video_events",
                    "partition": 3, "offset": 42, "raw": "[1]", "raw_encoding": "utf-8",
                    "ingested_at": "2026-01-10T09:00:00.000000Z"}
    binary = decode(b"\xff\x00").to_json()
    assert binary["raw_encoding"] == "base64" and base64.b64decode(binary["raw"]) == b"\xff\x00"
    assert json.loads(decode(b"\xff").to_bytes())["reason"] == "undecodable"


class FakeMessage:
    def __init__(self, value, partition, offset, ms, error=None):
        self._v, self._p, self._o, self._ms, self._e = value, partition, offset, ms, error

    def value(self): return self._v
    def partition(self): return self._p
    def offset(self): return self._o
    def timestamp(self): return (1, self._ms)
    def error(self): return self._e


def test_decode_batch_of_tuples_and_kafka_messages():
    good, bad = json.dumps(event()).encode(), b"nope"
    rows, dead = DEC.decode_batch([(good, 0, 1, T0), (bad, 0, 2, T0)])
    assert [r["_offset"] for r in rows] == [1] and [d.offset for d in dead] == [2]
    rows, dead = DEC.decode_batch([FakeMessage(good, 1, 5, T0 // 1000), FakeMessage(None, 1, 6, 0, error="EOF"),
                                   FakeMessage(bad, 1, 7, T0 // 1000)])
    assert rows[0]["_ingested_at"] == T0 and rows[0]["_partition"] == 1 and [d.offset for d in dead] == [7]


def test_bad_configuration_is_refused():
    from parity.errors import ParityError

    with pytest.raises(ParityError):
        SourceDecoder(make_source(), ["nope"])


# -- properties ------------------------------------------------------------------------------

VALUES = {
    "int32": st.integers(-(2**31), 2**31 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "float32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "float64": st.floats(allow_nan=False, allow_infinity=False),
    "bool": st.booleans(),
    "string": st.text(),
    "timestamp": st.integers(MIN_US, MAX_US),
}
NAMES = st.text(st.characters(codec="utf-8", categories=("L", "N", "P")), min_size=1, max_size=8)


@st.composite
def schema_and_rows(draw):
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True).filter(lambda n: "ts" not in n))
    schema = {n: draw(st.sampled_from(sorted(VALUES))) for n in names}
    schema["ts"] = "timestamp"
    keys = [n for n in names if schema[n] in ("int32", "int64", "string", "bool") and draw(st.booleans())]
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row = {}
        for name, dtype in schema.items():
            required = name in keys or name == "ts"
            if required or draw(st.booleans()):
                row[name] = draw(VALUES[dtype])
            elif draw(st.booleans()):
                row[name] = None
        rows.append(row)
    return schema, keys, rows


@settings(max_examples=300, deadline=None)
@given(schema_and_rows(), st.booleans())
def test_valid_rows_round_trip_exactly(case, iso):
    schema, keys, rows = case
    dec = SourceDecoder(make_source(schema, max_future="5m"), keys)
    for i, row in enumerate(rows):
        wire = dict(row)
        if iso:  # timestamps as ISO-8601 text on the wire
            wire = {k: format_instant(v) if schema[k] == "timestamp" and v is not None else v for k, v in wire.items()}
        ingested = min(row["ts"] + 1, MAX_US)
        out = dec.decode(orjson.dumps(wire), partition=1, offset=i, ingested_at_us=ingested)
        assert isinstance(out, dict), out
        expected = {n: row.get(n) for n in schema}
        expected = {n: float(v) if v is not None and schema[n] in ("float32", "float64") else v
                    for n, v in expected.items()}
        assert {n: out[n] for n in schema} == expected
        assert (out["_ingested_at"], out["_partition"], out["_offset"]) == (ingested, 1, i)
        # the fast path agrees with the slow, authoritative one
        assert dec._slow(orjson.loads(orjson.dumps(wire)), b"", 1, i, ingested) == out


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=4))
                 .map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(sorted(SCHEMA)),
                                 st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                                 max_size=9).map(lambda v: json.dumps(v).encode())))
def test_arbitrary_bytes_never_raise(value):
    out = decode(value)
    assert isinstance(out, (dict, DeadLetter))
    if isinstance(out, DeadLetter):
        assert out.reason in ("undecodable", "schema_mismatch", "missing_key", "missing_timestamp",
                              "future_timestamp")
        assert out.raw == value and out.detail
        json.dumps(out.to_json())
    else:
        assert not math.isnan(out["completion"] or 0.0)

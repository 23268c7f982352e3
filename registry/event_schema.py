"""Checking one decoded event value against its Parity dtype (pure, stdlib only).

Used by the stream decoder (:mod:`parity.streaming.decode`) as its authoritative, slow
path; anything that validates JSON-like event values one at a time may reuse it.

Rules (strict, so a producer bug shows up as a dead letter, not as a silently changed value):

- ``int32`` / ``int64``: a JSON integer (not a bool, not a float such as ``1.5``, ``1.0``
  or ``1e3``) within the dtype's range;
- ``float32`` / ``float64``: a JSON number; integers are converted to float. It must be
  finite and, for float32, within float32's range (the value itself is kept as a Python
  float, not rounded to float32);
- ``bool``: ``true`` / ``false`` only (not 0/1, not "true");
- ``string``: a JSON string;
- ``timestamp``: an ISO-8601 date-time string with a timezone (``Z`` or ``±HH:MM``; a
  space may replace the ``T``; at most microsecond precision: extra fraction digits must be
  zeros), or an integer number of microseconds since the Unix epoch (UTC). Naive times are
  rejected (a stream has no "local" time to assume). The result is int microseconds (UTC).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone

INT_RANGES: dict[str, tuple[int, int]] = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
#: the instants a datetime can hold, in microseconds since the epoch
MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?",
    re.ASCII,
)
_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", re.ASCII)
_PREVIEW = 40


def describe(value) -> str:
    """``string 'lots'``, ``int 3``, ``float 1.5``, ``bool true``, ``object``, ``array``, ``null``."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "bool true" if value else "bool false"
    if isinstance(value, int):
        text = str(value)
        return "int " + (text if len(text) <= _PREVIEW else text[:_PREVIEW] + "...")
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return "string " + repr(value if len(value) <= _PREVIEW else value[:_PREVIEW] + "...")
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def format_instant(us: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` of microseconds since the epoch (for messages)."""
    try:
        t = _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return f"{us} us"
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}Z"


def seconds_prefix_us(prefix: str) -> int | None:
    """Microseconds since the epoch of ``YYYY-MM-DDTHH:MM:SS`` (UTC), None if it is not a
    valid date-time of exactly that form."""
    if len(prefix) != 19 or not _SECONDS.fullmatch(prefix):
        return None
    try:
        moment = datetime(int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]),
                          int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19]))
    except ValueError:
        return None
    return calendar.timegm(moment.timetuple()) * 1_000_000


class TimestampProblem(ValueError):
    """Why a string is not an acceptable timestamp (the text after ``got string '...'``)."""


def parse_iso_timestamp(text: str) -> int:
    """An ISO-8601 date-time with a timezone -> int microseconds since the epoch (UTC)."""
    match = _ISO.fullmatch(text)
    if match is None:
        raise TimestampProblem("not an ISO-8601 date-time")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu is None and sign is None:
        raise TimestampProblem("no timezone: add 'Z' or an offset such as '+00:00'")
    micros = 0
    if fraction:
        if len(fraction) > 6 and fraction[6:].strip("0"):
            raise TimestampProblem("finer than microsecond precision")
        micros = int(fraction[:6].ljust(6, "0"))
    try:
        offset = timedelta(0) if zulu else (1 if sign == "+" else -1) * timedelta(hours=int(off_h),
                                                                                   minutes=int(off_m))
        if sign and (int(off_h) > 23 or int(off_m) > 59):
            raise ValueError("offset")
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micros,
                          tzinfo=timezone(offset))
        delta = moment - _EPOCH
    except (ValueError, OverflowError):
        raise TimestampProblem("not a valid date-time") from None
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not MIN_US <= us <= MAX_US:
        raise TimestampProblem("out of range (years 1 to 9999 UTC)")
    return us


def check_value(dtype: str, value):
    """``(converted, None)`` when a non-null JSON value fits ``dtype``, else ``(None, problem)``
    with ``problem`` worded as ``expected int64, got string 'lots'``."""
    kind = type(value)
    if dtype in INT_RANGES:
        if kind is int:
            low, high = INT_RANGES[dtype]
            if low <= value <= high:
                return value, None
            return None, f"expected {dtype}, got {describe(value)} (out of range)"
        return None, f"expected {dtype}, got {describe(value)}"
    if dtype in ("float32", "float64"):
        if kind is int:
            try:
                value = float(value)
            except OverflowError:
                return None, f"expected {dtype}, got {describe(value)} (out of range)"
        elif kind is not float:
            return None, f"expected {dtype}, got {describe(value)}"
        if value - value != 0 or (dtype == "float32" and abs(value) > FLOAT32_MAX):
            return None, f"expected {dtype}, got {describe(value)} (out of range)"
        return value, None
    if dtype == "bool":
        if kind is bool:
            return value, None
        return None, f"expected bool, got {describe(value)}"
    if dtype == "string":
        if kind is str:
            return value, None
        return None, f"expected string, got {describe(value)}"
    if dtype == "timestamp":
        if kind is int:
            if MIN_US <= value <= MAX_US:
                return value, None
            return None, f"expected timestamp, got {describe(value)} (out of range for epoch microseconds)"
        if kind is str:
            try:
                return parse_iso_timestamp(value), None
            except TimestampProblem as problem:
                return None, f"expected timestamp, got {describe(value)} ({problem})"
        return None, f"expected timestamp, got {describe(value)}"
    return None, f"unknown dtype {dtype}"

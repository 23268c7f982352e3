"""Durations and instants, in integer microseconds.

All of Parity's time arithmetic is exact integer microseconds since the Unix epoch (UTC),
so floors and window bounds never suffer float rounding.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

US = 1
MS = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_UNITS = {"us": US, "ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
_PART = re.compile(r"(\d+)(us|ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:us|ms|s|m|h|d))+")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

LIFETIME = "lifetime"


class DurationSyntaxError(ValueError):
    """Raised by :func:`parse_duration`; callers wrap it into a located Problem."""


def parse_duration(text: str) -> int:
    """Parse ``"90m"``, ``"1h30m"``, ``"7d"``, ``"500ms"`` into microseconds (> 0)."""
    if not isinstance(text, str):
        raise DurationSyntaxError(f"expected a duration string such as '1h', got {text!r}")
    cleaned = text.strip().lower()
    if not _WHOLE.fullmatch(cleaned):
        raise DurationSyntaxError(
            f"bad duration {text!r}: use a number and a unit (us, ms, s, m, h, d), e.g. '10m', '1h30m', '7d'"
        )
    total = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    if total <= 0:
        raise DurationSyntaxError(f"bad duration {text!r}: must be greater than zero")
    return total


def format_duration(us: int) -> str:
    """Canonical text of a duration: the largest units first, ``5400000000`` -> ``"1h30m"``."""
    if us <= 0:
        raise ValueError("durations are positive")
    parts = []
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND), ("ms", MS), ("us", US)):
        n, us = divmod(us, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def canonical_duration(text: str) -> str:
    """Normalise a duration string (``"60m"`` -> ``"1h"``); ``lifetime`` stays ``lifetime``."""
    if isinstance(text, str) and text.strip().lower() == LIFETIME:
        return LIFETIME
    return format_duration(parse_duration(text))


def to_micros(value: datetime) -> int:
    """A datetime as microseconds since the epoch. Naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds


def from_micros(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def floor_to(us: int, step: int) -> int:
    """Floor an instant to a multiple of ``step`` since the epoch (Python ``//`` floors negatives too)."""
    return (us // step) * step

"""Column types of source schemas and feature values.

One small closed set, with one mapping per engine. Every engine maps from here; none
invents its own.
"""

from __future__ import annotations

from typing import Literal

DType = Literal["bool", "int32", "int64", "float32", "float64", "string", "timestamp"]

DTYPES: tuple[str, ...] = ("bool", "int32", "int64", "float32", "float64", "string", "timestamp")
INTEGER_TYPES = frozenset({"int32", "int64"})
FLOAT_TYPES = frozenset({"float32", "float64"})
NUMERIC_TYPES = INTEGER_TYPES | FLOAT_TYPES
# Types a join key may have: values that compare exactly and encode unambiguously.
KEY_TYPES = frozenset({"int32", "int64", "string", "bool"})

DUCKDB_TYPES: dict[str, str] = {
    "bool": "BOOLEAN",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",  # microsecond precision, UTC by convention
}

FLINK_TYPES: dict[str, str] = {
    "bool": "BOOLEAN",
    "int32": "INT",
    "int64": "BIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "string": "STRING",
    "timestamp": "TIMESTAMP(6)",
}


def is_numeric(dtype: str) -> bool:
    return dtype in NUMERIC_TYPES


def numeric_result(left: str, right: str) -> str:
    """Type of ``left (+|-|*) right`` for numeric operands: int64 unless a float is involved."""
    if left in FLOAT_TYPES or right in FLOAT_TYPES:
        return "float64"
    return "int64"


def sum_type(dtype: str) -> str:
    """Sums of integers are exact int64; sums of floats are float64 (DESIGN.md)."""
    return "int64" if dtype in INTEGER_TYPES else "float64"


def arrow_type(dtype: str, tz: str | None = None):
    """The Arrow type of a Parity dtype (``list<T>`` for last_k values).

    Timestamps are microseconds; ``tz="UTC"`` marks them as instants (serving, feature
    logs), without it they are naive UTC (the offline log's physical type). pyarrow is
    imported here, not at module import.
    """
    import pyarrow as pa

    if dtype.startswith("list<") and dtype.endswith(">"):
        return pa.list_(arrow_type(dtype[5:-1], tz))
    if dtype == "timestamp":
        return pa.timestamp("us", tz=tz)
    scalar = {"bool": pa.bool_(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
              "float64": pa.float64(), "string": pa.string(), "date": pa.date32()}
    if dtype not in scalar:
        from parity.errors import ParityError

        raise ParityError(f"unknown dtype {dtype!r}", hint="types: " + ", ".join(DTYPES))
    return scalar[dtype]

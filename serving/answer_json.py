"""The JSON body of a ``POST /v1/features`` answer, encoded column by column.

The body is the one ``orjson.dumps`` gives for::

    {"request_id": rid, "now": now, "rows": n,
     "features": {name: {"dtype": ..., "values": [...], "status": [...], "age_ms": [...],
                         "defaulted": [...]  # only for features with a default
                         }, ...}}

(``tests/test_http_api.py`` checks it byte for byte); an answer of more than :data:`SMALL`
rows is assembled from encoded columns instead of one nested structure. Every column is encoded once: the features of a view share
their entities' statuses and ages (one list object, :meth:`OnlineReader._answer`), so a
ranking answer of 36 features over 500 rows encodes 2 status and 2 age columns instead of
36 of each; and a column that repeats one entity's value on every row (the user of a
ranking request, :attr:`OnlineResult.repeated`) is encoded as that one value, repeated.
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from parity.registry.durations import from_micros

ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
SMALL = 16  # answers of at most this many rows are encoded in one call (fewer calls than columns)


def _iso(value: Any) -> Any:
    return from_micros(value) if type(value) is int else value


def json_column(values: list, dtype: str) -> list:
    """Timestamp values (datetimes, or µs ints inside lists) as datetimes orjson renders ISO."""
    if dtype == "timestamp":
        return [_iso(v) for v in values]
    if dtype == "list<timestamp>":
        return [None if v is None else [_iso(x) for x in v] for v in values]
    return values


class _Columns:
    """Encodes lists, each list object once (the object is kept, so its id stays unique)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.done: dict[int, tuple[list, bytes]] = {}

    def encode(self, column: list, repeated: bool = False, dtype: str | None = None) -> bytes:
        found = self.done.get(id(column))
        if found is None:
            items = json_column(column, dtype) if dtype is not None else column
            if repeated and self.rows > 1:
                one = orjson.dumps(items[:1], option=ORJSON_OPTIONS)[1:-1]
                text = b"[" + b",".join([one] * self.rows) + b"]"
            else:
                text = orjson.dumps(items, option=ORJSON_OPTIONS)
            found = self.done[id(column)] = (column, text)
        return found[1]


def features_json(request_id: str, result: Any, resolved: Sequence[Any]) -> bytes:
    """The answer's body for ``result`` (an ``OnlineResult``) of the ``resolved`` features
    (in the order of ``result.names``, which are their output names)."""
    if result.rows <= SMALL:
        return orjson.dumps(_nested(request_id, result, resolved), option=ORJSON_OPTIONS)
    columns = _Columns(result.rows)
    repeated = result.repeated
    out = [b'{"request_id":', orjson.dumps(request_id), b',"now":',
           orjson.dumps(from_micros(result.now_us), option=ORJSON_OPTIONS), b',"rows":%d,"features":{' % result.rows]
    for n, (name, item) in enumerate(zip(result.names, resolved)):
        dtype = result.dtypes[name]
        again = name in repeated
        out += [b"," if n else b"", orjson.dumps(name), b':{"dtype":', orjson.dumps(dtype),
                b',"values":', columns.encode(result.values[name], again, dtype),
                b',"status":', columns.encode(result.status[name], again),
                b',"age_ms":', columns.encode(result.age_ms[name], again)]
        if item.feature.default is not None:
            out += [b',"defaulted":', columns.encode(result.defaulted[name], again)]
        out.append(b"}")
    out.append(b"}}")
    return b"".join(out)


def _nested(request_id: str, result: Any, resolved: Sequence[Any]) -> dict:
    """The answer as one nested structure (what :func:`features_json` encodes column by column)."""
    features = {}
    for name, item in zip(result.names, resolved):
        dtype = result.dtypes[name]
        column = {"dtype": dtype, "values": json_column(result.values[name], dtype), "status": result.status[name],
                  "age_ms": result.age_ms[name]}
        if item.feature.default is not None:
            column["defaulted"] = result.defaulted[name]
        features[name] = column
    return {"request_id": request_id, "now": from_micros(result.now_us), "rows": result.rows, "features": features}

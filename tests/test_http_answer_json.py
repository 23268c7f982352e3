"""The answer body encoded column by column equals the nested structure's orjson encoding."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from parity.serving.answer_json import ORJSON_OPTIONS, SMALL, _nested, features_json
from parity.serving.lookup import OnlineResult


def _item(name: str, default=None):
    return SimpleNamespace(output_name=name, feature=SimpleNamespace(default=default))


@pytest.mark.parametrize("rows", [1, SMALL, SMALL + 1, 500])
def test_columns_encode_as_the_nested_answer(rows):
    result = OnlineResult(now_us=1_764_000_000_123_456, rows=rows)
    status = ["ok" if r % 3 else "missing" for r in range(rows)]
    ages = [None if r % 3 == 0 else r * 1000.25 for r in range(rows)]
    user_status, user_age = ["stale"] * rows, [12.5] * rows
    columns = {
        "v__plays": ("int64", [r for r in range(rows)], status, ages, None),
        "v__watch_mean": ("float64", [None if r % 3 == 0 else r / 7 for r in range(rows)], status, ages, None),
        "v__seen_at": ("timestamp", [None if r % 2 else 1_764_000_000_000_000 + r for r in range(rows)], status,
                       ages, None),
        "v__recent": ("list<timestamp>", [[1_764_000_000_000_001, 1_764_000_000_000_002] if r % 2 else None
                                          for r in range(rows)], status, ages, None),
        "v__flag": ("bool", [r % 2 == 0 for r in range(rows)], status, ages, [r % 3 == 0 for r in range(rows)]),
        "u__plays_1h": ("int64", [7] * rows, user_status, user_age, None),
        "u__mean_1h": ("float64", [0.1 + 0.2] * rows, user_status, user_age, None),
        "u__country": ("string", ["é\"x"] * rows, user_status, user_age, [False] * rows),
    }
    resolved = []
    for name, (dtype, values, st, age, defaulted) in columns.items():
        result.names.append(name)
        result.dtypes[name], result.values[name], result.status[name], result.age_ms[name] = dtype, values, st, age
        result.defaulted[name] = defaulted if defaulted is not None else [False] * rows
        if name.startswith("u__"):
            result.repeated.add(name)
        resolved.append(_item(name, default=False if defaulted is not None else None))
    body = features_json("req-1", result, resolved)
    assert body == orjson.dumps(_nested("req-1", result, resolved), option=ORJSON_OPTIONS)
    decoded = orjson.loads(body)
    assert decoded["rows"] == rows and decoded["now"] == "2025-11-24T16:00:00.123456Z"
    assert decoded["features"]["u__country"]["values"] == ["é\"x"] * rows
    assert "defaulted" in decoded["features"]["v__flag"] and "defaulted" not in decoded["features"]["v__plays"]

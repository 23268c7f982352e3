"""The vector evaluator equals the Python evaluator, value for value, on random
well-typed expressions over random rows (NULLs one time in three), and on a fixed battery
of corner cases."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from parity.registry.expr import compile_python, infer_type, parse, to_text
from parity.registry.expr import ast as ast_mod
from parity.registry.expr import vector_eval
from parity.registry.expr.vector_eval import VectorUnsupported, column_vec, compile_vector, passes, to_python

from expr_strategies import DIFF_COLUMNS, DIFF_SCHEMA, any_expr, rows_strategy, same_value
from test_expressions import BATTERY, BATTERY_VALUES


def vector_values(expr, rows: list[dict[str, Any]]) -> list:
    batch = {c: column_vec([r[c] for r in rows], DIFF_SCHEMA[c]) for c in DIFF_COLUMNS}
    out = compile_vector(expr, DIFF_SCHEMA)(batch, len(rows))
    assert len(out.values) == len(rows) and len(out.null) == len(rows)
    return to_python(out, infer_type(expr, DIFF_SCHEMA)), out


def check(expr, rows) -> None:
    evaluate = compile_python(expr, DIFF_SCHEMA)
    expected = [evaluate(row) for row in rows]
    try:
        got, vec = vector_values(expr, rows)
    except VectorUnsupported:  # int64 overflow: the caller evaluates such a batch row by row
        # only the big int64 values of the rows can get near the int64 limits
        assert any(abs(r["i"] or 0) > 2**30 for r in rows), f"{to_text(expr)} refused on small values"
        return
    for row, py, vv in zip(rows, expected, got):
        assert same_value(py, vv), f"{to_text(expr)} on {row}: python={py!r} vector={vv!r}"
    if infer_type(expr, DIFF_SCHEMA) == "bool":
        assert passes(vec).tolist() == [py is True for py in expected]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=any_expr, rows=rows_strategy)
def test_vector_evaluator_matches_python(expr, rows) -> None:
    check(expr, rows)


@pytest.mark.parametrize("text", BATTERY)
def test_battery_matches_python(text: str) -> None:
    rows = [dict(zip(DIFF_COLUMNS, combo)) for combo in itertools.product(*(BATTERY_VALUES[c] for c in DIFF_COLUMNS))]
    rows = [{**r, "g": None if r["g"] is None else float(np.float32(r["g"]))} for r in rows]
    check(parse(text), rows)


def test_overflow_is_refused_not_wrapped() -> None:
    rows = [{c: None for c in DIFF_COLUMNS} | {"i": 2**62}]
    for text in ("i * 4", "i + i + i", "-(i * 2) - i"):
        with pytest.raises(VectorUnsupported):
            vector_values(parse(text), rows)
    assert vector_values(parse("i * 1"), rows)[0] == [2**62]


def test_empty_batch() -> None:
    got, vec = vector_values(parse("s = 'a' AND i > 1"), [])
    assert got == [] and passes(vec).tolist() == []


def test_every_construct_has_a_vector_entry() -> None:
    assert set(vector_eval.NODE_COMPILERS) == set(ast_mod.NODE_TYPES)
    assert set(vector_eval.FUNCTIONS) == set(ast_mod.FUNCTIONS)

"""Vector evaluator: compiles an AST once into a function over whole columns (numpy).

The same semantics as :mod:`parity.registry.expr.python_eval`, one batch at a time: a
stream engine evaluates a micro-batch's derived columns and ``where`` filters with a few
array operations instead of a closure call per row and node. A differential test holds it
equal to the Python evaluator on random well-typed expressions and rows.

A column is a :class:`Vec`: ``values`` (a numpy array) and ``null`` (a bool array, True
where the value is NULL; the value there is meaningless). The array kind follows the
expression's static type (:func:`parity.registry.expr.typecheck.annotate`):

| dtype | values |
|---|---|
| int32, int64, timestamp (µs) | int64 |
| float32, float64 | float64 |
| bool | bool |
| string | object (Python ``str``) |
| null (a bare NULL) | all NULL |

Integer arithmetic that would leave the int64 range raises :class:`VectorUnsupported`
(the Python evaluator would produce a big integer, DuckDB an error): callers fall back to
the row evaluator for that batch. No text is evaluated (no ``eval``/``exec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from parity.errors import ParityError
from parity.registry.expr.ast import Binary, Call, Case, Column, Expr, InList, IsNull, Literal, Unary, check_node
from parity.registry.types import FLOAT_TYPES

# |result| at or beyond this (computed in float64, whose error near 2**63 is far below the
# margin) may not fit int64: such a batch is evaluated row by row.
_INT_LIMIT = float(2**63 - 2**24)


class VectorUnsupported(ParityError):
    """This batch cannot be evaluated by the vector evaluator (e.g. an int64 overflow):
    evaluate it row by row instead."""


@dataclass
class Vec:
    values: np.ndarray
    null: np.ndarray


Batch = Mapping[str, Vec]
VecFn = Callable[[Batch, int], Vec]


def kind_of(dtype: str) -> str:
    """The array kind of a dtype: ``int``, ``float``, ``bool``, ``str`` or ``null``."""
    if dtype in FLOAT_TYPES:
        return "float"
    if dtype in ("int32", "int64", "timestamp"):
        return "int"
    return {"bool": "bool", "string": "str"}.get(dtype, "null")


_NUMPY = {"int": np.int64, "float": np.float64, "bool": np.bool_, "str": object, "null": np.float64}


def empty_values(kind: str, n: int) -> np.ndarray:
    if kind == "str":
        return np.full(n, "", dtype=object)
    return np.zeros(n, dtype=_NUMPY[kind])


def as_kind(vec: Vec, kind: str) -> Vec:
    """``vec`` with values of ``kind`` (ints to floats; a NULL vector to any kind)."""
    values = vec.values
    if kind == "str":
        if values.dtype != object:
            values = empty_values("str", len(values))
        return Vec(values, vec.null)
    want = _NUMPY[kind]
    if values.dtype != want:
        if values.dtype == object:  # a NULL vector
            values = empty_values(kind, len(values))
        else:
            values = values.astype(want)
    return Vec(values, vec.null)


def column_vec(values: list, dtype: str) -> Vec:
    """A :class:`Vec` from Python values (``None`` for NULL), e.g. one column of decoded rows."""
    kind = kind_of(dtype)
    n = len(values)
    null = np.fromiter((v is None for v in values), dtype=bool, count=n)
    if kind == "str":
        out = np.array(values, dtype=object) if n else np.empty(0, dtype=object)
        if null.any():
            out[null] = ""
        return Vec(out, null)
    if kind == "null":
        return Vec(np.zeros(n), np.ones(n, dtype=bool))
    zero = False if kind == "bool" else 0
    if null.any():
        values = [zero if v is None else v for v in values]
    return Vec(np.array(values, dtype=_NUMPY[kind]) if n else np.zeros(0, dtype=_NUMPY[kind]), null)


# -- node compilers ----------------------------------------------------------------------------

def _true(vec: Vec) -> np.ndarray:
    """Where the value is TRUE (not NULL)."""
    return vec.values.astype(bool) & ~vec.null


def _check_range(result: np.ndarray, approx: np.ndarray) -> np.ndarray:
    if approx.size and np.abs(approx).max() >= _INT_LIMIT:
        raise VectorUnsupported("int64 overflow in an expression")
    return result


def _arith(op: str, a: Vec, b: Vec, kind: str) -> Vec:
    null = a.null | b.null
    if kind == "null":
        return Vec(np.zeros(len(null)), np.ones(len(null), dtype=bool))
    x, y = as_kind(a, kind).values, as_kind(b, kind).values
    if kind == "int":
        x = np.where(null, 0, x)
        y = np.where(null, 0, y)
        fx, fy = x.astype(np.float64), y.astype(np.float64)
        if op == "+":
            return Vec(_check_range(x + y, fx + fy), null)
        if op == "-":
            return Vec(_check_range(x - y, fx - fy), null)
        return Vec(_check_range(x * y, fx * fy), null)
    with np.errstate(all="ignore"):
        if op == "+":
            return Vec(x + y, null)
        if op == "-":
            return Vec(x - y, null)
        return Vec(x * y, null)


def _divide(a: Vec, b: Vec) -> Vec:
    x, y = as_kind(a, "float").values, as_kind(b, "float").values
    null = a.null | b.null | (y == 0.0)
    with np.errstate(all="ignore"):
        return Vec(np.where(null, 0.0, x) / np.where(null, 1.0, y), null)


_COMPARE = {"=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
            ">": np.greater, ">=": np.greater_equal}


def _common_kind(a: Vec, b: Vec) -> str:
    kinds = {_vec_kind(a), _vec_kind(b)} - {"null"}
    if "float" in kinds and kinds <= {"int", "float"}:
        return "float"
    return next(iter(kinds)) if kinds else "null"


def _vec_kind(vec: Vec) -> str:
    dtype = vec.values.dtype
    if dtype == object:
        return "str"
    if dtype == np.bool_:
        return "bool"
    if np.issubdtype(dtype, np.integer):
        return "int"
    return "float" if not vec.null.all() or len(vec.null) == 0 else "null"


def _compare(op: str, a: Vec, b: Vec) -> Vec:
    null = a.null | b.null
    kind = _common_kind(a, b)
    if kind == "null":
        return Vec(np.zeros(len(null), dtype=bool), np.ones(len(null), dtype=bool))
    x, y = as_kind(a, kind).values, as_kind(b, kind).values
    if kind == "str":
        x = np.where(null, "", x)
        y = np.where(null, "", y)
    values = np.asarray(_COMPARE[op](x, y), dtype=bool)
    return Vec(values & ~null, null)


def _and(a: Vec, b: Vec) -> Vec:
    false = (~a.values.astype(bool) & ~a.null) | (~b.values.astype(bool) & ~b.null)
    null = (a.null | b.null) & ~false
    return Vec(~false & ~null, null)


def _or(a: Vec, b: Vec) -> Vec:
    true = _true(a) | _true(b)
    null = (a.null | b.null) & ~true
    return Vec(true, null)


def _compile_column(node: Column, types, compile_) -> VecFn:
    name, kind = node.name, kind_of(types[node])

    def column(batch: Batch, n: int) -> Vec:
        vec = batch.get(name)
        if vec is None:
            return Vec(empty_values(kind, n), np.ones(n, dtype=bool))
        return as_kind(vec, kind)
    return column


def _compile_literal(node: Literal, types, compile_) -> VecFn:
    value, kind = node.value, kind_of(node.dtype)

    def literal(batch: Batch, n: int) -> Vec:
        if value is None:
            return Vec(empty_values("null", n), np.ones(n, dtype=bool))
        if kind == "str":
            return Vec(np.full(n, value, dtype=object), np.zeros(n, dtype=bool))
        return Vec(np.full(n, value, dtype=_NUMPY[kind]), np.zeros(n, dtype=bool))
    return literal


def _compile_unary(node: Unary, types, compile_) -> VecFn:
    operand = compile_(node.operand)
    if node.op == "NOT":
        def negate(batch: Batch, n: int) -> Vec:
            vec = operand(batch, n)
            return Vec(~vec.values.astype(bool) & ~vec.null, vec.null)
        return negate
    kind = kind_of(types[node])

    def minus(batch: Batch, n: int) -> Vec:
        vec = as_kind(operand(batch, n), kind)
        if kind == "int" and vec.values.size and (vec.values == np.iinfo(np.int64).min).any():
            raise VectorUnsupported("int64 overflow in an expression")
        return Vec(-vec.values, vec.null)
    return minus


def _compile_binary(node: Binary, types, compile_) -> VecFn:
    left, right, op = compile_(node.left), compile_(node.right), node.op
    if op in ("AND", "OR"):
        combine = _and if op == "AND" else _or
        return lambda batch, n: combine(left(batch, n), right(batch, n))
    if op in _COMPARE:
        return lambda batch, n: _compare(op, left(batch, n), right(batch, n))
    if op == "/":
        return lambda batch, n: _divide(left(batch, n), right(batch, n))
    kind = kind_of(types[node])
    return lambda batch, n: _arith(op, left(batch, n), right(batch, n), kind)


def _compile_inlist(node: InList, types, compile_) -> VecFn:
    operand = compile_(node.operand)
    items = [Literal(i.value, i.dtype) for i in node.items if i.value is not None]
    has_null = any(item.value is None for item in node.items)
    found_result = not node.negated

    def evaluate(batch: Batch, n: int) -> Vec:
        vec = operand(batch, n)
        found = np.zeros(n, dtype=bool)
        for item in items:
            lit = _compile_literal(item, None, None)(batch, n)
            found |= _compare("=", vec, lit).values
        null = vec.null | (~found & has_null)
        values = np.where(found, found_result, not found_result)
        return Vec(values & ~null, null)
    return evaluate


def _compile_isnull(node: IsNull, types, compile_) -> VecFn:
    operand = compile_(node.operand)
    negated = node.negated

    def evaluate(batch: Batch, n: int) -> Vec:
        null = operand(batch, n).null
        return Vec(~null if negated else null.copy(), np.zeros(n, dtype=bool))
    return evaluate


def _compile_case(node: Case, types, compile_) -> VecFn:
    whens = [(compile_(cond), compile_(value)) for cond, value in node.whens]
    else_ = compile_(node.else_) if node.else_ is not None else None
    kind = kind_of(types[node])

    def evaluate(batch: Batch, n: int) -> Vec:
        values = empty_values(kind, n)
        null = np.ones(n, dtype=bool)
        open_ = np.ones(n, dtype=bool)  # rows no WHEN has taken yet
        for cond, value in whens:
            take = _true(cond(batch, n)) & open_
            if take.any():
                got = as_kind(value(batch, n), kind)
                values[take] = got.values[take]
                null[take] = got.null[take]
            open_ &= ~take
        if else_ is not None and open_.any():
            got = as_kind(else_(batch, n), kind)
            values[open_] = got.values[open_]
            null[open_] = got.null[open_]
        return Vec(values, null)
    return evaluate


def _strings(fn: Callable[[str], Any], out_kind: str) -> Callable[[list[Vec], int, str], Vec]:
    def apply(args: list[Vec], n: int, kind: str) -> Vec:
        vec = args[0]
        if _vec_kind(vec) != "str":
            return Vec(empty_values(out_kind, n), np.ones(n, dtype=bool))
        values = np.array([fn(v) for v in vec.values], dtype=_NUMPY[out_kind]) if n else empty_values(out_kind, 0)
        if vec.null.any():
            values[vec.null] = "" if out_kind == "str" else 0
        return Vec(values, vec.null)
    return apply


def _abs(args: list[Vec], n: int, kind: str) -> Vec:
    vec = as_kind(args[0], kind)
    if kind == "int" and vec.values.size and (vec.values == np.iinfo(np.int64).min).any():
        raise VectorUnsupported("int64 overflow in an expression")
    return Vec(np.abs(vec.values), vec.null)


def _coalesce(args: list[Vec], n: int, kind: str) -> Vec:
    values = empty_values(kind, n)
    null = np.ones(n, dtype=bool)
    for arg in args:
        take = null & ~arg.null
        if take.any():
            values[take] = as_kind(arg, kind).values[take]
            null &= ~take
    return Vec(values, null)


def _extreme(pick_min: bool) -> Callable[[list[Vec], int, str], Vec]:
    def apply(args: list[Vec], n: int, kind: str) -> Vec:
        values = empty_values(kind, n)
        null = np.ones(n, dtype=bool)
        for arg in args:
            got = as_kind(arg, kind)
            present = ~got.null
            first = present & null
            values[first] = got.values[first]
            both = present & ~null
            if both.any():
                if kind == "str":
                    idx = np.flatnonzero(both)
                    chosen = [min(values[i], got.values[i]) if pick_min else max(values[i], got.values[i])
                              for i in idx]
                    values[idx] = np.array(chosen, dtype=object)
                else:
                    op = np.minimum if pick_min else np.maximum
                    values[both] = op(values[both], got.values[both])
            null &= ~present
        return Vec(values, null)
    return apply


FUNCTIONS: dict[str, Callable[[list[Vec], int, str], Vec]] = {
    "lower": _strings(str.lower, "str"),
    "upper": _strings(str.upper, "str"),
    "length": _strings(len, "int"),
    "abs": _abs,
    "coalesce": _coalesce,
    "least": _extreme(True),
    "greatest": _extreme(False),
}


def _compile_call(node: Call, types, compile_) -> VecFn:
    fn, args, kind = FUNCTIONS[node.func], [compile_(a) for a in node.args], kind_of(types[node])
    if node.func in ("lower", "upper", "length") and types[node] != "null":
        kind = "int" if node.func == "length" else "str"
    return lambda batch, n: fn([a(batch, n) for a in args], n, kind)


NODE_COMPILERS: dict[type, Callable[[Any, Mapping, Callable[[Expr], VecFn]], VecFn]] = {
    Column: _compile_column,
    Literal: _compile_literal,
    Unary: _compile_unary,
    Binary: _compile_binary,
    InList: _compile_inlist,
    IsNull: _compile_isnull,
    Case: _compile_case,
    Call: _compile_call,
}


def compile_vector(expr: Expr, schema: Mapping[str, str]) -> VecFn:
    """Compile ``expr`` (type-checked against ``schema``) into ``f(batch, n) -> Vec``:
    ``batch`` maps column names to :class:`Vec` of length ``n`` (a missing column reads as
    NULL). A filter keeps the rows where ``values & ~null``."""
    from parity.registry.expr.typecheck import annotate

    types = annotate(expr, schema)

    def compile_(node: Expr) -> VecFn:
        check_node(node)
        return NODE_COMPILERS[type(node)](node, types, compile_)

    return compile_(expr)


def passes(vec: Vec) -> np.ndarray:
    """Where a filter keeps the row: the value is TRUE."""
    return _true(vec)


def to_python(vec: Vec, dtype: str) -> list:
    """The values as Python objects (``None`` for NULL), as the Python evaluator gives them."""
    kind = kind_of(dtype)
    if kind == "null":
        return [None] * len(vec.null)
    values = as_kind(vec, kind).values.tolist()
    return [None if n else v for v, n in zip(values, vec.null.tolist())]

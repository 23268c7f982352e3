"""Python evaluator: compiles an AST once into closures over a row mapping.

No text is evaluated (no ``eval``/``exec``). Semantics are SQL's, matched to DuckDB:

* NULL (``None``) propagates through arithmetic, comparisons and functions.
* AND/OR follow Kleene three-valued logic; ``NOT NULL`` is NULL.
* ``x [NOT] IN (...)``: NULL when x is NULL, or when x is not found and the list holds NULL.
* ``CASE WHEN``: a NULL condition counts as false.
* ``/`` is float64 division; division by zero (or -0.0) is NULL.
* int with float (arithmetic, comparison, IN, least/greatest) is computed in float64.
* ``coalesce``: first non-NULL argument. ``least``/``greatest`` ignore NULLs and are NULL
  only when every argument is NULL (DuckDB / PostgreSQL behaviour).

A missing key in the row reads as NULL. A filter passes only when the result ``is True``.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Mapping

from parity.registry.expr.ast import (
    Binary, Call, Case, Column, Expr, InList, IsNull, Literal, Unary, check_node,
)
from parity.registry.types import FLOAT_TYPES

Row = Mapping[str, Any]
Evaluator = Callable[[Row], Any]


def _is_float_pair(a: Any, b: Any) -> bool:
    return type(a) is float or type(b) is float


def _null_safe(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        return fn(a, b)
    return apply


def _comparison(fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    def compare(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if _is_float_pair(a, b):
            return fn(float(a), float(b))
        return fn(a, b)
    return compare


def _divide(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    divisor = float(b)
    if divisor == 0.0:
        return None
    return float(a) / divisor


def _and(a: Any, b: Any) -> Any:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _or(a: Any, b: Any) -> Any:
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


BINARY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": _null_safe(operator.add),
    "-": _null_safe(operator.sub),
    "*": _null_safe(operator.mul),
    "/": _divide,
    "=": _comparison(operator.eq),
    "!=": _comparison(operator.ne),
    "<": _comparison(operator.lt),
    "<=": _comparison(operator.le),
    ">": _comparison(operator.gt),
    ">=": _comparison(operator.ge),
    "AND": _and,
    "OR": _or,
}

UNARY_OPS: dict[str, Callable[[Any], Any]] = {
    "NOT": lambda v: None if v is None else not v,
    "NEG": lambda v: None if v is None else -v,
}


def _unary_fn(fn: Callable[[Any], Any]) -> Callable[[list[Any]], Any]:
    return lambda args: None if args[0] is None else fn(args[0])


def _coalesce(args: list[Any]) -> Any:
    return next((v for v in args if v is not None), None)


def _extreme(pick: Callable[..., Any]) -> Callable[[list[Any]], Any]:
    def apply(args: list[Any]) -> Any:
        values = [v for v in args if v is not None]
        if not values:
            return None
        if any(type(v) is float for v in values):
            values = [float(v) for v in values]
        return pick(values)
    return apply


FUNCTIONS: dict[str, Callable[[list[Any]], Any]] = {
    "lower": _unary_fn(str.lower),
    "upper": _unary_fn(str.upper),
    "length": _unary_fn(len),
    "abs": _unary_fn(abs),
    "coalesce": _coalesce,
    "least": _extreme(min),
    "greatest": _extreme(max),
}


def _equal(a: Any, b: Any) -> bool:
    return float(a) == float(b) if _is_float_pair(a, b) else bool(a == b)


def _compile_column(node: Column, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    name = node.name
    return lambda row: row.get(name)


def _compile_literal(node: Literal, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    value = node.value
    return lambda row: value


def _compile_unary(node: Unary, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    fn, operand = UNARY_OPS[node.op], compile_(node.operand)
    return lambda row: fn(operand(row))


def _compile_binary(node: Binary, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    fn, left, right = BINARY_OPS[node.op], compile_(node.left), compile_(node.right)
    if node.op in ("AND", "OR"):
        decisive = node.op == "OR"  # False decides AND, True decides OR

        def short_circuit(row: Row) -> Any:
            value = left(row)
            return value if value is decisive else fn(value, right(row))
        return short_circuit
    return lambda row: fn(left(row), right(row))


def _compile_inlist(node: InList, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    operand = compile_(node.operand)
    values = tuple(item.value for item in node.items if item.value is not None)
    has_null = any(item.value is None for item in node.items)
    found_result, missing_result = (False, True) if node.negated else (True, False)

    def evaluate(row: Row) -> Any:
        value = operand(row)
        if value is None:
            return None
        if any(_equal(value, item) for item in values):
            return found_result
        return None if has_null else missing_result
    return evaluate


def _compile_isnull(node: IsNull, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    operand = compile_(node.operand)
    if node.negated:
        return lambda row: operand(row) is not None
    return lambda row: operand(row) is None


def _compile_case(node: Case, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    whens = tuple((compile_(cond), compile_(value)) for cond, value in node.whens)
    else_ = compile_(node.else_) if node.else_ is not None else None

    def evaluate(row: Row) -> Any:
        for cond, value in whens:
            if cond(row) is True:
                return value(row)
        return else_(row) if else_ is not None else None
    return evaluate


def _compile_call(node: Call, compile_: Callable[[Expr], Evaluator]) -> Evaluator:
    fn, args = FUNCTIONS[node.func], tuple(compile_(a) for a in node.args)
    return lambda row: fn([a(row) for a in args])


NODE_COMPILERS: dict[type, Callable[[Any, Callable[[Expr], Evaluator]], Evaluator]] = {
    Column: _compile_column,
    Literal: _compile_literal,
    Unary: _compile_unary,
    Binary: _compile_binary,
    InList: _compile_inlist,
    IsNull: _compile_isnull,
    Case: _compile_case,
    Call: _compile_call,
}


def _as_float(evaluate: Evaluator) -> Evaluator:
    def convert(row: Row) -> Any:
        value = evaluate(row)
        return None if value is None else float(value)
    return convert


def compile_python(expr: Expr, schema: Mapping[str, str] | None = None) -> Evaluator:
    """Compile ``expr`` into ``f(row) -> value``.

    With ``schema`` the expression is type-checked first and every float-typed CASE,
    function result and column yields a Python ``float`` (as DuckDB's DOUBLE would), so
    ``CASE WHEN c THEN 1 ELSE 0.5 END`` gives ``1.0``, not ``1``.
    """
    types: dict[Expr, str] = {}
    if schema is not None:
        from parity.registry.expr.typecheck import annotate

        types = annotate(expr, schema)

    def compile_(node: Expr) -> Evaluator:
        check_node(node)
        evaluate = NODE_COMPILERS[type(node)](node, compile_)
        if types.get(node) in FLOAT_TYPES and isinstance(node, (Case, Call, Column)):
            evaluate = _as_float(evaluate)
        return evaluate

    return compile_(expr)

"""Type checking of expressions against a source schema (column name -> dtype).

Types are the dtypes of :mod:`parity.registry.types` plus ``"null"`` (the type of a bare
NULL, which unifies with anything). Arithmetic and numeric unification always produce
``int64`` or ``float64``; a bare column keeps its own dtype.
"""

from __future__ import annotations

import difflib
from typing import Mapping

from parity.errors import ExpressionError
from parity.registry.expr.ast import (
    ARITHMETIC_OPS, COMPARISON_OPS, Binary, Call, Case, Column, Expr, InList, IsNull,
    Literal, Unary, check_node, to_text,
)
from parity.registry.types import DTYPES, FLOAT_TYPES, NUMERIC_TYPES

NULL = "null"
_COMPARE_FIX = ("compare numbers with numbers, strings with strings, bools with bools, "
                "timestamps with timestamps")
_NUMERIC_FIX = "arithmetic works on int32, int64, float32 and float64 values only"
_BOOL_FIX = "write a condition, e.g. watch_ms > 1000 or is_live = TRUE"


def _err(message: str, expr: Expr, fix: str | None = None) -> ExpressionError:
    return ExpressionError(message, fragment=to_text(expr), fix=fix)


def _numeric(dtype: str) -> bool:
    return dtype in NUMERIC_TYPES


def _widen(dtype: str) -> str:
    """int32/int64 -> int64, float32/float64 -> float64."""
    return "float64" if dtype in FLOAT_TYPES else "int64"


def comparable(left: str, right: str) -> bool:
    """May values of these types be compared (=, <, IN, least, ...)?"""
    if NULL in (left, right):
        return True
    if _numeric(left) and _numeric(right):
        return True
    return left == right


def unify(types: list[str]) -> str | None:
    """Common type of ``types`` (NULL unifies with anything), or None if there is none."""
    known = [t for t in types if t != NULL]
    if not known:
        return NULL
    if all(_numeric(t) for t in known):
        return "float64" if any(t in FLOAT_TYPES for t in known) else "int64"
    if all(t == known[0] for t in known):
        return known[0]
    return None


class _Checker:
    def __init__(self, schema: Mapping[str, str]) -> None:
        for name, dtype in schema.items():
            if dtype not in DTYPES:
                raise ExpressionError(f"column {name!r} has unknown dtype {dtype!r}", fragment=name,
                                      fix="use one of: " + ", ".join(DTYPES))
        self.schema = schema
        self.types: dict[Expr, str] = {}

    def check(self, expr: Expr) -> str:
        check_node(expr)
        known = self.types.get(expr)
        if known is not None:
            return known
        method = getattr(self, "_" + type(expr).__name__.lower())
        dtype: str = method(expr)
        self.types[expr] = dtype
        return dtype

    def _column(self, expr: Column) -> str:
        dtype = self.schema.get(expr.name)
        if dtype is not None:
            return dtype
        available = ", ".join(sorted(self.schema)) or "(none)"
        close = difflib.get_close_matches(expr.name, list(self.schema), n=1)
        fix = f"did you mean {close[0]!r}? " if close else ""
        raise _err(f"unknown column {expr.name!r} (available columns: {available})", expr,
                   fix + "column names are case-sensitive")

    def _literal(self, expr: Literal) -> str:
        return expr.dtype

    def _unary(self, expr: Unary) -> str:
        dtype = self.check(expr.operand)
        if expr.op == "NOT":
            if dtype not in ("bool", NULL):
                raise _err(f"NOT needs a bool operand, got {dtype}", expr, _BOOL_FIX)
            return "bool"
        if dtype == NULL:
            return NULL
        if not _numeric(dtype):
            raise _err(f"unary minus needs a numeric operand, got {dtype}", expr, _NUMERIC_FIX)
        return _widen(dtype)

    def _binary(self, expr: Binary) -> str:
        left, right = self.check(expr.left), self.check(expr.right)
        op = expr.op
        if op in ARITHMETIC_OPS:
            for side in (left, right):
                if side != NULL and not _numeric(side):
                    raise _err(f"operator '{op}' needs numeric operands, got {left} and {right}",
                               expr, _NUMERIC_FIX)
            if op == "/":
                return "float64"
            unified = unify([left, right])
            return NULL if unified == NULL else _widen(unified or "int64")
        if op in COMPARISON_OPS:
            if not comparable(left, right):
                raise _err(f"cannot compare {left} with {right}", expr, _COMPARE_FIX)
            return "bool"
        for side in (left, right):
            if side not in ("bool", NULL):
                raise _err(f"operator '{op}' needs bool operands, got {left} and {right}",
                           expr, _BOOL_FIX)
        return "bool"

    def _inlist(self, expr: InList) -> str:
        operand = self.check(expr.operand)
        for item in expr.items:
            item_type = self.check(item)
            if not comparable(operand, item_type):
                raise _err(f"IN list item of type {item_type} does not match the operand type {operand}",
                           item, "list values of the operand's type")
        return "bool"

    def _isnull(self, expr: IsNull) -> str:
        self.check(expr.operand)
        return "bool"

    def _case(self, expr: Case) -> str:
        results: list[str] = []
        for cond, value in expr.whens:
            cond_type = self.check(cond)
            if cond_type not in ("bool", NULL):
                raise _err(f"CASE WHEN condition must be bool, got {cond_type}", cond, _BOOL_FIX)
            results.append(self.check(value))
            if unify(results) is None:
                raise _err(f"CASE branches have incompatible types: {unify(results[:-1])} and {results[-1]}",
                           value, "make every THEN/ELSE value the same kind of type")
        if expr.else_ is not None:
            results.append(self.check(expr.else_))
            if unify(results) is None:
                raise _err(f"CASE branches have incompatible types: {unify(results[:-1])} and {results[-1]}",
                           expr.else_, "make every THEN/ELSE value the same kind of type")
        return self._unified(results)

    def _call(self, expr: Call) -> str:
        arg_types = [self.check(a) for a in expr.args]
        func = expr.func
        if func in ("lower", "upper", "length"):
            if arg_types[0] not in ("string", NULL):
                raise _err(f"{func}() needs a string argument, got {arg_types[0]}", expr,
                           f"{func}() works on string columns")
            return "int64" if func == "length" else "string"
        if func == "abs":
            if arg_types[0] == NULL:
                return NULL
            if not _numeric(arg_types[0]):
                raise _err(f"abs() needs a numeric argument, got {arg_types[0]}", expr, _NUMERIC_FIX)
            return _widen(arg_types[0])
        # coalesce, least, greatest
        for i in range(1, len(arg_types) + 1):
            if unify(arg_types[:i]) is None:
                raise _err(f"{func}() arguments have incompatible types: "
                           f"{unify(arg_types[:i - 1])} and {arg_types[i - 1]}",
                           expr.args[i - 1], "pass values of one kind of type")
        return self._unified(arg_types)

    @staticmethod
    def _unified(types: list[str]) -> str:
        unified = unify(types)
        if unified is None:  # callers check incrementally; kept for type narrowing
            raise ExpressionError("incompatible types", fragment=", ".join(types))
        return unified


def annotate(expr: Expr, schema: Mapping[str, str]) -> dict[Expr, str]:
    """Type of every sub-expression of ``expr`` (raises :class:`ExpressionError`)."""
    checker = _Checker(schema)
    checker.check(expr)
    return checker.types


def infer_type(expr: Expr, schema: Mapping[str, str]) -> str:
    """The dtype ``expr`` evaluates to over rows of ``schema`` (or ``"null"``)."""
    return _Checker(schema).check(expr)


def check_filter(expr: Expr, schema: Mapping[str, str]) -> None:
    """Refuse ``expr`` as a where-filter unless it type-checks to bool."""
    dtype = infer_type(expr, schema)
    if dtype != "bool":
        raise _err(f"a where-filter must be a bool expression, got {dtype}", expr, _BOOL_FIX)

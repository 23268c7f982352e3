"""AST of the portable expression subset.

Nodes are frozen (hashable) dataclasses. Every engine renders from these nodes, never
from the original text. :func:`to_text` is the canonical text of a node: deterministic,
minimal parentheses, re-parseable (``parse(to_text(e)) == e``), used in content hashes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator, Union

from parity.errors import ExpressionError

MAX_TEXT_LENGTH = 4096
MAX_DEPTH = 64
MAX_IDENTIFIER_LENGTH = 64
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

ARITHMETIC_OPS: tuple[str, ...] = ("+", "-", "*", "/")
COMPARISON_OPS: tuple[str, ...] = ("=", "!=", "<", "<=", ">", ">=")
LOGICAL_OPS: tuple[str, ...] = ("AND", "OR")
BINARY_OPS: tuple[str, ...] = ARITHMETIC_OPS + COMPARISON_OPS + LOGICAL_OPS
UNARY_OPS: tuple[str, ...] = ("NOT", "NEG")
# name -> (min args, max args or None for variadic)
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "lower": (1, 1),
    "upper": (1, 1),
    "length": (1, 1),
    "abs": (1, 1),
    "coalesce": (2, None),
    "least": (2, None),
    "greatest": (2, None),
}
LITERAL_DTYPES: tuple[str, ...] = ("int64", "float64", "string", "bool", "null")
# Keywords of the subset itself (case-insensitive).
KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE", "CASE", "WHEN", "THEN", "ELSE", "END"}
)


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Literal:
    value: Any  # int | float | str | bool | None
    dtype: str  # one of LITERAL_DTYPES


@dataclass(frozen=True)
class Unary:
    op: str  # "NOT" | "NEG"
    operand: Expr


@dataclass(frozen=True)
class Binary:
    op: str  # one of BINARY_OPS
    left: Expr
    right: Expr


@dataclass(frozen=True)
class InList:
    operand: Expr
    items: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True)
class IsNull:
    operand: Expr
    negated: bool = False


@dataclass(frozen=True)
class Case:
    whens: tuple[tuple[Expr, Expr], ...]
    else_: Expr | None = None


@dataclass(frozen=True)
class Call:
    func: str  # lower-case name from FUNCTIONS
    args: tuple[Expr, ...]


Expr = Union[Column, Literal, Unary, Binary, InList, IsNull, Case, Call]
NODE_TYPES: tuple[type, ...] = (Column, Literal, Unary, Binary, InList, IsNull, Case, Call)


def children(expr: Expr) -> tuple[Expr, ...]:
    """Direct sub-expressions of ``expr``, in source order."""
    if isinstance(expr, (Column, Literal)):
        return ()
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, InList):
        return (expr.operand, *expr.items)
    if isinstance(expr, IsNull):
        return (expr.operand,)
    if isinstance(expr, Case):
        parts: list[Expr] = [p for pair in expr.whens for p in pair]
        if expr.else_ is not None:
            parts.append(expr.else_)
        return tuple(parts)
    if isinstance(expr, Call):
        return expr.args
    raise ExpressionError("not an expression node", fragment=type(expr).__name__,
                          fix="build expressions with parity.registry.expr.parse")


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of ``expr``, pre-order."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def columns(expr: Expr) -> frozenset[str]:
    """Names of the columns ``expr`` references."""
    return frozenset(node.name for node in walk(expr) if isinstance(node, Column))


def string_char_problem(ch: str) -> str | None:
    """Why ``ch`` may not appear inside a string literal, or None if it may."""
    if ch in "\t\n\r":
        return None
    category = unicodedata.category(ch)
    if category == "Cc":
        return f"control character U+{ord(ch):04X} is not allowed"
    if category in ("Cf", "Cs", "Co", "Cn"):
        return f"invisible, unassigned or surrogate character U+{ord(ch):04X} is not allowed"
    return None


def check_node(node: Any) -> None:
    """Refuse a node that the parser could not have produced (defence in depth).

    Renderers call this on every node, so a hand-built AST cannot smuggle text into an
    engine either (a column name with a quote in it, a NaN literal, an unknown function).
    """
    fix = "build expressions with parity.registry.expr.parse"
    if isinstance(node, Column):
        if not isinstance(node.name, str) or not IDENTIFIER_RE.match(node.name) \
                or len(node.name) > MAX_IDENTIFIER_LENGTH or node.name.upper() in KEYWORDS:
            raise ExpressionError("invalid column name", fragment=str(node.name), fix=fix)
    elif isinstance(node, Literal):
        value, dtype = node.value, node.dtype
        ok = (
            (dtype == "null" and value is None)
            or (dtype == "bool" and isinstance(value, bool))
            or (dtype == "int64" and type(value) is int and INT64_MIN <= value <= INT64_MAX)
            or (dtype == "float64" and type(value) is float and math.isfinite(value))
            or (dtype == "string" and isinstance(value, str)
                and not any(string_char_problem(c) for c in value))
        )
        if not ok:
            raise ExpressionError(f"invalid {dtype} literal", fragment=repr(value), fix=fix)
    elif isinstance(node, Unary):
        if node.op not in UNARY_OPS:
            raise ExpressionError("unknown unary operator", fragment=str(node.op), fix=fix)
    elif isinstance(node, Binary):
        if node.op not in BINARY_OPS:
            raise ExpressionError("unknown operator", fragment=str(node.op), fix=fix)
    elif isinstance(node, InList):
        if not node.items or not all(isinstance(i, Literal) for i in node.items):
            raise ExpressionError("IN needs a non-empty list of literals", fragment="IN", fix=fix)
    elif isinstance(node, Case):
        if not node.whens:
            raise ExpressionError("CASE needs at least one WHEN", fragment="CASE", fix=fix)
    elif isinstance(node, Call):
        arity = FUNCTIONS.get(node.func)
        if arity is None:
            raise ExpressionError("unknown function", fragment=str(node.func),
                                  fix="allowed functions: " + ", ".join(FUNCTIONS))
        low, high = arity
        if len(node.args) < low or (high is not None and len(node.args) > high):
            raise ExpressionError("wrong number of arguments", fragment=node.func, fix=fix)
    elif not isinstance(node, IsNull):
        raise ExpressionError("not an expression node", fragment=type(node).__name__, fix=fix)


# ---------------------------------------------------------------------------------------
# Canonical text
# ---------------------------------------------------------------------------------------

PREC_OR, PREC_AND, PREC_NOT, PREC_CMP, PREC_ADD, PREC_MUL, PREC_NEG, PREC_ATOM = range(1, 9)
_BINARY_PREC = {"OR": PREC_OR, "AND": PREC_AND, "+": PREC_ADD, "-": PREC_ADD,
                "*": PREC_MUL, "/": PREC_MUL, **{op: PREC_CMP for op in COMPARISON_OPS}}


def precedence(expr: Expr) -> int:
    """Binding strength of ``expr``'s top-level construct (higher binds tighter)."""
    if isinstance(expr, Binary):
        return _BINARY_PREC[expr.op]
    if isinstance(expr, Unary):
        return PREC_NOT if expr.op == "NOT" else PREC_NEG
    if isinstance(expr, (InList, IsNull)):
        return PREC_CMP
    if isinstance(expr, Literal) and expr.dtype in ("int64", "float64") and _is_negative(expr.value):
        return PREC_NEG
    return PREC_ATOM


def _is_negative(value: int | float) -> bool:
    return value < 0 or (isinstance(value, float) and math.copysign(1.0, value) < 0)


def format_float(value: float) -> str:
    """Plain decimal text (no exponent) that parses back to exactly ``value``."""
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


def quote_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def literal_text(lit: Literal) -> str:
    if lit.dtype == "null":
        return "NULL"
    if lit.dtype == "bool":
        return "TRUE" if lit.value else "FALSE"
    if lit.dtype == "string":
        return quote_string(lit.value)
    if lit.dtype == "float64":
        return format_float(lit.value)
    return str(lit.value)


def _wrap(expr: Expr, parens: bool) -> str:
    text = to_text(expr)
    return f"({text})" if parens else text


def to_text(expr: Expr) -> str:
    """Canonical text: keywords upper-case, functions lower-case, single spaces."""
    if isinstance(expr, Column):
        return expr.name
    if isinstance(expr, Literal):
        return literal_text(expr)
    if isinstance(expr, Binary):
        prec = _BINARY_PREC[expr.op]
        if prec == PREC_CMP:  # comparisons do not chain
            left = _wrap(expr.left, precedence(expr.left) <= prec)
        else:
            left = _wrap(expr.left, precedence(expr.left) < prec)
        right = _wrap(expr.right, precedence(expr.right) <= prec)
        return f"{left} {expr.op} {right}"
    if isinstance(expr, Unary):
        if expr.op == "NOT":
            return "NOT " + _wrap(expr.operand, precedence(expr.operand) < PREC_NOT)
        return "-" + _wrap(expr.operand, precedence(expr.operand) < PREC_ATOM)
    if isinstance(expr, InList):
        operand = _wrap(expr.operand, precedence(expr.operand) <= PREC_CMP)
        items = ", ".join(literal_text(i) for i in expr.items)
        return f"{operand} {'NOT IN' if expr.negated else 'IN'} ({items})"
    if isinstance(expr, IsNull):
        operand = _wrap(expr.operand, precedence(expr.operand) <= PREC_CMP)
        return f"{operand} IS {'NOT NULL' if expr.negated else 'NULL'}"
    if isinstance(expr, Case):
        parts = ["CASE"]
        for cond, value in expr.whens:
            parts += ["WHEN", to_text(cond), "THEN", to_text(value)]
        if expr.else_ is not None:
            parts += ["ELSE", to_text(expr.else_)]
        parts.append("END")
        return " ".join(parts)
    if isinstance(expr, Call):
        return f"{expr.func}({', '.join(to_text(a) for a in expr.args)})"
    raise ExpressionError("not an expression node", fragment=type(expr).__name__,
                          fix="build expressions with parity.registry.expr.parse")

"""Table-driven rendering of expression ASTs to SQL dialects.

A dialect is one dict (:data:`DIALECTS`) from keys to entries. Keys:

* ``node:<Class>``   renderer of a node type: ``fn(node, renderer, context) -> str``
* ``ident``          column reference template (``{0}`` is the validated bare name)
* ``lit:<dtype>``    literal renderer ``fn(value) -> str`` for int64/float64/string/bool/null
* ``widen:int64`` / ``widen:float64``  cast templates used to compute in 64 bits
* ``unary:<op>``, ``op:<op>``, ``fn:<func>``, ``in``, ``not_in``, ``is_null``,
  ``is_not_null``, ``case``, ``case_when``, ``case_else``

An entry is a ``str.format`` template (positional ``{0}``, ``{1}``; ``{args}`` joins
every part with ``", "``), a callable taking the rendered parts, or :class:`Refused`,
which raises a typed :class:`~parity.errors.Unsupported`. :data:`REQUIRED_KEYS` lists the
keys every dialect must define, so adding a dialect means adding a table, not code.

Output is built only from the AST: columns are re-validated and quoted, strings are
re-escaped from their parsed value, numbers are printed from their parsed value.

Division is float64 division in every engine, NULL when the divisor is 0:
``(CAST(a AS DOUBLE) / NULLIF(CAST(b AS DOUBLE), 0))`` (DuckDB's own ``1/0`` is ``inf``,
Flink's integer ``/`` truncates). Integer literals that are operands of ``+ - *``, unary
minus and ``abs`` are cast to BIGINT so constant arithmetic such as ``30 * 24 * 3600 * 1000``
is int64 (not the engines' INT32). With ``schema``, int32/float32 columns in those
positions, CASE values and coalesce/least/greatest arguments are widened to
BIGINT/DOUBLE as well. Float literals are printed with an
exponent (``0.9E0``) so both engines read them as DOUBLE, not DECIMAL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from parity.errors import ExpressionError, Unsupported
from parity.registry.expr.ast import (
    BINARY_OPS, FUNCTIONS, LITERAL_DTYPES, NODE_TYPES, UNARY_OPS, Binary, Call, Case, Column,
    Expr, InList, IsNull, Literal, Unary, check_node, quote_string, to_text,
)


@dataclass(frozen=True)
class Refused:
    """Dialect entry for a construct the engine cannot run; rendering raises Unsupported."""

    reason: str


Renderer = Union[str, Callable[..., str]]  # a template or a callable
Entry = Union[Renderer, Refused]
DialectTable = Mapping[str, Entry]

REQUIRED_KEYS: frozenset[str] = frozenset(
    [f"node:{cls.__name__}" for cls in NODE_TYPES]
    + [f"lit:{dtype}" for dtype in LITERAL_DTYPES]
    + [f"unary:{op}" for op in UNARY_OPS]
    + [f"op:{op}" for op in BINARY_OPS]
    + [f"fn:{name}" for name in FUNCTIONS]
    + ["ident", "widen:int64", "widen:float64", "in", "not_in", "is_null", "is_not_null",
       "case", "case_when", "case_else"]
)
_ARITHMETIC_CONTEXT = frozenset({"+", "-", "*"})
# Where a node sits. NUMERIC: operand of + - * NEG abs (int literals and narrow columns
# become 64-bit). UNIFIED: CASE value or coalesce/least/greatest argument (narrow columns
# become 64-bit, so the result is int64/float64 as type-checked). PLAIN: anywhere else.
PLAIN, NUMERIC, UNIFIED = "plain", "numeric", "unified"
_UNIFYING = frozenset({"coalesce", "least", "greatest"})
_NARROW = {"int32": "widen:int64", "float32": "widen:float64"}


class _Renderer:
    def __init__(self, table: DialectTable, dialect: str, schema: Mapping[str, str] | None) -> None:
        self.table = table
        self.dialect = dialect
        self.schema = schema or {}

    def entry(self, key: str, node: Expr) -> Renderer:
        entry = self.table.get(key)
        if entry is None:
            raise Unsupported(f"{key} in {to_text(node)!r}", self.dialect, "the dialect table has no entry")
        if isinstance(entry, Refused):
            raise Unsupported(f"{key} in {to_text(node)!r}", self.dialect, entry.reason)
        return entry

    def apply(self, key: str, node: Expr, *parts: str) -> str:
        entry = self.entry(key, node)
        if isinstance(entry, str):
            return entry.format(*parts, args=", ".join(parts))
        return entry(*parts)

    def render(self, node: Expr, context: str = PLAIN) -> str:
        """Render ``node``; ``context`` says where it sits (see PLAIN/NUMERIC/UNIFIED)."""
        check_node(node)
        entry = self.entry(f"node:{type(node).__name__}", node)
        if not callable(entry):
            raise Unsupported(type(node).__name__, self.dialect, "node entries must be renderers")
        return entry(node, self, context)


# ---------------------------------------------------------------------------------------
# Node renderers shared by the SQL dialects (a dialect may replace any of them)
# ---------------------------------------------------------------------------------------

def _render_column(node: Column, r: _Renderer, context: str) -> str:
    text = r.apply("ident", node, node.name)
    widen = _NARROW.get(r.schema.get(node.name, "")) if context != PLAIN else None
    return r.apply(widen, node, text) if widen else text


def _render_literal(node: Literal, r: _Renderer, context: str) -> str:
    entry = r.entry(f"lit:{node.dtype}", node)
    text = entry.format(node.value) if isinstance(entry, str) else entry(node.value)
    if context == NUMERIC and node.dtype == "int64":
        return r.apply("widen:int64", node, text)
    return text


def _render_unary(node: Unary, r: _Renderer, context: str) -> str:
    return r.apply(f"unary:{node.op}", node, r.render(node.operand, NUMERIC if node.op == "NEG" else PLAIN))


def _render_binary(node: Binary, r: _Renderer, context: str) -> str:
    operand_context = NUMERIC if node.op in _ARITHMETIC_CONTEXT else PLAIN
    left = r.render(node.left, operand_context)
    right = r.render(node.right, operand_context)
    return r.apply(f"op:{node.op}", node, left, right)


def _render_inlist(node: InList, r: _Renderer, context: str) -> str:
    items = ", ".join(r.render(item) for item in node.items)
    return r.apply("not_in" if node.negated else "in", node, r.render(node.operand), items)


def _render_isnull(node: IsNull, r: _Renderer, context: str) -> str:
    return r.apply("is_not_null" if node.negated else "is_null", node, r.render(node.operand))


def _render_case(node: Case, r: _Renderer, context: str) -> str:
    parts = [r.apply("case_when", node, r.render(c), r.render(v, UNIFIED)) for c, v in node.whens]
    if node.else_ is not None:
        parts.append(r.apply("case_else", node, r.render(node.else_, UNIFIED)))
    return r.apply("case", node, " ".join(parts))


def _render_call(node: Call, r: _Renderer, context: str) -> str:
    arg_context = NUMERIC if node.func == "abs" else UNIFIED if node.func in _UNIFYING else PLAIN
    args = [r.render(a, arg_context) for a in node.args]
    return r.apply(f"fn:{node.func}", node, *args)


# ---------------------------------------------------------------------------------------
# Literal renderers
# ---------------------------------------------------------------------------------------

def _int_sql(value: int) -> str:
    return f"({value})" if value < 0 else str(value)


def _float_sql(value: float) -> str:
    """Shortest round-trip digits with an exponent: an approximate (DOUBLE) literal."""
    text = repr(value).upper()
    if "E" not in text:
        text += "E0"
    return f"({text})" if text.startswith("-") else text


def _bool_sql(value: bool) -> str:
    return "TRUE" if value else "FALSE"


def _null_skipping(func: str) -> Callable[..., str]:
    """LEAST/GREATEST that ignore NULLs, for engines whose built-in returns NULL on any NULL.

    Each argument is replaced by ``COALESCE(arg_i, every other arg)``: a NULL argument
    becomes some non-NULL one (which cannot change the extreme), all-NULL stays NULL.
    """
    def render(*args: str) -> str:
        wrapped = [f"COALESCE({', '.join([a, *args[:i], *args[i + 1:]])})" for i, a in enumerate(args)]
        return f"{func}({', '.join(wrapped)})"
    return render


_ANSI: dict[str, Entry] = {
    "node:Column": _render_column,
    "node:Literal": _render_literal,
    "node:Unary": _render_unary,
    "node:Binary": _render_binary,
    "node:InList": _render_inlist,
    "node:IsNull": _render_isnull,
    "node:Case": _render_case,
    "node:Call": _render_call,
    "ident": '"{0}"',
    "lit:int64": _int_sql,
    "lit:float64": _float_sql,
    "lit:string": quote_string,
    "lit:bool": _bool_sql,
    "lit:null": lambda value: "NULL",
    "widen:int64": "CAST({0} AS BIGINT)",
    "widen:float64": "CAST({0} AS DOUBLE)",
    "unary:NOT": "(NOT {0})",
    "unary:NEG": "(-{0})",
    "op:+": "({0} + {1})",
    "op:-": "({0} - {1})",
    "op:*": "({0} * {1})",
    "op:/": "(CAST({0} AS DOUBLE) / NULLIF(CAST({1} AS DOUBLE), 0))",
    "op:=": "({0} = {1})",
    "op:!=": "({0} <> {1})",
    "op:<": "({0} < {1})",
    "op:<=": "({0} <= {1})",
    "op:>": "({0} > {1})",
    "op:>=": "({0} >= {1})",
    "op:AND": "({0} AND {1})",
    "op:OR": "({0} OR {1})",
    "in": "({0} IN ({1}))",
    "not_in": "({0} NOT IN ({1}))",
    "is_null": "({0} IS NULL)",
    "is_not_null": "({0} IS NOT NULL)",
    "case": "(CASE {0} END)",
    "case_when": "WHEN {0} THEN {1}",
    "case_else": "ELSE {0}",
    "fn:lower": "lower({0})",
    "fn:upper": "upper({0})",
    "fn:length": "length({0})",
    "fn:abs": "abs({0})",
    "fn:coalesce": "coalesce({args})",
    "fn:least": "least({args})",  # DuckDB's least/greatest already skip NULLs
    "fn:greatest": "greatest({args})",
}

DUCKDB: dict[str, Entry] = dict(_ANSI)

FLINK: dict[str, Entry] = {
    **_ANSI,
    "ident": "`{0}`",  # Flink SQL quotes identifiers with backticks; "x" is not a name there
    "op:/": "(CAST({0} AS DOUBLE) / NULLIF(CAST({1} AS DOUBLE), 0E0))",
    "fn:lower": "LOWER({0})",
    "fn:upper": "UPPER({0})",
    "fn:length": "CHAR_LENGTH({0})",
    "fn:abs": "ABS({0})",
    "fn:coalesce": "COALESCE({args})",
    "fn:least": _null_skipping("LEAST"),  # Flink's LEAST/GREATEST return NULL on any NULL
    "fn:greatest": _null_skipping("GREATEST"),
}

DIALECTS: dict[str, DialectTable] = {"duckdb": DUCKDB, "flink": FLINK}

# Text outside string literals of rendered SQL must never hold these.
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
_FORBIDDEN_OUTPUT = (";", "--", "/*", "*/")


def render_sql(expr: Expr, dialect: str, schema: Mapping[str, str] | None = None) -> str:
    """Render ``expr`` as a SQL expression of ``dialect`` ("duckdb" or "flink").

    Pass the source ``schema`` to widen int32/float32 columns in arithmetic to 64 bits,
    matching the type checker and the Python evaluator.
    """
    table = DIALECTS.get(dialect)
    if table is None:
        raise Unsupported("expressions", dialect, "unknown SQL dialect; known: " + ", ".join(DIALECTS))
    sql = _Renderer(table, dialect, schema).render(expr)
    outside_strings = _STRING_LITERAL.sub("''", sql)
    for bad in _FORBIDDEN_OUTPUT:
        if bad in outside_strings:  # cannot happen for a validated AST; refuse loudly if it does
            raise ExpressionError("rendered SQL failed the safety check", fragment=bad)
    return sql


def entry_kinds(table: DialectTable) -> dict[str, Any]:
    """``{key: "template" | "renderer" | "refused"}`` for the required keys (for tests/docs)."""
    kinds: dict[str, Any] = {}
    for key in sorted(REQUIRED_KEYS):
        entry = table.get(key)
        kinds[key] = None if entry is None else "refused" if isinstance(entry, Refused) \
            else "template" if isinstance(entry, str) else "renderer"
    return kinds

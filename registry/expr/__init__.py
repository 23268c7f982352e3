"""The portable expression subset: ``where`` filters and derived columns.

Expressions are parsed and type-checked at plan time, then *rendered from the AST* to
DuckDB SQL, Flink SQL, a Python evaluator (one row at a time) and a vector evaluator
(numpy, one micro-batch at a time: :mod:`parity.registry.expr.vector_eval`). The original
text never reaches an engine.

Syntax
------
* **Columns**: bare identifiers ``[A-Za-z_][A-Za-z0-9_]*``, at most 64 characters,
  case-sensitive. No quoting, no dotted names. A name that is a keyword of the subset or
  a reserved SQL keyword (SELECT, FROM, LIKE, CAST, ...) is refused.
* **Literals**: integers (int64 range; ``-`` directly before a number is part of it),
  decimals with digits on both sides of the point (``1.5``; float64), single-quoted
  strings with ``''`` as the only escape, ``TRUE``, ``FALSE``, ``NULL``.
  Keywords and function names are case-insensitive.
* **Operators**, loosest first::

      OR  <  AND  <  NOT  <  = != <> < <= > >=, [NOT] IN (...), IS [NOT] NULL
          <  + -  <  * /  <  unary -

  ``+ - * / AND OR`` are left-associative; comparisons do not chain (``a < b < c`` is
  refused). ``<>`` is the same as ``!=``.
* ``x [NOT] IN (lit, lit, ...)``: a non-empty list of literals only.
* ``x IS NULL`` / ``x IS NOT NULL``.
* ``CASE WHEN cond THEN value [WHEN ...] [ELSE value] END`` (searched CASE only).
* **Functions**: ``lower(s)``, ``upper(s)``, ``length(s)``, ``abs(n)``,
  ``coalesce(a, b, ...)``, ``least(a, b, ...)``, ``greatest(a, b, ...)``.
* Limits: 4096 characters, nesting depth 64 (parentheses, NOT, unary minus, calls,
  CASE, and the depth of the resulting tree).

Everything else raises :class:`parity.errors.ExpressionError` whose ``fragment`` is the
offending piece and whose ``fix`` says what to do: ``;``, comments, double-quoted or
backtick identifiers, other SQL keywords (SELECT, LIKE, BETWEEN, CAST, ...), unknown
functions, ``||``, ``::``, ``%``, ``$1``/``?`` parameters, exponent notation, typed
literals (``DATE '...'``), unbalanced parentheses or quotes, trailing text, non-ASCII
characters outside string literals, control/invisible characters anywhere.

Types
-----
Types are the dtypes of :mod:`parity.registry.types` plus ``"null"`` (a bare NULL, which
unifies with anything). Unknown columns are refused with the available columns listed.

* ``+ - *`` and unary minus: numeric operands; int op int is int64, anything with a float
  is float64. ``/`` is always float64.
* Comparisons and IN: numeric with numeric, string with string, bool with bool,
  timestamp with timestamp. The result is bool.
* ``AND``/``OR``/``NOT`` need bool. A where-filter must be bool (:func:`check_filter`).
* CASE results and ``coalesce``/``least``/``greatest`` arguments unify: numerics to
  int64/float64, otherwise one type. ``lower``/``upper`` take a string and return a
  string, ``length`` returns int64, ``abs`` keeps int64/float64.

Semantics (Python and DuckDB are differential-tested; Flink is rendered to match)
------------------------------------------------------------------------------
* SQL three-valued logic: NULL propagates through arithmetic, comparisons and functions;
  AND/OR are Kleene; ``NOT NULL`` is NULL; ``x IN (...)`` is NULL when x is NULL or when x
  is not found and the list holds NULL; a NULL CASE condition counts as false.
  A filter keeps a row only when it evaluates to TRUE.
* ``a / b`` is ``float64(a) / float64(b)``, and NULL when b is 0. Mixed int/float
  arithmetic and comparison happen in float64.
* ``coalesce`` returns the first non-NULL argument. ``least``/``greatest`` ignore NULLs
  and are NULL only if every argument is NULL (DuckDB's behaviour; Flink's built-ins
  return NULL on any NULL, so the Flink rendering wraps each argument in COALESCE).
* Rendered SQL quotes every column (DuckDB with double quotes, Flink with backticks, its
  identifier quote), re-escapes strings from their parsed value and prints numbers from
  their parsed value. Decimals render as DOUBLE literals (``0.9E0``); integer literals in
  ``+ - *``, unary minus and ``abs`` render as BIGINT; given the schema, int32/float32
  columns in arithmetic, CASE values and coalesce/least/greatest are widened to 64 bits.
* Strings compare by code point. ``lower``/``upper`` are exact for ASCII; ``length``
  counts code points.
* Out of scope: integer overflow, NaN and infinities, non-ASCII case mapping
  (e.g. ``upper('ß')`` differs between engines).

API
---
``parse(text) -> Expr``; ``infer_type(expr, schema) -> dtype``; ``check_filter(expr,
schema)``; ``compile_python(expr, schema=None) -> f(row)``; ``vector_eval.compile_vector(expr,
schema) -> f(batch, n)`` (imported from its module: it needs numpy); ``render_sql(expr, dialect,
schema=None) -> str`` for ``"duckdb"`` and ``"flink"``; ``columns(expr)``;
``to_text(expr)`` (canonical text for content hashes: ``a=1`` and ``a = 1`` are equal).
"""

from parity.registry.expr.ast import (
    Binary, Call, Case, Column, Expr, InList, IsNull, Literal, Unary, columns, to_text,
)
from parity.registry.expr.parser import parse
from parity.registry.expr.python_eval import compile_python
from parity.registry.expr.sql import render_sql
from parity.registry.expr.typecheck import check_filter, infer_type

__all__ = [
    "Binary", "Call", "Case", "Column", "Expr", "InList", "IsNull", "Literal", "Unary",
    "check_filter", "columns", "compile_python", "infer_type", "parse", "render_sql", "to_text",
]

"""Random well-typed expressions and rows for differential tests of the expression
evaluators (Python, vector, DuckDB)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from parity.registry.expr import Binary, Call, Case, Column, InList, IsNull, Literal, Unary


def col(name: str) -> Column:
    return Column(name)


def lit(value: Any) -> Literal:
    if value is None:
        return Literal(None, "null")
    if isinstance(value, bool):
        return Literal(value, "bool")
    if isinstance(value, int):
        return Literal(value, "int64")
    if isinstance(value, float):
        return Literal(value, "float64")
    return Literal(value, "string")


DIFF_SCHEMA = {"i": "int64", "n": "int32", "f": "float64", "g": "float32", "s": "string",
               "b": "bool", "c": "bool"}
DIFF_COLUMNS = tuple(DIFF_SCHEMA)
DIFF_DDL = ("CREATE OR REPLACE TABLE t (id INTEGER, i BIGINT, n INTEGER, f DOUBLE, g FLOAT, "
            "s VARCHAR, b BOOLEAN, c BOOLEAN)")
DIFF_INSERT = "INSERT INTO t VALUES (" + ", ".join("?" * (len(DIFF_COLUMNS) + 1)) + ")"
NUMERIC_KINDS = ("int", "float")
COLUMNS_OF = {"int": ("i", "n"), "float": ("f", "g"), "str": ("s",), "bool": ("b", "c")}

small_ints = st.one_of(st.just(0), st.integers(-50, 50))  # zero often: division, NULLIF
any_ints = st.one_of(small_ints, st.integers(-(2**40), 2**40), st.sampled_from([2**53 + 1, -(2**53) - 1]))
# Magnitudes kept away from overflow/underflow: NaN and infinities are out of scope.
nice_floats = st.one_of(
    st.sampled_from([0.0, -0.0, 0.1, 0.5, 1.0, -2.5, 1e-3]),
    st.floats(1e-3, 1e4).flatmap(lambda x: st.sampled_from([x, -x])),
)
float32s = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
texts = st.text(alphabet="abAB z'%_é", max_size=4)


def leaf(kind: str) -> st.SearchStrategy[Any]:
    literal = {
        "int": small_ints.map(lit),
        "float": nice_floats.map(lit),
        "str": texts.map(lit),
        "bool": st.booleans().map(lit),
    }[kind]
    column = st.sampled_from([col(c) for c in COLUMNS_OF[kind]])
    return st.one_of(column, column, literal)  # columns twice as likely: rows drive the NULLs


def negate(expr: Any) -> Any:
    """Unary minus the way the parser builds it (numeric literals fold)."""
    if isinstance(expr, Literal) and expr.dtype in ("int64", "float64"):
        return Literal(-expr.value, expr.dtype)
    return Unary("NEG", expr)


@st.composite
def typed_expr(draw: Any, kind: str, depth: int = 3) -> Any:
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        node = draw(leaf(kind))
        if draw(st.integers(0, 11)) == 0:
            node = lit(None)
        return node
    sub = lambda k: typed_expr(k, depth - 1)  # noqa: E731
    numeric = st.sampled_from(NUMERIC_KINDS)
    options = ["case", "coalesce", "least"]
    if kind == "int":
        options += ["arith", "neg", "abs", "length"]
    elif kind == "float":
        options += ["arith", "div", "neg", "abs"]
    elif kind == "str":
        options += ["lower"]
    else:
        options += ["cmp", "logic", "not", "in", "isnull"]
    choice = draw(st.sampled_from(options))
    if choice == "arith":
        op = draw(st.sampled_from(["+", "-", "*"]))
        if kind == "int":
            return Binary(op, draw(sub("int")), draw(sub("int")))
        sides = [draw(sub("float")), draw(sub(draw(numeric)))]
        if draw(st.booleans()):
            sides.reverse()
        return Binary(op, *sides)
    if choice == "div":
        return Binary("/", draw(sub(draw(numeric))), draw(sub(draw(numeric))))
    if choice == "neg":
        return negate(draw(sub(kind)))
    if choice == "abs":
        return Call("abs", (draw(sub(kind)),))
    if choice == "length":
        return Call("length", (draw(sub("str")),))
    if choice == "lower":
        return Call(draw(st.sampled_from(["lower", "upper"])), (draw(sub("str")),))
    value_kind = lambda: draw(numeric) if kind == "float" else kind  # noqa: E731
    if choice == "case":
        whens = tuple((draw(sub("bool")), draw(sub(value_kind())))
                      for _ in range(draw(st.integers(1, 3))))
        else_ = draw(sub(value_kind())) if draw(st.booleans()) else None
        if kind == "float":
            whens = whens[:-1] + ((whens[-1][0], draw(sub("float"))),)
        return Case(whens, else_)
    if choice in ("coalesce", "least"):
        func = draw(st.sampled_from(["coalesce", "least", "greatest"]))
        args = [draw(sub(value_kind())) for _ in range(draw(st.integers(2, 4)))]
        if kind == "float":
            args[0] = draw(sub("float"))
        return Call(func, tuple(args))
    if choice == "cmp":
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
        operand_kind = draw(st.sampled_from(["int", "float", "str", "bool"]))
        if operand_kind in NUMERIC_KINDS:
            return Binary(op, draw(sub(operand_kind)), draw(sub(draw(numeric))))
        return Binary(op, draw(sub(operand_kind)), draw(sub(operand_kind)))
    if choice == "logic":
        return Binary(draw(st.sampled_from(["AND", "OR"])), draw(sub("bool")), draw(sub("bool")))
    if choice == "not":
        return Unary("NOT", draw(sub("bool")))
    if choice == "in":
        operand_kind = draw(st.sampled_from(["int", "float", "str"]))
        item = {"int": small_ints.map(lit), "float": nice_floats.map(lit), "str": texts.map(lit)}
        item_kinds = [operand_kind] if operand_kind == "str" else list(NUMERIC_KINDS)
        items = tuple(draw(st.one_of(*(item[k] for k in item_kinds), st.just(lit(None))))
                      for _ in range(draw(st.integers(1, 4))))
        return InList(draw(sub(operand_kind)), items, draw(st.booleans()))
    return IsNull(draw(sub(draw(st.sampled_from(["int", "float", "str", "bool"])))), draw(st.booleans()))


any_expr = st.sampled_from(["int", "float", "str", "bool"]).flatmap(lambda k: typed_expr(k))
rows_strategy = st.lists(
    st.fixed_dictionaries({
        name: st.one_of(st.none(), values, values)  # NULL one time in three
        for name, values in [("i", any_ints), ("n", small_ints), ("f", nice_floats), ("g", float32s),
                             ("s", texts), ("b", st.booleans()), ("c", st.booleans())]
    }),
    min_size=1, max_size=10,
)


def same_value(py: Any, db: Any) -> bool:
    if py is None or db is None:
        return py is None and db is None
    if isinstance(py, bool) or isinstance(db, bool):
        return type(py) is type(db) and py == db
    if isinstance(py, float) or isinstance(db, float):
        if type(py) is not type(db):
            return False
        return math.isclose(py, db, rel_tol=1e-9) or (math.isnan(py) and math.isnan(db))
    return type(py) is type(db) and py == db

"""Recursive-descent parser of the portable expression subset.

Precedence, loosest first: OR < AND < NOT < comparison / [NOT] IN / IS [NOT] NULL
< + - < * / < unary minus. Comparisons do not chain (``a < b < c`` is refused).
Anything outside the subset raises :class:`ExpressionError` with the offending fragment.
"""

from __future__ import annotations

import difflib

from parity.errors import ExpressionError
from parity.registry.expr.ast import (
    FUNCTIONS, INT64_MAX, INT64_MIN, MAX_DEPTH, MAX_TEXT_LENGTH, Binary, Call, Case, Column,
    Expr, InList, IsNull, Literal, Unary, children,
)
from parity.registry.expr.tokenizer import COMPARISON_TOKENS, Token, error, tokenize

_FUNCTION_FIX = "allowed functions: " + ", ".join(f"{name}()" for name in FUNCTIONS)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.node_depth: dict[int, int] = {}
        self.keep: list[Expr] = []  # keeps nodes alive so their ids stay unique

    # -- helpers -------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at_keyword(self, *words: str) -> bool:
        return self.tok.kind == "keyword" and self.tok.value in words

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def expect_keyword(self, word: str) -> Token:
        if not self.at_keyword(word):
            raise self.unexpected(f"expected {word}")
        return self.advance()

    def unexpected(self, message: str) -> ExpressionError:
        tok = self.tok
        if tok.kind == "eof":
            prev = self.tokens[self.i - 1].text if self.i > 0 else ""
            return error(f"{message}, but the expression ends after", prev, tok.pos,
                         "complete the expression")
        return error(f"{message}, found", tok.text, tok.pos)

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise error(f"expression nests deeper than {MAX_DEPTH} levels", tok.text, tok.pos,
                        "simplify the expression")

    def node(self, expr: Expr, tok: Token) -> Expr:
        # leaves have depth 0, so "depth" counts nested operators/calls/CASEs
        depth = 1 + max((self.node_depth.get(id(c), 0) for c in children(expr)), default=0)
        if depth > MAX_DEPTH:
            raise error(f"expression nests deeper than {MAX_DEPTH} levels", tok.text, tok.pos,
                        "simplify the expression")
        self.node_depth[id(expr)] = depth
        self.keep.append(expr)
        return expr

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> Expr:
        if self.tok.kind == "eof":
            raise error("empty expression", "", 0, "write an expression, e.g. watch_ms > 1000")
        expr = self.parse_or()
        if self.tok.kind == ")":
            raise error("unbalanced parenthesis: ')' has no matching '('", ")", self.tok.pos,
                        "remove it or add the missing '('")
        if self.tok.kind != "eof":
            raise error("unexpected text after a complete expression", self.tok.text, self.tok.pos,
                        "combine conditions with AND / OR")
        return expr

    def parse_or(self) -> Expr:
        left = self.parse_and()
        while self.at_keyword("OR"):
            tok = self.advance()
            left = self.node(Binary("OR", left, self.parse_and()), tok)
        return left

    def parse_and(self) -> Expr:
        left = self.parse_not()
        while self.at_keyword("AND"):
            tok = self.advance()
            left = self.node(Binary("AND", left, self.parse_not()), tok)
        return left

    def parse_not(self) -> Expr:
        if not self.at_keyword("NOT"):
            return self.parse_comparison()
        tok = self.advance()
        self.enter(tok)
        operand = self.parse_not()
        self.depth -= 1
        return self.node(Unary("NOT", operand), tok)

    def at_comparison(self) -> bool:
        return (self.tok.kind == "op" and self.tok.text in COMPARISON_TOKENS) \
            or self.at_keyword("IN", "IS") \
            or (self.at_keyword("NOT") and self.peek().kind == "keyword" and self.peek().value == "IN")

    def parse_comparison(self) -> Expr:
        left = self.parse_additive()
        if not self.at_comparison():
            return left
        tok = self.tok
        if tok.kind == "op":
            self.advance()
            op = "!=" if tok.text == "<>" else tok.text
            expr = self.node(Binary(op, left, self.parse_additive()), tok)
        elif tok.value == "IS":
            self.advance()
            negated = self.at_keyword("NOT")
            if negated:
                self.advance()
            if not self.at_keyword("NULL"):
                raise self.unexpected("only IS NULL / IS NOT NULL are supported; expected NULL")
            self.advance()
            expr = self.node(IsNull(left, negated), tok)
        else:
            negated = tok.value == "NOT"
            if negated:
                self.advance()
            expr = self.node(InList(left, self.parse_in_items(), negated), tok)
        if self.at_comparison():
            raise error("comparisons cannot be chained", self.tok.text, self.tok.pos,
                        "combine comparisons with AND, e.g. a < b AND b < c")
        return expr

    def parse_in_items(self) -> tuple[Literal, ...]:
        self.expect_keyword("IN")
        open_tok = self.tok
        if open_tok.kind != "(":
            raise self.unexpected("IN needs a parenthesised list of literals")
        self.advance()
        if self.tok.kind == ")":
            raise error("empty IN list", "()", open_tok.pos, "list at least one literal")
        items: list[Literal] = []
        while True:
            item = self.parse_literal()
            if item is None:
                if self.tok.kind == "eof":
                    raise error("unbalanced parenthesis: '(' is never closed", "(", open_tok.pos,
                                "add the missing ')'")
                raise error("IN list items must be literals", self.tok.text, self.tok.pos,
                            "list constant values only, e.g. x IN (1, 2, 3)")
            items.append(item)
            if self.tok.kind == ",":
                self.advance()
                continue
            if self.tok.kind == ")":
                self.advance()
                return tuple(items)
            if self.tok.kind == "eof":
                raise error("unbalanced parenthesis: '(' is never closed", "(", open_tok.pos,
                            "add the missing ')'")
            raise self.unexpected("expected ',' or ')' in the IN list")

    def parse_literal(self) -> Literal | None:
        """A literal at the cursor (numbers may carry a leading '-'), else None."""
        tok = self.tok
        if tok.kind == "op" and tok.text == "-" and self.peek().kind in ("int", "float"):
            self.advance()
            return self.number(self.advance(), negate=True, start=tok.pos)
        if tok.kind in ("int", "float"):
            return self.number(self.advance(), negate=False, start=tok.pos)
        if tok.kind == "string":
            self.advance()
            return Literal(tok.value, "string")
        if tok.kind == "keyword" and tok.value in ("TRUE", "FALSE", "NULL"):
            self.advance()
            if tok.value == "NULL":
                return Literal(None, "null")
            return Literal(tok.value == "TRUE", "bool")
        return None

    def number(self, tok: Token, negate: bool, start: int) -> Literal:
        value = -tok.value if negate else tok.value
        if tok.kind == "float":
            return Literal(value, "float64")
        if not INT64_MIN <= value <= INT64_MAX:
            raise error("integer out of the int64 range", self.text[start:tok.pos + len(tok.text)], start,
                        "use a value between -9223372036854775808 and 9223372036854775807")
        return Literal(value, "int64")

    def parse_additive(self) -> Expr:
        left = self.parse_multiplicative()
        while self.at_op("+", "-"):
            tok = self.advance()
            left = self.node(Binary(tok.text, left, self.parse_multiplicative()), tok)
        return left

    def parse_multiplicative(self) -> Expr:
        left = self.parse_unary()
        while self.at_op("*", "/"):
            tok = self.advance()
            left = self.node(Binary(tok.text, left, self.parse_unary()), tok)
        return left

    def parse_unary(self) -> Expr:
        if not self.at_op("-"):
            return self.parse_primary()
        tok = self.tok
        if self.peek().kind in ("int", "float"):
            literal = self.parse_literal()
            if literal is not None:
                return literal
        self.advance()
        self.enter(tok)
        operand = self.parse_unary()
        self.depth -= 1
        if isinstance(operand, Literal) and operand.dtype in ("int64", "float64"):
            # -(5) is the literal -5, exactly like -5
            if operand.dtype == "int64" and -operand.value > INT64_MAX:
                raise error("integer out of the int64 range", tok.text, tok.pos)
            return Literal(-operand.value, operand.dtype)
        return self.node(Unary("NEG", operand), tok)

    def parse_primary(self) -> Expr:
        tok = self.tok
        literal = self.parse_literal()
        if literal is not None:
            if self.tok.kind == "(":
                raise error("a literal cannot be called", self.tok.text, self.tok.pos)
            return literal
        if tok.kind == "(":
            self.advance()
            self.enter(tok)
            expr = self.parse_or()
            self.depth -= 1
            if self.tok.kind == "eof":
                raise error("unbalanced parenthesis: '(' is never closed", "(", tok.pos,
                            "add the missing ')'")
            if self.tok.kind != ")":
                raise self.unexpected("expected ')'")
            self.advance()
            return expr
        if tok.kind == "keyword" and tok.value == "CASE":
            return self.parse_case()
        if tok.kind == "ident":
            self.advance()
            if self.tok.kind == "(":
                return self.parse_call(tok)
            if self.tok.kind == "string":
                fragment = self.text[tok.pos:self.tok.pos + len(self.tok.text)]
                raise error("a name directly followed by a string (a typed literal such as "
                            "DATE '...') is not supported", fragment, tok.pos,
                            "compare values of the column's own type; separate terms with an operator")
            return Column(tok.value)
        raise self.unexpected("expected a value")

    def parse_call(self, name_tok: Token) -> Expr:
        func = name_tok.text.lower()
        if func not in FUNCTIONS:
            close = difflib.get_close_matches(func, list(FUNCTIONS), n=1)
            hint = f"did you mean {close[0]}()? " if close else ""
            raise error("unknown function", name_tok.text, name_tok.pos, hint + _FUNCTION_FIX)
        open_tok = self.advance()
        self.enter(open_tok)
        args: list[Expr] = []
        if self.tok.kind != ")":
            while True:
                args.append(self.parse_or())
                if self.tok.kind == ",":
                    self.advance()
                    continue
                break
        if self.tok.kind == "eof":
            raise error("unbalanced parenthesis: '(' is never closed", "(", open_tok.pos,
                        "add the missing ')'")
        if self.tok.kind != ")":
            raise self.unexpected(f"expected ',' or ')' in the arguments of {func}()")
        self.advance()
        self.depth -= 1
        low, high = FUNCTIONS[func]
        if len(args) < low or (high is not None and len(args) > high):
            want = f"exactly {low}" if low == high else f"at least {low}"
            raise error(f"{func}() takes {want} argument{'s' if low != 1 else ''}, got {len(args)}",
                        name_tok.text, name_tok.pos)
        return self.node(Call(func, tuple(args)), name_tok)

    def parse_case(self) -> Expr:
        case_tok = self.advance()
        self.enter(case_tok)
        if not self.at_keyword("WHEN"):
            if self.tok.kind == "eof":
                raise error("CASE without END", "CASE", case_tok.pos, "write CASE WHEN c THEN v END")
            raise error("only searched CASE (CASE WHEN condition THEN ...) is supported",
                        self.tok.text, self.tok.pos, "write CASE WHEN x = 1 THEN ... END")
        whens: list[tuple[Expr, Expr]] = []
        while self.at_keyword("WHEN"):
            self.advance()
            cond = self.parse_or()
            self.expect_keyword("THEN")
            whens.append((cond, self.parse_or()))
        else_ = None
        if self.at_keyword("ELSE"):
            self.advance()
            else_ = self.parse_or()
        if self.tok.kind == "eof":
            raise error("CASE without END", "CASE", case_tok.pos, "close the CASE with END")
        self.expect_keyword("END")
        self.depth -= 1
        return self.node(Case(tuple(whens), else_), case_tok)


def parse(text: str) -> Expr:
    """Parse ``text`` into an AST, or raise :class:`ExpressionError`."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string", fragment=repr(text)[:40],
                              fix="quote the expression in the definition")
    if len(text) > MAX_TEXT_LENGTH:
        raise error(f"expression longer than {MAX_TEXT_LENGTH} characters", text[:20], 0,
                    "split the logic into several derived columns")
    return _Parser(text).parse()

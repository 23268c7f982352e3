"""Tokenizer of the portable expression subset.

Refuses, with the offending fragment, everything that is not a token of the subset:
comments, ``;``, quoted identifiers, parameters, casts, ``||``, SQL keywords outside the
subset, non-ASCII outside string literals, control and invisible characters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from parity.errors import ExpressionError
from parity.registry.expr.ast import (
    KEYWORDS, MAX_IDENTIFIER_LENGTH, string_char_problem,
)

_NAME_FIX = "column names are bare identifiers [A-Za-z_][A-Za-z0-9_]* (Parity quotes them for you)"
COMPARISON_TOKENS = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})

# SQL keywords that are not part of the subset. Used anywhere (as a name or as syntax)
# they are refused; a few get a specific fix.
_SQL_KEYWORDS: dict[str, str | None] = {
    **dict.fromkeys(
        "SELECT FROM WHERE UNION INTERSECT EXCEPT JOIN ON GROUP BY ORDER HAVING LIMIT "
        "OFFSET INSERT UPDATE DELETE DROP CREATE ALTER TABLE INTO VALUES WITH AS ALL ANY "
        "SOME EXISTS DISTINCT ESCAPE COLLATE OVER PARTITION WINDOW LATERAL UNNEST ATTACH "
        "DETACH COPY PRAGMA INSTALL LOAD CALL EXECUTE PREPARE SET RESET GRANT REVOKE "
        "TRUNCATE BEGIN COMMIT ROLLBACK DESCRIBE SHOW EXPLAIN USE RETURNING MERGE "
        "NATURAL CROSS INNER OUTER QUALIFY PIVOT UNPIVOT INTERVAL EXTRACT SUBSTRING TRIM "
        "OVERLAY ARRAY XOR DIV ISNULL NOTNULL UNKNOWN SYMMETRIC ASYMMETRIC FETCH "
        "CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP LOCALTIME LOCALTIMESTAMP "
        "CURRENT_USER SESSION_USER CHECKPOINT VACUUM EXPORT IMPORT".split(),
        None,
    ),
    "LIKE": "LIKE is not supported; compare whole values with = or IN (...)",
    "ILIKE": "ILIKE is not supported; compare lower(x) with = or IN (...)",
    "SIMILAR": "pattern matching is not supported; compare whole values with = or IN (...)",
    "GLOB": "pattern matching is not supported; compare whole values with = or IN (...)",
    "REGEXP": "pattern matching is not supported; compare whole values with = or IN (...)",
    "RLIKE": "pattern matching is not supported; compare whole values with = or IN (...)",
    "BETWEEN": "BETWEEN is not supported; write x >= low AND x <= high",
    "CAST": "casts are not supported; types are inferred from the source schema",
    "TRY_CAST": "casts are not supported; types are inferred from the source schema",
    "MOD": "modulo is not supported",
}


@dataclass(frozen=True)
class Token:
    kind: str  # ident | keyword | int | float | string | op | ( | ) | , | eof
    text: str  # source text of the token
    pos: int
    value: Any = None


def error(message: str, fragment: str, pos: int | None, fix: str | None = None) -> ExpressionError:
    return ExpressionError(message, fragment=fragment, position=pos, fix=fix)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _word_end(text: str, i: int) -> int:
    while i < len(text) and _is_word_char(text[i]):
        i += 1
    return i


def _scan_quoted(text: str, i: int, quote: str) -> str:
    """Fragment of a quoted run starting at ``text[i] == quote``, closing quote included."""
    end = text.find(quote, i + 1)
    return text[i:] if end < 0 else text[i:end + 1]


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\n\r":
            i += 1
            continue
        start = i
        if ord(ch) < 32 or ord(ch) == 127:
            raise error(f"control character U+{ord(ch):04X} is not allowed", ch, i, "remove it")
        if ord(ch) > 127:
            if _is_word_char(ch):
                word = text[i:_word_end(text, i)]
                raise error(f"non-ASCII character U+{ord(ch):04X} in a name", word, i, _NAME_FIX)
            raise error(f"non-ASCII character U+{ord(ch):04X} is not allowed outside string literals",
                        ch, i, "use plain ASCII operators and spaces; look-alike characters are refused")
        if ch.isalpha() or ch == "_":
            tokens.append(_scan_word(text, i))
            i += len(tokens[-1].text)
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            tokens.append(_scan_number(text, i))
            i += len(tokens[-1].text)
            continue
        if ch == "'":
            tokens.append(_scan_string(text, i))
            i += len(tokens[-1].text)
            continue
        two = text[i:i + 2]
        if two == "--" or two == "/*" or two == "*/":
            raise error("SQL comments are not allowed", two, i, "remove the comment")
        if two == "||":
            raise error("string concatenation '||' is not supported", two, i)
        if two == "::":
            raise error("'::' casts are not supported", two, i,
                        "types are inferred from the source schema; remove the cast")
        if two == "==":
            raise error("'==' is not an operator", two, i, "use '=' for equality")
        if two in ("!=", "<>", "<=", ">="):
            tokens.append(Token("op", two, i))
            i += 2
            continue
        if ch in "=<>+-*/":
            tokens.append(Token("op", ch, i))
            i += 1
            continue
        if ch in "(),":
            tokens.append(Token(ch, ch, i))
            i += 1
            continue
        if ch == ";":
            raise error("';' (statement separator) is not allowed", ch, i,
                        "an expression is a single value; remove the ';' and anything after it")
        if ch == '"':
            raise error("double-quoted identifiers are not supported", _scan_quoted(text, i, '"'), i,
                        _NAME_FIX)
        if ch == "`":
            raise error("backtick-quoted identifiers are not supported", _scan_quoted(text, i, "`"), i,
                        _NAME_FIX)
        if ch in "$?":
            end = _word_end(text, i + 1)
            raise error("query parameters are not supported", text[i:end], i,
                        "write the value as a literal")
        if ch == ".":
            raise error("dotted names are not supported", ch, i, _NAME_FIX)
        if ch == "%":
            raise error("modulo '%' is not supported", ch, i)
        raise error(f"unexpected character {ch!r}", ch, start,
                    "the subset has + - * / = != <> < <= > >= ( ) , and quotes '...' only")
    tokens.append(Token("eof", "", n))
    return tokens


def _scan_word(text: str, i: int) -> Token:
    end = _word_end(text, i)
    word = text[i:end]
    if end < len(text) and text[end] == "." and end + 1 < len(text) and _is_word_char(text[end + 1]):
        dotted_end = _word_end(text, end + 1)
        raise error("dotted names are not supported", text[i:dotted_end], i, _NAME_FIX)
    bad = next((c for c in word if ord(c) > 127), None)
    if bad is not None:
        raise error(f"non-ASCII character U+{ord(bad):04X} in a name", word, i, _NAME_FIX)
    if len(word) > MAX_IDENTIFIER_LENGTH:
        raise error(f"name longer than {MAX_IDENTIFIER_LENGTH} characters", word, i,
                    "rename the column in the source")
    upper = word.upper()
    if upper in KEYWORDS:
        return Token("keyword", word, i, upper)
    if upper in _SQL_KEYWORDS:
        fix = _SQL_KEYWORDS[upper] or (
            "only the portable subset is allowed (see parity.registry.expr); "
            "a column with this name must be renamed in the source")
        raise error(f"SQL keyword {upper} is not part of the expression subset", word, i, fix)
    return Token("ident", word, i, word)


def _scan_number(text: str, i: int) -> Token:
    n = len(text)
    j = i
    while j < n and text[j].isdigit() and ord(text[j]) < 128:
        j += 1
    is_float = False
    if j < n and text[j] == "." and j + 1 < n and text[j + 1].isdigit():
        is_float = True
        j += 1
        while j < n and text[j].isdigit() and ord(text[j]) < 128:
            j += 1
    if j < n and (_is_word_char(text[j]) or text[j] == "."):
        end = j
        while end < n and (_is_word_char(text[end]) or text[end] == "."):
            end += 1
        bad = text[i:end]
        if bad.startswith("."):
            raise error("malformed number", bad, i, f"write a digit before the point: 0{bad}")
        if any(c in "eE" for c in bad[j - i:j - i + 1]):
            raise error("exponent notation is not supported", bad, i, "write the number out in full")
        raise error("malformed number", bad, i, "numbers are digits with an optional .fraction")
    literal = text[i:j]
    if is_float:
        value = float(literal)
        if not math.isfinite(value):
            raise error("number out of range", literal, i)
        return Token("float", literal, i, value)
    return Token("int", literal, i, int(literal))


def _scan_string(text: str, i: int) -> Token:
    j = i + 1
    chars: list[str] = []
    n = len(text)
    while j < n:
        ch = text[j]
        if ch == "'":
            if j + 1 < n and text[j + 1] == "'":
                chars.append("'")
                j += 2
                continue
            return Token("string", text[i:j + 1], i, "".join(chars))
        problem = string_char_problem(ch)
        if problem is not None:
            raise error(problem + " in a string literal", ch, j, "remove it")
        chars.append(ch)
        j += 1
    raise error("unterminated string literal", text[i:i + 32], i,
                "close the string with ' (write '' for a quote inside it)")

"""Metadata filters (`--where`, the `where=` argument, the HTTP API): a small grammar compiled to SQL.

Why a grammar and not a blocklist of dangerous SQL: DuckDB's SQL is large and grows with every release
(table functions that read files, casts whose errors print their input, URLs that install extensions),
so a list of forbidden words is only as safe as our memory of it. Here every byte of SQL is written by
this module: quoted names of columns the caller listed, a fixed set of operators, and `?` placeholders.
The user's values are bound as parameters, so no spelling of a value can become code, and anything the
grammar does not describe is refused. `locked_down_connection` is the second wall: should SQL ever get
through, the connection still cannot touch files, fetch or load extensions, or unlock itself.

    expr      := or_expr
    or_expr   := and_expr (OR and_expr)*
    and_expr  := not_expr (AND not_expr)*
    not_expr  := NOT not_expr | '(' expr ')' | predicate
    predicate := column (= | == | != | <> | < | <= | > | >=) literal
               | column [NOT] IN '(' literal (',' literal)* ')'
               | column [NOT] LIKE 'pattern' | column [NOT] ILIKE 'pattern'
               | column [NOT] BETWEEN literal AND literal
               | column IS [NOT] NULL
    column    := bare_name | "quoted name"            ("" inside quotes is one ")
    literal   := 'string' ('' inside is one ') | number | TRUE | FALSE

Keywords are case-insensitive; a bare column name matches exactly first, else case-insensitively if that
is unambiguous.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb

# The filter may arrive from the network: bound the work a single request can ask for.
MAX_LENGTH = 4096
MAX_PREDICATES = 100
MAX_DEPTH = 32  # nested parentheses and NOTs; also keeps the recursive parser far from Python's limit

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "BETWEEN", "IS", "NULL", "TRUE", "FALSE"})
_COMPARISONS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

# Column types as `DESCRIBE` names them, by the kind of literal they compare with. UHUGEINT is left out:
# DuckDB cannot compare it with a BIGINT without a conversion error. Other types (lists, dates, ...) only
# take IS [NOT] NULL.
_NUMBER_TYPES = frozenset({
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
    "FLOAT", "REAL", "DOUBLE", "INT", "INT8", "FLOAT8",
})  # fmt: skip
_STRING_TYPES = frozenset({"VARCHAR", "TEXT", "STRING"})
_BOOLEAN_TYPES = frozenset({"BOOLEAN", "BOOL"})

# Typed placeholders: a bare `?` that took the column's type would turn 2.5 into an INTEGER (rounding) and
# fail to convert -1 to UBIGINT; with a fixed type, DuckDB's usual comparison promotion applies.
_PLACEHOLDER = {
    bool: "CAST(? AS BOOLEAN)", int: "CAST(? AS BIGINT)", float: "CAST(? AS DOUBLE)", str: "CAST(? AS VARCHAR)"
}  # fmt: skip
_KIND = {bool: "boolean", int: "number", float: "number", str: "string"}

_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)(?![A-Za-z0-9_.])
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<string>'[^']*(?:''[^']*)*')
    |(?P<quoted>"[^"]*(?:""[^"]*)*")
    |(?P<op><=|>=|<>|!=|==|=|<|>)
    |(?P<punct>[(),])""",
    re.VERBOSE,
)


class FilterError(ValueError):
    """A filter the grammar refuses; the message quotes only the filter's own text and column names."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"{message} (at character {position})")
        self.position = position


@dataclass(frozen=True)
class CompiledFilter:
    sql: str  # boolean SQL over quoted known columns and `?` placeholders only
    params: tuple  # values for the placeholders, in order
    columns: frozenset[str]  # the columns it references


class _Token(NamedTuple):
    kind: str  # number, word, keyword, string, quoted, op, punct, end
    text: str
    pos: int

    @property
    def key(self) -> str | None:
        """What the grammar matches on: upper-cased keywords and the punctuation itself; None for names and values."""
        return self.text.upper() if self.kind in ("keyword", "op", "punct") else None


def quote_identifier(name: str) -> str:
    """`name` as a SQL identifier that DuckDB reads back as exactly `name`."""
    if not name or "\x00" in name:
        raise ValueError("an identifier must be non-empty and contain no NUL character")
    return '"' + name.replace('"', '""') + '"'


def _shown(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:30] + "...")


def _unreadable(text: str, pos: int) -> FilterError:
    """Why no token starts at `pos`: name the SQL habits people try, else the character."""
    rest = text[pos:]
    if rest.startswith(("--", "/*")):
        return FilterError("comments are not allowed in a filter", pos)
    if rest[0] == ";":
        return FilterError("';' is not allowed: a filter is a single condition", pos)
    if rest[0] in "'\"":
        return FilterError("unterminated " + ("string" if rest[0] == "'" else "quoted name"), pos)
    if re.match(r"[+-]?\.?[0-9]", rest):
        return FilterError(f"malformed number {_shown(rest.split()[0])}", pos)
    return FilterError(f"unexpected character {rest[0]!r}", pos)


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _unreadable(text, pos)
        kind = m.lastgroup
        if kind == "word" and m.group().upper() in _KEYWORDS:
            kind = "keyword"
        if kind != "space":
            tokens.append(_Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _check_text(text: str) -> None:
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if "\x00" in text:
        raise FilterError("NUL characters are not allowed in a filter", text.index("\x00"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: DuckDB could not receive them as a parameter
        raise FilterError("filter is not valid Unicode", e.start) from None


def _number(token: _Token) -> int | float:
    if not re.search(r"[.eE]", token.text):
        value = int(token.text)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise FilterError(f"integer {_shown(token.text)} is outside the 64-bit range", token.pos)
        return value
    value = float(token.text)
    if not math.isfinite(value):
        raise FilterError(f"number {_shown(token.text)} is too large", token.pos)
    return value


def _type_kind(sql_type: str) -> str | None:
    """'number', 'string' or 'boolean': which literals a column of this type compares with; None for others."""
    t = sql_type.strip().upper()
    if t in _NUMBER_TYPES or re.fullmatch(r"(DECIMAL|NUMERIC)(\(\s*\d+\s*,\s*\d+\s*\))?", t):
        return "number"
    if t in _STRING_TYPES:
        return "string"
    return "boolean" if t in _BOOLEAN_TYPES else None


class _Parser:
    """Recursive descent over the token list; each method returns the SQL for what it consumed."""

    def __init__(self, text: str, columns: Mapping[str, str]) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.columns = columns
        self.params: list = []
        self.used: set[str] = set()
        self.depth = 0
        self.predicates = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def accept(self, *keys: str) -> str:
        """Consume the next token if it is one of `keys` and return its key, else return ''."""
        return self.take().key if self.peek().key in keys else ""

    def expect(self, key: str, what: str) -> None:
        if not self.accept(key):
            raise self.expected(what)

    def expected(self, what: str) -> FilterError:
        t = self.peek()
        found = "the end of the filter" if t.kind == "end" else _shown(t.text)
        return FilterError(f"expected {what}, found {found}", t.pos)

    def parse(self) -> str:
        if self.peek().kind == "end":
            raise FilterError("empty filter: expected a condition such as split = 'test'", 0)
        sql = self.or_expr()
        if self.peek().kind != "end":
            raise self.expected("AND, OR or the end of the filter")
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.accept("OR"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        parts = [self.not_expr()]
        while self.accept("AND"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def not_expr(self) -> str:
        t = self.peek()
        if t.key not in ("NOT", "("):
            return self.predicate()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter nests more than {MAX_DEPTH} levels of parentheses and NOT", t.pos)
        self.take()
        if t.key == "NOT":
            sql = f"(NOT {self.not_expr()})"
        else:
            sql = self.or_expr()
            self.expect(")", f"')' to close the '(' at character {t.pos}")
        self.depth -= 1
        return sql

    def predicate(self) -> str:
        self.predicates += 1
        if self.predicates > MAX_PREDICATES:
            raise FilterError(f"filter has more than {MAX_PREDICATES} conditions", self.peek().pos)
        name, kind = self.column()
        # Each predicate is parenthesised so SQL precedence (NOT below =, BETWEEN's AND) cannot regroup it.
        return f"({quote_identifier(name)} {self.condition(name, kind)})"

    def condition(self, name: str, kind: str | None) -> str:
        """What follows the column: the operator and its placeholders."""
        t = self.peek()
        if t.kind == "op":
            self.take()
            return f"{_COMPARISONS[t.text]} {self.literal(name, kind)}"
        if self.accept("IS"):
            negate = "NOT " if self.accept("NOT") else ""
            self.expect("NULL", "NULL" if negate else "NULL or NOT NULL")
            return f"IS {negate}NULL"
        negate = "NOT " if self.accept("NOT") else ""
        if self.accept("IN"):
            self.expect("(", "'(' to open the IN list")
            items = [self.literal(name, kind)]
            while self.accept(","):
                items.append(self.literal(name, kind))
            self.expect(")", "',' or ')' in the IN list")
            return f"{negate}IN ({', '.join(items)})"
        op = self.accept("LIKE", "ILIKE")
        if op:
            if kind != "string":
                raise FilterError(f"{op} needs a string column; {name!r} is {self.columns[name]}", t.pos)
            return f"{negate}{op} {self.literal(name, kind)}"
        if self.accept("BETWEEN"):
            low = self.literal(name, kind)
            self.expect("AND", "AND between the BETWEEN bounds")
            return f"{negate}BETWEEN {low} AND {self.literal(name, kind)}"
        raise self.expected("a comparison (=, !=, <, <=, >, >=), IN, LIKE, ILIKE, BETWEEN or IS")

    def column(self) -> tuple[str, str | None]:
        t = self.peek()
        if t.kind == "word":
            name = t.text
        elif t.kind == "quoted":
            name = t.text[1:-1].replace('""', '"')
        else:
            raise self.expected("a column name")
        self.take()
        if t.kind == "word" and self.peek().key == "(":
            raise FilterError(f"function calls such as {t.text}(...) are not allowed; start with a column name", t.pos)
        resolved = self.resolve(name, t.pos)
        self.used.add(resolved)
        return resolved, _type_kind(self.columns[resolved])

    def resolve(self, name: str, pos: int) -> str:
        if name in self.columns:
            return name
        matches = [c for c in self.columns if c.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise FilterError(f"column {name!r} is ambiguous: write one of {', '.join(sorted(matches))} exactly", pos)
        known = ", ".join(sorted(self.columns))
        raise FilterError(f"unknown column {name!r}; known columns: {known}", pos)

    def literal(self, name: str, column_kind: str | None) -> str:
        """Bind the next literal as a parameter, if its kind fits the column; return its placeholder."""
        t = self.peek()
        if t.kind == "string":
            value = t.text[1:-1].replace("''", "'")
        elif t.kind == "number":
            value = _number(t)
        elif t.key in ("TRUE", "FALSE"):
            value = t.key == "TRUE"
        else:
            raise self.expected("a value: a 'string', a number, TRUE or FALSE")
        self.take()
        sql_type = self.columns[name]
        if column_kind is None:
            raise FilterError(f"column {name!r} has type {sql_type}, which filters can only test with IS NULL", t.pos)
        if _KIND[type(value)] != column_kind:
            shown = t.text if len(t.text) <= 30 else t.text[:30] + "..."
            given = f"the {_KIND[type(value)]} {shown}"
            raise FilterError(f"column {name!r} is {sql_type}, so it compares with a {column_kind}, not {given}", t.pos)
        self.params.append(value)
        return _PLACEHOLDER[type(value)]


def compile_filter(text: str, columns: Mapping[str, str]) -> CompiledFilter:
    """Compile a filter over `columns` (name -> DuckDB type as `DESCRIBE items` reports it), or raise FilterError."""
    _check_text(text)
    parser = _Parser(text, columns)
    sql = parser.parse()
    return CompiledFilter(sql=sql, params=tuple(parser.params), columns=frozenset(parser.used))


# Every setting a query could use to reach outside the database file. Given at connect time (some, like
# allow_community_extensions, can only be set then), and lock_configuration makes SET/RESET fail afterwards.
LOCKED_DOWN_CONFIG = {
    "enable_external_access": False,  # no file reads/writes besides the database, no COPY, ATTACH, httpfs
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "lock_configuration": True,
}


def locked_down_connection(path: str | Path, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection to the database file at `path` that cannot reach anything else nor be unlocked by SQL.

    The file is attached to a private in-memory database rather than opened with duckdb.connect(path):
    DuckDB shares one instance per path within a process, so a server that reopens an index after
    `retr index add` replaced metadata.duckdb would otherwise be handed the old file's instance. Each
    connection here sees the file as it was when it was opened, and old and new can be open side by side.
    External access is switched off only after the ATTACH (which needs it), then the settings are locked.
    """
    con = duckdb.connect(":memory:", config={k: v for k, v in LOCKED_DOWN_CONFIG.items()
                                             if k not in ("enable_external_access", "lock_configuration")})
    try:
        mode = " (READ_ONLY)" if read_only else ""
        con.execute(f"ATTACH ? AS {ATTACHED_NAME}{mode}", [str(path)])
        con.execute(f"USE {ATTACHED_NAME}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


ATTACHED_NAME = "meta"  # the attached database's name; queries see its tables unqualified after USE

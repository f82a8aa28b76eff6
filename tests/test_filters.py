"""Metadata filters: the grammar selects what the equivalent SQL selects, refuses everything else, and the
locked-down connection refuses file and extension access even to SQL that gets past it.

All tests run against a real 20-row `items` table in a DuckDB file; the property tests compare compiled
filters with a small pure-Python evaluator (SQL's three-valued logic, LIKE as a regex).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from indexing.filters import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_PREDICATES,
    FilterError,
    compile_filter,
    locked_down_connection,
    quote_identifier,
)

WEIRD = 'we"ird col'
CAPTIONS = [
    "a red heart", "A Red Car", "it's a \"quote\"", "back\\slash", "naïve café ☃", "100% sure", "under_score",
    None, "blue sky", "RED alert", "semi;colon -- not a comment", "", "green leaf", "tab\tand\nnewline",
]  # fmt: skip


def _row(i: int) -> dict:
    return {
        "id": i,
        "path": None if i == 13 else f"img/{i:02d}.png",
        "caption": CAPTIONS[i % len(CAPTIONS)],
        "split": None if i == 7 else ("train", "test", "val")[i % 3],
        "score": None if i in (4, 9) else i / 4 - 1.0,
        "flag": None if i == 11 else i % 3 == 0,
        WEIRD: None if i % 5 == 0 else ("x" if i % 2 else "y"),
    }


ROWS = [_row(i) for i in range(20)]
ALL_IDS = [r["id"] for r in ROWS]

# Module-scoped fixtures are shared on purpose; no example database, so runs leave no files behind.
FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("filters") / "metadata.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        f"CREATE TABLE items (id BIGINT, path VARCHAR, caption VARCHAR, split VARCHAR, score DOUBLE, flag BOOLEAN, "
        f"{quote_identifier(WEIRD)} VARCHAR)"
    )
    con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", [list(r.values()) for r in ROWS])
    con.close()  # DuckDB refuses a second configuration for a file that is still open in this process
    return path


@pytest.fixture(scope="module")
def con(db: Path) -> duckdb.DuckDBPyConnection:
    con = locked_down_connection(db)
    yield con
    con.close()


@pytest.fixture(scope="module")
def columns(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    # The way callers are meant to get column types: DESCRIBE on the same connection.
    return {name: sql_type for name, sql_type, *_ in con.execute("DESCRIBE items").fetchall()}


def select_ids(con: duckdb.DuckDBPyConnection, text: str, columns: dict[str, str]) -> list[int]:
    f = compile_filter(text, columns)
    return [r[0] for r in con.execute(f"SELECT id FROM items WHERE {f.sql} ORDER BY id", f.params).fetchall()]


def sql_ids(con: duckdb.DuckDBPyConnection, where: str) -> list[int]:
    return [r[0] for r in con.execute(f"SELECT id FROM items WHERE {where} ORDER BY id").fetchall()]


# --- the grammar selects what hand-written SQL selects

PARITY = [
    ("split = 'test'", "split = 'test'"),
    ("split == 'test'", "split = 'test'"),
    ("split != 'train'", "split <> 'train'"),
    ("split <> 'train'", "split <> 'train'"),
    ("score < 0.5", "score < 0.5"),
    ("score >= 1", "score >= 1"),
    ("id < 2.5", "id < 2.5"),
    ("id IN (1, 3, 5, 19)", "id IN (1, 3, 5, 19)"),
    ("id NOT IN (1, 3, 5)", "id NOT IN (1, 3, 5)"),
    ("caption LIKE '%red%'", "caption LIKE '%red%'"),
    ("path LIKE 'img/1_.png'", "path LIKE 'img/1_.png'"),
    ("caption LIKE '%\\%'", "caption LIKE '%\\%'"),  # a backslash is an ordinary character, not an escape
    ("caption ILIKE '%RED%'", "caption ILIKE '%RED%'"),
    ("split NOT LIKE 't%'", "split NOT LIKE 't%'"),
    ("id BETWEEN 3 AND 7", "id BETWEEN 3 AND 7"),
    ("id NOT BETWEEN 2 AND 17", "id NOT BETWEEN 2 AND 17"),
    ("score IS NULL", "score IS NULL"),
    ("caption IS NOT NULL", "caption IS NOT NULL"),
    ("flag = FALSE", "flag = false"),
    ("split = 'test' OR split = 'val' AND score > 2", "split = 'test' OR (split = 'val' AND score > 2)"),
    ("(split = 'test' OR split = 'val') AND score > 2", "(split = 'test' OR split = 'val') AND score > 2"),
    ("flag = true AND NOT split = 'x'", "flag AND NOT split = 'x'"),
    ("NOT split = 'train' AND id < 10", "(NOT split = 'train') AND id < 10"),
    ("not (split = 'train' and id < 10)", "NOT (split = 'train' AND id < 10)"),
    ("id >= 18 or score <= -0.75", "id >= 18 OR score <= -0.75"),
    ('"we""ird col" = \'x\'', '"we""ird col" = \'x\''),
    ("caption = 'it''s a \"quote\"' OR caption = 'back\\slash' OR caption = 'naïve café ☃'",
     "caption IN ('it''s a \"quote\"', 'back\\slash', 'naïve café ☃')"),
    ("caption = 'semi;colon -- not a comment'", "caption = 'semi;colon -- not a comment'"),
    ("Split = 'test'", "split = 'test'"),
    ("  id<3 OR(id>17)  ", "id < 3 OR id > 17"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "where"), PARITY)
def test_filter_selects_what_sql_selects(con, columns, text: str, where: str) -> None:
    expected = sql_ids(con, where)
    assert 0 < len(expected) < len(ALL_IDS), "each case should keep some rows and drop others"
    assert select_ids(con, text, columns) == expected


def test_compiled_sql_holds_no_literal(columns) -> None:
    f = compile_filter("caption = 'x'' OR 1=1 --' AND id IN (7, -2) AND score BETWEEN 0.5 AND 1e3", columns)
    assert f.params == ("x' OR 1=1 --", 7, -2, 0.5, 1000.0)
    assert "x'" not in f.sql and "7" not in f.sql and "1000" not in f.sql
    assert f.columns == {"caption", "id", "score"}
    assert re.sub(r'"[^"]*"|CAST\(\? AS [A-Z]+\)|[()]|AND|OR|NOT|IN|BETWEEN|=|,|\s', "", f.sql) == ""


# --- refused input

ATTACKS = [
    "id IN (SELECT 1 FROM read_csv('/etc/passwd'))",
    "glob('/root/*') IS NOT NULL",
    "CAST(x AS INT)",
    "path = 'a'; COPY (SELECT 1) TO '{out}'",
    "caption = 'x' -- comment",
    "caption = 'x' /* comment */",
    "INSTALL httpfs",
    "path = (SELECT path FROM items LIMIT 1)",
    "id = id",
    "score = score + 1",
    "path = 'https://example.com/x.csv'::VARCHAR",
    "path LIKE 'a' ESCAPE '\\'",
    "id IN (SELECT unnest(range(3)))",
    "EXISTS (SELECT 1)",
    "1 = 1",
    "id = 1 OR TRUE",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_are_refused(columns, tmp_path: Path, attack: str) -> None:
    out = tmp_path / "x.csv"
    with pytest.raises(FilterError, match=r"at character \d+"):
        compile_filter(attack.format(out=out), columns)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "attack",
    [
        "id IN (SELECT 1 FROM read_csv('/etc/passwd'))",
        "(SELECT count(*) FROM glob('/etc/*')) > 0",
        "path = 'a'; COPY (SELECT 1) TO '{out}'",
        "id IN (SELECT 1 FROM 'https://example.com/x.csv')",
        "path = 'a'; INSTALL httpfs",
    ],
)
def test_locked_connection_stops_raw_sql_attacks(con, tmp_path: Path, attack: str) -> None:
    # Defence in depth: the same SQL pasted unfiltered still cannot reach a file or the network.
    out = tmp_path / "x.csv"
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT id FROM items WHERE {attack.format(out=out)}").fetchall()
    assert not out.exists()


ERRORS = [
    ("", 0, "empty filter"),
    ("nope = 1", 0, "unknown column 'nope'; known columns: caption, flag, id, path, score, split, we\"ird col"),
    ("id = 'abc'", 5, "column 'id' is BIGINT, so it compares with a number, not the string 'abc'"),
    ("path = 5", 7, "column 'path' is VARCHAR, so it compares with a string, not the number 5"),
    ("flag = 1", 7, "compares with a boolean"),
    ("score LIKE '1%'", 6, "LIKE needs a string column; 'score' is DOUBLE"),
    ("(id = 1", 7, "expected ')' to close the '(' at character 0, found the end of the filter"),
    ("id = 1)", 6, "expected AND, OR or the end of the filter, found ')'"),
    ("path = 'abc", 7, "unterminated string"),
    ('"path = 1', 0, "unterminated quoted name"),
    ("id = 1.2.3", 5, "malformed number"),
    ("id = 9223372036854775808", 5, "outside the 64-bit range"),
    ("id = -9223372036854775809", 5, "outside the 64-bit range"),
    ("score > 1e999", 8, "too large"),
    ("score > nan", 8, "expected a value"),
    ("score > 'inf'", 8, "compares with a number, not the string"),
    ("id = 1 and", 10, "expected a column name, found the end of the filter"),
    ("id between 1", 12, "expected AND between the BETWEEN bounds"),
    ("id is 1", 6, "expected NULL or NOT NULL"),
    ("id 1", 3, "expected a comparison"),
    ("id = ", 5, "expected a value"),
    ("id IN ()", 7, "expected a value"),
    ("id IN (1 2)", 9, "expected ',' or ')' in the IN list"),
    ("lower(path) = 'a'", 0, "function calls such as lower(...) are not allowed"),
    ("id = 1 # x", 7, "unexpected character '#'"),
    ("id = \x00", 5, "NUL characters are not allowed"),
    ("path = '\ud800'", 8, "not valid Unicode"),
]


@pytest.mark.parametrize(("text", "position", "message"), ERRORS)
def test_errors_say_where_and_what(columns, text: str, position: int, message: str) -> None:
    with pytest.raises(FilterError) as e:
        compile_filter(text, columns)
    assert e.value.position == position
    assert message in str(e.value)
    assert str(e.value).endswith(f"(at character {position})")


def test_limits(con, columns) -> None:
    at_limit = " OR ".join(f"id = {i % 20}" for i in range(MAX_PREDICATES))
    assert select_ids(con, at_limit, columns) == ALL_IDS
    with pytest.raises(FilterError, match=f"more than {MAX_PREDICATES} conditions"):
        compile_filter(at_limit + " OR id = 1", columns)
    deepest = "(" * MAX_DEPTH + "id = 1" + ")" * MAX_DEPTH
    assert select_ids(con, deepest, columns) == [1]
    with pytest.raises(FilterError, match=f"more than {MAX_DEPTH} levels"):
        compile_filter("(" + deepest + ")", columns)
    with pytest.raises(FilterError, match=f"more than {MAX_DEPTH} levels"):
        compile_filter("NOT " * (MAX_DEPTH + 1) + "id = 1", columns)
    with pytest.raises(FilterError, match=f"the limit is {MAX_LENGTH}"):
        compile_filter("id = 1" + " " * MAX_LENGTH, columns)


OTHER_TYPES = {"n": "INTEGER", "u": "UBIGINT", "d": "DECIMAL(18,3)", "r": "REAL", "tags": "VARCHAR[]", "t": "TIMESTAMP"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n < 2.5", [0, 1]),  # 2.5 is not rounded to an INTEGER
        ("n >= 9223372036854775807 OR n <= -9223372036854775808", []),
        ("u > -1", [0, 1]),  # -1 is not converted to UBIGINT (which would fail)
        ("u >= 9223372036854775807 AND u > -9223372036854775808", [1]),
        ("d BETWEEN -1 AND 0.5", [0]),
        ("d > 1e300 OR r < -1e300", []),
        ("tags IS NULL AND t IS NOT NULL", [1]),
    ],
)
def test_other_numeric_types_compare_without_conversion_errors(text: str, expected: list[int]) -> None:
    with duckdb.connect() as mem:
        mem.execute("CREATE TABLE items (id BIGINT, n INTEGER, u UBIGINT, d DECIMAL(18,3), r REAL, tags VARCHAR[], "
                    "t TIMESTAMP)")  # fmt: skip
        mem.execute("INSERT INTO items VALUES (0, 1, 0, 0.25, 1.5, ['a'], NULL), "
                    "(1, 2, 18446744073709551615, 3.5, -2, NULL, TIMESTAMP '2024-01-01')")  # fmt: skip
        f = compile_filter(text, OTHER_TYPES)
        rows = mem.execute(f"SELECT id FROM items WHERE {f.sql} ORDER BY id", f.params).fetchall()
    assert [r[0] for r in rows] == expected


def test_unsupported_types_and_ambiguous_names() -> None:
    with pytest.raises(FilterError, match="'tags' has type VARCHAR\\[\\], which filters can only test with IS NULL"):
        compile_filter("tags = 'a'", OTHER_TYPES)
    with pytest.raises(FilterError, match="ambiguous"):
        compile_filter("ab = 1", {"Ab": "INTEGER", "aB": "INTEGER"})
    assert compile_filter("aB = 1", {"Ab": "INTEGER", "aB": "INTEGER"}).columns == {"aB"}


# --- quote_identifier


def test_quote_identifier_refuses_nul_and_empty() -> None:
    assert quote_identifier('a"b') == '"a""b"'
    for bad in ("", "a\x00b"):
        with pytest.raises(ValueError):
            quote_identifier(bad)


@pytest.fixture(scope="module")
def memory() -> duckdb.DuckDBPyConnection:
    with duckdb.connect() as mem:
        yield mem


@settings(FAST, max_examples=200)
@given(name=st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1, max_size=30))
def test_quote_identifier_round_trips(memory, name: str) -> None:
    memory.execute(f"CREATE OR REPLACE TABLE t ({quote_identifier(name)} INTEGER)")
    assert [r[0] for r in memory.execute("DESCRIBE t").fetchall()] == [name]
    assert compile_filter(quote_identifier(name) + " = 1", {name: "INTEGER"}).columns == {name}


# --- properties: any text is compiled safely or refused; well-formed filters mean what they say

STRING_COLUMNS = ["path", "caption", "split", WEIRD]
HOSTILE = st.text(st.sampled_from(list("ab'\";-/*%_\\ é☃\nRrEed")), max_size=8)
STRINGS = st.one_of(st.sampled_from([v for r in ROWS for v in (r["caption"], r["split"], r["path"]) if v]), HOSTILE)
ASCII_PATTERN = st.text(st.sampled_from(list("aeRrdD %_'")), max_size=6)  # ILIKE: where both case maps agree
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(-3, 22), st.floats(allow_nan=False, allow_infinity=False)
)
OPS = ["=", "==", "!=", "<>", "<", "<=", ">", ">="]


def _literals(column: str) -> st.SearchStrategy:
    if column in ("id", "score"):
        return NUMBERS
    return st.booleans() if column == "flag" else STRINGS


@st.composite
def predicates(draw: st.DrawFn) -> tuple:
    column = draw(st.sampled_from(["id", "score", "flag", *STRING_COLUMNS]))
    lit = _literals(column)
    forms = ["cmp", "in", "between", "null"] + (["like", "ilike"] if column in STRING_COLUMNS else [])
    form = draw(st.sampled_from(forms))
    negate = draw(st.booleans())
    if form == "cmp":
        return ("cmp", column, draw(st.sampled_from(OPS)), draw(lit))
    if form == "in":
        return ("in", column, negate, draw(st.lists(lit, min_size=1, max_size=4)))
    if form == "between":
        return ("between", column, negate, draw(lit), draw(lit))
    if form == "null":
        return ("null", column, negate)
    pattern = draw(HOSTILE if form == "like" else ASCII_PATTERN)
    return (form, column, negate, pattern)


EXPRESSIONS = st.recursive(
    predicates(),
    lambda sub: st.one_of(
        st.tuples(st.just("and"), sub, sub), st.tuples(st.just("or"), sub, sub), st.tuples(st.just("not"), sub)
    ),
    max_leaves=8,
)


def render_literal(value) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + value.replace("'", "''") + "'"


def render(node: tuple) -> str:
    """Filter text with the fewest parentheses the grammar's precedence allows."""
    kind = node[0]
    if kind in ("and", "or"):
        parts = [render(c) if c[0] not in ("and", "or") or c[0] == kind or kind == "or" else f"({render(c)})"
                 for c in node[1:]]  # fmt: skip
        return f" {kind.upper()} ".join(parts)
    if kind == "not":
        inner = render(node[1])
        return f"NOT ({inner})" if node[1][0] in ("and", "or") else f"not {inner}"
    column = quote_identifier(node[1]) if node[1] == WEIRD else node[1]
    neg = "NOT " if len(node) > 2 and node[2] is True and kind != "cmp" else ""
    if kind == "cmp":
        return f"{column} {node[2]} {render_literal(node[3])}"
    if kind == "in":
        return f"{column} {neg}IN ({', '.join(render_literal(v) for v in node[3])})"
    if kind == "between":
        return f"{column} {neg}BETWEEN {render_literal(node[3])} AND {render_literal(node[4])}"
    if kind == "null":
        return f"{column} IS {neg}NULL"
    return f"{column} {neg}{kind.upper()} {render_literal(node[3])}"


def _compare(a, op: str, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):  # SQL compares BIGINT with DOUBLE as DOUBLE
        a, b = float(a), float(b)
    return {"=": a == b, "==": a == b, "!=": a != b, "<>": a != b, "<": a < b, "<=": a <= b, ">": a > b,
            ">=": a >= b}[op]  # fmt: skip


def _like(value: str, pattern: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    if fold:
        value, regex = value.lower(), regex.lower()
    return re.fullmatch(regex, value, re.DOTALL) is not None


def evaluate(node: tuple, row: dict) -> bool | None:
    """SQL's three-valued result of a filter on one row (None is NULL)."""
    kind = node[0]
    if kind == "not":
        inner = evaluate(node[1], row)
        return None if inner is None else not inner
    if kind in ("and", "or"):
        a, b = evaluate(node[1], row), evaluate(node[2], row)
        decisive = kind == "or"  # TRUE decides an OR, FALSE decides an AND
        if decisive in (a, b):
            return decisive
        return None if None in (a, b) else not decisive
    value = row[node[1]]
    if kind == "null":
        return (value is not None) if node[2] else (value is None)
    if value is None:
        return None
    if kind == "cmp":
        return _compare(value, node[2], node[3])
    if kind == "in":
        return any(_compare(value, "=", v) for v in node[3]) != node[2]
    if kind == "between":
        return (_compare(value, ">=", node[3]) and _compare(value, "<=", node[4])) != node[2]
    return _like(value, node[3], fold=kind == "ilike") != node[2]


@settings(FAST, max_examples=300)
@given(node=EXPRESSIONS)
def test_generated_filters_match_reference(con, columns, node: tuple) -> None:
    expected = [r["id"] for r in ROWS if evaluate(node, r) is True]
    assert select_ids(con, render(node), columns) == expected


TOKENS = [
    "id", "path", "caption", "split", "score", "flag", '"we""ird col"', "nope", "AND", "or", "NOT", "IN", "LIKE",
    "ILIKE", "BETWEEN", "IS", "NULL", "TRUE", "false", "(", ")", ",", "=", "==", "!=", "<>", "<", "<=", ">", ">=",
    "'test'", "'%e%'", "'it''s'", "1", "-2.5", "1e3", "9223372036854775807", "'", '"', ";", "--", "/*", "*/",
    "SELECT", "read_csv('/etc/passwd')", "glob", "::", "||", "+", "COPY", "'/tmp/x.csv'", "\\", "é", "\n",
]  # fmt: skip


@st.composite
def near_filters(draw: st.DrawFn) -> str:
    """A well-formed filter with one token pasted in somewhere: mostly refused, sometimes still valid."""
    text = render(draw(EXPRESSIONS))
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]


TOKEN_SOUP = st.lists(st.sampled_from(TOKENS), max_size=14).flatmap(
    lambda ts: st.sampled_from([" ", ""]).map(lambda sep: sep.join(ts))
)


@settings(FAST, max_examples=400)
@given(text=st.one_of(st.text(max_size=80), TOKEN_SOUP, near_filters()))
def test_any_text_compiles_safely_or_is_refused(con, columns, db: Path, text: str) -> None:
    before = sorted(os.listdir(db.parent))
    try:
        f = compile_filter(text, columns)
    except FilterError:
        event("refused")
        return
    event("compiled")
    ids = [r[0] for r in con.execute(f"SELECT id FROM items WHERE {f.sql}", f.params).fetchall()]
    assert set(ids) <= set(ALL_IDS)
    assert f.sql.count("?") == len(f.params)
    assert sorted(os.listdir(db.parent)) == before


# --- locked_down_connection


def test_locked_connection_reads_items(con) -> None:
    assert con.execute("SELECT count(*) FROM items").fetchone()[0] == len(ROWS)
    settings_now = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    assert settings_now["enable_external_access"] == "false"
    assert settings_now["autoload_known_extensions"] == "false"
    assert settings_now["autoinstall_known_extensions"] == "false"
    assert settings_now["lock_configuration"] == "true"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/root/*')",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "SET autoinstall_known_extensions = true",
        "SET allowed_directories = ['/']",
        "INSTALL httpfs",
        "LOAD httpfs",
        "ATTACH '/tmp/other.duckdb'",
    ],
)
def test_locked_connection_refuses(con, sql: str) -> None:
    with pytest.raises(duckdb.Error):
        con.execute(sql).fetchall()


def test_writable_locked_connection_cannot_copy_out(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    out = tmp_path / "x.csv"
    with locked_down_connection(db, read_only=False) as con:
        con.execute("CREATE TABLE items (id BIGINT)")
        con.execute("INSERT INTO items VALUES (1), (2)")
        assert con.execute("SELECT sum(id) FROM items").fetchone()[0] == 3
        for sql in (f"COPY items TO '{out}'", f"COPY (SELECT 1) TO '{out}' (FORMAT csv)", f"EXPORT DATABASE '{out}'"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("w.duckdb")) == []

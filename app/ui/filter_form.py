"""The sidebar's filter widgets, as data: which widget each metadata column gets, and the `where`
text (indexing.filters grammar) that the chosen values mean.

Pure functions, so the UI only draws what `filter_fields` returns and passes on what `where_text` writes.
Every value is written as a quoted literal and every column as a quoted name, so a value such as
`it's` or a column such as `my col` cannot change the filter's meaning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from indexing.filters import quote_identifier

# Bookkeeping columns a person never filters on (where vectors live, content hashes).
INTERNAL_COLUMNS = frozenset({"id", "chunk", "row", "segment", "sha256", "phash"})
# Free text by nature, however few values a small index has: these get a "contains" box.
FREE_TEXT_COLUMNS = frozenset({"path", "caption", "url"})
# A string column with at most this many distinct values gets a multiselect; more read as free text
# (captions, paths), which get a "contains" box instead.
MAX_CHOICES = 30

_INT_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                        "UINTEGER", "UBIGINT", "INT", "INT8"})
_FLOAT_TYPES = frozenset({"FLOAT", "REAL", "DOUBLE", "FLOAT8"})
_STRING_TYPES = frozenset({"VARCHAR", "TEXT", "STRING"})
_BOOL_TYPES = frozenset({"BOOLEAN", "BOOL"})


@dataclass(frozen=True)
class FilterField:
    column: str
    kind: str  # "choice" (multiselect), "range" (slider), "contains" (text box) or "flag" (any / yes / no)
    options: tuple = ()  # choice: the values seen, sorted; range: (low, high) seen


def quote_string(value: str) -> str:
    """`value` as a filter string literal ('' inside is one ')."""
    return "'" + value.replace("'", "''") + "'"


def _number(value: int | float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"a filter bound must be a finite number, got {value!r}")
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


def filter_fields(column_types: Mapping[str, str], sample: Sequence[Mapping]) -> list[FilterField]:
    """One widget per filterable column, judged on `sample` (rows of the metadata table). A column whose
    sample holds no value, or one number only, gets none: there is nothing to choose between."""
    fields = []
    for column, sql_type in column_types.items():
        t = sql_type.strip().upper()
        if column in INTERNAL_COLUMNS:
            continue
        values = [r[column] for r in sample if r.get(column) is not None]
        if t in _STRING_TYPES and values:
            seen = sorted(set(map(str, values)))
            if len(seen) <= MAX_CHOICES and column not in FREE_TEXT_COLUMNS:
                fields.append(FilterField(column, "choice", tuple(seen)))
            else:
                fields.append(FilterField(column, "contains"))
        elif t in _INT_TYPES | _FLOAT_TYPES and values:
            cast = int if t in _INT_TYPES else float
            finite = [cast(v) for v in values if math.isfinite(v)]
            if finite and min(finite) < max(finite):
                fields.append(FilterField(column, "range", (min(finite), max(finite))))
        elif t in _BOOL_TYPES and values:
            fields.append(FilterField(column, "flag"))
    return fields


def field_clause(field: FilterField, choice: object) -> str | None:
    """The condition one widget's value stands for; None when it leaves the column unfiltered."""
    col = quote_identifier(field.column)
    if field.kind == "choice":
        values = list(choice or ())
        return f"{col} IN ({', '.join(quote_string(str(v)) for v in values)})" if values else None
    if field.kind == "range":
        if choice is None:
            return None
        low, high = choice
        # The sample's ends stand for "no bound": items beyond what the sample saw stay in.
        cut_low, cut_high = low > field.options[0], high < field.options[1]
        if cut_low and cut_high:
            return f"{col} BETWEEN {_number(low)} AND {_number(high)}"
        if cut_low:
            return f"{col} >= {_number(low)}"
        return f"{col} <= {_number(high)}" if cut_high else None
    if field.kind == "contains":
        text = str(choice or "").strip()
        return f"{col} ILIKE {quote_string('%' + text + '%')}" if text else None
    if field.kind == "flag":
        return {"yes": f"{col} = TRUE", "no": f"{col} = FALSE"}.get(str(choice))
    raise ValueError(f"unknown filter field kind {field.kind!r}")


def where_text(fields: Sequence[FilterField], choices: Mapping[str, object], extra: str = "") -> str | None:
    """All widget conditions ANDed, plus a hand-written filter `extra` in parentheses; None for no filter."""
    parts = [c for f in fields if (c := field_clause(f, choices.get(f.column))) is not None]
    if extra.strip():
        parts.append(f"({extra.strip()})")
    return " AND ".join(parts) or None

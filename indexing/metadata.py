"""Item metadata in an embedded DuckDB file next to the index (`metadata.duckdb`).

Tables: `items` (one row per image: id, path, first caption, size, where its vector is, and every
source column kept as metadata) and `captions` (one row per caption: cid, the image's id, the text,
where its vector is). Indexes built before `captions` existed have only `items`; readers then take
each image's one caption from there.

Written atomically (a fresh file, or a copy for appends, then os.replace). Nothing from the data
reaches SQL text: rows arrive as registered Arrow tables and column names are quoted. Readers open
the file through a locked-down connection and see only the segments `index.json` has committed, so
an add killed between replacing this file and writing index.json shows nothing it had not finished.
Filters come from `indexing.filters` (a grammar compiled to parameters), never as SQL.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from indexing.atomic import atomic_path
from indexing.filters import ATTACHED_NAME, FilterError, compile_filter, locked_down_connection, quote_identifier

TABLE = "items"
CAPTIONS = "captions"
_IN_LIST_MAX = 256  # ids bound one by one as parameters; more are joined as a registered Arrow table
# The caption rows of an index built before the captions table: one per captioned image, cid = id.
_LEGACY_CAPTIONS = (f"(SELECT id AS cid, id, caption, chunk, row, segment FROM {TABLE} "
                    "WHERE caption IS NOT NULL AND length(caption) > 0)")


@dataclass(frozen=True)
class SegmentRows:
    """What one embedding segment adds to the database."""

    name: str
    items: pa.Table  # store.item_table rows
    captions: pa.Table  # store.read_segment_captions rows (cid, id, caption, row, chunk)


def _with_segment(table: pa.Table, segment: str) -> pa.Table:
    return table.append_column("segment", pa.array([segment] * table.num_rows, pa.string()))


def _caption_rows(seg: SegmentRows) -> pa.Table:
    t = seg.captions.select(["cid", "id", "caption", "chunk", "row"])
    return _with_segment(t.cast(pa.schema([("cid", pa.int64()), ("id", pa.int64()), ("caption", pa.string()),
                                           ("chunk", pa.int64()), ("row", pa.int64())])), seg.name)


def write_metadata(db_path: Path, segments: Sequence[SegmentRows]) -> None:
    """Create metadata.duckdb from the segments' item and caption rows."""
    items = pa.concat_tables([_with_segment(s.items, s.name) for s in segments], promote_options="default")
    captions = pa.concat_tables([_caption_rows(s) for s in segments])
    with atomic_path(db_path) as tmp:
        tmp.unlink()  # duckdb wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            con.register("incoming", items)
            con.execute(f"CREATE TABLE {TABLE} AS SELECT * FROM incoming ORDER BY id")
            con.execute(f"CREATE UNIQUE INDEX {TABLE}_id ON {TABLE}(id)")
            con.register("incoming_captions", captions)
            con.execute(f"CREATE TABLE {CAPTIONS} AS SELECT * FROM incoming_captions ORDER BY cid")
            con.execute(f"CREATE UNIQUE INDEX {CAPTIONS}_cid ON {CAPTIONS}(cid)")
        finally:
            con.close()


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()[0][0])


def _add_columns(con: duckdb.DuckDBPyConnection, incoming: str) -> None:
    """Give `items` the incoming rows' new columns, typed as DuckDB reads them; refuse clashing types."""
    existing = {r[0]: r[1] for r in con.execute(f"DESCRIBE {TABLE}").fetchall()}
    new = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {incoming}").fetchall()}
    clash = [f"{n!r} is {existing[n]} in the index, {t} in the new rows" for n, t in new.items()
             if n in existing and existing[n] != t and t != '"NULL"' and not _widens(t, existing[n])]
    if clash:
        raise ValueError("cannot add these rows: column types differ: " + "; ".join(clash))
    for name, sql_type in new.items():
        if name not in existing:
            con.execute(f"ALTER TABLE {TABLE} ADD COLUMN {quote_identifier(name)} {_safe_type(sql_type)}")


_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "BOOLEAN")


def _widens(new: str, old: str) -> bool:
    """New rows whose type DuckDB casts into the column without loss of meaning (ints into DOUBLE)."""
    return new in _NUMERIC and old in ("BIGINT", "DOUBLE", "HUGEINT") or new == old


def _safe_type(sql_type: str) -> str:
    """DESCRIBE's type name, checked before it goes into DDL (it comes from DuckDB, but never trust text)."""
    if not all(c.isalnum() or c in "_()[], " for c in sql_type):
        raise ValueError(f"unexpected column type {sql_type!r}")
    return sql_type


def append_metadata(db_path: Path, seg: SegmentRows) -> None:
    """Add one segment's rows; the live file is replaced only once the copy is complete."""
    incoming = _with_segment(seg.items, seg.name)
    with atomic_path(db_path) as tmp:
        shutil.copyfile(db_path, tmp)
        con = duckdb.connect(str(tmp))
        try:
            if not _table_exists(con, CAPTIONS):  # an index from before the captions table
                con.execute(f"CREATE TABLE {CAPTIONS} AS SELECT * FROM {_LEGACY_CAPTIONS} ORDER BY cid")
            con.register("incoming", incoming)
            _add_columns(con, "incoming")
            # A killed earlier add may have left this segment's rows behind: replace them.
            con.execute(f"DELETE FROM {TABLE} WHERE segment = ?", [seg.name])
            con.execute(f"DELETE FROM {CAPTIONS} WHERE segment = ?", [seg.name])
            cols = ", ".join(quote_identifier(c) for c in incoming.column_names)
            con.execute(f"INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM incoming")
            con.register("incoming_captions", _caption_rows(seg))
            con.execute(f"INSERT INTO {CAPTIONS} SELECT cid, id, caption, chunk, row, segment FROM incoming_captions")
            con.execute("CHECKPOINT")
        finally:
            con.close()


@dataclass(frozen=True)
class Located:
    """Where each requested id's vector lives in the embedding store."""

    ids: np.ndarray  # (n,) int64, those found, in request order
    segment: list[str]
    chunk: np.ndarray
    row: np.ndarray


class MetadataStore:
    """Read-only view of metadata.duckdb, limited to the committed `segments` when given."""

    def __init__(self, db_path: Path, segments: Sequence[str] | None = None) -> None:
        if not db_path.exists():
            raise FileNotFoundError(f"no metadata database at {db_path}")
        self._con = locked_down_connection(db_path, read_only=True)
        self._segments = None if segments is None else list(segments)
        with self._cursor() as cur:
            self._captions = CAPTIONS if _table_exists(cur, CAPTIONS) else _LEGACY_CAPTIONS

    def close(self) -> None:
        self._con.close()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own for each call: a server queries from several threads at once, and a
        DuckDB connection serves one call at a time. Cursors share the locked-down database."""
        cur = self._con.cursor()
        try:
            cur.execute(f"USE {ATTACHED_NAME}")
            yield cur
        finally:
            cur.close()

    def _committed(self, alias: str = "") -> tuple[str, list]:
        """A WHERE clause (and its parameter) keeping rows of committed segments only."""
        if self._segments is None:
            return "TRUE", []
        col = f"{alias}.segment" if alias else "segment"
        return f"list_contains(?, {col})", [self._segments]

    def column_types(self) -> dict[str, str]:
        with self._cursor() as cur:
            return {r[0]: r[1] for r in cur.execute(f"DESCRIBE {TABLE}").fetchall()}

    def columns(self) -> list[str]:
        return list(self.column_types())

    def count(self) -> int:
        cond, params = self._committed()
        with self._cursor() as cur:
            return int(cur.execute(f"SELECT count(*) FROM {TABLE} WHERE {cond}", params).fetchall()[0][0])

    def all_ids(self) -> np.ndarray:
        cond, params = self._committed()
        with self._cursor() as cur:
            return cur.execute(f"SELECT id FROM {TABLE} WHERE {cond} ORDER BY id", params).fetchnumpy()["id"]

    def filter_ids(self, where: str) -> np.ndarray:
        """Ids of the items matching a filter (indexing.filters grammar), sorted."""
        try:
            compiled = compile_filter(where, self.column_types())
        except FilterError as e:
            raise ValueError(f"bad --where filter: {e}") from e
        cond, params = self._committed()
        sql = f"SELECT id FROM {TABLE} WHERE {cond} AND ({compiled.sql}) ORDER BY id"
        try:
            with self._cursor() as cur:
                rows = cur.execute(sql, [*params, *compiled.params]).fetchnumpy()
        except duckdb.Error as e:  # the message could quote data; name only the kind of failure
            raise ValueError(f"bad --where filter {where!r}: it could not be evaluated ({type(e).__name__})") from e
        return rows["id"].astype(np.int64)

    def _join(self, source: str, key: str, wanted: Sequence[int], columns: Sequence[str]) -> list[dict]:
        """Rows of `source` whose `key` is in `wanted`. A query's hits (a few ids) are bound as an IN
        list, which costs a third of a join on a 1M-row table; long lists join a registered table."""
        if len(wanted) == 0:
            return []
        cond, params = self._committed("i")
        cols = ", ".join(f"i.{quote_identifier(c)}" for c in columns)
        want = np.asarray(wanted, np.int64)
        with self._cursor() as cur:
            if len(want) <= _IN_LIST_MAX:
                marks = ", ".join("?" * len(want))
                sql = f"SELECT {cols} FROM {source} i WHERE i.{key} IN ({marks}) AND {cond}"
                res = cur.execute(sql, [*want.tolist(), *params])
            else:
                cur.register("wanted", pa.table({"want": pa.array(want)}))
                sql = f"SELECT {cols} FROM {source} i JOIN wanted w ON i.{key} = w.want WHERE {cond}"
                res = cur.execute(sql, params)
            names = [d[0] for d in res.description]
            return [dict(zip(names, r, strict=True)) for r in res.fetchall()]

    def rows(self, ids: Sequence[int], columns: Sequence[str] = ("id", "path", "caption")) -> dict[int, dict]:
        """Metadata rows keyed by id (ids absent from the table are absent from the result)."""
        return {r["id"]: r for r in self._join(TABLE, "id", ids, columns)}

    def caption_rows(self, cids: Sequence[int]) -> dict[int, dict]:
        """Caption rows (cid, id, caption) keyed by caption id."""
        return {r["cid"]: r for r in self._join(self._captions, "cid", cids, ("cid", "id", "caption"))}

    def caption_ids(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Caption ids of these items (all committed captions when None), sorted."""
        if ids is None:
            cond, params = self._committed()
            sql = f"SELECT cid FROM {self._captions} WHERE {cond} ORDER BY cid"
            with self._cursor() as cur:
                return cur.execute(sql, params).fetchnumpy()["cid"].astype(np.int64)
        rows = self._join(self._captions, "id", ids, ("cid",))
        return np.sort(np.asarray([r["cid"] for r in rows], np.int64))

    def _locate(self, source: str, key: str, ids: Sequence[int]) -> Located:
        found = {r[key]: r for r in self._join(source, key, ids, (key, "segment", "chunk", "row"))}
        keep = [int(i) for i in ids if int(i) in found]
        return Located(
            ids=np.asarray(keep, np.int64),
            segment=[found[i]["segment"] for i in keep],
            chunk=np.asarray([found[i]["chunk"] for i in keep], np.int64),
            row=np.asarray([found[i]["row"] for i in keep], np.int64),
        )

    def locate(self, ids: Sequence[int]) -> Located:
        """Where these items' image vectors are."""
        return self._locate(TABLE, "id", ids)

    def locate_captions(self, cids: Sequence[int]) -> Located:
        """Where these captions' vectors are (Located.ids holds the caption ids)."""
        return self._locate(self._captions, "cid", cids)

    def ids_with_paths(self, paths: Sequence[str], segments: Sequence[str]) -> set[str]:
        """Which of these paths are indexed in committed `segments` (`index add` skips them)."""
        arr = pa.table({"p": pa.array(list(paths), pa.string())})
        with self._cursor() as cur:
            cur.register("wanted_paths", arr)
            out = cur.execute(
                f"SELECT DISTINCT i.path FROM {TABLE} i JOIN wanted_paths w ON i.path = w.p "
                "WHERE list_contains(?, i.segment)",
                [list(segments)],
            )
            return {r[0] for r in out.fetchall()}

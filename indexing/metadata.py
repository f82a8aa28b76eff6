"""Item metadata in an embedded DuckDB file next to the index (`metadata.duckdb`, table `items`).

Written atomically (a fresh file, or a copy for appends, then os.replace); read through a
read-only connection. `--where` filters are SQL boolean expressions over the `items` columns.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from indexing.atomic import atomic_path

TABLE = "items"


def _with_segment(table: pa.Table, segment: str) -> pa.Table:
    return table.append_column("segment", pa.array([segment] * table.num_rows, pa.string()))


def write_metadata(db_path: Path, segments: Sequence[tuple[str, pa.Table]]) -> None:
    """Create metadata.duckdb from (segment name, item table) pairs."""
    tables = [_with_segment(t, s) for s, t in segments]
    combined = pa.concat_tables(tables, promote_options="default")
    with atomic_path(db_path) as tmp:
        tmp.unlink()  # duckdb wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            con.register("incoming", combined)
            con.execute(f"CREATE TABLE {TABLE} AS SELECT * FROM incoming ORDER BY id")
            con.execute(f"CREATE UNIQUE INDEX {TABLE}_id ON {TABLE}(id)")
        finally:
            con.close()


def append_metadata(db_path: Path, segment: str, table: pa.Table) -> None:
    """Add one segment's rows; the live file is replaced only once the copy is complete."""
    incoming = _with_segment(table, segment)
    with atomic_path(db_path) as tmp:
        shutil.copyfile(db_path, tmp)
        con = duckdb.connect(str(tmp))
        try:
            existing = {r[0] for r in con.execute(f"DESCRIBE {TABLE}").fetchall()}
            for name in incoming.column_names:
                if name not in existing:
                    sql_type = "VARCHAR" if pa.types.is_string(incoming.schema.field(name).type) else "DOUBLE"
                    con.execute(f'ALTER TABLE {TABLE} ADD COLUMN "{name}" {sql_type}')
            # A killed earlier add may have left this segment's rows behind: replace them.
            con.execute(f"DELETE FROM {TABLE} WHERE segment = ?", [segment])
            con.register("incoming", incoming)
            cols = ", ".join(f'"{c}"' for c in incoming.column_names)
            con.execute(f"INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM incoming")
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
    """Read-only view of metadata.duckdb."""

    def __init__(self, db_path: Path) -> None:
        if not db_path.exists():
            raise FileNotFoundError(f"no metadata database at {db_path}")
        self._con = duckdb.connect(str(db_path), read_only=True)

    def close(self) -> None:
        self._con.close()

    def columns(self) -> list[str]:
        return [r[0] for r in self._con.execute(f"DESCRIBE {TABLE}").fetchall()]

    def count(self) -> int:
        return int(self._con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def filter_ids(self, where: str) -> np.ndarray:
        """Ids of the items matching a SQL boolean expression, sorted."""
        if ";" in where:
            raise ValueError("--where takes one SQL boolean expression (no ';')")
        try:
            rows = self._con.execute(f"SELECT id FROM {TABLE} WHERE ({where}) ORDER BY id").fetchnumpy()
        except duckdb.Error as e:
            raise ValueError(f"bad --where expression {where!r}: {e}. Columns: {self.columns()}") from e
        return rows["id"].astype(np.int64)

    def rows(self, ids: Sequence[int], columns: Sequence[str] = ("id", "path", "caption")) -> dict[int, dict]:
        """Metadata rows keyed by id (ids absent from the table are absent from the result)."""
        if len(ids) == 0:
            return {}
        arr = pa.table({"want": pa.array(np.asarray(ids, np.int64))})
        self._con.register("wanted", arr)
        cols = ", ".join(f'i."{c}"' for c in columns)
        out = self._con.sql(f"SELECT {cols} FROM {TABLE} i JOIN wanted w ON i.id = w.want").to_arrow_table()
        self._con.unregister("wanted")
        return {r["id"]: r for r in out.to_pylist()}

    def locate(self, ids: Sequence[int]) -> Located:
        found = self.rows(ids, ("id", "segment", "chunk", "row"))
        keep = [int(i) for i in ids if int(i) in found]
        return Located(
            ids=np.asarray(keep, np.int64),
            segment=[found[i]["segment"] for i in keep],
            chunk=np.asarray([found[i]["chunk"] for i in keep], np.int64),
            row=np.asarray([found[i]["row"] for i in keep], np.int64),
        )

    def ids_with_paths(self, paths: Sequence[str], segments: Sequence[str]) -> set[str]:
        """Which of these paths are indexed in committed `segments` (`index add` skips them)."""
        arr = pa.table({"p": pa.array(list(paths), pa.string())})
        self._con.register("wanted_paths", arr)
        out = self._con.execute(
            f"SELECT DISTINCT i.path FROM {TABLE} i JOIN wanted_paths w ON i.path = w.p "
            "WHERE list_contains(?, i.segment)",
            [list(segments)],
        )
        found = {r[0] for r in out.fetchall()}
        self._con.unregister("wanted_paths")
        return found

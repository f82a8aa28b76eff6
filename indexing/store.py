"""The on-disk embedding store: one folder per embedding job ("segment"), chunk files inside.

SEGMENT/job.json                      parameters the job was started with (resume guard)
SEGMENT/chunk-00000.img.npy           (n_ok, dim) image vectors, float16/float32, unit norm
SEGMENT/chunk-00000.txt.npy           (n_ok, dim) caption vectors aligned with the images (0 = no caption)
SEGMENT/chunk-00000.rejects.parquet   items that could not be read/decoded, with the reason
SEGMENT/chunk-00000.parquet           one row per embedded item; written last = chunk complete
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REJECT_SCHEMA = pa.schema(
    [("path", pa.string()), ("reason", pa.string()), ("message", pa.string()), ("sha256", pa.string())]
)
BASE_COLUMNS = ("id", "path", "caption", "sha256", "width", "height", "format", "chunk", "row")


@dataclass(frozen=True)
class ChunkPaths:
    image: Path
    text: Path
    rejects: Path
    meta: Path


def chunk_paths(folder: Path, chunk: int) -> ChunkPaths:
    stem = folder / f"chunk-{chunk:05d}"
    return ChunkPaths(
        image=stem.with_suffix(".img.npy"),
        text=stem.with_suffix(".txt.npy"),
        rejects=stem.with_suffix(".rejects.parquet"),
        meta=stem.with_suffix(".parquet"),
    )


def read_job(folder: Path) -> dict[str, Any] | None:
    path = folder / "job.json"
    return json.loads(path.read_text()) if path.exists() else None


def item_table(ok: Sequence[Any], items: Sequence[Any], start_id: int, chunk: int) -> pa.Table:
    """Metadata rows for the embedded items of one chunk (row = position in the chunk's .npy)."""
    cols: dict[str, list] = {
        "id": [start_id + x.index for x in ok],
        "path": [items[x.index].path for x in ok],
        "caption": [items[x.index].caption for x in ok],
        "sha256": [x.sha256 for x in ok],
        "width": [x.width for x in ok],
        "height": [x.height for x in ok],
        "format": [x.format for x in ok],
        "chunk": [chunk] * len(ok),
        "row": list(range(len(ok))),
    }
    extra_keys = sorted({k for x in ok for k in items[x.index].extra} - set(cols))
    for k in extra_keys:
        cols[k] = [items[x.index].extra.get(k) for x in ok]
    table = pa.table(cols)
    return table.cast(
        table.schema.set(0, pa.field("id", pa.int64()))
        .set(2, pa.field("caption", pa.string()))
        .set(4, pa.field("width", pa.int32()))
        .set(5, pa.field("height", pa.int32()))
    )


def complete_chunks(folder: Path) -> list[int]:
    """Chunk numbers whose commit marker exists, ascending."""
    return sorted(int(p.name[6:11]) for p in folder.glob("chunk-?????.parquet"))


def read_segment_meta(folder: Path) -> pa.Table:
    tables = [pq.read_table(chunk_paths(folder, c).meta) for c in complete_chunks(folder)]
    if not tables:
        return pa.table({c: [] for c in BASE_COLUMNS})
    return pa.concat_tables(tables, promote_options="default")


def read_segment_rejects(folder: Path) -> pa.Table:
    tables = [
        pq.read_table(chunk_paths(folder, c).rejects)
        for c in complete_chunks(folder)
        if chunk_paths(folder, c).rejects.exists()
    ]
    return pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()


def read_segment_vectors(folder: Path, kind: str = "image") -> np.ndarray:
    """All vectors of a segment as float32, in metadata row order (kind: "image" or "text")."""
    arrays = []
    for c in complete_chunks(folder):
        p = chunk_paths(folder, c)
        arrays.append(np.load(p.image if kind == "image" else p.text, mmap_mode="r"))
    if not arrays:
        job = read_job(folder) or {}
        return np.zeros((0, int(job.get("dim", 0))), np.float32)
    return np.concatenate(arrays).astype(np.float32, copy=False)


def chunk_vectors(folder: Path, chunk: int, kind: str = "image") -> np.ndarray:
    """One chunk's vectors, memory-mapped (no copy until rows are gathered)."""
    p = chunk_paths(folder, chunk)
    return np.load(p.image if kind == "image" else p.text, mmap_mode="r")


def gather_vectors(
    embeddings_dir: Path, segment: Sequence[str], chunk: np.ndarray, row: np.ndarray, kind: str = "image"
) -> np.ndarray:
    """Vectors for (segment, chunk, row) triples, float32, in the given order."""
    n = len(row)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    out = None
    keys = np.array([f"{s}/{c}" for s, c in zip(segment, chunk, strict=True)])
    for key in np.unique(keys):
        sel = np.flatnonzero(keys == key)
        seg, c = key.rsplit("/", 1)
        vecs = chunk_vectors(embeddings_dir / seg, int(c), kind)
        if out is None:
            out = np.zeros((n, vecs.shape[1]), np.float32)
        out[sel] = vecs[row[sel]]
    return out

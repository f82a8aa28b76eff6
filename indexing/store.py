"""The on-disk embedding store: one folder per embedding job ("segment"), chunk files inside.

SEGMENT/job.json                      parameters the job was started with (resume guard)
SEGMENT/chunk-00000.img.npy           (n_ok, dim) image vectors, float16/float32, unit norm
SEGMENT/chunk-00000.txt.npy           (n_captions, dim) one vector per caption of the chunk's items
SEGMENT/chunk-00000.captions.parquet  one row per caption: cid (caption id), id (its image), caption, row in .txt.npy
SEGMENT/chunk-00000.rejects.parquet   items that could not be read/decoded, with the reason
SEGMENT/chunk-00000.parquet           one row per embedded item; written last = chunk complete

An image can have several captions (COCO gives five): it is embedded once, and each caption gets its
own vector and caption id in the caption index. Chunks written before captions had their own table
(no .captions.parquet) hold one caption vector per image row, zero where there was none; they read
back as one caption per captioned image with cid = id.
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

from indexing.row_blocks import release_mapped_rows

REJECT_SCHEMA = pa.schema(
    [("path", pa.string()), ("reason", pa.string()), ("message", pa.string()), ("sha256", pa.string())]
)
BASE_COLUMNS = ("id", "path", "caption", "sha256", "width", "height", "format", "phash", "chunk", "row")
# Names the index gives its own columns: a source column so named is stored under another name.
RESERVED_COLUMNS = (*BASE_COLUMNS, "segment")
CAPTION_SCHEMA = pa.schema([("cid", pa.int64()), ("id", pa.int64()), ("caption", pa.string()), ("row", pa.int32())])


@dataclass(frozen=True)
class ChunkPaths:
    image: Path
    text: Path
    captions: Path
    rejects: Path
    meta: Path


def chunk_paths(folder: Path, chunk: int) -> ChunkPaths:
    stem = folder / f"chunk-{chunk:05d}"
    return ChunkPaths(
        image=stem.with_suffix(".img.npy"),
        text=stem.with_suffix(".txt.npy"),
        captions=stem.with_suffix(".captions.parquet"),
        rejects=stem.with_suffix(".rejects.parquet"),
        meta=stem.with_suffix(".parquet"),
    )


def read_job(folder: Path) -> dict[str, Any] | None:
    path = folder / "job.json"
    return json.loads(path.read_text()) if path.exists() else None


def _metadata_column(values: list) -> pa.Array:
    """A source's extra column as one Arrow type: mixed types (img2dataset writes ints and strings
    under one key across samples) fall back to text, an all-empty column to an empty text column."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    return arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr


def item_table(ok: Sequence[Any], items: Sequence[Any], start_id: int, chunk: int) -> pa.Table:
    """Metadata rows for the embedded items of one chunk (row = position in the chunk's .npy)."""
    cols: dict[str, Any] = {
        "id": pa.array([start_id + x.index for x in ok], pa.int64()),
        "path": pa.array([items[x.index].path for x in ok], pa.string()),
        "caption": pa.array([items[x.index].caption for x in ok], pa.string()),
        "sha256": pa.array([x.sha256 for x in ok], pa.string()),
        "width": pa.array([x.width for x in ok], pa.int32()),
        "height": pa.array([x.height for x in ok], pa.int32()),
        "format": pa.array([x.format for x in ok], pa.string()),
        "phash": pa.array([x.phash for x in ok], pa.int64()),
        "chunk": pa.array([chunk] * len(ok), pa.int64()),
        "row": pa.array(list(range(len(ok))), pa.int64()),
    }
    # sources rename reserved names (indexing.sources.safe_column_names), so none is overwritten here
    extra_keys = sorted({k for x in ok for k in items[x.index].extra} - set(cols))
    for k in extra_keys:
        cols[k] = _metadata_column([items[x.index].extra.get(k) for x in ok])
    return pa.table(cols)


def caption_table(cids: Sequence[int], ids: Sequence[int], captions: Sequence[str]) -> pa.Table:
    """One row per caption vector of a chunk, in .txt.npy order."""
    return pa.table(
        {"cid": pa.array(cids, pa.int64()), "id": pa.array(ids, pa.int64()), "caption": pa.array(captions, pa.string()),
         "row": pa.array(range(len(cids)), pa.int32())},
        schema=CAPTION_SCHEMA,
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


def read_segment_vectors(folder: Path, kind: str = "image", *, spill: Path | None = None) -> np.ndarray:
    """All vectors of a segment as float32 (kind "image": in metadata row order; "text": in
    read_segment_captions order). With `spill`, they are written chunk by chunk into that .npy file
    and returned memory-mapped (read-only) instead of held in RAM: the build of a segment larger
    than memory (indexing.build) reads them block by block from there."""
    if kind == "text":
        return read_segment_captions(folder, spill=spill)[1]
    arrays = [np.load(chunk_paths(folder, c).image, mmap_mode="r") for c in complete_chunks(folder)]
    if not arrays:
        job = read_job(folder) or {}
        return np.zeros((0, int(job.get("dim", 0))), np.float32)
    if spill is not None:
        return _spill(spill, arrays, [None] * len(arrays))
    return np.concatenate(arrays).astype(np.float32, copy=False)


def _spill(path: Path, arrays: Sequence[np.ndarray], rows: Sequence[np.ndarray | None]) -> np.ndarray:
    """arrays[i][rows[i]] (all rows when None), concatenated as float32 into the .npy at `path`, mapped
    read-only. One chunk is in RAM at a time, and its pages leave the process once written."""
    n = sum(len(a) if r is None else len(r) for a, r in zip(arrays, rows, strict=True))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, arrays[0].shape[1]))
    at = 0
    for a, r in zip(arrays, rows, strict=True):
        block = np.asarray(a if r is None else a[r], np.float32)
        out[at:at + len(block)] = block
        release_mapped_rows(out, at, at + len(block))
        at += len(block)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def chunk_captions(folder: Path, chunk: int) -> pa.Table:
    """A complete chunk's caption rows (cid, id, caption, row); older chunks derive them from the items."""
    p = chunk_paths(folder, chunk)
    if p.captions.exists():
        return pq.read_table(p.captions)
    meta = pq.read_table(p.meta, columns=["id", "caption", "row"]).to_pylist()
    rows = [r for r in meta if r["caption"]]
    table = caption_table([r["id"] for r in rows], [r["id"] for r in rows], [r["caption"] for r in rows])
    return table.set_column(3, "row", pa.array([r["row"] for r in rows], pa.int32()))


def read_segment_captions(folder: Path, *, spill: Path | None = None) -> tuple[pa.Table, np.ndarray]:
    """Every caption of a segment (cid, id, caption, row, chunk) and its vector, float32, row-aligned
    (memory-mapped from the .npy at `spill` when given: see read_segment_vectors)."""
    tables, maps, rows = [], [], []
    for c in complete_chunks(folder):
        t = chunk_captions(folder, c)
        maps.append(np.load(chunk_paths(folder, c).text, mmap_mode="r"))
        rows.append(t.column("row").to_numpy())
        tables.append(t.append_column("chunk", pa.array([c] * t.num_rows, pa.int64())))
    if not tables or sum(len(r) for r in rows) == 0:
        dim = int((read_job(folder) or {}).get("dim", 0))
        empty = CAPTION_SCHEMA.append(pa.field("chunk", pa.int64())).empty_table()
        return (pa.concat_tables(tables) if tables else empty), np.zeros((0, dim), np.float32)
    if spill is not None:
        return pa.concat_tables(tables), _spill(spill, maps, rows)
    vectors = np.concatenate([np.asarray(m[r], np.float32) for m, r in zip(maps, rows, strict=True)])
    return pa.concat_tables(tables), vectors


def chunk_vectors(folder: Path, chunk: int, kind: str = "image") -> np.ndarray:
    """One chunk's vectors, memory-mapped (no copy until rows are gathered)."""
    p = chunk_paths(folder, chunk)
    return np.load(p.image if kind == "image" else p.text, mmap_mode="r")


class ChunkVectors:
    """Every committed chunk's vectors of some segments, memory-mapped once when opened.

    A reader keeps these maps, so it can go on gathering vectors (filtered search, image-id queries)
    even while a writer deletes the folder to rebuild it: the mapped files stay readable until the
    reader lets go. Maps cost address space, not memory."""

    def __init__(self, embeddings_dir: Path, segments: Sequence[str]) -> None:
        self._maps: dict[tuple[str, int, str], np.ndarray] = {}
        for seg in segments:
            folder = embeddings_dir / seg
            for c in complete_chunks(folder):
                for kind in ("image", "text"):
                    self._maps[(seg, c, kind)] = chunk_vectors(folder, c, kind)

    def get(self, segment: str, chunk: int, kind: str) -> np.ndarray:
        try:
            return self._maps[(segment, chunk, kind)]
        except KeyError:
            raise ValueError(f"no committed chunk {chunk} in segment {segment}") from None


def gather_vectors(
    embeddings_dir: Path | ChunkVectors, segment: Sequence[str], chunk: np.ndarray, row: np.ndarray, kind: str = "image"
) -> np.ndarray:
    """Vectors for (segment, chunk, row) triples, float32, in the given order (from the folder, or
    from a reader's ChunkVectors)."""
    n = len(row)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    out = None
    keys = np.array([f"{s}/{c}" for s, c in zip(segment, chunk, strict=True)])
    for key in np.unique(keys):
        sel = np.flatnonzero(keys == key)
        seg, c = key.rsplit("/", 1)
        if isinstance(embeddings_dir, ChunkVectors):
            vecs = embeddings_dir.get(seg, int(c), kind)
        else:
            vecs = chunk_vectors(embeddings_dir / seg, int(c), kind)
        if out is None:
            out = np.zeros((n, vecs.shape[1]), np.float32)
        out[sel] = vecs[row[sel]]
    return out

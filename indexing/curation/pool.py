"""A curation pool: the items a stage works on, their metadata and their vectors.

A SOURCE becomes a pool in one of three ways, cheapest first:
- an index folder built by `retr index build`: its committed segments' stored vectors and metadata,
  nothing embedded again (its model must be the one asked for);
- a `kept.parquet` written by an earlier stage: the vectors it came from (named in the file's
  schema metadata) when they are of the model asked for, restricted to its rows;
- anything else `retr index build` takes: embedded into EMBEDDINGS/NAME by the resumable,
  progress-barred embed job (a killed run resumes chunk by chunk), here or on Ray actors.

Rows of `meta` and `xb` are aligned; `meta.id` are the pool's ids (an index's ids, or the position in
the listing for embedded sources). `segment` / `chunk` / `row` say where each vector is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexing.embed import EmbedConfig, EmbedSummary, embed_items
from indexing.manifest import MANIFEST_NAME, read_manifest
from indexing.resolve import resolve_source
from indexing.sources import ManifestColumns
from indexing.store import (
    REJECT_SCHEMA,
    chunk_vectors,
    complete_chunks,
    read_job,
    read_segment_meta,
    read_segment_rejects,
)
from retrieval.encoders.base import Encoder

CURATE_KEY = b"retr.curate"  # kept.parquet schema metadata: where its vectors are (VectorSource JSON)
POOL_ID = "pool_id"  # kept.parquet's column of pool ids (`id` is a column name the index keeps for itself)
LOCATION_COLUMNS = ("segment", "chunk", "row")


@dataclass(frozen=True)
class VectorSource:
    """Where a pool's vectors are stored: an embeddings folder and the segments in it, of one model."""

    embeddings: str  # absolute path of a folder of segment folders
    segments: tuple[str, ...]
    model: str
    weights: str = ""  # the encoder's weights_id ("" when the name pins the weights)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: bytes | str) -> VectorSource:
        obj = json.loads(text)
        return VectorSource(obj["embeddings"], tuple(obj["segments"]), obj["model"], obj.get("weights", ""))


@dataclass(frozen=True)
class Pool:
    meta: pa.Table  # one row per item: id, path, caption, sha256, width, height, format, metadata…, segment, chunk, row
    xb: np.ndarray  # (n, d) float32 unit rows, aligned with meta
    vectors: VectorSource
    rejects: pa.Table  # items of the source that could not be read (path, reason, message, sha256)
    notes: tuple[str, ...] = ()  # ingest's notes for the user

    @property
    def ids(self) -> np.ndarray:
        return self.meta.column("id").to_numpy().astype(np.int64)

    @property
    def model(self) -> str:
        return self.vectors.model

    def __len__(self) -> int:
        return self.meta.num_rows

    def subset(self, ids: np.ndarray) -> Pool:
        """The pool restricted to `ids` (in pool order); unknown ids are an error."""
        rows = rows_of(self.ids, ids)
        return Pool(self.meta.take(pa.array(rows)), self.xb[rows], self.vectors, self.rejects.slice(0, 0), self.notes)


def rows_of(pool_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row positions of `ids` in `pool_ids`, ascending by row; ValueError naming ids not in the pool."""
    ids = np.asarray(ids, np.int64)
    order = np.argsort(pool_ids, kind="stable")
    pos = np.searchsorted(pool_ids, ids, sorter=order)
    pos = np.minimum(pos, len(pool_ids) - 1) if len(pool_ids) else pos
    found = (len(pool_ids) > 0) & (pool_ids[order[pos]] == ids) if len(ids) else np.zeros(0, bool)
    if not np.all(found):
        raise ValueError(f"ids not in the pool: {ids[~found][:5].tolist()}")
    return np.sort(order[pos])


def read_embeddings(vectors: VectorSource) -> tuple[pa.Table, np.ndarray, pa.Table]:
    """Metadata (with segment column), vectors and rejects of the committed chunks of every segment."""
    metas, rejects, chunks = [], [], []
    for seg in vectors.segments:
        folder = Path(vectors.embeddings) / seg
        meta = read_segment_meta(folder)
        metas.append(meta.append_column("segment", pa.array([seg] * meta.num_rows, pa.string())))
        chunks += [chunk_vectors(folder, c) for c in complete_chunks(folder)]  # memory-mapped, float16 or 32
        rejects.append(read_segment_rejects(folder))
    meta = pa.concat_tables(metas, promote_options="default")
    # one float32 array filled chunk by chunk: no float16 concatenation in between (at 1M × 1024 that
    # would add 2 GB on top of the 4 GB result)
    dim = chunks[0].shape[1] if chunks else 0
    xb = np.empty((sum(len(c) for c in chunks), dim), np.float32)
    at = 0
    for c in chunks:
        xb[at:at + len(c)] = c
        at += len(c)
    return meta, xb, pa.concat_tables(rejects)


def _model_error(source: str, has: str, asked: str) -> ValueError:
    return ValueError(
        f"{source} holds vectors of {has}, not {asked}: run without --model to use its vectors, or give the "
        f"images themselves (the folder or manifest it was built from) to embed them with {asked}"
    )


def _from_index(folder: Path, model: str | None) -> Pool:
    manifest = read_manifest(folder)
    if model is not None and model != manifest.model:
        raise _model_error(str(folder), manifest.model, model)
    vectors = VectorSource(str((folder / "embeddings").resolve()), manifest.segments, manifest.model,
                           manifest.model_weights)
    meta, xb, rejects = read_embeddings(vectors)
    return Pool(meta, xb, vectors, rejects)


def _from_kept(path: Path, vectors: VectorSource) -> Pool:
    """An earlier stage's kept.parquet over the vectors it came from; its own columns (group and cluster
    labels) ride along."""
    kept = pq.read_table(path)
    meta, xb, _ = read_embeddings(vectors)
    rows = rows_of(meta.column("id").to_numpy().astype(np.int64), kept.column(POOL_ID).to_numpy())
    meta = meta.take(pa.array(rows))
    # kept.parquet is in pool order too; add its annotation columns the store does not have
    order = np.argsort(kept.column(POOL_ID).to_numpy(), kind="stable")
    kept = kept.take(pa.array(order))
    for name in kept.column_names:
        if name not in meta.column_names and name not in (POOL_ID, "image"):
            meta = meta.append_column(name, kept.column(name))
    return Pool(meta, xb[rows], vectors, REJECT_SCHEMA.empty_table())


def kept_vector_source(path: Path) -> VectorSource | None:
    """The VectorSource a kept.parquet names, when it is one and its vectors are still on disk."""
    if path.suffix.lower() != ".parquet" or not path.is_file():
        return None
    meta = pq.read_schema(path).metadata or {}
    if CURATE_KEY not in meta:
        return None
    vectors = VectorSource.from_json(meta[CURATE_KEY])
    present = all(read_job(Path(vectors.embeddings) / s) is not None for s in vectors.segments)
    return vectors if present else None


@dataclass(frozen=True)
class PoolRequest:
    """How to turn a SOURCE into a pool."""

    source: str
    embeddings: Path  # where a source that needs embedding is embedded (a folder of segments)
    segment: str = "pool"  # that embedding job's folder name under `embeddings`
    model: str | None = None  # None: the model of the source's stored vectors, else `default_model`
    default_model: str = "retr:default"
    embed: EmbedConfig = EmbedConfig()
    columns: ManifestColumns = ManifestColumns()
    progress: bool = True


# model spec -> who embeds with it, called like `embed_items`: a RayEmbedRunner (`retr curate --ray`)
RunnerFor = Callable[[str], Callable[..., EmbedSummary]]


def load_pool(request: PoolRequest, load_encoder: Callable[[str], Encoder], runner_for: RunnerFor | None = None
              ) -> Pool:
    """The pool SOURCE names (see the module docstring); `load_encoder(spec)` is called only when
    something has to be embedded, and `runner_for(spec)`, if given, embeds it instead of this process
    (the same chunk files, ids and resume rule)."""
    path = Path(request.source)
    if (path / MANIFEST_NAME).is_file():
        return _from_index(path, request.model)
    vectors = kept_vector_source(path)
    if vectors is not None and request.model in (None, vectors.model):
        return _from_kept(path, vectors)
    spec = request.model or request.default_model
    return _embedded(request, load_encoder(spec), runner_for(spec) if runner_for else embed_items)


def _embedded(request: PoolRequest, encoder: Encoder, embed: Callable[..., EmbedSummary]) -> Pool:
    listing = resolve_source(request.source, request.columns, progress=request.progress)
    if not listing.items:
        raise ValueError(f"{request.source} has no images: the pool is empty")
    folder = request.embeddings / request.segment
    embed(listing.items, folder, encoder, request.embed, progress=request.progress)
    vectors = VectorSource(str(request.embeddings.resolve()), (request.segment,), encoder.name, encoder.weights_id)
    meta, xb, rejects = read_embeddings(vectors)
    return Pool(meta, xb, vectors, rejects, listing.notes)


def pixels_of(pool: Pool) -> np.ndarray:
    """width × height per item (for `--keep largest`)."""
    w = pc.fill_null(pool.meta.column("width"), 0).to_numpy().astype(np.int64)
    h = pc.fill_null(pool.meta.column("height"), 0).to_numpy().astype(np.int64)
    return w * h

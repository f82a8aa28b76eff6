"""Build and grow a sharded index folder: embed → train one empty index → clone per shard → tune.

OUT/index.json                 manifest (written last: the commit point)
OUT/embeddings/seg-000/        embedding job of the build (seg-001… for each `index add`)
OUT/shards/image-trained.faiss empty trained index every image shard is cloned from
OUT/shards/image-000.faiss …   image vectors, global ids
OUT/shards/image-000.ivfdata   its inverted lists, for kind ivf_pq_ondisk (indexing.ondisk)
OUT/shards/text-…              the same for caption vectors (image→text search)
OUT/metadata.duckdb            item metadata for results and --where filters
OUT/rejects.parquet            every item that could not be read or decoded, with its reason
OUT/.writer.lock               held by the one build or add writing the folder (indexing.lock)

The caption index holds one vector per caption (faiss ids = caption ids), so an image with five
captions is embedded once and found through any of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from indexing.atomic import write_parquet
from indexing.choose import KINDS, IndexPlan, choose_index
from indexing.embed import EmbedConfig, EmbedSummary, embed_items
from indexing.exact_rerank import VectorsOf, rerank_exact, rows_lookup
from indexing.faiss_build import read_index, train_empty, write_index_atomic
from indexing.lock import writer_lock
from indexing.manifest import (
    IndexManifest,
    VectorIndexInfo,
    git_sha,
    model_mismatch,
    read_manifest,
    with_shards,
    write_manifest,
)
from indexing.metadata import MetadataStore, SegmentRows, append_metadata, write_metadata
from indexing.shard_files import ShardJob, ShardWriter, write_shard
from indexing.sources import Item
from indexing.store import (
    read_job,
    read_segment_captions,
    read_segment_meta,
    read_segment_rejects,
    read_segment_vectors,
)
from indexing.tune import apply_search_param, exact_knn, recall_at_k, tune_search_params, tune_stored_rerank
from retrieval.encoders.base import Encoder

# A segment whose float32 vectors would take more than this share of --max-memory is spilled to
# scratch files and read block by block (_Segment.read; shard_files adds them a block at a time).
SPILL_SHARE = 0.5
SCRATCH = {"image": ".build-image.f32.npy", "text": ".build-text.f32.npy"}

# Who embeds a segment: called like `embed_items` (items, folder, encoder, embed config, start_id=, start_cid=,
# progress=) and returns its EmbedSummary. `embed_items` runs here; indexing.distributed.ray_embed.RayEmbedRunner
# hands the same chunk calls to Ray actors. Everything after embedding is the same for both.
EmbedRunner = Callable[..., EmbedSummary]


@dataclass(frozen=True)
class IndexConfig:
    shards: int = 1
    max_memory_bytes: int = 4 << 30  # budget for one collection's index, all shards together
    target_recall: float = 0.95  # recall@recall_k vs exact that search params are tuned to reach
    recall_k: int = 10
    n_queries: int = 1000  # held-out queries used to measure recall
    device: str = "cpu"  # "cuda" trains/adds on faiss GPU; shards are always saved as CPU indexes
    seed: int = 0
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    # build this kind (one of choose.KINDS, e.g. "ivf_pq_ondisk") if it fits the budget, rather
    # than choose_index's first; None: the first
    index_kind: str | None = None

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("--shards must be >= 1")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError("--target-recall must be in (0, 1]")
        if self.index_kind is not None and self.index_kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}; got {self.index_kind!r}")


@dataclass(frozen=True)
class BuildReport:
    manifest: IndexManifest
    embed: EmbedSummary
    rejects_path: Path
    seconds: float


def _segment_name(i: int) -> str:
    return f"seg-{i:03d}"


def _query_sample(xq_pool: np.ndarray, n: int, seed: int, rows: np.ndarray | None = None) -> np.ndarray:
    """n rows drawn from xq_pool (from xq_pool[rows] when given; only the drawn rows are read)."""
    rng = np.random.default_rng(seed)
    size = len(xq_pool) if rows is None else len(rows)
    take = np.sort(rng.choice(size, size=min(n, size), replace=False))
    return np.ascontiguousarray(xq_pool[take if rows is None else rows[take]], dtype=np.float32)


def _search_merged(
    shards: Sequence[faiss.Index], xq: np.ndarray, k: int, rerank: tuple[VectorsOf, int] | None = None
) -> np.ndarray:
    """The merged top-k ids, as a search answers: with `rerank` (vectors_of, factor), the merged top
    k * factor re-ranked exactly (indexing.exact_rerank)."""
    kk = k * rerank[1] if rerank else k
    results = [s.search(xq, kk) for s in shards]
    D = np.concatenate([r[0] for r in results], axis=1)
    I = np.concatenate([r[1] for r in results], axis=1)
    order = np.argsort(-D, axis=1, kind="stable")[:, :kk]
    I = np.take_along_axis(I, order, axis=1)
    return rerank_exact(xq, I, rerank[0], k)[1] if rerank else I


def _tune_shards(
    shards: Sequence[faiss.Index],
    groups: Sequence[np.ndarray],
    xb: np.ndarray,
    ids: np.ndarray,
    xq: np.ndarray,
    gt_ids: np.ndarray,
    k: int,
    target: float,
    vectors_of: VectorsOf | None = None,
) -> tuple[str | None, int | None, float, int]:
    """Tune on the largest shard against its own exact top-k, then check the merged search:
    (param, value, merged recall, re-rank factor; 0 without `vectors_of`).

    Shards share one trained quantizer and hold similar data, so the parameter transfers; if the
    merged recall still falls short, the parameter is doubled until it reaches the target. With
    `vectors_of` (ids -> stored vectors) the search re-ranks its candidates exactly and the factor
    is tuned with nprobe (tune_stored_rerank).
    """
    big = int(np.argmax([len(g) for g in groups]))
    kk = min(k, len(groups[big]))
    # One shard is the whole collection, whose exact top-k is known; else the biggest shard's,
    # computed blockwise over its rows (it is never copied whole).
    gt_big = gt_ids if len(groups) == 1 else ids[groups[big]][exact_knn(xb, xq, kk, rows=groups[big])[1]]
    if vectors_of is None:
        tuned = tune_search_params(shards[big], xq, gt_big, kk, target)
    else:
        tuned = tune_stored_rerank(shards[big], xq, gt_big, kk, target, vectors_of)
    param, value, factor = tuned.param, tuned.value, (tuned.k_factor or 0) if vectors_of is not None else 0
    rerank = (vectors_of, factor) if factor else None
    for s in shards:
        apply_search_param(s, param, value)
    measured = recall_at_k(_search_merged(shards, xq, k, rerank), gt_ids, k)
    while param is not None and measured < target and value < _param_max(shards[big], param):
        value = min(2 * value, _param_max(shards[big], param))
        for s in shards:
            apply_search_param(s, param, value)
        measured = recall_at_k(_search_merged(shards, xq, k, rerank), gt_ids, k)
    return param, value, float(measured), factor


def _param_max(index: faiss.Index, param: str) -> int:
    return faiss.extract_index_ivf(index).nlist if param == "nprobe" else 4096


def build_collection(
    name: str,
    index_dir: Path,
    xb: np.ndarray,
    ids: np.ndarray,
    groups: Sequence[np.ndarray],
    xq: np.ndarray,
    config: IndexConfig,
    shard_writer: ShardWriter | None = None,
) -> VectorIndexInfo:
    """Train one empty index on a sample, clone it per shard, tune its search parameter.

    xb may be memory-mapped: an on-disk plan reads it block by block (indexing.ondisk). Shards are
    written by `shard_writer` (default: here, one by one) and read back for tuning."""
    n, dim = xb.shape
    plan = _choose_plan(n, dim, config)
    # train_empty samples plan.train_size rows itself; untrained kinds only need a few rows for dim.
    train = xb if plan.train_size else xb[: min(n, 1000)]
    trained = train_empty(plan, train, device=config.device, seed=config.seed)
    shard_dir = index_dir / "shards"
    trained_file = f"shards/{name}-trained.faiss"
    write_index_atomic(trained, index_dir / trained_file)
    shards, infos = [], []
    if shard_writer is None or len(groups) == 1:
        for i, rows in enumerate(groups):
            shard, info = write_shard(plan.kind, trained, xb, rows, ids[rows], shard_dir / f"{name}-{i:03d}.faiss",
                                      config.device)
            shards.append(shard)
            infos.append(info)
    else:
        jobs = [ShardJob(plan.kind, index_dir / trained_file, rows, ids[rows], shard_dir / f"{name}-{i:03d}.faiss",
                         config.device) for i, rows in enumerate(groups)]
        infos = shard_writer(jobs, xb)
        shards = [read_index(index_dir / info.file) for info in infos]
    k = min(config.recall_k, n)
    _, gt = exact_knn(xb, xq, k)
    gt_ids = ids[gt]
    # On-disk codes cap recall near 0.6: their searches re-rank candidates against the stored vectors
    # (the embedding store's files, memory-mapped), and the build tunes that depth with nprobe.
    vectors_of = rows_lookup(xb, ids) if plan.kind == "ivf_pq_ondisk" else None
    param, value, measured, factor = _tune_shards(shards, groups, xb, ids, xq, gt_ids, k, config.target_recall,
                                                  vectors_of)
    return VectorIndexInfo(
        factory=plan.factory,
        kind=plan.kind,
        trained=trained_file,
        search_param=param,
        search_value=value,
        target_recall=config.target_recall,
        measured_recall=measured,
        recall_k=k,
        n_queries=int(len(xq)),
        shards=tuple(infos),
        rerank_factor=factor,
    )


def _choose_plan(n: int, dim: int, config: IndexConfig) -> IndexPlan:
    plans = choose_index(n, dim, config.max_memory_bytes)
    if config.index_kind is None:
        return plans[0]
    for plan in plans:
        if plan.kind == config.index_kind:
            return plan
    raise ValueError(f"an index of kind {config.index_kind!r} for {n} x {dim} vectors does not fit "
                     f"--max-memory {config.max_memory_bytes / 2**20:.1f} MiB; kinds that fit: "
                     f"{', '.join(dict.fromkeys(p.kind for p in plans))}")


def _shard_groups(chunks: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Row groups per shard: whole embedding chunks, contiguous, as even as chunks allow."""
    unique = np.unique(chunks)
    parts = [p for p in np.array_split(unique, min(n_shards, len(unique))) if len(p)]
    return [np.flatnonzero(np.isin(chunks, p)) for p in parts]


@dataclass(frozen=True)
class _Segment:
    """One committed-to-be segment read back from the store: items and image vectors, captions and
    caption vectors."""

    meta: pa.Table
    xb: np.ndarray
    captions: pa.Table
    xt: np.ndarray

    @staticmethod
    def read(folder: Path, max_memory_bytes: int | None = None) -> _Segment:
        """Vectors whose float32 copy would take more than SPILL_SHARE of the budget are written to
        scratch files in `folder` and memory-mapped (store.read_segment_vectors), so the build reads
        them block by block; `remove_scratch` deletes those files once the index is written. No
        budget: all in RAM."""
        meta = read_segment_meta(folder)
        dim = int((read_job(folder) or {}).get("dim", 0))
        spill = max_memory_bytes is not None and meta.num_rows * dim * 4 > SPILL_SHARE * max_memory_bytes
        captions, xt = read_segment_captions(folder, spill=folder / SCRATCH["text"] if spill else None)
        xb = read_segment_vectors(folder, "image", spill=folder / SCRATCH["image"] if spill else None)
        return _Segment(meta, xb, captions, xt)

    @staticmethod
    def remove_scratch(folder: Path) -> None:
        for name in SCRATCH.values():
            (folder / name).unlink(missing_ok=True)

    def rows(self, name: str) -> SegmentRows:
        return SegmentRows(name, self.meta, self.captions)

    def captioned_rows(self) -> np.ndarray:
        """Rows of xb whose items have a caption (the image→text tuning queries come from them)."""
        ids = self.meta.column("id").to_numpy()
        return np.flatnonzero(np.isin(ids, self.captions.column("id").to_numpy()))


def _collections(
    index_dir: Path, seg: _Segment, config: IndexConfig, shard_writer: ShardWriter | None = None
) -> tuple[VectorIndexInfo, VectorIndexInfo | None]:
    ids = seg.meta.column("id").to_numpy().astype(np.int64)
    chunks = seg.meta.column("chunk").to_numpy()
    # Queries that look like real use: caption vectors (text→image) when the corpus has captions.
    pool = seg.xt if len(seg.xt) else seg.xb
    image = build_collection(
        "image", index_dir, seg.xb, ids, _shard_groups(chunks, config.shards),
        _query_sample(pool, config.n_queries, 1), config, shard_writer,
    )
    text = None
    if seg.captions.num_rows:
        cids = seg.captions.column("cid").to_numpy().astype(np.int64)
        groups = _shard_groups(seg.captions.column("chunk").to_numpy(), config.shards)
        xq = _query_sample(seg.xb, config.n_queries, 2, seg.captioned_rows())  # image→text queries
        text = build_collection("text", index_dir, seg.xt, cids, groups, xq, config, shard_writer)
    return image, text


def build_index(
    items: Sequence[Item],
    index_dir: Path,
    encoder: Encoder,
    config: IndexConfig = IndexConfig(),
    *,
    source: str = "",
    progress: bool = True,
    runner: EmbedRunner = embed_items,
    shard_writer: ShardWriter | None = None,
) -> BuildReport:
    """Embed `items` (resuming a killed run) and write a complete sharded index to `index_dir`.

    `runner` embeds the chunks (local by default; see EmbedRunner); `shard_writer` writes the shards
    of each collection from its trained quantizer (here by default; see ShardWriter)."""
    index_dir = Path(index_dir)
    if (index_dir / "index.json").exists():
        raise ValueError(f"{index_dir} already holds an index; use `retr index add` to grow it or pick another --out")
    if not items:
        raise ValueError("the source has no images")
    with writer_lock(index_dir, action="build"):
        if (index_dir / "index.json").exists():  # a build that held the lock before us finished it
            raise ValueError(f"{index_dir} already holds an index; use `retr index add` to grow it")
        return _build_locked(items, index_dir, encoder, config, source, progress, runner, shard_writer)


def _build_locked(
    items: Sequence[Item],
    index_dir: Path,
    encoder: Encoder,
    config: IndexConfig,
    source: str,
    progress: bool,
    runner: EmbedRunner,
    shard_writer: ShardWriter | None = None,
) -> BuildReport:
    t0 = time.perf_counter()
    seg_dir = index_dir / "embeddings" / _segment_name(0)
    summary = runner(items, seg_dir, encoder, config.embed, start_id=0, start_cid=0, progress=progress)
    seg = _Segment.read(seg_dir, config.max_memory_bytes)
    try:
        if seg.meta.num_rows == 0:
            raise ValueError(f"none of the {len(items)} items could be decoded; see {seg_dir} rejects")
        image, text = _collections(index_dir, seg, config, shard_writer)
    finally:
        _Segment.remove_scratch(seg_dir)
    write_metadata(index_dir / "metadata.duckdb", [seg.rows(_segment_name(0))])
    rejects = read_segment_rejects(seg_dir)
    write_parquet(index_dir / "rejects.parquet", rejects)
    manifest = IndexManifest(
        model=encoder.name,
        model_weights=encoder.weights_id,
        dim=encoder.dim,
        image=image,
        text=text,
        segments=(_segment_name(0),),
        n_items=seg.meta.num_rows,
        next_id=len(items),
        next_caption_id=sum(len(it.captions) for it in items),
        n_captions=seg.captions.num_rows,
        n_rejected=rejects.num_rows,
        provenance={
            "source": source,
            "git_sha": git_sha(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {
                "shards": config.shards,
                "max_memory_bytes": config.max_memory_bytes,
                "device": config.device,
                "seed": config.seed,
            },
        },
    )
    write_manifest(index_dir, manifest)
    return BuildReport(manifest, summary, index_dir / "rejects.parquet", time.perf_counter() - t0)


def _add_shard(
    index_dir: Path, info: VectorIndexInfo, name: str, xb: np.ndarray, ids: np.ndarray, device: str
) -> VectorIndexInfo:
    trained = read_index(index_dir / info.trained)
    path = index_dir / "shards" / f"{name}-{len(info.shards):03d}.faiss"
    _, shard = write_shard(info.kind, trained, xb, None, ids, path, device)
    return with_shards(info, (shard,))


def _add_collections(
    index_dir: Path, seg: _Segment, image: VectorIndexInfo, text: VectorIndexInfo | None, config: IndexConfig
) -> tuple[VectorIndexInfo, VectorIndexInfo | None]:
    """The collections with a new segment's vectors added as new shards (a caption collection built if
    the index had none)."""
    ids = seg.meta.column("id").to_numpy().astype(np.int64)
    image = _add_shard(index_dir, image, "image", seg.xb, ids, config.device)
    cids = seg.captions.column("cid").to_numpy().astype(np.int64)
    if len(cids) and text is not None:
        text = _add_shard(index_dir, text, "text", seg.xt, cids, config.device)
    elif len(cids):
        xq = _query_sample(seg.xb, config.n_queries, 2, seg.captioned_rows())
        text = build_collection("text", index_dir, seg.xt, cids, [np.arange(len(cids))], xq, config)
    return image, text


def add_to_index(
    items: Sequence[Item],
    index_dir: Path,
    encoder: Encoder,
    config: IndexConfig = IndexConfig(),
    *,
    progress: bool = True,
    runner: EmbedRunner = embed_items,
) -> BuildReport:
    """Append items not yet indexed (by path) as a new segment + new shards; no rebuild. `runner`
    embeds the new segment's chunks (local by default; RayEmbedRunner for `retr index add --ray`)."""
    index_dir = Path(index_dir)
    read_manifest(index_dir)  # a clear "not a retr index" before anything is created
    with writer_lock(index_dir, action="add to"):
        return _add_locked(items, index_dir, encoder, config, progress, runner)


def _add_locked(
    items: Sequence[Item], index_dir: Path, encoder: Encoder, config: IndexConfig, progress: bool,
    runner: EmbedRunner = embed_items,
) -> BuildReport:
    t0 = time.perf_counter()
    manifest = read_manifest(index_dir)  # read under the lock: the last writer's commit
    if why := model_mismatch(manifest, encoder):
        raise ValueError(f"cannot add to {index_dir}: {why}; rebuild it with `retr index build`, or add with its model")
    store = MetadataStore(index_dir / "metadata.duckdb")
    try:
        known = store.ids_with_paths([it.path for it in items], segments=manifest.segments)
    finally:
        store.close()
    new_items = [it for it in items if it.path not in known]
    name = _segment_name(len(manifest.segments))
    seg_dir = index_dir / "embeddings" / name
    job = read_job(seg_dir)
    start_cid = manifest.caption_id_start
    if job is not None and (job.get("n_items"), job.get("start_cid")) != (len(new_items), start_cid):
        shutil.rmtree(seg_dir)  # an uncommitted add of a different item set: never referenced by index.json
    if not new_items:
        return BuildReport(
            manifest, EmbedSummary(0, 0, 0, 0, 0, 0.0), index_dir / "rejects.parquet", time.perf_counter() - t0
        )
    summary = runner(
        new_items, seg_dir, encoder, config.embed, start_id=manifest.next_id, start_cid=start_cid, progress=progress
    )
    seg = _Segment.read(seg_dir, config.max_memory_bytes)
    image, text = manifest.image, manifest.text
    if seg.meta.num_rows:
        try:
            image, text = _add_collections(index_dir, seg, image, text, config)
        finally:
            _Segment.remove_scratch(seg_dir)
        append_metadata(index_dir / "metadata.duckdb", seg.rows(name))
    rejects = pa.concat_tables([read_segment_rejects(index_dir / "embeddings" / s) for s in (*manifest.segments, name)])
    write_parquet(index_dir / "rejects.parquet", rejects)
    n_captions = manifest.n_captions + seg.captions.num_rows if manifest.n_captions >= 0 else -1
    manifest = replace(
        manifest,
        image=image,
        text=text,
        segments=(*manifest.segments, name),
        n_items=manifest.n_items + seg.meta.num_rows,
        next_id=manifest.next_id + len(new_items),
        next_caption_id=start_cid + sum(len(it.captions) for it in new_items),
        n_captions=n_captions,
        n_rejected=rejects.num_rows,
    )
    write_manifest(index_dir, manifest)
    return BuildReport(manifest, summary, index_dir / "rejects.parquet", time.perf_counter() - t0)

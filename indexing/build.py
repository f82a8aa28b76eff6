"""Build and grow a sharded index folder: embed → train one empty index → clone per shard → tune.

OUT/index.json                 manifest (written last: the commit point)
OUT/embeddings/seg-000/        embedding job of the build (seg-001… for each `index add`)
OUT/shards/image-trained.faiss empty trained index every image shard is cloned from
OUT/shards/image-000.faiss …   image vectors, global ids
OUT/shards/text-…              the same for caption vectors (image→text search)
OUT/metadata.duckdb            item metadata for results and --where filters
OUT/rejects.parquet            every item that could not be read or decoded, with its reason
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexing.atomic import write_parquet
from indexing.choose import choose_index
from indexing.embed import EmbedConfig, EmbedSummary, embed_items
from indexing.faiss_build import add_to_clone, read_index, train_empty, write_index_atomic
from indexing.manifest import (
    IndexManifest,
    ShardInfo,
    VectorIndexInfo,
    file_sha256,
    git_sha,
    model_mismatch,
    read_manifest,
    with_shards,
    write_manifest,
)
from indexing.metadata import MetadataStore, append_metadata, write_metadata
from indexing.sources import Item
from indexing.store import read_job, read_segment_meta, read_segment_rejects, read_segment_vectors
from indexing.tune import apply_search_param, exact_knn, recall_at_k, tune_search_params
from retrieval.encoders.base import Encoder


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

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("--shards must be >= 1")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError("--target-recall must be in (0, 1]")


@dataclass(frozen=True)
class BuildReport:
    manifest: IndexManifest
    embed: EmbedSummary
    rejects_path: Path
    seconds: float


def _segment_name(i: int) -> str:
    return f"seg-{i:03d}"


def _query_sample(xq_pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    take = rng.choice(len(xq_pool), size=min(n, len(xq_pool)), replace=False)
    return np.ascontiguousarray(xq_pool[np.sort(take)], dtype=np.float32)


def _search_merged(shards: Sequence[faiss.Index], xq: np.ndarray, k: int) -> np.ndarray:
    results = [s.search(xq, k) for s in shards]
    D = np.concatenate([r[0] for r in results], axis=1)
    I = np.concatenate([r[1] for r in results], axis=1)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(I, order, axis=1)


def _tune_shards(
    shards: Sequence[faiss.Index],
    groups: Sequence[np.ndarray],
    xb: np.ndarray,
    ids: np.ndarray,
    xq: np.ndarray,
    gt_ids: np.ndarray,
    k: int,
    target: float,
) -> tuple[str | None, int | None, float]:
    """Tune on the largest shard against its own exact top-k, then check the merged search.

    Shards share one trained quantizer and hold similar data, so the parameter transfers; if the
    merged recall still falls short, the parameter is doubled until it reaches the target.
    """
    big = int(np.argmax([len(g) for g in groups]))
    kk = min(k, len(groups[big]))
    _, gt_local = exact_knn(np.ascontiguousarray(xb[groups[big]]), xq, kk)
    tuned = tune_search_params(shards[big], xq, ids[groups[big]][gt_local], kk, target)
    param, value = tuned.param, tuned.value
    for s in shards:
        apply_search_param(s, param, value)
    measured = recall_at_k(_search_merged(shards, xq, k), gt_ids, k)
    while param is not None and measured < target and value < _param_max(shards[big], param):
        value = min(2 * value, _param_max(shards[big], param))
        for s in shards:
            apply_search_param(s, param, value)
        measured = recall_at_k(_search_merged(shards, xq, k), gt_ids, k)
    return param, value, float(measured)


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
) -> VectorIndexInfo:
    """Train one empty index on a sample, clone it per shard, tune its search parameter."""
    n, dim = xb.shape
    plan = choose_index(n, dim, config.max_memory_bytes)[0]
    # train_empty samples plan.train_size rows itself; untrained kinds only need a few rows for dim.
    train = xb if plan.train_size else xb[: min(n, 1000)]
    trained = train_empty(plan, train, device=config.device, seed=config.seed)
    shard_dir = index_dir / "shards"
    trained_file = f"shards/{name}-trained.faiss"
    write_index_atomic(trained, index_dir / trained_file)
    shards, infos = [], []
    for i, rows in enumerate(groups):
        shard = add_to_clone(trained, np.ascontiguousarray(xb[rows]), ids[rows], device=config.device)
        path = shard_dir / f"{name}-{i:03d}.faiss"
        write_index_atomic(shard, path)
        shards.append(shard)
        infos.append(ShardInfo(file=f"shards/{path.name}", n=int(len(rows)), sha256=file_sha256(path)))
    k = min(config.recall_k, n)
    _, gt = exact_knn(xb, xq, k)
    gt_ids = ids[gt]
    param, value, measured = _tune_shards(shards, groups, xb, ids, xq, gt_ids, k, config.target_recall)
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
    )


def _shard_groups(chunks: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Row groups per shard: whole embedding chunks, contiguous, as even as chunks allow."""
    unique = np.unique(chunks)
    parts = [p for p in np.array_split(unique, min(n_shards, len(unique))) if len(p)]
    return [np.flatnonzero(np.isin(chunks, p)) for p in parts]


def _text_rows(meta: pa.Table) -> np.ndarray:
    caption = meta.column("caption")
    return np.flatnonzero(pc.fill_null(pc.greater(pc.utf8_length(caption), 0), False).to_numpy(zero_copy_only=False))


def _collections(
    index_dir: Path, meta: pa.Table, xb: np.ndarray, xt: np.ndarray, config: IndexConfig
) -> tuple[VectorIndexInfo, VectorIndexInfo | None]:
    ids = meta.column("id").to_numpy().astype(np.int64)
    chunks = meta.column("chunk").to_numpy()
    text_rows = _text_rows(meta)
    # Queries that look like real use: caption vectors (text→image) when the corpus has captions.
    pool = xt[text_rows] if len(text_rows) else xb
    image = build_collection(
        "image",
        index_dir,
        xb,
        ids,
        _shard_groups(chunks, config.shards),
        _query_sample(pool, config.n_queries, 1),
        config,
    )
    text = None
    if len(text_rows):
        xt_c, ids_t, chunks_t = xt[text_rows], ids[text_rows], chunks[text_rows]
        xq = _query_sample(xb[text_rows], config.n_queries, 2)  # image→text queries
        text = build_collection("text", index_dir, xt_c, ids_t, _shard_groups(chunks_t, config.shards), xq, config)
    return image, text


def build_index(
    items: Sequence[Item],
    index_dir: Path,
    encoder: Encoder,
    config: IndexConfig = IndexConfig(),
    *,
    source: str = "",
    progress: bool = True,
) -> BuildReport:
    """Embed `items` (resuming a killed run) and write a complete sharded index to `index_dir`."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    if (index_dir / "index.json").exists():
        raise ValueError(f"{index_dir} already holds an index; use `retr index add` to grow it or pick another --out")
    if not items:
        raise ValueError("the source has no images")
    seg = index_dir / "embeddings" / _segment_name(0)
    summary = embed_items(items, seg, encoder, config.embed, start_id=0, progress=progress)
    meta = read_segment_meta(seg)
    if meta.num_rows == 0:
        raise ValueError(f"none of the {len(items)} items could be decoded; see {seg} rejects")
    xb, xt = read_segment_vectors(seg, "image"), read_segment_vectors(seg, "text")
    image, text = _collections(index_dir, meta, xb, xt, config)
    write_metadata(index_dir / "metadata.duckdb", [(_segment_name(0), meta)])
    rejects = read_segment_rejects(seg)
    write_parquet(index_dir / "rejects.parquet", rejects)
    manifest = IndexManifest(
        model=encoder.name,
        model_weights=encoder.weights_id,
        dim=encoder.dim,
        image=image,
        text=text,
        segments=(_segment_name(0),),
        n_items=meta.num_rows,
        next_id=len(items),
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
    shard = add_to_clone(trained, np.ascontiguousarray(xb), ids, device=device)
    path = index_dir / "shards" / f"{name}-{len(info.shards):03d}.faiss"
    write_index_atomic(shard, path)
    return with_shards(info, (ShardInfo(file=f"shards/{path.name}", n=int(len(ids)), sha256=file_sha256(path)),))


def add_to_index(
    items: Sequence[Item],
    index_dir: Path,
    encoder: Encoder,
    config: IndexConfig = IndexConfig(),
    *,
    progress: bool = True,
) -> BuildReport:
    """Append items not yet indexed (by path) as a new segment + new shards; no rebuild."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if why := model_mismatch(manifest, encoder):
        raise ValueError(f"cannot add to {index_dir}: {why}; rebuild it with `retr index build`, or add with its model")
    store = MetadataStore(index_dir / "metadata.duckdb")
    try:
        known = store.ids_with_paths([it.path for it in items], segments=manifest.segments)
    finally:
        store.close()
    new_items = [it for it in items if it.path not in known]
    name = _segment_name(len(manifest.segments))
    seg = index_dir / "embeddings" / name
    job = read_job(seg)
    if job is not None and job.get("n_items") != len(new_items):
        shutil.rmtree(seg)  # an uncommitted add of a different item set: never referenced by index.json
    if not new_items:
        return BuildReport(
            manifest, EmbedSummary(0, 0, 0, 0, 0, 0.0), index_dir / "rejects.parquet", time.perf_counter() - t0
        )
    summary = embed_items(new_items, seg, encoder, config.embed, start_id=manifest.next_id, progress=progress)
    meta = read_segment_meta(seg)
    image, text = manifest.image, manifest.text
    if meta.num_rows:
        xb, xt = read_segment_vectors(seg, "image"), read_segment_vectors(seg, "text")
        ids = meta.column("id").to_numpy().astype(np.int64)
        image = _add_shard(index_dir, image, "image", xb, ids, config.device)
        rows = _text_rows(meta)
        if len(rows) and text is not None:
            text = _add_shard(index_dir, text, "text", xt[rows], ids[rows], config.device)
        elif len(rows):
            text = build_collection(
                "text",
                index_dir,
                xt[rows],
                ids[rows],
                [np.arange(len(rows))],
                _query_sample(xb[rows], config.n_queries, 2),
                config,
            )
        append_metadata(index_dir / "metadata.duckdb", name, meta)
    rejects = pa.concat_tables([read_segment_rejects(index_dir / "embeddings" / s) for s in (*manifest.segments, name)])
    write_parquet(index_dir / "rejects.parquet", rejects)
    manifest = replace(
        manifest,
        image=image,
        text=text,
        segments=(*manifest.segments, name),
        n_items=manifest.n_items + meta.num_rows,
        next_id=manifest.next_id + len(new_items),
        n_rejected=rejects.num_rows,
    )
    write_manifest(index_dir, manifest)
    return BuildReport(manifest, summary, index_dir / "rejects.parquet", time.perf_counter() - t0)

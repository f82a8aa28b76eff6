"""Retrieval of pool items close to curated seeds, as DINOv2 built LVD-142M (Oquab et al. 2023 §3):
a large uncurated pool, a small curated seed set, and the pool images near the seeds kept.

- `retrieve_sample`: the k nearest pool items of each seed (inner product on unit vectors; an exact
  Flat index for small pools, IVF above `exact_below`), the union kept. Each kept item is annotated
  with the nearest seed that retrieved it (`seed`, an index into xs) and their cosine.
- `retrieve_cluster`: k-means on the pool, then the clusters that at least one seed falls into are
  kept, each capped at `per_cluster` items (those closest to its centroid). Annotation `cluster`.

Dropped items are `not_retrieved` (no seed reached them) or `sampled_out` (their cluster was over
the cap), of_id -1. The pool may be a float16/float32 memmap: it is added and assigned in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import faiss
import numpy as np
import pyarrow as pa

from indexing.curation.hkmeans import KMeansConfig, assign, check_pool, cluster_ranks, kmeans
from indexing.curation.result import StageResult, dropped_table


@dataclass(frozen=True)
class SearchConfig:
    exact_below: int = 100_000  # pools smaller than this are searched exactly (IndexFlatIP)
    lists_per_sqrt_n: float = 1.0  # IVF above it: nlist = this · sqrt(pool size)
    nprobe: int = 32  # IVF lists visited per seed
    batch: int = 65536  # pool rows added / seeds searched per faiss call


def _check_seeds(xb: np.ndarray, xs: np.ndarray) -> None:
    if xs.ndim != 2 or not len(xs):
        raise ValueError(f"expected a non-empty (m, d) array of seed vectors, got shape {xs.shape}")
    if xs.shape[1] != xb.shape[1]:
        raise ValueError(f"seeds have dimension {xs.shape[1]} but pool vectors {xb.shape[1]}: "
                         "embed both with the same model")


def pool_index(xb: np.ndarray, config: SearchConfig = SearchConfig()) -> faiss.Index:
    """An inner-product index of the pool, filled batch by batch (float16 memmaps are converted per batch)."""
    n, d = xb.shape
    if n < config.exact_below:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = max(1, int(config.lists_per_sqrt_n * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False))
        index.train(np.ascontiguousarray(xb[sample], np.float32))
        index.nprobe = config.nprobe
    for start in range(0, n, config.batch):
        index.add(np.ascontiguousarray(xb[start:start + config.batch], np.float32))
    return index


def retrieve_sample(ids: np.ndarray, xb: np.ndarray, xs: np.ndarray, k: int, *, threshold: float | None = None,
                    config: SearchConfig = SearchConfig()) -> StageResult:
    """Keep the union of each seed's k nearest pool items (only those at cosine ≥ threshold if given)."""
    ids = check_pool(ids, xb)
    _check_seeds(xb, xs)
    if k < 1:
        raise ValueError(f"k (pool items per seed) must be ≥ 1, got {k}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine threshold is between -1 and 1, got {threshold}")
    index = pool_index(xb, config)
    kk = min(k, len(ids))
    seeds, rows, sims = [], [], []
    for start in range(0, len(xs), config.batch):
        d, i = index.search(np.ascontiguousarray(xs[start:start + config.batch], np.float32), kk)
        found = (i >= 0) & (d >= (-np.inf if threshold is None else threshold))
        seeds.append(np.nonzero(found)[0] + start)
        rows.append(i[found])
        sims.append(d[found])
    seeds, rows, sims = np.concatenate(seeds), np.concatenate(rows), np.concatenate(sims)
    nearest = cluster_ranks(rows, -sims) == 0  # its most similar seed (stable: ties to the lower seed)
    seeds, rows, sims = seeds[nearest], rows[nearest], sims[nearest]
    order = np.argsort(ids[rows])
    seeds, rows, sims = seeds[order], rows[order], sims[order]
    lost = np.ones(len(ids), bool)
    lost[rows] = False
    annotations = pa.table({"id": pa.array(ids[rows]), "seed": pa.array(seeds.astype(np.int64)),
                            "seed_similarity": pa.array(sims.astype(np.float32))})
    return StageResult(ids[rows], dropped_table(np.sort(ids[lost]), "not_retrieved"), annotations)


def retrieve_cluster(ids: np.ndarray, xb: np.ndarray, xs: np.ndarray, n_clusters: int, per_cluster: int, *,
                     seed: int = 0, config: KMeansConfig | None = None) -> StageResult:
    """k-means the pool into n_clusters; keep the clusters any seed falls into, at most per_cluster
    items each (those closest to the centroid). Annotation `cluster` (the k-means cluster id).
    `config` defaults to plain k-means (no resampling): here clusters should follow the pool's density."""
    config = config or KMeansConfig(resample_steps=0)
    ids = check_pool(ids, xb)
    _check_seeds(xb, xs)
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be ≥ 1, got {per_cluster}")
    centroids = kmeans(xb, n_clusters, replace(config, seed=seed))
    labels, sims = assign(xb, centroids, config.batch)
    hit = np.isin(labels, assign(xs, centroids, config.batch)[0])
    capped = hit & (cluster_ranks(labels, -sims) >= per_cluster)
    kept = hit & ~capped
    rows = np.flatnonzero(kept)
    rows = rows[np.argsort(ids[rows])]
    dropped = pa.concat_tables([dropped_table(np.sort(ids[~hit]), "not_retrieved"),
                                dropped_table(np.sort(ids[capped]), "sampled_out")])
    annotations = pa.table({"id": pa.array(ids[rows]), "cluster": pa.array(labels[rows])})
    return StageResult(ids[rows], dropped, annotations)

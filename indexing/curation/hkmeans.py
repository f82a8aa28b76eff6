"""Hierarchical k-means with resampling, after Vo et al. 2024, "Automatic Data Curation for
Self-Supervised Learning: A Clustering-Based Approach" (arXiv 2405.15613).

Plain k-means puts its centroids where the points are dense: a concept with a million near-identical
photos gets hundreds of clusters, a rare one gets none of its own. The paper's fix has two parts:

- **hierarchy**: level 1 clusters the points, level ℓ+1 clusters level ℓ's centroids, so upper levels
  see one point per lower cluster instead of one per image;
- **resampling**: at each level, after a plain k-means, more k-means steps are run in which each
  centroid is updated from only `r` points sampled among the points closest to it (its cluster),
  whatever the cluster's size, so a large cluster pulls no harder than a small one.

Out of core: level 1 trains on a sample of at most `k · max_points_per_centroid` rows (read from a
memmap, float16 or float32) and every point is then assigned in batches; upper levels work on
centroids, which fit in memory. All vectors are unit rows, the k-means is spherical and assignment is
by inner product (faiss). The result is a `Hierarchy`: per level the centroids, each point's cluster
and each cluster's parent one level up; balanced sampling (`sample.py`) walks it top down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class KMeansConfig:
    niter: int = 20  # Lloyd iterations of each plain k-means (faiss)
    seed: int = 0  # seeds faiss's initialisation and every sample drawn here
    max_points_per_centroid: int = 256  # level 1 trains on at most k · this many sampled points
    resample_steps: int = 10  # k-means steps with resampling after the plain k-means; 0 = plain
    resample_r: int = 10  # r: the points each centroid is updated from at a resampling step
    batch: int = 65536  # rows assigned per faiss search: bounds memory on large pools
    # k-means from random starts lands in poor local minima on small or very uneven data (a dominant
    # concept takes most starting centroids and rare ones get merged); faiss' nredo keeps the best of
    # several runs. Only where one run is cheap: (training rows × k) at most redo_below.
    nredo: int = 5
    redo_below: int = 50_000_000


@dataclass(frozen=True)
class Hierarchy:
    centroids: tuple[np.ndarray, ...]  # level ℓ (index 0 = level 1): (k_ℓ, d) float32 unit rows
    labels: tuple[np.ndarray, ...]  # level ℓ: (n,) int64 cluster of each point at that level
    parents: tuple[np.ndarray, ...]  # level ℓ < top: (k_ℓ,) int64 its level-ℓ+1 cluster
    similarity: np.ndarray  # (n,) float32 cosine of each point to its level-1 centroid

    @property
    def levels(self) -> int:
        return len(self.centroids)

    @property
    def n(self) -> int:
        return len(self.similarity)


def check_pool(ids: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """ids as int64; ValueError unless there is one 2-d vector per unique id and at least one."""
    ids = np.asarray(ids, np.int64)
    if xb.ndim != 2 or len(xb) != len(ids):
        raise ValueError(f"expected one vector per id: {len(ids)} ids, vectors of shape {xb.shape}")
    if not len(ids):
        raise ValueError("the pool is empty: nothing to curate")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    return ids


def cluster_ranks(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(n,) rank of each row within its label by ascending key (0 = the smallest key of its label)."""
    n = len(labels)
    order = np.lexsort((key, labels))
    sorted_labels = labels[order]
    starts = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]] if n else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    ranks = np.empty(n, np.int64)
    ranks[order] = np.arange(n) - first
    return ranks


def assign(xb: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(labels, similarity): each row's nearest centroid by inner product and its cosine, in batches."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    labels, sims = np.zeros(len(xb), np.int64), np.zeros(len(xb), np.float32)
    for start in range(0, len(xb), batch):
        d, i = index.search(np.ascontiguousarray(xb[start:start + batch], np.float32), 1)
        labels[start:start + len(i)], sims[start:start + len(d)] = i[:, 0], d[:, 0]
    return labels, sims


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _resample(x: np.ndarray, centroids: np.ndarray, config: KMeansConfig, rng: np.random.Generator) -> np.ndarray:
    """k-means steps in which each centroid moves to the mean of r points drawn from its cluster."""
    for _ in range(config.resample_steps):
        labels, _ = assign(x, centroids, config.batch)
        drawn = np.flatnonzero(cluster_ranks(labels, rng.random(len(x))) < config.resample_r)
        drawn = drawn[np.argsort(labels[drawn], kind="stable")]
        owners, starts = np.unique(labels[drawn], return_index=True)
        centroids = centroids.copy()  # a cluster nothing fell into keeps its centroid
        centroids[owners] = _normalize(np.add.reduceat(x[drawn].astype(np.float64), starts, axis=0))
    return centroids


def kmeans(xb: np.ndarray, k: int, config: KMeansConfig = KMeansConfig(), *, level: int = 1) -> np.ndarray:
    """(k, d) float32 unit centroids of the rows of xb: spherical faiss k-means on a sample of at most
    k · max_points_per_centroid rows, then `resample_steps` resampling steps on that sample."""
    if k < 1:
        raise ValueError(f"k-means needs at least one cluster, got {k}")
    if k > len(xb):
        raise ValueError(f"level {level}: {k} clusters for {len(xb)} points; ask for at most one per point")
    rng = np.random.default_rng([config.seed, level])
    n_train = min(len(xb), k * config.max_points_per_centroid)
    rows = np.sort(rng.choice(len(xb), n_train, replace=False)) if n_train < len(xb) else slice(None)
    x = np.ascontiguousarray(xb[rows], np.float32)
    nredo = config.nredo if len(x) * k <= config.redo_below else 1
    km = faiss.Kmeans(x.shape[1], k, niter=config.niter, seed=config.seed + level, spherical=True, nredo=nredo,
                      max_points_per_centroid=config.max_points_per_centroid, min_points_per_centroid=1)
    km.train(x)
    return _resample(x, km.centroids, config, rng)


def _check_levels(levels: Sequence[int], n: int) -> tuple[int, ...]:
    levels = tuple(int(k) for k in levels)
    if not levels:
        raise ValueError("hierarchical k-means needs at least one level, e.g. levels=(1000, 100, 10)")
    for i, (k, below) in enumerate(zip(levels, (n, *levels[:-1]), strict=True)):
        if k < 1 or k > below:
            what = "points" if i == 0 else f"level-{i} clusters"
            raise ValueError(f"level {i + 1} asks for {k} clusters of {below} {what}; "
                             "each level needs between 1 and as many clusters as the level below has")
    return levels


def hierarchical_kmeans(xb: np.ndarray, levels: Sequence[int], config: KMeansConfig = KMeansConfig()) -> Hierarchy:
    """Cluster n unit rows into levels[0] clusters, those centroids into levels[1], and so on.

    Every level-ℓ cluster has exactly one parent at level ℓ+1 (its centroid's nearest), and a point's
    cluster at level ℓ+1 is its level-ℓ cluster's parent, so the levels nest."""
    if xb.ndim != 2 or not len(xb):
        raise ValueError(f"expected a non-empty (n, d) array of vectors, got shape {xb.shape}")
    levels = _check_levels(levels, len(xb))
    centroids = [kmeans(xb, levels[0], config)]
    labels, similarity = assign(xb, centroids[0], config.batch)
    all_labels, parents = [labels], []
    for level, k in enumerate(levels[1:], start=2):
        centroids.append(kmeans(centroids[-1], k, config, level=level))
        parents.append(assign(centroids[-2], centroids[-1], config.batch)[0])
        all_labels.append(parents[-1][all_labels[-1]])
    return Hierarchy(tuple(centroids), tuple(all_labels), tuple(parents), similarity)

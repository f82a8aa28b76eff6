"""Balanced sampling over a cluster hierarchy (Vo et al. 2024, arXiv 2405.15613), and the stage
that only labels items with their clusters.

`balanced_sample` splits the budget n evenly across the top-level clusters; a cluster smaller than
its share takes all its items and leaves the rest to the others (water-filling). Each cluster's
share is split the same way across its children, down to level 1, where a cluster's share is filled
with random members (`random`) or the members closest to its centroid (`central`). A long tail of
small concepts therefore keeps all its items while a dominant concept is cut down to its share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from indexing.curation.hkmeans import Hierarchy, KMeansConfig, check_pool, cluster_ranks, hierarchical_kmeans
from indexing.curation.result import StageResult, dropped_table

STRATEGIES = ("random", "central")


def water_fill(sizes: np.ndarray, budget: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Counts ≤ sizes, summing to min(budget, sizes.sum()), as equal as the sizes allow.

    Every count is min(size, L) for the largest level L that fits the budget; the few units left
    over go one each to clusters that still have room (chosen by rng, else the first ones)."""
    sizes = np.asarray(sizes, np.int64)
    if budget >= sizes.sum():
        return sizes.copy()
    lo, hi = 0, int(sizes.max())
    while lo < hi:  # the largest L with sum(min(sizes, L)) <= budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(sizes, mid).sum() <= budget else (lo, mid - 1)
    counts = np.minimum(sizes, lo)
    room = np.flatnonzero(sizes > lo)  # fewer left-over units than these clusters, since L is the largest
    if rng is not None:
        room = rng.permutation(room)
    counts[room[:budget - counts.sum()]] += 1
    return counts


def _quotas(hierarchy: Hierarchy, n: int, rng: np.random.Generator) -> np.ndarray:
    """(k_1,) how many items each level-1 cluster gives, splitting n from the top level down."""
    sizes = [np.bincount(lab, minlength=len(c)) for lab, c in zip(hierarchy.labels, hierarchy.centroids, strict=True)]
    quota = water_fill(sizes[-1], n, rng)
    for level in range(hierarchy.levels - 2, -1, -1):
        parent = hierarchy.parents[level]
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(len(quota) + 1))
        child_quota = np.zeros(len(parent), np.int64)
        for p in np.flatnonzero(quota):
            children = order[bounds[p]:bounds[p + 1]]
            child_quota[children] = water_fill(sizes[level][children], int(quota[p]), rng)
        quota = child_quota
    return quota


def _annotations(ids: np.ndarray, hierarchy: Hierarchy, rows: np.ndarray) -> pa.Table:
    columns = {"id": pa.array(ids[rows])}
    for level, labels in enumerate(hierarchy.labels, start=1):
        columns[f"cluster_l{level}"] = pa.array(labels[rows])
    return pa.table(columns)


def balanced_sample(ids: np.ndarray, hierarchy: Hierarchy, n: int, strategy: str = "random",
                    seed: int = 0) -> StageResult:
    """Keep exactly n items (all of them when n ≥ the pool), balanced over the hierarchy's clusters;
    the rest are dropped as `sampled_out`. Annotations: `cluster_l1`, `cluster_l2`, … per kept id."""
    ids = np.asarray(ids, np.int64)
    if len(ids) != hierarchy.n:
        raise ValueError(f"the hierarchy clusters {hierarchy.n} points but {len(ids)} ids were given")
    if n < 1:
        raise ValueError(f"a sample needs n ≥ 1 items, got {n}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    rng = np.random.default_rng(seed)
    quota = _quotas(hierarchy, n, rng)
    labels = hierarchy.labels[0]
    key = rng.random(len(ids)) if strategy == "random" else -hierarchy.similarity
    chosen = cluster_ranks(labels, key) < quota[labels]
    rows = np.flatnonzero(chosen)
    rows = rows[np.argsort(ids[rows], kind="stable")]
    return StageResult(ids[rows], dropped_table(np.sort(ids[~chosen]), "sampled_out"),
                       _annotations(ids, hierarchy, rows))


def cluster_stage(ids: np.ndarray, xb: np.ndarray, levels: Sequence[int] = (100, 10), *,
                  config: KMeansConfig | None = None) -> StageResult:
    """`retr curate cluster`: every item kept, labelled with its cluster at each level
    (`cluster_l1`, `cluster_l2`, …) by hierarchical k-means with resampling."""
    ids = check_pool(ids, xb)
    hierarchy = hierarchical_kmeans(xb, levels, config or KMeansConfig())
    rows = np.argsort(ids, kind="stable")
    return StageResult(ids[rows], dropped_table([], "sampled_out"), _annotations(ids, hierarchy, rows))

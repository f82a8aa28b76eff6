"""Dataset curation (`retr curate`, issue #26): stages that take vectors and ids and return the ids
kept and the ids dropped, each with its reason, in the style of DINOv2's LVD-142M pipeline.

Every stage is a pure function of `ids` (n,) int64 and `xb` (n, d) unit rows (a float16/float32
memmap is fine: it is read in batches) returning a `StageResult` (result.py). The CLI and the
report only format that.

- `dedup.py`: exact duplicates by content hash, near-duplicates by a cosine k-NN graph (an IVF
  search done list by list with matrix products above `exact_below`), exactly one kept per connected
  group; pool items too close to an evaluation set. Tests: tests/test_curation_dedup.py.
- `retrieve.py`: DINOv2-style retrieval of pool items near curated seeds: `retrieve_sample` keeps
  the union of each seed's k nearest pool items (annotated with the nearest seed), `retrieve_cluster`
  keeps the pool k-means clusters that seeds fall into, capped per cluster. Drops are
  `not_retrieved` / `sampled_out`. Tests: tests/test_curation_cluster.py.
- `hkmeans.py`: hierarchical k-means with resampling (Vo et al. 2024): level 1 on the points, each
  next level on the previous centroids, extra k-means steps where every centroid is updated from r
  points of its cluster so centroids spread over concepts rather than density. Returns a `Hierarchy`
  (centroids, labels and parents per level). Tests: tests/test_curation_cluster.py.
- `sample.py`: `balanced_sample` splits a budget n evenly over the hierarchy top down (water-filling:
  a small cluster gives its unused share to its siblings) and fills each level-1 cluster's share
  with random or most central members; `cluster_stage` only labels items with their clusters
  (`retr curate cluster`). Tests: tests/test_curation_cluster.py.

Benchmark at 1M × 512: bench/bench_curate.py, figures in docs/benchmarks.md ("Curation").
"""

from indexing.curation.dedup import (
    connected_components,
    drop_near,
    exact_duplicates,
    exact_groups,
    keep_one_per_group,
    near_duplicate_pairs,
    near_duplicates,
    pixel_duplicates,
)
from indexing.curation.hkmeans import Hierarchy, KMeansConfig, assign, hierarchical_kmeans, kmeans
from indexing.curation.result import DROPPED_SCHEMA, REASONS, StageResult, dropped_table
from indexing.curation.retrieve import SearchConfig, pool_index, retrieve_cluster, retrieve_sample
from indexing.curation.sample import STRATEGIES, balanced_sample, cluster_stage, water_fill

__all__ = [
    "DROPPED_SCHEMA", "REASONS", "STRATEGIES", "Hierarchy", "KMeansConfig", "SearchConfig", "StageResult", "assign",
    "balanced_sample", "cluster_stage", "connected_components", "drop_near", "dropped_table", "exact_duplicates",
    "exact_groups", "hierarchical_kmeans", "keep_one_per_group", "kmeans", "near_duplicate_pairs",
    "near_duplicates", "pixel_duplicates", "pool_index", "retrieve_cluster", "retrieve_sample", "water_fill",
]

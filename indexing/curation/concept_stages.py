"""`retr curate retrieve | cluster | sample` on a pool: their settings, the library call, the report.

    retrieve  seeds' k nearest pool items (mode sample), or the k-means clusters seeds fall into (mode cluster)
    cluster   every item labelled with its cluster at each level (hierarchical k-means with resampling)
    sample    n items balanced over that hierarchy's clusters (Vo et al. 2024)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexing.curation.hkmeans import KMeansConfig, hierarchical_kmeans
from indexing.curation.pool import Pool
from indexing.curation.report import Chart, Report, Tile
from indexing.curation.result import StageResult
from indexing.curation.retrieve import retrieve_cluster, retrieve_sample
from indexing.curation.sample import STRATEGIES, balanced_sample, cluster_stage

MODES = ("sample", "cluster")
SHEETS = 12  # clusters (or seeds) drawn in a report
PER_SHEET = 10  # images per cluster row


@dataclass(frozen=True)
class RetrieveConfig:
    mode: str = "sample"  # sample: k nearest per seed; cluster: k-means clusters the seeds fall into
    k: int = 32  # sample mode: pool items per seed
    threshold: float | None = None  # sample mode: only neighbours at cosine ≥ this
    clusters: int = 100  # cluster mode: k-means clusters of the pool
    per_cluster: int = 1000  # cluster mode: items kept per cluster, closest to its centroid first
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be sample or cluster, got {self.mode!r}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold is a cosine similarity in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class ClusterConfig:
    levels: tuple[int, ...] = (100, 10)  # clusters per level, finest first
    seed: int = 0


@dataclass(frozen=True)
class SampleConfig:
    n: int = 1000  # items to keep
    strategy: str = "random"  # within a level-1 cluster: random members, or those closest to its centroid
    levels: tuple[int, ...] = (100, 10)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


def _levels(levels: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Cluster counts no larger than the pool allows (a small pool asked for 100 clusters gets n)."""
    out = []
    for k in levels:
        k = min(int(k), n if not out else out[-1])
        out.append(k)
    return tuple(out)


def retrieve(pool: Pool, seeds: Pool, config: RetrieveConfig, title: str) -> tuple[StageResult, Report]:
    if seeds.model != pool.model:
        raise ValueError(f"seed vectors are {seeds.model}, the pool's are {pool.model}")
    if len(seeds) == 0:
        raise ValueError("none of the seed images could be read")
    if config.mode == "sample":
        result = retrieve_sample(pool.ids, pool.xb, seeds.xb, config.k, threshold=config.threshold)
    else:
        result = retrieve_cluster(pool.ids, pool.xb, seeds.xb, min(config.clusters, len(pool)), config.per_cluster,
                                  seed=config.seed)
    if len(result.kept) == 0:
        raise ValueError(f"no pool item is within --threshold {config.threshold} of any of the {len(seeds)} seeds; "
                         "lower it, or check that the seeds and the pool show the same things")
    report = Report(title, {}, {"model": pool.model, "seeds": f"{len(seeds):,} images",
                                **{k: str(v) for k, v in vars(config).items()}})
    column = "seed" if config.mode == "sample" else "cluster"
    seed_paths = seeds.meta.column("path").to_pylist()
    heading = "What each seed retrieved (seed first, green)" if config.mode == "sample" else \
        "Clusters the seeds fall into (a row of members each)"
    rows = []
    for label, members in _members(pool, result, column)[:SHEETS]:
        lead = [Tile(seed_paths[label], f"seed {label}", kept=True)] if config.mode == "sample" else []
        rows.append(lead + members)
    report.add_rows(heading, rows)
    return result, report


def _members(pool: Pool, result: StageResult, column: str) -> list[tuple[int, list[Tile]]]:
    """(label, a row of member tiles) per value of an annotation column, largest group first."""
    ann = result.annotations
    labels = ann.column(column).to_numpy()
    paths = dict(zip(pool.ids.tolist(), pool.meta.column("path").to_pylist(), strict=True))
    ids = ann.column("id").to_numpy()
    values, counts = np.unique(labels, return_counts=True)
    out = []
    for v in values[np.argsort(-counts, kind="stable")]:
        mine = ids[labels == v]
        out.append((int(v), [Tile(paths[int(i)], f"#{i}") for i in mine[:PER_SHEET]]))
    return out


def cluster(pool: Pool, config: ClusterConfig, title: str) -> tuple[StageResult, Report]:
    levels = _levels(config.levels, len(pool))
    result = cluster_stage(pool.ids, pool.xb, levels, config=KMeansConfig(seed=config.seed))
    report = Report(title, {}, {"model": pool.model, "levels": str(levels), "seed": str(config.seed)})
    top = f"cluster_l{len(levels)}"
    sizes = np.bincount(result.annotations.column(top).to_numpy())
    report.charts.append(_size_chart(f"Items per top-level cluster ({len(levels)} levels)", {"items": sizes}))
    rows = _members(pool, result, "cluster_l1")
    picked = rows[:SHEETS // 2] + rows[-(SHEETS // 2):] if len(rows) > SHEETS else rows
    report.add_rows("Level-1 clusters: the largest, then the smallest", [tiles for _, tiles in picked])
    return result, report


def sample(pool: Pool, config: SampleConfig, title: str) -> tuple[StageResult, Report]:
    levels = _levels(config.levels, len(pool))
    hierarchy = hierarchical_kmeans(pool.xb, levels, KMeansConfig(seed=config.seed))
    result = balanced_sample(pool.ids, hierarchy, config.n, config.strategy, seed=config.seed)
    top = hierarchy.labels[-1]
    before = np.bincount(top, minlength=levels[-1])
    after = np.bincount(result.annotations.column(f"cluster_l{len(levels)}").to_numpy(), minlength=levels[-1])
    order = np.argsort(-before, kind="stable")
    facts = {"model": pool.model, "n": str(config.n), "strategy": config.strategy, "levels": str(levels),
             "share entropy before → after": f"{share_entropy(before):.3f} → {share_entropy(after):.3f} bits",
             "largest ÷ smallest cluster before → after": f"{spread(before):.1f} → {spread(after):.1f}"}
    report = Report(title, {}, facts)
    report.charts.append(_size_chart("Items per top-level cluster, before and after balancing (largest first)",
                                     {"before": before[order], "after": after[order]}))
    rows = _members(pool, result, "cluster_l1")
    report.add_rows("Kept items of the largest level-1 clusters", [tiles for _, tiles in rows[:SHEETS]])
    return result, report


def share_entropy(sizes: np.ndarray) -> float:
    """Entropy (bits) of the items' distribution over clusters: log2(#clusters) when perfectly even."""
    p = np.asarray(sizes, float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def spread(sizes: np.ndarray) -> float:
    """Largest ÷ smallest non-empty cluster."""
    s = np.asarray(sizes)[np.asarray(sizes) > 0]
    return float(s.max() / s.min()) if len(s) else 0.0


def _size_chart(title: str, series: dict[str, np.ndarray]) -> Chart:
    first = next(iter(series.values()))
    return Chart(title, "bars", [str(i) for i in range(len(first))], {k: v.tolist() for k, v in series.items()},
                 x_label="cluster (largest first)")

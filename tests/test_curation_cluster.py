"""The curation stages after dedup, on seeded Gaussian mixtures with known concepts: seed retrieval
against brute force, hierarchical k-means nesting, balanced sampling that flattens a long tail, and
kept + dropped = input for every stage."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.curation import (
    REASONS,
    Hierarchy,
    KMeansConfig,
    SearchConfig,
    balanced_sample,
    cluster_stage,
    hierarchical_kmeans,
    retrieve_cluster,
    retrieve_sample,
    water_fill,
)

FAST = KMeansConfig(niter=10, resample_steps=5)


def _mixture(sizes, d: int = 16, spread: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(xb, concept): unit rows around one random centre per concept; concepts far apart."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), d)).astype(np.float32)
    concept = np.repeat(np.arange(len(sizes)), sizes)
    xb = centres[concept] / np.linalg.norm(centres[concept], axis=1, keepdims=True)
    xb = xb + spread * rng.standard_normal(xb.shape).astype(np.float32)
    return (xb / np.linalg.norm(xb, axis=1, keepdims=True)).astype(np.float32), concept


def _ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).permutation(10 * n)[:n].astype(np.int64)


def _accounts_for_input(res, ids) -> None:
    """kept + dropped = input, no id twice, reasons from the fixed vocabulary."""
    dropped = res.dropped.column("id").to_numpy()
    assert sorted(np.concatenate([res.kept, dropped]).tolist()) == sorted(ids.tolist())
    assert set(res.dropped.column("reason").to_pylist()) <= set(REASONS)
    assert res.annotations.column("id").to_pylist() == res.kept.tolist()


@pytest.mark.parametrize("threshold", [None, 0.9])
def test_retrieve_sample_is_the_union_of_brute_force_knn(threshold):
    xb, _ = _mixture([150, 100, 80, 70], seed=2)
    ids = _ids(len(xb))
    xs = xb[[3, 160, 300]] + 0.05 * np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    res = retrieve_sample(ids, xb, xs, 12, threshold=threshold)
    sims = xs @ xb.T
    top = np.argsort(-sims, axis=1)[:, :12]
    union = {int(j) for s, row in enumerate(top) for j in row if threshold is None or sims[s, j] >= threshold}
    assert set(res.kept.tolist()) == {int(ids[j]) for j in union}
    _accounts_for_input(res, ids)
    assert set(res.dropped.column("reason").to_pylist()) == {"not_retrieved"}
    assert set(res.dropped.column("of_id").to_pylist()) == {-1}
    for row in res.annotations.to_pylist():  # the nearest seed among those that retrieved it
        j = int(np.flatnonzero(ids == row["id"])[0])
        retrieved_by = [s for s in range(3) if j in top[s]]
        assert row["seed"] == max(retrieved_by, key=lambda s: sims[s, j])
        assert row["seed_similarity"] == pytest.approx(float(sims[row["seed"], j]), abs=1e-5)


def test_retrieve_sample_ivf_finds_nearly_all_of_the_exact_neighbours():
    xb, _ = _mixture([1500] * 4, d=32, spread=0.1, seed=4)
    xs = xb[[0, 2000, 4000, 5999]]
    exact = retrieve_sample(np.arange(len(xb)), xb, xs, 20)
    ivf = retrieve_sample(np.arange(len(xb)), xb, xs, 20, config=SearchConfig(exact_below=1000, nprobe=16))
    assert len(np.intersect1d(exact.kept, ivf.kept)) / len(exact.kept) >= 0.95  # observed 1.0


def test_retrieve_cluster_keeps_only_clusters_with_seeds_and_caps_them():
    xb, concept = _mixture([120, 90, 60, 40, 30, 20], seed=5)
    ids = _ids(len(xb))
    xs = xb[[5, 250]]  # concepts 0 and 2
    res = retrieve_cluster(ids, xb, xs, 6, 25, config=KMeansConfig(niter=20, resample_steps=0))
    _accounts_for_input(res, ids)
    kept_rows = np.flatnonzero(np.isin(ids, res.kept))
    assert set(concept[kept_rows].tolist()) == {0, 2}  # well-separated: one cluster per concept
    assert len(res.kept) == 50 and np.bincount(res.annotations.column("cluster").to_numpy()).max() == 25
    reasons = res.dropped.group_by("reason").aggregate([("id", "count")]).to_pylist()
    assert {r["reason"]: r["id_count"] for r in reasons} == {"sampled_out": 120 + 60 - 50,
                                                            "not_retrieved": 90 + 40 + 30 + 20}
    # the capped ones are those closest to the cluster centre
    kept0 = [j for j in kept_rows if concept[j] == 0]
    members = np.flatnonzero(concept == 0)
    centre = xb[members].mean(0)
    centre /= np.linalg.norm(centre)
    assert np.sort(xb[kept0] @ centre).min() >= np.sort(xb[members] @ centre)[-25] - 1e-3


def _long_tail() -> tuple[np.ndarray, np.ndarray]:
    return _mixture([1000, 300, 100, 30, 10], seed=6)


def _shares(concept: np.ndarray) -> tuple[float, float]:
    """(largest ÷ smallest share, entropy ÷ log 5) of a concept distribution."""
    p = np.bincount(concept, minlength=5) / len(concept)
    return p.max() / p.min(), float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(5))


@pytest.fixture(scope="module")
def tail_hierarchy() -> tuple[np.ndarray, np.ndarray, Hierarchy]:
    xb, concept = _long_tail()
    return xb, concept, hierarchical_kmeans(xb, (40, 8, 3), FAST)


def test_levels_nest(tail_hierarchy):
    xb, _, h = tail_hierarchy
    assert h.levels == 3 and [len(c) for c in h.centroids] == [40, 8, 3]
    for level in range(h.levels - 1):
        assert np.array_equal(h.labels[level + 1], h.parents[level][h.labels[level]])
        for cluster in np.unique(h.labels[level]):  # one parent per cluster
            assert len(np.unique(h.labels[level + 1][h.labels[level] == cluster])) == 1
    np.testing.assert_allclose(np.linalg.norm(h.centroids[0], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(h.similarity, np.einsum("ij,ij->i", xb, h.centroids[0][h.labels[0]]), atol=1e-5)


@pytest.mark.parametrize("n", [1, 37, 150, 1439, 1440, 5000])
def test_balanced_sample_returns_exactly_n_unique_ids(tail_hierarchy, n):
    xb, _, h = tail_hierarchy
    ids = _ids(len(xb))
    res = balanced_sample(ids, h, n)
    assert len(res.kept) == min(n, len(ids)) == len(np.unique(res.kept))
    _accounts_for_input(res, ids)
    assert set(res.dropped.column("reason").to_pylist()) <= {"sampled_out"}
    assert res.annotations.column_names == ["id", "cluster_l1", "cluster_l2", "cluster_l3"]


@pytest.mark.parametrize("strategy", ["random", "central"])
def test_balanced_sample_flattens_a_long_tail(tail_hierarchy, strategy):
    xb, concept, h = tail_hierarchy
    res = balanced_sample(np.arange(len(xb)), h, 150, strategy)
    pool_ratio, pool_entropy = _shares(concept)
    ratio, entropy = _shares(concept[res.kept])
    assert ratio < pool_ratio / 5  # pool 100; observed ~12 (the 10-item concept kept whole)
    assert entropy > pool_entropy + 0.15  # pool 0.64; observed ~0.9


def test_central_picks_the_points_closest_to_their_centroid(tail_hierarchy):
    xb, _, h = tail_hierarchy
    res = balanced_sample(np.arange(len(xb)), h, 200, "central")
    chosen = np.zeros(len(xb), bool)
    chosen[res.kept] = True
    for cluster in np.unique(h.labels[0][chosen]):
        inside = h.labels[0] == cluster
        if (inside & ~chosen).any():
            assert h.similarity[inside & chosen].min() >= h.similarity[inside & ~chosen].max()


def test_water_fill_gives_small_clusters_everything_and_splits_the_rest():
    assert water_fill(np.array([1, 10, 10]), 11).tolist() == [1, 5, 5]
    assert water_fill(np.array([2, 3]), 10).tolist() == [2, 3]
    counts = water_fill(np.array([5, 5, 5, 0]), 10, np.random.default_rng(0))
    assert counts.sum() == 10 and sorted(counts.tolist()) == [0, 3, 3, 4]


def test_seeded_runs_repeat_and_another_seed_differs():
    xb, _ = _long_tail()
    a = hierarchical_kmeans(xb, (30, 5), FAST)
    b = hierarchical_kmeans(xb, (30, 5), FAST)
    assert all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels, strict=True))
    assert np.array_equal(balanced_sample(np.arange(len(xb)), a, 100, seed=3).kept,
                          balanced_sample(np.arange(len(xb)), b, 100, seed=3).kept)
    assert not np.array_equal(balanced_sample(np.arange(len(xb)), a, 100, seed=3).kept,
                              balanced_sample(np.arange(len(xb)), a, 100, seed=4).kept)


def test_float16_memmap_pool_gives_the_same_stages(tmp_path):
    xb, _ = _mixture([200, 100, 50], seed=7)
    mm = np.lib.format.open_memmap(tmp_path / "xb.npy", "w+", np.float16, xb.shape)
    mm[:] = xb
    mm.flush()
    pool = np.load(tmp_path / "xb.npy", mmap_mode="r")
    small = KMeansConfig(niter=10, resample_steps=3, batch=64)  # several batches
    res = cluster_stage(np.arange(len(xb)), pool, (6, 2), config=small)
    assert len(res.kept) == len(xb) and res.dropped.num_rows == 0
    assert res.annotations.column_names == ["id", "cluster_l1", "cluster_l2"]
    seeds = xb[[0, 250]]
    assert np.array_equal(retrieve_sample(np.arange(len(xb)), pool, seeds, 10, config=SearchConfig(batch=64)).kept,
                          retrieve_sample(np.arange(len(xb)), xb.astype(np.float16).astype(np.float32), seeds, 10).kept)


@pytest.mark.parametrize("call, message", [
    (lambda xb, xs: retrieve_sample(np.arange(0), xb[:0], xs, 5), "pool is empty"),
    (lambda xb, xs: retrieve_sample(np.arange(50), xb, xs, 0), "k .* must be ≥ 1"),
    (lambda xb, xs: retrieve_sample(np.arange(50), xb, xs[:, :8], 5), "seeds have dimension 8 but pool vectors 16"),
    (lambda xb, xs: retrieve_sample(np.arange(49), xb, xs, 5), "one vector per id"),
    (lambda xb, xs: retrieve_cluster(np.arange(50), xb, xs, 51, 10), "51 clusters for 50 points"),
    (lambda xb, xs: retrieve_cluster(np.arange(50), xb, xs, 5, 0), "per_cluster must be ≥ 1"),
    (lambda xb, xs: hierarchical_kmeans(xb, (10, 20)), "level 2 asks for 20 clusters of 10"),
    (lambda xb, xs: hierarchical_kmeans(xb, ()), "at least one level"),
    (lambda xb, xs: cluster_stage(np.arange(50), xb, (60,)), "level 1 asks for 60 clusters of 50 points"),
])
def test_bad_input_is_a_clear_error(call, message):
    xb, _ = _mixture([25, 25], seed=8)
    with pytest.raises(ValueError, match=message):
        call(xb, xb[:2])


def test_bad_sample_requests_are_clear_errors(tail_hierarchy):
    xb, _, h = tail_hierarchy
    with pytest.raises(ValueError, match="n ≥ 1"):
        balanced_sample(np.arange(len(xb)), h, 0)
    with pytest.raises(ValueError, match="strategy must be one of random, central"):
        balanced_sample(np.arange(len(xb)), h, 10, "largest")
    with pytest.raises(ValueError, match="clusters 1440 points but 10 ids"):
        balanced_sample(np.arange(10), h, 5)

"""indexing.faiss_build + indexing.tune on small seeded clustered vectors, against exact search.

Data: faiss' SyntheticDataset (a 10-d manifold bent into 32-d), rows normalised, 20k database
vectors, 400 tuning queries and 400 held-out queries. Ids are large and sparse so that a lost
or truncated id shows.
"""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
from faiss.contrib.datasets import SyntheticDataset

from indexing.choose import IndexPlan, choose_index, parse_memory
from indexing.faiss_build import add_to_clone, read_index, train_and_add, train_empty, write_index_atomic
from indexing.tune import (
    K_FACTOR_LADDER,
    TuneResult,
    apply_search_param,
    exact_knn,
    recall_at_k,
    search_param_of,
    tune_search_params,
)

D, NB, NQ, K = 32, 20_000, 400, 10
TARGET = 0.9


@pytest.fixture(scope="module")
def data():
    ds = SyntheticDataset(D, 0, NB, 2 * NQ, metric="IP", seed=1338)
    xb, xq = ds.get_database().copy(), ds.get_queries().copy()
    faiss.normalize_L2(xb)
    faiss.normalize_L2(xq)
    ids = 10**12 + 7 * np.arange(NB, dtype=np.int64)[::-1]  # > 2**32, not positions
    _, gt = exact_knn(xb, xq, K)
    return xb, xq, ids, ids[gt]


@pytest.fixture(scope="module")
def plans():
    best_of_kind = {}
    for p in choose_index(NB, D, parse_memory("1GB")):  # ranked: the first of a kind is its best
        best_of_kind.setdefault(p.kind, p)
    return best_of_kind


# kind -> (recall target, tolerance on held-out queries). The tuner meets the target on the first
# 400 queries; on the other 400 we normally observe: flat 1.000, ivf_pq_refine 0.895 (nprobe 20,
# k_factor 16), hnsw 0.886 (HNSW32, efSearch 11), ivf_flat 0.891, ivf_sq8 0.890. ivf_pq (8-byte
# codes on 32-d vectors) plateaus at ~0.57, so it gets a lower target (observed 0.547).
CASES = {
    "flat": (TARGET, 0.0),
    "ivf_pq_refine": (TARGET, 0.04),
    "hnsw": (TARGET, 0.04),
    "ivf_flat": (TARGET, 0.04),
    "ivf_sq8": (TARGET, 0.04),
    "ivf_pq": (0.55, 0.05),
}


@pytest.fixture(scope="module")
def built(data, plans):
    xb, _, ids, _ = data
    return {kind: train_and_add(plans[kind], xb, ids, seed=0) for kind in CASES}


@pytest.mark.parametrize("kind", list(CASES))
def test_plan_builds_keeps_global_ids_and_tunes_to_target(kind, data, plans, built):
    xb, xq, ids, gt = data
    index = built[kind]
    assert index.ntotal == NB
    target, tol = CASES[kind]
    tuned = tune_search_params(index, xq[:NQ], gt[:NQ], K, target)
    assert tuned.param == plans[kind].search_param
    assert tuned.recall >= target
    _, I = index.search(xq[NQ:], K)
    assert set(np.unique(I)) <= set(ids)
    assert recall_at_k(I, gt[NQ:], K) >= target - tol
    # a database vector finds itself, under its global id
    _, I_self = index.search(xb[:200], 1)
    assert np.mean(I_self[:, 0] == ids[:200]) >= (0.95 if kind == "ivf_pq" else 0.99)  # observed 0.995 / 1.0


def test_tuned_value_is_the_smallest_reaching_target(data, built):
    _, xq, _, gt = data
    index = built["ivf_flat"]
    tuned = tune_search_params(index, xq[:NQ], gt[:NQ], K, TARGET)
    assert tuned.value > 1
    apply_search_param(index, "nprobe", tuned.value - 1)
    _, I = index.search(xq[:NQ], K)
    assert recall_at_k(I, gt[:NQ], K) < TARGET


def test_refine_tuning_picks_a_k_factor(data, built):
    _, xq, _, gt = data
    tuned = tune_search_params(built["ivf_pq_refine"], xq[:NQ], gt[:NQ], K, TARGET)
    assert tuned.k_factor in K_FACTOR_LADDER  # observed 16
    assert faiss.downcast_index(faiss.downcast_index(built["ivf_pq_refine"]).index).k_factor == tuned.k_factor


def test_flat_tunes_to_exact(data, built):
    _, xq, _, gt = data
    tuned = tune_search_params(built["flat"], xq[:NQ], gt[:NQ], K, TARGET)
    assert (tuned.param, tuned.value, tuned.recall) == (None, None, 1.0)
    assert tuned.qps > 0


def test_unreachable_target_returns_best_effort(data, built):
    _, xq, _, gt = data
    tuned = tune_search_params(built["ivf_pq"], xq[:NQ], gt[:NQ], K, 0.99)
    assert tuned.recall < 0.99  # 8-byte codes cap recall (observed 0.568 at nprobe 64)
    assert tuned.value <= faiss.extract_index_ivf(built["ivf_pq"]).nlist


def test_apply_search_param_reaches_through_idmap(built):
    index = built["hnsw"]
    assert search_param_of(index) == "efSearch"
    apply_search_param(index, "efSearch", 77)
    assert faiss.downcast_index(faiss.downcast_index(index).index).hnsw.efSearch == 77
    with pytest.raises(ValueError, match="refine"):
        apply_search_param(index, "k_factor", 4)


def test_shards_from_one_trained_index_equal_one_big_index(data, plans):
    xb, xq, ids, _ = data
    trained = train_empty(plans["ivf_flat"], xb, seed=0)
    half = NB // 2
    shards = [add_to_clone(trained, xb[:half], ids[:half]), add_to_clone(trained, xb[half:], ids[half:])]
    whole = add_to_clone(trained, xb, ids)
    assert trained.ntotal == 0  # clones are filled, the trained template stays empty
    for index in [*shards, whole]:
        apply_search_param(index, "nprobe", 8)
    # same coarse quantizer everywhere: merging the shards' top-k by score gives the whole index's top-k
    results = [s.search(xq, K) for s in shards]
    D_all, I_all = np.hstack([r[0] for r in results]), np.hstack([r[1] for r in results])
    order = np.argsort(-D_all, axis=1, kind="stable")[:, :K]
    merged = np.take_along_axis(I_all, order, axis=1)
    _, I_whole = whole.search(xq, K)
    assert np.mean(merged == I_whole) >= 0.999  # observed 1.0 (ties may swap)


def test_training_is_seeded(data, plans):
    xb = data[0]
    plan = plans["ivf_flat"]

    def centroids(seed):
        index = train_empty(plan, xb, seed=seed)  # held: the extracted IVF does not own it
        ivf = faiss.extract_index_ivf(index)
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    np.testing.assert_array_equal(centroids(3), centroids(3))
    assert not np.array_equal(centroids(3), centroids(4))


def test_add_to_clone_validates(data, plans):
    xb, _, ids, _ = data
    untrained = faiss.index_factory(D, plans["ivf_flat"].factory, faiss.METRIC_INNER_PRODUCT)
    with pytest.raises(ValueError, match="trained"):
        add_to_clone(untrained, xb, ids)
    trained = train_empty(plans["ivf_sq8"], xb, seed=0)
    with pytest.raises(ValueError, match="ids"):
        add_to_clone(trained, xb, ids[:-1])
    with pytest.raises(ValueError, match="float32"):
        add_to_clone(trained, xb.astype(np.float64), ids)
    with pytest.raises(ValueError, match="unit length"):
        add_to_clone(trained, 2 * xb, ids)


def test_write_is_atomic_and_reads_back(tmp_path, data, built):
    _, xq, _, _ = data
    path = tmp_path / "shard0.index"
    for kind in ("ivf_pq_refine", "ivf_flat"):  # the second write replaces the first
        write_index_atomic(built[kind], path)
    assert os.listdir(tmp_path) == ["shard0.index"]  # no temp file left behind
    D0, I0 = built["ivf_flat"].search(xq, K)
    for mmap in (False, True):
        D1, I1 = read_index(path, mmap=mmap).search(xq, K)  # nprobe travels with the file
        np.testing.assert_array_equal(I1, I0)


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch, built):
    path = tmp_path / "shard0.index"
    write_index_atomic(built["ivf_sq8"], path)
    before = path.read_bytes()

    def crash(index, fname):
        with open(fname, "wb") as f:
            f.write(b"half an index")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_index_atomic(built["ivf_flat"], path)
    assert os.listdir(tmp_path) == ["shard0.index"]
    assert path.read_bytes() == before


def test_read_index_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no index file"):
        read_index(tmp_path / "nope.index")


def test_exact_knn_and_recall_at_k():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((50, 8)).astype(np.float32)
    xq = rng.standard_normal((5, 8)).astype(np.float32)
    D_, I_ = exact_knn(xb, xq, 3)
    np.testing.assert_array_equal(I_, np.argsort(-(xq @ xb.T), axis=1)[:, :3])
    np.testing.assert_allclose(D_, np.sort(xq @ xb.T, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    gt = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [-1, -1, -1]])
    assert recall_at_k(found, gt, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(found, gt, 1) == 0.0  # only the first column counts at k=1
    with pytest.raises(ValueError):
        recall_at_k(found[:1], gt, 3)


def test_bad_device_is_refused(data, plans):
    xb = data[0]
    with pytest.raises(ValueError, match="device"):
        train_empty(plans["ivf_flat"], xb, device="tpu")
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match="GPU"):
            train_empty(plans["ivf_flat"], xb, device="cuda")


def _has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs faiss-gpu and a visible GPU")
@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq_refine"])
def test_gpu_build_returns_cpu_index_with_ids(kind, data, plans):
    xb, xq, ids, gt = data
    index = train_and_add(plans[kind], xb, ids, device="cuda", seed=0)
    assert "Gpu" not in type(faiss.downcast_index(index)).__name__
    tuned = tune_search_params(index, xq[:NQ], gt[:NQ], K, TARGET)
    assert isinstance(tuned, TuneResult) and tuned.recall >= TARGET
    _, I = index.search(xq[NQ:], K)
    assert recall_at_k(I, gt[NQ:], K) >= TARGET - 0.04


def test_plan_dataclass_is_frozen(plans):
    with pytest.raises(AttributeError):
        plans["flat"].factory = "HNSW32"  # type: ignore[misc]
    assert isinstance(plans["flat"], IndexPlan)

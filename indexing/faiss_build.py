"""Build a FAISS index from an `IndexPlan`: train once, then fill clones of the trained index.

Shards must share one trained coarse quantizer / PQ codebook, otherwise their codes and scores
are not comparable (and IVF shards could not be merged). So building is two steps:

    trained = train_empty(plan, train_xb, seed=0)        # once, on a sample of the whole corpus
    shard_i = add_to_clone(trained, xb_i, ids_i)         # per shard, anywhere, in any order

`train_and_add` does both for a single index. Ids are the corpus' global int64 ids: IVF indexes
store them in their inverted lists; the others are wrapped in IndexIDMap2 by their factory string
(`choose.py` writes "IDMap2,..."), which also lets `reconstruct(id)` work.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from indexing.atomic import atomic_path
from indexing.choose import IndexPlan
from indexing.tune import apply_search_param

METRIC = faiss.METRIC_INNER_PRODUCT  # every retr index: inner product on unit rows (cosine)
# OPQ alternates PQ training and a rotation fit; faiss' default of 50 rounds dominates training time.
# On 200k x 512 clustered vectors (OPQ64, IVF512): 10 rounds 25 s -> recall@10 0.652, 25 rounds
# 38 s -> 0.687, no OPQ 5 s -> 0.531.
OPQ_NITER = 25
UNIT_CHECK_ROWS = 1000  # rows whose norm is checked before training / adding


def train_empty(plan: IndexPlan, train_xb: np.ndarray, *, device: str = "cpu", seed: int = 0) -> faiss.Index:
    """An empty index of `plan`, trained on a seeded sample of plan.train_size rows of train_xb."""
    _check_device(device)
    train_xb = _as_unit_rows(train_xb, "train_xb")
    index = faiss.index_factory(train_xb.shape[1], plan.factory, METRIC)
    for name, value in plan.fixed_params:
        apply_search_param(index, name, value)
    _set_opq_niter(index, OPQ_NITER)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        # unit vectors searched by inner product: keep centroids on the sphere too
        ivf.cp.spherical = True
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq is not None:
            pq.cp.seed = seed
    if not index.is_trained:
        sample = _training_sample(train_xb, plan.train_size, seed)
        if device == "cuda":
            _train_on_gpu(index, ivf, sample)
        else:
            index.train(sample)
    return index


def add_to_clone(trained: faiss.Index, xb: np.ndarray, ids: np.ndarray, *, device: str = "cpu") -> faiss.Index:
    """A copy of `trained` holding xb under `ids` (global int64 ids); `trained` itself stays empty."""
    _check_device(device)
    if not trained.is_trained:
        raise ValueError("add_to_clone needs a trained index (see train_empty)")
    xb = _as_unit_rows(xb, "xb")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (len(xb),):
        raise ValueError(f"ids must have shape ({len(xb)},), got {ids.shape}")
    if xb.shape[1] != trained.d:
        raise ValueError(f"xb has dim {xb.shape[1]} but the index has dim {trained.d}")
    index = faiss.clone_index(trained)
    if device == "cuda":
        return _add_on_gpu(index, xb, ids)
    # One call, not batches: faiss inserts an HNSW batch in parallel from a fixed entry point, and
    # several batches gave a visibly worse graph (recall@10 0.95 -> 0.83 at efSearch 64, 300k x 512).
    index.add_with_ids(xb, ids)
    return index


def train_and_add(
    plan: IndexPlan,
    xb: np.ndarray,
    ids: np.ndarray,
    *,
    train_sample: np.ndarray | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> faiss.Index:
    """Train `plan` (on train_sample, else on xb) and add xb under `ids`. Always returns a CPU index."""
    trained = train_empty(plan, xb if train_sample is None else train_sample, device=device, seed=seed)
    return add_to_clone(trained, xb, ids, device=device)


def write_index_atomic(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write next to `path`, then os.replace: readers see the old index or the whole new one."""
    with atomic_path(Path(path)) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: str | os.PathLike, mmap: bool = False) -> faiss.Index:
    """Read an index; mmap=True maps IVF lists / flat codes from disk instead of loading them."""
    if not Path(path).is_file():
        raise ValueError(f"no index file at {path}")
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)


# --- helpers -------------------------------------------------------------------------------------


def _training_sample(xb: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size <= 0 or size >= len(xb):
        return xb
    rows = np.random.default_rng(seed).choice(len(xb), size, replace=False)
    return xb[np.sort(rows)]  # sorted rows: sequential reads when xb is memory-mapped


def _set_opq_niter(index: faiss.Index, niter: int) -> None:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = niter


def _as_unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, dim), got shape {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    # inner product is cosine only on unit rows; checking a prefix catches a forgotten normalisation
    norms = np.linalg.norm(x[:UNIT_CHECK_ROWS], axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(
            f"{name} rows must be unit length (norms {norms.min():.3f}..{norms.max():.3f}); "
            "call faiss.normalize_L2 first"
        )
    return np.ascontiguousarray(x)


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise ValueError(
            f"device='cuda' needs a GPU build of faiss and a visible GPU; this faiss {faiss.__version__} "
            f"sees {faiss.get_num_gpus()} GPU(s). Install retr[gpu] (faiss-gpu-cu12) or use device='cpu'."
        )


def _train_on_gpu(index: faiss.Index, ivf: faiss.IndexIVF | None, sample: np.ndarray) -> None:
    # k-means dominates training; run its assignment step on the GPU, keep the index on the CPU
    # (works for every IVF variant, including fast-scan codes that have no GPU implementation).
    if ivf is not None:
        res = faiss.StandardGpuResources()
        gpu_flat = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(ivf.d))  # kept alive: SWIG won't
        ivf.clustering_index = gpu_flat
        try:
            index.train(sample)
        finally:
            ivf.clustering_index = None
    else:
        index.train(sample)


def _add_on_gpu(index: faiss.Index, xb: np.ndarray, ids: np.ndarray) -> faiss.Index:
    # Only IVF (optionally behind OPQ) goes to the GPU: IDMap2-wrapped Flat is a memcpy and HNSW
    # has no GPU version. The CPU `index` is untouched by the GPU copy, so on any GPU error
    # (a type or size faiss-gpu does not support) we simply add on the CPU instead.
    if isinstance(faiss.downcast_index(index), (faiss.IndexIVF, faiss.IndexPreTransform)):
        res = faiss.StandardGpuResources()
        try:
            gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
            gpu_index.add_with_ids(xb, ids)
            return faiss.index_gpu_to_cpu(gpu_index)
        except RuntimeError:
            pass
    index.add_with_ids(xb, ids)
    return index

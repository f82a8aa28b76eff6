"""Build a FAISS index from an `IndexPlan`: train once, then fill clones of the trained index.

Shards must share one trained coarse quantizer / PQ codebook, otherwise their codes and scores
are not comparable (and IVF shards could not be merged). So building is two steps:

    trained = train_empty(plan, train_xb, seed=0)        # once, on a sample of the whole corpus
    shard_i = add_to_clone(trained, xb_i, ids_i)         # per shard, anywhere, in any order

`train_and_add` does both for a single index. Ids are the corpus' global int64 ids: IVF indexes
store them in their inverted lists; the others are wrapped in IndexIDMap2 by their factory string
(`choose.py` writes "IDMap2,..."), which also lets `reconstruct(id)` work.

An IVF shard X.faiss may keep its inverted lists in X.ivfdata next to it (kind "ivf_pq_ondisk",
built by `indexing.ondisk`); `read_index` maps that file whenever it is there.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from indexing.atomic import atomic_path
from indexing.choose import IndexPlan
from indexing.row_blocks import block_bounds, is_mapped, read_rows
from indexing.tune import apply_search_param

METRIC = faiss.METRIC_INNER_PRODUCT  # every retr index: inner product on unit rows (cosine)
# OPQ alternates PQ training and a rotation fit; faiss' default of 50 rounds dominates training time.
# On 200k x 512 clustered vectors (OPQ64, IVF512): 10 rounds 25 s -> recall@10 0.652, 25 rounds
# 38 s -> 0.687, no OPQ 5 s -> 0.531.
OPQ_NITER = 25
UNIT_CHECK_ROWS = 1000  # rows whose norm is checked before training / adding
SAMPLE_BLOCK_ROWS = 4096  # sampled rows read at a time from a memory-mapped input (_training_sample)
LISTS_SUFFIX = ".ivfdata"  # X.faiss keeps its on-disk inverted lists in X.ivfdata (faiss' own suffix)
# Threads OnDiskInvertedLists starts on every search to fault the probed lists in in parallel (faiss'
# default: 32). Starting them costs more than the reads they overlap: one query at a time, 200k x 512
# OPQ64 lists on 2 cores, 0 threads ran 3.2k QPS at nprobe 3 and 0.9k at nprobe 64, 32 threads
# 1.2k and 0.3k, with the lists file in the page cache or evicted from it alike (bench_ondisk.py).
ONDISK_PREFETCH_THREADS = 0


def train_empty(plan: IndexPlan, train_xb: np.ndarray, *, device: str = "cpu", seed: int = 0) -> faiss.Index:
    """An empty index of `plan`, trained on a seeded sample of plan.train_size rows of train_xb."""
    _check_device(device)
    train_xb = as_unit_rows(train_xb, "train_xb")
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
    xb = as_unit_rows(xb, "xb")
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
    """Read an index; mmap=True maps IVF lists / flat codes from disk instead of loading them.

    An index with on-disk lists (`lists_path(path)` exists) always maps them, read-only."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no index file at {path}")
    if lists_path(path).is_file():
        return _read_with_ondisk_lists(path, lists_path(path))
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)


def lists_path(index_path: str | os.PathLike) -> Path:
    """Where the on-disk inverted lists of the index at `index_path` live: next to it."""
    return Path(index_path).with_suffix(LISTS_SUFFIX)


# --- helpers -------------------------------------------------------------------------------------


def _read_with_ondisk_lists(path: Path, lists: Path) -> faiss.Index:
    # The index file names its lists file, as it was called at build time. We read the lists'
    # table without mapping that name (IO_FLAG_SKIP_IVF_DATA), then map the file next to *this*
    # index, so a moved or copied folder opens its own lists. faiss' IO_FLAG_ONDISK_SAME_DIR does
    # the same but printf()s a line to stdout on every read, which would corrupt `--json` output.
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise ValueError(f"{lists} sits next to {path}, but that index does not keep its lists on disk: {e}") from e
    ivf = faiss.try_extract_index_ivf(index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(invlists, faiss.OnDiskInvertedLists):
        raise ValueError(f"{lists} sits next to {path}, but that index does not keep its lists on disk")
    if lists.stat().st_size != invlists.totsize:
        raise ValueError(f"{lists} holds {lists.stat().st_size} bytes, but {path} expects {invlists.totsize}: "
                         "the lists file is truncated or from another build")
    invlists.filename = str(lists)
    invlists.do_mmap()  # read-only shared mapping: pages are read on demand and stay page cache
    invlists.prefetch_nthread = ONDISK_PREFETCH_THREADS
    return index


def _training_sample(xb: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size <= 0 or size >= len(xb):
        return xb
    rows = np.sort(np.random.default_rng(seed).choice(len(xb), size, replace=False))  # sequential reads
    if not is_mapped(xb):
        return xb[rows]
    # Sampled rows are spread over the whole file, and the kernel maps the pages around each one it
    # faults in: a single xb[rows] left all of a 2 GB input mapped (and counted in RSS) at 1M x 512.
    # Read a block of sampled rows at a time instead, releasing the pages behind each block.
    sample = np.empty((size, xb.shape[1]), np.float32)
    for lo, hi in block_bounds(size, SAMPLE_BLOCK_ROWS):
        sample[lo:hi] = read_rows(xb, rows, lo, hi)
    return sample


def _set_opq_niter(index: faiss.Index, niter: int) -> None:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = niter


def as_unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """x as a C-contiguous float32 (n, dim) array of unit rows (first rows checked); else ValueError."""
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

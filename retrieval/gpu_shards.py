"""The shards of one collection held on a GPU by faiss (`retr search/serve --device cuda`).

`GpuShards` is a `LocalShards` whose shards faiss can run on a GPU are also copied there: IVF-Flat,
IVF-SQ8, OPQ + IVF-PQ with 8-bit codes, and exact Flat (`faiss.index_cpu_to_gpu`; the IDMap2 and
OPQ wrappers stay on the CPU around a GPU index). The others stay on the CPU and are searched there:
4-bit fast-scan codes (`ivf_pq_refine`) and HNSW have no faiss GPU version, and on-disk lists
(`ivf_pq_ondisk`) are pages on the CPU's disk. `placement` says which went where.

A filtered search (`allowed`) runs on the CPU copies: faiss' GPU indexes do not take the IDSelector
a pre-filter is made of. Unfiltered searches run on the GPU copies, with the same nprobe, and their
per-shard (D, I) are merged with `merge_topk` like every other holder's, so the hits are the CPU's
within the float error of the GPU kernels (and of 16-bit lookup tables for PQ codes).

It needs a GPU build of faiss (`pip install 'retr[gpu]'`, faiss-gpu-cu12) and a GPU it can see;
without one `gpu_shards()` raises a ValueError that says so before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexing.manifest import VectorIndexInfo
from retrieval.shards import LocalShards, ShardOpener, merge_topk

# faiss' GPU IVF-PQ keeps its lookup tables in shared memory: 32-bit ones fit only up to 48 bytes per
# code on most GPUs; 16-bit ones (faiss' own advice for larger M) fit the 64- and 96-byte codes
# retr's ivf_pq plans use, at a cost of about 1e-3 in scores. (GpuClonerOptions.useFloat16: "for
# GpuIndexIVFPQ, are intermediate calculations in float16?"; IVF-Flat storage is not affected.)
FLOAT16_LOOKUP = True

# (CPU index, GPU number) -> the GPU copy; raises RuntimeError for a type faiss has no GPU version of
ToGpu = Callable[[faiss.Index, int], faiss.Index]


def faiss_gpu_count() -> int:
    """GPUs this faiss can use: 0 for faiss-cpu, whatever torch sees."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def check_faiss_gpu(gpu: int = 0) -> None:
    """Raise a ValueError naming the fix unless this faiss can use GPU number `gpu`."""
    n = faiss_gpu_count()
    if gpu < 0 or gpu >= n:
        raise ValueError(
            f"shards on GPU {gpu} need a GPU build of faiss that sees it; this faiss {faiss.__version__} sees "
            f"{n} GPU(s). Install retr[gpu] (faiss-gpu-cu12) or search with --device cpu."
        )


def faiss_to_gpu() -> ToGpu:
    """A cloner onto the GPU with one StandardGpuResources (its temporary memory) shared by every shard."""
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = FLOAT16_LOOKUP

    def to_gpu(index: faiss.Index, gpu: int) -> faiss.Index:
        copy = faiss.index_cpu_to_gpu(resources, gpu, index, options)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:  # the CPU shard's tuned nprobe, which faiss' CPU ParameterSpace cannot set here
            faiss.GpuParameterSpace().set_index_parameter(copy, "nprobe", int(ivf.nprobe))
        copy.referenced_resources = resources  # the GPU index must not outlive them (SWIG does not track it)
        return copy

    return to_gpu


class GpuShards(LocalShards):
    """LocalShards plus GPU copies of the shards faiss can hold there; see the module's docstring."""

    def __init__(
        self, index_dir: Path, info: VectorIndexInfo, kind: str, *, gpu: int = 0, to_gpu: ToGpu | None = None,
    ) -> None:
        super().__init__(index_dir, info, kind)
        to_gpu = to_gpu or faiss_to_gpu()
        self.gpu_shards: list[faiss.Index | None] = []
        self.placement: list[str] = []  # per shard: "gpu", or "cpu (why)"
        for shard, entry in zip(self.shards, info.shards, strict=True):
            copy, where = None, "cpu (empty)"
            if shard.ntotal and info.kind in ("ivf_pq_refine", "hnsw", "ivf_pq_ondisk"):
                where = f"cpu ({info.kind} has no faiss GPU version)"
            elif shard.ntotal:
                try:
                    copy = to_gpu(shard, gpu)  # with the shard's nprobe, set by LocalShards
                    where = "gpu"
                except RuntimeError as e:  # a size or type this faiss-gpu refuses: the CPU copy answers
                    where = f"cpu ({str(e).strip().splitlines()[-1][:120]})"
            self.gpu_shards.append(copy)
            self.placement.append(f"{entry.file}: {where}")

    def search(
        self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None or not any(c is not None for c in self.gpu_shards):
            return super().search(xq, k, allowed)
        results = [(g if g is not None else s).search(xq, k)
                   for s, g in zip(self.shards, self.gpu_shards, strict=True) if s.ntotal]
        return merge_topk(results, k)

    def close(self) -> None:
        """Free the GPU copies now rather than when Python collects them."""
        self.gpu_shards = [None] * len(self.gpu_shards)


def gpu_shards(gpu: int = 0) -> ShardOpener:
    """The opener `open_index(path, shards=...)` takes to hold shards on GPU `gpu` (checked first)."""
    check_faiss_gpu(gpu)
    to_gpu = faiss_to_gpu()

    def open_gpu(index_dir: Path, info: VectorIndexInfo, kind: str) -> GpuShards:
        return GpuShards(index_dir, info, kind, gpu=gpu, to_gpu=to_gpu)

    return open_gpu

"""Tune an index's search-time knob (nprobe or efSearch) to a recall target.

Recall@k here is the fraction of the exact top-k (from `exact_knn`) found in the approximate top-k,
averaged over queries. Recall grows (almost) monotonically with nprobe / efSearch while speed
falls, so the smallest value that meets the target is the fastest acceptable one: we double
until the target is met, then bisect between the last miss and the first hit.

Indexes with an exact re-ranking stage (IndexRefine) have a second knob, k_factor: how many
candidates (k * k_factor) are re-ranked. Too small and recall plateaus below the target whatever
nprobe is (compressed codes mis-order close neighbours); too large and re-ranking dominates the
search. We walk k_factor up a ladder, tune nprobe at each rung, and keep the fastest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import faiss
import numpy as np

from indexing.exact_rerank import StoredRerank, VectorsOf
from indexing.row_blocks import is_mapped, iter_blocks

# efSearch is searched between k (HNSW always keeps at least k candidates) and this cap: at 1M x 512
# efSearch ~3400 already searched at brute-force speed (109 vs ~125 QPS, 1 thread), so needing more
# means a broken graph, not an under-tuned one.
MAX_EF_SEARCH = 4096
# QPS is the best of this many timed passes over the queries (the first pass warms caches).
TIMED_PASSES = 3
# Re-ranking depths tried for refine indexes. For recall@10 0.9, 4-bit fast-scan codes needed 16 on
# the 20k x 32 test vectors and 32 on 1M x 512 clustered vectors (docs/benchmarks.md).
K_FACTOR_LADDER = (8, 16, 32, 64, 128, 256)
# Depths tried when the re-rank reads stored vectors from disk (indexing.exact_rerank): each candidate
# costs a page read, not a RAM lookup, so the ladder starts low and stops at 64.
STORED_FACTOR_LADDER = (2, 4, 8, 16, 32, 64)
# While doubling, a gain below this means recall has plateaued short of the target (it is capped
# by the codes or by k_factor, not by nprobe): stop rather than scan every list.
PLATEAU_GAIN = 0.002
# Database rows per block when exact_knn reads a subset or a memory-mapped xb: 128 MiB at d=512.
EXACT_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class TuneResult:
    param: str | None  # "nprobe" | "efSearch" | None for exact indexes
    value: int | None
    recall: float  # recall@k on the tuning queries at `value`
    qps: float  # queries per second at `value`, batch search, current faiss thread count
    k_factor: int | None = None  # re-ranking depth chosen for refine indexes, else None


def exact_knn(
    xb: np.ndarray, xq: np.ndarray, k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of each query over xb[rows] (all of xb when rows is None): (D, I),
    I holding positions in rows (row numbers of xb when rows is None).

    A subset or a memory-mapped xb is read EXACT_BLOCK_ROWS rows at a time (indexing.row_blocks),
    so ground truth for an on-disk index never holds the whole input in RAM."""
    xq = _as_float32(xq, "xq")
    n = len(xb) if rows is None else len(rows)
    if np.ndim(xb) != 2 or xb.shape[1] != xq.shape[1]:
        raise ValueError(f"xb must have shape (n, {xq.shape[1]}) like xq, got {np.shape(xb)}")
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if rows is None and not is_mapped(xb):
        return faiss.knn(xq, _as_float32(xb, "xb"), k, metric=faiss.METRIC_INNER_PRODUCT)
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for lo, hi, block in iter_blocks(xb, rows, EXACT_BLOCK_ROWS):
        D, I = faiss.knn(xq, block, min(k, hi - lo), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, I + lo)
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(I: np.ndarray, gt_I: np.ndarray, k: int) -> float:
    """Fraction of each query's exact top-k ids (gt_I[:, :k]) present in I[:, :k], averaged."""
    if I.shape[0] != gt_I.shape[0]:
        raise ValueError(f"I has {I.shape[0]} queries but gt_I has {gt_I.shape[0]}")
    if I.shape[1] < k or gt_I.shape[1] < k:
        raise ValueError(f"need at least k={k} columns, got I {I.shape} and gt_I {gt_I.shape}")
    found, truth = I[:, :k], gt_I[:, :k]
    # (nq, k, k) comparison: fine for the k <= 100 and nq of a few thousand we tune with
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2) & (truth >= 0)
    valid = np.maximum((truth >= 0).sum(axis=1), 1)
    return float(np.mean(hits.sum(axis=1) / valid))


def search_param_of(index: faiss.Index) -> str | None:
    """Which knob trades speed for recall on this index: 'nprobe', 'efSearch' or None (exact)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    return "efSearch" if _find(index, faiss.IndexHNSW) is not None else None


def apply_search_param(index: faiss.Index, param: str | None, value: int | None) -> None:
    """Set `param` to `value` wherever it lives inside wrappers (IDMap, OPQ pre-transform, refine)."""
    if param is None:
        return
    if value is None or value < 1:
        raise ValueError(f"{param} needs a positive value, got {value}")
    if param == "k_factor":  # ParameterSpace only reaches an IndexRefine as "k_factor_rf" at the top
        refine = _find(index, faiss.IndexRefine)
        if refine is None:
            raise ValueError("k_factor applies only to indexes with a refine stage (RFlat)")
        refine.k_factor = float(value)
        return
    faiss.ParameterSpace().set_index_parameter(index, param, int(value))


def tune_search_params(
    index: faiss.Index, xq: np.ndarray, gt_I: np.ndarray, k: int, target_recall: float
) -> TuneResult:
    """Smallest nprobe / efSearch whose recall@k on (xq, gt_I) reaches target_recall.

    gt_I holds exact neighbours in the index's id space. When even the largest value misses the
    target, that value is returned with the recall it reached (check `result.recall`).
    The index is left set to the returned value.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    xq = _as_float32(xq, "xq")
    param = search_param_of(index)
    if param is None:
        return TuneResult(None, None, 1.0, _qps(index, xq, k))
    if _find(index, faiss.IndexRefine) is None:
        value, recall = _smallest_meeting(index, param, xq, gt_I, k, target_recall)
        return TuneResult(param, value, recall, _qps(index, xq, k))

    best: TuneResult | None = None
    closest: TuneResult | None = None
    for k_factor in K_FACTOR_LADDER:
        apply_search_param(index, "k_factor", k_factor)
        value, recall = _smallest_meeting(index, param, xq, gt_I, k, target_recall)
        if recall < target_recall:
            if closest is None or recall > closest.recall:
                closest = TuneResult(param, value, recall, 0.0, k_factor)
            continue
        result = TuneResult(param, value, recall, _qps(index, xq, k), k_factor)
        if best is not None and result.qps <= best.qps:
            break  # deeper re-ranking no longer buys a cheaper nprobe
        best = result
    chosen = best or closest
    apply_search_param(index, "k_factor", chosen.k_factor)
    apply_search_param(index, param, chosen.value)
    if best is None:
        chosen = TuneResult(param, chosen.value, chosen.recall, _qps(index, xq, k), chosen.k_factor)
    return chosen


def tune_stored_rerank(
    index: faiss.Index, xq: np.ndarray, gt_I: np.ndarray, k: int, target_recall: float, vectors_of: VectorsOf
) -> TuneResult:
    """tune_search_params for an index whose top k * factor are re-ranked against stored vectors
    (indexing.exact_rerank): walks STORED_FACTOR_LADDER, tunes nprobe at each depth, keeps the fastest
    pair meeting the target (`k_factor` is the depth), else the pair with the best recall. The index
    is left set to the returned nprobe."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    xq = _as_float32(xq, "xq")
    param = search_param_of(index)
    if param is None:
        raise ValueError("a stored-vector re-rank is tuned on an IVF or HNSW index, not an exact one")
    best: TuneResult | None = None
    closest: TuneResult | None = None
    for factor in STORED_FACTOR_LADDER:
        searcher = StoredRerank(index, vectors_of, factor)
        value, recall = _smallest_meeting(index, param, xq, gt_I, k, target_recall, searcher.search)
        if recall < target_recall:
            if closest is None or recall > closest.recall:
                closest = TuneResult(param, value, recall, 0.0, factor)
            continue
        apply_search_param(index, param, value)
        result = TuneResult(param, value, recall, _qps(searcher, xq, k), factor)
        if best is not None and result.qps <= best.qps:
            break  # a deeper re-rank no longer buys a cheaper nprobe
        best = result
    chosen = best or closest
    apply_search_param(index, param, chosen.value)
    if best is None:
        chosen = TuneResult(param, chosen.value, chosen.recall,
                            _qps(StoredRerank(index, vectors_of, chosen.k_factor), xq, k), chosen.k_factor)
    return chosen


def _smallest_meeting(
    index: faiss.Index, param: str, xq: np.ndarray, gt_I: np.ndarray, k: int, target_recall: float,
    search=None,
) -> tuple[int, float]:
    """(value, recall): the smallest value reaching the target, else the best value tried. `search`
    answers with the index set to each value (default: the index's own search)."""
    lo, hi = _param_range(index, param, k)
    recalls: dict[int, float] = {}
    search = search or index.search

    def recall(value: int) -> float:
        if value not in recalls:
            apply_search_param(index, param, value)
            _, I = search(xq, k)
            recalls[value] = recall_at_k(I, gt_I, k)
        return recalls[value]

    miss, hit = None, lo
    while recall(hit) < target_recall and hit < hi:  # doubling: find a value that meets the target
        if miss is not None and recall(hit) - recall(miss) < PLATEAU_GAIN:
            break
        miss, hit = hit, min(2 * hit, hi)
    if recall(hit) < target_recall:
        best = max(recalls, key=lambda v: (recalls[v], -v))
        return best, recalls[best]
    if miss is not None:
        while hit - miss > 1:  # bisect: invariant recall(miss) < target <= recall(hit)
            mid = (miss + hit) // 2
            if recall(mid) >= target_recall:
                hit = mid
            else:
                miss = mid
    return hit, recall(hit)


def _param_range(index: faiss.Index, param: str, k: int) -> tuple[int, int]:
    if param == "nprobe":
        return 1, faiss.extract_index_ivf(index).nlist
    return k, max(k, MAX_EF_SEARCH)


def _find(index: faiss.Index, cls: type) -> faiss.Index | None:
    """The first index of type `cls` inside IDMap / pre-transform / refine wrappers, or None."""
    index = faiss.downcast_index(index)
    while not isinstance(index, cls):
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        else:
            return None
    return index


def _qps(index: faiss.Index | StoredRerank, xq: np.ndarray, k: int) -> float:
    best = float("inf")
    for _ in range(TIMED_PASSES):
        t0 = time.perf_counter()
        index.search(xq, k)
        best = min(best, time.perf_counter() - t0)
    return len(xq) / max(best, 1e-9)


def _as_float32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)

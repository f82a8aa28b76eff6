"""Exact re-ranking of compressed-code candidates against the stored vectors.

An IVF-PQ index with its lists on disk (kind "ivf_pq_ondisk") keeps 8-bit OPQ codes only, and those
codes mis-order close neighbours: recall@10 stops near 0.6 whatever nprobe is (docs/scale.md). The
embedding store already holds every vector on disk, memory-mapped, so a search fetches k * factor
candidates from the codes and re-scores them with exact inner products against the stored rows,
the way clip-retrieval re-orders with its stored embeddings. Nothing is duplicated: the re-rank
reads a few pages per candidate and keeps no copy.

    D, I = rerank_exact(xq, I_candidates, vectors_of, k)      # vectors_of(sorted ids) -> (U, d) float32

`StoredRerank` wraps an index with the same `search(xq, k)` shape, so the build's tuning
(indexing.tune) measures recall exactly as the search will answer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from indexing.row_blocks import read_rows

# Queries re-scored per block: their candidates' vectors are gathered at once (64 x 640 x 512 float32
# = 80 MiB at factor 64, k 10, d 512).
QUERY_BLOCK = 64

VectorsOf = Callable[[np.ndarray], np.ndarray]  # sorted unique ids -> their vectors (U, d) float32


def rerank_exact(xq: np.ndarray, I: np.ndarray, vectors_of: VectorsOf, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (D, I) of each query among its candidate ids I (Q, m; -1 = no candidate), by exact inner
    product with the vectors `vectors_of` returns. Equal scores keep the candidates' order; fewer than
    k candidates leave -1 ids with -inf scores at the end, as faiss pads."""
    xq = np.ascontiguousarray(xq, np.float32)
    I = np.asarray(I, np.int64)
    if I.ndim != 2 or len(I) != len(xq):
        raise ValueError(f"candidates must be (len(xq), m), got shape {I.shape}")
    D_out = np.full((len(xq), k), -np.inf, np.float32)
    I_out = np.full((len(xq), k), -1, np.int64)
    kk = min(k, I.shape[1])
    for lo in range(0, len(xq), QUERY_BLOCK):
        cand = I[lo:lo + QUERY_BLOCK]
        valid = cand >= 0
        ids = np.unique(cand[valid])
        if len(ids) == 0:
            continue
        vecs = np.asarray(vectors_of(ids), np.float32)  # (U, d)
        if vecs.shape != (len(ids), xq.shape[1]):
            raise ValueError(f"vectors_of gave shape {vecs.shape} for {len(ids)} ids of dim {xq.shape[1]}")
        pos = np.searchsorted(ids, np.where(valid, cand, ids[0]))  # (B, m) rows into vecs
        scores = np.einsum("bd,bmd->bm", xq[lo:lo + QUERY_BLOCK], vecs[pos])
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        D_out[lo:lo + len(cand), :kk] = np.take_along_axis(scores, order, axis=1)
        I_out[lo:lo + len(cand), :kk] = np.where(np.isfinite(D_out[lo:lo + len(cand), :kk]),
                                                 np.take_along_axis(cand, order, axis=1), -1)
    return D_out, I_out


class StoredRerank:
    """`index.search(xq, k)` answered by searching k * factor candidates, then `rerank_exact`."""

    def __init__(self, index, vectors_of: VectorsOf, factor: int) -> None:
        if factor < 1:
            raise ValueError(f"re-rank factor must be >= 1, got {factor}")
        self.index, self.vectors_of, self.factor = index, vectors_of, int(factor)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _, I = self.index.search(xq, k * self.factor)
        return rerank_exact(xq, I, self.vectors_of, k)


def rows_lookup(xb: np.ndarray, ids: np.ndarray) -> VectorsOf:
    """vectors_of for vectors xb whose row r holds id ids[r] (a build's own rows; xb may be mapped)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = np.asarray(ids)[order]

    def vectors_of(wanted: np.ndarray) -> np.ndarray:
        at = np.searchsorted(sorted_ids, wanted)
        if np.any(at >= len(sorted_ids)) or np.any(sorted_ids[np.minimum(at, len(sorted_ids) - 1)] != wanted):
            raise ValueError("a candidate id has no stored vector")
        rows = order[at]
        sort = np.argsort(rows)  # ascending reads from a mapped file
        out = np.empty((len(rows), xb.shape[1]), np.float32)
        out[sort] = read_rows(xb, rows[sort], 0, len(rows))  # a mapped xb's pages leave the process after
        return out

    return vectors_of

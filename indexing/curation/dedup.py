"""Duplicate removal: exact copies by content hash, near-duplicates by cosine similarity.

Near-duplicates are found as SemDeDup and DINOv2 do, on a k-NN graph: each vector's k nearest
neighbours (faiss, inner product on unit vectors, queries in batches so memory stays bounded), edges
kept above a threshold, then connected components. The trap SemDeDup fell into (its issue #8) is to
drop every member of a group; here exactly one member of each component is kept, chosen by a policy:
`first` (the smallest id), `largest` (most pixels, ties to the smallest id) or `central` (closest to
the component's mean vector).

Everything works on ids and arrays: `ids` (n,) int64, `xb` (n, d) float32 unit rows. Results are
`StageResult`s: kept ids, and one dropped row per removed id with its reason, the kept id it
duplicates and their similarity. kept + dropped = input, always.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from indexing.curation.result import StageResult, dropped_table

KEEP_POLICIES = ("first", "largest", "central")


def _check_vectors(ids: np.ndarray, xb: np.ndarray) -> None:
    if xb.ndim != 2 or len(xb) != len(ids):
        raise ValueError(f"expected one vector per id: {len(ids)} ids, vectors of shape {xb.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")


def _check_threshold(threshold: float) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine threshold is between -1 and 1, got {threshold}")


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) component labels (each the smallest member index) of the graph with edges a[e]–b[e].

    Label propagation with pointer jumping, in numpy: each round every edge pulls both ends to the
    smaller label, then labels follow their own labels; it ends when a round changes nothing."""
    labels = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def keep_one_per_group(
    labels: np.ndarray, ids: np.ndarray, policy: str = "first", *, pixels: np.ndarray | None = None,
    xb: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) index of the member each row is kept as (itself for the kept one), one per label."""
    if policy not in KEEP_POLICIES:
        raise ValueError(f"--keep must be one of {', '.join(KEEP_POLICIES)}, got {policy!r}")
    n = len(labels)
    if policy == "first":
        keys = (ids, labels)
    elif policy == "largest":
        if pixels is None:
            raise ValueError("--keep largest needs image sizes (width × height)")
        keys = (ids, -np.asarray(pixels, np.int64), labels)  # most pixels, then the smallest id
    else:
        if xb is None:
            raise ValueError("--keep central needs the vectors")
        uniq, inv = np.unique(labels, return_inverse=True)
        means = np.zeros((len(uniq), xb.shape[1]), np.float64)
        np.add.at(means, inv, xb)
        keys = (ids, -np.einsum("ij,ij->i", xb.astype(np.float64), means[inv]), labels)
    order = np.lexsort(keys)  # grouped by label (the last key), the best member first in each group
    sorted_labels = labels[order]
    starts = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # position of each group's best
    winner = np.empty(n, np.int64)
    winner[order] = order[group_start]
    return winner


def exact_groups(ids: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """(n,) labels: rows with the same key (sha256 of the bytes, a perceptual hash) share a label."""
    _, labels = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return labels.astype(np.int64)


def _knn_index(xb: np.ndarray, exact_below: int) -> faiss.Index:
    """Flat below `exact_below` vectors; an IVF index (nprobe 16 of sqrt-n lists) above."""
    d = xb.shape[1]
    if len(xb) < exact_below:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(len(xb)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(xb[rng.choice(len(xb), min(len(xb), 64 * nlist), replace=False)])
        index.nprobe = 16
    index.add(xb)
    return index


def near_duplicate_pairs(
    xb: np.ndarray, threshold: float, *, k: int = 16, batch: int = 65536, exact_below: int = 200_000,
    xq: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, b, sim): rows q of xq (xb itself when None) whose k nearest rows b of xb are at cosine ≥
    threshold, self-pairs left out. Queries run in batches, so memory is the index plus one batch."""
    _check_threshold(threshold)
    xb = np.ascontiguousarray(xb, np.float32)
    index = _knn_index(xb, exact_below)
    queries = xb if xq is None else np.ascontiguousarray(xq, np.float32)
    kk = min(k + (1 if xq is None else 0), len(xb))
    out_q, out_b, out_s = [], [], []
    for start in range(0, len(queries), batch):
        sims, nbrs = index.search(queries[start:start + batch], kk)
        rows = np.arange(start, start + len(sims))[:, None].repeat(kk, axis=1)
        keep = (sims >= threshold) & (nbrs >= 0)
        if xq is None:
            keep &= nbrs != rows
        out_q.append(rows[keep])
        out_b.append(nbrs[keep])
        out_s.append(sims[keep])
    return _concat(out_q, np.int64), _concat(out_b, np.int64), _concat(out_s, np.float32)


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def near_duplicates(
    ids: np.ndarray, xb: np.ndarray, threshold: float, *, keep: str = "first", k: int = 16,
    pixels: np.ndarray | None = None, batch: int = 65536,
) -> StageResult:
    """One item kept per connected group of items at cosine ≥ threshold; the rest dropped as
    `near_dup` of the kept one, with their similarity to it."""
    ids = np.asarray(ids, np.int64)
    _check_vectors(ids, xb)
    q, b, _ = near_duplicate_pairs(xb, threshold, k=k, batch=batch)
    labels = connected_components(len(ids), q, b)
    return _by_winner(ids, xb, keep_one_per_group(labels, ids, keep, pixels=pixels, xb=xb), "near_dup")


def _by_winner(ids: np.ndarray, xb: np.ndarray | None, winner: np.ndarray, reason: str) -> StageResult:
    rows = np.arange(len(ids))
    lost = np.flatnonzero(winner != rows)
    sims = (np.einsum("ij,ij->i", xb[lost], xb[winner[lost]]) if xb is not None
            else np.ones(len(lost), np.float32))
    kept = np.sort(ids[winner == rows])
    return StageResult(kept, dropped_table(ids[lost], reason, ids[winner[lost]], sims))


def exact_duplicates(ids: np.ndarray, keys: Sequence[str], *, keep: str = "first",
                     pixels: np.ndarray | None = None, reason: str = "exact") -> StageResult:
    """One item kept per identical key (sha256 of the bytes; a perceptual hash with reason `pixel`)."""
    ids = np.asarray(ids, np.int64)
    if len(keys) != len(ids):
        raise ValueError(f"expected one key per id: {len(ids)} ids, {len(keys)} keys")
    policy = "first" if keep == "central" else keep  # identical content: no vector centre to choose by
    return _by_winner(ids, None, keep_one_per_group(exact_groups(ids, keys), ids, policy, pixels=pixels), reason)


def drop_near(
    ids: np.ndarray, xb: np.ndarray, eval_ids: np.ndarray, xe: np.ndarray, threshold: float, *,
    batch: int = 65536,
) -> StageResult:
    """Drop pool items at cosine ≥ threshold of any evaluation item (DINOv2 keeps benchmarks out of
    training data this way): reason `eval_leak`, of_id the closest evaluation id."""
    ids, eval_ids = np.asarray(ids, np.int64), np.asarray(eval_ids, np.int64)
    _check_vectors(ids, xb)
    _check_vectors(eval_ids, xe)
    q, e, s = near_duplicate_pairs(np.ascontiguousarray(xe, np.float32), threshold, k=1, batch=batch, xq=xb)
    leak = np.zeros(len(ids), bool)
    leak[q] = True
    return StageResult(np.sort(ids[~leak]), dropped_table(ids[q], "eval_leak", eval_ids[e], s))

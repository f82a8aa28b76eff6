"""Duplicate removal: exact copies by content hash, near-duplicates by cosine similarity.

Near-duplicates are found as SemDeDup and DINOv2 do, on a k-NN graph: each vector's k nearest
neighbours (inner product on unit vectors; exact for small sets, above that an IVF search on faiss
k-means lists done one list at a time with matrix products, so memory stays bounded), edges
kept above a threshold, then connected components. The trap SemDeDup fell into (its issue #8) is to
drop every member of a group; here exactly one member of each component is kept, chosen by a policy:
`first` (the smallest id), `largest` (most pixels, ties to the smallest id) or `central` (closest to
the component's mean vector).

Everything works on ids and arrays: `ids` (n,) int64, `xb` (n, d) float32 unit rows. Results are
`StageResult`s: kept ids, and one dropped row per removed id with its reason, the kept id it
duplicates and their similarity. kept + dropped = input, always.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np

from indexing.curation.phash_pairs import phash_pairs
from indexing.curation.result import StageResult, dropped_table
from indexing.phash import hamming, phash_similarity

KEEP_POLICIES = ("first", "largest", "central")
# A veto on candidate pairs: two arrays of row numbers in, one bool per pair out.
PairCheck = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


# The k-NN graph is an IVF search done list by list with matrix products (as faiss
# contrib/big_batch_search does on GPUs): every query is compared with the members of its `nprobe`
# nearest coarse lists in one BLAS call per list. On 2 CPU cores this is ~8x faster than
# IndexIVFFlat.search on 200k×512 (per-vector scans), and needs no second copy of the vectors.
GRAPH_NPROBE = 3  # lists each query visits: 0.98 of planted copies at cosine 0.90–0.98 found at 1M (bench_curate)
BLOCK_ELEMS = 1 << 24  # similarities per matrix product (64 MiB of float32): bounds memory per block
TRAIN_PER_LIST = 64  # coarse k-means trains on this many sampled vectors per list (faiss wants ≥ 39)


def _coarse_lists(xb: np.ndarray, nq: int, exact_below: int) -> faiss.Index | None:
    """Spherical k-means centroids as a flat IP quantizer; None for an exact (one-list) search.

    nlist ≈ sqrt(nprobe·n) balances the two costs: assigning n vectors to nlist centroids
    (n·nlist) and comparing each query with nprobe lists of n/nlist members (nq·nprobe·n/nlist)."""
    n, d = xb.shape
    if n < exact_below:
        return None
    nlist = max(1, min(int(np.sqrt(GRAPH_NPROBE * max(n, nq))), n // TRAIN_PER_LIST))
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False))
    km = faiss.Kmeans(d, nlist, niter=10, seed=0, spherical=True, max_points_per_centroid=TRAIN_PER_LIST)
    km.train(np.ascontiguousarray(xb[sample], np.float32))
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(km.centroids)
    return quantizer


def _probe(quantizer: faiss.Index | None, x: np.ndarray, nprobe: int, batch: int) -> np.ndarray:
    """(n, nprobe) nearest coarse lists of each row, assigned in batches."""
    if quantizer is None:
        return np.zeros((len(x), 1), np.int64)
    nprobe = min(nprobe, quantizer.ntotal)
    return np.concatenate([quantizer.search(np.ascontiguousarray(x[s:s + batch], np.float32), nprobe)[1]
                           for s in range(0, len(x), batch)]).astype(np.int64)


def _grouped(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): positions of `lists` grouped by list; list l is order[bounds[l]:bounds[l+1]]."""
    order = np.argsort(lists, kind="stable")
    return order, np.searchsorted(lists[order], np.arange(nlist + 1))


def _block_hits(sims: np.ndarray, threshold: float, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of similarities ≥ threshold, at most the kk largest per row."""
    mask = sims >= threshold
    if mask.sum() > kk * len(sims) and sims.shape[1] > kk:  # low threshold: keep each row's top kk only
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        keep = np.take_along_axis(mask, top, axis=1)
        return np.nonzero(keep)[0], top[keep]
    return np.nonzero(mask)


def _list_pairs(xb, queries, threshold: float, kk: int, batch: int, exact_below: int, block: int = BLOCK_ELEMS):
    """(q, b, sim) of rows of `queries` against the members of their probed lists, list by list."""
    quantizer = _coarse_lists(xb, len(queries), exact_below)
    nlist = 1 if quantizer is None else quantizer.ntotal
    probes = _probe(quantizer, queries, GRAPH_NPROBE, batch)
    b_lists = probes[:, 0] if queries is xb else _probe(quantizer, xb, 1, batch)[:, 0]
    b_order, b_bounds = _grouped(b_lists, nlist)
    q_order, q_bounds = _grouped(probes.ravel(), nlist)
    q_order //= probes.shape[1]
    out_q, out_b, out_s = [], [], []
    for lst in range(nlist):
        members = b_order[b_bounds[lst]:b_bounds[lst + 1]]
        rows = q_order[q_bounds[lst]:q_bounds[lst + 1]]
        if not len(members) or not len(rows):
            continue
        # one list (exact search): members and queries are all rows in order, so slice rather than copy
        xm = np.ascontiguousarray(xb[members] if nlist > 1 else xb, np.float32)
        step = max(1, min(batch, block // len(members)))
        for start in range(0, len(rows), step):
            r = rows[start:start + step]
            sims = np.ascontiguousarray(queries[r] if nlist > 1 else queries[r[0]:r[-1] + 1], np.float32) @ xm.T
            i, j = _block_hits(sims, threshold, kk)
            out_q.append(r[i])
            out_b.append(members[j])
            out_s.append(sims[i, j])
    return _concat(out_q, np.int64), _concat(out_b, np.int64), _concat(out_s, np.float32)


def _top_k(q: np.ndarray, b: np.ndarray, s: np.ndarray, k: int):
    """The k most similar pairs of each query, grouped by query."""
    order = np.lexsort((-s, q))
    q, b, s = q[order], b[order], s[order]
    starts = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(q)), 0))
    keep = np.arange(len(q)) - first < k
    return q[keep], b[keep], s[keep]


def near_duplicate_pairs(
    xb: np.ndarray, threshold: float, *, k: int = 16, batch: int = 65536, exact_below: int = 200_000,
    xq: np.ndarray | None = None, block: int = BLOCK_ELEMS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, b, sim): rows q of xq (xb itself when None) whose k nearest rows b of xb are at cosine ≥
    threshold, self-pairs left out. Exact below `exact_below` vectors of xb, IVF above; memory is the
    vectors as float32 plus one block of `block` similarities (float32) and its mask."""
    _check_threshold(threshold)
    xb = np.ascontiguousarray(xb, np.float32)
    queries = xb if xq is None else np.ascontiguousarray(xq, np.float32)
    if not len(xb) or not len(queries):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    q, b, s = _list_pairs(xb, queries, threshold, k + (1 if xq is None else 0), batch, exact_below, block)
    if xq is None:
        keep = q != b
        q, b, s = q[keep], b[keep], s[keep]
    return _top_k(q, b, s, k)


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def near_duplicates(
    ids: np.ndarray, xb: np.ndarray, threshold: float, *, keep: str = "first", k: int = 16,
    pixels: np.ndarray | None = None, batch: int = 65536, block: int = BLOCK_ELEMS,
) -> StageResult:
    """One item kept per connected group of items at cosine ≥ threshold; the rest dropped as
    `near_dup` of the kept one, with their similarity to it."""
    ids = np.asarray(ids, np.int64)
    _check_vectors(ids, xb)
    q, b, _ = near_duplicate_pairs(xb, threshold, k=k, batch=batch, block=block)
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


def pixel_duplicates(ids: np.ndarray, hashes: np.ndarray, max_bits: int, *, keep: str = "first",
                     pixels: np.ndarray | None = None, agree: PairCheck | None = None) -> StageResult:
    """One item kept per connected group of perceptual hashes at most `max_bits` apart (reason `pixel`,
    similarity 1 - bits/64). A re-encoded or resized copy moves a 64-bit DCT hash by a few bits; a crop,
    a mirror or a rotation by many more, which the embedding step is for. `agree(q, b)`, given the row
    numbers of the hash's pairs, keeps only the pairs it returns True for (the stage's colour check)."""
    ids = np.asarray(ids, np.int64)
    hashes = np.asarray(hashes, np.int64)
    if len(hashes) != len(ids):
        raise ValueError(f"expected one hash per id: {len(ids)} ids, {len(hashes)} hashes")
    q, b, _ = phash_pairs(hashes, max_bits)
    if agree is not None and len(q):
        ok = np.asarray(agree(q, b), bool)
        q, b = q[ok], b[ok]
    labels = connected_components(len(ids), q, b)
    policy = "first" if keep == "central" else keep  # no vectors here to find a centre by
    winner = keep_one_per_group(labels, ids, policy, pixels=pixels)
    rows = np.arange(len(ids))
    lost = np.flatnonzero(winner != rows)
    sims = phash_similarity(hamming(hashes[lost], hashes[winner[lost]])).astype(np.float32)
    return StageResult(np.sort(ids[winner == rows]), dropped_table(ids[lost], "pixel", ids[winner[lost]], sims))


def pixel_leaks(ids: np.ndarray, hashes: np.ndarray, eval_ids: np.ndarray, eval_hashes: np.ndarray,
                max_bits: int, *, agree: PairCheck | None = None) -> StageResult:
    """Drop pool items whose perceptual hash is at most `max_bits` from an evaluation item's (a re-encode,
    a resize, a squashed copy of a benchmark image): reason `eval_leak`, of_id the closest evaluation id.
    `agree(pool_rows, eval_rows)` vetoes pairs as in pixel_duplicates."""
    ids, eval_ids = np.asarray(ids, np.int64), np.asarray(eval_ids, np.int64)
    n = len(ids)
    q, b, d = phash_pairs(np.concatenate([np.asarray(hashes, np.int64), np.asarray(eval_hashes, np.int64)]),
                          max_bits)
    cross = (q < n) & (b >= n)  # q < b, and pool rows come first: one side in each set
    q, e, d = q[cross], b[cross] - n, d[cross]
    if agree is not None and len(q):
        ok = np.asarray(agree(q, e), bool)
        q, e, d = q[ok], e[ok], d[ok]
    order = np.lexsort((d, q))  # per pool row, the closest evaluation item first
    q, e, d = q[order], e[order], d[order]
    first = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    q, e, d = q[first], e[first], d[first]
    leak = np.zeros(n, bool)
    leak[q] = True
    sims = phash_similarity(d).astype(np.float32)
    return StageResult(np.sort(ids[~leak]), dropped_table(ids[q], "eval_leak", eval_ids[e], sims))


def drop_near(
    ids: np.ndarray, xb: np.ndarray, eval_ids: np.ndarray, xe: np.ndarray, threshold: float, *,
    batch: int = 65536, block: int = BLOCK_ELEMS,
) -> StageResult:
    """Drop pool items at cosine ≥ threshold of any evaluation item (DINOv2 keeps benchmarks out of
    training data this way): reason `eval_leak`, of_id the closest evaluation id."""
    ids, eval_ids = np.asarray(ids, np.int64), np.asarray(eval_ids, np.int64)
    _check_vectors(ids, xb)
    _check_vectors(eval_ids, xe)
    q, e, s = near_duplicate_pairs(np.ascontiguousarray(xe, np.float32), threshold, k=1, batch=batch, xq=xb,
                                  block=block)
    leak = np.zeros(len(ids), bool)
    leak[q] = True
    return StageResult(np.sort(ids[~leak]), dropped_table(ids[q], "eval_leak", eval_ids[e], s))

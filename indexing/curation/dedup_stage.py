"""`retr curate dedup` on a pool: exact copies, then pixel copies, then near-duplicates, then
evaluation leaks, each step on what the step before kept.

    result = dedup_pool(pool, DedupConfig(threshold=0.6), evals=[eval_pool])

Exact copies share the sha256 of their bytes; pixel copies share a perceptual hash of their decoded
pixels (a re-saved or re-encoded file); near-duplicates are connected groups of the k-NN graph at
cosine ≥ threshold. One item is kept per group everywhere. `duplicates` (in kept.parquet) counts the
items each kept one stands for, through every step: an exact copy of an item that is itself a
near-duplicate of X counts for X.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from indexing.curation.colour import DEFAULT_TOLERANCE, colour_agrees, colour_signatures
from indexing.curation.dedup import (
    KEEP_POLICIES,
    drop_near,
    exact_duplicates,
    near_duplicates,
    pixel_duplicates,
    pixel_leaks,
)
from indexing.curation.pool import Pool, pixels_of
from indexing.curation.result import StageResult, dropped_table

# Cosine thresholds at which each model's near-duplicates reached the best precision/recall balance on
# real edited copies (bench/bench_dedup_quality.py; docs/benchmarks.md "Near-duplicate quality").
# Chosen on bench/bench_dedup_quality.py's edited copies, on the stage as it runs (pixel step, then the model),
# maximising the worse of (worst edit's min(P, R), all drops' min(P, R)). On the project's own icon and emoji
# corpora these thresholds still merge distinct look-alike drawings (docs/benchmarks.md "Curation on the
# project's corpora"): check a report before trusting a run on drawings.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "retr:effnet-lite0": 0.864, "retr:sscd": 0.626, "retr:sscd-student": 0.712, "retr:dinov2-small": 0.960,
    "retr:default": 0.810, "retr:minilm": 0.856,
}


@dataclass(frozen=True)
class DedupConfig:
    threshold: float | None = None  # cosine; None: the model's measured default (DEFAULT_THRESHOLDS)
    keep: str = "first"  # which member of a group stays: first (smallest id) / largest (pixels) / central
    k: int = 16  # neighbours per item in the k-NN graph: a group larger than k+1 is still found through chains
    exact: bool = True  # drop identical bytes (sha256)
    # a grey-level hash alone cannot tell a red heart from a blue one (on our drawing corpora 1 % of its drops
    # were copies); with the colour check below 69 % are within 0.02 of the same picture, most of the rest
    # the same design re-rendered, and it catches the JPEG / resized copies embeddings of small images miss
    pixel: bool = True  # drop pixel copies: perceptual hashes at most pixel_bits apart, colours agreeing
    # 8 of 64 bits: 0.99 precise on the duplicate benchmark, recall ≥ 0.99 for JPEG and resizes, which
    # embeddings of small images miss most (docs/benchmarks.md "Near-duplicate quality")
    pixel_bits: int = 8
    # and the pair must agree in colour: the largest difference of their 8 x 8 mean-colour grids at most
    # this (0-1); 0 turns the check off (indexing/curation/colour.py)
    pixel_colour: float = DEFAULT_TOLERANCE
    near: bool = True  # drop near-duplicates by embedding
    batch: int = 65536  # k-NN queries per faiss call: memory is the index plus one batch of results
    # working memory of the k-NN graph beyond the vectors themselves (n × d × 4 bytes): similarity blocks
    max_memory: int = 1 << 30

    def __post_init__(self) -> None:
        if self.keep not in KEEP_POLICIES:
            raise ValueError(f"--keep must be one of {', '.join(KEEP_POLICIES)}, got {self.keep!r}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold is a cosine similarity in (0, 1], got {self.threshold}")
        if not 0 <= self.pixel_bits < 32:
            raise ValueError(f"--pixel-bits is between 0 and 31 of the hash's 64 bits, got {self.pixel_bits}")
        if not 0.0 <= self.pixel_colour <= 1.0:
            raise ValueError(f"--pixel-colour is a colour difference in [0, 1] (0 = off), got {self.pixel_colour}")
        if self.k < 1 or self.batch < 1:
            raise ValueError("k and batch must be at least 1")
        if self.max_memory < 64 << 20:
            raise ValueError(f"--max-memory must be at least 64MB, got {self.max_memory} bytes")

    @property
    def block(self) -> int:
        """Similarities per matrix product: a float32 block, its mask and top-k scratch (~8 bytes each)
        in half the budget; the other half holds the graph's edges."""
        return self.max_memory // 16

    def threshold_for(self, model: str) -> float:
        if self.threshold is not None:
            return self.threshold
        if model not in DEFAULT_THRESHOLDS:
            known = ", ".join(f"{m} ({t})" for m, t in DEFAULT_THRESHOLDS.items())
            raise ValueError(f"no measured near-duplicate threshold for {model}; pass --threshold "
                             f"(measured defaults: {known})")
        return DEFAULT_THRESHOLDS[model]


def _colour_check(config: DedupConfig, a_paths: np.ndarray, b_paths: np.ndarray | None = None):
    """The pixel step's colour veto for rows of A (and of B: pairs across two pools), or None when off.
    Only images the hash pairs are decoded, each once."""
    if config.pixel_colour <= 0:
        return None
    b_paths = a_paths if b_paths is None else b_paths

    def agree(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
        if b_paths is a_paths:  # one pool: decode each row once
            rows, inv = np.unique(np.concatenate([qa, qb]), return_inverse=True)
            sig = colour_signatures(a_paths[rows].tolist())
            return colour_agrees(sig[inv[: len(qa)]], sig[inv[len(qa):]], config.pixel_colour)
        ua, ia = np.unique(qa, return_inverse=True)
        ub, ib = np.unique(qb, return_inverse=True)
        sa, sb = colour_signatures(a_paths[ua].tolist()), colour_signatures(b_paths[ub].tolist())
        return colour_agrees(sa[ia], sb[ib], config.pixel_colour)

    return agree


def _hash_keys(pool: Pool, column: str) -> list[str]:
    if column not in pool.meta.column_names or pool.meta.column(column).null_count:
        raise ValueError(f"the pool has no {column} for every item (an index built before retr stored it): "
                         f"build it again, or run with --no-{'exact' if column == 'sha256' else 'pixel'}")
    return [str(v) for v in pool.meta.column(column).to_pylist()]


@dataclass(frozen=True)
class DedupOutcome:
    result: StageResult
    leak_images: dict[int, str]  # dropped pool id → path of the evaluation item it leaks
    threshold: float | None  # the cosine threshold used (None when no step needed one)


def dedup_pool(pool: Pool, config: DedupConfig, evals: Sequence[Pool] = ()) -> DedupOutcome:
    """The dedup steps config asks for, in order, on `pool`; evaluation pools must share its model."""
    if len(pool) == 0:
        raise ValueError("the pool is empty: nothing to deduplicate")
    for e in evals:
        if e.model != pool.model:
            raise ValueError(f"evaluation set vectors are {e.model}, the pool's are {pool.model}")
    threshold = config.threshold_for(pool.model) if (config.near or evals) else None
    ids, xb, pixels = pool.ids, pool.xb, pixels_of(pool)
    live = np.ones(len(ids), bool)
    steps: list[StageResult] = []
    leak_images: dict[int, str] = {}

    def run(step: StageResult) -> None:
        steps.append(step)
        live[:] &= np.isin(ids, step.kept)

    if config.exact:
        run(exact_duplicates(ids, _hash_keys(pool, "sha256"), keep=config.keep, pixels=pixels))
    hashes = paths = None
    if config.pixel:  # read once: the pixel step and every evaluation set's pixel leaks use them
        hashes = np.asarray([int(h) for h in _hash_keys(pool, "phash")], np.int64)
        paths = np.asarray(pool.meta.column("path").to_pylist(), dtype=object)
        rows = np.flatnonzero(live)
        run(pixel_duplicates(ids[rows], hashes[rows], config.pixel_bits, keep=config.keep, pixels=pixels[rows],
                             agree=_colour_check(config, paths[rows])))
    if config.near:
        rows = np.flatnonzero(live)
        run(near_duplicates(ids[rows], _rows(xb, rows), threshold, keep=config.keep, k=config.k,
                            pixels=pixels[rows], batch=config.batch, block=config.block))
    for e in evals:
        for step in _eval_leaks(pool, e, live.copy(), config, threshold, hashes, paths):
            by_id = dict(zip(e.ids.tolist(), e.meta.column("path").to_pylist(), strict=True))
            leak_images.update({pid: by_id[of] for pid, of in zip(
                step.dropped.column("id").to_pylist(), step.dropped.column("of_id").to_pylist(), strict=True)})
            run(step)
    kept = ids[live]
    dropped = pa.concat_tables([s.dropped for s in steps]) if steps else dropped_table([], "exact")
    return DedupOutcome(StageResult(kept, dropped, _group_sizes(kept, dropped)), leak_images, threshold)


def _rows(xb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """xb[rows] without the copy when every row is live (a 1M × 1024 pool's vectors are 4 GB)."""
    return xb if len(rows) == len(xb) else xb[rows]


def _eval_leaks(pool: Pool, e: Pool, live: np.ndarray, config: DedupConfig, threshold: float,
                hashes: np.ndarray | None, paths: np.ndarray | None) -> list[StageResult]:
    """Leaks of one evaluation set among the live pool rows: by perceptual hash (a benchmark image
    re-encoded, resized or squashed barely moves it), then by embedding on what is left. `hashes` and
    `paths` are the pool's (given when config.pixel)."""
    ids, steps = pool.ids, []
    if config.pixel:
        rows = np.flatnonzero(live)
        eval_hashes = np.asarray([int(h) for h in _hash_keys(e, "phash")], np.int64)
        agree = _colour_check(config, paths[rows], np.asarray(e.meta.column("path").to_pylist(), dtype=object))
        steps.append(pixel_leaks(ids[rows], hashes[rows], e.ids, eval_hashes, config.pixel_bits, agree=agree))
        live &= ~np.isin(ids, steps[-1].dropped.column("id").to_numpy())
    rows = np.flatnonzero(live)
    steps.append(drop_near(ids[rows], _rows(pool.xb, rows), e.ids, e.xb, threshold, batch=config.batch,
                           block=config.block))
    return steps


def _group_sizes(kept: np.ndarray, dropped: pa.Table) -> pa.Table:
    """`duplicates` per kept id: the dropped copies it stands for, following chains of of_id (an exact
    copy of a near-duplicate counts for the item finally kept). Evaluation leaks stand for nothing."""
    rep = {int(i): int(o) for i, o, r in zip(dropped.column("id").to_pylist(), dropped.column("of_id").to_pylist(),
                                              dropped.column("reason").to_pylist(), strict=True) if r != "eval_leak"}
    counts = dict.fromkeys(kept.tolist(), 0)
    for start in rep:
        node = start
        while node in rep:
            node = rep[node]
        if node in counts:
            counts[node] += 1
    return pa.table({"id": pa.array(kept, pa.int64()),
                     "duplicates": pa.array([counts[int(i)] for i in kept], pa.int64())})

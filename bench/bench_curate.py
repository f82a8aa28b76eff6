"""Curation at scale on synthetic vectors: the near-duplicate graph and hierarchical k-means.

    python bench/bench_curate.py [--n 1000000] [--d 512] [--threshold 0.88] [--levels 1000,100,10]

Data: n unit vectors in d dimensions from a long-tailed mixture of 1000 concepts (Zipf sizes; a
member has cosine ~0.6 to its concept's centre), written chunk by chunk into a float32 memmap under
~/.cache/retr/bench/ (reused when present). Planted in every chunk: 1 % of items get 1–3 copies at
cosine 0.90–0.98 (2 % of all rows are copies), and another 1 % of rows are hard negatives, neighbours
of an item at cosine 0.75–0.85 that must not be merged with it.

(a) `indexing.curation.dedup.near_duplicates` at --threshold: seconds, peak RSS of the process that
    ran it (its own spawned interpreter, so generation does not count), and precision / recall of
    the dropped rows against the planted groups (a dropped row is right when the row it is kept as is
    in its planted group; recall = right drops ÷ planted copies).
(b) `hierarchical_kmeans` with --levels (resampling on) against one faiss k-means level with the same
    k as level 1, the same niter and the same training-sample size, each followed by assigning all n
    points; plus how balanced a `balanced_sample` of n/10 is over the concepts compared with the pool.

Prints, e.g. (n 20000, d 64):
    data 20000 x 64 float32, 400 planted copies in 200 groups, 200 hard negatives  [gen 0.1 s]
    near-dup  threshold 0.88: 2.1 s  peak RSS 210 MiB  precision 1.000  recall 1.000  (400 dropped)
    kmeans    one level k=1000 niter 20: train 3.5 s + assign 0.1 s = 3.6 s  peak RSS 260 MiB
    hkmeans   levels 1000,100,10: 5.0 s  (x1.39 of one level; x1.43 of its training alone)  peak RSS 270 MiB
    balance   sample 2000: largest/smallest concept share pool 1090 -> sample 21.0; entropy 0.83 -> 0.96
    {"bench": "curate", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

CHUNK = 65536
N_CONCEPTS = 1000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _at_cosine(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly cosine `cos` from the unit rows of x (x plus an orthogonal direction)."""
    u = rng.standard_normal(x.shape).astype(np.float32)
    u = _unit(u - np.einsum("ij,ij->i", u, x)[:, None] * x)
    return cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * u


def _chunk(start: int, m: int, d: int, centres: np.ndarray, seed: int):
    """(vectors, planted group per row or -1, concept per row) of rows start..start+m."""
    rng = np.random.default_rng([seed, start])
    weights = 1.0 / np.arange(1, N_CONCEPTS + 1)
    n_orig, n_neg = max(1, m // 100), max(1, m // 100)
    n_copies = rng.integers(1, 4, n_orig)
    n_base = m - n_copies.sum() - n_neg
    concept = rng.choice(N_CONCEPTS, n_base, p=weights / weights.sum())
    base = _unit(centres[concept] + (1.33 / np.sqrt(d)) * rng.standard_normal((n_base, d)).astype(np.float32))
    orig = rng.choice(n_base, n_orig, replace=False)
    src = np.repeat(orig, n_copies)
    copies = _at_cosine(base[src], rng.uniform(0.90, 0.98, len(src)).astype(np.float32), rng)
    near = rng.choice(n_base, n_neg, replace=False)
    negatives = _at_cosine(base[near], rng.uniform(0.75, 0.85, n_neg).astype(np.float32), rng)
    groups = np.full(m, -1, np.int64)
    groups[orig] = start + orig
    groups[n_base:n_base + len(src)] = start + src
    return (np.concatenate([base, copies, negatives]).astype(np.float32), groups,
            np.concatenate([concept, concept[src], concept[near]]))


def generate(n: int, d: int, cache: Path, seed: int = 0) -> Path:
    """A folder with xb.f32 (memmap), groups.npy and concepts.npy; built once, then reused."""
    out = cache / f"curate-{n}-{d}-{seed}"
    if (out / "concepts.npy").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    centres = _unit(np.random.default_rng(seed).standard_normal((N_CONCEPTS, d)).astype(np.float32))
    xb = np.lib.format.open_memmap(out / "xb.npy", "w+", np.float32, (n, d))
    groups, concepts = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        xb[start:start + m], groups[start:start + m], concepts[start:start + m] = _chunk(start, m, d, centres, seed)
    xb.flush()
    del xb
    np.save(out / "groups.npy", groups)
    np.save(out / "concepts.npy.tmp.npy", concepts)
    os.replace(out / "concepts.npy.tmp.npy", out / "concepts.npy")  # written last: marks the folder complete
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_dedup(folder: str, threshold: float) -> dict:
    from indexing.curation.dedup import near_duplicates

    xb = np.load(Path(folder) / "xb.npy", mmap_mode="r")
    groups = np.load(Path(folder) / "groups.npy")
    t0 = time.perf_counter()
    res = near_duplicates(np.arange(len(xb)), xb, threshold)
    seconds = time.perf_counter() - t0
    lost, of = res.dropped.column("id").to_numpy(), res.dropped.column("of_id").to_numpy()
    right = int(((groups[lost] == groups[of]) & (groups[lost] >= 0)).sum())
    planted = int((groups >= 0).sum() - len(np.unique(groups[groups >= 0])))
    return {"seconds": seconds, "peak_rss_mib": _peak_mib(), "dropped": len(lost),
            "precision": right / max(1, len(lost)), "recall": right / max(1, planted)}


def run_one_level(folder: str, k: int, niter: int) -> dict:
    import faiss

    from indexing.curation.hkmeans import KMeansConfig, assign

    xb = np.load(Path(folder) / "xb.npy", mmap_mode="r")
    config = KMeansConfig(niter=niter)
    t0 = time.perf_counter()
    rows = np.sort(np.random.default_rng(0).choice(len(xb), min(len(xb), k * config.max_points_per_centroid),
                                                   replace=False))
    km = faiss.Kmeans(xb.shape[1], k, niter=niter, seed=1, spherical=True,
                      max_points_per_centroid=config.max_points_per_centroid)
    km.train(np.ascontiguousarray(xb[rows], np.float32))
    train = time.perf_counter() - t0
    assign(xb, km.centroids, config.batch)
    return {"train_s": train, "seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_mib()}


def run_hierarchy(folder: str, levels: tuple[int, ...], niter: int) -> dict:
    from indexing.curation.hkmeans import KMeansConfig, hierarchical_kmeans
    from indexing.curation.sample import balanced_sample

    xb = np.load(Path(folder) / "xb.npy", mmap_mode="r")
    concepts = np.load(Path(folder) / "concepts.npy")
    t0 = time.perf_counter()
    hierarchy = hierarchical_kmeans(xb, levels, KMeansConfig(niter=niter))
    seconds = time.perf_counter() - t0
    res = balanced_sample(np.arange(len(xb)), hierarchy, len(xb) // 10)
    return {"seconds": seconds, "peak_rss_mib": _peak_mib(), "sample": len(res.kept),
            "pool": _balance(concepts), "sampled": _balance(concepts[res.kept])}


def _balance(concepts: np.ndarray) -> dict:
    """Largest ÷ smallest concept share (concepts present) and entropy ÷ log(number of concepts)."""
    counts = np.bincount(concepts, minlength=N_CONCEPTS)
    p = counts[counts > 0] / counts.sum()
    return {"ratio": float(p.max() / p.min()), "entropy": float(-(p * np.log(p)).sum() / np.log(N_CONCEPTS))}


def _in_child(fn, *args) -> dict:
    """Run fn in a fresh interpreter, so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--levels", default="1000,100,10")
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "retr" / "bench")
    args = ap.parse_args()
    levels = tuple(int(k) for k in args.levels.split(","))
    t0 = time.perf_counter()
    folder = generate(args.n, args.d, args.cache)
    groups = np.load(folder / "groups.npy")
    n_groups = len(np.unique(groups[groups >= 0]))
    print(f"data {args.n} x {args.d} float32, {(groups >= 0).sum() - n_groups} planted copies in {n_groups} groups, "
          f"{args.n // 100} hard negatives  [gen {time.perf_counter() - t0:.1f} s]", flush=True)
    dedup = _in_child(run_dedup, str(folder), args.threshold)
    print(f"near-dup  threshold {args.threshold}: {dedup['seconds']:.1f} s  peak RSS {dedup['peak_rss_mib']:.0f} MiB  "
          f"precision {dedup['precision']:.3f}  recall {dedup['recall']:.3f}  ({dedup['dropped']} dropped)", flush=True)
    one = _in_child(run_one_level, str(folder), levels[0], args.niter)
    print(f"kmeans    one level k={levels[0]} niter {args.niter}: train {one['train_s']:.1f} s + assign "
          f"{one['seconds'] - one['train_s']:.1f} s = {one['seconds']:.1f} s  peak RSS {one['peak_rss_mib']:.0f} MiB",
          flush=True)
    hier = _in_child(run_hierarchy, str(folder), levels, args.niter)
    print(f"hkmeans   levels {args.levels}: {hier['seconds']:.1f} s  (x{hier['seconds'] / one['seconds']:.2f} of one "
          f"level; x{hier['seconds'] / one['train_s']:.2f} of its training alone)  "
          f"peak RSS {hier['peak_rss_mib']:.0f} MiB")
    print(f"balance   sample {hier['sample']}: largest/smallest concept share pool {hier['pool']['ratio']:.0f} -> "
          f"sample {hier['sampled']['ratio']:.1f}; entropy {hier['pool']['entropy']:.2f} -> "
          f"{hier['sampled']['entropy']:.2f}")
    print(json.dumps({"bench": "curate", "n": args.n, "d": args.d, "threshold": args.threshold, "levels": levels,
                      "niter": args.niter, "dedup": dedup, "one_level": one, "hierarchy": hier}))


if __name__ == "__main__":
    main()

"""`retr curate retrieve` and `retr curate sample` on the project's corpora, measured against labels
the corpora already carry.

    python bench/bench_curate_concepts.py [--models retr:effnet-lite0,retr:default] [--fraction 0.1]

Pool: a seeded `--fraction` of every fetched corpus (stratified by corpus, so every corpus is in it;
all.parquet from bench/curate_findings.py), embedded once per model by `retr curate cluster` (which
keeps everything); later stages read those vectors through kept.parquet-shaped subsets
(`curate_findings.write_subset`), so nothing is embedded twice. ~11 min per model for 2,684 items on
2 shared cores; later runs reuse the vectors (~1 min).

(a) Retrieval precision. A concept is a set of labels: emoji subcategories (shared by the nine emoji
    styles; the ISO flags count as `country-flag`), Tux Paint and OpenClipart category prefixes.
    Seeds: `--seeds` items of the concept, one from each listed corpus; the pool is everything else.
    Then `retr curate retrieve POOL --seeds SEEDS --mode sample --k 8` and `--mode cluster --clusters 100`.
    precision = kept items of the concept ÷ kept; best possible = min(1, concept items in the pool ÷
    kept); found = kept items of the concept, and their share of the concept's items in the pool.
(b) Balancing. A long-tailed pool of the `--concepts` largest emoji subcategories, concept i holding
    about n1 · i^-1.2 items (seeded; capped by what the pool has), then `retr curate sample` of 20 %
    with LEVELS, averaged over SAMPLE_SEEDS seeds, against a uniform random sample of the same n (mean
    of RANDOM_SEEDS): entropy of the concept shares (bits, and ÷ log2 of the concept count), largest ÷
    smallest share among the concepts present, and how many are present; plus the ceiling, a sample
    balanced by the labels themselves, and how well the top-level clusters match the concepts and
    the corpora (normalised mutual information).
(c) Dedup check: `retr curate dedup` of the same pool with each model at its measured default
    threshold (and retr:sscd-student, reusing curate_findings.py's vectors when present); for a sample
    of the drops, how often the dropped item is the same picture as the one kept for it.

Prints (numbers from a run; the shape is what matters):
    pool: 2684 items (10% of 17 corpora, seed 0)
    | model | concept | in pool | mode | kept | precision | best possible | found | of pool's |
    | retr:default | country-flag | 114 | sample | 31 | 0.81 | 1.00 | 25 | 0.22 |
    ...
    long tail (retr:default): 20 concepts, 336 items, sizes [118, 51, ...]; n = 67
    its 20 top-level clusters vs the concepts: NMI 0.61; vs the corpora (drawing styles): 0.19
    | model | set | entropy bits | normalised | largest ÷ smallest | concepts present |
    | retr:default | pool | 3.33 | 0.771 | 39.3 | 20.0 |
    | retr:default | sample (ours, mean of 10 seeds) | 3.28 | 0.759 | 22.8 | 16.5 |
    | retr:default | random (mean of 50 seeds) | 3.13 | 0.724 | 23.1 | 15.7 |
    | retr:default | ours ÷ random | 1.05 | 1.048 | 1.0 |  |
    | retr:default | balanced by the labels themselves (the ceiling) | 4.31 | 0.997 | 1.3 | 20.0 |
    dedup retr:effnet-lite0 @ 0.846: {...}, largest group 22
    | run | reason | drops | sampled | same picture | pixel difference < 0.02 | same key |
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from curate_findings import (
    build_manifest,
    column,
    default_out,
    drop_checks,
    embed_config,
    embeddings_dir,
    groups_of,
    loader,
    pool_meta,
    slug,
    write_subset,
)

from indexing.curation.concept_stages import share_entropy, spread
from indexing.curation.hkmeans import KMeansConfig, hierarchical_kmeans
from indexing.curation.pool import POOL_ID, read_embeddings
from indexing.curation.sample import water_fill
from indexing.curation.stages import StageSpec, run_stage

SAMPLE_SEEDS = 10  # `retr curate sample` runs (k-means and sampling seeds) averaged
RANDOM_SEEDS = 50  # uniform random samples averaged for the baseline
LEVELS = (100, 20)  # hierarchical k-means of the long-tailed pool (~340 items, 20 concepts): ~3 items per
# level-1 cluster, ~5 level-1 clusters per top-level one


@dataclass(frozen=True)
class Concept:
    name: str
    subcategories: tuple[str, ...] = ()  # emoji subcategories (OpenMoji's subgroups are the same names)
    categories: tuple[str, ...] = ()  # category prefixes of OpenClipart / Tux Paint ("animals" matches "animals/birds")
    seed_corpora: tuple[str, ...] = ()  # where seeds come from (one each, in order); empty: any corpus


CONCEPTS = (
    Concept("heart", ("heart",), (), ("emoji-google", "emoji-twitter", "openmoji", "emoji-fluent3d")),
    Concept("country-flag", ("country-flag",), ("town/flags",), ("flags", "emoji-google", "openmoji", "flags")),
    Concept("cat-face", ("cat-face",), (), ("emoji-google", "emoji-twitter", "openmoji", "emoji-fluent-flat")),
    Concept("animal-bird", ("animal-bird",), ("animals/birds",),
            ("emoji-google", "openmoji", "tuxpaint-photos", "emoji-fluent3d")),
    Concept("food-fruit", ("food-fruit",), ("food/fruit",),
            ("emoji-twitter", "emoji-fluent-color", "tuxpaint-photos", "openmoji")),
    # clip-art seeds; any animal counts (emoji animal-* subcategories, Tux Paint animals/…)
    Concept("animals (clip art seeds)", ("animal-mammal", "animal-bird", "animal-marine", "animal-bug",
                                         "animal-amphibian", "animal-reptile"), ("animals",),
            ("openclipart",) * 4),
)


def concept_mask(meta: pa.Table, concept: Concept) -> np.ndarray:
    sub = column(meta, "subcategory")
    cat = column(meta, "category")
    corpus = column(meta, "corpus")
    hit = np.isin(sub, concept.subcategories)
    for prefix in concept.categories:
        labelled = np.isin(corpus, ("openclipart", "tuxpaint-photos")) & (cat != None)  # noqa: E711 (object array)
        hit |= labelled & np.array([c == prefix or str(c).startswith(prefix + "/") for c in cat])
    return hit


def sample_manifest(out: Path, fraction: float, seed: int) -> Path:
    """OUT/concept-pool.parquet: a seeded `fraction` of every corpus in all.parquet."""
    table = pq.read_table(build_manifest(out))
    corpus = column(table, "corpus")
    rng = np.random.default_rng(seed)
    keep = np.zeros(table.num_rows, bool)
    for name in sorted(set(corpus)):
        rows = np.flatnonzero(corpus == name)
        keep[rng.choice(rows, max(1, round(fraction * len(rows))), replace=False)] = True
    dest = out / f"concept-pool-{fraction:g}-s{seed}.parquet"
    if not dest.is_file():
        pq.write_table(table.filter(pa.array(keep)), dest)
    print(f"pool: {int(keep.sum())} items ({fraction:.0%} of {len(set(corpus))} corpora, seed {seed})")
    return dest


def embed_pool(out: Path, manifest: Path, model: str, workers: int) -> Path:
    """The pool embedded with `model` (a cluster stage: it keeps everything); returns its kept.parquet."""
    folder = out / "concepts" / slug(model) / "pool"
    print(f"$ retr curate cluster {manifest} --out {folder} --model {model} --levels 100,10")
    run_stage(StageSpec("cluster", str(manifest), folder, model, {"levels": [100, 10]},
                        embed=embed_config(workers), embeddings=embeddings_dir(out, model, manifest)), loader)
    return folder / "kept.parquet"


def pick_seeds(meta: pa.Table, mask: np.ndarray, concept: Concept, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row numbers of n concept items, one per listed seed corpus (then any), never the same item twice."""
    corpus = column(meta, "corpus")
    chosen: list[int] = []
    wanted = list(concept.seed_corpora[:n]) + [None] * max(0, n - len(concept.seed_corpora))
    for name in wanted:
        rows = np.flatnonzero(mask & (corpus == name if name else True))
        rows = np.setdiff1d(rows, chosen)
        if len(rows) == 0:
            rows = np.setdiff1d(np.flatnonzero(mask), chosen)
        chosen.append(int(rng.choice(rows)))
    return np.array(chosen)


MODES = {"sample": {"mode": "sample", "k": 8}, "cluster": {"mode": "cluster", "clusters": 100}}


def retrieval_rows(out: Path, kept: Path, model: str, n_seeds: int, seed: int) -> list[dict]:
    vectors, meta = pool_meta(kept)
    ids = meta.column("id").to_numpy()
    rows = []
    for ci, concept in enumerate(CONCEPTS):
        mask = concept_mask(meta, concept)
        if mask.sum() <= n_seeds:
            print(f"skipped {concept.name}: {int(mask.sum())} items in the pool")
            continue
        seeds = pick_seeds(meta, mask, concept, n_seeds, np.random.default_rng([seed, ci]))
        in_pool = np.ones(len(ids), bool)
        in_pool[seeds] = False
        folder = kept.parent.parent / f"concept-{ci}"
        pool_src = write_subset(vectors, meta, in_pool, folder / "pool.parquet")
        seed_src = write_subset(vectors, meta, ~in_pool, folder / "seeds.parquet")
        for mode, params in MODES.items():
            stage = folder / mode
            record = run_stage(StageSpec("retrieve", str(pool_src), stage, None, params,
                                         {"seeds": str(seed_src)}, progress=False), loader)
            got = np.isin(ids, pq.read_table(stage / "kept.parquet", columns=[POOL_ID]).column(POOL_ID).to_numpy())
            found = int((got & mask).sum())
            rows.append({"model": model, "concept": concept.name, "in_pool": int((mask & in_pool).sum()),
                         "mode": mode, "kept": record.counts["kept"], "precision": found / max(1, int(got.sum())),
                         "found": found, "recall": found / max(1, int((mask & in_pool).sum())),
                         "ceiling": min(1.0, int((mask & in_pool).sum()) / max(1, record.counts["kept"]))})
    return rows


def print_retrieval(rows: list[dict]) -> None:
    print("\n| model | concept | in pool | mode | kept | precision | best possible | found | of pool's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['concept']} | {r['in_pool']} | {r['mode']} | {r['kept']} | "
              f"{r['precision']:.2f} | {r['ceiling']:.2f} | {r['found']} | {r['recall']:.2f} |")


# ---- (b) balancing a long tail ------------------------------------------------------------------------

def long_tail(meta: pa.Table, n_concepts: int, exponent: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, concept index per row): concept i (largest subcategory first) gets ~n1 · (i+1)^-exponent items."""
    sub = column(meta, "subcategory")
    names, counts = np.unique(sub[sub != None], return_counts=True)  # noqa: E711 (object array)
    order = np.argsort(-counts, kind="stable")[:n_concepts]
    rng = np.random.default_rng(seed)
    n1 = counts[order[0]]
    rows, labels = [], []
    for i, c in enumerate(order):
        size = min(int(counts[c]), max(1, round(n1 * (i + 1) ** -exponent)))
        pick = rng.choice(np.flatnonzero(sub == names[c]), size, replace=False)
        rows.append(pick)
        labels.append(np.full(size, i))
    return np.concatenate(rows), np.concatenate(labels)


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies) of two labellings, 0..1."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    h = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    return 2 * mi / (h(pa) + h(pb))


def shares(labels: np.ndarray, k: int) -> dict:
    sizes = np.bincount(labels, minlength=k)
    h = share_entropy(sizes)
    return {"bits": h, "norm": h / np.log2(k), "spread": spread(sizes), "present": int((sizes > 0).sum())}


def balance_rows(kept: Path, model: str, args: argparse.Namespace) -> list[tuple[str, dict]]:
    vectors, meta = pool_meta(kept)
    ids = meta.column("id").to_numpy()
    rows, labels = long_tail(meta, args.concepts, 1.2, args.seed)
    k = args.concepts
    n = round(0.2 * len(rows))
    mask = np.zeros(len(ids), bool)
    mask[rows] = True
    label_of = dict(zip(ids[rows].tolist(), labels.tolist(), strict=True))
    folder = kept.parent.parent / "long-tail"
    src = write_subset(vectors, meta, mask, folder / "pool.parquet")
    ours = []
    for s in range(SAMPLE_SEEDS):
        stage = folder / f"sample-s{s}"
        run_stage(StageSpec("sample", str(src), stage, None, {"n": n, "levels": list(LEVELS), "seed": s},
                            progress=False), loader)
        got = pq.read_table(stage / "kept.parquet", columns=[POOL_ID]).column(POOL_ID).to_pylist()
        ours.append(shares(np.array([label_of[i] for i in got]), k))
    rng = np.random.default_rng(args.seed)
    rand = [shares(labels[rng.choice(len(labels), n, replace=False)], k) for _ in range(RANDOM_SEEDS)]
    by_label = shares(np.repeat(np.arange(k), water_fill(np.bincount(labels, minlength=k), n)), k)
    print(f"\nlong tail ({model}): {k} concepts, {len(rows)} items, sizes {np.bincount(labels).tolist()}; n = {n}")
    _, xb, _ = read_embeddings(vectors)
    top = hierarchical_kmeans(xb[rows], LEVELS, KMeansConfig(seed=0)).labels[-1]
    print(f"its {LEVELS[-1]} top-level clusters vs the concepts: NMI {mutual_information(top, labels):.2f}; "
          f"vs the corpora (drawing styles): {mutual_information(top, column(meta, 'corpus')[rows]):.2f}")
    mean = lambda runs: {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}  # noqa: E731
    ours_m, rand_m = mean(ours), mean(rand)
    ratio = {key: ours_m[key] / rand_m[key] for key in ("bits", "norm", "spread")}
    return [("pool", shares(labels, k)), (f"sample (ours, mean of {SAMPLE_SEEDS} seeds)", ours_m),
            (f"random (mean of {RANDOM_SEEDS} seeds)", rand_m), ("ours ÷ random", ratio),
            ("balanced by the labels themselves (the ceiling)", by_label)]


def print_balance(model: str, rows: list[tuple[str, dict]]) -> None:
    print("| model | set | entropy bits | normalised | largest ÷ smallest | concepts present |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        present = f"{r['present']:.1f}" if "present" in r else ""
        print(f"| {model} | {name} | {r['bits']:.2f} | {r['norm']:.3f} | {r['spread']:.1f} | {present} |")


# ---- (c) the dedup stage on the same pool, per model at its measured threshold -------------------------

def dedup_check(out: Path, kept: dict[str, Path]) -> None:
    """`retr curate dedup` of the pool with each model at its measured default threshold (and the
    sscd-student vectors of curate_findings.py for the same items, when they are there), then how
    often a drop is the same picture as the item kept for it."""
    from indexing.curation.dedup_stage import DEFAULT_THRESHOLDS

    sources = dict(kept)
    strict = out / "dedup-all-strict" / "kept.parquet"
    if strict.is_file():
        paths = column(pool_meta(next(iter(kept.values())))[1], "path")
        vectors, meta = pool_meta(strict)
        sources["retr:sscd-student"] = write_subset(vectors, meta, np.isin(column(meta, "path"), paths),
                                                    out / "concepts" / "sscd-student-pool.parquet")
    folders = {}
    for model, src in sources.items():
        t = DEFAULT_THRESHOLDS[model]
        folder = out / "concepts" / slug(model) / f"dedup-{t}"
        record = run_stage(StageSpec("dedup", str(src), folder, None, {"threshold": t}, progress=False), loader)
        largest = max(map(len, groups_of(folder).values()), default=0)
        print(f"dedup {model} @ {t}: {record.counts}, largest group {largest}")
        folders[f"{model} @ {t}"] = folder
    drop_checks(folders)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--models", default="retr:effnet-lite0,retr:default")
    ap.add_argument("--fraction", type=float, default=0.1, help="of every corpus, in the pool")
    ap.add_argument("--seeds", type=int, default=4, help="seed items per concept")
    ap.add_argument("--concepts", type=int, default=20, help="concepts in the long-tailed pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out = args.out or default_out()
    manifest = sample_manifest(out, args.fraction, args.seed)
    models = args.models.split(",")
    kept = {m: embed_pool(out, manifest, m, args.workers) for m in models}
    rows = [r for m in models for r in retrieval_rows(out, kept[m], m, args.seeds, args.seed)]
    print_retrieval(rows)
    for m in models:
        print_balance(m, balance_rows(kept[m], m, args))
    dedup_check(out, kept)


if __name__ == "__main__":
    main()

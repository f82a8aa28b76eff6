"""Table tests pinning indexing.choose: which index for (n, dim, budget), memory estimates, parsing."""

from __future__ import annotations

import re

import faiss
import pytest

from indexing.choose import (
    FLAT_MAX_N,
    KINDS,
    MIN_POINTS_PER_CENTROID,
    ONDISK_BLOCK_ROWS,
    OndiskSize,
    choose_index,
    estimate_memory,
    estimate_ondisk,
    parse_memory,
)

GiB, MiB = 2**30, 2**20

# (n, dim, budget) -> (kind, factory) of the top-ranked plan
BEST = [
    # small: exact search
    (5_000, 64, "1GB", "flat", "IDMap2,Flat"),
    (50_000, 512, "4GB", "flat", "IDMap2,Flat"),
    # small but Flat (~100 MiB) does not fit: 1 byte per dim does
    (50_000, 512, "64MB", "ivf_sq8", "IVF256,SQ8"),
    # past FLAT_MAX_N: IVF fast-scan PQ re-ranked on raw vectors, ~1 x sqrt(n) lists
    (200_000, 512, "4GB", "ivf_pq_refine", "IDMap2,IVF512,PQ128x4fs,RFlat"),
    (1_000_000, 512, "4GB", "ivf_pq_refine", "IDMap2,IVF1024,PQ128x4fs,RFlat"),
    (1_000_000, 768, "8GB", "ivf_pq_refine", "IDMap2,IVF1024,PQ192x4fs,RFlat"),
    # raw vectors (2 GiB) do not fit 1 GiB; SQ8 (0.5 GiB) does
    (1_000_000, 512, "1GB", "ivf_sq8", "IVF1024,SQ8"),
    # only PQ codes fit
    (1_000_000, 512, "200MB", "ivf_pq", "OPQ64_512,IVF1024,PQ64np"),
    (10_000_000, 768, "4GB", "ivf_pq", "OPQ64_768,IVF4096,PQ64np"),
    # 100M x (64 + 8 id bytes) > 4 GiB: M drops to 32
    (100_000_000, 768, "4GB", "ivf_pq", "OPQ32_768,IVF8192,PQ32np"),
    # too few vectors for any IVF list: no training possible
    (10, 8, "1MB", "flat", "IDMap2,Flat"),
    # no in-RAM index fits (4-byte codes + ids of 1B vectors: 11 GiB): the lists go to disk
    (1_000_000_000, 512, "8GB", "ivf_pq_ondisk", "OPQ64_512,IVF16384,PQ64np"),
    # ... and with a tighter budget, fewer lists (32768 -> 8192): a smaller training sample
    (1_000_000_000, 512, "3GB", "ivf_pq_ondisk", "OPQ64_512,IVF8192,PQ64np"),
    (1_000_000_000, 768, "5GB", "ivf_pq_ondisk", "OPQ64_768,IVF8192,PQ64np"),
]


@pytest.mark.parametrize(("n", "dim", "budget", "kind", "factory"), BEST)
def test_best_plan(n, dim, budget, kind, factory):
    best = choose_index(n, dim, parse_memory(budget))[0]
    assert (best.kind, best.factory) == (kind, factory)


def test_ranking_at_1m_puts_refine_then_sq8_then_graph():
    kinds = [p.kind for p in choose_index(1_000_000, 512, 4 * GiB)]
    assert kinds == ["ivf_pq_refine", "ivf_sq8", "hnsw", "hnsw", "ivf_flat", "ivf_pq", "flat", "ivf_pq_ondisk"]


def test_ranking_below_flat_max_n_puts_exact_first():
    kinds = [p.kind for p in choose_index(FLAT_MAX_N - 1, 128, 4 * GiB)]
    assert kinds[0] == "flat"
    assert kinds[1] == "ivf_pq_refine"


GRID = [(n, d, b) for n in (1_000, 60_000, 300_000, 3_000_000) for d in (32, 100, 512) for b in (256 * MiB, 16 * GiB)]


@pytest.mark.parametrize(("n", "dim", "budget"), GRID)
def test_every_plan_fits_trains_enough_and_parses_in_faiss(n, dim, budget):
    try:
        plans = choose_index(n, dim, budget)
    except ValueError:
        return  # covered by test_nothing_fits_names_smallest
    for p in plans:
        assert p.kind in KINDS
        assert p.est_memory_bytes <= budget
        if p.kind == "ivf_pq_ondisk":
            assert OndiskSize(p.est_memory_bytes, p.est_disk_bytes) == estimate_ondisk(p.factory, n, dim, p.train_size)
        else:
            assert (p.est_memory_bytes, p.est_disk_bytes) == (estimate_memory(p.factory, n, dim), 0)
        m = re.search(r"IVF(\d+)", p.factory)
        if m:  # enough training points for k-means, never more than we have
            assert MIN_POINTS_PER_CENTROID * int(m.group(1)) <= p.train_size <= n
            assert p.search_param == "nprobe"
        else:
            assert p.train_size == 0
        for pq_m in re.findall(r"PQ(\d+)", p.factory):
            assert dim % int(pq_m) == 0
        faiss.index_factory(dim, p.factory, faiss.METRIC_INNER_PRODUCT)  # the string is valid faiss


def test_nothing_fits_names_smallest():
    with pytest.raises(ValueError, match=r"smallest, 'OPQ4_768,IVF8192,PQ4np', needs about 1\.1GiB"):
        choose_index(100_000_000, 768, 1 * GiB)


@pytest.mark.parametrize(("n", "dim", "budget"), [(0, 8, GiB), (10, 0, GiB), (10, 8, 0)])
def test_bad_sizes_raise(n, dim, budget):
    with pytest.raises(ValueError):
        choose_index(n, dim, budget)


# estimate_memory: (factory, n, dim) -> bytes, from the formulas in choose.py
ESTIMATES = [
    ("IDMap2,Flat", 1000, 4, 1000 * (16 + 8 + 40)),
    ("IVF16,Flat", 1000, 4, 16 * 4 * 4 + 1000 * (16 + 8)),
    ("IVF16,SQ8", 1000, 4, 16 * 4 * 4 + 8 * 4 + 1000 * (4 + 8)),
    # codes 8 B + id 8 B per vector; 256 x 64 codebook floats; 512 x 512 OPQ matrix; centroids
    ("OPQ8_512,IVF32,PQ8np", 1000, 512, 1000 * 16 + 256 * 512 * 4 + 512 * 512 * 4 + 32 * 512 * 4),
    # level-0 links 2M, upper levels ~M/(M-1), 12 B node bookkeeping, flat vectors
    ("HNSW32", 1000, 4, int(1000 * (4 * (64 + 32 / 31) + 12 + 16))),
]


@pytest.mark.parametrize(("factory", "n", "dim", "expected"), ESTIMATES)
def test_estimate_memory(factory, n, dim, expected):
    assert estimate_memory(factory, n, dim) == expected


def test_estimate_ondisk():
    n, d, nlist, m, train = 10_000_000, 512, 4096, 64, 262_144
    factory = f"OPQ{m}_{d},IVF{nlist},PQ{m}np"
    resident = 4 * d * d + 4 * nlist * d + 4 * 256 * d + 24 * nlist  # OPQ, centroids, codebooks, list records
    training = 2 * train * 4 * d + 3 * 65_536 * 4 * d  # sample + rotated copy, OPQ's 3 copies of 64k rows
    adding = 2 * ONDISK_BLOCK_ROWS * 4 * d + 65_536 * 4 * d + ONDISK_BLOCK_ROWS * (m + 8)
    searching = 256 * -(-n // nlist) * (m + 8)  # 256 average lists' pages
    assert training > adding > searching  # at this size the training sample dominates
    assert estimate_ondisk(factory, n, d, train) == OndiskSize(int(resident + 1.15 * training), n * (m + 8))
    with pytest.raises(ValueError, match="IVF"):
        estimate_ondisk("IDMap2,Flat", n, d, train)


@pytest.mark.parametrize("factory", ["IVF16,LSH", "IVF16,PQ3", "Banana"])
def test_estimate_memory_rejects_unknown_or_invalid(factory):
    with pytest.raises(ValueError):
        estimate_memory(factory, 100, 16)


PARSED = [
    ("4GB", 4 * GiB),
    ("4G", 4 * GiB),
    ("4gib", 4 * GiB),
    ("512MB", 512 * MiB),
    ("1.5T", int(1.5 * 2**40)),
    ("2 GB", 2 * GiB),
    ("100", 100),
    ("100B", 100),
    ("64k", 64 * 1024),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "4XB", "-1GB", "0", "0GB", "4GBB", "1e9", "four GB", None, 4])
def test_parse_memory_rejects(text):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(text)

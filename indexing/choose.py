"""Choose a FAISS index for (vector count, dimension, memory budget), before building anything.

`choose_index` is a pure function: it returns every index type that fits the budget, ranked
best-first, each with the factory string to build, its estimated size, how many vectors its
training needs and which search parameter `indexing.tune` should sweep. All vectors are unit
rows searched by inner product (cosine).

The ranking follows 2-core CPU measurements on clustered 512-d unit vectors at recall@10 = 0.9
(bench/bench_index.py data; docs/benchmarks.md). Single-thread QPS (build seconds):

    n      Flat    IVF + fast-scan PQ + RFlat   IVF-SQ8      HNSW32        IVF-Flat
    50k    2.5k    33k  (1 s)                   -            21k  (2 s)    18k  (3 s)
    200k   0.6k    24k  (3 s)                   9.6k (2 s)   8.5k (16 s)   6.6k (15 s)
    1M     -       8.1k (16 s)                  3.6k (9 s)   2.8k (126 s)  2.0k (48 s)

(HNSW32 built with a single add(): see faiss_build.add_to_clone.) End to end at 1M x 512 with a
4 GB budget the chosen index ran 3.3x the QPS of HNSW32 at recall@10 0.9 and built 6x faster.

So: exact `Flat` below 100k vectors; above, IVF with 4-bit fast-scan codes re-ranked exactly
(it keeps the raw vectors, so needs about as much memory as Flat); as the budget shrinks, IVF-SQ8
(1 byte per dim), then OPQ + IVF-PQ (8-bit codes) when not even that fits. HNSW and IVF-Flat stay
in the list as alternatives: slower here, and HNSW builds an order of magnitude slower.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# --- thresholds (each with the reason it is where it is) ------------------------------------------

# Below this, brute force answers in under ~1 ms/query on 2 cores at d=512 (50k: 2.5k QPS single
# thread), needs no training or tuning, and gives recall 1.0: an ANN index buys little.
FLAT_MAX_N = 100_000
# faiss' k-means warns below 39 training points per centroid; we sample with some margin above it.
MIN_POINTS_PER_CENTROID = 39
TRAIN_POINTS_PER_CENTROID = 64
# 8-bit PQ codebooks have 256 centroids per sub-quantizer: the same 39-point rule -> ~10k vectors.
PQ8_MIN_TRAIN = 39 * 256
# HNSW neighbours per node: 32 is the usual speed/accuracy point for d in the hundreds; 16 saves
# link memory but needed efSearch 232 (vs 67) for recall 0.9 at 1M and was 1.6x slower.
HNSW_M_CHOICES = (32, 16)
# Lists per sqrt(n). IVF-Flat search is dominated by its scans, so more, shorter lists (faiss'
# guideline: 4-16 x sqrt(n)). With compressed codes scans are cheap and the coarse quantizer
# dominates: 1x and 2x sqrt(n) gave the same QPS at 1M (8.1k vs 8.2k) and 1x trains in half the time.
IVF_FLAT_LISTS_PER_SQRT_N = 4
IVF_CODES_LISTS_PER_SQRT_N = 1
# First re-ranking depth for RFlat (k * k_factor candidates re-scored exactly); tune.py walks it up
# when 4-bit codes mis-order too many close neighbours for the target (1M x 512 needed 32).
REFINE_K_FACTOR = 16
# 4 dims per 4-bit fast-scan sub-quantizer (d/8 bytes per vector): coarse, but it orders candidates
# well enough that re-ranking k * k_factor of them recovers the exact top-k.
FASTSCAN_DIMS_PER_SUBQUANTIZER = 4
# 8-bit PQ sub-quantizer counts for the compressed-only index, largest (most accurate) fitting one
# wins. Capped at 64 because OPQ training grows with M (OPQ64 on 32k x 512: ~38 s at 25 rounds).
PQ8_M_CHOICES = (64, 48, 32, 24, 16, 8, 4)
# 256 centroids in fewer than 4 dims are mostly wasted bits (and OPQ's training time grows with M).
PQ8_MIN_DIMS_PER_SUBQUANTIZER = 4
# Per-vector bookkeeping, in bytes (see estimate_memory).
ID_BYTES = 8  # int64 id per vector in inverted lists / IDMap
IDMAP2_REVERSE_BYTES = 40  # IndexIDMap2's id -> position hash map entry (std::unordered_map node)
HNSW_NODE_OVERHEAD_BYTES = 12  # int32 level + size_t offset per node
FASTSCAN_BLOCK = 32  # fast-scan lists hold codes in blocks of 32 (half a block wasted per list)

KINDS = ("flat", "ivf_pq_refine", "ivf_sq8", "hnsw", "ivf_flat", "ivf_pq")
# Preference order per regime: measured QPS at equal recall (table above), exact first when small.
_ORDER_SMALL = ("flat", "ivf_pq_refine", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq")
_ORDER_LARGE = ("ivf_pq_refine", "ivf_sq8", "hnsw", "ivf_flat", "ivf_pq", "flat")


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # faiss.index_factory string, built with METRIC_INNER_PRODUCT on unit vectors
    kind: str  # one of KINDS
    est_memory_bytes: int  # estimate_memory(factory, n, dim)
    train_size: int  # vectors to sample for train(); 0 when the index needs no training
    search_param: str | None  # "nprobe" | "efSearch" | None (exact)
    reason: str
    # search-time parameters set once at build (tune.apply_search_param), e.g. ("k_factor", 16)
    fixed_params: tuple[tuple[str, int], ...] = ()


# --- memory --------------------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """'4GB' -> bytes. K/M/G/T are powers of 1024 with or without 'B'/'iB' ('4G' == '4GiB' == '4GB'),
    as autofaiss reads them, so one budget string means the same to both tools."""
    if not isinstance(text, str):
        raise ValueError(f"memory must be a string like '4GB', got {text!r}")
    m = _MEMORY_RE.match(text)
    if m is None:
        raise ValueError(f"cannot parse memory {text!r}: expected a number and a unit, e.g. '512MB', '4GB', '1.5T'")
    number, unit = float(m.group(1)), m.group(2).upper()
    value = int(number * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"memory must be positive, got {text!r}")
    return value


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.1f}{unit}"
        nbytes /= 1024
    return f"{nbytes:.1f}TiB"


def _hnsw_bytes_per_node(m: int) -> float:
    # level 0 keeps 2*M int32 links; a node reaches level >= 1 with probability 1/M and then
    # keeps M links per upper level (geometric, so ~M/(M-1) links in expectation).
    return 4 * (2 * m + m / (m - 1)) + HNSW_NODE_OVERHEAD_BYTES


def _code_bytes(component: str, d: int) -> tuple[float, float, bool]:
    """(bytes per vector, fixed bytes for codebooks, is_fastscan) of an encoding component."""
    if component == "Flat":
        return 4.0 * d, 0.0, False
    if component == "SQ8":
        return float(d), 8.0 * d, False  # per-dim min and range
    if component == "SQfp16":
        return 2.0 * d, 0.0, False
    m = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(fs|np)?", component)
    if m is None:
        raise ValueError(f"estimate_memory does not know the encoding {component!r}")
    n_sub, nbits = int(m.group(1)), int(m.group(2) or 8)
    if d % n_sub:
        raise ValueError(f"{component}: dimension {d} is not a multiple of {n_sub}")
    return math.ceil(n_sub * nbits / 8), 4.0 * (2**nbits) * d, m.group(3) == "fs"


def estimate_memory(factory: str, n: int, dim: int) -> int:
    """Estimated resident bytes of `factory` holding n vectors of `dim` (allocator slack excluded)."""
    if n < 0 or dim <= 0:
        raise ValueError(f"need n >= 0 and dim > 0, got n={n}, dim={dim}")
    parts = [p.strip() for p in factory.split(",")]
    total, d = 0.0, dim
    nlist = 0
    per_vector = 0.0
    while parts:
        p = parts.pop(0)
        if p in ("IDMap", "IDMap2"):
            per_vector += ID_BYTES + (IDMAP2_REVERSE_BYTES if p == "IDMap2" else 0)
        elif m := re.fullmatch(r"(?:OPQ|PCAR?)(\d+)(?:_(\d+))?", p):
            d_out = int(m.group(2) or (d if p.startswith("OPQ") else m.group(1)))
            total += 4.0 * d * d_out  # the rotation / projection matrix
            d = d_out
        elif m := re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?", p):
            nlist = int(m.group(1))
            total += 4.0 * nlist * d  # centroids
            if m.group(2):
                total += nlist * _hnsw_bytes_per_node(int(m.group(2)))
            per_vector += ID_BYTES  # ids in the inverted lists
        elif m := re.fullmatch(r"HNSW(\d+)", p):
            per_vector += _hnsw_bytes_per_node(int(m.group(1)))
            if not parts or not re.match(r"(Flat|SQ|PQ)", parts[0]):
                parts.insert(0, "Flat")  # "HNSW32" alone stores flat vectors
        elif p == "RFlat":
            per_vector += 4.0 * dim  # re-ranking keeps the raw input vectors
        else:
            bytes_per, codebooks, fastscan = _code_bytes(p, d)
            per_vector += bytes_per
            total += codebooks
            if fastscan and nlist:
                total += nlist * (FASTSCAN_BLOCK / 2) * bytes_per
    return int(total + per_vector * n)


# --- choosing ------------------------------------------------------------------------------------


def _pow2_near(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(x, 1.0))))


def _nlist(n: int, lists_per_sqrt_n: float) -> int:
    """A power of two near lists_per_sqrt_n * sqrt(n), lowered until n gives 39 points per list."""
    nlist = _pow2_near(lists_per_sqrt_n * math.sqrt(n))
    while nlist > 1 and nlist * MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    return nlist


def _ivf_train_size(n: int, nlist: int, minimum: int = 0) -> int:
    return min(n, max(TRAIN_POINTS_PER_CENTROID * nlist, minimum))


def _fastscan_m(dim: int) -> int:
    """4-bit sub-quantizers: about FASTSCAN_DIMS_PER_SUBQUANTIZER dims each, dividing dim."""
    return next(m for m in range(max(1, dim // FASTSCAN_DIMS_PER_SUBQUANTIZER), 0, -1) if dim % m == 0)


def _candidates(n: int, dim: int, budget: int) -> list[IndexPlan]:
    """Every index we know how to build for (n, dim); choose_index filters and ranks them."""

    def plan(factory: str, kind: str, train: int, param: str | None, reason: str, fixed=()) -> IndexPlan:
        return IndexPlan(factory, kind, estimate_memory(factory, n, dim), train, param, reason, tuple(fixed))

    out = [plan("IDMap2,Flat", "flat", 0, None, "exact search: recall 1.0, no training")]
    for m in HNSW_M_CHOICES:
        out.append(plan(f"IDMap2,HNSW{m},Flat", "hnsw", 0, "efSearch", f"graph with M={m}, no training"))
    if n < MIN_POINTS_PER_CENTROID:
        return out  # too few vectors to train even one list
    nl = _nlist(n, IVF_CODES_LISTS_PER_SQRT_N)
    m_fs = _fastscan_m(dim)
    out.append(
        plan(
            f"IDMap2,IVF{nl},PQ{m_fs}x4fs,RFlat",
            "ivf_pq_refine",
            _ivf_train_size(n, nl),
            "nprobe",
            f"{nl} lists of 4-bit fast-scan PQ{m_fs} codes, top k*k_factor re-ranked on raw vectors",
            [("k_factor", REFINE_K_FACTOR)],
        )
    )
    out.append(plan(f"IVF{nl},SQ8", "ivf_sq8", _ivf_train_size(n, nl), "nprobe", f"{nl} lists, 1 byte per dim"))
    nl_flat = _nlist(n, IVF_FLAT_LISTS_PER_SQRT_N)
    out.append(
        plan(f"IVF{nl_flat},Flat", "ivf_flat", _ivf_train_size(n, nl_flat), "nprobe", f"{nl_flat} lists of raw vectors")
    )
    pq_ms = [m for m in PQ8_M_CHOICES if dim % m == 0 and m * PQ8_MIN_DIMS_PER_SUBQUANTIZER <= dim]
    for m in pq_ms:
        factory = f"OPQ{m}_{dim},IVF{nl},PQ{m}np"  # np: skip polysemous training (slow, unused here)
        # the largest M that fits is the most accurate; smaller ones only lose recall. The smallest
        # is kept even when it does not fit, so the "nothing fits" error can name it.
        if estimate_memory(factory, n, dim) <= budget or m == pq_ms[-1]:
            reason = f"OPQ rotation + {m}-byte PQ codes in {nl} lists: smallest footprint, capped recall"
            out.append(plan(factory, "ivf_pq", _ivf_train_size(n, nl, PQ8_MIN_TRAIN), "nprobe", reason))
            break
    return out


def choose_index(n: int, dim: int, max_memory_bytes: int) -> list[IndexPlan]:
    """Index plans that fit `max_memory_bytes` for n unit vectors of `dim`, best first.

    Raises ValueError when nothing fits, naming the smallest estimate.
    """
    if n <= 0 or dim <= 0:
        raise ValueError(f"need n > 0 and dim > 0, got n={n}, dim={dim}")
    if max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}")
    candidates = _candidates(n, dim, max_memory_bytes)
    fitting = [p for p in candidates if p.est_memory_bytes <= max_memory_bytes]
    if not fitting:
        smallest = min(candidates, key=lambda p: p.est_memory_bytes)
        raise ValueError(
            f"no index for {n} x {dim} vectors fits {_human(max_memory_bytes)}: the smallest, "
            f"{smallest.factory!r}, needs about {_human(smallest.est_memory_bytes)}"
        )
    order = _ORDER_SMALL if n < FLAT_MAX_N else _ORDER_LARGE
    # stable sort: within a kind the generation order holds (HNSW32 before HNSW16)
    return sorted(fitting, key=lambda p: order.index(p.kind))

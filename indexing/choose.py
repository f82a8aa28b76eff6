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

Past RAM: when not even the smallest in-RAM codes fit, OPQ + IVF-PQ with its inverted lists in a
file next to the shard (kind "ivf_pq_ondisk", indexing/ondisk.py; faiss OnDiskInvertedLists, the
way LAION-5B's index was built). Its codes and ids cost disk, not RAM: RAM is the quantizer, a few
words per list, the build's largest working set (the training sample, or one block of vectors
being added) and the pages of the lists a search is scanning (`estimate_ondisk`). It is always in
the ranked list, last: with the same codes in RAM, search never waits for a page. Only when it too
misses the budget does `choose_index` raise.
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
FLOAT_BYTES = 4
# --- on-disk IVF-PQ (estimate_ondisk) ---
# Vectors added per block file. A block is copied out of the (memory-mapped) input, rotated by OPQ
# into a second copy, and coded: 100k x 512-d is ~0.4 GB of working set, small next to a 4 GB
# budget, while 10M vectors still make only 100 block files to merge.
ONDISK_BLOCK_ROWS = 100_000
BLOCK_COPIES = 2  # the block read from the input + its OPQ-rotated copy (IndexPreTransform.add)
FAISS_ADD_BATCH = 65_536  # IndexIVF adds in sub-batches; residuals of one are float32 (rows x dim)
# Training: the sample read from the input + its rotated copy that k-means runs on
# (IndexPreTransform.train); OPQ itself trains on at most OPQ_TRAIN_ROWS rows (faiss'
# OPQMatrix.max_train_points) and keeps ~3 float32 copies of them (input, projection, reconstruction).
TRAIN_COPIES = 2
OPQ_TRAIN_ROWS = 256 * 256
OPQ_TRAIN_COPIES = 3
ONDISK_LIST_BYTES = 24  # OnDiskInvertedLists keeps (size, capacity, offset) per list in RAM
# Measured build peaks (private RSS above the process' own) ran 10-14% over the largest working set
# named above (faiss temporaries, allocator arenas): 581 vs 528 MiB adding at 200k x 512, 735 vs
# 644 MiB training at 1M x 512 (bench/bench_ondisk.py). The estimate is a budget, so it keeps that.
ONDISK_WORKING_SET_SLACK = 1.15
# Pages of the lists a search needs mapped at once: each query scans nprobe lists one at a time
# (tuned: 3 at 200k and 11 at 1M x 512 for recall@10 0.6, near where 8-bit OPQ64 codes plateau;
# 32 leaves room) and faiss runs one query per thread: 32 x 8 threads. Lists read earlier stay in
# the page cache while RAM is free, but the kernel may drop them.
ONDISK_HOT_LISTS = 32 * 8

KINDS = ("flat", "ivf_pq_refine", "ivf_sq8", "hnsw", "ivf_flat", "ivf_pq", "ivf_pq_ondisk")
# Preference order per regime: measured QPS at equal recall (table above), exact first when small;
# on disk last in both, as the index of last resort (module docstring).
_ORDER_SMALL = ("flat", "ivf_pq_refine", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq", "ivf_pq_ondisk")
_ORDER_LARGE = ("ivf_pq_refine", "ivf_sq8", "hnsw", "ivf_flat", "ivf_pq", "flat", "ivf_pq_ondisk")


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
    est_disk_bytes: int = 0  # on-disk kinds: the inverted lists file; 0 for in-RAM kinds


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


@dataclass(frozen=True)
class OndiskSize:
    """Estimated footprint of an on-disk IVF index (see estimate_ondisk)."""

    ram_bytes: int  # peak resident memory, build or search, whichever is larger
    disk_bytes: int  # the inverted lists file: codes + ids of every vector


def estimate_ondisk(factory: str, n: int, dim: int, train_size: int, block_rows: int = ONDISK_BLOCK_ROWS) -> OndiskSize:
    """RAM and disk of an IVF `factory` whose lists live on disk, built in blocks of `block_rows`.

    RAM = what stays resident (OPQ matrix, centroids, codebooks; a (size, capacity, offset) record
    per list) + the largest working set of the three phases, which never overlap:
      training  the sample and its rotated copy, plus OPQ's own copies of its subsample;
      adding    one block, its rotated copy, one faiss add sub-batch of residuals, its codes + ids;
      search    the pages of ONDISK_HOT_LISTS average lists;
    that working set with ONDISK_WORKING_SET_SLACK, as measured. Unlike the in-RAM estimates this
    one counts the build: bounding it is the point of the kind.
    """
    if n < 0 or dim <= 0 or block_rows <= 0:
        raise ValueError(f"need n >= 0, dim > 0 and block_rows > 0, got n={n}, dim={dim}, block_rows={block_rows}")
    m = re.search(r"IVF(\d+)", factory)
    if m is None:
        raise ValueError(f"on-disk lists need an IVF index, got {factory!r}")
    nlist = int(m.group(1))
    fixed = estimate_memory(factory, 0, dim)
    per_vector = estimate_memory(factory, 1, dim) - fixed  # code bytes + int64 id: what goes to disk
    row = FLOAT_BYTES * dim
    train = TRAIN_COPIES * min(train_size, n) * row
    if factory.startswith("OPQ"):
        train += OPQ_TRAIN_COPIES * min(OPQ_TRAIN_ROWS, train_size, n) * row
    block = min(block_rows, n)
    add = BLOCK_COPIES * block * row + min(FAISS_ADD_BATCH, block) * row + block * per_vector
    disk = n * per_vector
    search = min(disk, ONDISK_HOT_LISTS * math.ceil(n / nlist) * per_vector)
    working_set = ONDISK_WORKING_SET_SLACK * max(train, add, search)
    return OndiskSize(int(fixed + nlist * ONDISK_LIST_BYTES + working_set), int(disk))


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
    if pq_ms:
        out.append(_ondisk_plan(n, dim, budget, pq_ms[0], nl))
    return out


def _ondisk_plan(n: int, dim: int, budget: int, m: int, nlist: int) -> IndexPlan:
    """OPQ + IVF-PQ with lists on disk. M is the largest (most accurate): codes cost disk, not RAM.

    nlist starts at the in-RAM rule (~sqrt(n)) and is halved while the estimate misses the budget:
    the training sample (64 points per list) dominates RAM at large n, and fewer lists need fewer
    points. Halving stops when it no longer lowers the estimate (lists grow so long that the pages
    a search scans dominate); the smallest plan is then returned, for the "nothing fits" error.
    """
    tried: list[IndexPlan] = []
    while True:
        factory = f"OPQ{m}_{dim},IVF{nlist},PQ{m}np"
        train = _ivf_train_size(n, nlist, PQ8_MIN_TRAIN)
        size = estimate_ondisk(factory, n, dim, train)
        reason = (f"OPQ rotation + {m}-byte PQ codes in {nlist} lists kept in a "
                  f"~{_human(size.disk_bytes)} file: search reads only the lists it probes")
        plan = IndexPlan(factory, "ivf_pq_ondisk", size.ram_bytes, train, "nprobe", reason, (), size.disk_bytes)
        if plan.est_memory_bytes <= budget:
            return plan
        if nlist == 1 or (tried and plan.est_memory_bytes >= tried[-1].est_memory_bytes):
            return min([*tried, plan], key=lambda p: p.est_memory_bytes)
        tried.append(plan)
        nlist //= 2


def choose_index(n: int, dim: int, max_memory_bytes: int) -> list[IndexPlan]:
    """Index plans that fit `max_memory_bytes` for n unit vectors of `dim`, best first.

    In-RAM kinds come first in measured order; the on-disk IVF-PQ ("ivf_pq_ondisk") is listed last
    whenever it fits, so it is the one chosen exactly when no in-RAM index fits the budget.
    Raises ValueError when nothing fits, not even on disk, naming the smallest estimate.
    """
    if n <= 0 or dim <= 0:
        raise ValueError(f"need n > 0 and dim > 0, got n={n}, dim={dim}")
    if max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}")
    candidates = _candidates(n, dim, max_memory_bytes)
    fitting = [p for p in candidates if p.est_memory_bytes <= max_memory_bytes]
    if not fitting:
        smallest = min(candidates, key=lambda p: p.est_memory_bytes)
        where = " with its lists on disk" if smallest.est_disk_bytes else ""
        raise ValueError(
            f"no index for {n} x {dim} vectors fits {_human(max_memory_bytes)}: the smallest, "
            f"{smallest.factory!r}{where}, needs about {_human(smallest.est_memory_bytes)} of RAM"
        )
    order = _ORDER_SMALL if n < FLAT_MAX_N else _ORDER_LARGE
    # stable sort: within a kind the generation order holds (HNSW32 before HNSW16)
    return sorted(fitting, key=lambda p: order.index(p.kind))

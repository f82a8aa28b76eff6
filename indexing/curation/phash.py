"""A DCT perceptual hash (pHash): 64 bits that stay close when an image is re-encoded or resized.

    h = phash(image)                      # int, a 64-bit pattern as a signed int64 (two's complement)
    d = hamming(hashes[:, None], hashes)  # bits that differ, vectorised
    q, b, d = phash_pairs(hashes, 6)      # every pair within 6 bits, q < b

The recipe is Zauner's (and the `imagehash` package's): grey levels, shrunk to 32×32 so that only
coarse structure is left, a 2-D DCT-II, and the 8×8 lowest frequencies, each one bit: above the
median of those 64 or not. The median is taken over the 63 others: the DC term (the mean brightness)
is far above every other coefficient and would only pull the median with it. So every hash has 32
ones (the DC bit and 31 of the other 63), and distances between hashes are always even. Hashes are numpy int64 so they
store in Arrow/parquet `int64` columns; `phash_similarity` maps a distance to [0, 1] so pHash can
sit on the same threshold curve as cosine models.

`phash_pairs` is exact and quick at ~100k hashes: for small radii it only compares hashes that agree
on one whole chunk of bits (the pigeonhole principle), for wide ones faiss' binary flat index does the
popcounts in C++ (timings next to `_BUCKETS_UP_TO`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

HASH_BITS = 64
_SIDE = 32  # the image is shrunk to _SIDE × _SIDE before the DCT
_LOW = 8  # the _LOW × _LOW lowest frequencies are the hash's bits
_RESAMPLE = Image.Resampling.LANCZOS  # fixed, so a hash never depends on Pillow's default filter


@cache
def _dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix C: C @ x is the DCT of a column x; C @ X @ C.T of an image X."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def _grey(image: Image.Image) -> Image.Image:
    """Grey levels, transparent pixels flattened onto white first (as the decoder does): otherwise an
    icon's transparent background reads as black or as whatever colour its hidden pixels hold."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("L")


def _bits_to_int64(bits: np.ndarray) -> int:
    """64 booleans, the first the most significant -> the int64 with that bit pattern."""
    packed = np.packbits(bits.astype(np.uint8))  # (8,) bytes, big-endian bit order
    return int(packed.view(">u8")[0].astype(np.uint64).view(np.int64))


def phash(image: Image.Image) -> int:
    """The image's 64-bit perceptual hash, as a signed int64 value (bit 63 is the sign)."""
    # A box-filter reduction first, to about 3 × the hash's side: a 12-megapixel photo took ~120 ms
    # through LANCZOS alone, ~10 ms this way, with the same hashes on the photos we checked.
    factor = min(image.size) // (_SIDE * 3)
    if factor > 1:
        image = (image if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert("RGBA")).reduce(factor)
    x = np.asarray(_grey(image).resize((_SIDE, _SIDE), _RESAMPLE), dtype=np.float64)  # (32, 32)
    c = _dct_matrix(_SIDE)
    low = (c @ x @ c.T)[:_LOW, :_LOW].ravel()  # (64,), low[0] the DC term
    median = np.median(low[1:])
    return _bits_to_int64(low > median)


def phash_file(source: str | Path | bytes) -> int:
    """phash of an image file (a path or its bytes), decoded as the pipeline decodes it (SVG too)."""
    from indexing.decode import decode_image

    if isinstance(source, bytes):
        return phash(decode_image(source).image)
    path = Path(source)
    return phash(decode_image(path.read_bytes(), name=str(path)).image)


def _as_uint64(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h)
    if h.dtype not in (np.int64, np.uint64):
        raise ValueError(f"hashes are int64 or uint64 arrays, got {h.dtype}")
    return h.view(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64/uint64 hashes, elementwise with broadcasting (int64 result)."""
    return np.bitwise_count(_as_uint64(a) ^ _as_uint64(b)).astype(np.int64)


def phash_similarity(distance: np.ndarray | int) -> np.ndarray:
    """Hamming distance -> 1 - distance/64: 1 for equal hashes, ~0.5 for unrelated ones."""
    return 1.0 - np.asarray(distance, np.float64) / HASH_BITS


def _bucket_pairs(u: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs q < b within `max_distance` bits by the pigeonhole principle (Norouzi et al.'s multi-index
    hashing): cut the 64 bits into max_distance + 1 chunks; two hashes that close agree on at least one
    whole chunk. Per chunk, sort by its value and check every pair inside a bucket of equal values."""
    edges = np.linspace(0, HASH_BITS, max_distance + 2).astype(np.uint64)
    out_q, out_b = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        key = (u >> lo) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        s = key[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        sizes = np.diff(np.r_[starts, len(s)])
        after = np.repeat(starts + sizes, sizes) - np.arange(len(s)) - 1  # bucket-mates after each row
        for k in range(1, int(sizes.max())):  # the pairs k apart within a bucket, one vector op each
            at = np.flatnonzero(after >= k)
            a, b = order[at], order[at + k]
            close = hamming(u[a], u[b]) <= max_distance
            out_q.append(np.minimum(a[close], b[close]))
            out_b.append(np.maximum(a[close], b[close]))
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # a pair that agrees on several chunks was found once per chunk
    pair = np.unique(np.concatenate(out_q).astype(np.int64) * len(u) + np.concatenate(out_b))
    return pair // len(u), pair % len(u)


def _flat_pairs(u: np.ndarray, max_distance: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs q < b within `max_distance` bits by an exhaustive faiss IndexBinaryFlat range search,
    queries in batches (memory: the codes plus one batch's hits)."""
    codes = np.ascontiguousarray(u).view(np.uint8).reshape(-1, 8)  # any byte order: popcounts don't care
    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(codes)
    out_q, out_b = [], []
    for start in range(0, len(codes), batch):
        lims, _, nbrs = index.range_search(codes[start:start + batch], max_distance + 1)  # radius is exclusive
        rows = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = nbrs > rows  # each pair once, no self-pairs
        out_q.append(rows[keep])
        out_b.append(nbrs[keep])
    return np.concatenate(out_q).astype(np.int64), np.concatenate(out_b).astype(np.int64)


# Up to 7 bits the chunks are ≥ 8 bits wide, so buckets stay small and the pigeonhole search wins; wider
# radii mean narrow chunks and huge buckets, where checking every pair in C++ is as fast. Measured on
# 2 shared cores, 100k random hashes with 10k near copies: radius 6, 1.1 s pigeonhole vs 14.6 s flat;
# radius 10, 15.2 s vs 15.3 s.
_BUCKETS_UP_TO = 7


def phash_pairs(
    hashes: np.ndarray, max_distance: int, *, batch: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, b, distance): every pair of rows q < b whose hashes differ in at most `max_distance` bits,
    exactly, sorted by (q, b). 0 finds identical hashes (a sort)."""
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance is between 0 and {HASH_BITS - 1} bits, got {max_distance}")
    u = _as_uint64(hashes).reshape(-1)
    if len(u) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if max_distance <= _BUCKETS_UP_TO:
        q, b = _bucket_pairs(u, max_distance)
    else:
        q, b = _flat_pairs(u, max_distance, batch)
        order = np.lexsort((b, q))
        q, b = q[order], b[order]
    return q, b, hamming(u[q], u[b])

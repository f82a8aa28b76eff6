"""A DCT perceptual hash (pHash): 64 bits that stay close when an image is re-encoded or resized.

    h = phash(image)                      # int, a 64-bit pattern as a signed int64 (two's complement)
    d = hamming(hashes[:, None], hashes)  # bits that differ, vectorised

The recipe is Zauner's (and the `imagehash` package's): grey levels, shrunk to 32×32 so that only
coarse structure is left, a 2-D DCT-II, and the 8×8 lowest frequencies, each one bit: above the
median of those 64 or not. The median is taken over the 63 others: the DC term (the mean brightness)
is far above every other coefficient and would only pull the median with it. So every hash has 32
ones (the DC bit and 31 of the other 63), and distances between hashes are always even. Hashes are numpy int64 so they
store in Arrow/parquet `int64` columns; `phash_similarity` maps a distance to [0, 1] so pHash can
sit on the same threshold curve as cosine models.

The embed job stores every item's hash (indexing.embed), so this module needs only numpy and Pillow;
finding every pair of close hashes is curation's work (indexing.curation.phash_pairs).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

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


def as_uint64(h: np.ndarray) -> np.ndarray:
    """int64 or uint64 hashes viewed as uint64 (no copy); any other dtype is an error."""
    h = np.asarray(h)
    if h.dtype not in (np.int64, np.uint64):
        raise ValueError(f"hashes are int64 or uint64 arrays, got {h.dtype}")
    return h.view(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64/uint64 hashes, elementwise with broadcasting (int64 result)."""
    return np.bitwise_count(as_uint64(a) ^ as_uint64(b)).astype(np.int64)


def phash_similarity(distance: np.ndarray | int) -> np.ndarray:
    """Hamming distance -> 1 - distance/64: 1 for equal hashes, ~0.5 for unrelated ones."""
    return 1.0 - np.asarray(distance, np.float64) / HASH_BITS

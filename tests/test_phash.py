"""The perceptual hash on real photos (scikit-image's): re-encoded and resized copies stay within a few
bits, unrelated photos are far apart; Hamming distance and the pair search against brute force."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from indexing.curation.phash_pairs import phash_pairs
from indexing.phash import hamming, phash, phash_file, phash_similarity

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "moon")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _dist(a: int, b: int) -> int:
    return int(hamming(np.int64(a), np.int64(b)))


def test_identical_images_hash_equal_and_file_matches_image():
    image = _photo("astronaut")
    assert phash(image) == phash(image.copy())
    png = io.BytesIO()
    image.save(png, "PNG")
    assert phash_file(png.getvalue()) == phash(image)
    # 31 of the 63 non-DC coefficients are above their median, and the DC term always is
    assert bin(phash(image) & 0xFFFF_FFFF_FFFF_FFFF).count("1") == 32


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_jpeg_and_resized_copies_stay_close(name):
    image = _photo(name)
    h = phash(image)
    half = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    # observed: 0-2 bits for JPEG q50, 0-2 for a half-size copy
    assert _dist(h, phash_file(_jpeg(image, 50))) <= 6
    assert _dist(h, phash(half)) <= 6


def test_unrelated_photos_are_far_apart():
    hashes = {name: phash(_photo(name)) for name in PHOTOS}
    for i, a in enumerate(PHOTOS):
        for b in PHOTOS[i + 1:]:
            assert _dist(hashes[a], hashes[b]) > 20, (a, b)  # observed ≥ 22, ~32 typical


def test_transparent_background_reads_as_white():
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black: the hidden colour must not count
    icon.paste((200, 30, 30, 255), (16, 16, 48, 48))
    flat = Image.new("RGB", (64, 64), "white")
    flat.paste((200, 30, 30), (16, 16, 48, 48))
    assert phash(icon) == phash(flat)


def test_matches_scipy_dct_reference():
    from scipy.fft import dctn

    image = _photo("chelsea")
    x = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = dctn(x, type=2, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    expected = int("".join("1" if b else "0" for b in bits), 2)
    assert phash(image) & 0xFFFF_FFFF_FFFF_FFFF == expected  # int64 two's complement -> unsigned


def _bit_by_bit(a: int, b: int) -> int:
    return sum(((a >> i) & 1) != ((b >> i) & 1) for i in range(64))


@settings(max_examples=200, deadline=None, database=None)
@given(a=st.integers(-(2**63), 2**63 - 1), b=st.integers(-(2**63), 2**63 - 1))
def test_hamming_matches_bit_by_bit(a, b):
    assert _dist(a, b) == _bit_by_bit(a, b)
    assert int(hamming(np.uint64(a % 2**64), np.uint64(b % 2**64))) == _bit_by_bit(a, b)


def test_hamming_broadcasts_and_rejects_other_dtypes():
    h = np.array([0, -1, 1, 3], np.int64)
    np.testing.assert_array_equal(hamming(h[:, None], h[None, :])[0], [0, 64, 1, 2])
    with pytest.raises(ValueError, match="int64 or uint64"):
        hamming(np.zeros(2, np.float64), np.zeros(2, np.float64))


def test_similarity_scale():
    np.testing.assert_allclose(phash_similarity(np.array([0, 16, 64])), [1.0, 0.75, 0.0])


def _near_copies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random hashes, half of them copies of another with 0-12 bits flipped (so pairs exist at every radius)."""
    h = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    for i in rng.choice(n, n // 2, replace=False):
        flip = rng.choice(64, rng.integers(0, 13), replace=False)
        mask = np.bitwise_or.reduce(np.uint64(1) << flip.astype(np.uint64), initial=np.uint64(0))
        h[i] = (h[rng.integers(n)].view(np.uint64) ^ mask).view(np.int64)
    return h


@pytest.mark.parametrize("max_distance", [0, 1, 3, 6, 7, 8, 12, 20])  # both searches: buckets ≤ 7 < flat
@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_match_brute_force(max_distance, seed):
    h = _near_copies(np.random.default_rng(seed), 300)
    d = hamming(h[:, None], h[None, :])
    qq, bb = np.nonzero(np.triu(d <= max_distance, k=1))
    q, b, dist = phash_pairs(h, max_distance, batch=64)
    np.testing.assert_array_equal(q, qq)
    np.testing.assert_array_equal(b, bb)
    np.testing.assert_array_equal(dist, d[qq, bb])
    assert len(q) > 0


def test_pairs_edge_cases():
    assert all(len(x) == 0 for x in phash_pairs(np.zeros(1, np.int64), 5))
    q, b, _ = phash_pairs(np.zeros(4, np.int64), 0)  # one bucket of four equal hashes: all six pairs
    assert list(zip(q.tolist(), b.tolist(), strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with pytest.raises(ValueError, match="max_distance"):
        phash_pairs(np.zeros(3, np.int64), 64)

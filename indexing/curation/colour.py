"""The colour check behind the pixel step: two images a perceptual hash calls one picture must also
agree in colour, cell by cell.

pHash reads grey levels only, so a red heart and a blue heart of one drawing, or an emoji in two skin
tones, hash a few bits apart; on the project's emoji and clip-art corpora 99 % of what the bare hash
step dropped were such recolourings, not copies (bench/curate_findings.py). A re-encode or a resize
changes an 8 × 8 grid of mean colours by a few levels; a recolouring moves the cells it covers by tens.

    sig = colour_signatures(paths)         # (n, 8, 8, 3) float32 in 0..1; NaN for an unreadable file
    ok = colour_agrees(sig[q], sig[b], tol) # per pair: the largest cell difference is at most tol

Only images the hash pairs are decoded (the stage passes their paths), decoded as the embedding step
decodes them (transparency onto white). Tested in tests/test_curation_dedup.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

GRID = 8
DEFAULT_TOLERANCE = 0.1  # of the 0..1 range, ~25 levels; bench/bench_dedup_quality.py and the corpora
SIDE = 128  # decoded (SVGs rasterised) at most this large: 8 x 8 means need no more, and SVGs render 10x faster


def _limits():
    from indexing.decode import DecodeLimits

    return DecodeLimits(max_side=SIDE, svg_size=SIDE)


def colour_signature(path: str) -> np.ndarray:
    """(GRID, GRID, 3) mean colours of the decoded image; NaN when it cannot be read."""
    from indexing.decode import DecodeError, decode_image
    from indexing.sources import Item, read_item_bytes

    try:
        image = decode_image(read_item_bytes(Item(path=path)), name=path, limits=_limits()).image
    except (OSError, DecodeError, ValueError):
        return np.full((GRID, GRID, 3), np.nan, np.float32)
    small = image.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


def colour_signatures(paths: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
    """colour_signature of each path, stacked; a progress bar (images/s) from 1,000 images unless told."""
    if not len(paths):
        return np.zeros((0, GRID, GRID, 3), np.float32)
    from tqdm import tqdm

    show = len(paths) >= 1000 if progress is None else progress
    return np.stack([colour_signature(p) for p in tqdm(paths, desc="colour check", unit="img", disable=not show)])


def colour_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair (leading axis), the largest absolute difference over cells and channels; NaN stays NaN."""
    d = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    return d.reshape(len(d), -1).max(axis=1) if len(d) else np.zeros(0, np.float32)


def colour_agrees(a: np.ndarray, b: np.ndarray, tolerance: float) -> np.ndarray:
    """Pairs whose colours agree within TOLERANCE; False where either image could not be read."""
    with np.errstate(invalid="ignore"):
        return colour_difference(a, b) <= tolerance

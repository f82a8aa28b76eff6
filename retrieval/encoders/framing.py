"""Framing: cut the empty border around a drawing, so every style fills the frame alike.

Icon sets frame the same drawing differently: Noto and Twemoji emoji fill their canvas, OpenMoji
leaves a fifth of it empty on each side, clip-art sits anywhere on a large page. A pretrained tower
sees those as different scales. `trim_border` finds a uniform border (the background a drawing sits
on, after transparency is composited), crops to the content's bounding box plus a small margin and
centres it on a square canvas of the background colour. An image without a uniform border (a
photograph, a full-bleed flag) is returned unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

TOLERANCE = 12  # a pixel differs from the background when one channel differs by more than this
MARGIN = 0.06  # kept around the content, as a fraction of its longer side
RING_SHARE = 0.95  # share of the outermost pixels that must match the background for a border to count
DETECT_SIDE = 256  # the border is found on a copy reduced to about this side (the crop is of the original)


def trim_border(image: Image.Image) -> Image.Image:
    """RGB `image` cropped to its content on a square canvas of its background colour, or unchanged."""
    image = image.convert("RGB")
    factor = max(1, math.ceil(max(image.size) / DETECT_SIDE))
    small = image.reduce(factor) if factor > 1 else image
    a = np.asarray(small, dtype=np.int16)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    background = np.median(ring, axis=0)
    if np.mean(np.abs(ring - background).max(axis=-1) <= TOLERANCE) < RING_SHARE:
        return image
    ys, xs = np.nonzero(np.abs(a - background).max(axis=-1) > TOLERANCE)
    if len(ys) == 0:  # a blank image: nothing to frame
        return image
    w, h = image.size
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if factor > 1:  # reduced pixel i covers original pixels [i*factor, (i+1)*factor): refine each edge there
        x0, y0 = max(0, (x0 - 1) * factor), max(0, (y0 - 1) * factor)
        x1, y1 = min(w, (x1 + 1) * factor), min(h, (y1 + 1) * factor)
        x0, y0, x1, y1 = _refine(image, background, (x0, y0, x1, y1), 2 * factor)
    cw, ch = x1 - x0, y1 - y0
    side = max(1, round(max(cw, ch) * (1 + 2 * MARGIN)))
    canvas = Image.new("RGB", (side, side), tuple(int(v) for v in background))
    canvas.paste(image.crop((x0, y0, x1, y1)), ((side - cw) // 2, (side - ch) // 2))
    return canvas


def _refine(image: Image.Image, background: np.ndarray, box: tuple[int, int, int, int], band: int) -> tuple[int, ...]:
    """The exact content box inside `box`, reading only strips `band` pixels wide along its four edges."""
    x0, y0, x1, y1 = box

    def content(strip: tuple[int, int, int, int], axis: int) -> np.ndarray:
        a = np.asarray(image.crop(strip), dtype=np.int16)
        return np.nonzero((np.abs(a - background).max(axis=-1) > TOLERANCE).any(axis=axis))[0]

    left = content((x0, y0, min(x1, x0 + band), y1), 0)
    right = content((max(x0, x1 - band), y0, x1, y1), 0)
    x0, x1 = (x0 + left[0] if len(left) else x0), (max(x0, x1 - band) + right[-1] + 1 if len(right) else x1)
    top = content((x0, y0, x1, min(y1, y0 + band)), 1)
    bottom = content((x0, max(y0, y1 - band), x1, y1), 1)
    y0, y1 = (y0 + top[0] if len(top) else y0), (max(y0, y1 - band) + bottom[-1] + 1 if len(bottom) else y1)
    return x0, y0, x1, y1

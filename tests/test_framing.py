"""Framing: a drawing's empty border is cut so that every style fills the frame alike; photos are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageOps

from retrieval.encoders.base import ImagePreprocess
from retrieval.encoders.framing import trim_border


def _horse() -> Image.Image:
    """scikit-image's horse: a black silhouette drawn on white (328 x 400)."""
    return Image.fromarray((skimage.data.horse() * 255).astype(np.uint8)).convert("RGB")


def _dark(image: Image.Image) -> int:
    return int((np.asarray(image.convert("L")) < 128).sum())


def test_a_drawing_is_cut_to_its_content_on_a_square_canvas() -> None:
    horse = _horse()  # the silhouette spans 371 x 304 of its 400 x 328
    page = ImageOps.expand(horse, border=200, fill="white")
    framed = trim_border(page)
    assert framed.size[0] == framed.size[1] and abs(framed.size[0] - 371 * 1.12) <= 2
    assert _dark(framed) == _dark(horse)  # all of the drawing kept
    a = np.asarray(framed.convert("L"))
    assert (a[0] == 255).all() and (a[-1] == 255).all() and (a[:, 0] == 255).all() and (a[:, -1] == 255).all()


@pytest.mark.parametrize("pad", [10, 150, 900])
def test_the_same_drawing_with_a_wider_margin_frames_the_same(pad: int) -> None:
    """OpenMoji leaves a wide margin, Noto none: after framing the tower sees them at one scale."""
    horse = _horse()
    padded = ImageOps.expand(horse, border=pad, fill="white")  # 900: a 2,200-px page, found on a reduced copy
    a, b = trim_border(horse), trim_border(padded)
    assert abs(a.size[0] - b.size[0]) <= 0.01 * a.size[0] and _dark(b) == _dark(horse)
    pre = ImagePreprocess(size=64, mode="squash")
    framed = ImagePreprocess(size=64, mode="squash", trim=True)
    close = (framed.to_uint8(padded).float() - framed.to_uint8(horse).float()).abs().mean()
    far = (pre.to_uint8(padded).float() - pre.to_uint8(horse).float()).abs().mean()
    assert close < 1 and far > 15


def test_photos_full_bleed_images_and_blank_images_are_left_as_they_are() -> None:
    coffee = Image.fromarray(skimage.data.coffee())
    stripes = Image.new("RGB", (320, 240), (200, 30, 40))  # a flag that fills its frame
    stripes.paste((20, 40, 160), (0, 80, 320, 160))
    blank = Image.new("RGB", (50, 50), "white")
    for image in (coffee, stripes, blank):
        assert np.array_equal(np.asarray(trim_border(image)), np.asarray(image))
    pre = ImagePreprocess(size=32, trim=True)
    assert torch.equal(pre.to_uint8(coffee), ImagePreprocess(size=32).to_uint8(coffee))


def test_the_border_colour_is_the_background_a_transparent_drawing_was_put_on() -> None:
    horse = _horse()
    on_black = Image.new("RGB", (600, 600), (0, 0, 0))
    on_black.paste(ImageOps.invert(horse), (100, 150))  # white silhouette on black, off-centre
    framed = trim_border(on_black)
    assert framed.size[0] < 600 and tuple(framed.getpixel((0, 0))) == (0, 0, 0)
    assert _dark(ImageOps.invert(framed)) == _dark(horse)

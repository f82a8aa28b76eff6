"""Contact sheets: what a retrieval run returned, as one PNG a person can look at.

One row per query: the query (its text, or its image) on the left, then its top hits left to
right, each framed green when it is a right answer and red when not, with its caption below.

    draw_sheet(examples, "out/sheets/emoji-google.png", title="retr:default · emoji-google")
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from indexing.atomic import atomic_path
from indexing.decode import DecodeError, decode_image
from indexing.sources import Item, read_item_bytes
from retrieval.evaluate import Example

THUMB = 112  # px, square cell for each image
PAD = 6
LABEL_H = 30  # two short caption lines under each thumbnail
QUERY_W = 200  # the left column
RIGHT, WRONG = (46, 160, 67), (207, 34, 46)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _thumb(path: str) -> Image.Image:
    """The image fitted into THUMB x THUMB on white; a grey cell when it cannot be decoded."""
    try:
        image = decode_image(read_item_bytes(Item(path=path)), name=path).image
    except (OSError, DecodeError):
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    cell = Image.new("RGB", (THUMB, THUMB), "white")
    image.thumbnail((THUMB, THUMB))
    cell.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return cell


# Pillow's built-in font has no glyphs for these: drawn as boxes otherwise
_PLAIN = str.maketrans({"→": " -> ", "—": " - ", "–": "-", "“": '"', "”": '"', "‘": "'", "’": "'", "…": "..."})


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int, lines: int, size: int) -> None:
    wrapped = textwrap.wrap(text.translate(_PLAIN), width=width)[:lines] or [""]
    draw.multiline_text(xy, "\n".join(wrapped), fill="black", font=_font(size), spacing=2)


def draw_sheet(examples: Sequence[Example], path: str | Path, *, title: str = "") -> Path:
    """Write the sheet for `examples` to `path` (PNG, atomically) and return the path."""
    if not examples:
        raise ValueError("no examples to draw")
    n_hits = max(len(e.hits) for e in examples)
    row_h = THUMB + LABEL_H + 2 * PAD
    top = 28 if title else PAD
    width = QUERY_W + n_hits * (THUMB + PAD) + 2 * PAD
    sheet = Image.new("RGB", (width, top + row_h * len(examples)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, 6), title.translate(_PLAIN), fill="black", font=_font(16))
    for r, ex in enumerate(examples):
        y = top + r * row_h
        if ex.query_image is not None:
            sheet.paste(_thumb(ex.query_image), (PAD, y + PAD))
            _text(draw, (PAD, y + PAD + THUMB + 2), ex.query, 30, 2, 11)
        else:
            _text(draw, (PAD, y + PAD + 4), f'"{ex.query}"', 26, 7, 14)
        for c, hit in enumerate(ex.hits):
            x = QUERY_W + PAD + c * (THUMB + PAD)
            sheet.paste(_thumb(hit.path), (x, y + PAD))
            frame = (x - 2, y + PAD - 2, x + THUMB + 1, y + PAD + THUMB + 1)
            draw.rectangle(frame, outline=RIGHT if hit.correct else WRONG, width=3)
            _text(draw, (x, y + PAD + THUMB + 3), hit.caption, 19, 2, 10)
        draw.line((PAD, y + row_h - 1, width - PAD, y + row_h - 1), fill=(220, 220, 220))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path

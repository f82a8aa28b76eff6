"""openclipart 0.18 (Debian's openclipart-png / -svg): png/CATEGORY/.../NAME.png, captioned by the
title in the same-path svg/CATEGORY/.../NAME.svg when that title reads as a caption
(`clean_clipart_title`, `repeated_titles`). Tested in tests/test_corpora.py.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from indexing.corpora.rows import BASE_FIELDS, Parsed, base_row, join_names
from indexing.decode import DecodeLimits

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

CLIPART_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("title", pa.string()),  # dc:title as the SVG has it, before cleaning
        pa.field("creator", pa.string()),
        pa.field("keywords", pa.string()),  # the SVG's dc:subject keywords that read as words, " | "-joined
        pa.field("category", pa.string()),  # the package's top-level folder ("animals", "food", ...)
        pa.field("svg", pa.string()),  # the vector original, absolute path
    ]
)
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_SVG_METADATA = "{http://www.w3.org/2000/svg}metadata"

# "Clipart by Tobias Jakobs - Germany - Bremen": a batch-import prefix in front of the real title.
_CLIPART_BY = re.compile(r"clip ?art by .+? - (?P<rest>.+)", re.IGNORECASE)
# Titles that name a set, a theme or the library rather than the picture ("Lemon SVG theme",
# "Part of the Flat Icon Collection (...)", "Various Cliparts", "Etiquette Icons"), or that hold
# an address instead of words.
_NOT_A_CAPTION = re.compile(
    r"open ?clip ?art|\bclip ?arts?\b|\bcollection\b|\btheme\b|\bicon ?set\b|\bicons\b|\bsvg\b|\buntitled\b"
    r"|@|https?:|www\.",
    re.IGNORECASE,
)
_IN_SVG_FORMAT = re.compile(r"\s+in svg format$", re.IGNORECASE)  # "National flag of ... in SVG format"
_FILE_EXTENSION = re.compile(r"\.[a-z][a-z0-9]{1,3}$", re.IGNORECASE)  # "books-aj.svg", "ec2.py"
_TRAILING_INDEX = re.compile(r"(?<=[a-z])\d{1,3}$", re.IGNORECASE)  # "Aircraft5", "wedding rings2", "Tigre01"
_CODE_TOKEN = re.compile(r"[a-z]\d|\d[a-z]|#", re.IGNORECASE)  # "R16", "arrow08", "BlueMan#108", "8ball"
_MIN_LETTERS = 3  # "Mr", "AK" (from "AK47"), "fc": too short to describe a picture


def clean_clipart_title(title: str | None, creator: str = "") -> str | None:
    """The title of a clip-art SVG as a caption, or None when it does not describe the picture.

    Normalises: HTML entities, underscores and runs of whitespace become single spaces (a snake_case
    file name reads as its words: "shopping_cart" → "shopping cart"); a "Clipart by NAME - " import
    prefix, an "in SVG format" suffix and an index glued to the last word ("Aircraft5") are dropped.
    Rejects: fewer than three letters, a file extension, a code-like token mixing letters and
    digits ("R16 sibmission", "MPCAD Box 30x20x100"), a set / theme / library name, an address,
    and the artist's own name. Titles repeated across many pictures are `repeated_titles`' call.
    """
    text = " ".join(html.unescape(title or "").replace("_", " ").split()).strip(" \"'")
    m = _CLIPART_BY.fullmatch(text)
    if m:
        text = m["rest"].strip(" \"'")
    text = _IN_SVG_FORMAT.sub("", text)
    if _FILE_EXTENSION.search(text):
        return None
    text = _TRAILING_INDEX.sub("", text)
    if sum(ch.isalpha() for ch in text) < _MIN_LETTERS or _CODE_TOKEN.search(text) or _NOT_A_CAPTION.search(text):
        return None
    if creator and text.casefold() == " ".join(creator.replace("_", " ").split()).casefold():
        return None
    return text


def repeated_titles(titles: Iterable[str], max_repeats: int) -> set[str]:
    """Casefolded titles given to more than MAX_REPEATS pictures: a series name ("gramastar" on
    1375 star drawings, "card" on 226 playing cards), not a caption that tells them apart."""
    counts = Counter(t.casefold() for t in titles)
    return {t for t, n in counts.items() if n > max_repeats}


@dataclass(frozen=True)
class ClipartMeta:
    title: str
    creator: str
    keywords: tuple[str, ...]


def read_clipart_meta(svg: Path) -> ClipartMeta:
    """The work's dc:title, dc:creator and dc:subject keywords from an SVG's RDF metadata.

    Streams the XML and stops at the end of <metadata>, which sits near the top of these files.
    The work's title is the dc:title directly inside cc:Work; the other dc:titles in the block
    name agents (creator, rights holder, publisher). Unreadable XML gives empty metadata.
    """
    title, creator, keywords, path = "", "", [], []
    try:
        for event, el in ET.iterparse(svg, events=("start", "end")):
            if event == "start":
                path.append(el.tag)
                continue
            path.pop()
            if el.tag == f"{_DC}title" and path and path[-1].endswith("}Work") and not title:
                title = el.text or ""
            elif el.tag == f"{_DC}title" and f"{_DC}creator" in path and not creator:
                creator = el.text or ""
            elif el.tag == f"{_RDF}li" and f"{_DC}subject" in path:
                keywords.append(el.text or "")
            elif el.tag == _SVG_METADATA:
                break
    except ET.ParseError:
        pass
    return ClipartMeta(title, " ".join(creator.split()), tuple(keywords))


def _png_pixels(path: Path) -> int:
    """width × height from the PNG header (IHDR), without decoding."""
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[16:20], "big") * int.from_bytes(head[20:24], "big")


def clipart_row(png: Path, svg: Path, key: str, caption: str, meta: ClipartMeta, corpus: Corpus) -> dict[str, Any]:
    # "hash" is in 1795 of the keyword lists: a cataloguing artefact, not a word about the picture.
    keywords = [
        k for k in (clean_clipart_title(k, meta.creator) for k in meta.keywords) if k and k.casefold() != "hash"
    ]
    # A few PNGs were exported at poster size (up to 21000×29700); the decoder refuses those, so
    # the item points at its SVG instead, which the decoder rasterises at a sane size.
    image = svg if _png_pixels(png) > DecodeLimits().max_pixels else png
    return {
        **base_row(corpus, key, image, caption, join_names([caption, *keywords])),
        "title": meta.title,
        "creator": meta.creator,
        "keywords": join_names(keywords),
        "category": key.split("/", 1)[0],
        "svg": str(svg),
    }


def parse_openclipart(root: Path, corpus: Corpus) -> Parsed:
    """One item per PNG picture whose same-path SVG has a title that reads as a caption.

    The package files some pictures under several folders; those copies are symlinks to one PNG
    and are not items. Skipped, by reason: `no_svg` (no SVG at the PNG's path), `not_a_caption`
    (`clean_clipart_title` rejected the title) and `repeated_title` (`repeated_titles`).
    """
    params = corpus.params
    png_dir, svg_dir = root / params["png_dir"], root / params["svg_dir"]
    reasons, candidates = Counter[str](), []
    for png in sorted(png_dir.rglob("*.png")):
        if png.is_symlink():
            continue
        rel = png.relative_to(png_dir).with_suffix("")
        svg = svg_dir / rel.parent / f"{rel.name}.svg"  # not with_suffix: "gerald_g._01" has a dot
        if not svg.is_file():
            reasons["no_svg"] += 1
            continue
        meta = read_clipart_meta(svg)
        caption = clean_clipart_title(meta.title, meta.creator)
        if caption is None:
            reasons["not_a_caption"] += 1
            continue
        candidates.append((png, svg.resolve(), rel.as_posix(), caption, meta))
    repeated = repeated_titles((c[3] for c in candidates), int(params["max_title_repeats"]))
    rows = []
    for png, svg, key, caption, meta in candidates:
        if caption.casefold() in repeated:
            reasons["repeated_title"] += 1
        else:
            rows.append(clipart_row(png, svg, key, caption, meta, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=CLIPART_SCHEMA), sum(reasons.values()), dict(reasons))

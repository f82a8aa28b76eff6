"""Iconify icon sets (npm @iconify-json/*) as corpora: emoji sets keyed and captioned as
emoji-datasource's emoji (`iconify-emoji`: emoji-noto-v1, emoji-fluent-*, emoji-emojione*), and sets
named in words, captioned by each icon's name (`iconify-names`: icons-game-icons, icons-mdi, ...).
Both unpack the set's icons.json into SVG files during extraction (`unpack_iconify`, over
`indexing.iconify`). Tested in tests/test_corpora.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from indexing.corpora.emoji_entries import EMOJI_SCHEMA, emoji_row, qualified_keys, without_fe0f
from indexing.corpora.rows import BASE_FIELDS, Parsed, base_row
from indexing.iconify import unpack_icons

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus


def iconify_keys(chars_files: Sequence[Path], qualified: Mapping[str, str]) -> dict[str, str]:
    """Iconify icon name -> emoji-datasource key, from Iconify `chars.json` maps (code points -> name).

    Iconify emoji sets name icons by the CLDR short name ('grinning-face'), the same across sets, but
    only some sets ship chars.json; a set without one borrows another's. Names whose code points
    are not an emoji-datasource emoji (skin-tone variants, components) are not mapped; a name
    two files map to different emoji is dropped rather than guessed.
    """
    keys: dict[str, str] = {}
    conflicted: set[str] = set()
    for path in chars_files:
        for codepoints, name in json.loads(path.read_text(encoding="utf-8")).items():
            key = qualified.get(without_fe0f(codepoints))
            if key is None:
                continue
            if keys.setdefault(name, key) != key:
                conflicted.add(name)
    return {n: k for n, k in keys.items() if n not in conflicted}


def first_icon_per_name(
    images: Sequence[Path], name_of: Callable[[Path], str | None], unnamed: str, duplicate: str
) -> tuple[list[tuple[Path, str]], Counter[str]]:
    """(image, name) for the first of `images` under each name, and what was skipped, by reason:
    `unnamed` where name_of gives None, `duplicate` for a later image of a name already taken."""
    kept, seen, reasons = [], set(), Counter[str]()
    for image in images:
        name = name_of(image)
        if name is None:
            reasons[unnamed] += 1
        elif name in seen:
            reasons[duplicate] += 1
        else:
            seen.add(name)
            kept.append((image, name))
    return kept, reasons


def unpack_iconify(root: Path, corpus: Corpus) -> None:
    """Extraction step: params.icons_file -> one SVG per icon under params.image_dir."""
    unpack_icons(root / corpus.params["icons_file"], root / corpus.params["image_dir"])


def parse_iconify_emoji(root: Path, corpus: Corpus) -> Parsed:
    """One item per icon of an Iconify emoji set that is an emoji-datasource emoji, captioned and keyed
    as emoji-google is (so every style of one emoji shares its key and its split).

    Skipped, by reason: `not_an_emoji` (skin-tone variants, components and the set's own extras:
    no emoji-datasource key), `duplicate_key` (a second icon for the same emoji; the first by name wins).
    """
    params = corpus.params
    entries = json.loads((root / params["unicode_keys_file"]).read_text(encoding="utf-8"))
    by_key = {e["unified"].upper(): e for e in entries}
    names = iconify_keys([root / f for f in params["chars_files"]], qualified_keys(entries))
    images = sorted((root / params["image_dir"]).glob("*.svg"))
    kept, reasons = first_icon_per_name(images, lambda p: names.get(p.stem), "not_an_emoji", "duplicate_key")
    rows = [emoji_row(by_key[key], image, corpus) for image, key in kept]
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), sum(reasons.values()), dict(reasons))


# -- Iconify icon sets named in words (@iconify-json/game-icons, /icon-park, /mdi, ...)

ICONIFY_NAMES_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("icon", pa.string()),  # the Iconify icon name ("police-car")
        pa.field("icon_set", pa.string()),  # the set's Iconify prefix ("game-icons")
    ]
)
_MIN_CAPTION_LETTERS = 3  # "ad", "tv": too short to be trained on as a description


def iconify_caption(name: str, drop_words: frozenset[str] = frozenset()) -> str | None:
    """An Iconify icon name as a caption ("police-car" -> "police car"), or None when it is not one.

    Number tokens go (sizes such as fluent's "-24", indices such as "abstract-011"); a name with a
    word of `drop_words` (a set's variant markers: "outline", "off", ...) is not a caption of its own.
    """
    words = [w for w in name.split("-") if not w.isdigit()]
    if not words or any(w in drop_words for w in words) or sum(map(len, words)) < _MIN_CAPTION_LETTERS:
        return None
    return " ".join(words)


def parse_iconify_names(root: Path, corpus: Corpus) -> Parsed:
    """One item per icon of an Iconify set whose names are words, captioned by its name.

    Keys are "icon:<caption>", shared by every such set, so one concept drawn by two sets ("magnet"
    in game-icons and mdi) counts as one key, with one split. Skipped, by reason: `not_a_caption`
    (numbers, too short, or a variant marker of params.drop_words), `duplicate_caption` (the first
    icon by name wins: "cloud" before "cloud-24").
    """
    params = corpus.params
    drop = frozenset(params.get("drop_words", ()))
    prefix = json.loads((root / params["icons_file"]).read_text(encoding="utf-8")).get("prefix", corpus.name)
    # by name, not file name: "magnet" comes before "magnet-24" ('.' sorts after '-')
    images = sorted((root / params["image_dir"]).glob("*.svg"), key=lambda p: p.stem)
    kept, reasons = first_icon_per_name(
        images, lambda p: iconify_caption(p.stem, drop), "not_a_caption", "duplicate_caption"
    )
    rows = [
        {**base_row(corpus, f"icon:{caption}", image, caption, caption), "icon": image.stem, "icon_set": prefix}
        for image, caption in kept
    ]
    return Parsed(pa.Table.from_pylist(rows, schema=ICONIFY_NAMES_SCHEMA), sum(reasons.values()), dict(reasons))

"""OpenMoji: data/openmoji.json + color/svg/HEXCODE.svg, one item per emoji or extra pictogram,
its key aligned with emoji-datasource's (`openmoji_key`). Tested in tests/test_corpora.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from indexing.corpora.emoji_entries import emoji_char, qualified_keys, without_fe0f
from indexing.corpora.rows import BASE_FIELDS, Parsed, base_row, join_names

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

OPENMOJI_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the character, from the code points in `key`
        pa.field("hexcode", pa.string()),  # OpenMoji's own id, which may drop an FE0F that `key` keeps
        pa.field("group", pa.string()),
        pa.field("subgroup", pa.string()),
        pa.field("tags", pa.string()),  # CLDR keywords, " | "-joined
        pa.field("openmoji_tags", pa.string()),  # the OpenMoji designers' own keywords, " | "-joined
        pa.field("author", pa.string()),  # CC-BY-SA asks for attribution: the drawing's designer
        pa.field("unicode_version", pa.string()),  # Emoji version; empty for OpenMoji's own extras
        pa.field("n_skin_tones", pa.int64()),  # skin-tone variants that exist but are not items
    ]
)


def openmoji_key(hexcode: str, qualified: Mapping[str, str]) -> str:
    """The emoji-datasource key for an OpenMoji hexcode, so the same emoji joins across styles.

    OpenMoji names some emoji by their non-qualified code points ('2764' for red heart) where
    emoji-datasource keeps the fully-qualified sequence ('2764-FE0F'); which code points take an FE0F
    is Unicode data, so it is looked up rather than guessed. Emoji newer than that data and OpenMoji's
    private-use extras ('E000') have no partner and keep their own upper-case hexcode.
    """
    return qualified.get(without_fe0f(hexcode), hexcode.upper())


def _comma_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def openmoji_row(entry: Mapping[str, Any], key: str, image: Path, n_skin_tones: int, corpus: Corpus) -> dict[str, Any]:
    caption = " ".join(entry["annotation"].split())
    tags, own_tags = _comma_list(entry.get("tags")), _comma_list(entry.get("openmoji_tags"))
    return {
        **base_row(corpus, key, image, caption, join_names([caption, *tags, *own_tags])),
        "emoji": emoji_char(key),
        "hexcode": entry["hexcode"],
        "group": entry.get("group") or "",
        "subgroup": entry.get("subgroups") or "",
        "tags": " | ".join(tags),
        "openmoji_tags": " | ".join(own_tags),
        "author": entry.get("openmoji_author") or "",
        "unicode_version": str(entry.get("unicode") or ""),
        "n_skin_tones": n_skin_tones,
    }


def parse_openmoji(root: Path, corpus: Corpus) -> Parsed:
    """One item per OpenMoji entry with a colour SVG, its key aligned with emoji-datasource's.

    As for emoji-datasource, skin-tone variants are left out (same concept, near-duplicate image)
    and are counted in `n_skin_tones`, not as skipped. OpenMoji's extras (its own private-use
    pictograms and non-emoji Unicode symbols) are kept: they are well-named drawings, they simply
    have no counterpart in the other emoji styles.
    """
    params = corpus.params
    entries = json.loads((root / params["data_file"]).read_text(encoding="utf-8"))
    qualified = qualified_keys(json.loads((root / params["unicode_keys_file"]).read_text(encoding="utf-8")))
    skin_tones = Counter(e.get("skintone_base_hexcode") for e in entries if e.get("skintone"))
    image_dir = root / params["image_dir"]
    rows, seen, reasons = [], set(), Counter[str]()
    for entry in entries:
        if entry.get("skintone"):
            continue
        key, image = openmoji_key(entry["hexcode"], qualified), image_dir / f"{entry['hexcode']}.svg"
        if not image.is_file():
            reasons["no_image"] += 1
        elif not (entry.get("annotation") or "").strip():
            reasons["no_name"] += 1
        elif key in seen:  # two spellings of one emoji: the first is the item
            reasons["duplicate_key"] += 1
        else:
            seen.add(key)
            rows.append(openmoji_row(entry, key, image, skin_tones[entry["hexcode"]], corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=OPENMOJI_SCHEMA), sum(reasons.values()), dict(reasons))

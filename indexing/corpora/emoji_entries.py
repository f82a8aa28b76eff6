"""emoji-datasource's emoji.json entries as rows and keys, shared by every emoji style.

An emoji's key is its fully-qualified `unified` code points ("2764-FE0F"), so Noto, Twemoji,
OpenMoji, Fluent and the Iconify sets draw one emoji under one key and one split. The row builder
(`emoji_row`, `EMOJI_SCHEMA`) serves the styles captioned from emoji.json itself
(`emoji_datasource`, `emoji_codepoint_files`, `iconify_sets`); `without_fe0f` and
`qualified_keys` let styles that spell code points their own way (OpenMoji, Iconify, file names)
find that key. Tested in tests/test_corpora.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from indexing.corpora.rows import BASE_FIELDS, base_row, join_names

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

EMOJI_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the character itself, from the code points in `key`
        pa.field("short_names", pa.string()),  # Slack-style :short_names:, " | "-joined
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("sort_order", pa.int64()),
        pa.field("added_in", pa.string()),  # Emoji version that introduced it
        pa.field("n_skin_tones", pa.int64()),  # skin-tone variants that exist but are not items
    ]
)


def emoji_caption(entry: Mapping[str, Any]) -> str:
    """The Unicode name in lowercase ("GRINNING FACE" → "grinning face"; "Sark Flag" → "sark flag")."""
    name = entry.get("name") or (entry.get("short_name") or "").replace("_", " ")
    return " ".join(name.split()).lower()


def emoji_char(unified: str) -> str:
    return "".join(chr(int(cp, 16)) for cp in unified.split("-"))


def emoji_row(entry: Mapping[str, Any], image: Path, corpus: Corpus) -> dict[str, Any]:
    caption = emoji_caption(entry)
    short_names = list(entry.get("short_names") or [])
    spoken = [s.replace("_", " ").replace("-", " ") for s in short_names]
    return {
        **base_row(corpus, entry["unified"].upper(), image, caption, join_names([caption, *spoken])),
        "emoji": emoji_char(entry["unified"]),
        "short_names": " | ".join(short_names),
        "category": entry.get("category") or "",
        "subcategory": entry.get("subcategory") or "",
        "sort_order": int(entry.get("sort_order") or 0),
        "added_in": str(entry.get("added_in") or ""),
        "n_skin_tones": len(entry.get("skin_variations") or {}),
    }


_VARIATION_SELECTOR_16 = "FE0F"


def without_fe0f(codepoints: str) -> str:
    """'2764-FE0F' → '2764': the form in which fully- and non-qualified spellings of an emoji agree."""
    return "-".join(cp for cp in codepoints.upper().split("-") if cp != _VARIATION_SELECTOR_16)


def qualified_keys(emoji_entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """emoji-datasource's `unified` keys, looked up by their FE0F-less form."""
    return {without_fe0f(e["unified"]): e["unified"].upper() for e in emoji_entries}

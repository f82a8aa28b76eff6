"""Emoji styles whose package holds one image file per emoji named by its code points
(`1f431.webp`, `2764-fe0f.webp`: emoji-fluent3d), captioned and keyed from emoji-datasource's
emoji.json. Tested in tests/test_corpora.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from indexing.corpora.emoji_entries import EMOJI_SCHEMA, emoji_row, without_fe0f
from indexing.corpora.rows import Parsed

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus


def parse_emoji_codepoint_files(root: Path, corpus: Corpus) -> Parsed:
    """One item per emoji-datasource emoji whose image is a file named by its code points
    (`1f431.webp`, `2764-fe0f.webp`, FE0F optional), captioned and keyed as emoji-google is.

    Files no emoji entry names (skin-tone variants, newer emoji) are not items. Skipped, by
    reason: `no_image` (an emoji with no file in this style).
    """
    params = corpus.params
    entries = json.loads((root / params["unicode_keys_file"]).read_text(encoding="utf-8"))
    suffix = params["suffix"]
    files = {without_fe0f(p.name[: -len(suffix)]): p for p in sorted((root / params["image_dir"]).glob(f"*{suffix}"))}
    rows, reasons = [], Counter[str]()
    for entry in entries:
        image = files.get(without_fe0f(entry["unified"]))
        if image is None:
            reasons["no_image"] += 1
        else:
            rows.append(emoji_row(entry, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), sum(reasons.values()), dict(reasons))

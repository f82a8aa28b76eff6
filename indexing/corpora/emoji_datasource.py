"""emoji-data (iamcal)'s emoji-datasource-STYLE packages: emoji.json + img/STYLE/64/*.png, one item
per emoji the style draws (emoji-google, emoji-twitter). Tested in tests/test_corpora.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from indexing.corpora.emoji_entries import EMOJI_SCHEMA, emoji_row
from indexing.corpora.rows import Parsed

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus


def parse_emoji_datasource(root: Path, corpus: Corpus) -> Parsed:
    """One item per emoji.json entry that has an image in this style.

    Skin-tone variants (`skin_variations`) are left out and not counted as skipped: they are the same
    concept with the same name, so they would be near-duplicate images under identical captions.
    """
    params = corpus.params
    entries = json.loads((root / params["data_file"]).read_text(encoding="utf-8"))
    image_dir = root / params["image_dir"]
    rows, skipped = [], 0
    for entry in sorted(entries, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        image = image_dir / entry.get("image", "")
        if not entry.get(params["has_image_field"]) or not image.is_file():
            skipped += 1
            continue
        rows.append(emoji_row(entry, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), skipped)

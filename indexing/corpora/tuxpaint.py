"""Debian's tuxpaint-stamps-default: one picture per stamp, captioned by the English line of its
.txt, every item evaluation-only (split 'val' or 'test'). Tested in tests/test_corpora.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from indexing.corpora.rows import BASE_FIELDS, Parsed, base_row, holdout_split, join_names

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

TUXPAINT_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("category", pa.string()),  # the stamp's folder, e.g. "animals/birds"
        pa.field("stamp", pa.string()),  # path of the stamp under the stamps folder, without suffix
    ]
)


def tuxpaint_caption(txt: Path) -> str | None:
    """The description's first line (English) without its full stop: "A great blue heron." -> "A great blue heron"."""
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    first = " ".join(lines[0].split()).rstrip(".").strip() if lines else ""
    return first or None


def parse_tuxpaint_stamps(root: Path, corpus: Corpus) -> Parsed:
    """One item per PNG stamp outside the excluded folders (cartoons, symbols: drawings, not photos).

    Key = the caption, casefolded, so two stamps described alike ("A banana") are both right
    answers to it. Every item is evaluation-only: split 'val' or 'test' (`holdout_split`).
    Skipped, by reason: `excluded` (an excluded folder), `no_description` (no or empty .txt).
    """
    params = corpus.params
    stamps = root / params["stamps_dir"]
    excluded = {d.casefold() for d in params.get("exclude_dirs", [])}
    reasons, rows = Counter[str](), []
    for png in sorted(stamps.rglob("*.png")):
        rel = png.relative_to(stamps).with_suffix("")
        if excluded & {part.casefold() for part in rel.parts[:-1]}:
            reasons["excluded"] += 1
            continue
        txt = png.with_suffix(".txt")
        caption = tuxpaint_caption(txt) if txt.is_file() else None
        if caption is None:
            reasons["no_description"] += 1
            continue
        key = caption.casefold()
        row = base_row(corpus, key, png, caption, join_names([caption]))
        row["split"] = holdout_split(key, float(params["val_fraction"]))
        rows.append({**row, "category": rel.parent.as_posix(), "stamp": rel.as_posix()})
    return Parsed(pa.Table.from_pylist(rows, schema=TUXPAINT_SCHEMA), sum(reasons.values()), dict(reasons))

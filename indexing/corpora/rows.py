"""What every corpus row has: the base columns, the deterministic train / test split by key, the
joined alternative names, and `Parsed`, the value every parser in `indexing.corpora.parsers` returns.

Shared by all the source modules (`emoji_datasource`, `flags`, `openmoji`, ...); none of them
defines its own split or name joining. Tested in tests/test_corpora.py (`split_for_key`,
`holdout_split`, and every parser's rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from indexing.corpora.core import Corpus

# Share of keys held out as split="test". The split hashes only the key, so it never changes between
# fetches or versions, and emoji-google / emoji-twitter put the same emoji in the same split.
TEST_FRACTION = 0.10


@dataclass(frozen=True)
class Parsed:
    table: pa.Table  # one row per item; `image` (absolute path) and `caption` first
    n_skipped: int
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)  # e.g. {"no_svg": 1}, when the parser says


BASE_FIELDS = [
    pa.field("image", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("key", pa.string()),
    pa.field("split", pa.string()),
    pa.field("corpus", pa.string()),
    pa.field("licence", pa.string()),
    pa.field("names", pa.string()),  # every alternative name, " | "-joined, the caption's phrase first
]


def split_for_key(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """'test' for a fixed ~TEST_FRACTION of keys, else 'train' (sha256, not Python's salted hash())."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def join_names(names: Sequence[str | None]) -> str:
    """Distinct non-empty names, first occurrence wins (case-insensitively), joined with ' | '."""
    seen: dict[str, str] = {}
    for n in names:
        n = " ".join((n or "").split())
        if n and n.lower() not in seen:
            seen[n.lower()] = n
    return " | ".join(seen.values())


def base_row(corpus: Corpus, key: str, image: Path, caption: str, names: str) -> dict[str, Any]:
    return {
        "image": str(image),
        "caption": caption,
        "key": key,
        "split": split_for_key(key),
        "corpus": corpus.name,
        "licence": corpus.licence,
        "names": names,
    }


def holdout_split(key: str, val_fraction: float) -> str:
    """'val' for a fixed share of keys, else 'test': evaluation-only corpora keep a validation half for
    choosing models, so the test half is never looked at while choosing."""
    return "val" if split_for_key(key, val_fraction) == "test" else "test"

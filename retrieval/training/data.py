"""Training pairs from corpus manifests: one `Pair` per image, with every caption it may be trained on.

Items of different corpora that share a `key` (the same emoji drawn by Noto, Twemoji, OpenMoji)
are the same concept: the loss treats them as positives of each other, never as negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from indexing.resolve import resolve_manifest


@dataclass(frozen=True)
class Pair:
    path: str
    key: str  # concept id shared across styles
    corpus: str
    split: str
    captions: tuple[str, ...]  # primary caption first, then alternative names


def _alternatives(caption: str, names: str | None) -> tuple[str, ...]:
    """The caption plus its alternative names, phrased like the caption.

    When the caption is the first name with a prefix ("flag of Indonesia" for the names
    "Indonesia | Republic of Indonesia"), the same prefix goes in front of the other names ("flag of
    Republic of Indonesia"). Names that merely end the caption are kept as they are: "face" is a tag
    of "grinning face", not the stem of a phrase, and "fish" one of "Crawfish".
    """
    alts = [n.strip() for n in (names or "").split(" | ") if n.strip()]
    prefix = ""
    first = alts[0] if alts else ""
    if first and caption != first and caption.endswith(" " + first):
        prefix = caption[: len(caption) - len(first)]
    out = [caption]
    for n in alts:
        phrased = (prefix + n).replace("_", " ").strip()
        if phrased.lower() not in (o.lower() for o in out):
            out.append(phrased)
    return tuple(out)


def read_pairs(manifest: Path) -> list[Pair]:
    """Pairs of a corpus manifest (columns image, caption, key, split, corpus; names optional)."""
    table = pq.read_table(manifest)
    need = {"image", "caption", "key", "split"}
    if missing := need - set(table.column_names):
        raise ValueError(f"{manifest} lacks columns {sorted(missing)} needed for training")
    corpus = Path(manifest).parent.name
    pairs = []
    for row in table.to_pylist():
        if not row["caption"]:
            continue
        pairs.append(
            Pair(
                path=row["image"],
                key=str(row["key"]),
                corpus=row.get("corpus") or corpus,
                split=row["split"],
                captions=_alternatives(row["caption"], row.get("names")),
            )
        )
    return pairs


def load_pairs(corpora: Sequence[str], split: str | None = None, *, progress: bool = False) -> list[Pair]:
    """Pairs of several corpora (names from data_manifests/ or manifest paths), optionally one split."""
    out: list[Pair] = []
    for name in corpora:
        out.extend(p for p in read_pairs(resolve_manifest(name, progress=progress)) if split in (None, p.split))
    return out

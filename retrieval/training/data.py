"""Training pairs from corpus manifests: one `Pair` per image, with every caption it may be trained on.

Items of different corpora that share a `key` (the same emoji drawn by Noto, Twemoji, OpenMoji)
are the same concept: the loss treats them as positives of each other, never as negatives.

A manifest may list an image once per caption, as COCO and Flickr30k do (five rows per image): the
rows fold into one Pair whose `queries` hold every listed caption, and `retr eval` then scores the
COCO way (each caption queries the images; an image finds any of its captions). Such a manifest
needs only `image` and `caption`: without `key` each image is its own concept, and without `split`
every row belongs to whichever split is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from indexing.resolve import resolve_manifest
from indexing.sources import read_manifest_table


@dataclass(frozen=True)
class Pair:
    path: str
    key: str  # concept id shared across styles
    corpus: str
    split: str
    captions: tuple[str, ...]  # primary caption first, then alternative names
    queries: tuple[str, ...] = ()  # every caption the manifest lists for the image (eval's text queries)

    def __post_init__(self) -> None:
        if not self.queries:
            object.__setattr__(self, "queries", self.captions[:1])


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
    """Pairs of a manifest (columns image, caption; key, split, corpus, names when it has them), one per
    image: rows repeating an image add their captions to its `queries`."""
    table = read_manifest_table(Path(manifest))
    if missing := {"image", "caption"} - set(table.column_names):
        raise ValueError(f"{manifest} lacks columns {sorted(missing)} needed for training and evaluation")
    corpus = Path(manifest).parent.name
    base = Path(manifest).resolve().parent
    pairs: dict[str, Pair] = {}
    for row in table.to_pylist():
        if not row["caption"] or not row["image"]:
            continue
        image = str(row["image"])
        path = image if image.startswith(("http://", "https://")) or Path(image).is_absolute() else str(base / image)
        caption = str(row["caption"]).strip()
        if path in pairs:
            p = pairs[path]
            if caption not in p.queries:
                pairs[path] = Pair(p.path, p.key, p.corpus, p.split, p.captions, (*p.queries, caption))
            continue
        pairs[path] = Pair(
            path=path,
            key=str(row["key"]) if row.get("key") is not None else path,
            corpus=row.get("corpus") or corpus,
            split=row.get("split") or "",
            captions=_alternatives(caption, row.get("names")),
        )
    return list(pairs.values())


def load_pairs(corpora: Sequence[str], split: str | None = None, *, progress: bool = False) -> list[Pair]:
    """Pairs of several corpora (names from data_manifests/ or manifest paths), optionally one split."""
    out: list[Pair] = []
    for name in corpora:
        out.extend(p for p in read_pairs(resolve_manifest(name, progress=progress)) if split in (None, p.split)
                   or not p.split)
    return out

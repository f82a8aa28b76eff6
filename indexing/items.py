"""The data types ingest hands on: an `Item` per image, a `Listing` of them with notes for the user.

Separate from `indexing.sources` (which lists folders and manifests) and `indexing.webdataset` (which
lists tar shards) so that both listers share them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from indexing.store import RESERVED_COLUMNS

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class TarMember:
    """Where an image's bytes sit inside an uncompressed tar (read by seek, no rescan)."""

    tar_path: str
    offset: int
    size: int


@dataclass(frozen=True)
class IngestProblem:
    """Why a listed item cannot be read at all (a looping link, a name that is not UTF-8, a cut shard).

    Such items still take their place and id in the listing, so they reach rejects.parquet with this
    reason instead of vanishing."""

    reason: str
    message: str


@dataclass(frozen=True)
class Item:
    path: str  # what users see: a file path, a URL, or "shard.tar/member.jpg"
    caption: str | None = None
    member: TarMember | None = None
    extra: dict[str, Scalar] = field(default_factory=dict, compare=False)  # manifest columns kept as metadata
    more_captions: tuple[str, ...] = ()  # further captions of the same image (COCO: five per image)
    problem: IngestProblem | None = None

    @property
    def captions(self) -> tuple[str, ...]:
        """Every caption of the image, the primary one first."""
        return ((self.caption,) if self.caption else ()) + self.more_captions


@dataclass(frozen=True)
class Listing:
    """What ingest found: the items in their stable order, and what the user should be told about it."""

    items: list[Item]
    notes: tuple[str, ...] = ()  # renamed columns, folded rows, cut shards: printed by the CLI


@dataclass(frozen=True)
class ManifestColumns:
    image: str = "image"
    caption: str = "caption"


def safe_column_names(names: Sequence[str], where: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Source column → metadata column. Names the index uses itself (id, path, segment, …) are kept
    under `source_NAME` rather than dropped; the notes say so."""
    taken = set(names) | set(RESERVED_COLUMNS)
    mapping, notes = {}, []
    for n in names:
        if n not in RESERVED_COLUMNS:
            mapping[n] = n
            continue
        new, i = f"source_{n}", 2
        while new in taken:
            new, i = f"source_{n}_{i}", i + 1
        taken.add(new)
        mapping[n] = new
        notes.append(f"{where}: column {n!r} is stored as {new!r} ({n!r} is a column of the index itself)")
    return mapping, tuple(notes)

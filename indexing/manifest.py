"""index.json: what an index folder holds, parsed once into frozen dataclasses.

index.json is the commit point of a build or an add: it is written (atomically) last, and a
reader only trusts shard files it names, with their checksums.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from indexing.atomic import write_json

if TYPE_CHECKING:
    from retrieval.encoders.base import Encoder

FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"


@dataclass(frozen=True)
class ShardInfo:
    file: str  # relative to the index folder
    n: int
    sha256: str
    # kind ivf_pq_ondisk: the inverted lists file next to `file` (relative to the index folder, like
    # it, so the folder can move; faiss_build.read_index maps it) and its checksum. "" otherwise.
    lists: str = ""
    lists_sha256: str = ""


@dataclass(frozen=True)
class VectorIndexInfo:
    """One vector collection (image vectors, or caption vectors) split into shards."""

    factory: str  # faiss index_factory string of the chosen index
    kind: str  # flat / hnsw / ivf_flat / ivf_pq / ivf_pq_ondisk … (indexing.choose.KINDS)
    trained: str  # empty trained index all shards were cloned from (reused by `index add`)
    search_param: str | None  # nprobe / efSearch, None for exact
    search_value: int | None
    target_recall: float
    measured_recall: float  # recall@k vs exact on a held-out query sample
    recall_k: int
    n_queries: int
    shards: tuple[ShardInfo, ...] = ()
    # > 0: a search fetches k * this many candidates and re-ranks them exactly against the stored
    # vectors (indexing.exact_rerank; kind ivf_pq_ondisk, whose codes cap recall); 0: no re-rank
    rerank_factor: int = 0

    @property
    def n(self) -> int:
        return sum(s.n for s in self.shards)


@dataclass(frozen=True)
class IndexManifest:
    model: str
    dim: int
    image: VectorIndexInfo
    text: VectorIndexInfo | None
    segments: tuple[str, ...]  # embedding job folders under embeddings/, in id order
    n_items: int
    next_id: int  # first id `index add` will assign
    n_rejected: int
    metric: str = "inner_product"
    model_weights: str = ""  # the encoder's weights_id at build time ("" when its name pins the weights)
    # first caption id `index add` will assign; -1 in indexes from before per-caption ids, whose
    # caption ids are the image ids (all below next_id)
    next_caption_id: int = -1
    n_captions: int = -1  # caption vectors in the caption index (-1: not recorded)
    format_version: int = FORMAT_VERSION
    provenance: dict = field(default_factory=dict)  # retr version, git sha, source, created
    # reranker name -> its patch-token cache (retrieval.rerank.token_cache): folder, key, items, bytes
    rerank_caches: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def caption_id_start(self) -> int:
        """Where the next segment's caption ids begin."""
        return self.next_caption_id if self.next_caption_id >= 0 else self.next_id

    @staticmethod
    def from_json(obj: dict) -> IndexManifest:
        if obj.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"index format {obj.get('format_version')} is not supported (expected {FORMAT_VERSION})")

        def vec(d: dict | None) -> VectorIndexInfo | None:
            if d is None:
                return None
            return VectorIndexInfo(**{**d, "shards": tuple(ShardInfo(**s) for s in d["shards"])})

        return IndexManifest(
            **{**obj, "image": vec(obj["image"]), "text": vec(obj["text"]), "segments": tuple(obj["segments"])}
        )


def model_mismatch(manifest: IndexManifest, encoder: Encoder) -> str | None:
    """Why `encoder` cannot query or extend this index (None when it can): another model, other
    weights under the same name (a retrained checkpoint), or another vector size."""
    if encoder.name != manifest.model:
        return f"it was built with {manifest.model!r}, not {encoder.name!r}"
    if manifest.model_weights and encoder.weights_id != manifest.model_weights:
        return (f"it was built with {manifest.model} weights {manifest.model_weights}, and that name now "
                f"loads {encoder.weights_id or 'other weights'}")
    if encoder.dim != manifest.dim:
        return f"it holds {manifest.dim}-d vectors and {encoder.name} now gives {encoder.dim}-d"
    return None


def read_manifest(index_dir: Path) -> IndexManifest:
    path = Path(index_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{index_dir} is not a retr index (no {MANIFEST_NAME}); build one with `retr index build`"
        )
    return IndexManifest.from_json(json.loads(path.read_text()))


def write_manifest(index_dir: Path, manifest: IndexManifest) -> None:
    write_json(Path(index_dir) / MANIFEST_NAME, manifest.to_json())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def with_shards(info: VectorIndexInfo, extra: tuple[ShardInfo, ...]) -> VectorIndexInfo:
    return replace(info, shards=info.shards + extra)

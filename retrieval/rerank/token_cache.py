"""Patch tokens of every indexed image, stored once per reranker so a reranked query reads them
instead of decoding its K images again (`retr index rerank-cache`, `retr index build --rerank-cache`).

`Reranker.image_tokens` depends on the image alone, so its output can be computed at index time.
Layout, beside the embedding store and aligned with it chunk by chunk:

    DIR/rerank-cache/<slug>/SEG/chunk-00000.tokens.npy   (n_ok, N, D) float16: row r is the item whose vector
                                                         is row r of embeddings/SEG/chunk-00000.img.npy
    DIR/rerank-cache/<slug>/SEG/chunk-00000.ok.npy       (n_ok,) bool: False where the image could not be
                                                         read when the cache was built; written last, so it
                                                         marks the chunk complete

and `index.json`'s `rerank_caches[reranker name]` records the folder, the reranker's `cache_key`
(its weights: a cache of other weights is never used), the token shape, the items covered and the
bytes on disk. A killed build is resumed by rerunning it (finished chunks are kept); items added
later by `retr index add` are computed from their files at query time until the command is rerun.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from indexing.atomic import write_npy
from indexing.lock import writer_lock
from indexing.manifest import read_manifest, write_manifest
from indexing.metadata import MetadataStore
from indexing.store import chunk_paths, complete_chunks
from retrieval.rerank.base import Reranker
from retrieval.rerank.rerank import load_item_image

CACHE_DIR = "rerank-cache"
BATCH = 32  # images per image_tokens forward while building


def cache_slug(name: str) -> str:
    """A folder name for a reranker spec (which may hold a path): readable part + a hash of the whole."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[-40:]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _paths(folder: Path, segment: str, chunk: int) -> tuple[Path, Path]:
    base = folder / segment / f"chunk-{chunk:05d}"
    return base.with_name(base.name + ".tokens.npy"), base.with_name(base.name + ".ok.npy")


@dataclass(frozen=True)
class CacheReport:
    folder: Path
    items: int  # items with cached tokens (readable when built)
    unreadable: int
    chunks_built: int  # by this call; the others were already there
    bytes: int
    seconds: float


def build_token_cache(index_dir: Path, reranker: Reranker, *, progress: bool = True) -> CacheReport:
    """Compute (or complete) `reranker`'s token cache for the index in `index_dir`; records it in index.json."""
    index_dir = Path(index_dir)
    t0 = time.perf_counter()
    read_manifest(index_dir)  # a clear "not a retr index" first
    with writer_lock(index_dir, action="cache rerank tokens in"):
        manifest = read_manifest(index_dir)
        folder = index_dir / CACHE_DIR / cache_slug(reranker.name)
        key = reranker.cache_key()
        old = manifest.rerank_caches.get(reranker.name)
        if old is not None and old.get("key") != key:
            _remove_chunks(folder)  # tokens of other weights under the same name: start over
        todo = [(seg, c) for seg in manifest.segments for c in complete_chunks(index_dir / "embeddings" / seg)]
        missing = [(seg, c) for seg, c in todo if not _paths(folder, seg, c)[1].exists()]
        total = sum(pq.read_metadata(chunk_paths(index_dir / "embeddings" / s, c).meta).num_rows for s, c in missing)
        with tqdm(total=total, unit="image", desc=f"rerank tokens {reranker.name}", disable=not progress) as bar:
            for seg, c in missing:
                _build_chunk(index_dir / "embeddings" / seg, c, folder, seg, reranker, bar)
        items = unreadable = size = 0
        shape = None
        for seg, c in todo:
            tokens_path, ok_path = _paths(folder, seg, c)
            ok = np.load(ok_path)
            items, unreadable = items + int(ok.sum()), unreadable + int((~ok).sum())
            size += tokens_path.stat().st_size + ok_path.stat().st_size
            if shape is None and ok.any():
                shape = list(np.load(tokens_path, mmap_mode="r").shape[1:])
        entry = {"folder": f"{CACHE_DIR}/{folder.name}", "key": key, "token_shape": shape, "dtype": "float16",
                 "items": items, "unreadable": unreadable, "bytes": size,
                 "bytes_per_item": round(size / max(1, items + unreadable))}
        write_manifest(index_dir, replace(manifest, rerank_caches={**manifest.rerank_caches, reranker.name: entry}))
    return CacheReport(folder, items, unreadable, len(missing), size, time.perf_counter() - t0)


def _remove_chunks(folder: Path) -> None:
    for p in folder.glob("*/chunk-*.npy"):
        p.unlink()


def _build_chunk(seg_dir: Path, chunk: int, folder: Path, segment: str, reranker: Reranker, bar) -> None:
    """One chunk's tokens, in its vector rows' order."""
    meta = pq.read_table(chunk_paths(seg_dir, chunk).meta, columns=["path", "row"]).to_pydict()
    n = len(np.load(chunk_paths(seg_dir, chunk).image, mmap_mode="r"))
    ok = np.zeros(n, bool)
    tokens: np.ndarray | None = None
    order = np.argsort(meta["row"])
    for lo in range(0, len(order), BATCH):
        rows, pixels = [], []
        for j in order[lo:lo + BATCH]:
            image = load_item_image(meta["path"][j])
            if image is not None:
                rows.append(meta["row"][j])
                pixels.append(reranker.preprocess(image))
        bar.update(min(BATCH, len(order) - lo))
        if not pixels:
            continue
        with torch.inference_mode():
            out = reranker.image_tokens(torch.stack(pixels).to(reranker.device)).float().cpu().numpy()
        if tokens is None:
            tokens = np.zeros((n, *out.shape[1:]), np.float16)
        tokens[rows], ok[rows] = out, True
    tokens_path, ok_path = _paths(folder, segment, chunk)
    tokens_path.parent.mkdir(parents=True, exist_ok=True)
    write_npy(tokens_path, tokens if tokens is not None else np.zeros((n, 0, 0), np.float16))
    write_npy(ok_path, ok)  # last: the chunk is complete


class TokenCache:
    """Reads an index's cached tokens for one reranker: `tokens(ids)` -> {id: (N, D) float32 tensor}."""

    def __init__(self, index_dir: Path, entry: dict, meta: MetadataStore) -> None:
        self.folder, self.meta = Path(index_dir) / entry["folder"], meta
        self._maps: dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None] = {}

    @staticmethod
    def open(index_dir: Path, manifest, reranker: Reranker, meta: MetadataStore) -> TokenCache | None:
        """The cache for `reranker`, or None when the index has none for it or one of other weights."""
        entry = manifest.rerank_caches.get(reranker.name)
        if entry is None or entry.get("key") != reranker.cache_key():
            return None
        return TokenCache(index_dir, entry, meta)

    def _chunk(self, segment: str, chunk: int) -> tuple[np.ndarray, np.ndarray] | None:
        if (segment, chunk) not in self._maps:
            tokens_path, ok_path = _paths(self.folder, segment, chunk)
            self._maps[(segment, chunk)] = (
                (np.load(tokens_path, mmap_mode="r"), np.load(ok_path)) if ok_path.exists() else None)
        return self._maps[(segment, chunk)]

    def tokens(self, ids: np.ndarray) -> dict[int, torch.Tensor]:
        found = {}
        loc = self.meta.locate(np.asarray(ids, np.int64))
        for i, seg, c, r in zip(loc.ids.tolist(), loc.segment, loc.chunk.tolist(), loc.row.tolist(), strict=True):
            chunk = self._chunk(seg, c)
            if chunk is not None and chunk[1][r]:
                found[i] = torch.from_numpy(np.asarray(chunk[0][r], np.float32))
        return found

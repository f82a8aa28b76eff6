"""Re-score a search's top K with a `Reranker` (retrieval.rerank.base), never dropping a hit.

    result = rerank_result(result, reranker, rerank=32, k=10)   # a search for max(k, 32), reranked, cut to 10

The top K hits are scored by the reranker against the query text, re-ordered among themselves by
`combine(itc, itm, weight)` and placed above the rest, which keep their order and their ITC
scores. K = 0 changes nothing; K past the end reranks them all. A reranked hit's `score` is the
combined score, and it carries `itc` (the cosine it came with) and `itm` (P(match), None when its
image could not be read: such a hit is scored as ITM 0 and stays in the reranked block).

Candidate images are read from the item's own file (or webdataset member) through the indexer's
safe decoder, never fetched from a URL, and each query's K images go through the image side in one
forward pass, unless the index holds a token cache for the reranker (retrieval.rerank.token_cache):
then the cached candidates' tokens are read instead and only the others are decoded.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from indexing.decode import DecodeError, decode_image
from indexing.item_images import read_source_bytes
from retrieval.rerank.base import Reranker, combine

if TYPE_CHECKING:
    from retrieval.search import Hit, Query, SearchResult

MAX_RERANK = 256  # candidates per query: ALBEF / BLIP rerank at most 256 (k_test); each is a fusion forward


def check_rerank(rerank: object) -> int:
    if isinstance(rerank, bool) or not isinstance(rerank, int) or not 0 <= rerank <= MAX_RERANK:
        raise ValueError(f"rerank must be an integer from 0 to {MAX_RERANK}, got {rerank!r}")
    return rerank


def check_rerank_request(queries: Sequence[Query], *, target: str, rerank: int) -> None:
    """Reranking scores a text against images: text→image queries only."""
    if not check_rerank(rerank):
        return
    if target != "image":
        raise ValueError("rerank works on text→image search only (target 'image'); image→text cannot be reranked")
    if any(q.text is None for q in queries):
        raise ValueError("rerank works on text queries only: an image query has no text for the ITM head to match")


def shortlist_size(k: int, rerank: int) -> int:
    """How many hits to fetch from the index: the k shown, or the K reranked when that is more."""
    return max(k, rerank)


def load_item_image(path: str) -> Image.Image | None:
    """An indexed item's picture through the indexer's decoder; None when it cannot be read (gone,
    corrupt, or remote: URLs are never fetched here)."""
    try:
        return decode_image(read_source_bytes(path), name=path).image
    except (OSError, DecodeError, tarfile.TarError):
        return None


def _tokens(reranker: Reranker, rows: np.ndarray, load_image: Callable[[int], Image.Image | None],
            cached: Callable[[int], torch.Tensor | None] | None = None):
    """Patch tokens of the readable candidates: (tokens or None, row -> position). Rows with cached
    tokens are not read; the others go through the image side in one forward pass."""
    have, pixels, read = {}, [], []
    for r in rows.tolist():
        tokens = cached(r) if cached is not None else None
        if tokens is not None:
            have[r] = tokens
            continue
        image = load_image(r)
        if image is not None:
            read.append(r)
            pixels.append(reranker.preprocess(image))
    parts = list(have.values())
    if pixels:
        parts += list(reranker.image_tokens(torch.stack(pixels).to(reranker.device)).float())
    if not parts:
        return None, {}
    where = {r: i for i, r in enumerate([*have, *read])}
    return torch.stack([t.float().to(reranker.device) for t in parts]), where


def itm_matrix(
    reranker: Reranker, texts: Sequence[str], candidates: np.ndarray,
    load_image: Callable[[int], Image.Image | None], cached: Callable[[int], torch.Tensor | None] | None = None,
) -> np.ndarray:
    """(Q, K) P(match) of texts[q] against gallery rows candidates[q]; NaN where the image is unreadable.

    Queries go in blocks whose candidates number at most MAX_RERANK, so each block's images (shared
    candidates once) take one image forward pass and the tokens held at once stay bounded."""
    candidates = np.asarray(candidates, np.int64)
    if candidates.ndim != 2 or len(candidates) != len(texts):
        raise ValueError(f"candidates must be (len(texts), K) gallery rows, got shape {candidates.shape}")
    out = np.full(candidates.shape, np.nan, np.float32)
    per_block = max(1, MAX_RERANK // max(1, candidates.shape[1]))
    with torch.inference_mode():
        for start in range(0, len(texts), per_block):
            block = candidates[start:start + per_block]
            tokens, where = _tokens(reranker, np.unique(block), load_image, cached)
            for q, rows in enumerate(block, start):
                cols = [j for j, r in enumerate(rows.tolist()) if r in where]
                if cols:
                    picked = tokens[[where[int(rows[j])] for j in cols]]
                    out[q, cols] = reranker.match_probability(texts[q], picked)
    return out


def reranked_order(itc: np.ndarray, itm: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(order, combined scores) of one reranked block; ties keep their ITC order."""
    final = combine(itc, itm, weight)
    return np.argsort(-final, kind="stable"), final


def rerank_hits(
    hits: Sequence[Hit], text: str, reranker: Reranker, k: int, *, weight: float | None = None,
    image_loader: Callable[[str], Image.Image | None] = load_item_image,
    cached_tokens: Callable[[np.ndarray], dict[int, torch.Tensor]] | None = None,
) -> list[Hit]:
    """The same hits, the top k re-scored and re-ordered above the rest (see the module docstring).
    `cached_tokens(ids)` gives stored patch tokens by item id (an index's TokenCache); hits it lacks
    are read from their files."""
    top, rest = list(hits[:check_rerank(k)]), list(hits[k:])
    if not top:
        return list(hits)
    stored = cached_tokens(np.asarray([h.id for h in top], np.int64)) if cached_tokens is not None else {}
    itm = itm_matrix(reranker, [text], np.arange(len(top))[None], lambda i: image_loader(top[i].path),
                     (lambda i: stored.get(top[i].id)) if stored else None)[0]
    itc = np.asarray([h.score if h.itc is None else h.itc for h in top], np.float64)  # reranked twice: the cosine
    order, final = reranked_order(itc, itm, reranker.weight if weight is None else weight)
    scored = [replace(top[i], score=float(final[i]), itc=float(itc[i]),
                      itm=None if np.isnan(itm[i]) else float(itm[i])) for i in order]
    return scored + rest


def rerank_result(
    result: SearchResult, reranker: Reranker, *, rerank: int, k: int, weight: float | None = None,
    cached_tokens: Callable[[np.ndarray], dict[int, torch.Tensor]] | None = None,
) -> SearchResult:
    """A text query's result (fetched with shortlist_size(k, rerank) hits) reranked, then cut to k."""
    check_rerank_request([result.query], target="image", rerank=rerank)
    hits = (rerank_hits(result.results, result.query.text, reranker, rerank, weight=weight,
                        cached_tokens=cached_tokens) if rerank else result.results)
    return replace(result, results=list(hits[:k]))

"""Retrieval metrics for encoders on held-out corpus splits: what `retr eval` reports.

- text→image R@k: each item's caption queries the split's images; a hit is any image with the
  item's key (several styles of one emoji count alike). A manifest listing an image once per
  caption (COCO, Flickr30k) is scored the COCO way: every one of its captions is a query.
- image→text R@k: each image queries the split's captions (all of them, COCO-style), a hit is any
  caption of its key.
- cross-style image→image R@k: an image of corpus A queries corpus B's images of the same split;
  the hit is B's drawing of the same key (Noto ↔ Twemoji).
- photo queries R@k: hand-written natural-language queries over real photos, never trained on.

With `EvalPlan.rerank` = K and a reranker (retrieval.rerank), the text→image sections also report
their R@k after each query's top K were re-scored by the reranker (`EvalResult.reranked`): the
dual encoder's shortlist, the fusion encoder's order, as `retr search --rerank K` would show it.

Each corpus's images are embedded once per run, however many sections use them. Each section
also keeps `EvalPlan.examples` of its queries (spread evenly over the set) with their
top hits, for the contact sheets `retr eval --sheet` draws (retrieval.sheets).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from indexing.decode import DecodeError, decode_image
from indexing.sources import Item, read_item_bytes
from retrieval.encoders.base import Encoder
from retrieval.encoders.precision import check_embed_precision, embedding_autocast
from retrieval.rerank.base import Reranker
from retrieval.rerank.rerank import check_rerank, itm_matrix, reranked_order
from retrieval.training.data import Pair, load_pairs

KS = (1, 5, 10)
EXAMPLE_HITS = 5  # hits kept per example query


@dataclass(frozen=True)
class Hit:
    path: str
    caption: str
    correct: bool


@dataclass(frozen=True)
class Example:
    query: str  # the text, or the query image's caption
    query_image: str | None  # the query image's path, for image queries
    hits: tuple[Hit, ...]


@dataclass(frozen=True)
class Section:
    metrics: dict[str, float]
    examples: tuple[Example, ...] = ()
    reranked: dict[str, float] = field(default_factory=dict)  # text→image R@k after reranking, when asked


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, dict[str, float]]  # {section: {metric: value}}
    examples: dict[str, tuple[Example, ...]]  # {section: example queries with their top hits}
    reranked: dict[str, dict[str, float]] = field(default_factory=dict)  # {section: reranked text→image R@k}


@dataclass(frozen=True)
class Rerank:
    """Re-score each text query's top `k` gallery items with `reranker` (weight None: the reranker's own)."""

    reranker: Reranker
    k: int
    weight: float | None = None


@dataclass(frozen=True)
class PhotoQueries:
    corpus: str
    queries: tuple[tuple[str, frozenset[str]], ...]  # (text, keys of the correct photos)


def read_photo_queries(path: Path) -> PhotoQueries:
    obj = json.loads(Path(path).read_text())
    queries = tuple((q["query"], frozenset(q["relevant"])) for q in obj["queries"])
    if not queries:
        raise ValueError(f"{path} has no queries")
    return PhotoQueries(obj["corpus"], queries)


def embed_images(
    encoder: Encoder, pairs: Sequence[Pair], batch_size: int = 64, precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors of the decodable images, their row numbers in `pairs`), embedded at `precision` as
    `retr index build --precision` would."""
    vecs, rows = [], []
    for start in range(0, len(pairs), batch_size):
        images, idx = [], []
        for i in range(start, min(len(pairs), start + batch_size)):
            image = read_pair_image(pairs[i].path)
            if image is not None:
                images.append(image)
                idx.append(i)
        if images:
            with embedding_autocast(encoder.device, precision):
                vecs.append(encoder.encode_images(images))
            rows.extend(idx)
    return (np.concatenate(vecs) if vecs else np.zeros((0, encoder.dim), np.float32)), np.asarray(rows, np.int64)


def read_pair_image(path: str) -> Image.Image | None:
    """A corpus image as the index build reads it; None when it cannot be read or decoded."""
    try:
        return decode_image(read_item_bytes(Item(path=path)), name=path).image
    except (OSError, DecodeError):
        return None


def recall_at(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    """scores (Q, G); relevant (Q, G) bool. R@k = share of queries with a relevant item in their top k."""
    return recall_of_order(np.argsort(-scores, axis=1, kind="stable"), relevant, ks)


def recall_of_order(order: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    """order (Q, G): each query's gallery columns, best first; relevant (Q, G) bool."""
    ranked = np.take_along_axis(relevant, order, axis=1)
    hit_rank = np.where(ranked.any(axis=1), ranked.argmax(axis=1), np.iinfo(np.int64).max)
    return {k: float(np.mean(hit_rank < k)) for k in ks}


def reranked_recall(
    scores: np.ndarray, relevant: np.ndarray, texts: Sequence[str], gallery: Sequence[Pair], rerank: Rerank
) -> dict[int, float]:
    """R@k once each query's top rerank.k gallery items are re-ordered by the reranker (retrieval.rerank),
    the rest kept in ITC order below them."""
    order = np.argsort(-scores, axis=1, kind="stable")
    top = order[:, :min(check_rerank(rerank.k), scores.shape[1])]  # (Q, K) gallery columns
    if top.size:
        itm = itm_matrix(rerank.reranker, texts, top, lambda j: read_pair_image(gallery[j].path))
        weight = rerank.reranker.weight if rerank.weight is None else rerank.weight
        for q in range(len(order)):
            block, _ = reranked_order(scores[q, top[q]], itm[q], weight)
            order[q, :len(block)] = top[q][block]
    return recall_of_order(order, relevant)


def _keys(pairs: Sequence[Pair], rows: np.ndarray) -> np.ndarray:
    return np.asarray([pairs[i].key for i in rows])


def top_examples(
    scores: np.ndarray, relevant: np.ndarray, queries: Sequence[tuple[str, str | None]], gallery: Sequence[Pair], n: int
) -> tuple[Example, ...]:
    """`n` queries spread evenly over the set, each with its EXAMPLE_HITS best gallery items."""
    if n <= 0 or len(scores) == 0:
        return ()
    picks = np.unique(np.linspace(0, len(scores) - 1, min(n, len(scores))).round().astype(int))
    out = []
    for q in picks:
        top = np.argsort(-scores[q], kind="stable")[:EXAMPLE_HITS]
        hits = tuple(Hit(gallery[j].path, gallery[j].captions[0], bool(relevant[q, j])) for j in top)
        out.append(Example(queries[q][0], queries[q][1], hits))
    return tuple(out)


Embedded = tuple[np.ndarray, np.ndarray]  # embed_images' (vectors, rows), reused across sections


def text_image_recall(
    encoder: Encoder, pairs: Sequence[Pair], examples: int = 0, images: Embedded | None = None,
    rerank: Rerank | None = None,
) -> Section:
    xb, rows = images or embed_images(encoder, pairs)
    img_keys = _keys(pairs, rows)
    captions = [c for i in rows for c in pairs[i].queries]  # COCO: five per image; else one
    cap_keys = np.asarray([pairs[i].key for i in rows for _ in pairs[i].queries])
    xt = encoder.encode_texts(captions)
    same = cap_keys[:, None] == img_keys[None, :]  # (captions, images)
    scores = xt @ xb.T
    t2i = recall_at(scores, same)
    i2t = recall_at(xb @ xt.T, same.T)
    metrics = {**{f"t2i_R@{k}": v for k, v in t2i.items()}, **{f"i2t_R@{k}": v for k, v in i2t.items()}}
    shown = top_examples(scores, same, [(c, None) for c in captions], [pairs[i] for i in rows], examples)
    n_captions = {"captions": len(captions)} if len(captions) != len(rows) else {}
    gallery = [pairs[i] for i in rows]
    reranked = {} if rerank is None else reranked_recall(scores, same, captions, gallery, rerank)
    return Section({**metrics, "n": len(rows), **n_captions}, shown, {f"t2i_R@{k}": v for k, v in reranked.items()})


def cross_style_recall(
    encoder: Encoder, a: Sequence[Pair], b: Sequence[Pair], examples: int = 0,
    images_a: Embedded | None = None, images_b: Embedded | None = None,
) -> Section:
    xa, ra = images_a or embed_images(encoder, a)
    xb, rb = images_b or embed_images(encoder, b)
    ka, kb = _keys(a, ra), _keys(b, rb)
    shared = np.isin(ka, kb)
    scores, relevant = xa[shared] @ xb.T, ka[shared][:, None] == kb[None, :]
    r = recall_at(scores, relevant)
    queries = [(a[i].captions[0], a[i].path) for i in ra[shared]]
    shown = top_examples(scores, relevant, queries, [b[i] for i in rb], examples)
    return Section({**{f"i2i_R@{k}": v for k, v in r.items()}, "n": int(shared.sum())}, shown)


def photo_query_recall(
    encoder: Encoder, photos: Sequence[Pair], queries: PhotoQueries, examples: int = 0, images: Embedded | None = None,
    rerank: Rerank | None = None,
) -> Section:
    xb, rows = images or embed_images(encoder, photos)
    keys = _keys(photos, rows)
    xq = encoder.encode_texts([t for t, _ in queries.queries])
    relevant = np.stack([np.isin(keys, list(ks)) for _, ks in queries.queries])
    scores = xq @ xb.T
    r = recall_at(scores, relevant)
    texts, gallery = [t for t, _ in queries.queries], [photos[i] for i in rows]
    shown = top_examples(scores, relevant, [(t, None) for t in texts], gallery, examples)
    metrics = {**{f"photo_R@{k}": v for k, v in r.items()}, "n": len(queries.queries), "gallery": len(rows)}
    reranked = {} if rerank is None else reranked_recall(scores, relevant, texts, gallery, rerank)
    return Section(metrics, shown, {f"photo_R@{k}": v for k, v in reranked.items()})


@dataclass(frozen=True)
class EvalPlan:
    corpora: tuple[str, ...] = ()  # text<->image on each corpus's split
    cross: tuple[tuple[str, str], ...] = ()  # (A, B) cross-style pairs
    photo_queries: Path | None = None
    split: str = "test"
    examples: int = 0  # queries per section kept with their top hits (for contact sheets)
    precision: str = "fp32"  # images embedded as `retr index build --precision` would (texts: fp32)
    rerank: int = 0  # text→image sections: also R@k after reranking each query's top K (needs a reranker)

    def __post_init__(self) -> None:
        check_embed_precision(self.precision)
        check_rerank(self.rerank)


def evaluate(
    encoder: Encoder, plan: EvalPlan, *, progress: bool = False, reranker: Reranker | None = None
) -> EvalResult:
    """Metrics and examples per section; sections are named by corpus, 'A→B' for cross-style, 'photos'."""
    if plan.rerank and reranker is None:
        raise ValueError("EvalPlan.rerank needs a reranker (retr eval --reranker SPEC)")
    rerank = Rerank(reranker, plan.rerank) if plan.rerank else None
    sections: dict[str, Section] = {}
    names = {*plan.corpora, *(x for ab in plan.cross for x in ab)}
    split = {c: load_pairs([c], plan.split, progress=progress) for c in names}
    embedded: dict[str, Embedded] = {}  # each corpus's images go through the model once per run

    def images(c: str) -> Embedded:
        if c not in embedded:
            embedded[c] = embed_images(encoder, split[c], precision=plan.precision)
        return embedded[c]

    for c in plan.corpora:
        sections[c] = text_image_recall(encoder, split[c], plan.examples, images(c), rerank)
    for a, b in plan.cross:
        sections[f"{a}→{b}"] = cross_style_recall(encoder, split[a], split[b], plan.examples, images(a), images(b))
    if plan.photo_queries is not None:
        q = read_photo_queries(plan.photo_queries)
        photos = load_pairs([q.corpus], progress=progress)
        sections["photos"] = photo_query_recall(encoder, photos, q, plan.examples,
                                                embed_images(encoder, photos, precision=plan.precision), rerank)
    return EvalResult({k: s.metrics for k, s in sections.items()}, {k: s.examples for k, s in sections.items()},
                      {k: s.reranked for k, s in sections.items() if s.reranked})

"""Retrieval metrics for encoders on held-out corpus splits: what `retr eval` reports.

- text→image R@k: each item's primary caption queries the split's images; a hit is any image
  with the item's key (several styles of one emoji count alike).
- image→text R@k: each image queries the split's captions, a hit is a caption of its key.
- cross-style image→image R@k: an image of corpus A queries corpus B's images of the same split;
  the hit is B's drawing of the same key (Noto ↔ Twemoji).
- photo queries R@k: hand-written natural-language queries over real photos, never trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing.decode import DecodeError, decode_image
from indexing.sources import Item, read_item_bytes
from retrieval.encoders.base import Encoder
from retrieval.training.data import Pair, load_pairs

KS = (1, 5, 10)


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


def embed_images(encoder: Encoder, pairs: Sequence[Pair], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(vectors of the decodable images, their row numbers in `pairs`)."""
    vecs, rows = [], []
    for start in range(0, len(pairs), batch_size):
        images, idx = [], []
        for i in range(start, min(len(pairs), start + batch_size)):
            try:
                images.append(decode_image(read_item_bytes(Item(path=pairs[i].path)), name=pairs[i].path).image)
                idx.append(i)
            except (OSError, DecodeError):
                continue
        if images:
            vecs.append(encoder.encode_images(images))
            rows.extend(idx)
    return (np.concatenate(vecs) if vecs else np.zeros((0, encoder.dim), np.float32)), np.asarray(rows, np.int64)


def recall_at(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    """scores (Q, G); relevant (Q, G) bool. R@k = share of queries with a relevant item in their top k."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit_rank = np.where(np.take_along_axis(relevant, order, axis=1).any(axis=1),
                        np.take_along_axis(relevant, order, axis=1).argmax(axis=1), np.iinfo(np.int64).max)
    return {k: float(np.mean(hit_rank < k)) for k in ks}


def _keys(pairs: Sequence[Pair], rows: np.ndarray) -> np.ndarray:
    return np.asarray([pairs[i].key for i in rows])


def text_image_recall(encoder: Encoder, pairs: Sequence[Pair]) -> dict[str, float]:
    xb, rows = embed_images(encoder, pairs)
    img_keys = _keys(pairs, rows)
    captions = [pairs[i].captions[0] for i in rows]
    xt = encoder.encode_texts(captions)
    same = img_keys[:, None] == img_keys[None, :]  # (texts, images): rows and columns follow `rows`
    t2i = recall_at(xt @ xb.T, same)
    i2t = recall_at(xb @ xt.T, same.T)
    return {**{f"t2i_R@{k}": v for k, v in t2i.items()}, **{f"i2t_R@{k}": v for k, v in i2t.items()}, "n": len(rows)}


def cross_style_recall(encoder: Encoder, a: Sequence[Pair], b: Sequence[Pair]) -> dict[str, float]:
    xa, ra = embed_images(encoder, a)
    xb, rb = embed_images(encoder, b)
    ka, kb = _keys(a, ra), _keys(b, rb)
    shared = np.isin(ka, kb)
    r = recall_at(xa[shared] @ xb.T, ka[shared][:, None] == kb[None, :])
    return {**{f"i2i_R@{k}": v for k, v in r.items()}, "n": int(shared.sum())}


def photo_query_recall(encoder: Encoder, photos: Sequence[Pair], queries: PhotoQueries) -> dict[str, float]:
    xb, rows = embed_images(encoder, photos)
    keys = _keys(photos, rows)
    xq = encoder.encode_texts([t for t, _ in queries.queries])
    relevant = np.stack([np.isin(keys, list(ks)) for _, ks in queries.queries])
    r = recall_at(xq @ xb.T, relevant)
    return {**{f"photo_R@{k}": v for k, v in r.items()}, "n": len(queries.queries), "gallery": len(rows)}


@dataclass(frozen=True)
class EvalPlan:
    corpora: tuple[str, ...] = ()  # text<->image on each corpus's split
    cross: tuple[tuple[str, str], ...] = ()  # (A, B) cross-style pairs
    photo_queries: Path | None = None
    split: str = "test"


def evaluate(encoder: Encoder, plan: EvalPlan, *, progress: bool = False) -> dict[str, dict[str, float]]:
    """{section: {metric: value}}, sections named like 'emoji-google t2i/i2t', 'cross emoji-google→emoji-twitter'."""
    out: dict[str, dict[str, float]] = {}
    names = {*plan.corpora, *(x for ab in plan.cross for x in ab)}
    split = {c: load_pairs([c], plan.split, progress=progress) for c in names}
    for c in plan.corpora:
        out[c] = text_image_recall(encoder, split[c])
    for a, b in plan.cross:
        out[f"{a}→{b}"] = cross_style_recall(encoder, split[a], split[b])
    if plan.photo_queries is not None:
        q = read_photo_queries(plan.photo_queries)
        out["photos"] = photo_query_recall(encoder, load_pairs([q.corpus], progress=progress), q)
    return out

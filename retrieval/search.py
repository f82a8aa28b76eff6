"""Search a built index: text→image, image→image, image→text, with metadata filters.

    idx = open_index("out/emoji")
    hits = idx.search(text="a red heart", k=5, where="split = 'test'")

`where` is a filter in the grammar of `indexing.filters` (column, operator, literal; and / or / not;
IN, LIKE, BETWEEN, IS NULL), compiled to a parameterised query: the same for the CLI, this API and
the HTTP API. k is capped at the collection's size, so a huge k returns everything, not MemoryError.
Only what index.json has committed is searched or returned.

`rerank=K` (text→image only) fetches max(k, K) hits, re-scores the top K with a fusion reranker
(retrieval.rerank: ITM probability combined with the ITC cosine) and returns the first k. The
reranker is given at open time, as a spec loaded on first use or as an object:

    idx = open_index("out/emoji", reranker="hf:/models/blip-itm-base-coco")
    hits = idx.search(text="a red heart", k=5, rerank=32)

Shards are searched one by one and their top-k merged (ids are global; retrieval.shards), in this
process or, with `open_index(path, shards=ray_shards(...))`, on Ray actors that hold them
(retrieval.distributed_search); the results are the same. A `where` filter first
selects matching ids in DuckDB; small selections are searched exactly over their stored
vectors, large ones through a faiss IDSelector, and any query that comes back short of
min(k, matches) is redone exactly — a filter never returns fewer than k when k items match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from indexing.decode import DecodeError, DecodeLimits, decode_image
from indexing.exact_rerank import rerank_exact
from indexing.manifest import IndexManifest, model_mismatch, read_manifest
from indexing.metadata import MetadataStore
from indexing.store import ChunkVectors, gather_vectors
from retrieval.encoders.base import Encoder
from retrieval.rerank.base import Reranker
from retrieval.rerank.rerank import check_rerank_request, rerank_result, shortlist_size
from retrieval.shards import LocalShards, ShardOpener, ShardSearcher, merge_topk  # noqa: F401 (merge_topk: API)

EXACT_FILTER_CUTOFF = 50_000  # below this many matches, brute force over stored vectors is cheaper and exact
MAX_ID = 2**63 - 1  # ids are int64
MAX_TEXT_CHARS = 4096  # a query longer than this is not a search; encoders truncate far earlier


class UnknownIdError(ValueError):
    """An id the index does not hold (or has not committed)."""


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: str | None = None  # path to an image file
    image_id: int | None = None  # an indexed item's id

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.text, self.image, self.image_id)]
        if sum(given) != 1:
            raise ValueError("a query needs exactly one of text, image or image_id")
        if self.text is not None and not isinstance(self.text, str):
            raise ValueError(f"text query must be a string, got {type(self.text).__name__}")
        if self.text is not None and not self.text.strip():
            raise ValueError("text query is empty")
        if self.text is not None and len(self.text) > MAX_TEXT_CHARS:
            raise ValueError(f"text query is {len(self.text)} characters; the limit is {MAX_TEXT_CHARS}")
        if self.image is not None and not isinstance(self.image, str):
            raise ValueError(f"image must be a file path string, got {type(self.image).__name__}")
        if self.image_id is not None:
            if isinstance(self.image_id, bool) or not isinstance(self.image_id, int):
                raise ValueError(f"image_id must be an integer, got {self.image_id!r}")
            if not 0 <= self.image_id <= MAX_ID:
                raise UnknownIdError(f"no indexed item with id {self.image_id} (ids are 0 to {MAX_ID})")

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    path: str
    caption: str | None  # image→text: the caption that matched; else the image's first caption
    url: str | None = None  # where the image came from, when the source said (img2dataset's url)
    # Reranked hits only (retrieval.rerank): `score` is then the combined score, `itc` the cosine the
    # index gave, `itm` the reranker's P(match) (None: the image could not be read).
    itc: float | None = None
    itm: float | None = None

    def to_json(self) -> dict:
        out = {"id": self.id, "score": self.score, "path": self.path, "caption": self.caption}
        if self.url is not None:
            out["url"] = self.url
        return out if self.itc is None else {**out, "itc": self.itc, "itm": self.itm}


@dataclass(frozen=True)
class SearchResult:
    query: Query
    results: list[Hit]

    def to_json(self) -> dict:
        """The stable JSON contract: {"query": {...}, "results": [{"id","score","path","caption"(,"url")
        (,"itc","itm": reranked hits only)}]}."""
        return {"query": self.query.to_json(), "results": [h.to_json() for h in self.results]}


class RetrievalIndex:
    def __init__(
        self, index_dir: Path, encoder_factory: Callable[[str], Encoder] | None = None,
        reranker: str | Reranker | None = None, shards: ShardOpener | None = None,
    ) -> None:
        self.dir = Path(index_dir)
        self.manifest: IndexManifest = read_manifest(self.dir)
        self.meta = MetadataStore(self.dir / "metadata.duckdb", segments=self.manifest.segments)
        self._vectors = ChunkVectors(self.dir / "embeddings", self.manifest.segments)
        self._collections: dict[str, ShardSearcher] = {}
        try:
            self._open_collections(shards or LocalShards)
        except BaseException:
            self.close()  # shards held elsewhere (Ray actors) must not outlive a failed open
            raise
        self._encoder_factory = encoder_factory
        self._encoder: Encoder | None = None
        self._url: bool | None = None
        self._reranker = reranker  # a spec until first used
        self._token_caches: dict = {}  # reranker name -> TokenCache | None, opened on first rerank

    @property
    def encoder(self) -> Encoder:
        """The index's model, loaded on first use (image_id queries never need it)."""
        if self._encoder is None:
            if self._encoder_factory is None:
                from retrieval.encoders import load_encoder

                self._encoder = load_encoder(self.manifest.model)
            else:
                self._encoder = self._encoder_factory(self.manifest.model)
            if why := model_mismatch(self.manifest, self._encoder):
                self._encoder = None
                rebuild = f"retr index build SOURCE --out {self.dir} --model {self.manifest.model} --replace-stale"
                raise ValueError(f"cannot query {self.dir} with text or new images: {why}. Rebuild it: {rebuild}")
        return self._encoder

    @property
    def reranker(self) -> Reranker:
        """The reranker given at open time, loaded on first use (searches without rerank never need it)."""
        if self._reranker is None:
            raise ValueError("rerank needs a reranker: open the index with one (retr search --reranker SPEC, "
                             "e.g. hf:DIR holding a BLIP ITM checkpoint)")
        if isinstance(self._reranker, str):
            from retrieval.rerank import load_reranker

            self._reranker = load_reranker(self._reranker)
        return self._reranker

    def _open_collections(self, open_shards: ShardOpener) -> None:
        self._collections["image"] = open_shards(self.dir, self.manifest.image, "image")
        if self.manifest.text is not None:
            self._collections["text"] = open_shards(self.dir, self.manifest.text, "text")

    def close(self) -> None:
        for coll in self._collections.values():
            coll.close()
        self.meta.close()

    def search(
        self,
        *,
        text: str | None = None,
        image: str | None = None,
        image_id: int | None = None,
        k: int = 10,
        where: str | None = None,
        target: str = "image",
        rerank: int = 0,
    ) -> SearchResult:
        query = Query(text, image, image_id)
        return self.search_batch([query], k=k, where=where, target=target, rerank=rerank)[0]

    def search_batch(
        self, queries: Sequence[Query], *, k: int = 10, where: str | None = None, target: str = "image",
        rerank: int = 0,
    ) -> list[SearchResult]:
        """target="image" finds images; target="text" finds captions (image→text). rerank=K re-scores
        each text query's top K with the reranker (text→image only)."""
        self._check_request(k, target)  # before the model runs
        check_rerank_request(queries, target=target, rerank=rerank)
        reranker = self.reranker if rerank else None
        short = shortlist_size(k, rerank)
        results = self.search_embedded(queries, self.embed_queries(queries), k=short, where=where, target=target)
        if reranker is None:
            return results
        cached = self.cached_tokens(reranker)
        return [rerank_result(r, reranker, rerank=rerank, k=k, cached_tokens=cached) for r in results]

    def cached_tokens(self, reranker: Reranker) -> Callable[[np.ndarray], dict] | None:
        """This index's stored patch tokens for `reranker` by item id (retrieval.rerank.token_cache),
        or None when it holds none for that reranker and its weights: tokens then come from the files."""
        from retrieval.rerank.token_cache import TokenCache

        if reranker.name not in self._token_caches:
            self._token_caches[reranker.name] = TokenCache.open(self.dir, self.manifest, reranker, self.meta)
        cache = self._token_caches[reranker.name]
        return None if cache is None else cache.tokens

    def search_embedded(
        self, queries: Sequence[Query], xq: np.ndarray, *, k: int = 10, where: str | None = None, target: str = "image"
    ) -> list[SearchResult]:
        """search_batch for queries already embedded (`xq` from embed_queries): a server embeds the texts
        of many requests in one forward pass, then answers each group of them here."""
        self._check_request(k, target)
        k = min(k, max(1, self._collections[target].info.n))  # more than every vector is every vector
        D, I = self.search_vectors(np.ascontiguousarray(xq, np.float32), k, where=where, target=target)
        hits = self._hits_text(D, I) if target == "text" else self._hits_image(D, I)
        return [SearchResult(q, h) for q, h in zip(queries, hits, strict=True)]

    def _check_request(self, k: object, target: str) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if target not in self._collections:
            raise ValueError(f"this index has no {target!r} collection (available: {sorted(self._collections)})")

    def _item_rows(self, ids: Sequence[int]) -> dict[int, dict]:
        cols = ("id", "path", "caption", "url") if self.has_url else ("id", "path", "caption")
        return self.meta.rows(ids, cols)

    def _hits_image(self, D: np.ndarray, I: np.ndarray) -> list[list[Hit]]:
        rows = self._item_rows(np.unique(I[I >= 0]).tolist())
        return [[_hit(rows[int(x)], float(s)) for s, x in zip(d, i, strict=True) if x >= 0 and int(x) in rows]
                for d, i in zip(D, I, strict=True)]

    def _hits_text(self, D: np.ndarray, I: np.ndarray) -> list[list[Hit]]:
        """Caption ids → the matched caption and its image."""
        caps = self.meta.caption_rows(np.unique(I[I >= 0]).tolist())
        rows = self._item_rows(sorted({c["id"] for c in caps.values()}))
        out = []
        for d, i in zip(D, I, strict=True):
            hits = []
            for s, x in zip(d, i, strict=True):
                cap = caps.get(int(x)) if x >= 0 else None
                if cap is not None and cap["id"] in rows:
                    hits.append(_hit({**rows[cap["id"]], "caption": cap["caption"]}, float(s)))
            out.append(hits)
        return out

    @property
    def has_url(self) -> bool:
        """Whether the items carry a `url` column (img2dataset shards): hits then report it."""
        if self._url is None:
            self._url = "url" in self.meta.columns()
        return self._url

    def embed_queries(self, queries: Sequence[Query]) -> np.ndarray:
        xq = np.zeros((len(queries), self.manifest.dim), np.float32)
        texts = [(i, q.text) for i, q in enumerate(queries) if q.text is not None]
        if texts:
            xq[[i for i, _ in texts]] = self.encoder.encode_texts([t for _, t in texts])
        for i, q in enumerate(queries):
            if q.image is not None:
                xq[i] = self.encoder.encode_images([_load_query_image(q.image)])[0]
            elif q.image_id is not None:
                xq[i] = self.stored_vectors(np.asarray([q.image_id]), "image")[0]
        return xq

    def embed_image_bytes(self, data: bytes, name: str = "upload") -> np.ndarray:
        """(1, dim) query vector for an image given as bytes (an upload), decoded like indexed images."""
        return np.asarray(self.encoder.encode_images([decode_query_image(data, name)]), np.float32)

    def stored_vectors(self, ids: np.ndarray, kind: str = "image") -> np.ndarray:
        """Stored vectors of items (kind "image", by id) or captions (kind "text", by caption id)."""
        loc = self.meta.locate(ids) if kind == "image" else self.meta.locate_captions(ids)
        missing = set(np.asarray(ids).tolist()) - set(loc.ids.tolist())
        if missing:
            what = "item" if kind == "image" else "caption"
            raise UnknownIdError(f"no indexed {what} with id {sorted(missing)[:5]}")
        return gather_vectors(self._vectors, loc.segment, loc.chunk, loc.row, kind)

    def search_vectors(
        self, xq: np.ndarray, k: int, *, where: str | None = None, target: str = "image"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (D, I); I holds item ids for target "image", caption ids for target "text"."""
        coll = self._collections[target]
        if where is None:
            return self._search_collection(coll, xq, k)
        allowed = self.meta.filter_ids(where)
        if target == "text":
            allowed = self.meta.caption_ids(allowed)
        if len(allowed) <= EXACT_FILTER_CUTOFF:
            return self._exact(xq, k, allowed, coll.kind)
        D, I = self._search_collection(coll, xq, k, allowed)
        short = np.flatnonzero((I >= 0).sum(axis=1) < min(k, len(allowed)))
        if len(short):
            D[short], I[short] = self._exact(xq[short], k, allowed, coll.kind)
        return D, I

    def _search_collection(
        self, coll: ShardSearcher, xq: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shards' top k; an index built with a re-rank factor (on-disk codes) fetches k * factor
        and re-ranks them exactly against the stored vectors (indexing.exact_rerank)."""
        factor = coll.info.rerank_factor
        if not factor:
            return coll.search(xq, k, allowed)
        _, I = coll.search(xq, k * factor, allowed)
        return rerank_exact(xq, I, lambda ids: self.stored_vectors(ids, coll.kind), k)

    def _exact(self, xq: np.ndarray, k: int, allowed: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        D = np.full((len(xq), k), -np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)
        if len(allowed) == 0:
            return D, I
        loc = self.meta.locate(allowed) if kind == "image" else self.meta.locate_captions(allowed)
        xb = gather_vectors(self._vectors, loc.segment, loc.chunk, loc.row, kind)
        kk = min(k, len(xb))
        Dk, Ik = faiss.knn(np.ascontiguousarray(xq, np.float32), xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        D[:, :kk], I[:, :kk] = Dk, loc.ids[Ik]
        return D, I


def _hit(row: dict, score: float) -> Hit:
    url = row.get("url")
    return Hit(int(row["id"]), score, row["path"], row["caption"], None if url is None else str(url))


class QueryImageError(ValueError):
    """A query image that cannot be used; `reason` is the decoder's token (too_large, corrupt, …)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _load_query_image(path: str):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read query image {path}: {e}") from e
    return decode_query_image(data, path)


def decode_query_image(data: bytes, name: str, limits: DecodeLimits = DecodeLimits()):
    """An RGB image from a query's bytes, with the indexer's decoder and limits."""
    try:
        return decode_image(data, name=name, limits=limits).image
    except DecodeError as e:
        raise QueryImageError(f"cannot decode query image {name}: {e}", e.reason) from e


def open_index(
    path: str | Path, encoder_factory: Callable[[str], Encoder] | None = None, *,
    reranker: str | Reranker | None = None, shards: ShardOpener | None = None,
) -> RetrievalIndex:
    """Open an index folder written by `retr index build`; `reranker` (a spec such as `hf:DIR`, or a
    loaded Reranker) is what `search(..., rerank=K)` uses. `shards` opens each collection's shards:
    in this process by default, on Ray actors with `retrieval.distributed_search.ray_shards(...)`."""
    return RetrievalIndex(Path(path), encoder_factory, reranker, shards)

"""Request and response bodies of the HTTP API: pydantic mirrors of the library's dataclasses.

Every limit lives here as a Field constraint, so the OpenAPI schema states it and FastAPI refuses
what breaks it with a 422 before any handler runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexing.filters import MAX_LENGTH as MAX_FILTER_CHARS
from retrieval.rerank.rerank import MAX_RERANK

MAX_K = 1000  # results per query; the library itself caps k at the collection size
MAX_TEXT_CHARS = 1000  # a search phrase, not a document (the library allows 4096)
MAX_BATCH = 256  # queries in one /search/batch request
MAX_ID = 2**63 - 1


class SearchRequest(BaseModel):
    """One query: exactly one of `text` or `image_id` (images are uploaded as multipart to /search)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description="text → image (or → text)")
    image_id: int | None = Field(None, ge=0, le=MAX_ID, description="an indexed image's id: image → image / text")
    k: int = Field(10, ge=1, le=MAX_K, description="results wanted")
    where: str | None = Field(None, min_length=1, max_length=MAX_FILTER_CHARS,
                              description="metadata filter in retr's filter language (docs/filters.md), never SQL")
    target: Literal["image", "text"] = Field("image", description="image: find images; text: find captions")
    index: str | None = Field(None, max_length=200, description="which served index (default: the first)")
    rerank: int = Field(0, ge=0, le=MAX_RERANK,
                        description="re-score the top K text→image hits with the server's reranker (ITM); "
                                    "needs `retr serve --reranker SPEC`; 0: no reranking")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.image_id is None):
            raise ValueError("give exactly one of text or image_id")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is blank")
        if self.rerank and (self.text is None or self.target != "image"):
            raise ValueError("rerank works on text→image queries only (a text query with target 'image')")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[SearchRequest] = Field(..., min_length=1, max_length=MAX_BATCH)


class HitOut(BaseModel):
    id: int
    score: float
    path: str
    caption: str | None
    url: str | None = Field(None, description="present when the index has a url column")
    itc: float | None = Field(None, description="reranked hits only: the dual encoder's cosine (score is combined)")
    itm: float | None = Field(None, description="reranked hits only: the reranker's P(match); null if unreadable")


class SearchResponse(BaseModel):
    """Exactly `retr search --json`: the query as given and its hits."""

    query: dict
    results: list[HitOut]


class BatchResponse(BaseModel):
    results: list[SearchResponse]


class ErrorBody(BaseModel):
    error: str = Field(..., description="a short code: bad_request, not_found, unauthorized, …")
    message: str


class IndexInfo(BaseModel):
    name: str
    model: str
    n_items: int
    n_captions: int
    dim: int
    columns: list[str]


class KnnRequest(BaseModel):
    """clip-retrieval's clip-back request (ClipClient, clip-front). Options retr has no model for
    (safety, violence, aesthetic, mclip, deduplicate) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image: str | None = Field(None, max_length=32 << 20, description="base64 image bytes")
    image_url: str | None = Field(None, max_length=2048)
    embedding_input: list[float] | None = Field(None, max_length=8192)
    modality: Literal["image", "text"] = "image"
    num_images: int = Field(40, ge=1, le=MAX_K)
    num_result_ids: int | None = Field(None, ge=1, le=MAX_K)
    indice_name: str | None = Field(None, max_length=200)
    deduplicate: bool | None = None
    use_safety_model: bool | None = None
    use_violence_detector: bool | None = None
    use_mclip: bool | None = None
    aesthetic_score: int | str | None = None
    aesthetic_weight: float | str | None = None


class KnnHit(BaseModel):
    id: int
    similarity: float
    url: str
    caption: str | None


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[int] = Field(..., max_length=MAX_K)
    indice_name: str | None = Field(None, max_length=200)

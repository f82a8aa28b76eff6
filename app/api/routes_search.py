"""POST /search (JSON or a multipart image upload) and POST /search/batch."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from app.api.schemas import BatchRequest, BatchResponse, ErrorBody, SearchRequest, SearchResponse
from app.api.state import ApiState, get_state
from retrieval.rerank.rerank import rerank_result, shortlist_size
from retrieval.search import Query, SearchResult

router = APIRouter(tags=["search"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422)}
_UPLOAD_FIELDS = {"k", "where", "target", "index", "rerank"}  # rerank only to refuse it with a reason


async def _answer(state: ApiState, req: SearchRequest) -> SearchResult:
    served = state.pick(req.index)
    if req.text is not None:
        reranker = state.reranker_for(req.rerank)  # before any work: a 400 when the server has none
        state.metrics.queries.labels("text").inc()
        short = shortlist_size(req.k, req.rerank)
        result = await served.batcher.search(Query(text=req.text), k=short, where=req.where, target=req.target)
        if reranker is None:
            return result

        def rerank() -> SearchResult:
            with served.service.lease() as idx:  # the index's token cache, when it has one for this reranker
                cached = idx.cached_tokens(reranker)
                return rerank_result(result, reranker, rerank=req.rerank, k=req.k, cached_tokens=cached)

        return await asyncio.to_thread(rerank)
    state.metrics.queries.labels("image_id").inc()

    def run() -> SearchResult:
        with served.service.lease() as idx:
            return idx.search(image_id=req.image_id, k=req.k, where=req.where, target=req.target)

    return await asyncio.to_thread(run)


async def _upload(request: Request, state: ApiState) -> SearchResult:
    """multipart/form-data: an `image` file part, and k / where / target / index as form fields."""
    limit = state.settings.max_upload_bytes
    if int(request.headers.get("content-length") or 0) > limit + 65536:
        raise HTTPException(413, f"upload larger than {limit} bytes")
    form = await request.form(max_files=1, max_fields=len(_UPLOAD_FIELDS))
    image = form.get("image")
    if image is None or isinstance(image, str):
        raise HTTPException(422, "multipart search needs a file part named 'image'")
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"image larger than {limit} bytes")
    unknown = set(form.keys()) - _UPLOAD_FIELDS - {"image"}
    if unknown:
        raise HTTPException(422, f"unknown form fields {sorted(unknown)}; allowed: image, {sorted(_UPLOAD_FIELDS)}")
    fields = {k: form[k] for k in _UPLOAD_FIELDS if k in form}
    # the form fields follow the JSON schema's rules (a placeholder id stands for the image)
    req = SearchRequest.model_validate({**fields, "image_id": 0})
    name = (image.filename or "upload")[:200]
    served = state.pick(req.index)
    state.metrics.queries.labels("image").inc()

    def run() -> SearchResult:
        with served.service.lease() as idx:
            xq = idx.embed_image_bytes(data, name)
            return idx.search_embedded([Query(image=name)], xq, k=req.k, where=req.where, target=req.target)[0]

    return await asyncio.to_thread(run)


@router.post("/search", response_model=SearchResponse, responses=ERRORS, summary="Search one query",
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                     "image": {"type": "string", "format": "binary"}, "k": {"type": "integer"},
                     "where": {"type": "string"}, "target": {"type": "string", "enum": ["image", "text"]},
                     "index": {"type": "string"}}}}}, "required": True}})
async def search(request: Request, state: Annotated[ApiState, Depends(get_state)]) -> JSONResponse:
    """JSON `{"text"| "image_id", "k", "where", "target", "index", "rerank"}`, or a multipart image upload.
    The answer is `retr search --json`'s."""
    t0 = time.perf_counter()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        out = await _upload(request, state)
    elif ctype in ("application/json", ""):
        body = await request.body()
        req = SearchRequest.model_validate(json.loads(body or b"null"))
        out = await _answer(state, req)
    else:
        raise HTTPException(415, f"content type {ctype!r}: send application/json or multipart/form-data")
    state.metrics.latency.labels("/search").observe(time.perf_counter() - t0)
    return JSONResponse(out.to_json())  # the library's own JSON: `url` only where the index has one


@router.post("/search/batch", response_model=BatchResponse, responses=ERRORS, summary="Search many queries")
async def search_batch(body: BatchRequest, state: Annotated[ApiState, Depends(get_state)]) -> JSONResponse:
    """Up to 256 queries in one request; their texts share forward passes with everyone else's."""
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_answer(state, q) for q in body.queries))
    state.metrics.latency.labels("/search/batch").observe(time.perf_counter() - t0)
    return JSONResponse({"results": [r.to_json() for r in results]})

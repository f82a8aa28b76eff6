"""clip-retrieval's clip-back protocol: POST /knn-service, GET /indices-list, POST /metadata.

An existing `ClipClient(url=".../knn-service", indice_name=...)` or clip-front works against
`retr serve` unchanged. Options retr has no model for (safety, violence, aesthetic score, mclip,
deduplicate) are accepted and ignored. `image_url` makes the server fetch a URL: refused unless
`retr serve --allow-image-url`, and then bounded in time and size and refused for non-public hosts.
ClipClient sends JSON without a content type, so the body is read as JSON whatever its header says.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from app.api.routes_search import ERRORS
from app.api.schemas import KnnHit, KnnRequest, MetadataRequest
from app.api.state import ApiState, Served, get_state
from indexing.download import DownloadError, DownloadLimits, check_public_url, fetch_url
from retrieval.search import Query, SearchResult
from retrieval.service import as_float_matrix

router = APIRouter(tags=["clip-retrieval compatibility"])


def _image_url(request: Request, item_id: int, url: object) -> str:
    if isinstance(url, str) and url:
        return url
    return str(request.url_for("get_item_image", item_id=item_id))


def _fetch_query_image(url: str, state: ApiState) -> bytes:
    if not state.settings.allow_image_url:
        raise HTTPException(400, "image_url is off on this server (start it with --allow-image-url)")
    try:
        check_public_url(url)
        return fetch_url(url, DownloadLimits(timeout_s=5, deadline_s=10, max_bytes=state.settings.max_upload_bytes,
                                             retries=0))
    except DownloadError as e:
        raise HTTPException(400, f"image_url: {e}") from e


def _run(served: Served, body: KnnRequest, state: ApiState, data: bytes | None, k: int) -> SearchResult:
    target = "image" if body.modality == "image" else "text"
    with served.service.lease() as idx:
        if body.embedding_input is not None:
            xq, query = as_float_matrix(body.embedding_input, idx.manifest.dim), Query(text="<embedding>")
        else:
            xq, query = idx.embed_image_bytes(data, "query"), Query(image="<upload>")
        return idx.search_embedded([query], xq, k=k, target=target)[0]


@router.post("/knn-service", response_model=list[KnnHit], responses=ERRORS, summary="clip-back kNN search")
async def knn_service(request: Request, state: Annotated[ApiState, Depends(get_state)]) -> list[KnnHit]:
    raw = await request.body()
    if len(raw) > state.settings.max_upload_bytes * 2:
        raise HTTPException(413, "request body too large")
    body = KnnRequest.model_validate(json.loads(raw or b"null"))
    given = [x for x in (body.text, body.image, body.image_url, body.embedding_input) if x]
    if len(given) != 1:
        raise HTTPException(422, "give exactly one of text, image, image_url, embedding_input")
    served = state.pick(body.indice_name)
    k = body.num_images
    if body.text:
        state.metrics.queries.labels("text").inc()
        target = "image" if body.modality == "image" else "text"
        result = await served.batcher.search(Query(text=body.text), k=k, where=None, target=target)
    else:
        data = None
        if body.image:
            try:
                data = base64.b64decode(body.image, validate=True)
            except (binascii.Error, ValueError) as e:
                raise HTTPException(422, f"image is not base64: {e}") from e
        elif body.image_url:
            data = await asyncio.to_thread(_fetch_query_image, body.image_url, state)
        state.metrics.queries.labels("image" if data is not None else "embedding").inc()
        result = await asyncio.to_thread(_run, served, body, state, data, k)
    rows = {}
    with served.service.lease() as idx:
        if idx.has_url:
            rows = idx.meta.rows([h.id for h in result.results], ("id", "url"))
    return [KnnHit(id=h.id, similarity=h.score, caption=h.caption,
                   url=_image_url(request, h.id, rows.get(h.id, {}).get("url"))) for h in result.results]


@router.get("/indices-list", response_model=list[str], summary="clip-back: the served index names")
def indices_list(state: Annotated[ApiState, Depends(get_state)]) -> list[str]:
    return list(state.served)


@router.post("/metadata", responses=ERRORS, summary="clip-back: metadata of ids")
async def metadata(request: Request, state: Annotated[ApiState, Depends(get_state)]) -> list[dict]:
    body = MetadataRequest.model_validate(json.loads(await request.body() or b"null"))
    served = state.pick(body.indice_name)
    with served.service.lease() as idx:
        rows = idx.meta.rows(body.ids, ("id", "path", "caption"))
    return [{"id": i, "metadata": {"caption": rows[i]["caption"], "url": _image_url(request, i, None)}}
            for i in body.ids if i in rows]

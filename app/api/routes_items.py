"""GET /items/{id} (metadata) and GET /items/{id}/image: only ids the index holds, never a path."""

from __future__ import annotations

import asyncio
import math
import tarfile
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response

from app.api.routes_search import ERRORS
from app.api.schemas import MAX_ID
from app.api.state import ApiState, get_state
from indexing.decode import DecodeError
from indexing.item_images import render_image

router = APIRouter(tags=["items"])


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return value


def item_row(state: ApiState, item_id: int, index: str | None) -> dict:
    served = state.pick(index)
    with served.service.lease() as idx:
        columns = [c for c in idx.meta.columns() if c not in ("chunk", "row", "segment")]
        rows = idx.meta.rows([item_id], columns)
    if item_id not in rows:
        raise HTTPException(404, f"no indexed item with id {item_id}")
    return {k: _json_safe(v) for k, v in rows[item_id].items()}


@router.get("/items/{item_id}", responses=ERRORS, summary="An item's metadata")
def get_item(
    item_id: Annotated[int, PathParam(ge=0, le=MAX_ID)],
    state: Annotated[ApiState, Depends(get_state)],
    index: Annotated[str | None, Query(max_length=200)] = None,
) -> dict:
    """Every metadata column of one indexed item (id, path, caption, size, and the source's columns)."""
    return item_row(state, item_id, index)


@router.get("/items/{item_id}/image", responses={**ERRORS, 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
            response_class=Response, summary="An item's picture")
async def get_item_image(
    item_id: Annotated[int, PathParam(ge=0, le=MAX_ID)],
    state: Annotated[ApiState, Depends(get_state)],
    size: Annotated[Literal["thumb", "full"], Query()] = "thumb",
    index: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """`thumb`: JPEG, longest side 256; `full`: PNG at up to 4096 px. URL items are not fetched: their
    metadata has the url."""
    row = item_row(state, item_id, index)
    path = str(row["path"])
    if path.startswith(("http://", "https://")):
        raise HTTPException(404, f"item {item_id} is remote; fetch it from its url: {path}")
    try:
        data, media = await asyncio.to_thread(render_image, path, size, state.settings.thumb_size)
    except FileNotFoundError as e:
        raise HTTPException(404, f"item {item_id}'s image is no longer at {path}") from e
    except (OSError, DecodeError, tarfile.TarError) as e:
        raise HTTPException(404, f"item {item_id}'s image cannot be read: {e}") from e
    return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})

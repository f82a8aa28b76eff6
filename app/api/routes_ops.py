"""GET /healthz, /readyz, /metrics and /indexes: is it up, can it answer, what has it done."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.schemas import IndexInfo
from app.api.state import ApiState, get_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Models and indexes are loaded", responses={503: {"description": "still loading"}})
def readyz(state: Annotated[ApiState, Depends(get_state)]) -> dict:
    if not state.ready:
        raise HTTPException(503, "loading the model and indexes")
    return {"status": "ready", "indexes": sorted(state.served)}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(state: Annotated[ApiState, Depends(get_state)]) -> PlainTextResponse:
    state.record_batches()
    return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/indexes", response_model=list[IndexInfo], summary="The served indexes")
def indexes(state: Annotated[ApiState, Depends(get_state)]) -> list[IndexInfo]:
    out = []
    for name, served in state.served.items():
        with served.service.lease() as idx:
            m = idx.manifest
            out.append(IndexInfo(name=name, model=m.model, n_items=m.n_items, dim=m.dim,
                                 n_captions=m.n_captions if m.n_captions >= 0 else m.n_items,
                                 columns=[c for c in idx.meta.columns() if c not in ("chunk", "row", "segment")]))
    return out

"""The HTTP API (`retr serve`): a thin FastAPI router over `retrieval.service` and `retrieval.search`.

    app = create_app([IndexService(Path("out/idx"))], ApiSettings())

Routers: search (POST /search, /search/batch), items (GET /items/{id}, /items/{id}/image), operations
(/healthz, /readyz, /metrics, /indexes) and clip-back compatibility (/knn-service, /indices-list,
/metadata). The served indexes, settings and metrics live on `app.state.retr` and reach handlers as a
dependency. docs/api.md describes the endpoints; the OpenAPI schema is at /openapi.json, docs at /docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from app.api import errors, routes_clip, routes_items, routes_ops, routes_search
from app.api.state import ApiSettings, ApiState, new_served
from retrieval.rerank.base import Reranker
from retrieval.service import IndexService

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes answer without a token


async def _watch(state: ApiState) -> None:
    """Swap in what writers commit (retr index add / build): one look per reload_check_s."""
    while True:
        for served in state.served.values():
            if await asyncio.to_thread(served.service.reload_if_changed):
                state.metrics.reloads.inc()
        await asyncio.sleep(min(s.service.config.reload_check_s for s in state.served.values()))


def create_app(
    services: Sequence[IndexService], settings: ApiSettings = ApiSettings(), reranker: Reranker | None = None
) -> FastAPI:
    """`reranker` answers requests with `rerank` > 0 (retrieval.rerank); without one they get a 400."""
    if not services:
        raise ValueError("serve at least one index")
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ValueError(f"index names must differ, got {names}; name them NAME=PATH")
    state = ApiState({s.name: new_served(s) for s in services}, settings, reranker=reranker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for served in state.served.values():
            await served.batcher.start()
        watcher = asyncio.create_task(_watch(state))
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for served in state.served.values():
                await served.batcher.stop()

    app = FastAPI(title="retr", summary="Text-to-image search over retr indexes", version="0.1.0", lifespan=lifespan)
    app.state.retr = state
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        if settings.token and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                state.metrics.errors.labels("401").inc()
                return errors.error_response(401, "missing or wrong bearer token")
        response = await call_next(request)
        if response.status_code >= 400:
            state.metrics.errors.labels(str(response.status_code)).inc()
        return response

    for module in (routes_search, routes_items, routes_ops, routes_clip):
        app.include_router(module.router)
    return app

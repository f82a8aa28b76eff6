"""What the API holds while it runs: the served indexes, their batchers, settings and metrics.

Handlers get it through FastAPI dependencies (`get_state`), never from a module global, so two
apps (tests, several ports) never share anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from retrieval.rerank.base import Reranker
from retrieval.service import BatchStats, IndexService, TextBatcher

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None  # RETR_API_TOKEN: every route but /healthz and /readyz needs `Bearer TOKEN`
    cors_origins: tuple[str, ...] = ()  # none: CORS headers are never sent
    allow_image_url: bool = False  # clip-back's image_url makes the server fetch a URL: off unless asked
    max_upload_bytes: int = 16 << 20  # multipart image uploads and base64 images
    thumb_size: int = 256  # longest side of /items/{id}/image?size=thumb


class Metrics:
    """Prometheus series of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("retr_request_seconds", "Request latency by route", ["route"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.queries = Counter("retr_queries_total", "Queries answered, by kind", ["kind"], registry=self.registry)
        self.errors = Counter("retr_errors_total", "Requests answered with an error, by status", ["status"],
                              registry=self.registry)
        self.batch_size = Histogram("retr_batch_size", "Text queries per model forward pass", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.reloads = Counter("retr_index_reloads_total", "Indexes swapped in after a writer committed",
                               registry=self.registry)


@dataclass
class Served:
    service: IndexService
    batcher: TextBatcher


@dataclass
class ApiState:
    served: dict[str, Served]
    settings: ApiSettings
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)
    ready: bool = False
    reranker: Reranker | None = None  # `retr serve --reranker SPEC`; requests with rerank > 0 need it

    @property
    def default_name(self) -> str:
        return next(iter(self.served))

    def pick(self, name: str | None) -> Served:
        if name is None:
            return self.served[self.default_name]
        if name not in self.served:
            raise HTTPException(404, f"no index named {name!r}; serving {sorted(self.served)}")
        return self.served[name]

    def reranker_for(self, rerank: int) -> Reranker | None:
        """The reranker a request with `rerank` needs: None for 0; a 400 when the server has none."""
        if not rerank:
            return None
        if self.reranker is None:
            raise HTTPException(400, "this server has no reranker: start it with `retr serve --reranker SPEC` "
                                     "to use rerank")
        return self.reranker

    def record_batches(self) -> None:
        """Move the batchers' recorded forward-pass sizes into the histogram."""
        for s in self.served.values():
            sizes, s.batcher.stats.sizes = s.batcher.stats.sizes, []
            for n in sizes:
                self.metrics.batch_size.observe(n)


def new_served(service: IndexService) -> Served:
    return Served(service, TextBatcher(service, BatchStats()))


def get_state(request: Request) -> ApiState:
    return request.app.state.retr

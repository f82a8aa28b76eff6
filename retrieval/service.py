"""A long-lived search service over one index folder: hot reload and micro-batching.

What a server (the HTTP API, the UI, a Ray actor) needs beyond `RetrievalIndex`. Its shards are held
where `shards` says (retrieval.shards; on Ray actors with retrieval.distributed_search.ray_shards):

- **Hot reload.** `index.json` is the commit point of every build and add, so the service compares
  its signature (inode, size, mtime) and, when it changed, opens the new index next to the old one,
  reusing the loaded model, and swaps it in. A request holds a lease on the index it started with;
  the old index is closed once its last lease ends. Readers never need a lock (docs/data-safety.md).
  While the folder has no index.json (a rebuild in progress) the old index keeps answering: its
  faiss shards are in memory and its chunk files and metadata stay mapped.
- **Micro-batching.** Text queries from concurrent requests wait up to `max_wait_ms` in a queue,
  are encoded in one forward pass (the expensive part) and searched in groups that share k, filter
  and target, like text-embeddings-inference does for embeddings. One worker thread runs the
  batches, so the event loop keeps accepting requests while the model works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexing.manifest import MANIFEST_NAME
from retrieval.encoders.base import Encoder
from retrieval.search import Query, RetrievalIndex, SearchResult, open_index
from retrieval.shards import ShardOpener


@dataclass(frozen=True)
class ServiceConfig:
    batching: bool = True
    max_batch: int = 64  # text queries encoded in one forward pass
    max_wait_ms: float = 4.0  # how long the first query of a batch waits for company
    reload_check_s: float = 1.0  # how often index.json is looked at

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.reload_check_s <= 0:
            raise ValueError("max_batch must be >= 1, max_wait_ms >= 0 and reload_check_s > 0")


@dataclass
class _Open:
    index: RetrievalIndex
    signature: tuple[int, int, int]
    leases: int = 0
    retired: bool = False


def _signature(index_dir: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(index_dir / MANIFEST_NAME)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class BatchStats:
    """What the batcher did, for /metrics: sizes of the forward passes it ran."""

    sizes: list[int] = field(default_factory=list)


class IndexService:
    """One index folder, reopened when a writer commits, with leases for in-flight requests."""

    def __init__(
        self,
        index_dir: Path,
        *,
        name: str | None = None,
        encoder_factory: Callable[[str], Encoder] | None = None,
        config: ServiceConfig = ServiceConfig(),
        shards: ShardOpener | None = None,
    ) -> None:
        self.dir = Path(index_dir)
        self.name = name or self.dir.name
        self.config = config
        self._factory = encoder_factory
        self._shards = shards  # where each opened index holds its shards (None: in this process)
        self._encoders: dict[str, Encoder] = {}
        self._lock = threading.Lock()
        sig = _signature(self.dir)
        if sig is None:
            raise FileNotFoundError(f"{self.dir} is not a retr index (no {MANIFEST_NAME})")
        self._current = _Open(self._open(), sig)
        self.reloads = 0
        self.reload_errors = 0

    def _encoder_for(self, spec: str) -> Encoder:
        """The model, loaded once and shared by every reopened index of the same spec."""
        if spec not in self._encoders:
            if self._factory is not None:
                self._encoders[spec] = self._factory(spec)
            else:
                from retrieval.encoders import load_encoder

                self._encoders[spec] = load_encoder(spec)
        return self._encoders[spec]

    def _open(self) -> RetrievalIndex:
        return open_index(self.dir, encoder_factory=self._encoder_for, shards=self._shards)

    @property
    def index(self) -> RetrievalIndex:
        """The current index (for quick reads such as metadata lookups; searches take a lease)."""
        return self._current.index

    @contextlib.contextmanager
    def lease(self) -> Iterator[RetrievalIndex]:
        """The current index, kept open until the block ends even if a reload swaps it meanwhile."""
        with self._lock:
            held = self._current
            held.leases += 1
        try:
            yield held.index
        finally:
            with self._lock:
                held.leases -= 1
                close = held.retired and held.leases == 0
            if close:
                held.index.close()

    def reload_if_changed(self) -> bool:
        """Swap in the index a writer committed since the last look; False when nothing changed or
        the folder is mid-rebuild. A half-written or broken index is not swapped in."""
        sig = _signature(self.dir)
        if sig is None or sig == self._current.signature:
            return False
        try:
            fresh = _Open(self._open(), sig)
        except (OSError, ValueError):
            self.reload_errors += 1  # e.g. a rebuild replaced index.json between our stat and open
            return False
        with self._lock:
            old, self._current = self._current, fresh
            old.retired = True
            close = old.leases == 0
        if close:
            old.index.close()
        self.reloads += 1
        return True

    def close(self) -> None:
        with self._lock:
            self._current.retired = True
            close = self._current.leases == 0
        if close:
            self._current.index.close()


@dataclass
class _Pending:
    query: Query
    k: int
    where: str | None
    target: str
    future: asyncio.Future


class TextBatcher:
    """Collects text queries from concurrent requests and answers them a batch at a time."""

    def __init__(self, service: IndexService, stats: BatchStats | None = None) -> None:
        self.service = service
        self.stats = stats or BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._ensure_running()

    def _ensure_running(self) -> asyncio.Queue:
        """The queue of the running event loop, with its worker task (started on first use, and again
        if the app is run by another loop, as test clients do)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue))
        return self._queue

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        if task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def search(self, query: Query, *, k: int, where: str | None, target: str) -> SearchResult:
        if not self.service.config.batching:
            return await asyncio.to_thread(self._search_one, query, k, where, target)
        queue = self._ensure_running()
        future = asyncio.get_running_loop().create_future()
        await queue.put(_Pending(query, k, where, target, future))
        return await future

    def _search_one(self, query: Query, k: int, where: str | None, target: str) -> SearchResult:
        with self.service.lease() as idx:
            self.stats.sizes.append(1)
            return idx.search_batch([query], k=k, where=where, target=target)[0]

    async def _run(self, queue: asyncio.Queue) -> None:
        cfg = self.service.config
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + cfg.max_wait_ms / 1000
            while len(batch) < cfg.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            await asyncio.to_thread(self._answer, batch)

    def _answer(self, batch: Sequence[_Pending]) -> None:
        """One forward pass for every text of the batch, then one search per (k, where, target) group."""
        loop_results: list[tuple[_Pending, SearchResult | BaseException]] = []
        with self.service.lease() as idx:
            self.stats.sizes.append(len(batch))
            try:
                xq = idx.embed_queries([p.query for p in batch])
            except Exception as e:  # noqa: BLE001 (handed to every waiting request)
                loop_results = [(p, e) for p in batch]
            else:
                groups: dict[tuple, list[int]] = {}
                for i, p in enumerate(batch):
                    groups.setdefault((p.k, p.where, p.target), []).append(i)
                for (k, where, target), rows in groups.items():
                    try:
                        res = idx.search_embedded([batch[i].query for i in rows], xq[rows], k=k, where=where,
                                                  target=target)
                        loop_results += [(batch[i], r) for i, r in zip(rows, res, strict=True)]
                    except Exception as e:  # noqa: BLE001 (one bad filter fails its own group only)
                        loop_results += [(batch[i], e) for i in rows]
        for p, outcome in loop_results:
            p.future.get_loop().call_soon_threadsafe(_settle, p.future, outcome)


def _settle(future: asyncio.Future, outcome: SearchResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def as_float_matrix(values: Sequence[float], dim: int) -> np.ndarray:
    """A (1, dim) unit query vector from a client's list of numbers (clip-back's embedding_input)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (dim,):
        raise ValueError(f"embedding must be a list of {dim} numbers, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("embedding holds NaN or infinity")
    norm = np.linalg.norm(arr)
    if norm == 0:
        raise ValueError("embedding is all zeros")
    return (arr / norm).astype(np.float32)[None, :]

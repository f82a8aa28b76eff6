"""Embed a segment's chunks on Ray actors: the local embed job, distributed rather than rewritten.

The driver checks the job (`prepare_embed_job`, the local runner's own resume guard), lists the chunks
without a committed metadata file, and hands each to an actor pool: one `EmbedWorker` per CPU (or GPU) slot,
each loading the encoder once from a picklable factory. An actor reads and decodes its own chunk's items, so
decoding is spread over the cluster too, and writes the chunk with `embed_chunk_files`, metadata last. The
results are the files; the driver only counts items for its progress bar.

Faults: a driver killed (kill -9) leaves committed chunks behind and rerunning the command embeds only the
rest. An actor process killed mid-chunk is restarted by Ray (`max_restarts`) and its chunk calls are
resubmitted (`max_task_retries`); a chunk is written atomically and committed last, and its ids are its
positions, so a redone chunk replaces files with identical ones and can never duplicate an item. The chunk
folder must be on storage every node sees (one machine, or a shared filesystem).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from indexing.atomic import remove_stale_temps
from indexing.distributed.ray_cluster import RayConfig, ray_session
from indexing.embed import EmbedConfig, EmbedSummary, caption_offsets, embed_chunk_files, embed_items
from indexing.sources import Item
from retrieval.encoders.base import Encoder


def _load_registry_encoder(spec: str, device: str) -> Encoder:
    from retrieval.encoders import load_encoder

    return load_encoder(spec, device=device)


def _load_hook_encoder(hook: str) -> Encoder:
    module, sep, attr = hook.partition(":")
    if not (module and sep and attr):
        raise ValueError(f"an encoder hook must be module:attr, got {hook!r}")
    return getattr(importlib.import_module(module), attr)()


def registry_encoder(spec: str, device: str = "cpu") -> Callable[[], Encoder]:
    """A picklable factory that loads `spec` (`retr models list`) in whichever process calls it."""
    return partial(_load_registry_encoder, spec, device)


def hook_encoder(hook: str) -> Callable[[], Encoder]:
    """A picklable factory for `module:attr`, a zero-argument callable returning an Encoder (tests, plugins)."""
    return partial(_load_hook_encoder, hook)


@dataclass(frozen=True)
class ChunkTask:
    """One chunk call: the chunk's own items and the ids of its first item and first caption."""

    chunk: int
    items: Sequence[Item]
    start_id: int
    start_cid: int


def chunk_tasks(
    items: Sequence[Item], chunks: Sequence[int], chunk_size: int, start_id: int, start_cid: int
) -> list[ChunkTask]:
    offsets = caption_offsets(items)
    tasks = []
    for c in chunks:
        lo, hi = c * chunk_size, min(len(items), (c + 1) * chunk_size)
        tasks.append(ChunkTask(c, list(items[lo:hi]), start_id + lo, start_cid + int(offsets[lo])))
    return tasks


class EmbedWorker:
    """The actor body: one encoder, loaded once; `embed` writes one chunk and returns its counts."""

    def __init__(self, make_encoder: Callable[[], Encoder], folder: str, config: EmbedConfig, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.encoder = make_encoder()
        self.folder = Path(folder)
        self.config = replace(config, num_workers=0)  # the actor holds one slot: decode in it, between batches

    def embed(self, task: ChunkTask) -> tuple[int, int, int]:
        n_ok, n_rejected = embed_chunk_files(
            task.items, self.folder, [task.chunk], self.encoder, self.config,
            start_id=task.start_id, start_cid=task.start_cid, first_chunk=task.chunk,
        )
        return task.chunk, n_ok, n_rejected

    def pid(self) -> int:
        return os.getpid()


class RayEmbedRunner:
    """An `indexing.build.EmbedRunner` whose chunks are embedded by Ray actors.

    `encoder` (the driver's) only names the job for its resume guard; actors build their own with
    `make_encoder`, which must be picklable (registry_encoder, hook_encoder)."""

    def __init__(self, make_encoder: Callable[[], Encoder], ray_config: RayConfig | None = None) -> None:
        self.make_encoder, self.ray_config = make_encoder, ray_config or RayConfig()

    def __call__(self, *args: Any, **kwargs: Any) -> EmbedSummary:
        """`embed_items(items, folder, encoder, config, start_id=, start_cid=, progress=)`, chunks on Ray."""
        return embed_items(*args, embed_chunks=self.embed_chunks, **kwargs)

    def embed_chunks(self, items: Sequence[Item], folder: Path, chunks: Sequence[int], encoder: Encoder,
                     config: EmbedConfig, *, start_id: int, start_cid: int,
                     on_batch: Callable[[int], object] = lambda n: None) -> tuple[int, int]:
        """`embed_chunk_files` for `chunks` of the whole job's `items`, one call per chunk on the actor pool."""
        if not chunks:
            return 0, 0
        tasks = chunk_tasks(items, chunks, config.chunk_size, start_id, start_cid)
        with ray_session(self.ray_config) as ray:
            actors = self._actors(ray, Path(folder), config, len(tasks))
            counts = _run_pool(ray, actors, tasks, on_batch, self.ray_config.in_flight)
        remove_stale_temps(Path(folder))  # what a killed actor left mid-write; every actor is gone now
        return counts

    def _actors(self, ray: Any, folder: Path, config: EmbedConfig, n_tasks: int) -> list[Any]:
        rc = self.ray_config
        resources = ray.cluster_resources()
        if rc.gpus_per_actor:
            slots = int(resources.get("GPU", 0) // rc.gpus_per_actor)
        else:
            slots = int(resources.get("CPU", 1) // rc.cpus_per_actor)
        n_actors = max(1, min(rc.num_actors or slots, n_tasks))
        actor_class = ray.remote(
            num_cpus=rc.cpus_per_actor, num_gpus=rc.gpus_per_actor,
            max_restarts=rc.max_restarts, max_task_retries=rc.max_task_retries,
        )(EmbedWorker)
        threads = max(1, int(rc.cpus_per_actor))
        return [actor_class.remote(self.make_encoder, str(folder), config, threads) for _ in range(n_actors)]


def _run_pool(
    ray: Any, actors: list[Any], tasks: list[ChunkTask], on_items: Callable[[int], object], in_flight: int
) -> tuple[int, int]:
    """Feed `tasks` to `actors`, at most `in_flight` each; returns (images embedded, items rejected)."""
    queue = list(reversed(tasks))
    running: dict[Any, tuple[Any, ChunkTask]] = {}

    def submit(actor: Any) -> None:
        task = queue.pop()
        running[actor.embed.remote(task)] = (actor, task)

    for _ in range(in_flight):
        for actor in actors:
            if queue:
                submit(actor)
    n_ok = n_rejected = 0
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            actor, task = running.pop(done[0])
            _, ok, rejected = ray.get(done[0])
            n_ok, n_rejected = n_ok + ok, n_rejected + rejected
            on_items(len(task.items))
            if queue:
                submit(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
    return n_ok, n_rejected

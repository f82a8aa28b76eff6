"""Shard building as Ray tasks (`retr index build --ray`): every shard of a collection is cloned from the
one trained quantizer the driver wrote, filled with its rows and written by a task of its own.

    build_index(items, out, encoder, config, runner=RayEmbedRunner(...), shard_writer=RayShardWriter(rc))

A task gets a `ShardJob` (the trained index's path, the shard's rows and ids, its file) and the
collection's vectors: a memory-mapped input (a spilled segment, indexing.build) goes as its file path
and each task maps it; vectors held in RAM go once into Ray's object store, which tasks on the same
node read without a copy. Tasks run `indexing.shard_files.write_shard`, the function the local build calls,
so a shard file is the same bytes either way. A task whose worker dies is retried (`max_retries`); a
shard is written atomically (an on-disk one resumes from its finished blocks), so a retry rewrites the
same file. The driver then reads the shards back, tunes them and writes `index.json` as locally.
Every node must see the index folder at the same path (a shared filesystem), as for the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing.distributed.ray_cluster import RayConfig, ray_session
from indexing.manifest import ShardInfo
from indexing.shard_files import ShardJob, write_shards


@dataclass(frozen=True)
class _Mapped:
    """A memory-mapped .npy, sent by path."""

    path: str


def _vectors(arg: Any) -> np.ndarray:
    return np.load(arg.path, mmap_mode="r") if isinstance(arg, _Mapped) else arg


def _write_one(job: ShardJob, vectors: Any) -> ShardInfo:
    return write_shards([job], _vectors(vectors))[0]


class RayShardWriter:
    """A `ShardWriter` (indexing.build) that writes each shard in a Ray task of `cpus_per_actor` CPUs."""

    task = staticmethod(_write_one)  # what each task runs: (job, vectors) -> ShardInfo

    def __init__(self, ray_config: RayConfig | None = None) -> None:
        self.rc = ray_config or RayConfig()

    def task_options(self, jobs: Sequence[ShardJob]) -> dict:
        """Ray resources of each task: `cpus_per_actor` CPUs, and one GPU for jobs on cuda (a task without
        a GPU of its own sees none: Ray hides the node's GPUs from it)."""
        gpus = 1 if any(job.device.startswith("cuda") for job in jobs) else 0
        return {"num_cpus": self.rc.cpus_per_actor, "num_gpus": gpus, "max_retries": self.rc.max_task_retries}

    def __call__(self, jobs: Sequence[ShardJob], xb: np.ndarray) -> list[ShardInfo]:
        filename = getattr(xb, "filename", None)
        with ray_session(self.rc) as ray:
            task = ray.remote(**self.task_options(jobs))(self.task)
            vectors = _Mapped(str(Path(filename))) if filename else ray.put(np.ascontiguousarray(xb))
            return ray.get([task.remote(job, vectors) for job in jobs])

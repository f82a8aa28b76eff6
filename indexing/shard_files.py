"""Writing one collection's shards from its trained index: the step of a build that runs anywhere.

    write_shards(jobs, xb)          # each ShardJob's shard file, in this process
    write_shard(kind, trained, ...) # one shard: clone `trained`, add its rows, write it atomically

Shards are independent once the quantizer is trained, so `indexing.build` hands a collection's
`ShardJob`s to a `ShardWriter`: `write_shards` here, or `indexing.distributed.ray_shards.RayShardWriter`,
whose Ray tasks import this module. It imports faiss and numpy but not torch or the embedding code,
so a fresh worker is ready in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexing.faiss_build import add_to_clone, lists_path, read_index, write_index_atomic
from indexing.manifest import ShardInfo, file_sha256
from indexing.ondisk import build_ondisk
from indexing.row_blocks import is_mapped, iter_blocks

ADD_BLOCK_ROWS = 100_000  # rows of a memory-mapped (spilled) collection added at a time


@dataclass(frozen=True)
class ShardJob:
    """One shard to write from a trained index: what `write_shard` needs, as paths and row numbers, so
    a worker elsewhere (indexing.distributed.ray_shards) can run it."""

    kind: str
    trained: Path  # the empty trained index file every shard is cloned from
    rows: np.ndarray  # rows of the collection's vectors
    ids: np.ndarray  # their ids
    path: Path  # the shard file to write
    device: str


# Who writes a collection's shards: given (jobs, the collection's vectors) -> their ShardInfo, in order.
# Shards are independent once the quantizer is trained: `write_shards` runs them here, one by one;
# indexing.distributed.ray_shards.RayShardWriter runs them as Ray tasks.
ShardWriter = Callable[[Sequence[ShardJob], np.ndarray], list[ShardInfo]]


def write_shards(jobs: Sequence[ShardJob], xb: np.ndarray) -> list[ShardInfo]:
    """Each job's shard, in this process."""
    trained: dict[Path, faiss.Index] = {}
    infos = []
    for job in jobs:
        if job.trained not in trained:
            trained[job.trained] = read_index(job.trained)
        infos.append(write_shard(job.kind, trained[job.trained], xb, job.rows, job.ids, job.path, job.device)[1])
    return infos


def write_shard(
    kind: str, trained: faiss.Index, xb: np.ndarray, rows: np.ndarray | None, ids: np.ndarray, path: Path, device: str
) -> tuple[faiss.Index, ShardInfo]:
    """xb[rows] (all of xb when rows is None) under `ids` in a clone of `trained`, written to `path`:
    (the shard, its ShardInfo). Kind ivf_pq_ondisk writes the lists next to it, block by block;
    the others add in RAM."""
    if kind == "ivf_pq_ondisk":
        shard = build_ondisk(trained, xb, ids, path, rows=rows)
        lists = lists_path(path)
        lists_info = {"lists": f"shards/{lists.name}", "lists_sha256": file_sha256(lists)}
    elif is_mapped(xb) and kind != "hnsw" and device == "cpu":
        # vectors spilled to disk (a segment larger than the budget): add them a block at a time; an IVF
        # or flat index assigns each vector on its own, so this is the index one call would give
        blocks = iter_blocks(xb, rows, ADD_BLOCK_ROWS)
        lo, hi, first = next(blocks)
        shard = add_to_clone(trained, first, ids[lo:hi])
        for lo, hi, block in blocks:
            shard.add_with_ids(block, np.ascontiguousarray(ids[lo:hi], np.int64))
        write_index_atomic(shard, path)
        lists_info = {}
    else:
        shard = add_to_clone(trained, np.ascontiguousarray(xb if rows is None else xb[rows]), ids, device=device)
        write_index_atomic(shard, path)
        lists_info = {}
    return shard, ShardInfo(file=f"shards/{path.name}", n=int(len(ids)), sha256=file_sha256(path), **lists_info)

"""The shards of one vector collection, searched one by one and merged into one top-k.

A collection (image vectors, or caption vectors) is split into shard files with global ids
(`index.json` lists them). `LocalShards` holds them in this process, which is what
`retrieval.search.RetrievalIndex` searches through by default; `retrieval.distributed_search.RayShards`
holds them on Ray actors, each of which is a `LocalShards` over its own shards, behind the same
`ShardSearcher` interface. Both merge with `merge_topk`, so a search gives the same ids, scores and
order wherever the shards live.

A pre-filter is a sorted array of allowed ids (`allowed`), not a faiss IDSelector: an array can be
sent to another process, and each holder builds the same `IDSelectorBatch` from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from indexing.faiss_build import read_index
from indexing.manifest import VectorIndexInfo
from indexing.tune import apply_search_param


class ShardSearcher(Protocol):
    """What RetrievalIndex searches a collection through, wherever its shards are held."""

    info: VectorIndexInfo
    kind: str  # "image" (ids are item ids) or "text" (ids are caption ids)

    def search(
        self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


# (index folder, the collection's manifest entry, kind) -> its searcher: LocalShards, or RayShards' opener
ShardOpener = Callable[[Path, VectorIndexInfo, str], ShardSearcher]


class LocalShards:
    """Shards of one collection loaded in this process: all of them, or those at positions `select`."""

    def __init__(
        self, index_dir: Path, info: VectorIndexInfo, kind: str, *,
        select: Sequence[int] | None = None, mmap: bool = False,
    ) -> None:
        self.info, self.kind = info, kind
        chosen = info.shards if select is None else [info.shards[i] for i in select]
        # mmap: IVF lists stay in the page cache (faiss_build.read_index, the one reader of shard files)
        self.shards = [read_index(index_dir / s.file, mmap=mmap) for s in chosen]
        for s in self.shards:
            apply_search_param(s, info.search_param, info.search_value)

    def params(self, sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        if sel is None:
            return None
        if self.info.search_param == "nprobe":
            p = faiss.SearchParametersIVF()
            p.nprobe = int(self.info.search_value)
        elif self.info.search_param == "efSearch":
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(self.info.search_value)
        else:
            p = faiss.SearchParameters()
        p.sel = sel
        return p

    def search(
        self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (D, I) over these shards; with `allowed`, only those ids (a faiss IDSelectorBatch)."""
        sel = None if allowed is None else faiss.IDSelectorBatch(allowed)
        params = self.params(sel)  # `sel` stays referenced until the searches are done
        results = [s.search(xq, k, params=params) for s in self.shards if s.ntotal]
        if not results:  # only empty shards: every row is padding, as faiss pads a short result
            return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
        return merge_topk(results, k)

    def close(self) -> None:
        """Nothing to release: the shards go with this object."""


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (D, I) results (inner product: larger is better) into one top-k.

    Ties keep the order of `results` (a stable sort), so merging groups of consecutive shards and then
    the groups' results gives exactly the merge of all shards at once; -1 padding scores -inf and sorts last.
    """
    D = np.concatenate([r[0] for r in results], axis=1)
    I = np.concatenate([r[1] for r in results], axis=1)
    D = np.where(I < 0, -np.inf, D)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)

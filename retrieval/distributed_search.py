"""Search shards held by Ray actors: for indexes whose shards do not fit one machine.

    from retrieval.distributed_search import RaySearchConfig, ray_shards
    idx = open_index("out/photos", shards=ray_shards(RaySearchConfig(address="auto")))
    hits = idx.search(text="a red heart", k=5)          # the same SearchResult as a local search

Each collection's shards are split into groups of `shards_per_actor` consecutive shards; a `ShardActor`
per group loads its own shard files (IVF lists memory-mapped) and answers `search(xq, k, allowed)`
with the top-k of its shards, merged as the local searcher merges. The driver (`RayShards`, the
`ShardSearcher` that RetrievalIndex uses) sends a query batch to every actor at once, waits for all,
and merges their results with the same stable `merge_topk`: because the groups are consecutive and the
merge is stable, ties and -1 padding come out exactly as a local search over all shards gives them.
Everything else (query embedding, DuckDB filters, exact search of small filtered selections over
stored vectors, ids → paths and captions) stays on the driver, so the JSON is the local JSON. A large
filtered selection is sent to the actors as the same sorted id array the local search turns into a
faiss IDSelectorBatch.

Placement: actors are spread over the cluster's nodes (SPREAD) and, by default, each asks Ray for as
much memory as its shard files take, so Ray puts them where they fit; an actor that cannot be placed
within `start_timeout_s` fails the open with a message. Every node must see the index folder's
`shards/` at the same path (one machine, or a shared filesystem); the driver needs the whole folder.

Replicas (`replicas` R): R actors hold each group, each with its own copy of the files' pages. Searches
take turns among them, so R actors answer R concurrent searches of a group at once (a server's
threads), and `concurrency` lets one actor run several searches at once on threads.

Faults: an actor process that dies is restarted by Ray (`max_restarts`), reloading its shards, and the
searches it held are resubmitted (`max_task_retries`; a search is read-only, so a retry is harmless).
Once the restarts are spent, that group's next replica answers instead. When every replica of a group
is down for good, the search raises ShardUnavailableError naming the shards.

Ray is imported only when a RayShards is opened: without it, that open raises ValueError saying to
install the `distributed` extra. A cluster this module starts (no address, none joined yet) lives as
long as the process; closing the index kills its actors only, so a reloaded index can start its own.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from indexing.distributed.ray_cluster import init_ray
from indexing.manifest import VectorIndexInfo
from retrieval.shards import LocalShards, ShardOpener, merge_topk

# A smaller query batch travels inside each actor call; a larger one is put in the object store once for
# all. The put costs more than it saves for small batches (12 -> 7 ms a single query on 2 cores, 4 shards).
INLINE_BYTES = 64 << 10


class ShardUnavailableError(RuntimeError):
    """A shard actor died and Ray could not restart it: its shards cannot be searched."""


@dataclass(frozen=True)
class RaySearchConfig:
    # None starts a local cluster (or uses the one this process joined); "auto" joins `ray start --head` on
    # this machine; "ray://host:10001" goes through Ray Client
    address: str | None = None
    num_cpus: int | None = None  # CPUs of a local cluster this starts (None: all of them)
    shards_per_actor: int = 1  # consecutive shards one actor holds
    # CPUs an actor reserves. 0: actors share their node's CPUs (they are placed by memory), so a 2-CPU
    # node holds any number of them; reserve CPUs to keep other Ray work off the searchers' cores.
    cpus_per_actor: float = 0.0
    threads: int = 0  # faiss OpenMP threads per actor; 0 keeps the worker's default (Ray's OMP_NUM_THREADS)
    reserve_memory: bool = True  # ask Ray for each actor's shard-file bytes, so actors land where they fit
    max_restarts: int = 3  # a dead actor process is started again this many times…
    max_task_retries: int = 3  # …and the searches it held are resubmitted this many times
    start_timeout_s: float = 300.0  # how long the open waits for every actor to be placed and loaded
    # actors holding each group of shards: searches take turns among them, and one that is down for good
    # is stepped over, so a group is lost only when all of its replicas are
    replicas: int = 1
    concurrency: int = 1  # searches one actor runs at once (threads; faiss searches without the GIL)

    def __post_init__(self) -> None:
        if (self.shards_per_actor < 1 or self.cpus_per_actor < 0 or self.threads < 0 or self.start_timeout_s <= 0
                or self.replicas < 1 or self.concurrency < 1):
            raise ValueError("shards_per_actor >= 1, cpus_per_actor >= 0, threads >= 0, start_timeout_s > 0, "
                             "replicas >= 1 and concurrency >= 1")


def shard_groups(n_shards: int, shards_per_actor: int) -> list[tuple[int, ...]]:
    """Positions of the shards each actor holds: consecutive runs, so a stable merge keeps shard order."""
    return [tuple(range(lo, min(n_shards, lo + shards_per_actor))) for lo in range(0, n_shards, shards_per_actor)]


class ShardActor:
    """The actor body: some shards of one collection, loaded once (mmap), searched like LocalShards."""

    def __init__(self, index_dir: str, info: VectorIndexInfo, kind: str, select: tuple[int, ...], threads: int):
        if threads:
            import faiss

            faiss.omp_set_num_threads(threads)
        self.shards = LocalShards(Path(index_dir), info, kind, select=select, mmap=True)
        self.answered = 0

    def ready(self) -> list[int]:
        """Vectors per shard held, for the driver to check against index.json."""
        return [int(s.ntotal) for s in self.shards.shards]

    def search(self, xq: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        self.answered += 1
        return self.shards.search(xq, k, allowed)

    def searches(self) -> int:
        """Searches this actor answered since it (re)started."""
        return self.answered

    def pid(self) -> int:
        return os.getpid()


class RayShards:
    """A ShardSearcher whose shards are held by Ray actors: fan a batch out to all, merge the answers."""

    def __init__(self, index_dir: Path, info: VectorIndexInfo, kind: str, *, config: RaySearchConfig) -> None:
        self.info, self.kind, self.config = info, kind, config
        self._ray, _ = init_ray(config.address, config.num_cpus)
        self.groups = shard_groups(len(info.shards), config.shards_per_actor)
        self.actors: list[Any] = []  # group by group: replica 0..R-1 of group 0, then of group 1, ...
        self._turn = itertools.count()  # which replica of each group the next search asks first
        try:
            self.actors = [self._start(Path(index_dir), g) for g in self.groups for _ in range(config.replicas)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _start(self, index_dir: Path, group: tuple[int, ...]) -> Any:
        cfg = self.config
        options: dict[str, Any] = {"num_cpus": cfg.cpus_per_actor, "max_restarts": cfg.max_restarts,
                                   "max_task_retries": cfg.max_task_retries, "scheduling_strategy": "SPREAD",
                                   "max_concurrency": cfg.concurrency}
        nbytes = sum(_file_size(index_dir / self.info.shards[i].file) for i in group)
        if cfg.reserve_memory and nbytes:
            options["memory"] = nbytes
        actor_class = self._ray.remote(ShardActor).options(**options)
        return actor_class.remote(str(index_dir), self.info, self.kind, group, cfg.threads)

    def _wait_ready(self) -> None:
        ray = self._ray
        try:
            held = ray.get([a.ready.remote() for a in self.actors], timeout=self.config.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ValueError(
                f"Ray could not place the {len(self.actors)} {self.kind} shard actors within "
                f"{self.config.start_timeout_s:.0f} s: the cluster lacks the memory they ask for (their shard "
                f"files' size) or CPUs (cpus_per_actor={self.config.cpus_per_actor}); `ray status` shows what "
                "is free") from None
        except ray.exceptions.RayError as e:
            raise ValueError(f"the {self.kind} shard actors failed to load their shards: {e}") from None
        per_actor = [g for g in self.groups for _ in range(self.config.replicas)]  # `actors`' order
        for group, counts in zip(per_actor, held, strict=True):
            expected = [self.info.shards[i].n for i in group]
            if counts != expected:
                files = [self.info.shards[i].file for i in group]
                raise ValueError(f"a shard actor read {files} with {counts} vectors where index.json says "
                                 f"{expected}: does every node see the same index folder?")

    def replicas_of(self, g: int, turn: int = 0) -> list[Any]:
        """The actors holding group `g`, in the order search number `turn` asks them (a turn per search)."""
        r = self.config.replicas
        mine = self.actors[g * r:(g + 1) * r]
        return mine[turn % r:] + mine[:turn % r]

    def search(self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (D, I) over every shard: one call per group of shards, all in flight at once, each to the
        group's replica whose turn it is; a replica down for good is stepped over. Merged in shard order."""
        ray = self._ray
        xq = np.ascontiguousarray(xq, np.float32)
        xq_ref = ray.put(xq) if xq.nbytes > INLINE_BYTES else xq
        allowed_ref = None if allowed is None else ray.put(np.asarray(allowed, np.int64))
        turn = next(self._turn)  # one atomic step: concurrent searches (a server's threads) take distinct turns
        order = [self.replicas_of(g, turn) for g in range(len(self.groups))]
        futures = [actors[0].search.remote(xq_ref, k, allowed_ref) for actors in order]
        results, lost = [], []
        for group, actors, future in zip(self.groups, order, futures, strict=True):
            answer = self._first_answer(future, actors[1:], xq_ref, k, allowed_ref)
            if answer is None:
                lost += [self.info.shards[i].file for i in group]
            else:
                results.append(answer)
        if lost:
            raise ShardUnavailableError(
                f"{self.kind} shard actor(s) died and could not be restarted (max_restarts="
                f"{self.config.max_restarts}, replicas={self.config.replicas}): {', '.join(lost)} cannot be "
                "searched; reopen the index")
        return merge_topk(results, k)

    def _first_answer(self, future: Any, others: list[Any], *args: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The answer of `future`, else of the other replicas asked in turn; None when all are down."""
        ray = self._ray
        for actor in [None, *others]:
            try:
                return ray.get(future if actor is None else actor.search.remote(*args))
            except ray.exceptions.RayActorError:
                continue
        return None

    def searches(self) -> list[int]:
        """Searches each actor answered, in `actors`' order."""
        return self._ray.get([a.searches.remote() for a in self.actors])

    def pids(self) -> list[int]:
        """The actors' process ids, in `actors`' order: group by group, replica by replica (tests kill one)."""
        return self._ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        """Kill this searcher's actors; the cluster itself stays up."""
        actors, self.actors = self.actors, []
        if actors and self._ray.is_initialized():
            for a in actors:
                self._ray.kill(a, no_restart=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # not visible to the driver: the actor reports it; reserve nothing
        return 0


def ray_shards(config: RaySearchConfig | None = None) -> ShardOpener:
    """The `shards=` opener of `open_index` / `IndexService` that holds every collection on Ray actors."""
    return partial(RayShards, config=config or RaySearchConfig())

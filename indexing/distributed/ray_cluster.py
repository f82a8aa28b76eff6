"""The Ray cluster a `--ray` command works on: its settings (`RayConfig`) and one session per command.

`ray_session(rc)` connects to the cluster at rc.address, or starts a local one, unless this process is
already connected, and shuts down only a cluster it started: so the embedding actors, the shard tasks
and the search actors of one command share one cluster. Ray itself is imported only here, and only
when a command asks for it (`import_ray` says how to install it). Nothing here imports torch: Ray
tasks that need only faiss (indexing.distributed.ray_shards) start without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "--ray needs Ray: pip install 'retr[distributed]'"


def import_ray() -> Any:
    """The `ray` module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None starts a local cluster; "auto" joins `ray start --head`; "ray://host:10001"
    num_cpus: int | None = None  # CPUs of a local cluster this runner starts (None: all of them)
    num_actors: int = 0  # 0: one per slot, i.e. cluster CPUs // cpus_per_actor (GPUs // gpus_per_actor)
    cpus_per_actor: float = 1.0  # also the actor's torch threads (at least 1)
    gpus_per_actor: float = 0.0  # > 0 for CUDA encoders: one model actor per GPU slot
    max_restarts: int = 3  # a dead actor process is started again this many times…
    max_task_retries: int = 3  # …and the chunk calls it held are resubmitted this many times
    in_flight: int = 2  # chunks queued per actor, so it never waits for the driver between chunks

    def __post_init__(self) -> None:
        if self.num_actors < 0 or self.cpus_per_actor <= 0 or self.gpus_per_actor < 0 or self.in_flight < 1:
            raise ValueError("num_actors >= 0, cpus_per_actor > 0, gpus_per_actor >= 0 and in_flight >= 1")


def init_ray(address: str | None, num_cpus: int | None = None) -> tuple[Any, bool]:
    """Connect to the cluster at `address` (None: start a local one of `num_cpus` CPUs) unless this process
    already did; returns the `ray` module and whether this call connected."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    return ray, True


class ray_session:  # noqa: N801 (a context manager used like a function)
    """Connect to (or start) the cluster unless this process already did; shut down only what we started."""

    def __init__(self, rc: RayConfig) -> None:
        self.rc, self.started = rc, False

    def __enter__(self) -> Any:
        ray, self.started = init_ray(self.rc.address, self.rc.num_cpus)
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import_ray().shutdown()

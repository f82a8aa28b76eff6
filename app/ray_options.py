"""What `--ray` / `--ray-address` build for a command: one cluster, embedding actors, shard-writing tasks.

Ray and torch-free Ray code are imported only when a command asks for Ray; `import_ray` fails first,
with the install hint, before any work starts.
"""

from __future__ import annotations

from typing import Any


def ray_cluster(address: str | None) -> Any:
    """A context manager: the command's one cluster (joined at `address`, or started and stopped locally)."""
    from indexing.distributed.ray_cluster import RayConfig, ray_session

    return ray_session(RayConfig(address=address))


def ray_embed_runner(address: str | None, model: str, device: str) -> Any:
    """A RayEmbedRunner: `model` embedding on Ray actors (one per GPU with cuda), for build_index /
    add_to_index's `runner` and curation's `runner_for`."""
    from indexing.distributed.ray_cluster import RayConfig, import_ray
    from indexing.distributed.ray_embed import RayEmbedRunner, registry_encoder

    import_ray()  # the install hint now, before any work
    ray_config = RayConfig(address=address, gpus_per_actor=1.0 if device.startswith("cuda") else 0.0)
    return RayEmbedRunner(registry_encoder(model, device), ray_config)


def ray_shard_writer(address: str | None) -> Any:
    """A RayShardWriter, build_index's `shard_writer`: each shard written in a Ray task."""
    from indexing.distributed.ray_cluster import RayConfig
    from indexing.distributed.ray_shards import RayShardWriter

    return RayShardWriter(RayConfig(address=address))

"""Local build vs `--ray` build of the same corpus on this one machine: the cost of distributing.

    .venv/bin/python bench/bench_ray_build.py [--n 2000] [--model retr:default] [--cpus 2] [--shards 2]

Writes N colour images (tests/conftest.py's generator, 64 px) to a temp folder, builds the index once with
the local runner (DataLoader decode workers + the model in one process) and once with RayEmbedRunner on a
local cluster of --cpus CPUs (one model actor per CPU, each decoding its own chunks; then the --shards
shards written by Ray tasks from the one trained quantizer), and checks the two hold the same ids and
shard files. Expected output shape:

    corpus: 2000 images, model retr:default, chunk 256, 2 shards, 2 CPUs
    local build   41.2 s  (embed 38.9 s)
    ray build     47.0 s  (embed 44.6 s, of which cluster start ~6 s)
    overhead      1.14x total, 1.15x embed  (goal <= 1.2x)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from indexing.build import IndexConfig, build_index  # noqa: E402
from indexing.distributed.ray_cluster import RayConfig, ray_session  # noqa: E402
from indexing.distributed.ray_embed import RayEmbedRunner, registry_encoder  # noqa: E402
from indexing.distributed.ray_shards import RayShardWriter  # noqa: E402
from indexing.embed import EmbedConfig  # noqa: E402
from indexing.sources import list_items  # noqa: E402
from retrieval.encoders import load_encoder  # noqa: E402
from retrieval.search import open_index  # noqa: E402
from tests.conftest import COLOURS, colour_image  # noqa: E402


def write_corpus(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    colours = list(COLOURS.items())
    for i in range(n):
        name, rgb = colours[i % len(colours)]
        colour_image(rgb, seed=i, size=64).save(folder / f"{i:06d}-{name}.jpg")
        (folder / f"{i:06d}-{name}.txt").write_text(f"a {name} square\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="retr:default")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--shards", type=int, default=2, help="written by Ray tasks in the Ray build")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_corpus(root / "imgs", args.n)
        items = list_items(str(root / "imgs"))
        encoder = load_encoder(args.model, device="cpu")
        config = IndexConfig(shards=args.shards,
                             embed=EmbedConfig(batch_size=64, num_workers=args.cpus, chunk_size=args.chunk_size))
        print(f"corpus: {len(items)} images, model {args.model}, chunk {args.chunk_size}, {args.shards} shards, "
              f"{args.cpus} CPUs")
        t0 = time.perf_counter()
        local = build_index(items, root / "local", encoder, config, progress=False)
        t_local = time.perf_counter() - t0
        print(f"local build {t_local:7.1f} s  (embed {local.embed.seconds:.1f} s)")
        runner = RayEmbedRunner(registry_encoder(args.model, "cpu"), RayConfig(num_cpus=args.cpus))
        t0 = time.perf_counter()
        with ray_session(RayConfig(num_cpus=args.cpus)):  # one cluster for the embedding and the shards, as the CLI
            remote = build_index(items, root / "ray", encoder, config, progress=False, runner=runner,
                                 shard_writer=RayShardWriter())
        t_ray = time.perf_counter() - t0
        print(f"ray build   {t_ray:7.1f} s  (embed {remote.embed.seconds:.1f} s, cluster start included)")
        print(f"overhead    {t_ray / t_local:.2f}x total, {remote.embed.seconds / local.embed.seconds:.2f}x embed "
              "(goal <= 1.2x)")
        a = open_index(root / "local", encoder_factory=lambda spec: encoder)
        b = open_index(root / "ray", encoder_factory=lambda spec: encoder)
        same = np.array_equal(a.meta.all_ids(), b.meta.all_ids())
        print(f"same ids: {same} ({len(a.meta.all_ids())} items); same shard files: "
              f"{local.manifest.image.shards == remote.manifest.image.shards}")


if __name__ == "__main__":
    main()

"""The 1M-vector index `bench_serve.py` serves (and the sharded one `bench_ray_search.py` searches):
synthetic vectors from bench_index's clustered generator, written as a real index folder through the
library's own writers (embedding chunks, then the image collection chosen and tuned like a real build,
split in shards of whole chunks), with the real model's spec, so queries go through its text tower.
Built once and cached; reused while its parameters match.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYNTHETIC_SOURCE = "bench_serve synthetic"  # provenance of the cached synthetic index: ours to rebuild
SEGMENT = "seg-000"
GEN_CHUNKS = 24  # embedding chunks generated at a time: 24 x 2048 rows bounds the generator's memory


@functools.cache
def encoder_for(spec: str):
    """One load per model for the whole run: the synthetic build and every server share it."""
    from retrieval.encoders import load_encoder

    return load_encoder(spec)


@dataclass(frozen=True)
class _Embedded:
    """What store.item_table reads of an embedded item; a synthetic vector has no file behind it."""

    index: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    phash: int | None = None  # perceptual hash (pixel dedup): none without pixels


class _SyntheticItems(Sequence):
    """Items 0..n-1 as store.item_table sees them: path synthetic/<i>.png, caption "item <i>"."""

    def __init__(self, n: int) -> None:
        from indexing.sources import Item

        self.n, self._item = n, Item

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self._item(path=f"synthetic/{i}.png", caption=f"item {i}")


def synthetic_dir(n: int, spec: str, dim: int, shards: int = 1) -> Path:
    from indexing.cache import cache_dir

    split = f"-s{shards}" if shards > 1 else ""  # one shard keeps the name earlier runs cached it under
    return cache_dir() / "bench" / f"serve-synthetic-{n}-{dim}-{spec.replace(':', '-')}{split}"


def _reusable(folder: Path, n: int, encoder, shards: int = 1) -> bool:
    from indexing.manifest import read_manifest

    if not (folder / "index.json").exists():
        return False
    m = read_manifest(folder)
    return (m.provenance.get("source") == SYNTHETIC_SOURCE and m.model == encoder.name and m.n_items == n
            and m.dim == encoder.dim and m.model_weights == encoder.weights_id and len(m.image.shards) == shards)


def _shard_rows(n: int, shards: int, chunk_size: int) -> list[np.ndarray]:
    """Rows of each shard: runs of whole embedding chunks, as even as chunks allow, as a real build splits."""
    runs = [c for c in np.array_split(np.arange(-(-n // chunk_size)), shards) if len(c)]
    return [np.arange(c[0] * chunk_size, min(n, (c[-1] + 1) * chunk_size)) for c in runs]


def _clear_ours(folder: Path) -> None:
    """Remove a stale or half-built synthetic index; refuse to touch a folder that is not one."""
    if not folder.exists():
        return
    job = folder / "embeddings" / SEGMENT / "job.json"
    ours = job.exists() and json.loads(job.read_text()).get("source") == SYNTHETIC_SOURCE
    if not ours and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not a {SYNTHETIC_SOURCE} index; pass another --cache")
    shutil.rmtree(folder)


def _write_vectors(folder: Path, n: int, encoder, seed: int) -> tuple[np.ndarray, object]:
    """Chunk files as indexing/embed.py writes them (float16 image vectors, no captions), and the
    same vectors as float32 in a scratch .npy memmap for the index build; returns (xb, mixture)."""
    try:
        from bench_index import Mixture  # run as a script from bench/
    except ImportError:
        from bench.bench_index import Mixture  # imported from the repository root (tests)

    from indexing.atomic import write_json, write_npy, write_parquet
    from indexing.embed import EmbedConfig
    from indexing.store import REJECT_SCHEMA, caption_table, chunk_paths, item_table

    seg_dir, cfg = folder / "embeddings" / SEGMENT, EmbedConfig()
    cs, dim = cfg.chunk_size, encoder.dim
    write_json(seg_dir / "job.json", {"source": SYNTHETIC_SOURCE, "model": encoder.name, "dim": dim, "n_items": n,
                                      "seed": seed, "chunk_size": cs, "storage_dtype": cfg.storage_dtype})
    mix, rng, items = Mixture.make(n, dim, seed), np.random.default_rng(seed + 1), _SyntheticItems(n)
    xb = np.lib.format.open_memmap(folder / "build-xb.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    no_text, no_captions = np.zeros((0, dim), np.float16), caption_table([], [], [])
    for lo in range(0, n, GEN_CHUNKS * cs):
        hi = min(n, lo + GEN_CHUNKS * cs)
        x16 = mix.sample(hi - lo, rng).astype(np.float16)  # stored like embed's default storage_dtype
        xb[lo:hi] = x16  # the index is built from what the store holds, as a real build reads it back
        for c0 in range(lo, hi, cs):
            paths = chunk_paths(seg_dir, c0 // cs)
            write_npy(paths.image, x16[c0 - lo : min(hi, c0 + cs) - lo])
            write_npy(paths.text, no_text)
            write_parquet(paths.captions, no_captions)
            write_parquet(paths.rejects, REJECT_SCHEMA.empty_table())
            ok = [_Embedded(i) for i in range(c0, min(hi, c0 + cs))]
            write_parquet(paths.meta, item_table(ok, items, 0, c0 // cs))  # last: the chunk's commit marker
    xb.flush()
    return xb, mix


def build_synthetic(folder: Path, n: int, spec: str, seed: int = 0, shards: int = 1, *,
                    encoder=None, config=None) -> float:
    """Write a complete index folder of n synthetic vectors for model `spec` in `shards` shards; returns
    seconds taken. `encoder` (anything with name, dim, weights_id) stands in for loading `spec`;
    `config` is the build's IndexConfig (default: the CLI's)."""
    from indexing.atomic import write_parquet
    from indexing.build import IndexConfig, build_collection
    from indexing.embed import EmbedConfig
    from indexing.manifest import IndexManifest, git_sha, write_manifest
    from indexing.metadata import SegmentRows, write_metadata
    from indexing.store import REJECT_SCHEMA, read_segment_captions, read_segment_meta

    encoder = encoder or encoder_for(spec)
    config = config or IndexConfig(shards=shards)
    _clear_ours(folder)
    t = [time.perf_counter()]
    xb, mix = _write_vectors(folder, n, encoder, seed)
    t.append(time.perf_counter())
    seg_dir = folder / "embeddings" / SEGMENT
    captions, _ = read_segment_captions(seg_dir)
    write_metadata(folder / "metadata.duckdb", [SegmentRows(SEGMENT, read_segment_meta(seg_dir), captions)])
    t.append(time.perf_counter())
    # Tuning queries: fresh draws from the mixture (a real build uses its caption vectors), not database rows.
    xq = mix.sample(config.n_queries, np.random.default_rng(seed + 2))
    groups = _shard_rows(n, shards, EmbedConfig().chunk_size)
    image = build_collection("image", folder, xb, np.arange(n, dtype=np.int64), groups, xq, config)
    t.append(time.perf_counter())
    del xb
    (folder / "build-xb.npy").unlink()
    write_parquet(folder / "rejects.parquet", REJECT_SCHEMA.empty_table())
    write_manifest(folder, IndexManifest(
        model=encoder.name, model_weights=encoder.weights_id, dim=encoder.dim, image=image, text=None,
        segments=(SEGMENT,), n_items=n, next_id=n, next_caption_id=0, n_captions=0, n_rejected=0,
        provenance={"source": SYNTHETIC_SOURCE, "seed": seed, "git_sha": git_sha(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "config": {"shards": shards, "max_memory_bytes": config.max_memory_bytes, "device": "cpu"}},
    ))
    t.append(time.perf_counter())
    phases = zip(("vectors + chunk files", "metadata", "index train/add/tune", "write"), t, t[1:], strict=False)
    print(f"synthetic index: {n} x {encoder.dim} for {spec} in {len(groups)} shards built in {t[-1] - t[0]:.0f} s "
          f"({', '.join(f'{name} {b - a:.0f} s' for name, a, b in phases)}) -> {folder}", flush=True)
    return t[-1] - t[0]


def synthetic_index(n: int, spec: str, cache: Path | None, shards: int = 1) -> Path:
    """The cached synthetic index for (n, spec, shards), built when absent or stale."""
    encoder = encoder_for(spec)
    folder = cache or synthetic_dir(n, spec, encoder.dim, shards)
    if _reusable(folder, n, encoder, shards):
        print(f"synthetic index: reusing {folder}", flush=True)
    else:
        build_synthetic(folder, n, spec, shards=shards)
    return folder


# --- the load generator (runs in a child process) ----------------------------------------------------

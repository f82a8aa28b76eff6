"""The `retr` command line: parse arguments, call the library, format the output.

This module holds the root app and `retr index`; each other group has its own module:
`search_cli` (search), `models_cli` (train, eval, models), `data_cli` (data), `console` (output).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer

from app import models_cli, search_cli, serve_cli
from app.console import fail, say
from app.curate_cli import curate_app
from app.data_cli import data_app
from app.models_cli import DEFAULT_MODEL, Device, models_app
from app.ray_options import ray_cluster, ray_embed_runner, ray_shard_writer
from indexing import build as build_mod
from indexing import resolve
from indexing.choose import parse_memory
from indexing.embed import EmbedConfig
from indexing.lock import check_unlocked
from indexing.manifest import model_mismatch, read_manifest
from indexing.sources import ManifestColumns
from retrieval import search as search_mod  # noqa: F401 (tests reach the library through cli.search_mod)

app = typer.Typer(help="retr: image-text retrieval and dataset curation.", no_args_is_help=True)
index_app = typer.Typer(help="Build, grow and inspect sharded FAISS indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(curate_app, name="curate")
app.command("search")(search_cli.search)
app.command("train")(models_cli.train_cmd)
app.command("eval")(models_cli.eval_cmd)
app.command("serve")(serve_cli.serve)
app.command("ui")(serve_cli.ui)


def _load_encoder(spec: str, device: str):
    from retrieval.encoders import load_encoder

    return load_encoder(spec, device=device)


def _index_config(
    shards: int,
    max_memory: str,
    target_recall: float,
    device: str,
    batch_size: int,
    workers: int,
    chunk_size: int,
    storage_dtype: str,
    precision: str,
) -> build_mod.IndexConfig:
    embed = EmbedConfig(
        batch_size=batch_size,
        num_workers=workers,
        chunk_size=chunk_size,
        storage_dtype=storage_dtype,
        precision=precision,
    )
    return build_mod.IndexConfig(
        shards=shards,
        max_memory_bytes=parse_memory(max_memory),
        target_recall=target_recall,
        device=device,
        embed=embed,
    )


def _report(report: build_mod.BuildReport, verb: str) -> None:
    m, e = report.manifest, report.embed
    captions = f" · {m.n_captions} captions" if m.n_captions > m.n_items else ""
    n_shards = len(m.image.shards)
    search = f"{m.image.search_param}={m.image.search_value}" if m.image.search_param else "exact search"
    say(
        (verb, "green"),
        f" {m.n_items} items{captions} · model {m.model} · image index {m.image.factory} "
        f"({n_shards} shard{'' if n_shards == 1 else 's'}, {search}, "
        f"recall@{m.image.recall_k}={m.image.measured_recall:.3f}) · {report.seconds:.1f}s",
    )
    if e.n_chunks_resumed:
        say(f"resumed: {e.n_chunks_resumed}/{e.n_chunks} chunks were already embedded")
    if m.n_rejected:
        rejects = pq.read_table(report.rejects_path).to_pylist()
        say((f"{m.n_rejected} items rejected", "yellow"), f" (all listed in {report.rejects_path}):")
        for r in rejects[:10]:
            say(f"  {r['path']}: {r['reason']} — {r['message']}")


def _notes(listing: resolve.Listing) -> None:
    for note in listing.notes:
        say(("note:", "cyan"), " ", note)


Shards = Annotated[int, typer.Option(help="Number of index shards (built independently, searched together).")]
MaxMemory = Annotated[str, typer.Option(help="Memory budget for the index, e.g. 4GB, 512MB.")]
TargetRecall = Annotated[float, typer.Option(help="recall@10 vs exact that nprobe/efSearch are tuned to reach.")]
BatchSize = Annotated[int, typer.Option(help="Images per model forward.")]
Workers = Annotated[int, typer.Option(help="Decode worker processes (0 = decode in the main process).")]
ChunkSize = Annotated[int, typer.Option(help="Items per embedding chunk file (the unit of resume).")]
StorageDtype = Annotated[str, typer.Option(help="float16 or float32 for stored embeddings.")]
Precision = Annotated[str, typer.Option(
    help="fp32, fp16 or bf16 (fp16 on CUDA only; bf16 also on CPUs, fast with AVX512-BF16).")]
Model = Annotated[str, typer.Option(help="Encoder spec; see `retr models list`.")]


@index_app.command("build")
def index_build(
    source: Annotated[str, typer.Argument(help="Folder, manifest (.jsonl/.csv/.parquet), .tar glob, or corpus name.")],
    out: Annotated[Path, typer.Option(help="Index folder to create.")],
    model: Model = DEFAULT_MODEL,
    shards: Shards = 1,
    max_memory: MaxMemory = "4GB",
    target_recall: TargetRecall = 0.95,
    device: Device = "cpu",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    chunk_size: ChunkSize = 2048,
    storage_dtype: StorageDtype = "float16",
    precision: Precision = "fp32",
    image_column: Annotated[str, typer.Option(help="Manifest column with image paths/URLs.")] = "image",
    caption_column: Annotated[str, typer.Option(help="Manifest column with captions.")] = "caption",
    replace_stale: Annotated[
        bool, typer.Option(help="If OUT holds a finished index: keep it if MODEL still loads the weights it was "
                           "built with, else delete and rebuild it.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Embed on Ray actors, one per CPU (GPU) slot; without --ray-address it starts a local "
        "cluster (needs `pip install 'retr[distributed]'`; docs/scale.md).")] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (implies --ray): auto for `ray start --head` on this machine, or "
        "ray://HOST:10001.")] = None,
    rerank_cache: Annotated[str | None, typer.Option(
        help="Also store every image's patch tokens for this reranker (hf:DIR, retr:itm), so `--rerank K "
        "--reranker SPEC` reads them instead of decoding K images per query (`retr index rerank-cache`).")] = None,
) -> None:
    """Embed SOURCE and build a sharded index in OUT (rerun the same command to resume)."""
    try:
        config = _index_config(
            shards, max_memory, target_recall, device, batch_size, workers, chunk_size, storage_dtype, precision
        )
        check_unlocked(out, action="build")
        listing = resolve.resolve_source(source, ManifestColumns(image_column, caption_column), progress=not quiet)
        _notes(listing)
        items = listing.items
        encoder = _load_encoder(model, device)
        if replace_stale and (out / "index.json").exists():
            why = model_mismatch(read_manifest(out), encoder)
            if why is None:
                say(f"{out} is up to date with {encoder.name}; kept")
                return
            say(f"rebuilding {out}: {why}")
            shutil.rmtree(out)
        reranker = _load_reranker(rerank_cache, device) if rerank_cache else None  # a bad spec fails before embedding
        ray_on = bool(ray or ray_address)
        runner = {"runner": ray_embed_runner(ray_address, model, device),
                  "shard_writer": ray_shard_writer(ray_address)} if ray_on else {}
        with ray_cluster(ray_address) if runner else contextlib.nullcontext():  # one cluster for embed + shards
            report = build_mod.build_index(items, out, encoder, config, source=source, progress=not quiet, **runner)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    _report(report, "built")
    if reranker is not None:
        _cache_tokens(out, reranker, quiet)


@index_app.command("add")
def index_add(
    index: Annotated[Path, typer.Argument(help="Existing index folder.")],
    source: Annotated[str, typer.Argument(help="Folder, manifest, .tar glob or corpus name with new items.")],
    device: Device = "cpu",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    image_column: Annotated[str, typer.Option(help="Manifest column with image paths/URLs.")] = "image",
    caption_column: Annotated[str, typer.Option(help="Manifest column with captions.")] = "caption",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Embed the new items on Ray actors (see `index build --ray`; docs/scale.md).")] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (implies --ray): auto, or ray://HOST:10001.")] = None,
) -> None:
    """Append items of SOURCE that INDEX does not hold yet (by path), without rebuilding."""
    try:
        manifest = read_manifest(index)
        config = build_mod.IndexConfig(device=device, embed=EmbedConfig(batch_size=batch_size, num_workers=workers))
        check_unlocked(index, action="add to")
        listing = resolve.resolve_source(source, ManifestColumns(image_column, caption_column), progress=not quiet)
        _notes(listing)
        encoder = _load_encoder(manifest.model, device)
        # embedding on Ray; the one new shard per collection is written in this process
        runner = {"runner": ray_embed_runner(ray_address, manifest.model, device)} if ray or ray_address else {}
        with ray_cluster(ray_address) if runner else contextlib.nullcontext():
            report = build_mod.add_to_index(listing.items, index, encoder, config, progress=not quiet, **runner)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    if report.embed.n_items == 0:
        say("nothing to add: every item of the source is already indexed")
    _report(report, "added to")


@index_app.command("rerank-cache")
def index_rerank_cache(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    reranker: Annotated[str, typer.Option(help="Reranker spec whose patch tokens to store: hf:DIR or retr:itm.")],
    device: Device = "cpu",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Store every indexed image's patch tokens for a reranker, so reranked searches read them instead of
    decoding K images per query. Rerun after `retr index add` (or when killed): finished chunks are kept."""
    try:
        read_manifest(index)
        loaded = _load_reranker(reranker, device)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    _cache_tokens(index, loaded, quiet)


def _load_reranker(spec: str, device: str):
    from retrieval.rerank import load_reranker

    return load_reranker(spec, device)


def _cache_tokens(index: Path, reranker, quiet: bool) -> None:
    from retrieval.rerank.token_cache import build_token_cache

    try:
        r = build_token_cache(index, reranker, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    per_item = r.bytes / max(1, r.items + r.unreadable)
    say(("cached", "green"), f" {reranker.name} tokens of {r.items} images in {r.folder} · "
        f"{r.bytes / 2**20:.1f} MiB ({per_item:,.0f} B/image) · {r.chunks_built} chunks computed · {r.seconds:.0f}s"
        + (f" · {r.unreadable} unreadable (their files are tried at query time)" if r.unreadable else ""))


@index_app.command("info")
def index_info(index: Annotated[Path, typer.Argument(help="Index folder.")]) -> None:
    """Print the index manifest (model, index type, shards, measured recall) as JSON."""
    from indexing.manifest import read_manifest

    try:
        manifest = read_manifest(index)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    typer.echo(json.dumps(manifest.to_json(), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

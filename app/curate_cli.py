"""`retr curate`: dataset curation stages (indexing/curation/). Each command parses its options into a
`StageSpec` and hands it to the library; `run` reads the same specs from a config file."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from app.console import fail, say
from app.models_cli import AutoDevice
from app.ray_options import ray_cluster, ray_embed_runner
from indexing.curation.colour import DEFAULT_TOLERANCE
from indexing.curation.pipeline import read_pipeline, run_pipeline
from indexing.curation.stages import StageSpec, run_stage
from indexing.embed import EmbedConfig

curate_app = typer.Typer(
    help="Curate a training set: dedup, retrieve near seeds, cluster, balanced sample (each writes "
    "kept.parquet, dropped.parquet, report.html, curate.json to --out).",
    no_args_is_help=True,
)

Source = Annotated[str, typer.Argument(
    help="Folder, manifest, .tar glob, corpus name, an index folder (its vectors are reused) or an earlier "
    "stage's kept.parquet.")]
Out = Annotated[Path, typer.Option(help="Folder for this stage's files (rerun the same command to resume).")]
Model = Annotated[str | None, typer.Option(
    help="Encoder spec (`retr models list`); default: the SOURCE's stored vectors, else the stage's default.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]
BatchSize = Annotated[int, typer.Option(help="Images per model forward.")]
Workers = Annotated[int, typer.Option(help="Decode worker processes (0 = decode in the main process).")]
RayFlag = Annotated[bool, typer.Option(
    "--ray", help="Embed the SOURCEs that need it on Ray actors, one per CPU (GPU) slot; without --ray-address "
    "it starts a local cluster (needs `pip install 'retr[distributed]'`; docs/scale.md).")]
RayAddress = Annotated[str | None, typer.Option(
    help="Ray cluster to join (implies --ray): auto for `ray start --head` on this machine, or ray://HOST:10001.")]


def _spec(stage: str, source: str, out: Path, model: str | None, params: dict, *, inputs: dict | None = None,
          embed: EmbedConfig = EmbedConfig(), truth: str | None = None, quiet: bool = False) -> StageSpec:
    params = {k: v for k, v in params.items() if v is not None}
    return StageSpec(stage, source, out, model, params, inputs or {}, embed, truth=truth, progress=not quiet)


def _memory(text: str) -> int:
    from indexing.choose import parse_memory

    try:
        return parse_memory(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _encoder_loader(device: str):
    def load(spec: str):
        from retrieval.encoders import load_encoder

        return load_encoder(spec, device=device)

    return load


def _runner_for(ray: bool, ray_address: str | None, device: str):
    """run_stage's `runner_for`: None (embed here), or model spec -> its embedding on Ray actors."""
    if not (ray or ray_address):
        return None
    from retrieval.encoders import resolve_device

    device = resolve_device(device)  # the actors get the driver's answer to "auto"
    return lambda spec: ray_embed_runner(ray_address, spec, device)


def _go(spec: StageSpec, device: str, ray: bool, ray_address: str | None) -> None:
    try:
        runner_for = _runner_for(ray, ray_address, device)
        with ray_cluster(ray_address) if runner_for else contextlib.nullcontext():  # one cluster for every input
            record = run_stage(spec, _encoder_loader(device), runner_for)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    _summary(spec.out, record)


def _summary(out: Path, record) -> None:
    c = record.counts
    dropped = ", ".join(f"{n:,} {r}" for r, n in c["dropped"].items()) or "none"
    say((f"{record.stage}", "green"), f": {c['input']:,} in · {c['kept']:,} kept · dropped {dropped} · "
        f"model {record.model} · {record.seconds:.1f}s")
    say(f"  {out / 'kept.parquet'}  {out / 'dropped.parquet'}  {out / 'report.html'}")


@curate_app.command("dedup")
def dedup_cmd(
    source: Source,
    out: Out,
    model: Model = None,
    threshold: Annotated[float | None, typer.Option(
        help="Cosine similarity at or above which two items are near-duplicates (default: the model's measured one).")
    ] = None,
    keep: Annotated[str, typer.Option(help="Which item of a group stays: first, largest or central.")] = "first",
    against: Annotated[list[str] | None, typer.Option(
        help="An evaluation SOURCE: pool items within the threshold of any of its items are dropped (repeatable).")
    ] = None,
    k: Annotated[int, typer.Option(help="Neighbours per item in the k-NN graph.")] = 16,
    exact: Annotated[bool, typer.Option(help="Drop identical files (sha256).")] = True,
    pixel: Annotated[bool, typer.Option(
        help="Drop pixel copies: perceptual hashes a few bits apart, 8×8 colour grids agreeing (re-encodes, resizes).")
    ] = True,
    pixel_bits: Annotated[int, typer.Option(help="Perceptual-hash bits (of 64) two pixel copies may differ in.")
                          ] = 8,
    pixel_colour: Annotated[float, typer.Option(
        help="Pixel copies must also agree in colour: largest difference of 8×8 mean-colour grids (0-1; 0 = off).")
    ] = DEFAULT_TOLERANCE,
    near: Annotated[bool, typer.Option(help="Drop near-duplicates by embedding.")] = True,
    truth: Annotated[str | None, typer.Option(
        help="Metadata column of true duplicate groups: the report draws precision/recall against the threshold.")
    ] = None,
    max_memory: Annotated[str, typer.Option(
        help="Working memory of the k-NN graph beyond the vectors themselves (n × d × 4 bytes), e.g. 2GB.")
    ] = "1GB",
    device: AutoDevice = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
) -> None:
    """Drop exact, pixel and near-duplicates (one kept per group), and evaluation leaks."""
    params = {"threshold": threshold, "keep": keep, "k": k, "exact": exact, "pixel": pixel, "pixel_bits": pixel_bits,
              "pixel_colour": pixel_colour, "near": near, "max_memory": _memory(max_memory)}
    inputs = {"against": list(against)} if against else {}
    _go(_spec("dedup", source, out, model, params, inputs=inputs, truth=truth,
              embed=EmbedConfig(batch_size=batch_size, num_workers=workers), quiet=quiet), device, ray, ray_address)


@curate_app.command("retrieve")
def retrieve_cmd(
    source: Source,
    seeds: Annotated[str, typer.Option(help="SOURCE of curated seed images.")],
    out: Out,
    mode: Annotated[str, typer.Option(
        help="sample: the k nearest pool items per seed; cluster: k-means the pool, keep the clusters seeds fall in."
    )] = "sample",
    k: Annotated[int, typer.Option(help="sample mode: pool items kept per seed.")] = 32,
    threshold: Annotated[float | None, typer.Option(help="sample mode: only neighbours at cosine ≥ this.")] = None,
    clusters: Annotated[int, typer.Option(help="cluster mode: k-means clusters of the pool.")] = 100,
    per_cluster: Annotated[int, typer.Option(help="cluster mode: at most this many items kept per cluster.")] = 1000,
    model: Model = None,
    device: AutoDevice = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
) -> None:
    """Keep the pool items closest to curated seeds (DINOv2's retrieval step)."""
    params = {"mode": mode, "k": k, "threshold": threshold, "clusters": clusters, "per_cluster": per_cluster}
    _go(_spec("retrieve", source, out, model, params, inputs={"seeds": seeds},
              embed=EmbedConfig(batch_size=batch_size, num_workers=workers), quiet=quiet), device, ray, ray_address)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--levels takes cluster counts like 1000,100,10, got {text!r}") from None
    if not levels:
        raise typer.BadParameter("--levels needs at least one cluster count")
    return levels


Levels = Annotated[str, typer.Option(
    help="Clusters per level, finest first, e.g. 1000,100,10 (hierarchical k-means with resampling).")]


@curate_app.command("cluster")
def cluster_cmd(
    source: Source,
    out: Out,
    levels: Levels = "100,10",
    seed: Annotated[int, typer.Option(help="Random seed of the k-means.")] = 0,
    model: Model = None,
    device: AutoDevice = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
) -> None:
    """Label every item with its cluster at each level (hierarchical k-means, Vo et al. 2024); drops nothing."""
    _go(_spec("cluster", source, out, model, {"levels": _levels(levels), "seed": seed},
              embed=EmbedConfig(batch_size=batch_size, num_workers=workers), quiet=quiet), device, ray, ray_address)


@curate_app.command("sample")
def sample_cmd(
    source: Source,
    out: Out,
    n: Annotated[int, typer.Option(help="Items to keep.")],
    strategy: Annotated[str, typer.Option(help="Within a cluster: random, or central (closest to its centroid).")
                        ] = "random",
    levels: Levels = "100,10",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    model: Model = None,
    device: AutoDevice = "auto",
    batch_size: BatchSize = 64,
    workers: Workers = 2,
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
) -> None:
    """Keep N items balanced across clusters (hierarchical sampling, Vo et al. 2024)."""
    params = {"n": n, "strategy": strategy, "levels": _levels(levels), "seed": seed}
    _go(_spec("sample", source, out, model, params,
              embed=EmbedConfig(batch_size=batch_size, num_workers=workers), quiet=quiet), device, ray, ray_address)


@curate_app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="A TOML file of stages (docs/curation.md).")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default: the config's `out`).")] = None,
    device: AutoDevice = "auto",
    quiet: Quiet = False,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
) -> None:
    """Chain stages from a config file; each stage's kept.parquet feeds the next; resumable stage by stage."""
    try:
        pipeline = read_pipeline(config, out=out, progress=not quiet)
        runner_for = _runner_for(ray, ray_address, device)
        with ray_cluster(ray_address) if runner_for else contextlib.nullcontext():  # one cluster for every stage
            for spec, record, fresh in run_pipeline(pipeline, _encoder_loader(device), runner_for):
                if not fresh:
                    say(("done before:", "cyan"), f" {spec.out}")
                _summary(spec.out, record)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e

"""`retr train`, `retr eval` and `retr models`: the model side of the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.console import fail, out_console, say
from indexing.manifest import read_manifest
from retrieval.rerank.rerank import MAX_RERANK

DEFAULT_MODEL = "retr:default"
AutoDevice = Annotated[str, typer.Option(help="auto (cuda when torch sees a GPU, else cpu), cpu or cuda.")]
Device = Annotated[str, typer.Option(help="cpu or cuda (faiss GPU + model on GPU).")]
models_app = typer.Typer(help="The encoder registry.", no_args_is_help=True)


def _load_encoder(spec: str, device: str):
    from retrieval.encoders import load_encoder

    return load_encoder(spec, device=device)


def train_cmd(
    config: Annotated[Path, typer.Option(help="Training config JSON (see retrieval/training/configs/).")],
    device: AutoDevice = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train the heads of a dual encoder on locked pretrained towers, or an ITM reranker on a dual encoder's
    towers (a config with "objective": "itm"); rerun to resume."""
    from indexing.cache import cache_dir
    from retrieval.encoders import resolve_device
    from retrieval.encoders.retr_models import tower_bridge
    from retrieval.training.config import read_config
    from retrieval.training.itm_loop import is_itm_config
    from retrieval.training.loop import train

    if is_itm_config(config):
        return _train_itm(config, device, quiet)
    try:
        cfg = read_config(config)
        bridge = tower_bridge(cfg.image_tower, resolve_device(device), cfg.bridge, trim=cfg.trim_border,
                              text_tower=cfg.text_tower)
        report = train(cfg, bridge, cache=cache_dir(), progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    say(
        ("trained", "green"),
        f" {report.out} · {report.n_pairs} pairs, {report.n_texts} caption strings · "
        f"loss {report.first_loss:.3f} → {report.last_loss:.3f} · {report.seconds:.0f}s",
    )
    typer.echo(f"retr:{report.out}")


def _train_itm(config: Path, device: str, quiet: bool) -> None:
    from indexing.cache import cache_dir
    from retrieval.encoders import resolve_device
    from retrieval.training.itm_loop import read_itm_config, train_itm

    try:
        report = train_itm(read_itm_config(config), resolve_device(device), cache=cache_dir(), progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    say(("trained", "green"), f" {report.out} · ITM reranker, {report.n_pairs} pairs · loss {report.first_loss:.3f} → "
        f"{report.last_loss:.3f} · weight {report.weight:g} · {report.seconds:.0f}s")


def _model_spec(model_or_index: str) -> str:
    """An index folder stands for the model it was built with."""
    if (Path(model_or_index) / "index.json").is_file():
        return read_manifest(Path(model_or_index)).model
    return model_or_index


def _slug(name: str) -> str:
    """A file-name-safe version of a model spec or section name: 'retr:default' -> 'retr-default'."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "model"


def _print_eval(results: dict[str, dict[str, dict[str, float]]], title: str = "") -> None:
    table = Table(title=f"retrieval metrics (held-out split){title}")
    table.add_column("set")
    table.add_column("metric")
    for spec in results:
        table.add_column(spec, justify="right")
    first = next(iter(results.values()))
    for section, metrics in first.items():
        for metric in metrics:
            values = [results[s].get(section, {}).get(metric) for s in results]  # reranked columns: t2i only
            cells = ["-" if v is None else str(v) if isinstance(v, int) else f"{v:.3f}" for v in values]
            table.add_row(section, metric, *cells)
    out_console().print(table)


def eval_cmd(
    models: Annotated[list[str], typer.Argument(help="Model specs or index folders, compared side by side.")],
    manifest: Annotated[list[str], typer.Option(help="Corpus or manifest: text↔image R@k on its split.")] = [],  # noqa: B006
    cross: Annotated[list[str], typer.Option(help="A:B corpora: image→image across styles by shared key.")] = [],  # noqa: B006
    queries: Annotated[Path | None, typer.Option(help="Photo queries JSON (data_manifests/eval/).")] = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate on.")] = "test",
    device: AutoDevice = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    sheet: Annotated[
        Path | None, typer.Option(help="Folder for contact sheets: example queries and their top hits, per model, set.")
    ] = None,
    sheet_queries: Annotated[int, typer.Option(help="Queries per contact sheet.", min=1, max=100)] = 8,
    precision: Annotated[str, typer.Option(
        help="Embed images at fp32, fp16 or bf16, as `retr index build --precision` would.")] = "fp32",
    rerank: Annotated[int, typer.Option(
        help="Also report text→image R@k after reranking each query's top K with --reranker (a column "
             "'MODEL +rerank K').", min=0, max=MAX_RERANK)] = 0,
    reranker: Annotated[str | None, typer.Option(help="Reranker spec for --rerank: hf:DIR or retr:itm.")] = None,
) -> None:
    """R@1/5/10 text→image, image→text, cross-style image→image and photo queries, per model."""
    from retrieval.evaluate import EvalPlan, evaluate
    from retrieval.rerank import load_reranker
    from retrieval.sheets import draw_sheet

    try:
        pairs = []
        for c in cross:
            a, sep, b = c.partition(":")
            if not sep or not a or not b:
                raise ValueError(f"--cross takes A:B, got {c!r}")
            pairs.append((a, b))
        plan = EvalPlan(tuple(manifest), tuple(pairs), queries, split, sheet_queries if sheet else 0, precision,
                        rerank)
        if not (plan.corpora or plan.cross or plan.photo_queries):
            raise ValueError("nothing to evaluate: give --manifest, --cross or --queries")
        if rerank and reranker is None:
            raise ValueError("--rerank needs --reranker SPEC (hf:DIR holding a BLIP ITM checkpoint, or retr:itm)")
        loaded_reranker = load_reranker(reranker, device) if rerank else None
        results = {}
        for m in models:
            spec = _model_spec(m)
            result = evaluate(_load_encoder(spec, device), plan, **({"reranker": loaded_reranker} if rerank else {}))
            results[spec] = result.metrics
            if result.reranked:
                results[f"{spec} +rerank {rerank}"] = result.reranked
            if sheet is not None:
                for section, examples in result.examples.items():
                    path = sheet / _slug(spec) / f"{_slug(section)}.png"
                    draw_sheet(examples, path, title=f"{spec} · {section} ({split} split)")
                    say(f"sheet: {path}")
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(results, ensure_ascii=False))
    else:
        _print_eval(results, f" · reranker {reranker}" if rerank else "")


@models_app.command("list")
def models_list() -> None:
    """List encoder specs the registry can load."""
    from retrieval.encoders import list_models

    table = Table()
    for col in ("spec", "dim", "available", "description"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m.spec, str(m.dim or "-"), "yes" if m.available else f"no ({m.needs})", m.description)
    out_console().print(table)


@models_app.command("prepare")
def models_prepare(
    spec: Annotated[str, typer.Argument(help="Encoder spec; see `retr models list`.")] = DEFAULT_MODEL,
    device: Device = "cpu",
) -> None:
    """Do a model's first-use work now: fetch what its first load downloads (retr:default's text tower,
    404 MB) and cache its text vectors, e.g. while building an image, so later loads need no network."""
    from indexing.cache import cache_dir

    try:
        encoder = _load_encoder(spec, device)
        if encoder.has_text:
            encoder.encode_texts(["a red heart"])  # it answers a query
        else:  # image-only (curation) models: one image through the whole path
            from PIL import Image

            encoder.encode_images([Image.new("RGB", (64, 64), "white")])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise fail(str(e)) from e
    say(("ready", "green"), f" {spec}: {encoder.dim}-d vectors; its first-use files are in {cache_dir()}")

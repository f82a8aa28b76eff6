"""The `retr` command line: parse arguments, call the library, format the output."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from indexing import build as build_mod
from indexing import resolve
from indexing.choose import parse_memory
from indexing.embed import EmbedConfig
from indexing.lock import check_unlocked
from indexing.manifest import model_mismatch, read_manifest
from indexing.sources import ManifestColumns
from retrieval import search as search_mod

DEFAULT_MODEL = "retr:default"

app = typer.Typer(help="retr: image-text retrieval and dataset curation.", no_args_is_help=True)
index_app = typer.Typer(help="Build, grow and inspect sharded FAISS indexes.", no_args_is_help=True)
data_app = typer.Typer(help="Fetch registry corpora described in data_manifests/.", no_args_is_help=True)
models_app = typer.Typer(help="The encoder registry.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
# Captions, paths, queries and error text come from data and users: the consoles interpret no markup
# or :emoji: codes in them, and styles are applied as Text spans (see _say), never by formatting strings.
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)  # never wrap mid-word


def _out() -> Console:
    return Console(markup=False, emoji=False, highlight=False)


def _say(*parts: str | tuple[str, str]) -> None:
    """Print to stderr: plain strings literally, (text, style) pairs styled."""
    err.print(Text.assemble(*parts))


def _fail(message: str) -> typer.Exit:
    _say(("error:", "red"), " ", message)
    return typer.Exit(code=2)


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
    _say(
        (verb, "green"),
        f" {m.n_items} items{captions} · model {m.model} · image index {m.image.factory} "
        f"({len(m.image.shards)} shards, {m.image.search_param or 'exact'}={m.image.search_value or '-'}, "
        f"recall@{m.image.recall_k}={m.image.measured_recall:.3f}) · {report.seconds:.1f}s",
    )
    if e.n_chunks_resumed:
        _say(f"resumed: {e.n_chunks_resumed}/{e.n_chunks} chunks were already embedded")
    if m.n_rejected:
        rejects = pq.read_table(report.rejects_path).to_pylist()
        _say((f"{m.n_rejected} items rejected", "yellow"), f" (all listed in {report.rejects_path}):")
        for r in rejects[:10]:
            _say(f"  {r['path']}: {r['reason']} — {r['message']}")


def _notes(listing: resolve.Listing) -> None:
    for note in listing.notes:
        _say(("note:", "cyan"), " ", note)


Shards = Annotated[int, typer.Option(help="Number of index shards (built independently, searched together).")]
MaxMemory = Annotated[str, typer.Option(help="Memory budget for the index, e.g. 4GB, 512MB.")]
TargetRecall = Annotated[float, typer.Option(help="recall@10 vs exact that nprobe/efSearch are tuned to reach.")]
Device = Annotated[str, typer.Option(help="cpu or cuda (faiss GPU + model on GPU).")]
AutoDevice = Annotated[str, typer.Option(help="auto (cuda when torch sees a GPU, else cpu), cpu or cuda.")]
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
                _say(f"{out} is up to date with {encoder.name}; kept")
                return
            _say(f"rebuilding {out}: {why}")
            shutil.rmtree(out)
        report = build_mod.build_index(items, out, encoder, config, source=source, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from e
    _report(report, "built")


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
) -> None:
    """Append items of SOURCE that INDEX does not hold yet (by path), without rebuilding."""
    try:
        manifest = read_manifest(index)
        config = build_mod.IndexConfig(device=device, embed=EmbedConfig(batch_size=batch_size, num_workers=workers))
        check_unlocked(index, action="add to")
        listing = resolve.resolve_source(source, ManifestColumns(image_column, caption_column), progress=not quiet)
        _notes(listing)
        encoder = _load_encoder(manifest.model, device)
        report = build_mod.add_to_index(listing.items, index, encoder, config, progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from e
    if report.embed.n_items == 0:
        _say("nothing to add: every item of the source is already indexed")
    _report(report, "added to")


@index_app.command("info")
def index_info(index: Annotated[Path, typer.Argument(help="Index folder.")]) -> None:
    """Print the index manifest (model, index type, shards, measured recall) as JSON."""
    from indexing.manifest import read_manifest

    try:
        manifest = read_manifest(index)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from e
    typer.echo(json.dumps(manifest.to_json(), indent=2))


@dataclass(frozen=True)
class _QueryLine:
    """One line of a --queries file: a query, or why that line is not one."""

    line: int
    query: search_mod.Query | None = None
    error: str | None = None

    def error_json(self) -> dict:
        return {"line": self.line, "error": self.error}


def _parse_query_line(path: Path, n: int, raw: bytes) -> _QueryLine:
    where = f"{path}:{n}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _QueryLine(n, error=f"{where}: not UTF-8 text")
    except json.JSONDecodeError as e:
        return _QueryLine(n, error=f"{where}: not JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return _QueryLine(n, error=f'{where}: expected an object like {{"text": ...}}, got {type(obj).__name__}')
    unknown = sorted(set(obj) - {"text", "image", "image_id"})
    if unknown:
        return _QueryLine(n, error=f"{where}: unknown keys {unknown}; a query has one of text, image, image_id")
    try:
        query = search_mod.Query(text=obj.get("text"), image=obj.get("image"), image_id=obj.get("image_id"))
    except ValueError as e:
        return _QueryLine(n, error=f"{where}: {e}")
    return _QueryLine(n, query)


def _read_queries(path: Path) -> list[_QueryLine]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read queries file {path}: {e.strerror or e}") from e
    return [_parse_query_line(path, n, raw) for n, raw in enumerate(data.splitlines(), 1) if raw.strip()]


def _run_queries(
    idx: search_mod.RetrievalIndex, path: Path, lines: list[_QueryLine], **kw
) -> list[_QueryLine | search_mod.SearchResult]:
    """Results in line order. One batch when every query runs; if one fails (an unreadable query
    image, an unknown id), each runs alone so the others still get their results."""
    good = [q for q in lines if q.query is not None]
    try:
        done = dict(zip((q.line for q in good), idx.search_batch([q.query for q in good], **kw), strict=True))
    except ValueError:
        done = {}
        for q in good:
            try:
                done[q.line] = idx.search_batch([q.query], **kw)[0]
            except ValueError as e:
                done[q.line] = _QueryLine(q.line, error=f"{path}:{q.line}: {e}")
    return [done.get(q.line, q) for q in lines]


def _print_table(result: search_mod.SearchResult) -> None:
    table = Table(title=Text(json.dumps(result.query.to_json(), ensure_ascii=False)))
    for col in ("rank", "id", "score", "caption", "path"):
        table.add_column(col)
    for rank, h in enumerate(result.results, 1):
        table.add_row(str(rank), str(h.id), f"{h.score:.3f}", Text(h.caption or ""), Text(h.path))
    _out().print(table)


@app.command("search")
def search(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    text: Annotated[str | None, typer.Option(help="Text query (text→image).")] = None,
    image: Annotated[Path | None, typer.Option(help="Query image file (image→image).")] = None,
    image_id: Annotated[int | None, typer.Option(help="Id of an indexed image (image→image).")] = None,
    queries: Annotated[Path | None, typer.Option(
        help="JSONL file of queries; one JSON result line each, or {\"line\", \"error\"} for a bad line "
             "(exit 1 if any).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query (more than the index holds: all).")] = 10,
    where: Annotated[str | None, typer.Option(
        help="Metadata filter, e.g. \"split = 'test' AND caption LIKE '%cat%'\" (docs/filters.md).")] = None,
    target: Annotated[str, typer.Option(help="image (find images) or text (image→text: find captions).")] = "image",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Search INDEX by text, image or indexed image id."""
    try:
        if queries is not None:
            if any(x is not None for x in (text, image, image_id)):
                raise ValueError("--queries cannot be combined with --text/--image/--image-id")
            lines = _read_queries(queries)
        else:
            query = search_mod.Query(text=text, image=str(image) if image else None, image_id=image_id)
            lines = [_QueryLine(1, query)]
        idx = search_mod.open_index(index)
        try:
            if queries is None:
                results = idx.search_batch([lines[0].query], k=k, where=where, target=target)
            else:
                results = _run_queries(idx, queries, lines, k=k, where=where, target=target)
        finally:
            idx.close()
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from e
    failed = 0
    for r in results:
        if isinstance(r, _QueryLine):
            failed += 1
            typer.echo(json.dumps(r.error_json(), ensure_ascii=False))
        elif as_json or queries is not None:
            typer.echo(json.dumps(r.to_json(), ensure_ascii=False))
        else:
            _print_table(r)
    if failed:
        _say(("error:", "red"), f" {failed} of {len(results)} queries failed (their lines say why)")
        raise typer.Exit(code=1)


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option(help="Training config JSON (see retrieval/training/configs/).")],
    device: AutoDevice = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train the heads of a dual encoder on locked pretrained towers (rerun to resume)."""
    from indexing.cache import cache_dir
    from retrieval.encoders import resolve_device
    from retrieval.encoders.retr_models import tower_bridge
    from retrieval.training.config import read_config
    from retrieval.training.loop import train

    try:
        cfg = read_config(config)
        bridge = tower_bridge(cfg.image_tower, resolve_device(device), cfg.bridge, trim=cfg.trim_border,
                              text_tower=cfg.text_tower)
        report = train(cfg, bridge, cache=cache_dir(), progress=not quiet)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from e
    _say(
        ("trained", "green"),
        f" {report.out} · {report.n_pairs} pairs, {report.n_texts} caption strings · "
        f"loss {report.first_loss:.3f} → {report.last_loss:.3f} · {report.seconds:.0f}s",
    )
    typer.echo(f"retr:{report.out}")


def _model_spec(model_or_index: str) -> str:
    """An index folder stands for the model it was built with."""
    if (Path(model_or_index) / "index.json").is_file():
        return read_manifest(Path(model_or_index)).model
    return model_or_index


def _slug(name: str) -> str:
    """A file-name-safe version of a model spec or section name: 'retr:default' -> 'retr-default'."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "model"


def _print_eval(results: dict[str, dict[str, dict[str, float]]]) -> None:
    table = Table(title="retrieval metrics (held-out split)")
    table.add_column("set")
    table.add_column("metric")
    for spec in results:
        table.add_column(spec, justify="right")
    first = next(iter(results.values()))
    for section, metrics in first.items():
        for metric in metrics:
            values = [results[s][section][metric] for s in results]
            cells = [str(v) if isinstance(v, int) else f"{v:.3f}" for v in values]
            table.add_row(section, metric, *cells)
    _out().print(table)


@app.command("eval")
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
) -> None:
    """R@1/5/10 text→image, image→text, cross-style image→image and photo queries, per model."""
    from retrieval.evaluate import EvalPlan, evaluate
    from retrieval.sheets import draw_sheet

    try:
        pairs = []
        for c in cross:
            a, sep, b = c.partition(":")
            if not sep or not a or not b:
                raise ValueError(f"--cross takes A:B, got {c!r}")
            pairs.append((a, b))
        plan = EvalPlan(tuple(manifest), tuple(pairs), queries, split, sheet_queries if sheet else 0, precision)
        if not (plan.corpora or plan.cross or plan.photo_queries):
            raise ValueError("nothing to evaluate: give --manifest, --cross or --queries")
        results = {}
        for m in models:
            spec = _model_spec(m)
            result = evaluate(_load_encoder(spec, device), plan)
            results[spec] = result.metrics
            if sheet is not None:
                for section, examples in result.examples.items():
                    path = sheet / _slug(spec) / f"{_slug(section)}.png"
                    draw_sheet(examples, path, title=f"{spec} · {section} ({split} split)")
                    _say(f"sheet: {path}")
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(results, ensure_ascii=False))
    else:
        _print_eval(results)


@data_app.command("fetch")
def data_fetch(name: Annotated[str, typer.Argument(help="Corpus name (see `retr data list`).")]) -> None:
    """Fetch a registry corpus into the cache and write its normalised Parquet manifest."""
    from indexing.cache import cache_dir, manifest_dir
    from indexing.corpora import fetch_corpus

    try:
        result = fetch_corpus(name, cache_dir=cache_dir(), manifest_dir=manifest_dir())
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise _fail(str(e)) from e
    _say(("fetched", "green"), f" {name}: {result.n_items} items ({result.n_skipped} skipped)")
    typer.echo(str(result.manifest_path))


@data_app.command("list")
def data_list() -> None:
    """List the corpora described in data_manifests/."""
    from indexing.cache import manifest_dir
    from indexing.corpora import list_corpora

    table = Table()
    for col in ("name", "source", "package", "version", "licence"):
        table.add_column(col)
    for c in list_corpora(manifest_dir()):
        table.add_row(c.name, c.source, c.package, c.version, c.licence)
    _out().print(table)


@models_app.command("list")
def models_list() -> None:
    """List encoder specs the registry can load."""
    from retrieval.encoders import list_models

    table = Table()
    for col in ("spec", "dim", "available", "description"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m.spec, str(m.dim or "-"), "yes" if m.available else f"no ({m.needs})", m.description)
    _out().print(table)


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
        encoder.encode_texts(["a red heart"])  # it answers a query
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise _fail(str(e)) from e
    _say(("ready", "green"), f" {spec}: {encoder.dim}-d vectors; its first-use files are in {cache_dir()}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

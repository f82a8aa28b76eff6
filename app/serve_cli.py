"""`retr serve` (the HTTP API) and `retr ui` (the Streamlit search UI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.console import fail, say
from app.search_cli import (
    RayAddress,
    RayConcurrency,
    RayFlag,
    RayReplicas,
    RayShardsPerActor,
    SearchDevice,
    encoder_on,
    shard_opener,
)


def parse_index_args(indexes: list[str]) -> list[tuple[str, Path]]:
    """`PATH` or `NAME=PATH` → (name, path); the name defaults to the folder's name."""
    out = []
    for arg in indexes:
        name, sep, path = arg.partition("=")
        if not sep:
            name, path = Path(arg).name, arg
        if not name or not path:
            raise ValueError(f"expected PATH or NAME=PATH, got {arg!r}")
        out.append((name, Path(path)))
    return out


def serve(
    indexes: Annotated[list[str], typer.Argument(help="Index folders (PATH or NAME=PATH); the first is the default.")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    cors_origin: Annotated[list[str], typer.Option(help="Allow browser calls from this origin (repeatable).")] = [],  # noqa: B006
    allow_image_url: Annotated[bool, typer.Option(
        help="Let clip-back's image_url make the server fetch public URLs (10 s, 16 MiB).")] = False,
    batching: Annotated[bool, typer.Option(help="Encode concurrent text queries together.")] = True,
    max_batch: Annotated[int, typer.Option(help="Text queries per forward pass.", min=1, max=1024)] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="How long a query waits for others to batch with.")] = 4.0,
    reranker: Annotated[str | None, typer.Option(
        help="Reranker spec (hf:DIR, retr:itm) for requests with \"rerank\": K; without it they get a 400.")] = None,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    ray_replicas: RayReplicas = 1,
    ray_shards_per_actor: RayShardsPerActor = 1,
    ray_concurrency: RayConcurrency = 1,
    device: SearchDevice = "cpu",
) -> None:
    """Serve INDEXES over HTTP (FastAPI): /search, /items, /metrics, clip-back's /knn-service. Set
    RETR_API_TOKEN to require `Authorization: Bearer TOKEN`."""
    try:
        import uvicorn

        from app.api import create_app
        from app.api.state import ApiSettings
        from retrieval.rerank import load_reranker
        from retrieval.service import IndexService, ServiceConfig
    except ImportError as e:
        raise fail(f"retr serve needs the api extra: pip install -e '.[api]' ({e})") from e
    try:
        config = ServiceConfig(batching=batching, max_batch=max_batch, max_wait_ms=max_wait_ms)
        shards = shard_opener(ray, ray_address, device, replicas=ray_replicas, shards_per_actor=ray_shards_per_actor,
                              concurrency=ray_concurrency)
        services = [IndexService(path, name=name, config=config, shards=shards, encoder_factory=encoder_on(device))
                    for name, path in parse_index_args(indexes)]
        for s in services:
            _ = s.index.encoder  # load the model now: the first query pays nothing
        settings = ApiSettings(token=os.environ.get("RETR_API_TOKEN") or None, cors_origins=tuple(cors_origin),
                               allow_image_url=allow_image_url)
        app = create_app(services, settings, load_reranker(reranker) if reranker else None)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    say(("serving", "green"), f" {', '.join(s.name for s in services)} on http://{host}:{port} "
        f"(docs: /docs{'; token required' if settings.token else ''}{f'; reranker {reranker}' if reranker else ''}"
        f"{'; on the GPU' if device == 'cuda' else '; shards on Ray actors' if shards else ''})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def ui(
    index: Annotated[Path | None, typer.Argument(help="Index folder to search.")] = None,
    curation: Annotated[Path | None, typer.Option(
        help="Browse a curation folder instead: a `retr curate` stage's --out or a `retr curate run` folder.")
    ] = None,
    port: Annotated[int, typer.Option(help="Port for the UI.", min=1, max=65535)] = 8501,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    reranker: Annotated[str | None, typer.Option(
        help="Reranker spec (hf:DIR, retr:itm): adds a 'rerank top K' control for text queries.")] = None,
) -> None:
    """Open the search UI (Streamlit) on INDEX, or the curation page on --curation DIR."""
    if (index is None) == (curation is None):
        raise fail("give an INDEX folder to search, or --curation DIR to browse a curation run (not both)")
    if curation is not None and reranker:
        raise fail("--reranker is for the search UI, not --curation")
    if curation is not None:
        from indexing.curation.browse import list_stages

        try:
            list_stages(curation)
        except (ValueError, OSError) as e:
            raise fail(str(e)) from e
        page, args, what = "curation_page.py", ["--curation", str(curation.resolve())], curation
    else:
        if not (index / "index.json").is_file():
            raise fail(f"{index} is not a retr index (no index.json)")
        page, args, what = "streamlit_app.py", ["--index", str(index.resolve())], index
        if reranker:
            args += ["--reranker", reranker]
    script = Path(__file__).resolve().parent / "ui" / page
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
           "--server.address", host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal", "--", *args]
    say(("ui", "green"), f" http://{host}:{port} on {what}")
    os.execv(sys.executable, cmd)  # become Streamlit: a signal to this process reaches the server

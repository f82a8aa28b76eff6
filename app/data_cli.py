"""`retr data`: the corpora described in data_manifests/."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from app.console import fail, out_console, say

data_app = typer.Typer(help="Fetch registry corpora described in data_manifests/.", no_args_is_help=True)


@data_app.command("fetch")
def data_fetch(name: Annotated[str, typer.Argument(help="Corpus name (see `retr data list`).")]) -> None:
    """Fetch a registry corpus into the cache and write its normalised Parquet manifest."""
    from indexing.cache import cache_dir, manifest_dir
    from indexing.corpora import fetch_corpus

    try:
        result = fetch_corpus(name, cache_dir=cache_dir(), manifest_dir=manifest_dir())
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise fail(str(e)) from e
    say(("fetched", "green"), f" {name}: {result.n_items} items ({result.n_skipped} skipped)")
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
    out_console().print(table)

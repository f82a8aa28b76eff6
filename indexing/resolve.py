"""SOURCE argument → items: a path/glob is read directly; a data_manifests/ name is fetched first."""

from __future__ import annotations

from pathlib import Path

from indexing.cache import cache_dir, manifest_dir
from indexing.sources import Item, Listing, ManifestColumns, read_source

__all__ = ["Listing", "corpus_names", "resolve_items", "resolve_manifest", "resolve_source"]


def corpus_names() -> list[str]:
    from indexing.corpora import list_corpora

    return [c.name for c in list_corpora(manifest_dir())]


def resolve_manifest(source: str, *, progress: bool = True) -> Path:
    """The manifest file SOURCE names: an existing manifest path, or a corpus fetched into the cache."""
    if Path(source).is_file():
        return Path(source)
    if source in corpus_names():
        from indexing.corpora import fetch_corpus

        return fetch_corpus(source, cache_dir=cache_dir(), manifest_dir=manifest_dir(), progress=progress).manifest_path
    known = ", ".join(corpus_names())
    raise ValueError(f"{source!r} is neither a manifest file nor a known corpus. Known corpora: {known}")


def resolve_source(source: str, columns: ManifestColumns = ManifestColumns(), *, progress: bool = True) -> Listing:
    """Items of SOURCE with ingest's notes; a registry corpus name (e.g. `emoji-google`) is fetched first."""
    looks_like_path = Path(source).exists() or any(ch in source for ch in "*?[/") or source.endswith(".tar")
    if not looks_like_path and source in corpus_names():
        return read_source(str(resolve_manifest(source, progress=progress)))
    if not looks_like_path:
        raise ValueError(
            f"{source!r} is neither an existing path nor a known corpus. Known corpora: {', '.join(corpus_names())}"
        )
    return read_source(source, columns=columns)


def resolve_items(source: str, columns: ManifestColumns = ManifestColumns(), *, progress: bool = True) -> list[Item]:
    """Items of SOURCE (resolve_source without its notes)."""
    return resolve_source(source, columns, progress=progress).items

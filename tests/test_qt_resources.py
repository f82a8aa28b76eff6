"""Qt resource bundles: files come out byte for byte, crafted or damaged bundles are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from indexing.qt_resources import ResourceError, read_resources, unpack_resources

DATA = Path(__file__).parent / "data" / "qt"
FILES = {"demo/pics/animals/red_fox.png", "demo/pics/blue.png", "demo/pics/readme.txt", "demo/notes.qml"}


@pytest.mark.parametrize("bundle", ["v1.rcc", "v2.rcc"])
def test_reads_every_file_of_a_bundle_made_by_qt_rcc(bundle):
    files = dict(read_resources((DATA / bundle).read_bytes()))
    assert set(files) == FILES
    assert files["demo/pics/readme.txt"] == b"hello resources\n" * 40  # zlib-compressed in v2
    assert files["demo/notes.qml"] == b"import QtQuick 2.12\n"


def test_unpacks_only_the_files_under_the_prefixes_and_they_decode(tmp_path):
    assert unpack_resources(DATA / "v2.rcc", tmp_path, ["demo/pics/"]) == 3
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == FILES - {"demo/notes.qml"}
    with Image.open(tmp_path / "demo/pics/animals/red_fox.png") as im:
        assert im.size == (8, 6) and im.convert("RGB").getpixel((0, 0)) == (200, 30, 30)


def test_refuses_what_is_not_a_bundle_and_a_truncated_one():
    blob = (DATA / "v2.rcc").read_bytes()
    with pytest.raises(ResourceError, match="magic"):
        list(read_resources(b"PK\x03\x04" + blob[4:]))
    with pytest.raises(ResourceError, match="outside|past the end"):
        list(read_resources(blob[: len(blob) // 2]))


def test_refuses_a_name_that_would_leave_the_destination(tmp_path):
    blob = (DATA / "v1.rcc").read_bytes()
    crafted = blob.replace("blue.png".encode("utf-16-be"), "../x.png".encode("utf-16-be"))
    assert crafted != blob
    with pytest.raises(ResourceError, match="not a plain file name"):
        unpack_resources_from(crafted, tmp_path)
    assert not any(tmp_path.parent.glob("x.png"))


def test_refuses_a_name_that_is_not_utf16():
    blob = (DATA / "v1.rcc").read_bytes()
    lone_surrogate = b"\xd8\x00" + "lue.png".encode("utf-16-be")  # same length as "blue.png"
    crafted = blob.replace("blue.png".encode("utf-16-be"), lone_surrogate)
    with pytest.raises(ResourceError, match="not UTF-16"):
        list(read_resources(crafted))


def test_refuses_corrupt_compressed_data():
    blob = bytearray((DATA / "v2.rcc").read_bytes())
    zstream = bytes(blob).find(b"\x78\x9c")  # the zlib header of readme.txt's data
    assert zstream > 0
    blob[zstream + 2 : zstream + 8] = b"\xff" * 6
    with pytest.raises(ResourceError, match="corrupt compressed data|decompressed to"):
        list(read_resources(bytes(blob)))


def unpack_resources_from(blob: bytes, dest: Path) -> int:
    bundle = dest / "bundle.rcc"
    bundle.write_bytes(blob)
    return unpack_resources(bundle, dest / "out", [""])

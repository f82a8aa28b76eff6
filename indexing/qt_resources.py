"""Qt resource bundles (.rcc): the files a Qt program compiles into one binary blob.

Some registry packages ship their pictures only inside such bundles (Debian's gcompris-qt-data
holds its photographs in /usr/share/gcompris-qt/rcc/*.rcc). `unpack_resources` turns the files of a
bundle that lie under given prefixes into ordinary files, so the rest of the pipeline (decode,
embed, index) sees a folder of images. Like the Iconify unpacker it runs inside extraction, before
the extracted tree is renamed into place.

The format (rcc versions 1 to 3), all integers big-endian:

    header   "qres", version u32, tree offset u32, data offset u32, names offset u32 (+ flags u32, v3)
    tree     one node per file or folder: name offset u32, flags u16, then
               folder: child count u32, first child index u32
               file:   territory u16, language u16, data offset u32
             and, from version 2 on, a u64 modification time; node 0 is the root folder
    names    length u16, hash u32, the name in UTF-16BE
    data     size u32, then the bytes; flag 0x1: zlib (Qt's qCompress: u32 plain size + a zlib
             stream), flag 0x4: zstd (not supported here: a clear error, never garbage)

A crafted bundle must not write outside the destination: names are checked to be one plain path
component, offsets to lie inside the blob, and the tree to be visited without cycles.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

_MAGIC = b"qres"
_COMPRESSED, _DIRECTORY, _COMPRESSED_ZSTD = 0x1, 0x2, 0x4
_MAX_FILE = 1 << 30  # a single resource larger than this is not a picture


class ResourceError(ValueError):
    """The bundle is not a readable Qt resource file (or uses what this reader does not support)."""


def _unpack(fmt: str, blob: bytes, offset: int, what: str) -> tuple[int, ...]:
    end = offset + struct.calcsize(fmt)
    if offset < 0 or end > len(blob):
        raise ResourceError(f"{what} at byte {offset} lies outside the {len(blob)}-byte bundle")
    return struct.unpack_from(fmt, blob, offset)


def _name(blob: bytes, names: int, offset: int) -> str:
    (length,) = _unpack(">H", blob, names + offset, "a name")
    start = names + offset + 6  # after the length and the name's hash
    if start + 2 * length > len(blob):
        raise ResourceError(f"a name at byte {start} runs past the end of the bundle")
    try:
        name = blob[start : start + 2 * length].decode("utf-16-be", errors="strict")
    except UnicodeDecodeError as e:
        raise ResourceError(f"a name at byte {start} is not UTF-16 ({e.reason})") from e
    if name in ("", ".", "..") or any(ch in name for ch in "/\\\0"):
        raise ResourceError(f"resource name {name!r} is not a plain file name")
    return name


def _payload(blob: bytes, data: int, offset: int, flags: int, path: str) -> bytes:
    (size,) = _unpack(">I", blob, data + offset, f"the data of {path}")
    start = data + offset + 4
    if start + size > len(blob):
        raise ResourceError(f"the data of {path} runs past the end of the bundle")
    raw = blob[start : start + size]
    if flags & _COMPRESSED_ZSTD:
        raise ResourceError(f"{path} is zstd-compressed, which this reader does not support")
    if flags & _COMPRESSED:
        if len(raw) < 4:
            raise ResourceError(f"{path}: compressed data shorter than its header")
        try:
            out = zlib.decompressobj().decompress(raw[4:], _MAX_FILE)
        except zlib.error as e:
            raise ResourceError(f"{path}: corrupt compressed data ({e})") from e
        if len(out) != int.from_bytes(raw[:4], "big"):
            raise ResourceError(
                f"{path}: decompressed to {len(out)} bytes, the header says {int.from_bytes(raw[:4], 'big')}"
            )
        return out
    return raw


def read_resources(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """Every file of an .rcc bundle as (path, bytes), paths '/'-joined without a leading '/'."""
    if blob[:4] != _MAGIC:
        raise ResourceError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = _unpack(">IIII", blob, 4, "the header")
    if version not in (1, 2, 3):
        raise ResourceError(f"unsupported rcc format version {version}")
    node_size = 14 if version == 1 else 22
    seen: set[int] = set()
    stack: list[tuple[int, str]] = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        if index in seen:
            raise ResourceError(f"the resource tree visits node {index} twice")
        seen.add(index)
        node = tree + index * node_size
        name_offset, flags = _unpack(">IH", blob, node, f"tree node {index}")
        path = prefix + _name(blob, names, name_offset) if index else ""
        if flags & _DIRECTORY:
            count, first = _unpack(">II", blob, node + 6, f"tree node {index}")
            if first + count > len(blob) // node_size:
                raise ResourceError(f"folder {path or '/'} claims {count} children past the end of the tree")
            stack.extend((first + i, f"{path}/" if path else "") for i in reversed(range(count)))
        elif index == 0:
            raise ResourceError("the root of the resource tree is not a folder")
        else:
            (offset,) = _unpack(">I", blob, node + 10, f"tree node {index}")
            yield path, _payload(blob, data, offset, flags, path)


def unpack_resources(bundle: Path, dest: Path, prefixes: Sequence[str]) -> int:
    """Write the files of BUNDLE whose path starts with one of PREFIXES under DEST, keeping their
    paths; returns how many were written. Raises ResourceError (a ValueError) for a bad bundle."""
    dest = Path(dest)
    written = 0
    for path, payload in read_resources(Path(bundle).read_bytes()):
        if not any(path.startswith(p) for p in prefixes):
            continue
        out = dest / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(payload)
        written += 1
    return written

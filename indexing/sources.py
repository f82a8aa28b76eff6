"""Ingest: turn a user's SOURCE argument into an ordered list of `Item`s.

Sources: a folder of images (captions from sidecar .txt/.json), a manifest (JSONL, CSV or
Parquet with an image column holding paths or URLs), or webdataset .tar shards as img2dataset
writes them. Listing is deterministic (sorted), which is what makes embedding resumable:
item i of a source is always item i.
"""

from __future__ import annotations

import glob
import hashlib
import json
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".svg")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class TarMember:
    """Where an image's bytes sit inside an uncompressed tar (read by seek, no rescan)."""

    tar_path: str
    offset: int
    size: int


@dataclass(frozen=True)
class Item:
    path: str  # what users see: a file path, a URL, or "shard.tar/member.jpg"
    caption: str | None = None
    member: TarMember | None = None
    extra: dict[str, Scalar] = field(default_factory=dict, compare=False)  # manifest columns kept as metadata


@dataclass(frozen=True)
class ManifestColumns:
    image: str = "image"
    caption: str = "caption"


def read_item_bytes(item: Item, *, url_timeout_s: float = 20.0) -> bytes:
    """The raw bytes of an item's image. Raises OSError (file/URL) on failure."""
    if item.member is not None:
        with open(item.member.tar_path, "rb") as f:
            f.seek(item.member.offset)
            data = f.read(item.member.size)
        if len(data) != item.member.size:
            raise OSError(f"tar member truncated: {item.path}")
        return data
    if item.path.startswith(("http://", "https://")):
        with urllib.request.urlopen(item.path, timeout=url_timeout_s) as r:
            return r.read()
    return Path(item.path).read_bytes()


def list_items(source: str, *, columns: ManifestColumns = ManifestColumns()) -> list[Item]:
    """Resolve SOURCE (folder, manifest file, or tar glob) into its items, in a stable order."""
    p = Path(source)
    if p.is_dir():
        return folder_items(p)
    if p.is_file() and p.suffix.lower() in MANIFEST_EXTENSIONS:
        return manifest_items(p, columns)
    if source.endswith(".tar") or any(ch in source for ch in "*?["):
        tars = sorted(glob.glob(source))
        if not tars:
            raise ValueError(f"no webdataset shards match {source!r}")
        return webdataset_items(tars)
    if not p.exists():
        raise ValueError(f"source {source!r} does not exist (expected a folder, a manifest file or a .tar glob)")
    raise ValueError(
        f"cannot read source {source!r}: expected a folder, a {'/'.join(MANIFEST_EXTENSIONS)} manifest or .tar shards"
    )


def source_fingerprint(items: Sequence[Item]) -> str:
    """A hash of the ordered item paths: resuming refuses a source whose listing changed."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _sidecar_caption(image_path: Path) -> str | None:
    txt = image_path.with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip() or None
    js = image_path.with_suffix(".json")
    if js.is_file():
        try:
            obj = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if isinstance(obj, dict):
            for key in ("caption", "text", "title"):
                if isinstance(obj.get(key), str) and obj[key].strip():
                    return obj[key].strip()
    return None


def folder_items(folder: Path) -> list[Item]:
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    return [Item(path=str(p.resolve()), caption=_sidecar_caption(p)) for p in files]


def _read_manifest_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix == ".csv":
        return pacsv.read_csv(path)
    return pajson.read_json(path)  # JSON Lines


def manifest_items(path: Path, columns: ManifestColumns) -> list[Item]:
    table = _read_manifest_table(path)
    names = table.column_names
    if columns.image not in names:
        raise ValueError(
            f"manifest {path} has no image column {columns.image!r}; columns are {names}. "
            "Use --image-column to name it."
        )
    has_caption = columns.caption in names
    if not has_caption and columns.caption != ManifestColumns.caption:
        raise ValueError(f"manifest {path} has no caption column {columns.caption!r}; columns are {names}.")
    scalar_cols = [
        n
        for n in names
        if n not in (columns.image, columns.caption)
        and (pa.types.is_primitive(table.schema.field(n).type) or pa.types.is_string(table.schema.field(n).type))
    ]
    rows = table.select([columns.image] + ([columns.caption] if has_caption else []) + scalar_cols).to_pylist()
    base = path.resolve().parent
    items = []
    for row in rows:
        ref = row[columns.image]
        if ref is None or str(ref).strip() == "":
            continue
        ref = str(ref)
        if not ref.startswith(("http://", "https://")):
            ref_path = Path(ref)
            ref = str(ref_path if ref_path.is_absolute() else (base / ref_path).resolve())
        caption = row.get(columns.caption) if has_caption else None
        caption = str(caption).strip() if caption not in (None, "") else None
        extra = {n: row[n] for n in scalar_cols}
        items.append(Item(path=ref, caption=caption, extra=extra))
    return items


def _wds_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = member path up to the first dot of its basename."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def webdataset_items(tar_paths: Sequence[str]) -> list[Item]:
    items: list[Item] = []
    for tar_path in tar_paths:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tarfile.open(tar_path, "r:") as tf:
            for info in tf:
                if info.isfile():
                    key, ext = _wds_key(info.name)
                    groups.setdefault(key, {})[ext] = info
            for key in sorted(groups):
                parts = groups[key]
                img_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
                if img_ext is None:
                    continue
                info = parts[img_ext]
                caption = None
                if "txt" in parts:
                    caption = tf.extractfile(parts["txt"]).read().decode("utf-8", "replace").strip() or None
                elif "json" in parts:
                    try:
                        obj = json.loads(tf.extractfile(parts["json"]).read())
                        caption = obj.get("caption") if isinstance(obj, dict) else None
                    except json.JSONDecodeError:
                        caption = None
                items.append(
                    Item(
                        path=f"{tar_path}/{info.name}",
                        caption=caption,
                        member=TarMember(
                            tar_path=str(Path(tar_path).resolve()), offset=info.offset_data, size=info.size
                        ),
                    )
                )
    return items

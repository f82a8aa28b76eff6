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
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from indexing.download import DownloadLimits, fetch_url
from indexing.items import IngestProblem, Item, Listing, ManifestColumns, Scalar, TarMember, safe_column_names
from indexing.webdataset import webdataset_items

__all__ = [  # the ingest API; the types live in indexing.items
    "IMAGE_EXTENSIONS", "MANIFEST_EXTENSIONS", "IngestProblem", "Item", "Listing", "ManifestColumns", "Scalar",
    "TarMember", "fold_captions", "list_items", "read_item_bytes", "read_manifest_table", "read_source",
    "safe_column_names", "source_fingerprint",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".svg")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
class UnreadableItem(OSError):
    """An item whose listing already knows it cannot be read; carries the reject reason."""

    def __init__(self, problem: IngestProblem) -> None:
        super().__init__(problem.message)
        self.reject_reason = problem.reason


def read_item_bytes(item: Item, *, download: DownloadLimits = DownloadLimits()) -> bytes:
    """The raw bytes of an item's image. Raises OSError (file / URL / tar); `reject_reason` on those
    that carry their own reason (downloads, ingest problems)."""
    if item.problem is not None:
        raise UnreadableItem(item.problem)
    if item.member is not None:
        with open(item.member.tar_path, "rb") as f:
            f.seek(item.member.offset)
            data = f.read(item.member.size)
        if len(data) != item.member.size:
            raise OSError(f"tar member truncated: {item.path}")
        return data
    if item.path.startswith(("http://", "https://")):
        return fetch_url(item.path, download)
    return Path(item.path).read_bytes()


def read_source(source: str, *, columns: ManifestColumns = ManifestColumns()) -> Listing:
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


def list_items(source: str, *, columns: ManifestColumns = ManifestColumns()) -> list[Item]:
    """The items of SOURCE (read_source without its notes)."""
    return read_source(source, columns=columns).items


def source_fingerprint(items: Sequence[Item]) -> str:
    """A hash of the ordered item paths: resuming refuses a source whose listing changed."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _display_name(path: Path) -> str | None:
    """The path as text, or None when the file system name is not valid UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _escaped_name(path: Path) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _sidecar_caption(image_path: Path) -> str | None:
    txt = image_path.with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip() or None
    js = image_path.with_suffix(".json")
    if js.is_file():
        try:
            obj = json.loads(js.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(obj, dict):
            for key in ("caption", "text", "title"):
                if isinstance(obj.get(key), str) and obj[key].strip():
                    return obj[key].strip()
    return None


def _folder_item(p: Path) -> Item:
    """One image file of a folder; files that cannot be named or opened become problem items."""
    name = _display_name(p)
    if name is None:
        return Item(path=_escaped_name(p), problem=IngestProblem(
            "bad_name", f"file name is not valid UTF-8 (shown with \\x escapes): {_escaped_name(p)}; rename it"))
    try:
        p.stat()  # follows links: a loop or a dangling link fails here
    except OSError as e:
        return Item(path=name, problem=IngestProblem("unreadable", f"{name}: {e.strerror or e}"))
    if not p.is_file():
        return Item(path=name, problem=IngestProblem("unreadable", f"{name}: not a regular file"))
    return Item(path=str(p.resolve()), caption=_sidecar_caption(p))


def folder_items(folder: Path) -> Listing:
    """Image files under FOLDER, sorted by relative path. Unreadable sub-folders, looping or dangling
    links and non-UTF-8 names are listed too (as problem items) so that they reach the rejects."""
    found: list[tuple[str, Item]] = []

    def unreadable_dir(e: OSError) -> None:
        d = Path(e.filename)
        rel = os.path.relpath(e.filename, folder)
        problem = IngestProblem("unreadable", f"cannot list folder {_escaped_name(d)}: {e.strerror}")
        found.append((rel, Item(path=_display_name(d) or _escaped_name(d), problem=problem)))

    for root, _dirs, files in os.walk(folder, onerror=unreadable_dir):
        for f in files:
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                p = Path(root) / f
                found.append((p.relative_to(folder).as_posix(), _folder_item(p)))
    found.sort(key=lambda x: x[0].encode("utf-8", "surrogateescape"))
    return Listing([it for _, it in found])


def read_manifest_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix == ".csv":
        return pacsv.read_csv(path)
    return pajson.read_json(path)  # JSON Lines


def fold_captions(items: Sequence[Item]) -> tuple[list[Item], int]:
    """One item per image path, keeping every distinct caption (COCO lists an image once per caption).

    Returns the folded items in first-seen order and how many rows carried a further caption.
    Rows identical to an earlier one add nothing and are not counted. URLs and problem items fold
    by path too."""
    by_path: dict[str, int] = {}
    out: list[Item] = []
    folded = 0
    for it in items:
        j = by_path.get(it.path)
        if j is None:
            by_path[it.path] = len(out)
            out.append(it)
            continue
        first = out[j]
        new = [c for c in it.captions if c not in first.captions]
        if new:
            folded += 1
            caption = first.caption or new[0]
            more = tuple(c for c in (*first.captions, *new) if c != caption)
            out[j] = replace(first, caption=caption, more_captions=more)
    return out, folded


def manifest_items(path: Path, columns: ManifestColumns) -> Listing:
    table = read_manifest_table(path)
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
    rename, notes = safe_column_names(scalar_cols, str(path))
    rows = table.select([columns.image] + ([columns.caption] if has_caption else []) + scalar_cols).to_pylist()
    base = path.resolve().parent
    items = []
    for n, row in enumerate(rows, 1):
        ref = row[columns.image]
        if ref is None or str(ref).strip() == "":
            where = f"{path}:row {n}"
            items.append(Item(path=where, problem=IngestProblem("no_image", f"{where}: empty {columns.image!r} value")))
            continue
        ref = str(ref)
        if not ref.startswith(("http://", "https://")):
            ref_path = Path(ref)
            ref = str(ref_path if ref_path.is_absolute() else (base / ref_path).resolve())
        caption = row.get(columns.caption) if has_caption else None
        caption = str(caption).strip() if caption not in (None, "") else None
        extra = {rename[n]: row[n] for n in scalar_cols}
        items.append(Item(path=ref, caption=caption or None, extra=extra))
    items, folded = fold_captions(items)
    if folded:
        notes += (f"{path}: {folded} rows add a further caption to an image listed earlier; "
                  f"{len(items)} images are embedded once each, with all their captions",)
    return Listing(items, notes)

"""Ingest of webdataset shards as img2dataset writes them: `shard.tar` holding `KEY.jpg`, `KEY.txt`
(the caption) and `KEY.json` (url, status, sizes and every column of the input), read by seek.

A cut or unreadable shard becomes a problem item (a reject with its reason), never a silent end of
the listing. Tested in tests/test_sources.py and tests/test_ingest_accounting.py.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from indexing.items import IngestProblem, Item, Listing, Scalar, TarMember, safe_column_names


def _wds_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = member path up to the first dot of its basename."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


_TAR_BLOCK = 512
_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _json_fields(raw: bytes) -> dict[str, Scalar]:
    """img2dataset's per-sample .json (url, key, status, sizes, every input column) as flat metadata:
    scalars as they are, nested values as JSON text."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(obj, dict):
        return {}
    return {str(k): v if v is None or isinstance(v, str | int | float | bool) else json.dumps(v, ensure_ascii=False)
            for k, v in obj.items()}


def _shard_end_problem(tar_path: str, end: int) -> IngestProblem | None:
    """A shard whose members stop before tar's end-of-archive marker was cut short (a killed
    download, a full disk): the members after `end` are lost, and the user must hear of it."""
    size = os.path.getsize(tar_path)
    with open(tar_path, "rb") as f:
        f.seek(end)
        tail = f.read(2 * _TAR_BLOCK)
    if len(tail) == 2 * _TAR_BLOCK and not tail.strip(b"\0"):
        return None
    return IngestProblem("truncated_shard", f"{tar_path} ends at byte {size} without tar's end-of-archive marker; "
                         f"whatever followed byte {end} is lost (a cut download?)")


def _member_groups(tf: tarfile.TarFile) -> tuple[dict[str, dict[str, tarfile.TarInfo]], int]:
    """Members by sample key and extension, and the byte where the readable members end."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    end = 0
    try:
        for info in tf:
            end = info.offset_data + -(-info.size // _TAR_BLOCK) * _TAR_BLOCK
            if info.isfile():
                key, ext = _wds_key(info.name)
                groups.setdefault(key, {})[ext] = info
    except (tarfile.TarError, OSError):
        pass  # a header cut mid-way: _shard_end_problem reports where the readable part ends
    return groups, end


def _sample(tf: tarfile.TarFile, tar_path: str, parts: dict[str, tarfile.TarInfo]) -> Item | None:
    img_ext = next((e for e in _WDS_IMAGE_EXTS if e in parts), None)
    if img_ext is None:
        return None
    info = parts[img_ext]
    meta = _json_fields(_member_bytes(tf, parts.get("json"))) if "json" in parts else {}
    caption = None
    if "txt" in parts:
        caption = _member_bytes(tf, parts["txt"]).decode("utf-8", "replace").strip() or None
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"].strip() or None
    meta.pop("caption", None)
    member = TarMember(tar_path=str(Path(tar_path).resolve()), offset=info.offset_data, size=info.size)
    return Item(path=f"{tar_path}/{info.name}", caption=caption, member=member, extra=meta)


def _shard_items(tar_path: str) -> list[Item]:
    """The samples of one shard. An unreadable or cut shard adds a problem item, so the loss is
    reported instead of silently ending the listing."""
    try:
        with tarfile.open(tar_path, "r:") as tf:
            groups, end = _member_groups(tf)
            items = [it for key in sorted(groups) if (it := _sample(tf, tar_path, groups[key])) is not None]
    except (tarfile.TarError, OSError) as e:
        return [Item(path=tar_path, problem=IngestProblem("unreadable_shard", f"{tar_path}: {e}"))]
    problem = _shard_end_problem(tar_path, end)
    if problem is not None:
        items.append(Item(path=f"{tar_path}@{end}", problem=problem))
    return items


def _member_bytes(tf: tarfile.TarFile, info: tarfile.TarInfo | None) -> bytes:
    if info is None:
        return b""
    f = tf.extractfile(info)
    try:
        return f.read() if f is not None else b""
    except (tarfile.TarError, OSError):
        return b""  # the side file is cut: the image itself will be checked when it is read


def webdataset_items(tar_paths: Sequence[str]) -> Listing:
    """Samples of webdataset shards as img2dataset writes them: the image, its .txt caption, and every
    field of its .json kept as metadata (url, status, licence, scores…)."""
    items: list[Item] = []
    fields: set[str] = set()
    for tar_path in tar_paths:
        shard = _shard_items(tar_path)
        items.extend(shard)
        fields.update(k for it in shard for k in it.extra)
    rename, notes = safe_column_names(sorted(fields), "webdataset .json")
    if any(k != v for k, v in rename.items()):
        items = [replace(it, extra={rename[k]: v for k, v in it.extra.items()}) if it.extra else it for it in items]
    return Listing(items, notes)

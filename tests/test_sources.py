import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexing.sources import ManifestColumns, list_items, read_item_bytes, source_fingerprint


def test_folder_lists_images_sorted_with_sidecar_captions(colour_folder: Path):
    items = list_items(str(colour_folder))
    rel = [Path(it.path).relative_to(colour_folder).as_posix() for it in items]
    assert rel == sorted(rel)
    assert len(items) == 42  # 40 colour images + corrupt.png + truncated.jpg
    red = next(it for it in items if it.path.endswith("red-0.png"))
    assert red.caption == "a red square"
    assert next(it for it in items if it.path.endswith("corrupt.png")).caption is None


def test_json_sidecar_caption(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "a.json").write_text(json.dumps({"caption": "  a dog  ", "other": 1}))
    assert list_items(str(tmp_path))[0].caption == "a dog"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_manifest_formats_resolve_relative_paths(tmp_path: Path, fmt: str):
    (tmp_path / "img").mkdir()
    rows = [{"image": "img/a.png", "caption": "first", "split": "train"},
            {"image": "https://example.org/b.jpg", "caption": "second", "split": "test"}]
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "csv":
        path.write_text("image,caption,split\n" + "\n".join(f"{r['image']},{r['caption']},{r['split']}" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    items = list_items(str(path))
    assert items[0].path == str((tmp_path / "img" / "a.png").resolve())
    assert items[1].path == "https://example.org/b.jpg"
    assert [it.caption for it in items] == ["first", "second"]
    assert items[1].extra == {"split": "test"}


def test_manifest_custom_columns_and_missing_column_error(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"url": "x.png", "text": "hello"}) + "\n")
    items = list_items(str(path), columns=ManifestColumns(image="url", caption="text"))
    assert items[0].caption == "hello"
    with pytest.raises(ValueError, match="no image column 'image'.*url"):
        list_items(str(path))


def test_webdataset_shards(tmp_path: Path, colour_folder: Path):
    pngs = sorted(colour_folder.rglob("*.png"))[:3]
    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tf:
        for i, p in enumerate(pngs):
            tf.add(p, arcname=f"{i:09d}.png")
            cap = tmp_path / f"{i}.txt"
            cap.write_text(f"caption {i}")
            tf.add(cap, arcname=f"{i:09d}.txt")
        meta = tmp_path / "m.json"
        meta.write_text(json.dumps({"caption": "from json"}))
        tf.add(pngs[0], arcname="000000009.jpg")
        tf.add(meta, arcname="000000009.json")
    items = list_items(str(tmp_path / "*.tar"))
    assert [it.caption for it in items] == ["caption 0", "caption 1", "caption 2", "from json"]
    assert read_item_bytes(items[1]) == pngs[1].read_bytes()


def test_missing_source_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        list_items(str(tmp_path / "nope"))


def test_fingerprint_changes_with_listing(colour_folder: Path):
    a = list_items(str(colour_folder))
    assert source_fingerprint(a) == source_fingerprint(list_items(str(colour_folder)))
    assert source_fingerprint(a) != source_fingerprint(a[:-1])

"""A segment bigger than the memory budget is built from scratch files, block by block
(indexing.build: _Segment.read, SPILL_SHARE; indexing.store.read_segment_vectors(spill=...))."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexing import build as build_mod
from indexing import shard_files
from indexing.build import IndexConfig, add_to_index, build_index
from indexing.embed import EmbedConfig
from indexing.row_blocks import is_mapped
from indexing.sources import list_items
from retrieval.search import open_index
from tests.conftest import PixelEncoder, write_colour_folder

CONFIG = IndexConfig(embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=8))


def _manifest(root, paths, name):
    out = root / f"{name}.jsonl"
    out.write_text("".join(json.dumps({"image": str(p), "caption": f"a {p.stem.split('-')[0]} square"}) + "\n"
                           for p in paths))
    return list_items(str(out))


def _answers(index_dir):
    idx = open_index(index_dir, encoder_factory=lambda spec: PixelEncoder())
    try:
        texts = [[h.id for h in idx.search(text=t, k=5).results] for t in ("red", "white", "blue")]
        images = [[(h.id, round(h.score, 5)) for h in idx.search(image_id=i, k=5).results] for i in (0, 3)]
        captions = [[h.id for h in idx.search(image_id=i, k=3, target="text").results] for i in (1, 4)]
        return texts, images, captions
    finally:
        idx.close()


def test_spilled_build_and_add_equal_the_in_ram_ones(tmp_path, monkeypatch):
    paths = write_colour_folder(tmp_path / "colours", per_colour=3, bad=False)
    first, second = paths[: len(paths) // 2], paths[len(paths) // 2:]
    build_index(_manifest(tmp_path, first, "a"), tmp_path / "ram", PixelEncoder(), CONFIG, progress=False)
    add_to_index(_manifest(tmp_path, second, "b"), tmp_path / "ram", PixelEncoder(), CONFIG, progress=False)

    mapped = []
    read = build_mod._Segment.read

    def spying_read(folder, max_memory_bytes=None):
        seg = read(folder, max_memory_bytes)
        mapped.append((is_mapped(seg.xb), is_mapped(seg.xt), sorted(p.name for p in folder.glob(".build-*"))))
        return seg

    monkeypatch.setattr(build_mod, "SPILL_SHARE", 0.0)  # every segment is "bigger than the budget"
    monkeypatch.setattr(shard_files, "ADD_BLOCK_ROWS", 5)  # several blocks per shard
    monkeypatch.setattr(build_mod._Segment, "read", staticmethod(spying_read))
    build_index(_manifest(tmp_path, first, "a"), tmp_path / "disk", PixelEncoder(), CONFIG, progress=False)
    add_to_index(_manifest(tmp_path, second, "b"), tmp_path / "disk", PixelEncoder(), CONFIG, progress=False)

    scratch = [".build-image.f32.npy", ".build-text.f32.npy"]
    assert mapped == [(True, True, scratch), (True, True, scratch)]  # both segments read from scratch files
    assert not list((tmp_path / "disk").rglob(".build-*"))  # and the files are gone after each
    assert _answers(tmp_path / "disk") == _answers(tmp_path / "ram")
    ram, disk = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("ram", "disk"))
    for key in ("image", "text"):
        assert {k: ram[key][k] for k in ("factory", "kind", "measured_recall")} == \
               {k: disk[key][k] for k in ("factory", "kind", "measured_recall")}
        assert [s["n"] for s in ram[key]["shards"]] == [s["n"] for s in disk[key]["shards"]]


def test_spilled_vectors_equal_the_store(tmp_path):
    from indexing.store import read_segment_captions, read_segment_vectors

    paths = write_colour_folder(tmp_path / "colours", per_colour=2, bad=False)
    build_index(_manifest(tmp_path, paths, "a"), tmp_path / "idx", PixelEncoder(), CONFIG, progress=False)
    seg = tmp_path / "idx" / "embeddings" / "seg-000"
    xb = read_segment_vectors(seg, "image", spill=tmp_path / "x.npy")
    assert is_mapped(xb) and not xb.flags.writeable
    np.testing.assert_array_equal(xb, read_segment_vectors(seg, "image"))
    _, xt = read_segment_captions(seg, spill=tmp_path / "t.npy")
    np.testing.assert_array_equal(xt, read_segment_captions(seg)[1])
    with pytest.raises(ValueError):
        xb[0, 0] = 1.0  # read-only: the build cannot change the store through it

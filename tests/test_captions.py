"""One image, many captions (COCO / Flickr30k manifests): embedded once, every caption searchable,
scored the COCO way by `retr eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from indexing.build import IndexConfig, add_to_index, build_index
from indexing.embed import EmbedConfig
from indexing.sources import read_source
from retrieval.evaluate import text_image_recall
from retrieval.search import open_index
from retrieval.training.data import read_pairs
from tests.conftest import COLOURS, PixelEncoder, colour_image

SMALL = IndexConfig(embed=EmbedConfig(batch_size=4, num_workers=0, chunk_size=4))
PHRASES = ("a {} square", "something {}", "{} colour", "the {} one", "plain {}")


def _coco_manifest(folder: Path, colours: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(colours):
        colour_image(COLOURS[name], seed=i).save(folder / f"{name}.png")
        rows += [{"image": f"{name}.png", "caption": p.format(name), "split": "test"} for p in PHRASES]
    rows.append(dict(rows[0]))  # an identical row: folded silently
    path = folder / "captions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_five_captions_fold_into_one_image(tmp_path: Path) -> None:
    listing = read_source(str(_coco_manifest(tmp_path / "coco", ["red", "blue", "green"])))
    assert len(listing.items) == 3
    assert listing.items[0].captions == tuple(p.format("red") for p in PHRASES)
    assert any("12 rows add a further caption" in n and "3 images" in n for n in listing.notes)


def test_index_holds_one_vector_per_image_and_every_caption(tmp_path: Path) -> None:
    colours = ["red", "blue", "green", "yellow", "purple", "cyan"]
    manifest = _coco_manifest(tmp_path / "coco", colours)
    out = tmp_path / "idx"
    report = build_index(read_source(str(manifest)).items, out, PixelEncoder(), SMALL, progress=False)
    m = report.manifest
    assert (m.n_items, m.n_captions, m.image.n, m.text.n) == (6, 30, 6, 30)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    red = next(h for h in idx.search(text="red", k=6).results if h.path.endswith("red.png"))
    to_text = idx.search(image_id=red.id, k=5, target="text").results
    assert sorted(h.caption for h in to_text) == sorted(p.format("red") for p in PHRASES)
    assert {h.id for h in to_text} == {red.id}
    filtered = idx.search(image_id=red.id, k=30, target="text", where="path LIKE '%blue%'").results
    assert {h.caption for h in filtered} == {p.format("blue") for p in PHRASES}
    assert len(filtered) == 5


def test_add_continues_caption_ids(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    first = _coco_manifest(tmp_path / "a", ["red", "blue"])
    build_index(read_source(str(first)).items, out, PixelEncoder(), SMALL, progress=False)
    second = _coco_manifest(tmp_path / "b", ["green"])
    report = add_to_index(read_source(str(second)).items, out, PixelEncoder(), SMALL, progress=False)
    assert (report.manifest.n_items, report.manifest.n_captions, report.manifest.next_caption_id) == (3, 15, 15)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    cids = idx.meta.caption_ids()
    assert cids.tolist() == list(range(15))
    green = idx.search(text="green", k=1).results[0]
    assert {h.caption for h in idx.search(image_id=green.id, k=5, target="text").results} == {
        p.format("green") for p in PHRASES}


def test_eval_scores_coco_style(tmp_path: Path) -> None:
    colours = list(COLOURS)[:6]
    pairs = read_pairs(_coco_manifest(tmp_path / "coco", colours))
    assert len(pairs) == 6 and all(len(p.queries) == 5 for p in pairs)
    section = text_image_recall(PixelEncoder(), pairs)
    assert section.metrics["n"] == 6 and section.metrics["captions"] == 30
    # every caption names its colour, so each finds its own image first, and each image a caption of its own
    assert section.metrics["t2i_R@1"] == 1.0 and section.metrics["i2t_R@1"] == 1.0


def test_indexes_from_before_caption_ids_still_search_and_grow(tmp_path: Path) -> None:
    """An index whose chunks have no captions table (one caption per image, cid = id) still answers
    image→text and accepts an add with several captions per image."""
    out = tmp_path / "idx"
    build_index(read_source(str(_coco_manifest(tmp_path / "a", ["red", "blue"]))).items, out, PixelEncoder(),
                SMALL, progress=False)
    _make_legacy(out)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    red = idx.search(text="red", k=1).results[0]
    assert [h.caption for h in idx.search(image_id=red.id, k=1, target="text").results] == ["a red square"]
    idx.close()
    report = add_to_index(read_source(str(_coco_manifest(tmp_path / "b", ["green"]))).items, out, PixelEncoder(),
                          SMALL, progress=False)
    assert report.manifest.next_caption_id == 2 + 5
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    green = idx.search(text="green", k=1).results[0]
    assert len(idx.search(image_id=green.id, k=10, target="text", where="path LIKE '%green%'").results) == 5


def _make_legacy(out: Path) -> None:
    """Rewrite a fresh index the way the previous format stored it: .txt.npy aligned with the images
    (first caption), no .captions.parquet, no captions table, no caption counters in index.json."""
    import duckdb

    from indexing.build import _Segment, build_collection
    from indexing.store import chunk_paths, complete_chunks

    seg = out / "embeddings" / "seg-000"
    for c in complete_chunks(seg):
        p = chunk_paths(seg, c)
        caps = pq.read_table(p.captions).to_pylist()
        xt = np.load(p.text)
        meta = pq.read_table(p.meta).to_pylist()
        first = {}
        for r in caps:
            first.setdefault(r["id"], r["row"])
        aligned = np.stack([xt[first[m["id"]]] for m in meta])
        np.save(p.text, aligned)
        p.captions.unlink()
    con = duckdb.connect(str(out / "metadata.duckdb"))
    con.execute("DROP TABLE captions")
    con.close()
    m = json.loads((out / "index.json").read_text())
    del m["next_caption_id"], m["n_captions"]
    legacy = _Segment.read(seg)  # now derived from the items: cid = id
    assert legacy.captions.column("cid").to_pylist() == legacy.meta.column("id").to_pylist()
    ids = legacy.captions.column("cid").to_numpy()
    text = build_collection("text", out, legacy.xt, ids, [np.arange(len(ids))], legacy.xb[:2], SMALL)
    from dataclasses import asdict
    m["text"] = asdict(text)
    (out / "index.json").write_text(json.dumps(m))

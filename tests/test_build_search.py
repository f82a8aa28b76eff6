"""Index build → search on a small real image folder, with the cheap PixelEncoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexing.build import IndexConfig, add_to_index, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval import search as search_mod
from retrieval.search import Query, open_index
from tests.conftest import PixelEncoder, write_colour_folder

SMALL = EmbedConfig(batch_size=8, num_workers=0, chunk_size=10)


def _build(folder: Path, out: Path, encoder: PixelEncoder, **kw) -> search_mod.RetrievalIndex:
    build_index(list_items(str(folder)), out, encoder, IndexConfig(embed=SMALL, **kw), progress=False)
    return open_index(out, encoder_factory=lambda spec: encoder)


def test_build_writes_index_and_reports_rejects(colour_folder, tmp_path, pixel_encoder):
    out = tmp_path / "idx"
    idx = _build(colour_folder, out, pixel_encoder)
    m = json.loads((out / "index.json").read_text())
    assert m["n_items"] == 40 and m["n_rejected"] == 2
    assert m["image"]["measured_recall"] >= 0.95
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(Path(r["path"]).name for r in rejects) == ["corrupt.png", "truncated.jpg"]
    assert all(r["reason"] for r in rejects)
    assert not list(out.rglob("*.tmp")), "no temp files may survive a completed build"
    assert idx.meta.count() == 40


def test_text_query_finds_matching_colour(colour_folder, tmp_path, pixel_encoder):
    idx = _build(colour_folder, tmp_path / "idx", pixel_encoder)
    res = idx.search(text="blue", k=4)
    assert [Path(h.path).name.split("-")[0] for h in res.results] == ["blue"] * 4
    assert res.results[0].caption == "a blue square"
    scores = [h.score for h in res.results]
    assert scores == sorted(scores, reverse=True)
    js = res.to_json()
    assert set(js) == {"query", "results"} and set(js["results"][0]) == {"id", "score", "path", "caption"}


def test_image_id_and_image_file_queries(colour_folder, tmp_path, pixel_encoder):
    idx = _build(colour_folder, tmp_path / "idx", pixel_encoder)
    target = idx.search(text="green", k=1).results[0]
    by_id = idx.search(image_id=target.id, k=3)
    assert by_id.results[0].id == target.id
    assert by_id.results[0].score == pytest.approx(1.0, abs=2e-3)
    by_file = idx.search(image=target.path, k=1)
    assert by_file.results[0].id == target.id
    with pytest.raises(ValueError, match="no indexed item with id"):
        idx.search(image_id=10_000, k=1)


def test_image_to_text_returns_captions(colour_folder, tmp_path, pixel_encoder):
    idx = _build(colour_folder, tmp_path / "idx", pixel_encoder)
    red = idx.search(text="red", k=1).results[0]
    res = idx.search(image_id=red.id, k=3, target="text")
    assert all(h.caption == "a red square" for h in res.results)


@pytest.mark.parametrize("cutoff", [search_mod.EXACT_FILTER_CUTOFF, 0])
def test_filter_returns_k_matching_items(colour_folder, tmp_path, pixel_encoder, monkeypatch, cutoff):
    """Both filter paths (exact over matches, faiss IDSelector) return k hits, all matching."""
    monkeypatch.setattr(search_mod, "EXACT_FILTER_CUTOFF", cutoff)
    idx = _build(colour_folder, tmp_path / "idx", pixel_encoder)
    res = idx.search(text="red", k=5, where="path LIKE '%/cool/%'")
    assert len(res.results) == 5
    assert all("/cool/" in h.path for h in res.results)
    few = idx.search(text="red", k=10, where="caption = 'a pink square'")
    assert len(few.results) == 4  # only 4 match: all of them, no padding
    with pytest.raises(ValueError, match="bad --where"):
        idx.search(text="red", k=3, where="no_such_column = 1")


def test_shards_search_like_one_index(colour_folder, tmp_path, pixel_encoder):
    one = _build(colour_folder, tmp_path / "one", pixel_encoder)
    three = _build(colour_folder, tmp_path / "three", pixel_encoder, shards=3)
    assert len(three.manifest.image.shards) == 3
    assert len(list((tmp_path / "three" / "shards").glob("image-0*.faiss"))) == 3
    for q in ("red", "cyan", "black"):
        assert [h.id for h in one.search(text=q, k=8).results] == [h.id for h in three.search(text=q, k=8).results]


def test_add_appends_only_new_items(tmp_path, pixel_encoder):
    folder = tmp_path / "imgs"
    write_colour_folder(folder, per_colour=2, bad=False)
    out = tmp_path / "idx"
    _build(folder, out, pixel_encoder)
    from tests.conftest import colour_image

    colour_image((250, 140, 20), seed=777).save(folder / "late-orange.png")
    (folder / "late-orange.txt").write_text("a late orange square")
    report = add_to_index(list_items(str(folder)), out, pixel_encoder, IndexConfig(embed=SMALL), progress=False)
    assert report.embed.n_items == 1 and report.manifest.n_items == 21
    idx = open_index(out, encoder_factory=lambda s: pixel_encoder)
    ids = idx.meta.all_ids()
    assert len(ids) == len(np.unique(ids)) == 21
    assert idx.search(text="orange", k=3, where="caption LIKE '%late%'").results[0].path.endswith("late-orange.png")
    assert len(idx.manifest.image.shards) == 2
    again = add_to_index(list_items(str(folder)), out, pixel_encoder, IndexConfig(embed=SMALL), progress=False)
    assert again.embed.n_items == 0 and again.manifest.n_items == 21


def test_refuses_to_overwrite_and_bad_queries(colour_folder, tmp_path, pixel_encoder):
    idx = _build(colour_folder, tmp_path / "idx", pixel_encoder)
    with pytest.raises(ValueError, match="already holds an index"):
        build_index(list_items(str(colour_folder)), tmp_path / "idx", pixel_encoder, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        Query(text="a", image_id=1)
    with pytest.raises(ValueError, match="cannot decode query image"):
        idx.search(image=str(colour_folder / "corrupt.png"), k=1)


class _Crash(RuntimeError):
    pass


class CrashingEncoder(PixelEncoder):
    """Dies after `budget` batches, like a job killed mid-run."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def encode_pixels(self, pixels):
        self.budget -= 1
        if self.budget < 0:
            raise _Crash("killed")
        return super().encode_pixels(pixels)


def test_interrupted_build_resumes_without_duplicates(colour_folder, tmp_path, pixel_encoder):
    out = tmp_path / "idx"
    items = list_items(str(colour_folder))
    with pytest.raises(_Crash):
        build_index(items, out, CrashingEncoder(budget=3), IndexConfig(embed=SMALL), progress=False)
    done = sorted((out / "embeddings" / "seg-000").glob("chunk-*[0-9].parquet"))
    assert 0 < len(done) < 5
    report = build_index(items, out, pixel_encoder, IndexConfig(embed=SMALL), progress=False)
    assert report.embed.n_chunks_resumed == len(done)
    idx = open_index(out, encoder_factory=lambda s: pixel_encoder)
    paths = [r["path"] for r in idx.meta.rows(idx.meta.all_ids().tolist()).values()]
    assert len(paths) == len(set(paths)) == 40


def test_resume_refuses_changed_parameters(colour_folder, tmp_path, pixel_encoder):
    out = tmp_path / "idx"
    items = list_items(str(colour_folder))
    with pytest.raises(_Crash):
        build_index(items, out, CrashingEncoder(budget=1), IndexConfig(embed=SMALL), progress=False)
    other = EmbedConfig(batch_size=8, num_workers=0, chunk_size=7)
    with pytest.raises(ValueError, match="different parameters.*chunk_size"):
        build_index(items, out, pixel_encoder, IndexConfig(embed=other), progress=False)
    retrained = PixelEncoder()
    retrained.weights_id = "sha256:new"  # same name, new weights: its vectors must not join the old ones
    with pytest.raises(ValueError, match="different parameters.*weights: on disk None, now 'sha256:new'"):
        build_index(items, out, retrained, IndexConfig(embed=SMALL), progress=False)


def test_index_files_get_ordinary_permissions(colour_folder, tmp_path, pixel_encoder):
    """Atomic writes go through mkstemp (0600); the files users share must not stay owner-only."""
    import os

    out = tmp_path / "idx"
    _build(colour_folder, out, pixel_encoder)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("index.json", "metadata.duckdb", "shards/image-000.faiss"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


class RetrainedPixelEncoder(PixelEncoder):
    """The same model name with other weights: what a retrained `retr:default` looks like."""

    weights_id = "sha256:bbbb"


def test_an_index_refuses_a_model_whose_weights_changed_under_its_name(colour_folder, tmp_path):
    old = PixelEncoder()
    old.weights_id = "sha256:aaaa"
    out = tmp_path / "idx"
    _build(colour_folder, out, old)
    assert json.loads((out / "index.json").read_text())["model_weights"] == "sha256:aaaa"
    assert open_index(out, encoder_factory=lambda spec: old).search(text="blue", k=1).results
    stale = open_index(out, encoder_factory=lambda spec: RetrainedPixelEncoder())
    with pytest.raises(ValueError, match=r"weights sha256:aaaa, and that name now loads sha256:bbbb.*--replace-stale"):
        stale.search(text="blue", k=1)
    assert stale.search(image_id=0, k=1).results  # stored vectors still answer image-id queries
    extra = tmp_path / "extra"
    write_colour_folder(extra, per_colour=1, bad=False)
    with pytest.raises(ValueError, match="cannot add to .*weights sha256:aaaa"):
        add_to_index(list_items(str(extra)), out, RetrainedPixelEncoder(), IndexConfig(embed=SMALL), progress=False)

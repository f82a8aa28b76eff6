"""Patch-token caches for reranking (retrieval.rerank.token_cache, `retr index rerank-cache`), on the
colour index of test_rerank.py and its ColourReranker (tokens = a 4x4 image's normalised pixels)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from typer.testing import CliRunner

from app import cli
from indexing.manifest import read_manifest
from retrieval.rerank.token_cache import CACHE_DIR, build_token_cache, cache_slug
from tests.test_rerank import ColourReranker, _open, colour_index  # noqa: F401 (colour_index: a fixture)


@dataclass(eq=False)
class RetrainedColourReranker(ColourReranker):
    """The same reranker under the same name, with other weights: a cache of the old ones is not for it."""

    def cache_key(self) -> str:
        return f"{self.name}@retrained"


@pytest.fixture
def index_copy(colour_index, tmp_path):  # noqa: F811
    index_dir, colours = colour_index
    shutil.copytree(index_dir, tmp_path / "idx")
    return tmp_path / "idx", colours


def _reranked(index_dir, reranker, k=5):
    idx = _open(index_dir, reranker)
    try:
        return idx.search(text="white", k=k, rerank=k).results
    finally:
        idx.close()


def test_cached_tokens_give_the_same_ranking_without_reading_an_image(index_copy):
    index_dir, colours = index_copy
    from_files = _reranked(index_dir, ColourReranker())
    report = build_token_cache(index_dir, ColourReranker(), progress=False)
    n = read_manifest(index_dir).n_items
    assert (report.items, report.unreadable) == (n, 0) and report.chunks_built == 3  # 21 items, chunks of 8
    entry = read_manifest(index_dir).rerank_caches["test:colour"]
    assert entry["folder"] == f"{CACHE_DIR}/{cache_slug('test:colour')}" and entry["items"] == n
    assert entry["token_shape"] == [16, 3] and entry["bytes"] == report.bytes > n * 16 * 3 * 2
    reranker = ColourReranker()
    cached = _reranked(index_dir, reranker)
    assert reranker.forwards == []  # no image went through the image side: every token came from the cache
    assert [h.id for h in cached] == [h.id for h in from_files]
    assert [colours[h.id] for h in cached] == ["white", "white", "grey", "pink", "pink"]
    np.testing.assert_allclose([h.itm for h in cached], [h.itm for h in from_files], atol=2e-3)  # float16 tokens


def test_a_cache_of_other_weights_is_not_used_and_is_rebuilt(index_copy):
    index_dir, _ = index_copy
    build_token_cache(index_dir, ColourReranker(), progress=False)
    retrained = RetrainedColourReranker()
    _reranked(index_dir, retrained)
    assert retrained.forwards == [5]  # read from the files, not from the old weights' tokens
    report = build_token_cache(index_dir, retrained, progress=False)
    assert report.chunks_built == 3  # all recomputed
    assert read_manifest(index_dir).rerank_caches["test:colour"]["key"] == "test:colour@retrained"
    again = RetrainedColourReranker()
    _reranked(index_dir, again)
    assert again.forwards == []


def test_an_interrupted_cache_resumes_and_missing_items_come_from_their_files(index_copy):
    index_dir, _ = index_copy
    build_token_cache(index_dir, ColourReranker(), progress=False)
    folder = index_dir / CACHE_DIR / cache_slug("test:colour")
    marker = next(iter(sorted(folder.glob("*/chunk-00001.ok.npy"))))
    in_chunk = len(np.load(marker))
    marker.unlink()  # as if killed before chunk 1 was committed
    reranker = ColourReranker()
    n = read_manifest(index_dir).n_items
    hits = _reranked(index_dir, reranker, k=n)  # every item: chunk 1's are read from their files
    assert reranker.forwards == [in_chunk] and all(h.itm is not None for h in hits)
    report = build_token_cache(index_dir, ColourReranker(), progress=False)
    assert report.chunks_built == 1 and report.items == n


def test_cli_rerank_cache(index_copy, monkeypatch, tmp_path):
    index_dir, _ = index_copy
    monkeypatch.setattr("retrieval.rerank.load_reranker", lambda spec, device="cpu": ColourReranker())
    runner = CliRunner()
    res = runner.invoke(cli.app, ["index", "rerank-cache", str(index_dir), "--reranker", "test:colour", "--quiet"])
    assert res.exit_code == 0, res.output
    n = read_manifest(index_dir).n_items
    assert f"cached test:colour tokens of {n} images" in res.output
    info = json.loads(runner.invoke(cli.app, ["index", "info", str(index_dir)]).output)
    assert info["rerank_caches"]["test:colour"]["items"] == n
    res = runner.invoke(cli.app, ["index", "rerank-cache", str(tmp_path / "nope"), "--reranker", "test:colour"])
    assert res.exit_code == 2 and "not a retr index" in res.output


def test_api_reranks_from_the_cache(index_copy):
    from fastapi.testclient import TestClient

    from app.api import create_app
    from retrieval.service import IndexService
    from tests.conftest import PixelEncoder

    index_dir, colours = index_copy
    build_token_cache(index_dir, ColourReranker(), progress=False)
    reranker = ColourReranker()
    service = IndexService(index_dir, encoder_factory=lambda spec: PixelEncoder())
    with TestClient(create_app([service], reranker=reranker)) as c:
        r = c.post("/search", json={"text": "white", "k": 3, "rerank": 5})
    assert r.status_code == 200, r.text
    assert [colours[h["id"]] for h in r.json()["results"]] == ["white", "white", "grey"]
    assert reranker.forwards == []  # the served index's cache, no image decoded

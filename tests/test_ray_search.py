"""Search over shards held by Ray actors (retrieval.distributed_search) on a local two-CPU cluster.

A 4-shard index of the colour corpus is opened locally and over Ray; every query (text, image file,
image id, image→text, k past one shard's size and past the index, metadata filters both exact and
through the actors' IDSelector) must give the same JSON, scores within 1e-6 (0 is what is observed:
the actors run the same faiss search on the same files; batches of 20+ queries can differ by ~1e-7, as
faiss's BLAS rounding depends on the thread count). A killed actor is restarted by Ray and the
next search still answers the same; with restarts off, the search fails naming the lost shards
and `retr serve` answers 503.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval import search as search_mod
from retrieval.search import Query, open_index
from retrieval.service import IndexService
from tests.conftest import PixelEncoder, write_colour_folder

ray = pytest.importorskip("ray")
from retrieval.distributed_search import (  # noqa: E402
    RaySearchConfig,
    RayShards,
    ShardUnavailableError,
    ray_shards,
    shard_groups,
)

ROOT = Path(__file__).resolve().parent.parent
# 60 items in 8 chunks of 8 -> 4 shards of 16, 16, 16 and 12 vectors; captions: one per item
CONFIG = IndexConfig(shards=4, embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=8))
ENCODER = PixelEncoder()


def encoder_factory(spec: str) -> PixelEncoder:
    return ENCODER


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-search")
    write_colour_folder(root / "imgs", per_colour=6, bad=False)
    build_index(list_items(str(root / "imgs")), root / "idx", ENCODER, CONFIG, progress=False)
    return root / "idx"


class _Holder:
    """A `shards=` opener that keeps the RayShards it opens, so a test can reach their actors."""

    def __init__(self, config: RaySearchConfig) -> None:
        self.opener, self.opened = ray_shards(config), []

    def __call__(self, *args) -> RayShards:
        self.opened.append(self.opener(*args))
        return self.opened[-1]


def _queries(index_dir: Path) -> list[Query]:
    image = next((index_dir.parent / "imgs" / "cool").glob("blue-*.png"))
    texts = [Query(text=t) for t in ("red", "a blue square", "green", "white thing", "pink", "zebra")]
    return [*texts, Query(image=str(image)), Query(image_id=3), Query(image_id=41)]


def _assert_same(a: list, b: list) -> None:
    for ra, rb in zip(a, b, strict=True):
        ja, jb = ra.to_json(), rb.to_json()
        assert [h["id"] for h in ja["results"]] == [h["id"] for h in jb["results"]], ja["query"]
        np.testing.assert_allclose([h["score"] for h in ja["results"]], [h["score"] for h in jb["results"]],
                                   atol=1e-6)
        strip = [{**h, "score": 0} for h in ja["results"]], [{**h, "score": 0} for h in jb["results"]]
        assert strip[0] == strip[1] and ja["query"] == jb["query"]


def _record_allowed(monkeypatch) -> list[int]:
    """Sizes of the id selections RayShards sends to its actors."""
    sent, search = [], RayShards.search

    def spy(self, xq, k, allowed=None):
        if allowed is not None:
            sent.append(len(allowed))
        return search(self, xq, k, allowed)

    monkeypatch.setattr(RayShards, "search", spy)
    return sent


def test_shard_groups_are_consecutive_runs() -> None:
    assert shard_groups(4, 1) == [(0,), (1,), (2,), (3,)]
    assert shard_groups(4, 3) == [(0, 1, 2), (3,)]
    assert shard_groups(1, 8) == [(0,)]


@pytest.mark.parametrize("shards_per_actor", [1, 3])
def test_ray_search_equals_local(ray_cluster, index_dir: Path, monkeypatch, shards_per_actor: int) -> None:
    local = open_index(index_dir, encoder_factory)
    config = RaySearchConfig(shards_per_actor=shards_per_actor)
    remote = open_index(index_dir, encoder_factory, shards=ray_shards(config))
    try:
        assert [s.n for s in local.manifest.image.shards] == [16, 16, 16, 12]
        queries = _queries(index_dir)
        for k in (1, 5, 20, 100):  # 20: past one shard's 16; 100: past the index's 60
            got = remote.search_batch(queries, k=k)
            _assert_same(local.search_batch(queries, k=k), got)
            assert all(len(r.results) == min(k, 60) for r in got)
            assert "/red-" in got[0].results[0].path  # "red" finds a red square first
        image_ids = [q for q in queries if q.text is None]
        _assert_same(local.search_batch(image_ids, k=20, target="text"),
                     remote.search_batch(image_ids, k=20, target="text"))
        where = "path LIKE '%/warm/%'"  # 24 of 60 items
        sent = _record_allowed(monkeypatch)
        for cutoff in (search_mod.EXACT_FILTER_CUTOFF, 0):  # 0: the filter goes to the actors as an IDSelector
            monkeypatch.setattr(search_mod, "EXACT_FILTER_CUTOFF", cutoff)
            a, b = local.search_batch(queries, k=30, where=where), remote.search_batch(queries, k=30, where=where)
            _assert_same(a, b)
            assert all(len(r.results) == 24 and all("/warm/" in h.path for h in r.results) for r in b)
        assert sent == [24]  # the small selection was searched exactly on the driver; the other went out
    finally:
        local.close()
        remote.close()


def test_killed_actor_is_restarted_and_answers_the_same(ray_cluster, index_dir: Path) -> None:
    local = open_index(index_dir, encoder_factory)
    held = _Holder(RaySearchConfig(shards_per_actor=2))
    remote = open_index(index_dir, encoder_factory, shards=held)
    try:
        queries = _queries(index_dir)
        expected = local.search_batch(queries, k=20)
        _assert_same(expected, remote.search_batch(queries, k=20))
        image = held.opened[0]
        pids = image.pids()
        os.kill(pids[1], signal.SIGKILL)  # between two queries
        _assert_same(expected, remote.search_batch(queries, k=20))
        new = image.pids()
        assert new[1] != pids[1] and new[0] == pids[0]  # that actor alone was started again
    finally:
        local.close()
        remote.close()


def test_actor_dead_for_good_is_a_clear_error(ray_cluster, index_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from app.api import create_app

    held = _Holder(RaySearchConfig(shards_per_actor=2, max_restarts=0, max_task_retries=0))
    service = IndexService(index_dir, encoder_factory=encoder_factory, shards=held)
    try:
        with TestClient(create_app([service])) as client:
            assert client.post("/search", json={"text": "red", "k": 5}).status_code == 200
            os.kill(held.opened[0].pids()[1], signal.SIGKILL)  # the actor of image shards 2 and 3
            with pytest.raises(ShardUnavailableError, match="image-002.faiss, shards/image-003.faiss"):
                service.index.search(text="red", k=5)
            res = client.post("/search", json={"text": "red", "k": 5})
            assert res.status_code == 503 and "shards/image-002.faiss" in res.json()["message"]
            assert res.json()["error"] == "not_ready"
    finally:
        service.close()


def test_replicas_take_turns_and_step_over_one_down_for_good(ray_cluster, index_dir: Path) -> None:
    """Two actors per group of two shards, no restarts: searches alternate between the replicas; with one
    replica of a group killed the other answers the same; with both gone the search names the shards."""
    local = open_index(index_dir, encoder_factory)
    held = _Holder(RaySearchConfig(shards_per_actor=2, replicas=2, concurrency=2, max_restarts=0,
                                   max_task_retries=0))
    remote = open_index(index_dir, encoder_factory, shards=held)
    try:
        queries = _queries(index_dir)
        expected = local.search_batch(queries, k=20)
        image = held.opened[0]
        assert len(image.actors) == 4  # 2 groups x 2 replicas
        for _ in range(2):
            _assert_same(expected, remote.search_batch(queries, k=20))
        assert image.searches() == [1, 1, 1, 1]  # one batched search each: the turns alternate
        pids = image.pids()
        os.kill(pids[0], signal.SIGKILL)  # replica 0 of image shards 0 and 1
        for _ in range(2):  # whichever replica's turn it is, the live one answers
            _assert_same(expected, remote.search_batch(queries, k=20))
        os.kill(pids[1], signal.SIGKILL)  # and its other replica
        with pytest.raises(ShardUnavailableError, match="replicas=2.*image-000.faiss, shards/image-001.faiss"):
            remote.search_batch(queries, k=20)
    finally:
        local.close()
        remote.close()


def test_service_over_ray_and_close_kills_the_actors(ray_cluster, index_dir: Path) -> None:
    held = _Holder(RaySearchConfig(shards_per_actor=2))
    service = IndexService(index_dir, encoder_factory=encoder_factory, shards=held)
    local = open_index(index_dir, encoder_factory)
    try:
        with service.lease() as idx:
            _assert_same(local.search_batch(_queries(index_dir), k=10), idx.search_batch(_queries(index_dir), k=10))
        actors = [a for s in held.opened for a in s.actors]
        assert len(actors) == 4  # image and text collections, 2 actors each
    finally:
        local.close()
        service.close()
    assert all(not s.actors for s in held.opened)
    for a in actors:  # killed, not merely forgotten: a reloaded index must not leave old actors behind
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.pid.remote(), timeout=30)


def test_cli_ray_options_reach_the_opener(monkeypatch, index_dir: Path) -> None:
    from app import cli

    seen = {}

    def fake_open(path, **kw):
        seen.update(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(cli.search_mod, "open_index", fake_open)
    for argv, address in ((["--ray"], None), (["--ray-address", "auto"], "auto")):
        res = CliRunner().invoke(cli.app, ["search", str(index_dir), "--text", "red", *argv])
        assert res.exit_code == 2 and "stop here" in res.output
        assert seen["shards"].keywords["config"].address == address
        assert seen["shards"].keywords["config"] == RaySearchConfig(address=address)
    res = CliRunner().invoke(cli.app, ["search", str(index_dir), "--text", "red", "--ray", "--ray-replicas", "2",
                                       "--ray-shards-per-actor", "3", "--ray-concurrency", "4"])
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen["shards"].keywords["config"] == RaySearchConfig(replicas=2, shards_per_actor=3, concurrency=4)
    seen.clear()
    res = CliRunner().invoke(cli.app, ["search", str(index_dir), "--text", "red", "--ray-replicas", "2"])
    assert res.exit_code == 2 and "add --ray" in res.output and not seen  # refused before opening anything


def test_cli_serve_ray_options_reach_the_service(monkeypatch, index_dir: Path) -> None:
    import retrieval.service
    from app import cli

    seen = {}

    def fake_service(path, **kw):
        seen.update(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(retrieval.service, "IndexService", fake_service)
    res = CliRunner().invoke(cli.app, ["serve", str(index_dir), "--ray-address", "ray://head:10001"])
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen["shards"].keywords["config"].address == "ray://head:10001"
    seen.clear()
    res = CliRunner().invoke(cli.app, ["serve", str(index_dir)])
    assert res.exit_code == 2 and seen["shards"] is None


@pytest.mark.parametrize("command", [["search", "--text", "red"], ["serve"]])
def test_ray_without_ray_installed_says_how_to_install(monkeypatch, index_dir: Path, command) -> None:
    from app import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(cli.app, [command[0], str(index_dir), *command[1:], "--ray"])
    assert res.exit_code == 2 and "pip install 'retr[distributed]'" in res.output


def test_cli_search_with_a_shard_down_for_good_is_a_clear_error_not_a_traceback(monkeypatch, index_dir: Path) -> None:
    from app import cli

    def down(path, **kw):
        raise ShardUnavailableError("shard actor for shards/image-002.faiss is gone after 3 restarts")

    monkeypatch.setattr(cli.search_mod, "open_index", down)
    res = CliRunner().invoke(cli.app, ["search", str(index_dir), "--text", "red", "--ray"])
    assert res.exit_code == 2 and "shards/image-002.faiss" in res.output
    assert isinstance(res.exception, SystemExit)  # a clean exit, not an uncaught error

"""`--ray` builds (indexing.distributed.ray_embed) on a local two-CPU Ray cluster and the colour corpus.

The Ray build must equal the local one (ids, paths, vectors, top-10 of a set of queries), and the two
faults the issue names must still end with every item exactly once: the driver killed with SIGKILL then
rerun, and an actor process killed mid-chunk (Ray restarts it and resubmits its chunks).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval.search import open_index
from tests.conftest import PixelEncoder, sigkill_when, write_colour_folder

ray = pytest.importorskip("ray")
from indexing.distributed.ray_embed import RayEmbedRunner, hook_encoder  # noqa: E402
from indexing.distributed.ray_shards import RayShardWriter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = IndexConfig(embed=EmbedConfig(batch_size=4, num_workers=0, chunk_size=8))  # 62 items -> 8 chunks


class SlowPixelEncoder(PixelEncoder):
    def encode_pixels(self, pixels):
        time.sleep(0.1)
        return super().encode_pixels(pixels)


class KillOncePixelEncoder(PixelEncoder):
    """Kills its own actor process (SIGKILL) at its third batch, once per run (the marker file says so)."""

    def __init__(self, marker: str) -> None:
        self.marker, self.batches = Path(marker), 0

    def encode_pixels(self, pixels):
        self.batches += 1
        time.sleep(0.05)
        if self.batches == 3 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode_pixels(pixels)


CHILD = """
import sys, ray
from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.distributed.ray_embed import RayEmbedRunner, hook_encoder
from indexing.sources import list_items
from tests.conftest import PixelEncoder

folder, out, address = sys.argv[1:4]
ray.init(address=address, log_to_driver=False)
config = IndexConfig(embed=EmbedConfig(batch_size=4, num_workers=0, chunk_size=8))
runner = RayEmbedRunner(hook_encoder("tests.test_distributed:SlowPixelEncoder"))
build_index(list_items(folder), out, PixelEncoder(), config, progress=False, runner=runner)
"""


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # actors import tests.* encoders
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    write_colour_folder(folder, per_colour=6)  # 60 good + 2 bad items
    return folder


def _committed_chunks(out: Path) -> int:
    return len(list((out / "embeddings" / "seg-000").glob("chunk-?????.parquet")))


def _assert_every_item_once(out: Path) -> None:
    encoder = PixelEncoder()
    idx = open_index(out, encoder_factory=lambda spec: encoder)
    ids = idx.meta.all_ids().tolist()
    paths = [r["path"] for r in idx.meta.rows(ids).values()]
    assert len(ids) == len(set(ids)) == 60
    assert len(paths) == len(set(paths)) == 60
    assert idx.manifest.n_rejected == 2
    assert sum(s.n for s in idx.manifest.image.shards) == 60
    assert not list(out.rglob("*.tmp")), "temp files of a killed writer must be cleaned up"
    for i in ids[::7]:  # each item is found by its own vector: no lost or misaligned rows
        hits = idx.search(image_id=int(i), k=6).results
        assert int(i) in [h.id for h in hits] and hits[0].score > 0.999


def test_ray_build_equals_local_build(ray_cluster, corpus: Path, tmp_path: Path) -> None:
    items = list_items(str(corpus))
    encoder = PixelEncoder()
    local = build_index(items, tmp_path / "local", encoder, CONFIG, progress=False)
    runner = RayEmbedRunner(hook_encoder("tests.conftest:PixelEncoder"))
    remote = build_index(items, tmp_path / "ray", encoder, CONFIG, progress=False, runner=runner)
    assert remote.embed.n_embedded == local.embed.n_embedded == 60
    assert remote.embed.n_rejected == local.embed.n_rejected == 2
    a = open_index(tmp_path / "local", encoder_factory=lambda spec: encoder)
    b = open_index(tmp_path / "ray", encoder_factory=lambda spec: encoder)
    ids = a.meta.all_ids().tolist()
    assert b.meta.all_ids().tolist() == ids and len(ids) == 60
    assert a.meta.rows(ids) == b.meta.rows(ids)  # same path, caption, sha256, chunk, row per id
    assert a.manifest.n_captions == b.manifest.n_captions
    queries = [{"text": w} for w in ("red", "a blue square", "green", "white thing", "pink")]
    queries += [{"image_id": i} for i in ids[::9]]
    for q in queries:
        ha, hb = a.search(k=10, **q).results, b.search(k=10, **q).results
        assert [h.id for h in ha] == [h.id for h in hb], q
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6)


@pytest.mark.parametrize("spilled", [False, True])
def test_shards_written_by_ray_tasks_are_the_local_shards(ray_cluster, corpus: Path, tmp_path: Path,
                                                          monkeypatch, spilled: bool) -> None:
    """Shards cloned from one trained quantizer in Ray tasks: byte-identical files, the same index.json.
    spilled: the segment's vectors are a memory-mapped scratch file, which tasks map by path."""
    import indexing.build as build_mod
    import indexing.shard_files as shard_files

    if spilled:
        monkeypatch.setattr(build_mod, "SPILL_SHARE", 0.0)
    items, encoder = list_items(str(corpus)), PixelEncoder()
    config = IndexConfig(shards=3, embed=CONFIG.embed)
    local = build_index(items, tmp_path / "local", encoder, config, progress=False)

    def not_here(*args, **kwargs):
        raise AssertionError("a shard was written by the driver, not by a Ray task")

    for module in (build_mod, shard_files):  # the tasks' processes import their own copy
        monkeypatch.setattr(module, "write_shard", not_here)
    remote = build_index(items, tmp_path / "ray", encoder, config, progress=False, shard_writer=RayShardWriter())
    for coll in ("image", "text"):
        a, b = getattr(local.manifest, coll), getattr(remote.manifest, coll)
        assert len(a.shards) == 3 and a == b  # same files, sizes, sha256 (so same bytes), params, recall
    assert not list((tmp_path / "ray").rglob(".build-*"))


def kill_once_then_write(job, vectors):
    """A shard task that kills its own worker process (SIGKILL) the first time it runs for shard 001."""
    from indexing.distributed.ray_shards import _write_one

    marker = Path(str(job.path) + ".killed")
    if job.path.name.endswith("-001.faiss") and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return _write_one(job, vectors)


class KillingShardWriter(RayShardWriter):
    task = staticmethod(kill_once_then_write)


@pytest.mark.slow
def test_shard_task_killed_is_retried_with_the_same_files(ray_cluster, corpus: Path, tmp_path: Path) -> None:
    items, encoder = list_items(str(corpus)), PixelEncoder()
    config = IndexConfig(shards=3, embed=CONFIG.embed)
    local = build_index(items, tmp_path / "local", encoder, config, progress=False)
    remote = build_index(items, tmp_path / "ray", encoder, config, progress=False, shard_writer=KillingShardWriter())
    killed = sorted(p.name for p in (tmp_path / "ray" / "shards").glob("*.killed"))
    assert killed == ["image-001.faiss.killed", "text-001.faiss.killed"]  # each collection's shard 1 died once
    assert remote.manifest.image == local.manifest.image and remote.manifest.text == local.manifest.text
    assert not list((tmp_path / "ray").rglob("*.tmp"))


@pytest.mark.slow
def test_actor_killed_mid_run_still_every_item_once(ray_cluster, corpus: Path, tmp_path: Path) -> None:
    marker = tmp_path / "killed.pid"
    runner = RayEmbedRunner(partial(KillOncePixelEncoder, str(marker)))
    out = tmp_path / "idx"
    report = build_index(list_items(str(corpus)), out, PixelEncoder(), CONFIG, progress=False, runner=runner)
    assert marker.exists(), "the encoder never killed its actor"
    assert report.manifest.n_items == 60 and report.embed.n_chunks_resumed == 0
    _assert_every_item_once(out)


@pytest.mark.slow
def test_driver_sigkill_then_rerun_has_every_item_once(ray_cluster, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(out), ray_cluster], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    sigkill_when(child, lambda: _committed_chunks(out) >= 2)
    done_before = _committed_chunks(out)
    assert 2 <= done_before < 8 and not (out / "index.json").exists()

    runner = RayEmbedRunner(hook_encoder("tests.conftest:PixelEncoder"))
    report = build_index(list_items(str(corpus)), out, PixelEncoder(), CONFIG, progress=False, runner=runner)
    # the killed driver's actors may still commit a chunk before Ray reaps them: at least what we saw
    assert report.embed.n_chunks_resumed >= done_before
    _assert_every_item_once(out)


@pytest.mark.parametrize(("argv", "address"), [(["--ray"], None), (["--ray", "--ray-address", "auto"], "auto"),
                                               (["--ray-address", "ray://head:10001"], "ray://head:10001"),
                                               ([], "off")])
def test_cli_ray_option_reaches_the_runner(monkeypatch, corpus: Path, tmp_path: Path, argv, address) -> None:
    from typer.testing import CliRunner

    from app import cli

    seen = {}

    def fake_build(items, out, encoder, config, *, source, progress, runner=None, shard_writer=None):
        seen["runner"], seen["shard_writer"] = runner, shard_writer
        raise ValueError("stop here")

    monkeypatch.setattr(cli.build_mod, "build_index", fake_build)
    monkeypatch.setattr(cli, "_load_encoder", lambda spec, device: PixelEncoder())
    clusters = []
    monkeypatch.setattr(cli, "ray_cluster", lambda address: clusters.append(address) or contextlib.nullcontext())
    res = CliRunner().invoke(cli.app, ["index", "build", str(corpus), "--out", str(tmp_path / "o"), "--quiet", *argv])
    assert clusters == ([] if address == "off" else [address])  # one cluster for the embedding and the shards
    assert res.exit_code == 2 and "stop here" in res.output
    if address == "off":
        assert seen["runner"] is None and seen["shard_writer"] is None
    else:
        assert isinstance(seen["runner"], RayEmbedRunner) and seen["runner"].ray_config.address == address
        assert isinstance(seen["shard_writer"], RayShardWriter) and seen["shard_writer"].rc.address == address


def test_ray_add_equals_local_add(ray_cluster, corpus: Path, tmp_path: Path) -> None:
    from indexing.build import add_to_index

    items, encoder = list_items(str(corpus)), PixelEncoder()
    first, rest = items[:30], items[30:]
    for name in ("local", "ray"):
        build_index(first, tmp_path / name, encoder, CONFIG, progress=False)
    local = add_to_index(rest, tmp_path / "local", encoder, CONFIG, progress=False)
    runner = RayEmbedRunner(hook_encoder("tests.conftest:PixelEncoder"))
    remote = add_to_index(rest, tmp_path / "ray", encoder, CONFIG, progress=False, runner=runner)
    assert remote.embed.n_embedded == local.embed.n_embedded and remote.manifest.n_items == local.manifest.n_items
    assert remote.manifest.image == local.manifest.image  # the same new shard files (sha256) and params
    a = open_index(tmp_path / "local", encoder_factory=lambda spec: encoder)
    b = open_index(tmp_path / "ray", encoder_factory=lambda spec: encoder)
    ids = a.meta.all_ids().tolist()
    assert b.meta.all_ids().tolist() == ids and a.meta.rows(ids) == b.meta.rows(ids)


@pytest.mark.parametrize(("argv", "address"), [(["--ray"], None), (["--ray-address", "auto"], "auto"), ([], "off")])
def test_cli_index_add_ray_option_reaches_the_runner(monkeypatch, corpus: Path, tmp_path: Path, argv, address):
    from typer.testing import CliRunner

    from app import cli

    build_index(list_items(str(corpus))[:10], tmp_path / "idx", PixelEncoder(), CONFIG, progress=False)
    seen, clusters = {}, []

    def fake_add(items, out, encoder, config, *, progress, runner=None):
        seen["runner"] = runner
        raise ValueError("stop here")

    monkeypatch.setattr(cli.build_mod, "add_to_index", fake_add)
    monkeypatch.setattr(cli, "_load_encoder", lambda spec, device: PixelEncoder())
    monkeypatch.setattr(cli, "ray_cluster", lambda a: clusters.append(a) or contextlib.nullcontext())
    res = CliRunner().invoke(cli.app, ["index", "add", str(tmp_path / "idx"), str(corpus), "--quiet", *argv])
    assert res.exit_code == 2 and "stop here" in res.output
    if address == "off":
        assert seen["runner"] is None and clusters == []
    else:
        assert isinstance(seen["runner"], RayEmbedRunner) and seen["runner"].ray_config.address == address
        assert clusters == [address]


def test_cli_ray_without_ray_installed_says_how_to_install(monkeypatch, corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setattr(cli, "_load_encoder", lambda spec, device: PixelEncoder())
    res = CliRunner().invoke(cli.app, ["index", "build", str(corpus), "--out", str(tmp_path / "o"), "--ray"])
    assert res.exit_code == 2 and "pip install 'retr[distributed]'" in res.output
    assert not (tmp_path / "o" / "index.json").exists()


def _chunk_bytes(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("chunk-*")) if p.suffix in (".npy", ".parquet")}


def test_curate_embedding_on_ray_equals_local(ray_cluster, corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """`retr curate dedup --ray`: the pool and the --against source are embedded by Ray actors, into the same
    chunk files, and the stage keeps and drops the same items as a local run."""
    import pyarrow.parquet as pq

    import indexing.curation.pool as pool_mod
    from indexing.curation.stages import StageSpec, run_stage

    evals = tmp_path / "evals"
    evals.mkdir()
    for p in sorted(corpus.glob("warm/red-*.png"))[:2] + sorted(corpus.glob("cool/blue-*.png"))[:1]:
        (evals / p.name).write_bytes(p.read_bytes())

    def spec(out: Path) -> StageSpec:
        return StageSpec("dedup", str(corpus), out, "test:pixels", {"threshold": 0.999}, {"against": [str(evals)]},
                         embed=CONFIG.embed, progress=False)

    local = run_stage(spec(tmp_path / "local"), lambda s: PixelEncoder())
    asked = []

    def runner_for(model: str) -> RayEmbedRunner:
        asked.append(model)
        return RayEmbedRunner(hook_encoder("tests.conftest:PixelEncoder"))

    def not_here(*args, **kwargs):
        raise AssertionError("embedded by the driver, not by Ray actors")

    monkeypatch.setattr(pool_mod, "embed_items", not_here)
    remote = run_stage(spec(tmp_path / "ray"), lambda s: PixelEncoder(), runner_for)
    assert asked == ["test:pixels", "test:pixels"]  # the pool, then the --against source
    assert remote.counts == local.counts and local.counts["dropped"]["eval_leak"] > 0
    for name in ("kept.parquet", "dropped.parquet"):
        a, b = (pq.read_table(tmp_path / side / name).to_pylist() for side in ("local", "ray"))
        assert a == b
    assert _chunk_bytes(tmp_path / "ray" / "embeddings") == _chunk_bytes(tmp_path / "local" / "embeddings")


@pytest.mark.parametrize(("argv", "address"), [(["--ray"], None), (["--ray-address", "auto"], "auto"), ([], "off")])
@pytest.mark.parametrize("command", ["dedup", "cluster", "run"])
def test_cli_curate_ray_option_reaches_the_stage(monkeypatch, corpus: Path, tmp_path: Path, argv, address,
                                                command) -> None:
    from typer.testing import CliRunner

    from app import cli, curate_cli

    seen, clusters = {}, []

    def fake_run_stage(spec, load_encoder, runner_for=None):
        seen["runner"] = runner_for and runner_for("retr:default")
        raise ValueError("stop here")

    def fake_run_pipeline(pipeline, load_encoder, runner_for=None):
        fake_run_stage(None, load_encoder, runner_for)
        yield  # never reached

    monkeypatch.setattr(curate_cli, "run_stage", fake_run_stage)
    monkeypatch.setattr(curate_cli, "run_pipeline", fake_run_pipeline)
    monkeypatch.setattr(curate_cli, "ray_cluster", lambda a: clusters.append(a) or contextlib.nullcontext())
    config = tmp_path / "run.toml"
    config.write_text(f'out = "{tmp_path / "run"}"\nsource = "{corpus}"\n[[stage]]\nname = "cluster"\n')
    target = [str(config)] if command == "run" else [str(corpus), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(cli.app, ["curate", command, *target, "--device", "cpu", *argv])
    assert res.exit_code == 2 and "stop here" in res.output, res.output
    if address == "off":
        assert seen["runner"] is None and clusters == []
    else:
        assert clusters == [address]  # one cluster for every SOURCE the command embeds
        assert isinstance(seen["runner"], RayEmbedRunner) and seen["runner"].ray_config.address == address


def test_shard_tasks_ask_ray_for_a_gpu_only_for_cuda_jobs(tmp_path: Path) -> None:
    """`retr index build --ray --device cuda`: a shard task that adds on faiss GPU must be given a GPU,
    or Ray hides the node's GPUs from it and faiss finds none."""
    from indexing.shard_files import ShardJob

    def job(device: str) -> ShardJob:
        return ShardJob("ivf_flat", tmp_path / "t.faiss", np.arange(3), np.arange(3), tmp_path / "s.faiss", device)

    writer = RayShardWriter()
    assert writer.task_options([job("cpu")]) == {"num_cpus": 1.0, "num_gpus": 0, "max_retries": 3}
    assert writer.task_options([job("cuda"), job("cuda")])["num_gpus"] == 1

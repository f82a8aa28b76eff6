"""`retr curate` end to end on real photos and their edited copies: the files each stage writes,
kept + dropped = input, resume after SIGKILL, index folders and kept.parquet as SOURCE, run configs,
and clear errors. Vectors come from the cheap PixelEncoder (conftest); real models have their own tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

from app import cli, curate_cli
from indexing.build import IndexConfig, build_index
from indexing.curation.outputs import KEPT
from indexing.curation.pipeline import read_pipeline, run_pipeline
from indexing.curation.stages import StageSpec, run_stage
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from tests.conftest import COLOURS, PixelEncoder, colour_image, sigkill_when, write_colour_folder

ROOT = Path(__file__).resolve().parent.parent
# (skimage's `cat` is `chelsea`, byte for byte: found by this stage)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "coins", "immunohistochemistry")
EMBED = EmbedConfig(batch_size=8, num_workers=0, chunk_size=8)


def write_photos(folder: Path) -> dict[str, str]:
    """8 real photos, each with a JPEG q40 re-encode (the same to a perceptual hash), a byte copy of one and
    a corrupt file. Returns file → original."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.save(folder / f"{name}.png")
        image.save(folder / f"{name}_q40.jpg", quality=40)
        truth[f"{name}.png"] = truth[f"{name}_q40.jpg"] = name
    (folder / "coffee_copy.png").write_bytes((folder / "coffee.png").read_bytes())
    truth["coffee_copy.png"] = "coffee"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return truth


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


def _dedup(source: str, out: Path, **params) -> StageSpec:
    return StageSpec("dedup", source, out, "test:pixels", {"threshold": 0.99, **params}, embed=EMBED, progress=False)


def _enc(spec: str) -> PixelEncoder:
    assert spec == "test:pixels", spec
    return PixelEncoder()


def _table(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def test_dedup_keeps_one_per_photo_and_accounts_for_every_file(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "dedup"
    record = run_stage(_dedup(str(photos), out), _enc)
    kept, dropped = _table(out, "kept.parquet"), _table(out, "dropped.parquet")
    n_files = len(list(photos.iterdir()))
    assert record.counts["input"] == n_files == len(kept) + len(dropped)
    assert sorted(Path(r["image"]).stem for r in kept) == sorted(PHOTOS)  # the originals sort first and stay
    reasons = {Path(r["image"]).name: (r["reason"], Path(r["of_image"] or "").name) for r in dropped}
    assert reasons["coffee_copy.png"] == ("exact", "coffee.png")
    assert reasons["broken.jpg"][0] == "unreadable"
    assert {reasons[f"{n}_q40.jpg"][1] for n in PHOTOS} == {f"{n}.png" for n in PHOTOS}
    assert {reasons[f"{n}_q40.jpg"][0] for n in PHOTOS} <= {"pixel", "near_dup"}
    by_name = {Path(r["image"]).stem: r for r in kept}
    assert by_name["coffee"]["duplicates"] == 2  # its byte copy and its re-encode
    on_disk = json.loads((out / "curate.json").read_text())
    assert on_disk["counts"] == record.counts and on_disk["model"] == "test:pixels"
    page = (out / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 8 and "Largest duplicate groups" in page


def test_kept_parquet_builds_an_index_and_feeds_the_next_stage_without_embedding(photos: Path, tmp_path: Path) -> None:
    first = tmp_path / "dedup"
    run_stage(_dedup(str(photos), first), _enc)
    index = tmp_path / "index"
    report = build_index(list_items(str(first / KEPT)), index, PixelEncoder(),
                         IndexConfig(embed=EMBED), progress=False)
    assert report.manifest.n_items == len(PHOTOS) and report.manifest.n_rejected == 0

    def no_model(spec: str):
        raise AssertionError("the second stage must reuse the first stage's vectors")

    second = tmp_path / "again"
    record = run_stage(_dedup(str(first / KEPT), second, threshold=0.9), no_model)
    assert record.counts["input"] == len(PHOTOS)
    assert not (second / "embeddings").exists()
    assert "duplicates" in pq.read_schema(second / KEPT).names  # the first stage's labels ride along


def test_an_index_folder_is_a_source_and_another_model_is_refused(photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    build_index(list_items(str(photos)), index, PixelEncoder(), IndexConfig(embed=EMBED), progress=False)
    out = tmp_path / "from-index"
    record = run_stage(_dedup(str(index), out), lambda s: pytest.fail("nothing to embed"))
    assert record.counts["kept"] == len(PHOTOS)
    with pytest.raises(ValueError, match="holds vectors of test:pixels, not retr:sscd"):
        run_stage(StageSpec("dedup", str(index), tmp_path / "x", "retr:sscd", progress=False), _enc)


def test_against_drops_pool_items_that_leak_an_evaluation_set(photos: Path, tmp_path: Path) -> None:
    evals = tmp_path / "eval"
    evals.mkdir()
    Image.open(photos / "rocket.png").resize((256, 256)).save(evals / "rocket-small.png")
    out = tmp_path / "dedup"
    spec = StageSpec("dedup", str(photos), out, "test:pixels", {"threshold": 0.99, "near": False, "pixel": True},
                     {"against": [str(evals)]}, EMBED, progress=False)
    run_stage(spec, _enc)
    leaks = [r for r in _table(out, "dropped.parquet") if r["reason"] == "eval_leak"]
    assert {Path(r["image"]).name for r in leaks} == {"rocket.png"}  # its q40 copy went before, as a pixel copy
    assert Path(leaks[0]["of_image"]).name == "rocket-small.png"
    assert "Evaluation leaks (1" in (out / "report.html").read_text()


def test_a_finished_stage_is_kept_and_other_settings_are_refused(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "dedup"
    first = run_stage(_dedup(str(photos), out), _enc)
    again = run_stage(_dedup(str(photos), out), lambda s: pytest.fail("finished: nothing to do"))
    assert again.provenance == first.provenance
    with pytest.raises(ValueError, match="asked differently"):
        run_stage(_dedup(str(photos), out, keep="largest"), _enc)


def test_a_finished_stage_whose_source_changed_is_not_returned_as_if_current(photos: Path, tmp_path: Path) -> None:
    """The same command after the SOURCE changed on disk (here a manifest lost a row) must not hand back
    the old kept.parquet."""
    manifest = tmp_path / "photos.parquet"
    images = sorted(str(p) for p in photos.glob("*.png"))
    pq.write_table(pa.table({"image": images, "caption": [Path(p).stem for p in images]}), manifest)
    out = tmp_path / "dedup"
    run_stage(_dedup(str(manifest), out), _enc)
    pq.write_table(pa.table({"image": images[1:], "caption": [Path(p).stem for p in images[1:]]}), manifest)
    with pytest.raises(ValueError, match="changed on disk"):
        run_stage(_dedup(str(manifest), out), _enc)
    assert len(_table(out, "kept.parquet")) + len(_table(out, "dropped.parquet")) == len(images)  # left as it was


@pytest.mark.parametrize(("params", "message"), [
    ({"threshold": 1.5}, "cosine similarity in"),
    ({"keep": "best"}, "--keep must be one of"),
    ({"thresold": 0.5}, "unknown settings"),
    ({"pixel_colour": 1.5}, "--pixel-colour is a colour difference"),
])
def test_bad_settings_are_clear_errors(photos: Path, tmp_path: Path, params: dict, message: str) -> None:
    spec = StageSpec("dedup", str(photos), tmp_path / "o", "test:pixels", params, embed=EMBED, progress=False)
    with pytest.raises(ValueError, match=message):  # before any embedding: no model is loaded
        run_stage(spec, lambda s: pytest.fail("the model was loaded before the settings were checked"))


def test_an_empty_or_unreadable_pool_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        run_stage(_dedup(str(tmp_path / "empty"), tmp_path / "o1"), _enc)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of its items could be read"):
        run_stage(_dedup(str(tmp_path / "bad"), tmp_path / "o2"), _enc)


def test_cli_dedup_translates_options_and_reports(photos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(curate_cli, "_encoder_loader", lambda device: _enc)
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli.app, ["curate", "dedup", str(photos), "--out", str(out), "--model", "test:pixels",
                                          "--threshold", "0.99", "--keep", "largest", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{len(list(photos.iterdir()))} in · {len(PHOTOS)} kept" in result.output
    assert json.loads((out / "curate.json").read_text())["params"]["keep"] == "largest"
    bad = CliRunner().invoke(cli.app, ["curate", "dedup", str(photos), "--out", str(tmp_path / "b"), "--model",
                                       "test:pixels", "--threshold", "2", "--quiet"])
    assert bad.exit_code == 2 and "cosine similarity in (0, 1]" in bad.output


def test_run_config_chains_stages_and_resumes_stage_by_stage(photos: Path, tmp_path: Path) -> None:
    config = tmp_path / "curate.toml"
    config.write_text(f"""
out = "run"
source = "{photos}"
[defaults]
model = "test:pixels"
workers = 0
[[stage]]
name = "dedup"
threshold = 0.99
[[stage]]
name = "dedup"
threshold = 0.8
exact = false
""")
    pipeline = read_pipeline(config, progress=False)
    done = list(run_pipeline(pipeline, _enc))
    assert [s.out.name for s, _, fresh in done] == ["01-dedup", "02-dedup"] and all(f for *_, f in done)
    first, second = done[0][1], done[1][1]
    assert second.counts["input"] == first.counts["kept"]
    assert "02-dedup/report.html" in (tmp_path / "run" / "report.html").read_text()
    (tmp_path / "run" / "02-dedup" / "curate.json").unlink()  # as if killed in the second stage
    again = list(run_pipeline(read_pipeline(config, progress=False), _enc))
    assert [fresh for *_, fresh in again] == [False, True]
    assert again[1][1].counts == second.counts


def test_run_config_errors_name_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('source = "x"\n[[stage]]\nname = "dedupe"\n')
    with pytest.raises(ValueError, match="stage 1: name must be one of"):
        read_pipeline(config)
    config.write_text("source = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        read_pipeline(config)


CHILD = """
import sys, time
from pathlib import Path
from indexing.curation.stages import StageSpec, run_stage
from indexing.embed import EmbedConfig
from tests.conftest import COLOURS, PixelEncoder, colour_image, write_colour_folder

class Slow(PixelEncoder):
    def encode_pixels(self, pixels):
        time.sleep(0.3)
        return super().encode_pixels(pixels)

spec = StageSpec("dedup", sys.argv[1], Path(sys.argv[2]), "test:pixels", {"threshold": 0.99},
                 embed=EmbedConfig(batch_size=2, num_workers=0, chunk_size=4), progress=False)
run_stage(spec, lambda s: Slow())
"""


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_gives_the_same_result(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(photos), str(out)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    seg = out / "embeddings" / "pool"
    sigkill_when(child, lambda: len(list(seg.glob("chunk-?????.parquet"))) >= 2)
    assert not (out / "curate.json").exists()
    spec = StageSpec("dedup", str(photos), out, "test:pixels", {"threshold": 0.99},
                     embed=EmbedConfig(batch_size=2, num_workers=0, chunk_size=4), progress=False)
    resumed = run_stage(spec, _enc)
    fresh_out = tmp_path / "fresh"
    fresh = run_stage(StageSpec("dedup", str(photos), fresh_out, "test:pixels", {"threshold": 0.99},
                                embed=EmbedConfig(batch_size=2, num_workers=0, chunk_size=4), progress=False), _enc)
    assert resumed.counts == fresh.counts
    for name in ("kept.parquet", "dropped.parquet"):
        a, b = pq.read_table(out / name), pq.read_table(fresh_out / name)
        assert a.to_pylist() == b.to_pylist()
    ids = pq.read_table(out / "kept.parquet").column("pool_id").to_numpy()
    assert len(np.unique(ids)) == len(ids)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """10 colours × 6 noisy squares (captioned "a red square", …): concepts the PixelEncoder sees."""
    folder = tmp_path_factory.mktemp("colours")
    write_colour_folder(folder, per_colour=6, bad=False)
    return folder


def _concept(stage: str, source: str, out: Path, params: dict, inputs: dict | None = None) -> StageSpec:
    return StageSpec(stage, source, out, "test:pixels", params, inputs or {}, EMBED, progress=False)


def _colour(path: str) -> str:
    return Path(path).stem.split("-")[0]


def test_retrieve_sample_keeps_what_the_seeds_show(colours: Path, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for j in (0, 1):
        colour_image(COLOURS["red"], seed=9000 + j).save(seeds / f"red-seed-{j}.png")
    out = tmp_path / "retrieve"
    record = run_stage(_concept("retrieve", str(colours), out, {"k": 6}, {"seeds": str(seeds)}), _enc)
    kept = _table(out, "kept.parquet")
    assert {_colour(r["image"]) for r in kept} == {"red"} and len(kept) == 6
    assert {r["seed"] for r in kept} <= {0, 1} and all(r["seed_similarity"] > 0.9 for r in kept)
    assert record.counts == {"input": 60, "kept": 6, "dropped": {"not_retrieved": 54}}
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.linear_gradient("L").convert("RGB").save(odd / "gradient.png")  # like none of the squares
    with pytest.raises(ValueError, match="no pool item is within --threshold"):
        run_stage(_concept("retrieve", str(colours), tmp_path / "none", {"k": 6, "threshold": 0.99},
                           {"seeds": str(odd)}), _enc)


def test_retrieve_cluster_keeps_the_seeds_clusters_up_to_the_cap(colours: Path, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    colour_image(COLOURS["blue"], seed=9100).save(seeds / "blue.png")
    out = tmp_path / "retrieve"
    run_stage(_concept("retrieve", str(colours), out, {"mode": "cluster", "clusters": 10, "per_cluster": 4},
                       {"seeds": str(seeds)}), _enc)
    kept, dropped = _table(out, "kept.parquet"), _table(out, "dropped.parquet")
    assert len(kept) == 4 and len({r["cluster"] for r in kept}) == 1  # the seed's one cluster, capped at 4
    assert "blue" in {_colour(r["image"]) for r in kept}  # (k-means may join blue and its neighbour purple)
    assert len(kept) + len(dropped) == 60 and {r["reason"] for r in dropped} <= {"not_retrieved", "sampled_out"}


def test_cluster_then_sample_balances_a_long_tailed_pool(tmp_path: Path) -> None:
    pool = tmp_path / "tail"
    sizes = {"red": 30, "green": 12, "blue": 6, "yellow": 3, "black": 2}
    pool.mkdir()
    for ci, (name, count) in enumerate(sizes.items()):
        for j in range(count):
            colour_image(COLOURS[name], seed=100 * ci + j).save(pool / f"{name}-{j}.png")
    out = tmp_path / "cluster"
    run_stage(_concept("cluster", str(pool), out, {"levels": [8, 5]}), _enc)
    labelled = _table(out, "kept.parquet")
    assert len(labelled) == 53 and {"cluster_l1", "cluster_l2"} <= set(labelled[0])
    by_cluster: dict[int, set[str]] = {}
    for r in labelled:
        by_cluster.setdefault(r["cluster_l1"], set()).add(_colour(r["image"]))
    assert all(len(c) == 1 for c in by_cluster.values())  # 8 level-1 clusters of 5 colours: each one colour
    sampled = tmp_path / "sample"
    record = run_stage(_concept("sample", str(out / KEPT), sampled, {"n": 10, "levels": [8, 5]}), _enc)
    assert record.counts == {"input": 53, "kept": 10, "dropped": {"sampled_out": 43}}
    kept = [_colour(r["image"]) for r in _table(sampled, "kept.parquet")]
    # red was 30 of 53 items; balanced, every colour is in and red holds a fair share, not 57 %
    assert set(kept) == set(sizes) and kept.count("red") <= 3
    assert "before and after balancing" in (sampled / "report.html").read_text()



def test_truth_column_draws_precision_and_recall_against_the_threshold(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    truth = write_photos(folder)
    manifest = tmp_path / "pool.parquet"
    pa.parquet.write_table(pa.table({"image": [str(folder / f) for f in truth],
                                     "group": list(truth.values())}), manifest)
    out = tmp_path / "dedup"
    spec = StageSpec("dedup", str(manifest), out, "test:pixels", {"threshold": 0.99}, embed=EMBED, truth="group",
                     progress=False)
    run_stage(spec, _enc)
    page = (out / "report.html").read_text()
    assert "Near-duplicate pairs against --truth group (10 true pairs)" in page and "<polyline" in page
    bad = StageSpec("dedup", str(manifest), tmp_path / "bad", "test:pixels", {"threshold": 0.99}, embed=EMBED,
                    truth="nope", progress=False)
    with pytest.raises(ValueError, match="--truth 'nope': the pool has no such column"):
        run_stage(bad, _enc)

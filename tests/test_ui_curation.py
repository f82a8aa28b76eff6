"""The curation page: indexing/curation/browse.py on a real dedup stage's files, the page through AppTest,
`retr ui --curation` as translation, and one real browser against the command (the docs' screenshot).

The stage is dedup (tests.conftest.PixelEncoder's vectors) of eight scikit-image photos, each with a JPEG
re-encode, some with a brighter copy, a crop, a byte copy of a crop (a chain: copy → crop → original)
and a corrupt file, against an evaluation set holding a smaller horse. Cluster labels are written by
hand into a copy of its kept.parquet (a `cluster` stage's folder), and both sit in a run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image, ImageEnhance
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from app import cli, serve_cli
from indexing.curation import browse
from indexing.curation.outputs import DROPPED, KEPT, RECORD
from indexing.curation.stages import StageSpec, run_stage
from indexing.embed import EmbedConfig
from tests.conftest import PixelEncoder
from tests.test_ui import _chromium, _free_port, _until, _wait_for_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "app" / "ui" / "curation_page.py"
PHOTOS = {  # skimage name → caption (data_manifests/skimage-photos.json, shortened)
    "astronaut": "an astronaut in an orange spacesuit", "coffee": "an espresso in a red cup",
    "chelsea": "a ginger tabby cat", "rocket": "a Falcon 9 rocket on the launch pad",
    "camera": "a man filming with a camera on a tripod", "horse": "the silhouette of a horse",
    "coins": "rows of ancient Greek coins", "hubble_deep_field": "the Hubble deep field",
}
EDITED = ("coffee", "chelsea", "astronaut", "rocket")  # get a brighter copy and a 90% crop too
LEVELS = {"cluster_l1": 3, "cluster_l2": 2}  # fabricated labels: clusters per level
KEPT_NAMES = sorted(f"{n}.png" for n in PHOTOS if n != "horse")  # every original, but the leaked horse


def write_pool(root: Path) -> tuple[Path, Path]:
    """(items.jsonl, evaluation folder) of the stage described above."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    rows = []

    def add(name: str, image: Image.Image, caption: str, **save) -> None:
        image.save(photos / name, **save)
        rows.append({"image": f"photos/{name}", "caption": caption})

    for name, caption in PHOTOS.items():
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.thumbnail((384, 384))
        add(f"{name}.png", image, caption)
        add(f"{name}_q40.jpg", image, f"{caption} (JPEG q40)", quality=40)
        if name in EDITED:
            w, h = image.size
            add(f"{name}_crop.png", image.crop((w // 20, h // 20, w - w // 20, h - h // 20)), f"{caption} (cropped)")
            add(f"{name}_bright.png", ImageEnhance.Brightness(image).enhance(1.08), f"{caption} (brighter)")
    shutil.copyfile(photos / "coffee_crop.png", photos / "coffee_crop_copy.png")
    rows.append({"image": "photos/coffee_crop_copy.png", "caption": "an espresso in a red cup (copy of the crop)"})
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows.append({"image": "photos/broken.jpg", "caption": "a corrupt file"})
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = root / "eval"
    evals.mkdir()
    Image.fromarray(skimage.data.horse()).convert("RGB").resize((200, 164)).save(evals / "horse-eval.png")
    return items, evals


def write_cluster_stage(dedup: Path, out: Path) -> None:
    """A `cluster` stage's folder by hand (labels seeded), until that stage writes its own."""
    out.mkdir(parents=True)
    kept = pq.read_table(dedup / KEPT)
    rng = np.random.default_rng(0)
    l1 = rng.integers(0, LEVELS["cluster_l1"], kept.num_rows)
    kept = kept.append_column("cluster_l1", pa.array(l1)).append_column("cluster_l2", pa.array(l1 % 2))
    pq.write_table(kept, out / KEPT)
    dropped = pq.read_table(dedup / DROPPED)
    pq.write_table(dropped.slice(0, 0), out / DROPPED)
    record = json.loads((dedup / RECORD).read_text())
    n = kept.num_rows
    record.update(stage="cluster", source=str(dedup / KEPT), params={"levels": list(LEVELS.values())},
                  counts={"input": n, "kept": n, "dropped": {}})
    (out / RECORD).write_text(json.dumps(record))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """RUN/01-dedup (real) and RUN/02-cluster (labels by hand)."""
    root = tmp_path_factory.mktemp("curation")
    items, evals = write_pool(root)
    run = root / "run"
    spec = StageSpec("dedup", str(items), run / "01-dedup", "test:pixels", {"threshold": 0.97, "pixel": True},
                     {"against": [str(evals)]}, EmbedConfig(batch_size=16, num_workers=0), progress=False)
    run_stage(spec, lambda model: PixelEncoder())
    write_cluster_stage(run / "01-dedup", run / "02-cluster")
    return run


@pytest.fixture(scope="module")
def dedup(run_folder) -> Path:
    return run_folder / "01-dedup"


def _name(path: str | None) -> str:
    return Path(path or "").name


# --- browse.py ---------------------------------------------------------------------------------------

def test_list_stages_reads_a_run_folder_a_stage_folder_and_refuses_others(run_folder, dedup, tmp_path):
    found = browse.list_stages(run_folder)
    assert [(s.name, s.record.stage) for s in found] == [("01-dedup", "dedup"), ("02-cluster", "cluster")]
    assert [s.path for s in browse.list_stages(dedup)] == [dedup]
    with pytest.raises(ValueError, match="no curate.json"):
        browse.list_stages(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        browse.list_stages(tmp_path / "nowhere")


def test_duplicate_groups_follow_of_id_to_the_kept_item(dedup):
    groups = browse.duplicate_groups(dedup)
    copies = pq.read_table(dedup / DROPPED).filter(
        pc.is_in(pc.field("reason"), pa.array(browse.DUPLICATE_REASONS))).column("pool_id").to_pylist()
    grouped = [c.item.pool_id for g in groups for c in g.copies]
    assert sorted(grouped) == sorted(copies) and len(set(grouped)) == len(grouped)  # each copy in one group
    assert [g.size for g in groups] == sorted((g.size for g in groups), reverse=True)
    by_kept = {_name(g.kept.image): g for g in groups}
    coffee = by_kept["coffee.png"]
    assert groups[0] is coffee and coffee.kept_dropped_as is None
    assert {_name(c.item.image) for c in coffee.copies} == {
        "coffee_q40.jpg", "coffee_crop.png", "coffee_bright.png", "coffee_crop_copy.png"}
    crop = next(c for c in coffee.copies if _name(c.item.image) == "coffee_crop.png")
    chained = next(c for c in coffee.copies if _name(c.item.image) == "coffee_crop_copy.png")
    assert (chained.reason, chained.of_id) == ("exact", crop.item.pool_id)  # via the crop, to the original
    assert crop.reason == "near_dup" and 0.97 <= crop.similarity < 1
    # the stage's own count of what each kept item stands for agrees with the groups
    kept_rows = pq.read_table(dedup / KEPT).to_pylist()
    assert sorted(_name(r["image"]) for r in kept_rows) == KEPT_NAMES
    kept = {r["pool_id"]: r["duplicates"] for r in kept_rows}
    assert {g.kept.pool_id: len(g.copies) for g in groups if g.kept_dropped_as is None} == {
        pid: n for pid, n in kept.items() if n}
    horse = by_kept["horse.png"]  # its re-encode went first, then it leaked the evaluation set itself
    assert horse.kept_dropped_as == "eval_leak" and [_name(c.item.image) for c in horse.copies] == ["horse_q40.jpg"]


def test_eval_leaks_name_the_evaluation_image(dedup):
    [leak] = browse.eval_leaks(dedup)
    assert (_name(leak.item.image), _name(leak.eval_image), leak.eval_id) == ("horse.png", "horse-eval.png", 0)
    assert leak.similarity >= 0.97


def test_clusters_partition_the_kept_items(run_folder):
    stage = run_folder / "02-cluster"
    assert browse.cluster_levels(stage) == ["cluster_l1", "cluster_l2"]
    assert browse.cluster_levels(run_folder / "01-dedup") == []
    kept = pq.read_table(stage / KEPT).to_pylist()
    for level, k in LEVELS.items():
        found = browse.clusters(stage, level)
        assert sum(c.size for c in found) == len(kept) and len(found) == k
        assert [c.size for c in found] == sorted((c.size for c in found), reverse=True)
        assert browse.cluster_sizes(stage, level) == [(c.id, c.size) for c in found]
        label = {r["pool_id"]: r[level] for r in kept}
        assert all(label[m.pool_id] == c.id for c in found for m in c.members)
    with pytest.raises(ValueError, match="no cluster column 'cluster_l3'"):
        browse.clusters(stage, "cluster_l3")


# --- the page, through AppTest -----------------------------------------------------------------------

def page(folder: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("RETR_UI_CURATION", str(folder))
    at = AppTest.from_file(str(SCRIPT), default_timeout=60).run()
    assert not at.exception and not at.error, (at.exception, at.error)
    return at


def test_page_shows_counts_and_duplicate_groups(dedup, monkeypatch):
    at = page(dedup, monkeypatch)
    record = json.loads((dedup / RECORD).read_text())["counts"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"input": str(record["input"]), "kept": str(record["kept"]),
                       "dropped": str(record["input"] - record["kept"]),
                       **{r: str(n) for r, n in record["dropped"].items()}}
    assert set(record["dropped"]) == {"exact", "pixel", "near_dup", "eval_leak", "unreadable"}
    groups_tab = at.tabs[0]
    assert groups_tab.label == "Duplicate groups"
    markdown = [m.value for m in groups_tab.markdown]
    assert markdown[:2] == ["**Group 1** · 5 items", ":green-badge[kept]"]
    assert markdown[2].startswith(":orange-badge[exact] · cos 1.000 · of #")  # the chained copy says whose copy
    assert "coffee\\.png" in groups_tab.caption[1].value
    assert len(groups_tab.image) == sum(g.size for g in browse.duplicate_groups(dedup)[:10])
    leaks = at.tabs[1]
    assert [m.value for m in leaks.markdown] == [":red-badge[dropped] · cos 1.000",
                                                 ":blue-badge[evaluation #0]"]
    assert len(leaks.image) == 2
    at.multiselect(key="reasons-01-dedup").set_value(["eval_leak", "unreadable"]).run()
    table = at.tabs[3].dataframe[0].value
    assert sorted(table["reason"]) == ["eval_leak", "unreadable"]
    assert sorted(_name(p) for p in table["image"]) == ["broken.jpg", "horse.png"]


def test_run_folder_stage_picker_and_clusters(run_folder, monkeypatch):
    at = page(run_folder, monkeypatch)
    picker = at.sidebar.selectbox(key="stage")
    assert picker.options == ["01-dedup", "02-cluster"] and picker.value == "01-dedup"
    assert "No cluster labels" in at.tabs[2].info[0].value
    picker.set_value("02-cluster").run()
    assert not at.exception and {m.label: m.value for m in at.metric}["kept"] == str(len(KEPT_NAMES))
    clusters_tab = at.tabs[2]
    found = browse.clusters(run_folder / "02-cluster", "cluster_l1")
    assert [m.value for m in clusters_tab.markdown] == [
        f"**Cluster {c.id}** · {c.size} item{'s' if c.size != 1 else ''}" for c in found]
    assert len(clusters_tab.image) == len(KEPT_NAMES) and clusters_tab.get("vega_lite_chart")
    at.selectbox(key="level-02-cluster").set_value("cluster_l2").run()
    assert len(at.tabs[2].markdown) == 2
    assert "No duplicate groups" in at.tabs[0].info[0].value


def test_missing_images_show_a_placeholder_and_a_bad_folder_is_an_error(run_folder, tmp_path, monkeypatch):
    stage = tmp_path / "moved"
    shutil.copytree(run_folder / "02-cluster", stage)
    kept = pq.read_table(stage / KEPT)
    moved = pa.array([str(tmp_path / "gone" / _name(p)) for p in kept.column("image").to_pylist()])
    pq.write_table(kept.set_column(kept.schema.get_field_index("image"), "image", moved), stage / KEPT)
    at = page(stage, monkeypatch)
    assert len(at.tabs[2].image) == len(KEPT_NAMES)  # a placeholder each
    monkeypatch.setenv("RETR_UI_CURATION", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    at = AppTest.from_file(str(SCRIPT), default_timeout=60).run()
    assert not at.exception and "no curate.json" in at.error[0].value


def test_groups_are_paginated(tmp_path, monkeypatch):
    """23 kept items with 1..23 copies each (files that do not exist: placeholders), ten groups a page."""
    stage = tmp_path / "many"
    stage.mkdir()
    kept_ids = np.arange(23)
    pq.write_table(pa.table({"image": [str(tmp_path / f"k{i}.png") for i in kept_ids], "pool_id": kept_ids}),
                   stage / KEPT)
    of_id = np.repeat(kept_ids, kept_ids + 1)
    copy_ids = 100 + np.arange(len(of_id))
    pq.write_table(pa.table({"pool_id": copy_ids, "image": [str(tmp_path / f"c{i}.png") for i in copy_ids],
                             "reason": ["near_dup"] * len(of_id), "of_id": of_id,
                             "similarity": pa.array(np.full(len(of_id), 0.95), pa.float32())}), stage / DROPPED)
    counts = {"input": 23 + len(of_id), "kept": 23, "dropped": {"near_dup": len(of_id)}}
    (stage / RECORD).write_text(json.dumps({"stage": "dedup", "source": "x", "params": {}, "model": "m",
                                            "counts": counts}))
    at = page(stage, monkeypatch)
    groups = at.tabs[0]
    assert groups.caption[0].value == "groups 1–10 of 23"
    assert groups.markdown[0].value == "**Group 1** · 24 items"  # the kept item with 23 copies
    assert "… and 18 more copies" in " ".join(c.value for c in groups.caption)
    at.number_input(key="groups-page-many").set_value(3).run()
    assert at.tabs[0].caption[0].value == "groups 21–23 of 23"
    assert [m.value for m in at.tabs[0].markdown if m.value.startswith("**Group")] == [
        "**Group 21** · 4 items", "**Group 22** · 3 items", "**Group 23** · 2 items"]


# --- `retr ui --curation` ----------------------------------------------------------------------------

def test_cli_runs_the_curation_page_or_the_search_page(run_folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(serve_cli.os, "execv", lambda exe, cmd: calls.append(cmd))
    result = CliRunner().invoke(cli.app, ["ui", "--curation", str(run_folder), "--port", "8765"])
    assert result.exit_code == 0, result.output
    cmd = calls.pop()
    assert cmd[cmd.index("run") + 1] == str(SCRIPT)
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--") + 1:] == ["--curation", str(run_folder.resolve())]
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index.json").write_text("{}")
    assert CliRunner().invoke(cli.app, ["ui", str(tmp_path / "index")]).exit_code == 0
    assert calls.pop()[-2:] == ["--index", str((tmp_path / "index").resolve())]
    for args, message in [([], "give an INDEX folder"), ([str(tmp_path / "index"), "--curation", str(run_folder)],
                                                        "not both"),
                          (["--curation", str(tmp_path)], "no curate.json")]:
        result = CliRunner().invoke(cli.app, ["ui", *args])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not calls


# --- one real browser --------------------------------------------------------------------------------

@contextmanager
def retr_ui_curation(folder: Path, log: Path) -> Iterator[int]:
    """`retr ui --curation FOLDER` on a free port (the command execs streamlit: a SIGTERM reaches it)."""
    script = Path(sys.executable).with_name("retr")
    retr = [str(script)] if script.is_file() else [sys.executable, "-c", "from app.cli import main; main()"]
    port = _free_port()
    cmd = [*retr, "ui", "--curation", str(folder), "--port", str(port)]
    with log.open("wb") as out, subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                                                 stdout=out, stderr=subprocess.STDOUT) as proc:
        try:
            _wait_for_port(port, proc, log)
            yield port
        finally:
            proc.terminate()  # Popen's exit waits for it


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_browser(dedup, tmp_path):
    chromium = _chromium() or pytest.skip("no chromium browser installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    update = os.environ.get("RETR_UPDATE_SCREENSHOT") == "1"
    shot = REPO / "docs" / "images" / "ui-curation.png" if update else tmp_path / "ui-curation.png"
    groups = browse.duplicate_groups(dedup)
    with retr_ui_curation(dedup, tmp_path / "streamlit.log") as port, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(30_000)
        page.goto(f"http://127.0.0.1:{port}/")
        main = page.locator('[data-testid="stMain"]')
        main.get_by_text("Group 1 · 5 items").wait_for()
        shown = sum(g.size for g in groups[:10]) + 2  # and the leak tab's pair, drawn while hidden
        images = main.locator('img[src*="/media/"]')
        _until(page, f"{shown} loaded thumbnails", lambda: images.count() == shown and images.evaluate_all(
            "all => all.every(i => i.complete && i.naturalWidth > 0)"))
        badges = page.get_by_role("tabpanel").first.get_by_text("kept", exact=True)
        kept_badges = sum(g.kept_dropped_as is None for g in groups[:10])
        _until(page, "a kept badge per group whose original stayed", lambda: badges.count() == kept_badges)
        page.screenshot(path=str(shot))

        page.get_by_role("tab", name="Evaluation leaks").click()
        main.get_by_text("evaluation #0").wait_for()
        browser.close()
    assert shot.stat().st_size > 50_000

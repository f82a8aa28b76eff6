"""The quickstart notebook runs top to bottom (its code cells, in order) on a small local folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_colour_folder

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    write_colour_folder(folder, per_colour=2)
    monkeypatch.setenv("RETR_NOTEBOOK_CORPUS", str(folder))
    monkeypatch.setenv("RETR_NOTEBOOK_OUT", str(tmp_path / "idx"))
    monkeypatch.setenv("RETR_NOTEBOOK_LIMIT", "0")
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    scope: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[{cell['id']}]", "exec"), scope)
    assert (tmp_path / "idx" / "index.json").exists()
    hits = scope["hits"]
    assert len(hits.results) == 5
    assert scope["similar"].results[0].id == hits.results[0].id  # an image is its own nearest neighbour
    assert scope["sheet"].size == (96 * 5, 96 + 18)


CURATION = NOTEBOOK.parent / "curation.ipynb"


@pytest.mark.slow
def test_curation_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dedup → retrieve → sample → index on scikit-image photos and their edited copies, real models."""
    monkeypatch.setenv("RETR_NOTEBOOK_OUT", str(tmp_path / "cur"))
    monkeypatch.setenv("RETR_NOTEBOOK_CONCEPT_MODEL", "retr:effnet-lite0")  # the notebook's faster concept model
    cells = json.loads(CURATION.read_text())["cells"]
    scope: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{CURATION.name}[{cell['id']}]", "exec"), scope)
    dropped = scope["dropped"].set_index("image")
    assert dropped.loc["coffee_copy.png", "reason"] == "exact"
    assert dropped.loc["rocket.png", "reason"] == "eval_leak"
    for edit in ("q35", "crop", "flip", "bright"):  # every edited copy found, and kept nothing of it
        assert dropped.loc[f"astronaut_{edit}.{'jpg' if edit in ('q35', 'bright') else 'png'}", "of_image"] == \
            "astronaut.png"
    assert scope["dedup"].counts["kept"] == 15  # 16 photos, one of them leaked
    assert "chelsea.png" in set(scope["retrieved"]["image"])  # the cat seed finds the cat
    assert len(scope["sample"]) == 6 and scope["sample"]["cluster_l2"].nunique() == 2
    assert (tmp_path / "cur" / "index" / "index.json").exists() and len(scope["first"].results) == 3

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

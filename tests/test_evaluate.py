"""retrieval.evaluate on small real image sets with the cheap PixelEncoder, and `retr eval` as translation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from app import cli, models_cli
from retrieval.evaluate import EvalPlan, EvalResult, evaluate, read_photo_queries, recall_at
from tests.conftest import COLOURS, colour_image


@pytest.mark.parametrize(
    ("scores", "relevant", "expected"),
    [
        # relevant item ranked 1st, 2nd, absent
        ([[0.9, 0.1, 0.0]], [[True, False, False]], {1: 1.0, 2: 1.0}),
        ([[0.1, 0.9, 0.0]], [[True, False, False]], {1: 0.0, 2: 1.0}),
        ([[0.1, 0.9, 0.5]], [[False, False, False]], {1: 0.0, 2: 0.0}),
        # two relevant items: the better-ranked one counts; two queries average
        ([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]], [[True, False, True], [False, False, True]], {1: 0.0, 2: 0.5, 3: 1.0}),
    ],
)
def test_recall_at_table(scores, relevant, expected) -> None:
    got = recall_at(np.asarray(scores), np.asarray(relevant), ks=tuple(expected))
    assert got == pytest.approx(expected)


def _style_manifest(folder: Path, style_seed: int) -> Path:
    """One image per colour, drawn with a different noise seed per 'style'; key = colour name."""
    folder.mkdir(parents=True)
    rows = []
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        path = folder / f"{name}.png"
        colour_image(rgb, seed=style_seed * 1000 + ci).save(path)
        rows.append({"image": str(path), "caption": f"a {name} square", "key": name, "split": "test"})
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    return folder / "manifest.parquet"


def test_evaluate_text_image_cross_style_and_photo_queries(tmp_path: Path, pixel_encoder, monkeypatch) -> None:
    a, b = _style_manifest(tmp_path / "a", 1), _style_manifest(tmp_path / "b", 2)
    queries = tmp_path / "q.json"
    queries.write_text(json.dumps({"corpus": str(b), "queries": [
        {"query": "something red", "relevant": ["red"]}, {"query": "blue or cyan", "relevant": ["blue", "cyan"]},
    ]}))
    embedded = []
    encode_images = pixel_encoder.encode_images
    monkeypatch.setattr(pixel_encoder, "encode_images", lambda images: embedded.extend(images) or encode_images(images))
    result = evaluate(pixel_encoder, EvalPlan((str(a),), ((str(a), str(b)),), queries, examples=3))
    # a's images serve both its text<->image section and the cross-style one: embedded once (b's
    # split for cross-style and b's photo-query gallery are separate sets)
    assert len(embedded) == 3 * len(COLOURS)
    out = result.metrics
    assert out[str(a)]["t2i_R@1"] == 1.0 and out[str(a)]["i2t_R@1"] == 1.0 and out[str(a)]["n"] == len(COLOURS)
    cross = out[f"{a}→{b}"]
    assert cross["i2i_R@1"] == 1.0 and cross["n"] == len(COLOURS)
    assert out["photos"]["photo_R@1"] == 1.0 and out["photos"]["n"] == 2
    assert read_photo_queries(queries).queries[1] == ("blue or cyan", frozenset({"blue", "cyan"}))
    # examples for contact sheets: 3 queries spread over each set, their top hits, right answers marked
    t2i = result.examples[str(a)]
    assert len(t2i) == 3 and t2i[0].query == "a red square" and t2i[0].query_image is None
    assert t2i[0].hits[0].correct and t2i[0].hits[0].caption == "a red square" and len(t2i[0].hits) == 5
    assert [h.correct for h in t2i[0].hits].count(True) == 1
    cross = result.examples[f"{a}→{b}"]
    assert cross[0].query_image.endswith("a/red.png") and cross[0].hits[0].path.endswith("b/red.png")
    assert [e.query for e in result.examples["photos"]] == ["something red", "blue or cyan"]


def test_contact_sheet_marks_right_and_wrong_hits(tmp_path: Path, pixel_encoder) -> None:
    from retrieval.sheets import RIGHT, THUMB, WRONG, draw_sheet

    a, b = _style_manifest(tmp_path / "a", 1), _style_manifest(tmp_path / "b", 2)
    result = evaluate(pixel_encoder, EvalPlan(cross=((str(a), str(b)),), examples=2))
    path = draw_sheet(result.examples[f"{a}→{b}"], tmp_path / "sheets" / "cross.png", title="pixels")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 5 * THUMB and im.height > 2 * THUMB
        pixels = {tuple(p) for p in np.asarray(im.convert("RGB")).reshape(-1, 3).tolist()}
    assert RIGHT in pixels and WRONG in pixels  # the first hit of each row is right, the rest wrong
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="no examples"):
        draw_sheet((), tmp_path / "empty.png")


def test_eval_cli_compares_models_and_validates(monkeypatch, tmp_path: Path) -> None:
    seen = []

    def fake_evaluate(encoder, plan):
        seen.append((encoder, plan))
        metrics = {"emoji-google": {"t2i_R@1": 0.5 if encoder == "enc:retr:default" else 0.1, "n": 10}}
        return EvalResult(metrics, {"emoji-google": ()})

    monkeypatch.setattr(models_cli, "_load_encoder", lambda spec, device: f"enc:{spec}")
    monkeypatch.setattr("retrieval.evaluate.evaluate", fake_evaluate)
    runner = CliRunner()
    res = runner.invoke(cli.app, ["eval", "retr:default", "retr:imagenet-bridge", "--manifest", "emoji-google",
                                  "--cross", "emoji-google:emoji-twitter", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"retr:default": {"emoji-google": {"t2i_R@1": 0.5, "n": 10}},
                                      "retr:imagenet-bridge": {"emoji-google": {"t2i_R@1": 0.1, "n": 10}}}
    plan = seen[0][1]
    assert plan.corpora == ("emoji-google",) and plan.cross == (("emoji-google", "emoji-twitter"),)
    assert plan.precision == "fp32"
    res = runner.invoke(cli.app, ["eval", "retr:default", "--manifest", "emoji-google", "--precision", "bf16"])
    assert res.exit_code == 0 and seen[-1][1].precision == "bf16"
    res = runner.invoke(cli.app, ["eval", "retr:default", "--manifest", "emoji-google", "--precision", "half"])
    assert res.exit_code == 2 and "precision must be fp32, fp16 or bf16, got 'half'" in res.output
    res = runner.invoke(cli.app, ["eval", "retr:default", "--cross", "emoji-google"])
    assert res.exit_code == 2 and "--cross takes A:B" in res.output
    res = runner.invoke(cli.app, ["eval", "retr:default"])
    assert res.exit_code == 2 and "nothing to evaluate" in res.output

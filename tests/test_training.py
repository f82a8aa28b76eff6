"""A tiny real training run: locked EfficientNet-Lite0 + MiniLM, heads trained on a colour corpus.

The ImageNet bridge is blind to colour (tests/test_retr_models.py), so "a red square" finds red
squares no better than chance before training; after a few seconds of training on other images of
the same colours it must find held-out red squares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.encoders import load_encoder
from retrieval.evaluate import text_image_recall
from retrieval.training.config import parse_config, read_config
from retrieval.training.data import _alternatives, load_pairs
from retrieval.training.loop import STATE, train
from retrieval.training.losses import clip_loss, siglip_loss
from tests.conftest import COLOURS, colour_image

pytestmark = pytest.mark.slow


def _colour_manifest(folder: Path, per_colour: int = 6, test_per_colour: int = 2) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(per_colour):
            path = folder / f"{name}-{j}.png"
            colour_image(rgb, seed=ci * 100 + j, size=48).save(path)
            split = "test" if j < test_per_colour else "train"
            rows.append({"image": str(path), "caption": f"a {name} square", "key": name, "split": split,
                         "names": f"a {name} square | {name}"})
    manifest = folder / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


@pytest.fixture(scope="module")
def bridge():
    return load_encoder("retr:imagenet-bridge")


def test_tiny_training_lowers_loss_and_raises_recall(tmp_path: Path, bridge) -> None:
    manifest = _colour_manifest(tmp_path / "colours")
    config = parse_config({
        "corpora": [str(manifest)], "out": str(tmp_path / "run"), "epochs": 40, "batch_size": 20, "lr": 3e-3,
        "templates": ["{}"], "augment": {"views": 2}, "num_workers": 0,
    })
    report = train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert report.n_pairs == 40 and report.last_loss < 0.5 * report.first_loss

    held_out = load_pairs([str(manifest)], "test")
    before = text_image_recall(bridge, held_out)
    trained = load_encoder(f"retr:{report.out}")
    after = text_image_recall(trained, held_out)
    # 10 colours, 2 held-out images each: chance R@1 ~0.2. Observed: bridge ~0.1-0.3, trained 1.0.
    assert before["t2i_R@1"] <= 0.5
    assert after["t2i_R@1"] >= 0.9 and after["i2t_R@1"] >= 0.9

    # resuming a finished run trains nothing more; a changed config refuses to resume
    again = train(config, bridge, cache=tmp_path / "cache", progress=False)
    assert again.epochs_run == 0
    changed = parse_config({**config.to_json(), "lr": 1e-2, "augment": {"views": 2}, "head": {}})
    with pytest.raises(ValueError, match="different config"):
        train(changed, bridge, cache=tmp_path / "cache", progress=False)
    assert (report.out / STATE).exists()


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys in config: \\['epoch'\\]"):
        parse_config({"epoch": 3})
    with pytest.raises(ValueError, match="unknown keys in config.augment"):
        parse_config({"augment": {"view": 2}})
    with pytest.raises(ValueError, match="loss must be one of"):
        parse_config({"loss": "triplet"})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read training config"):
        read_config(bad)


def test_alternative_captions_keep_the_caption_prefix() -> None:
    assert _alternatives("flag of Indonesia", "Indonesia | Republic of Indonesia") == (
        "flag of Indonesia", "flag of Republic of Indonesia")
    assert _alternatives("grinning face", "grinning face | grinning") == ("grinning face", "grinning")
    assert _alternatives("thumbs up", None) == ("thumbs up",)


def test_losses_prefer_aligned_pairs_and_count_shared_keys_as_positives() -> None:
    import torch

    rng = np.random.default_rng(0)
    x = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((6, 16)).astype(np.float32)), dim=-1)
    eye = torch.eye(6, dtype=torch.bool)
    shuffled = x[torch.tensor([1, 0, 3, 2, 5, 4])]
    t, b = torch.tensor(np.log(10.0)), torch.tensor(-5.0)
    assert siglip_loss(x, x, eye, t, b) < siglip_loss(x, shuffled, eye, t, b)
    assert clip_loss(x, x, eye, t) < clip_loss(x, shuffled, eye, t)
    # items 0 and 1 share a key: matching 0's image with 1's text is then not penalised as a negative
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    assert clip_loss(x, shuffled, same, t) < clip_loss(x, shuffled, eye, t)


def test_default_config_file_parses() -> None:
    path = Path(__file__).resolve().parent.parent / "retrieval" / "training" / "configs" / "default.json"
    config = read_config(path)
    assert json.loads(path.read_text())["corpora"] == list(config.corpora)

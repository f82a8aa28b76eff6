"""The one interface every dual encoder in retr implements, and its image preprocessing.

Preprocessing is a small frozen dataclass (picklable) so DataLoader workers can decode and
normalise images in parallel while the main process runs the model (`encode_pixels`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from retrieval.encoders.framing import trim_border


@dataclass(frozen=True)
class ImagePreprocess:
    size: int = 224  # square side fed to the image tower
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # "center_crop": resize shortest side to `size` then centre-crop (CLIP/DINOv2 eval);
    # "squash": resize to size×size ignoring aspect (keeps the whole icon in view).
    mode: str = "center_crop"
    # crop a uniform border down to the content first (retrieval.encoders.framing), for models trained so
    trim: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("center_crop", "squash"):
            raise ValueError(f"ImagePreprocess.mode must be 'center_crop' or 'squash', got {self.mode!r}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, size, size) float32 tensor, normalised."""
        return self.normalize(self.to_uint8(image)[None])[0]

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, size, size) uint8 tensor, resized and cropped, not yet normalised.

        Decode workers hand batches over in this form: a quarter of the bytes of float32, which is
        what crosses process boundaries (and the PCIe bus, when the model runs on a GPU).
        """
        image = trim_border(image) if self.trim else image.convert("RGB")
        if self.mode == "squash":
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        else:
            w, h = image.size
            scale = self.size / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> float32 (x / 255 - mean) / std, on the tensor's device."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-normalise to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Encoder(abc.ABC):
    """A dual encoder: images and texts into one space, unit-norm float32 rows.

    Subclasses set `name` (the registry spec that loads them), `dim` and `preprocess`, and
    implement `encode_pixels` and `encode_texts`.
    """

    name: str
    dim: int
    preprocess: ImagePreprocess
    device: str = "cpu"
    # Identifies the weights when they can change under the same name (a retrained `retr:default`);
    # indexes and embedding jobs record it so vectors of two different models never mix. Empty
    # when the name itself pins the weights.
    weights_id: str = ""
    # False for image-only models (ImageOnlyEncoder): indexes built with them hold no caption vectors,
    # and only image queries can search them.
    has_text: bool = True

    @abc.abstractmethod
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) preprocessed batch -> (B, dim) unit-norm float32."""

    @abc.abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """B strings -> (B, dim) unit-norm float32."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """B PIL images -> (B, dim) unit-norm float32."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        pixels = torch.stack([self.preprocess(im) for im in images])
        return self.encode_pixels(pixels)


class ImageOnlyEncoder(Encoder):
    """An image encoder without a text side, for image→image search and curation (near-duplicates).

    Subclasses set `name`, `dim`, `preprocess` and implement `features`; vectors are its rows,
    L2-normalised. `encode_texts` refuses with a message that says what to do instead.
    """

    has_text = False

    @abc.abstractmethod
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed batch on `device` -> (B, dim) unnormalised features."""

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(self.features(pixels.to(self.device)).float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError(
            f"{self.name} is an image-only model: search its index with an image (--image / --image-id), "
            "or use it for `retr curate`"
        )

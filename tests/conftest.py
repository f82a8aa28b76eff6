"""Shared fixtures: a small real image corpus written to disk, and a cheap deterministic encoder.

`PixelEncoder` embeds an image as its 4×4 colour thumbnail and a colour word as the thumbnail of a
solid image of that colour, so "red" really retrieves red images. It lets pipeline tests
(resume, sharding, filters, add) run in seconds; the real models have their own tests.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.encoders.base import Encoder, ImagePreprocess, l2_normalize

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (130, 40, 160),
    "orange": (250, 140, 20),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "cyan": (30, 210, 220),
    "pink": (250, 150, 190),
}


class PixelEncoder(Encoder):
    name = "test:pixels"
    dim = 48
    preprocess = ImagePreprocess(size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mode="squash")

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return l2_normalize(pixels.reshape(len(pixels), -1).numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for t in texts:
            word = next((w for w in t.lower().split() if w in COLOURS), None)
            if word is None:  # unknown words: a stable pseudo-random direction
                rng = np.random.default_rng(sum(map(ord, t)))
                out.append(rng.standard_normal(self.dim).astype(np.float32))
            else:
                solid = self.preprocess(Image.new("RGB", (8, 8), COLOURS[word]))  # not via encode_pixels:
                out.append(solid.reshape(-1).numpy())  # tests count model batches through that method
        return l2_normalize(np.stack(out))


@pytest.fixture
def pixel_encoder() -> PixelEncoder:
    return PixelEncoder()


def colour_image(rgb: tuple[int, int, int], seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8))


def write_colour_folder(folder: Path, per_colour: int = 4, *, bad: bool = True) -> list[Path]:
    """PNG/JPEG images of named colours with .txt sidecar captions, plus (optionally) two bad files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(per_colour):
            sub = folder / ("warm" if name in ("red", "orange", "yellow", "pink") else "cool")
            sub.mkdir(exist_ok=True)
            p = sub / f"{name}-{j}.{'jpg' if j % 2 else 'png'}"
            colour_image(rgb, seed=ci * 100 + j).save(p)
            p.with_suffix(".txt").write_text(f"a {name} square\n")
            paths.append(p)
    if bad:
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
        buf = io.BytesIO()
        colour_image((1, 2, 3), seed=9, size=64).save(buf, format="JPEG")
        (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return paths


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "colours"
    write_colour_folder(folder)
    return folder


def sigkill_when(child: subprocess.Popen, ready: Callable[[], bool], timeout: float = 60.0) -> None:
    """SIGKILL `child` as soon as `ready()` holds (the kill tests: a writer killed mid-job); fails the
    test if the child finished first, since then nothing was interrupted."""
    deadline = time.monotonic() + timeout
    while not ready() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.poll() is None, "the child finished before it could be killed; slow it down"
    child.send_signal(signal.SIGKILL)
    child.wait()

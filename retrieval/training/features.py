"""Precompute what the locked towers see, once, so training the heads takes seconds per epoch.

For every training image: `views` versions (view 0 clean on white, the others with a random
resized crop, colour jitter and a random background behind transparency), each run through
the config's EfficientNet-Lite tower once -> pooled features (1280) and the 8x8 colour thumbnail (192). The
ImageNet-bridge vector is not stored: the classifier's last layer re-derives it from the pooled
features in milliseconds, for whichever bridge settings a run uses.
For every caption x template string: its text tower vector (MiniLM 384, mpnet 768), deduplicated,
in a file of its own per tower (`text_vectors.npy` for MiniLM, as before the towers were a choice),
so runs on the same images with another text tower share the image features.
With `cut_layers` > 0 (a run that unlocks the tower's last layers), also each view's feature map
at the input of those layers, (C, 7, 7) float16, which the unlocked layers are trained from
(a separate file, `cut-<layers>.npy`, next to the others).

The result is cached under $RETR_CACHE/features/<hash of inputs> and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from tqdm import tqdm

from indexing.atomic import write_json, write_npy
from indexing.decode import DecodeError, DecodeLimits, decode_image
from indexing.sources import Item, read_item_bytes
from retrieval.encoders.base import ImagePreprocess
from retrieval.encoders.precision import embedding_autocast
from retrieval.encoders.text_towers import DEFAULT_TEXT_TOWER, TEXT_TOWERS
from retrieval.training.config import AugmentConfig
from retrieval.training.data import Pair
from retrieval.training.model import THUMB_DIM, colour_thumbnail

FEATURE_VERSION = 2  # bump when what is computed changes, so stale caches are not reused


@dataclass(frozen=True)
class Features:
    pooled: np.ndarray  # (N, V, 1280) float16, EfficientNet-Lite pooled features per view
    thumb: np.ndarray  # (N, V, 192) float16, 8x8 colour thumbnail per view
    ok: np.ndarray  # (N,) bool, False where the image could not be decoded
    texts: list[str]  # unique caption strings
    text_vectors: np.ndarray  # (T, D) float32, the text tower's, unit norm
    key: str  # cache_key() of the inputs: names exactly what these features were computed from
    cut: np.ndarray | None = None  # (N, V, C, h, w) float16, the input of the last cut_layers layers


def augment_view(image_bytes: bytes, name: str, view: int, seed: int, aug: AugmentConfig) -> Image.Image:
    """View 0: the image on white. Other views: random background, resized crop and colour jitter."""
    rng = np.random.default_rng([seed, view])
    if view == 0:
        return decode_image(image_bytes, name=name).image
    bg = aug.backgrounds[int(rng.integers(len(aug.backgrounds)))]
    image = decode_image(image_bytes, name=name, limits=DecodeLimits(background=bg)).image
    w, h = image.size
    scale = rng.uniform(aug.min_scale, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = min(w, max(1, round(w * np.sqrt(scale * ratio))))
    ch = min(h, max(1, round(h * np.sqrt(scale / ratio))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((left, top, left + cw, top + ch))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(1 - aug.jitter, 1 + aug.jitter)))
    return image


class _ViewDataset(torch.utils.data.Dataset):
    """(item index, view) -> uint8 pixels, decoded and augmented in a worker."""

    def __init__(self, pairs: Sequence[Pair], aug: AugmentConfig, preprocess: ImagePreprocess, seed: int) -> None:
        self.pairs, self.aug, self.preprocess, self.seed = pairs, aug, preprocess, seed

    def __len__(self) -> int:
        return len(self.pairs) * self.aug.views

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        index, view = divmod(i, self.aug.views)
        pair = self.pairs[index]
        try:
            data = read_item_bytes(Item(path=pair.path))
            image = augment_view(data, pair.path, view, self.seed * 1_000_003 + index, self.aug)
        except (OSError, DecodeError):
            return i, None
        return i, self.preprocess.to_uint8(image)


def _collate(batch: list[tuple[int, torch.Tensor | None]]) -> tuple[list[int], torch.Tensor | None]:
    good = [(i, x) for i, x in batch if x is not None]
    return [i for i, _ in good], (torch.stack([x for _, x in good]) if good else None)


def cache_key(
    pairs: Sequence[Pair], aug: AugmentConfig, texts: Sequence[str], seed: int, towers: str, trim: bool = False,
    precision: str = "fp32",
) -> str:
    h = hashlib.sha256()
    meta = {"v": FEATURE_VERSION, "aug": asdict(aug), "seed": seed, "towers": towers}
    if trim:  # only when on, so untrimmed runs keep the cache they always had
        meta["trim"] = True
    if precision != "fp32":  # likewise
        meta["precision"] = precision
    h.update(json.dumps(meta, sort_keys=True).encode())
    for p in pairs:
        h.update(f"{p.path}\0".encode())
    for t in texts:
        h.update(f"{t}\0".encode())
    return h.hexdigest()[:20]


def _cut_file(cut_layers: int) -> str:
    return f"cut-{cut_layers}.npy"


def text_vectors_file(text_tower) -> str:
    """MiniLM's keeps the name it always had; another tower's (or bf16's) is named by what made it."""
    if text_tower.vectors_id == TEXT_TOWERS[DEFAULT_TEXT_TOWER].weights_id:
        return "text_vectors.npy"
    return f"text_vectors-{text_tower.spec.name}-{hashlib.sha256(text_tower.vectors_id.encode()).hexdigest()[:8]}.npy"


def compute_features(
    pairs: Sequence[Pair], texts: Sequence[str], bridge, aug: AugmentConfig, *, cache: Path, seed: int = 0,
    batch_size: int = 64, num_workers: int = 2, progress: bool = True, cut_layers: int = 0, precision: str = "fp32",
) -> Features:
    """Tower outputs for every (pair, view) and every text; cached by a hash of all inputs.

    The feature map at a cut and each text tower's vectors are add-on files in the same folder
    (`cut-<layers>.npy`, text_vectors_file()): a locked and an unlocked run, or runs with two text
    towers, on the same data share pooled features and thumbnails.
    """
    folder = cache / "features" / cache_key(pairs, aug, texts, seed, bridge.name, bridge.preprocess.trim, precision)
    text_file = text_vectors_file(bridge.text_tower)
    done = (folder / "done.json").exists()
    if not done or (cut_layers and not (folder / _cut_file(cut_layers)).is_file()):
        _image_features(pairs, texts, bridge, aug, folder, seed, batch_size, num_workers, progress, cut_layers,
                        precision)
    if not (folder / text_file).is_file():  # its own atomic file, like the cut
        tower = bridge.text_tower
        write_npy(folder / text_file, tower.encode_with_progress(texts, f"text features ({tower.spec.name})", progress))
    return _load(folder, text_file, cut_layers)


def _image_features(
    pairs: Sequence[Pair], texts: Sequence[str], bridge, aug: AugmentConfig, folder: Path, seed: int,
    batch_size: int, num_workers: int, progress: bool, cut_layers: int, precision: str = "fp32",
) -> None:
    """Pooled features, thumbnails and (with cut_layers) the feature map at the cut, for every view;
    the tower runs at `precision` (embedding_autocast), the rest in fp32."""
    done = (folder / "done.json").exists()
    n, v = len(pairs), aug.views
    pooled = np.zeros((n * v, 1280), np.float16)
    thumbs = np.zeros((n * v, THUMB_DIM), np.float16)
    ok = np.zeros(n * v, bool)
    cut = None
    loader = torch.utils.data.DataLoader(
        _ViewDataset(pairs, aug, bridge.preprocess, seed), batch_size=batch_size, num_workers=num_workers,
        collate_fn=_collate,
    )
    with tqdm(total=n * v, unit="view", desc="image features", disable=not progress) as bar, torch.inference_mode():
        for rows, pixels in loader:
            if pixels is not None:
                x = bridge.preprocess.normalize(pixels.to(bridge.device))
                with embedding_autocast(bridge.device, precision):
                    c, p, _ = bridge.split_features(x, cut_layers)
                if c is not None:
                    if cut is None:  # its shape is known once the tower has run
                        cut = np.zeros((n * v, *c.shape[1:]), np.float16)
                    cut[rows] = c.float().cpu().numpy()
                pooled[rows], ok[rows] = p.cpu().numpy(), True
                thumbs[rows] = colour_thumbnail(x).cpu().numpy()
            bar.update(min(batch_size, bar.total - bar.n))
    if cut_layers and cut is None:
        raise ValueError("no training image could be decoded, so there is no feature map to unlock layers on")
    folder.mkdir(parents=True, exist_ok=True)
    if cut is not None:  # its own atomic file: the folder's other files are the same with or without it
        write_npy(folder / _cut_file(cut_layers), cut.reshape(n, v, *cut.shape[1:]))
    if not done:
        write_npy(folder / "pooled.npy", pooled.reshape(n, v, -1))
        write_npy(folder / "thumb.npy", thumbs.reshape(n, v, -1))
        write_npy(folder / "ok.npy", ok.reshape(n, v).all(axis=1))
        write_json(folder / "texts.json", list(texts))
        write_json(folder / "done.json", {"n": n, "views": v, "texts": len(texts)})  # commit marker, last


def _load(folder: Path, text_file: str, cut_layers: int = 0) -> Features:
    return Features(
        pooled=np.load(folder / "pooled.npy"),
        thumb=np.load(folder / "thumb.npy"),
        ok=np.load(folder / "ok.npy"),
        texts=json.loads((folder / "texts.json").read_text()),
        text_vectors=np.load(folder / text_file),
        key=folder.name,
        cut=np.load(folder / _cut_file(cut_layers)) if cut_layers else None,
    )

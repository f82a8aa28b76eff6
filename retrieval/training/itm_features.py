"""What the ITM reranker reads from the locked towers, computed once and cached (issue #27).

Both towers of the dual encoder are locked, so everything a fusion layer sees is a function of the
item alone. One pass of retr:default over an image gives, at once (a forward hook, no second pass):

    tokens   (N, 49, 1280) float16   EfficientNet-Lite0's last feature map (7x7, before pooling)
    fine     (N, 196, 112) float16   the last 14x14 stage's output (a finer, earlier feature map)
    itc      (N, D) float32          the dual encoder's image vector (its ITC side, for mining)

and one pass of mpnet over a string gives its token states, (T_i, 768) float16, stored ragged
(concatenated, with offsets). Their mean is mpnet's sentence vector (cosine 0.9999998), so the
dual encoder's text vectors are derived from them instead of running mpnet a second time.

Cached under $RETR_CACHE/features/itm-<hash of the model, images and strings>/, one atomic file
per array; the image and text halves are written separately, so a killed pass redoes only its half.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.atomic import write_json, write_npy
from retrieval.encoders.precision import embedding_autocast
from retrieval.training.config import AugmentConfig
from retrieval.training.data import Pair
from retrieval.training.features import _collate, _ViewDataset

ITM_FEATURE_VERSION = 1
FINE_SIDE = 14  # the finer feature map: the output of the tower's last block at 14x14


@dataclass(frozen=True)
class TextStates:
    """Ragged token states of many strings: string i is states[offsets[i]:offsets[i + 1]]."""

    texts: list[str]
    states: np.ndarray  # (sum T_i, 768) float16
    offsets: np.ndarray  # (len(texts) + 1,) int64

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 768) float32 zero-padded states and (B, T) bool mask of real tokens."""
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        out = np.zeros((len(rows), max(lengths), self.states.shape[1]), np.float32)
        mask = np.zeros((len(rows), max(lengths)), bool)
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            out[i, :n] = self.states[self.offsets[r]:self.offsets[r] + n]
            mask[i, :n] = True
        return torch.from_numpy(out), torch.from_numpy(mask)


@dataclass(frozen=True)
class ItmFeatures:
    tokens: np.ndarray  # (N, 49, 1280) float16, last feature map per image
    fine: np.ndarray  # (N, 196, 112) float16, the 14x14 stage
    itc_image: np.ndarray  # (N, D) float32, the dual encoder's image vectors
    ok: np.ndarray  # (N,) bool, False where the image could not be decoded
    text: TextStates
    itc_text: np.ndarray  # (T, D) float32, the dual encoder's text vectors


def _fine_block(net: torch.nn.Module, size: int) -> int:
    """Index of the last MBConv block whose output is FINE_SIDE wide (a dry run at the tower's input size)."""
    sides: list[int] = []
    hooks = [b.register_forward_hook(lambda _m, _i, y: sides.append(y.shape[-1])) for b in net._blocks]
    with torch.inference_mode():
        net.extract_features(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return max(i for i, s in enumerate(sides) if s == FINE_SIDE)


@contextlib.contextmanager
def tapped_feature_maps(tower) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every pass of `tower` (an EfficientNetLite) leaves its last feature map (B, 1280, 7, 7)
    in out["tokens"] and its 14x14 stage (B, 112, 14, 14) in out["fine"]."""
    net, out = tower.net, {}
    hooks = [
        net._bn1.register_forward_hook(lambda _m, _i, y: out.__setitem__("tokens", net._swish(y))),
        net._blocks[_fine_block(net, tower.variant.size)].register_forward_hook(
            lambda _m, _i, y: out.__setitem__("fine", y)),
    ]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


def patch_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) feature map -> (B, h*w, C) tokens, row-major over the grid."""
    return fmap.float().flatten(2).transpose(1, 2)


def token_states(text_tower, texts: Sequence[str]) -> list[torch.Tensor]:
    """mpnet / MiniLM last hidden states per string, (T_i, dim) float32, as the tower's encode runs it."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=text_tower.bf16):
        states = text_tower.model.encode(list(texts), batch_size=text_tower.spec.batch_size,
                                         output_value="token_embeddings", show_progress_bar=False)
    return [s.float() for s in states]


@contextlib.contextmanager
def _text_vectors_from(tower, vectors: dict[str, np.ndarray]) -> Iterator[None]:
    """The tower's encode() answers from precomputed sentence vectors while open (no second mpnet pass)."""
    tower.encode = lambda texts: np.stack([vectors[t] for t in texts]) if texts else np.zeros((0, tower.dim))
    try:
        yield
    finally:
        del tower.encode


def _key(encoder, pairs: Sequence[Pair], texts: Sequence[str], precision: str) -> str:
    meta = {"v": ITM_FEATURE_VERSION, "model": encoder.weights_id, "precision": precision}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for p in pairs:
        h.update(f"{p.path}\0".encode())
    h.update(b"\1")
    for t in texts:
        h.update(f"{t}\0".encode())
    return h.hexdigest()[:20]


def _image_half(
    encoder, pairs: Sequence[Pair], folder: Path, progress: bool, batch_size: int, precision: str
) -> None:
    n = len(pairs)
    tokens, fine, itc, ok = None, None, None, np.zeros(n, bool)
    data = _ViewDataset(pairs, AugmentConfig(views=1), encoder.preprocess, 0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=1, collate_fn=_collate)
    tower = encoder.bridge.image_tower
    with (tqdm(total=n, unit="image", desc="itm image tokens", disable=not progress) as bar,
          tapped_feature_maps(tower) as maps, torch.inference_mode()):
        for rows, pixels in loader:
            if pixels is not None:
                with embedding_autocast(encoder.device, precision):
                    v = encoder.encode_pixels(encoder.preprocess.normalize(pixels))  # (B, D), fills `maps`
                t, f = patch_tokens(maps["tokens"]), patch_tokens(maps["fine"])
                if tokens is None:
                    tokens = np.zeros((n, *t.shape[1:]), np.float16)
                    fine = np.zeros((n, *f.shape[1:]), np.float16)
                    itc = np.zeros((n, v.shape[1]), np.float32)
                tokens[rows], fine[rows], itc[rows], ok[rows] = t.numpy(), f.numpy(), v, True
            bar.update(min(batch_size, bar.total - bar.n))
    if tokens is None:
        raise ValueError("none of the images could be decoded")
    for name, array in (("tokens", tokens), ("fine", fine), ("itc_image", itc), ("ok", ok)):
        write_npy(folder / f"{name}.npy", array)
    write_json(folder / "images.json", {"n": n})  # commit marker of the image half, last


def _text_half(encoder, texts: Sequence[str], folder: Path, progress: bool, chunk: int = 512) -> None:
    tower = encoder.bridge.text_tower
    states: list[torch.Tensor] = []
    with tqdm(total=len(texts), unit="text", desc="itm text states", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            states.extend(token_states(tower, texts[start:start + chunk]))
            bar.update(min(chunk, len(texts) - start))
    sentence = torch.nn.functional.normalize(torch.stack([s.mean(0) for s in states]), dim=-1).numpy()
    with _text_vectors_from(tower, dict(zip(texts, sentence, strict=True))):
        itc = encoder.encode_texts(list(texts))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in states])]).astype(np.int64)
    write_npy(folder / "text_states.npy", torch.cat(states).half().numpy())
    write_npy(folder / "text_offsets.npy", offsets)
    write_npy(folder / "itc_text.npy", itc.astype(np.float32))
    write_json(folder / "texts.json", list(texts))  # commit marker of the text half, last


def tower_outputs(
    encoder, pairs: Sequence[Pair], texts: Sequence[str], *, cache: Path, progress: bool = True,
    batch_size: int = 32, precision: str = "fp32",
) -> ItmFeatures:
    """Image tokens and ITC vectors of `pairs`' images, token states and ITC vectors of `texts`, under
    `encoder` (retr:default's AlignedEncoder); cached by a hash of all three and the `precision` the image
    tower runs at ("bf16": 1.7x faster on CPUs with AVX512-BF16, for training features)."""
    texts = list(dict.fromkeys(texts))
    folder = cache / "features" / f"itm-{_key(encoder, pairs, texts, precision)}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images.json").is_file():
        _image_half(encoder, pairs, folder, progress, batch_size, precision)
    if not (folder / "texts.json").is_file():
        _text_half(encoder, texts, folder, progress)

    def load(name: str) -> np.ndarray:
        return np.load(folder / f"{name}.npy")

    text = TextStates(json.loads((folder / "texts.json").read_text()), load("text_states"), load("text_offsets"))
    return ItmFeatures(load("tokens"), load("fine"), load("itc_image"), load("ok"), text, load("itc_text"))

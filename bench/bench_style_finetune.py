"""Does more data lift cross-style search? The image tower fine-tuned across emoji styles, at fractions of its keys.

    python bench/bench_style_finetune.py [--fractions 0.25 0.5 1] [--size 160] [--steps 288]

The cross-style bar (Noto → Twemoji / OpenMoji image→image R@1 ≥ 0.9) is the one `retr:default`
misses. This measures whether training the whole image tower harder would reach it: EfficientNet-Lite0
(stem frozen, BatchNorm kept at ImageNet's statistics) is fine-tuned with a supervised contrastive
loss (SupCon, τ = 0.1) on a 256-d projection, in batches of 48 keys × 2 random styles (random
background behind transparency, random crop of 60–100 % of the area, ±20 % brightness and
saturation), on a fixed-seed subset of the training keys that have at least two styles. Every run
takes the same number of steps, so a smaller subset is seen more often. The test split's drawings
(clean, on white) are then matched by cosine, with the pooled features and with the projection.

Images of the ten styles are decoded once at 128 px and cached under
`$RETR_CACHE/features/style-ft/` (corpora not yet fetched are fetched first). A recorded run
(2 CPU cores, 39 min in all, ~34 img/s; R@1 with the pooled features / with the projection):

    keys   Noto→Twemoji   Noto→OpenMoji  final loss
    432    0.761 / 0.772  0.707 / 0.679  0.31
    864    0.777 / 0.766  0.739 / 0.701  0.44
    1727   0.766 / 0.832  0.712 / 0.745  0.57
    1727 keys ÷ 432 keys: Noto→Twemoji x1.01 / x1.08, Noto→OpenMoji x1.01 / x1.10

With 184 queries one query is 0.005 and a standard error about 0.03; an earlier scratch run of the
same recipe with other batches read 0.766 / 0.783 and 0.712 / 0.707 on all keys.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from indexing.atomic import atomic_path
from indexing.cache import cache_dir
from indexing.decode import DecodeError, DecodeLimits, decode_image
from retrieval.encoders.towers import EfficientNetLite
from retrieval.evaluate import recall_at
from retrieval.training.data import load_pairs

STYLES = (
    "emoji-google",
    "emoji-twitter",
    "openmoji",
    "flags",
    "emoji-fluent3d",
    "emoji-emojione",
    "emoji-emojione-v1",
    "emoji-noto-v1",
    "emoji-fluent-flat",
    "emoji-fluent-color",
)
QUERY, GALLERIES = "emoji-google", ("emoji-twitter", "openmoji")
SIDE = 128  # cached side; the tower sees --size
KEYS_PER_BATCH = 48  # each with 2 styles, so 96 images a step
LOG_EVERY = 36  # steps between progress lines (about one pass over all multi-style keys)


@dataclass(frozen=True)
class StyleImages:
    rgb: np.ndarray  # (N, SIDE, SIDE, 3) uint8, composited over black
    alpha: np.ndarray  # (N, SIDE, SIDE) uint8
    key: np.ndarray  # (N,) emoji keys, shared across styles
    split: np.ndarray  # (N,) "train" / "val" / "test"


def _decode(data: bytes, name: str, background: tuple[int, int, int]) -> np.ndarray:
    image = decode_image(data, name=name, limits=DecodeLimits(svg_size=SIDE, background=background)).image
    return np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BICUBIC), np.float32)


def style_images(corpus: str) -> StyleImages:
    """A corpus's images at SIDE px; alpha recovered from the image composited over white and over black."""
    path = cache_dir() / "features" / "style-ft" / f"{corpus}-{SIDE}.npz"
    if not path.exists():
        rgb, alpha, keys, splits = [], [], [], []
        for pair in load_pairs([corpus]):
            data = Path(pair.path).read_bytes()
            try:
                white, black = _decode(data, pair.path, (255, 255, 255)), _decode(data, pair.path, (0, 0, 0))
            except DecodeError as e:
                print(f"skipped {pair.path}: {e}")
                continue
            a = np.clip(1 - (white - black).mean(-1) / 255.0, 0, 1)
            rgb.append(black.clip(0, 255).astype(np.uint8))
            alpha.append((a * 255).round().astype(np.uint8))
            keys.append(pair.key)
            splits.append(pair.split)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, rgb=np.stack(rgb), alpha=np.stack(alpha), key=np.array(keys), split=np.array(splits))
    with np.load(path) as z:
        return StyleImages(z["rgb"], z["alpha"], z["key"], z["split"])


class StyleTower(torch.nn.Module):
    """EfficientNet-Lite0 with its stem frozen, plus a 256-d projection for the contrastive loss."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = EfficientNetLite("efficientnet-lite0")
        for module in (self.tower.net._conv_stem, self.tower.net._bn0):
            module.requires_grad_(False)
        self.proj = torch.nn.Linear(1280, 256)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) in [0, 1] -> (pooled (B, 1280), projection (B, 256))."""
        pooled, _ = self.tower((x - 0.5) / 0.5)
        return pooled, self.proj(pooled)


def augment(images: StyleImages, idx: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """(B, 3, size, size) in [0, 1]: random background, random resized crop, brightness and saturation."""
    x = torch.from_numpy(images.rgb[idx]).permute(0, 3, 1, 2).float() / 255
    a = torch.from_numpy(images.alpha[idx])[:, None].float() / 255
    n = len(idx)
    white = torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None]
    background = torch.where(white, torch.ones(n, 3, 1, 1), torch.from_numpy(rng.random((n, 3, 1, 1))).float())
    x = x + (1 - a) * background
    crops = []
    for i in range(n):
        scale, ratio = math.sqrt(rng.uniform(0.6, 1.0)), math.exp(rng.uniform(-0.2, 0.2))
        h, w = min(SIDE, int(SIDE * scale * math.sqrt(ratio))), min(SIDE, int(SIDE * scale / math.sqrt(ratio)))
        top, left = rng.integers(0, SIDE + 1 - h), rng.integers(0, SIDE + 1 - w)
        crops.append(
            F.interpolate(
                x[i : i + 1, :, top : top + h, left : left + w],
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        )
    x = torch.cat(crops)
    bright = 1 + (torch.from_numpy(rng.random((n, 1, 1, 1))).float() - 0.5) * 0.4
    sat = 1 + (torch.from_numpy(rng.random((n, 1, 1, 1))).float() - 0.5) * 0.4
    grey = x.mean(1, keepdim=True)
    return ((grey + (x - grey) * sat) * bright).clamp(0, 1)


def supcon(z: torch.Tensor, labels: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over one batch of unit vectors z (B, D)."""
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = (z @ z.T / tau).masked_fill(eye, -1e9)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_p * positive).sum(1).div(positive.sum(1)).mean()


def train(images: StyleImages, keys: list[str], size: int, steps: int, seed: int) -> tuple[StyleTower, float]:
    """Fine-tune on KEYS for STEPS steps of KEYS_PER_BATCH keys x 2 styles -> (model, last 20 steps' mean loss)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_rows = np.flatnonzero(images.split == "train")
    by_key: dict[str, list[int]] = {}
    for i in train_rows:
        by_key.setdefault(str(images.key[i]), []).append(int(i))
    rows = {k: np.asarray(by_key[k]) for k in keys}
    model = StyleTower()
    backbone = [p for p in model.tower.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": backbone, "lr": 1e-4}, {"params": model.proj.parameters(), "lr": 1e-3}], weight_decay=0.05
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.tower.eval()  # BatchNorm keeps ImageNet's statistics
    losses, order, start = [], np.array([], int), time.perf_counter()
    for step in range(steps):
        if len(order) < KEYS_PER_BATCH:
            order = np.concatenate([order, rng.permutation(len(keys))])
        batch, order = order[:KEYS_PER_BATCH], order[KEYS_PER_BATCH:]
        idx = np.concatenate([rng.choice(rows[keys[b]], size=2, replace=False) for b in batch])
        _, z = model(augment(images, idx, size, rng))
        loss = supcon(F.normalize(z, dim=-1), torch.arange(KEYS_PER_BATCH).repeat_interleave(2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            rate = (step + 1) * 2 * KEYS_PER_BATCH / (time.perf_counter() - start)
            print(f"  step {step + 1}/{steps}  loss {np.mean(losses[-LOG_EVERY:]):.3f}  {rate:.0f} img/s", flush=True)
    return model, float(np.mean(losses[-20:]))


@torch.no_grad()
def test_vectors(model: StyleTower, images: StyleImages, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, pooled, projection) of the test split, clean on white, unit length."""
    m = images.split == "test"
    x = torch.from_numpy(images.rgb[m]).permute(0, 3, 1, 2).float() / 255
    a = torch.from_numpy(images.alpha[m])[:, None].float() / 255
    x = F.interpolate(x + (1 - a), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = [model(x[i : i + 128]) for i in range(0, len(x), 128)]
    pooled, proj = (F.normalize(torch.cat(t), dim=-1).numpy() for t in zip(*out, strict=True))
    return images.key[m], pooled, proj


def recall_at_1(kq: np.ndarray, xq: np.ndarray, kg: np.ndarray, xg: np.ndarray) -> float:
    """Share of queries whose nearest gallery drawing has their key (queries without one are left out)."""
    keep = np.isin(kq, kg)
    return recall_at(xq[keep] @ xg.T, kq[keep][:, None] == kg[None, :], ks=(1,))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--size", type=int, default=160, help="input side the tower sees")
    parser.add_argument("--steps", type=int, default=288, help="steps per run, whatever the fraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    per_style = {c: style_images(c) for c in STYLES}
    images = StyleImages(
        *(np.concatenate([getattr(s, f) for s in per_style.values()]) for f in ("rgb", "alpha", "key", "split"))
    )
    train_keys, counts = np.unique(images.key[images.split == "train"], return_counts=True)
    multi = sorted(train_keys[counts >= 2].tolist())
    subset = np.random.default_rng(123).permutation(len(multi))
    print(f"{(images.split == 'train').sum()} training images, {len(multi)} keys with >= 2 styles")
    rows = []
    for fraction in args.fractions:
        keys = [multi[i] for i in np.sort(subset[: round(fraction * len(multi))])]
        print(f"fraction {fraction}: {len(keys)} keys")
        model, loss = train(images, keys, args.size, args.steps, args.seed)
        kq, *xq = test_vectors(model, per_style[QUERY], args.size)
        scores = []
        for g in GALLERIES:
            kg, *xg = test_vectors(model, per_style[g], args.size)
            scores.append([recall_at_1(kq, q, kg, v) for q, v in zip(xq, xg, strict=True)])
        rows.append((len(keys), scores, loss))
    print("\n    keys   Noto→Twemoji   Noto→OpenMoji  final loss")
    for n, scores, loss in rows:
        print(f"    {n:<6} " + "  ".join(f"{a:.3f} / {b:.3f}" for a, b in scores) + f"  {loss:.2f}")
    (n0, first, _), (n1, last, _) = rows[0], rows[-1]
    ratios = ", ".join(
        f"{name} x{b[0] / a[0]:.2f} / x{b[1] / a[1]:.2f}"
        for name, a, b in zip(("Noto→Twemoji", "Noto→OpenMoji"), first, last, strict=True)
    )
    print(f"    {n1} keys ÷ {n0} keys: {ratios}")


if __name__ == "__main__":
    main()

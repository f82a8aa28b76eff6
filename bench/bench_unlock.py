"""Cost of a training step with the image tower's last layers unlocked, as a ratio to a locked step.

    python bench/bench_unlock.py [--batch 256] [--repeats 3] [--layers 1 2 5]

A locked step trains the heads on cached pooled features; an unlocked step (`unlock.layers` = n)
also runs the tower's last n layers forward and backward from the cached feature map at their
input (retrieval.training.loop._loss, the real training loss, on seeded random inputs of the
default config's shapes). Prints one line per setting; a recorded run (2 CPU cores):

    locked              0.046 s/step  x1.0
    unlock.layers = 1   0.371 s/step  x8.1
    unlock.layers = 2   0.915 s/step  x19.9
    unlock.layers = 5   3.421 s/step  x74.3
"""

from __future__ import annotations

import argparse
import time

import torch

from retrieval.encoders.towers import EfficientNetLite
from retrieval.training.config import HeadConfig
from retrieval.training.loop import _loss
from retrieval.training.model import THUMB_DIM, AlignedHeads


def seconds_per_step(heads: AlignedHeads, cut: torch.Tensor | None, batch: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    pooled, thumb = torch.randn(batch, 1280, generator=g), torch.randn(batch, THUMB_DIM, generator=g)
    bridge, text = torch.randn(batch, 384, generator=g), torch.randn(batch, 384, generator=g)
    same = torch.eye(batch, dtype=torch.bool)
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-4)

    def step() -> None:
        loss = _loss(heads, (pooled, bridge, thumb, cut, text, same), i2i=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 5])
    args = parser.parse_args()
    tower = EfficientNetLite()
    config = HeadConfig(hidden=1024, dropout=0.2, text_adapter=False, instance_dim=256)  # default.json's heads
    heads = AlignedHeads(config).train()
    base = seconds_per_step(heads, None, args.batch, args.repeats)
    print(f"{'locked':<19} {base:.3f} s/step  x1.0")
    pixels = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for layers in args.layers:
        with torch.inference_mode():
            cut = tower.split(pixels, layers)[0].half().clone()  # cached as float16, like the training cache
        unlocked = AlignedHeads(config).train()
        unlocked.attach_tail(tower.tail(layers))
        sec = seconds_per_step(unlocked, cut, args.batch, args.repeats)
        print(f"unlock.layers = {layers:<3} {sec:.3f} s/step  x{sec / base:.1f}")


if __name__ == "__main__":
    main()

"""Cost of a training step with the image tower's last layers unlocked, as a ratio to a locked step.

    python bench/bench_unlock.py [--batch 256] [--repeats 3] [--layers 1 2 5]

A locked step trains the heads on cached pooled features; an unlocked step (`unlock.layers` = n)
also runs the tower's last n layers forward and backward from the cached feature map at their
input (retrieval.training.loop._loss, the real training loss, on seeded random inputs of the
default config's shapes). Each unlocked setting runs in fp32 and, on a device with native
bfloat16, in bf16 as well (`unlock.precision`, "auto" picks it there). Prints one line per setting;
a recorded run (2 CPU cores with AVX512-BF16):

    locked              0.039 s/step  x1.0
    unlock.layers = 1   fp32  0.350 s/step  x9.0 of locked
    unlock.layers = 1   bf16  0.242 s/step  x6.2 of locked  x0.69 of fp32
    unlock.layers = 2   fp32  0.895 s/step  x23.1 of locked
    unlock.layers = 2   bf16  0.424 s/step  x10.9 of locked  x0.47 of fp32
    unlock.layers = 5   fp32  2.572 s/step  x66.3 of locked
    unlock.layers = 5   bf16  1.693 s/step  x43.6 of locked  x0.66 of fp32
"""

from __future__ import annotations

import argparse
import time

import torch

from retrieval.encoders.precision import autocast_dtype, native_bf16
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
    precisions = ["fp32", "bf16"] if native_bf16("cpu") else ["fp32"]
    for layers in args.layers:
        with torch.inference_mode():
            cut = tower.split(pixels, layers)[0].half().clone()  # cached as float16, like the training cache
        fp32 = 0.0
        for precision in precisions:
            torch.manual_seed(0)
            unlocked = AlignedHeads(config).train()
            tail = tower.tail(layers)
            tail.autocast = autocast_dtype(precision, "cpu")  # as retr train sets it for unlock.precision
            unlocked.attach_tail(tail)
            sec = seconds_per_step(unlocked, cut, args.batch, args.repeats)
            fp32 = fp32 or sec
            print(f"unlock.layers = {layers:<3} {precision}  {sec:.3f} s/step  x{sec / base:.1f} of locked"
                  + (f"  x{sec / fp32:.2f} of fp32" if precision != "fp32" else ""))


if __name__ == "__main__":
    main()

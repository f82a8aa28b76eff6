"""Cost of framing images to their content (`trim_border`), as a ratio to preprocessing without it.

    python bench/bench_framing.py [--per-corpus 200] [--corpora emoji-google openmoji openclipart ...]

For each corpus (fetched into the cache first when it is not there yet; a corpus that cannot be
fetched is reported as skipped): the first N images of its manifest, decoded once, then preprocessed for
EfficientNet-Lite0 (`ImagePreprocess.to_uint8`: resize and crop to 224) with and without
`trim=True`. Prints ms per image for both, their ratio, and the share of images that had a border
to cut. Decoding (not timed here) is the same either way. A recorded run is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from indexing.decode import decode_image
from indexing.sources import Item, read_item_bytes
from retrieval.encoders.framing import trim_border
from retrieval.encoders.towers import EFFICIENTNET_LITES
from retrieval.training.data import load_pairs

CORPORA = ("emoji-google", "emoji-twitter", "openmoji", "flags", "openclipart", "tuxpaint-photos", "gcompris-photos")


def ms_per_image(preprocess, images, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for image in images:
            preprocess.to_uint8(image)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-corpus", type=int, default=200)
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA))
    args = ap.parse_args()
    plain = EFFICIENTNET_LITES["efficientnet-lite0"].preprocess
    framed = dataclasses.replace(plain, trim=True)
    print(f"{'corpus':18s} {'images':>6s} {'framed':>7s} {'plain ms':>9s} {'trim ms':>8s} {'ratio':>6s}")
    for corpus in args.corpora:
        try:
            pairs = load_pairs([corpus], None)[: args.per_corpus]
        except (FileNotFoundError, ValueError) as e:
            print(f"{corpus:18s} skipped: {e}")
            continue
        images = [decode_image(read_item_bytes(Item(path=p.path)), name=p.path).image for p in pairs]
        cut = sum(trim_border(im).size != im.size for im in images) / len(images)
        a, b = ms_per_image(plain, images), ms_per_image(framed, images)
        print(f"{corpus:18s} {len(images):6d} {cut:7.0%} {a:9.2f} {b:8.2f} {b / a:6.2f}")


if __name__ == "__main__":
    main()

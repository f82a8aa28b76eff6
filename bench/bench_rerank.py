"""What reranking a query's top K with retr:itm costs, on this machine (issue #27).

    python bench/bench_rerank.py [--checkpoint retrieval/checkpoints/itm] [--k 32] [--queries 20]

Per query, over K emoji-google test images (one run, medians over --queries queries):
  search     retr:default's text vector and the inner products (what a query costs without reranking)
  +files     + the K images read and decoded, through the image tower to patch tokens, and the fusion layers
  +cached    + the fusion layers on patch tokens an index would have stored (the text's token states included)
and the bytes per item of such a token cache. Output:

    K=32  search 12.3 ms · +files 900 ms (x74) · +cached 60 ms (x5.0, +48 ms) · token cache 25,088 B/item
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.rerank.fusion import load as load_reranker
from retrieval.rerank.rerank import load_item_image
from retrieval.training.data import load_pairs


def _median_ms(fns, runs: list) -> list[float]:
    """Median ms of each fn over `runs`, interleaved per query so that they share the machine's load."""
    times = [[] for _ in fns]
    for arg in runs:
        for fn, out in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn(arg)
            out.append(time.perf_counter() - t)
    return [1000 * statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("retrieval/checkpoints/itm"))
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    reranker = load_reranker(args.checkpoint, "retr:itm")
    encoder = reranker.encoder
    pairs = load_pairs(["emoji-google"], "test")
    gallery = pairs[:args.k]
    queries = [p.captions[0] for p in pairs[args.k:args.k + args.queries]]
    xb = encoder.encode_images([load_item_image(p.path) for p in gallery])  # the index
    with torch.inference_mode():
        cached = reranker.image_tokens(torch.stack([reranker.preprocess(load_item_image(p.path)) for p in gallery]))

    def search(q: str) -> np.ndarray:
        return encoder.encode_texts([q]) @ xb.T

    def from_files(q: str) -> np.ndarray:
        search(q)
        pixels = torch.stack([reranker.preprocess(load_item_image(p.path)) for p in gallery])
        return reranker.match_probability(q, reranker.image_tokens(pixels))

    def from_cache(q: str) -> np.ndarray:
        search(q)
        return reranker.match_probability(q, cached)

    search(queries[0]), from_files(queries[0]), from_cache(queries[0])  # warm-up
    base, files, cache = _median_ms((search, from_files, from_cache), queries)
    per_item = cached[0].numel() * cached.element_size()
    print(f"K={args.k}  search {base:.1f} ms · +files {files:.0f} ms (x{files / base:.1f}) · +cached {cache:.0f} ms "
          f"(x{cache / base:.1f}, +{cache - base:.0f} ms) · token cache {per_item:,} B/item "
          f"({tuple(cached.shape[1:])} {cached.dtype}) · torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()

"""Embedding pipeline efficiency: end-to-end images/s ÷ model-forward-only images/s.

Same model, same batch size, same run. End-to-end = read bytes + decode + preprocess in
DataLoader workers + model + writing chunk files (`indexing.embed.embed_items`). Forward-only =
`encoder.encode_pixels` on batches already in memory. A ratio near 1 means decoding is hidden
behind the model; the goal is >= 0.85.

    python bench/bench_embed.py [--source emoji-google] [--n 1024] [--batch-size 64] [--workers 2]

Prints, e.g.:
    model retr:imagenet-bridge  batch 64  workers 2  n 1024  threads 2
    forward-only   : 95.1 img/s
    end-to-end     : 88.0 img/s
    ratio e2e/fwd  : 0.93   (goal >= 0.85)
    {"bench": "embed", "ratio": 0.93, ...}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from indexing.decode import decode_image
from indexing.embed import EmbedConfig, embed_items
from indexing.resolve import resolve_items
from indexing.sources import read_item_bytes
from retrieval.encoders import load_encoder
from retrieval.encoders.precision import embedding_autocast


def forward_only(encoder, items, batch_size: int, n: int, precision: str = "fp32") -> float:
    """img/s of the model alone (in `precision`, as embed_items runs it) on a preprocessed batch in memory."""
    pixels = torch.stack([encoder.preprocess(decode_image(read_item_bytes(it)).image) for it in items[:batch_size]])
    with torch.inference_mode(), embedding_autocast(encoder.device, precision):
        encoder.encode_pixels(pixels)  # warm-up
        n_batches = max(1, n // batch_size)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            encoder.encode_pixels(pixels)  # returns numpy: the GPU's work is done when it returns
        return n_batches * batch_size / (time.perf_counter() - t0)


def end_to_end(encoder, items, config: EmbedConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = embed_items(items, Path(tmp) / "seg", encoder, config, progress=False)
        return summary.n_items / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="emoji-google", help="folder, manifest or corpus name")
    ap.add_argument("--model", default="retr:imagenet-bridge")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    items = resolve_items(args.source, progress=False)[: args.n]
    encoder = load_encoder(args.model, device=args.device)
    config = EmbedConfig(batch_size=args.batch_size, num_workers=args.workers, chunk_size=max(args.n, 1))
    print(f"model {args.model}  batch {args.batch_size}  workers {args.workers}  n {len(items)}  "
          f"threads {torch.get_num_threads()}")
    fwd = forward_only(encoder, items, args.batch_size, len(items))
    e2e = end_to_end(encoder, items, config)
    ratio = e2e / fwd
    print(f"forward-only   : {fwd:.1f} img/s")
    print(f"end-to-end     : {e2e:.1f} img/s")
    print(f"ratio e2e/fwd  : {ratio:.2f}   (goal >= 0.85)")
    print(json.dumps({"bench": "embed", "model": args.model, "n": len(items), "batch_size": args.batch_size,
                      "workers": args.workers, "forward_img_s": round(fwd, 1), "e2e_img_s": round(e2e, 1),
                      "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()

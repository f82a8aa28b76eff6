"""Indexing in bfloat16 on a CPU: end-to-end images/s with `--precision bf16` ÷ with fp32, same run.

End-to-end is `indexing.embed.embed_items` (read + decode in workers + model + chunk files), as
`retr index build` runs it; the vectors of both runs are compared row by row (cosine). bf16 pays
only on CPUs that compute it natively (AVX512-BF16); elsewhere it is emulated and slower.

    python bench/bench_embed_precision.py [--source emoji-google] [--model retr:default] [--n 512]

Prints, e.g.:
    model retr:default  n 512  batch 64  workers 2  threads 2  native bf16 True
    fp32 : 28.1 img/s
    bf16 : 47.0 img/s   x1.67 of fp32   cosine to fp32: min 0.991, median 0.9997
    {"bench": "embed_precision", ...}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from indexing.embed import EmbedConfig, embed_items
from indexing.resolve import resolve_items
from indexing.store import read_segment_vectors
from retrieval.encoders import load_encoder
from retrieval.encoders.precision import native_bf16


def run(encoder, items, config: EmbedConfig) -> tuple[float, np.ndarray]:
    """(images/s, the vectors) of one end-to-end embedding run."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = embed_items(items, Path(tmp) / "seg", encoder, config, progress=False)
        seconds = time.perf_counter() - t0
        return summary.n_items / seconds, read_segment_vectors(Path(tmp) / "seg").astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="emoji-google", help="folder, manifest or corpus name")
    ap.add_argument("--model", default="retr:default")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    items = resolve_items(args.source, progress=False)[: args.n]
    encoder = load_encoder(args.model, device="cpu")
    print(f"model {args.model}  n {len(items)}  batch {args.batch_size}  workers {args.workers}  "
          f"threads {torch.get_num_threads()}  native bf16 {native_bf16('cpu')}")
    out = {}
    for precision in ("fp32", "bf16"):
        config = EmbedConfig(batch_size=args.batch_size, num_workers=args.workers, chunk_size=max(args.n, 1),
                             storage_dtype="float32", precision=precision)
        run(encoder, items[: args.batch_size], config)  # warm-up: kernel selection for this precision
        out[precision] = run(encoder, items, config)
    (fp32, ref), (bf16, vec) = out["fp32"], out["bf16"]
    cos = np.sum(ref * vec, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(vec, axis=1))
    print(f"fp32 : {fp32:.1f} img/s")
    print(f"bf16 : {bf16:.1f} img/s   x{bf16 / fp32:.2f} of fp32   cosine to fp32: min {cos.min():.3f}, "
          f"median {np.median(cos):.4f}")
    print(json.dumps({"bench": "embed_precision", "model": args.model, "n": len(items),
                      "native_bf16": native_bf16("cpu"),
                      "fp32_img_s": round(fp32, 1), "bf16_img_s": round(bf16, 1), "ratio": round(bf16 / fp32, 3),
                      "cos_min": round(float(cos.min()), 4), "cos_median": round(float(np.median(cos)), 5)}))


if __name__ == "__main__":
    main()

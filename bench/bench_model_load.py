"""What a user waits for before the first answer: model load, first load vs later ones, and query cost.

    python bench/bench_model_load.py [--models retr:default retr:minilm] [--queries 256] [--repeats 2]

Each model is timed in fresh Python processes (imports count, as in `retr search`) against a scratch
`$RETR_CACHE` that shares the real cache's corpora, joined models and pinned wheels but starts without the
cached text vectors (`assets/*.npy`: the bridge's class prompts and the support captions of query
expansion). The first process pays for encoding them, the later ones read them. Each process loads
the model (`load_encoder`), encodes 8 warm-up queries, then `--queries` short queries in one call.
mpnet's joined model must already be in the real cache (its first use fetches 404 MB: run any
mpnet model once). Prints, e.g.

    model          first load s    later loads s   queries s (256)
    retr:default           91.3         6.4, 5.3   0.98, 0.95
    retr:minilm            24.3         5.1, 4.8   0.36, 0.32
    retr:default: later load ÷ retr:minilm's: 1.18   queries ÷ retr:minilm's: 2.87
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from indexing.cache import cache_dir

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops
allow_torchvision_without_ops()
import torch
torch.set_num_threads(2)
from retrieval.encoders import load_encoder
enc = load_encoder(sys.argv[1], "cpu")
t1 = time.perf_counter()
words = ["red", "small", "old", "blue", "happy", "wooden", "round", "striped"]
things = ["heart", "cat", "car", "house", "tree", "flag", "cup", "bird"]
queries = [f"a {w} {t}" for w in words for t in things] * 4
enc.encode_texts(queries[:8])
t2 = time.perf_counter()
enc.encode_texts(queries[: int(sys.argv[2])])
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "queries_s": t3 - t2}))
"""


def scratch_cache(real: Path, into: Path) -> Path:
    """A cache that links REAL's folders and pinned files but none of its cached text vectors."""
    for name in ("corpora", "models"):
        if (real / name).exists():
            (into / name).symlink_to(real / name)
    (into / "assets").mkdir()
    for entry in (real / "assets").iterdir():
        if entry.suffix != ".npy":
            (into / "assets" / entry.name).symlink_to(entry)
    return into


def run_once(spec: str, cache: Path, n_queries: int) -> dict:
    env = {**os.environ, "RETR_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, spec, str(n_queries)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["retr:default", "retr:minilm"])
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="later (warm) loads per model")
    args = ap.parse_args()
    if args.queries > 256:
        ap.error("--queries is at most 256")
    rows = {}
    for spec in args.models:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            cache = scratch_cache(cache_dir(), Path(tmp))
            first = run_once(spec, cache, args.queries)
            later = [run_once(spec, cache, args.queries) for _ in range(args.repeats)]
        rows[spec] = (first, later)
    width = max(len("model"), *map(len, rows))
    print(f"{'model':{width}s} {'first load s':>12s}   {'later loads s':>14s}   queries s ({args.queries})")
    for spec, (first, later) in rows.items():
        loads = ", ".join(f"{r['load_s']:.1f}" for r in later)
        queries = ", ".join(f"{r['queries_s']:.2f}" for r in later)
        print(f"{spec:{width}s} {first['load_s']:12.1f}   {loads:>14s}   {queries}")
    if len(rows) > 1:
        base, (_, b_later) = next(reversed(rows.items()))
        for spec, (_, later) in list(rows.items())[:-1]:
            print(f"{spec}: later load ÷ {base}'s: {mean(later, 'load_s') / mean(b_later, 'load_s'):.2f}   "
                  f"queries ÷ {base}'s: {mean(later, 'queries_s') / mean(b_later, 'queries_s'):.2f}")


if __name__ == "__main__":
    main()

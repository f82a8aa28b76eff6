"""What reranking the top K costs per query through the real search path, with and without a token
cache, and what the cache costs on disk (issue #27).

    python bench/bench_rerank.py [--index out/demo-emoji-google-retr-default] [--reranker retr:itm] [--k 32]

The index (default: the one `make demo` builds) is copied twice into a temp folder; one copy gets the
reranker's token cache (`retrieval.rerank.token_cache`, what `retr index rerank-cache` runs). Then,
per query, interleaved so that all three share the machine's load, medians over --queries emoji names:

  search     open_index(...).search(text=q, k=10): the query's text vector and the index search
  +files     search(..., rerank=K) on the copy without a cache: K images decoded, through the image
             tower to patch tokens, then the fusion layers
  +cached    search(..., rerank=K) on the copy with the cache: the K candidates' tokens read from it

Output (one line, then JSON):

    K=32  search 70 ms · +files 1500 ms (x21) · +cached 130 ms (x1.9, +60 ms) · cache 25,100 B/image, ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from retrieval.rerank import load_reranker  # noqa: E402
from retrieval.rerank.token_cache import build_token_cache  # noqa: E402
from retrieval.search import open_index  # noqa: E402
from retrieval.training.data import load_pairs  # noqa: E402

DEMO_INDEX = Path("out/demo-emoji-google-retr-default")


def _median_ms(fns, runs: list) -> list[float]:
    """Median ms of each fn over `runs`, interleaved per query so that they share the machine's load."""
    times = [[] for _ in fns]
    for arg in runs:
        for fn, out in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn(arg)
            out.append(time.perf_counter() - t)
    return [1000 * statistics.median(t) for t in times]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=DEMO_INDEX)
    ap.add_argument("--reranker", default="retr:itm")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    if not (args.index / "index.json").exists():
        raise SystemExit(f"no index at {args.index}: run `make demo` first, or pass --index DIR")
    reranker = load_reranker(args.reranker)
    queries = [p.captions[0] for p in load_pairs(["emoji-google"], "test")[:args.queries]]
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir, cached_dir = Path(tmp) / "plain", Path(tmp) / "cached"
        shutil.copytree(args.index, plain_dir)
        shutil.copytree(args.index, cached_dir)
        index_bytes = _size(plain_dir)
        report = build_token_cache(cached_dir, reranker, progress=True)
        print(f"token cache: {report.items} images in {report.seconds:.0f} s ({report.items / report.seconds:.1f} "
              f"images/s), {report.bytes / 2**20:.1f} MiB", flush=True)
        plain = open_index(plain_dir, reranker=reranker)
        cached = open_index(cached_dir, reranker=reranker)
        cached.encoder  # noqa: B018 (one model load each, before timing)
        plain.encoder  # noqa: B018
        runs = (lambda q: plain.search(text=q, k=10),
                lambda q: plain.search(text=q, k=10, rerank=args.k),
                lambda q: cached.search(text=q, k=10, rerank=args.k))
        for fn in runs:
            fn(queries[0])  # warm-up
        same = all([h.id for h in runs[1](q).results] == [h.id for h in runs[2](q).results] for q in queries)
        base, files, cache = _median_ms(runs, queries)
        plain.close(), cached.close()
    per_item = report.bytes / max(1, report.items + report.unreadable)
    print(f"K={args.k}  search {base:.0f} ms · +files {files:.0f} ms (x{files / base:.1f}) · +cached {cache:.0f} ms "
          f"(x{cache / base:.1f}, +{cache - base:.0f} ms) · cache {per_item:,.0f} B/image, "
          f"{report.bytes / 2**20:.1f} MiB (x{report.bytes / index_bytes:.2f} the index's "
          f"{index_bytes / 2**20:.1f} MiB) · same top 10 with and without the cache: {same}")
    print(json.dumps({"k": args.k, "queries": len(queries), "search_ms": base, "files_ms": files, "cached_ms": cache,
                      "cache_bytes": report.bytes, "cache_bytes_per_image": per_item, "index_bytes": index_bytes,
                      "same_results": same}))


if __name__ == "__main__":
    main()

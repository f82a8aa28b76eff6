"""Search QPS of an index's shards held in this process vs held by Ray actors (retrieval.distributed_search).

    python bench/bench_ray_search.py                          # 200k x 384, 4 shards: ~1 min (+2 min to build it once)
    python bench/bench_ray_search.py --n 50000 --seconds 2    # smoke test
    python bench/bench_ray_search.py --clients 4 --replicas 2 --concurrency 2   # concurrent searches

Index: bench/serve_synthetic.py's synthetic index of --n clustered unit vectors with --model's dimension,
split in --shards shards of whole embedding chunks, chosen and tuned like a real build (cached under
$RETR_CACHE/bench/, built once; the model is loaded only for its name and dimension). Queries: fresh
draws from the same mixture, not in the index.

Two calls are timed on each side, one batch at a time in a closed loop, for --seconds per row and side
in 4 rounds that alternate local and ray (the best round of each is shown):
`ids` is `RetrievalIndex.search_vectors` (the shards and the merge: where Ray's fan-out costs or pays)
and `hits` is `search_embedded` (everything a search does after the model: also ids → hits from
metadata.duckdb, the same driver-side work on both sides; what a server runs per batch).
- local: `open_index(DIR)`, every shard searched in turn in this process (faiss on all cores);
- ray: `open_index(DIR, shards=ray_shards())` as `retr serve --ray` opens it: a local cluster of all
  cores, one actor per shard (faiss on one thread each, Ray's default for a worker), every batch fanned
  out to all actors and merged on the driver.
The hits of both are compared on every query: same ids in the same order, scores within 1e-6 (for
batches of 20 or more faiss scores through BLAS, whose rounding depends on the thread count: the
actors' one thread vs this process's all, ~1e-7 apart).

Expected output shape (2 cores shared with a training run, load average ~7: rows are noisy;
docs/scale.md reads them):

    machine: 2 cores, load average 7.0 before the run
    synthetic index: reusing /root/.cache/retr/bench/serve-synthetic-200000-384-retr-imagenet-bridge-s4
    index: 200000 x 384, IDMap2,IVF512,PQ96x4fs,RFlat nprobe=6, 4 shards [51,200 51,200 49,152 48,448]
    ray: 4 shard actors (1 per shard, 1 search(es) at once each) ready in 2.7 s (local cluster, 2 CPUs);
    1 client thread(s)
    | batch | returns | local QPS | ray QPS | ray ÷ local | local ms/batch | ray ms/batch |
    |-------|---------|-----------|---------|-------------|----------------|--------------|
    |     1 | ids     |     390.7 |   186.7 |        0.48 |           2.56 |         5.36 |
    |     1 | hits    |     173.6 |    86.0 |        0.50 |           5.76 |        11.63 |
    |    32 | ids     |    1242.2 |  1740.3 |        1.40 |          25.76 |        18.39 |
    |    32 | hits    |    1144.3 |  1368.9 |        1.20 |          27.96 |        23.38 |
    same hits: True (2000 queries, k=10; largest score difference 0)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout
from bench_index import Mixture  # noqa: E402 (bench/ is the script's folder)
from serve_synthetic import encoder_for, synthetic_index  # noqa: E402

from retrieval.search import Query, RetrievalIndex, open_index  # noqa: E402

K = 10
ROUNDS = 4  # timed rounds per side and row, alternating local and ray


def qps(idx: RetrievalIndex, what: str, xq: np.ndarray, batch: int, seconds: float, clients: int = 1
        ) -> tuple[float, float]:
    """(queries/s, ms per batch) over consecutive batches of xq for about `seconds`, sent by `clients`
    threads at once (each waits for its answer before its next batch): `what` is "ids" (search_vectors:
    the shards and the merge) or "hits" (search_embedded: also ids -> hits)."""
    queries = [Query(image_id=0)] * batch  # only echoed back in the results: the vectors are xq's rows

    def run(x: np.ndarray) -> object:
        return idx.search_vectors(x, K) if what == "ids" else idx.search_embedded(queries, x, k=K)

    def client(c: int) -> tuple[int, float]:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            lo = ((calls * clients + c) * batch) % (len(xq) - batch + 1)
            run(xq[lo : lo + batch])
            calls += 1
        return calls, time.perf_counter() - start

    run(xq[:batch])  # warm-up: first touch of the shards' pages
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    calls, elapsed = sum(d[0] for d in done), max(d[1] for d in done)
    return calls * batch / elapsed, 1000 * elapsed * clients / calls


def same_hits(a: RetrievalIndex, b: RetrievalIndex, xq: np.ndarray) -> tuple[bool, float]:
    queries = [Query(image_id=0)] * len(xq)
    ra, rb = a.search_embedded(queries, xq, k=K), b.search_embedded(queries, xq, k=K)
    ids = all([h.id for h in x.results] == [h.id for h in y.results] for x, y in zip(ra, rb, strict=True))
    diff = max((abs(h.score - g.score) for x, y in zip(ra, rb, strict=True)
                for h, g in zip(x.results, y.results, strict=False)), default=0.0)
    return ids and diff <= 1e-6, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="vectors in the synthetic index")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--model", default="retr:imagenet-bridge", help="names the index and sets its dimension")
    ap.add_argument("--batches", default="1,32", help="query batch sizes, comma-separated")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed search per row and side")
    ap.add_argument("--nq", type=int, default=2000, help="distinct query vectors")
    ap.add_argument("--cache", type=Path, default=None, help="index folder (default: under $RETR_CACHE/bench/)")
    ap.add_argument("--clients", type=int, default=1, help="threads searching at once, each batch by batch")
    ap.add_argument("--replicas", type=int, default=1, help="ray side: actors per shard (RaySearchConfig)")
    ap.add_argument("--concurrency", type=int, default=1, help="ray side: searches one actor runs at once")
    args = ap.parse_args()

    from retrieval.distributed_search import RaySearchConfig, ray_shards

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before the run", flush=True)
    folder = synthetic_index(args.n, args.model, args.cache, shards=args.shards)
    dim = encoder_for(args.model).dim
    xq = Mixture.make(args.n, dim, 0).sample(args.nq, np.random.default_rng(3))  # the index's mixture (seed 0)

    local = open_index(folder)
    info = local.manifest.image
    sizes = " ".join(f"{s.n:,}" for s in info.shards)
    param = f"{info.search_param}={info.search_value}" if info.search_param else "exact"
    print(f"index: {args.n} x {dim}, {info.factory} {param}, "
          f"{len(info.shards)} shards [{sizes}]", flush=True)
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    config = RaySearchConfig(replicas=args.replicas, concurrency=args.concurrency)
    remote = open_index(folder, shards=ray_shards(config))
    print(f"ray: {len(info.shards) * args.replicas} shard actors ({args.replicas} per shard, {args.concurrency} "
          f"search(es) at once each) ready in {time.perf_counter() - t:.1f} s (local cluster, {os.cpu_count()} CPUs);\n"
          f"{args.clients} client thread(s)", flush=True)
    try:
        print("| batch | returns | local QPS | ray QPS | ray ÷ local | local ms/batch | ray ms/batch |")
        print("|-------|---------|-----------|---------|-------------|----------------|--------------|")
        for batch in (int(b) for b in args.batches.split(",")):
            for what in ("ids", "hits"):
                # alternating short rounds, best of each side: a load spike from another job hits both alike
                rounds = [(qps(local, what, xq, batch, args.seconds / ROUNDS, args.clients),
                           qps(remote, what, xq, batch, args.seconds / ROUNDS, args.clients)) for _ in range(ROUNDS)]
                (lq, lms), (rq, rms) = max(r[0] for r in rounds), max(r[1] for r in rounds)
                print(f"| {batch:5d} | {what:7s} | {lq:9.1f} | {rq:7.1f} | {rq / lq:11.2f} | {lms:14.2f} "
                      f"| {rms:12.2f} |", flush=True)
        same, diff = same_hits(local, remote, xq)
        print(f"same hits: {same} ({len(xq)} queries, k={K}; largest score difference {diff:.1g})")
    finally:
        remote.close()
        local.close()
        ray.shutdown()


if __name__ == "__main__":
    main()

"""The on-disk IVF-PQ index built out of core: build time, peak RSS against the budget, QPS, recall.

    python bench/bench_ondisk.py --n 200000 --d 512 --max-memory 4GB     # ~13 min on 2 loaded cores (OPQ training)
    python bench/bench_ondisk.py --n 10000000 --d 512 --max-memory 4GB   # 20 GB of vectors, 4 GB of RAM

Data: bench_index.py's seeded clustered unit vectors, generated block by block (never all in RAM)
into ~/.cache/retr/bench/ondisk-{n}x{d}-s{seed}/xb.npy and reused by later runs with the same
arguments; --nq tuning and --nq held-out test queries from the same mixture; the test queries'
exact top-10, computed blockwise over the memory-mapped xb.npy (indexing.tune.exact_knn), cached.

Build (in a child process, so its peak RSS is the build's alone): indexing.build.build_collection,
the function `retr index build` runs once the vectors are embedded, on the memory-mapped vectors
with IndexConfig(index_kind="ivf_pq_ondisk", max_memory_bytes=--max-memory): choose the plan,
train on a sample, add block by block, merge into the lists file, tune nprobe on the tuning queries
to --target-recall. Search (in a second child): the shard opened as `retr search` opens it
(faiss_build.read_index: lists mapped, not read), then recall@10 and QPS on the test queries at
the tuned nprobe and 2x / 4x it (batch search, best of 3, 1 thread and all threads), and one query
at a time as a server sends them. A thread in each child samples RssAnon (private memory: what the
budget bounds) and RssFile (mapped file pages: page cache the kernel can drop) every 20 ms;
ru_maxrss is their peak sum.

Expected output shape (1M x 512, 4GB, 2 loaded cores, ~15 min; the full run is in docs/scale.md):

    data: 1000000 x 512 clustered unit vectors in ~/.cache/retr/bench/ondisk-1000000x512-s0 (1953 MiB, cached)
    chooser at 4.0 GiB: first pick ivf_pq_refine IDMap2,IVF1024,PQ128x4fs,RFlat; on disk OPQ64_512,IVF1024,PQ64np (...)
    build: 891.9 s (train 807 s, add+merge 54 s, tune 31 s; nprobe 11 for recall 0.6, tuning recall 0.605)
    build peak RSS: ru_maxrss 1020 MiB = RssAnon (private) 898 MiB, in train + RssFile (mapped files) 314 MiB, ...
    the build's own RssAnon 735 MiB vs the chooser's estimate ... MiB; peak RSS / budget: ru_maxrss 0.249, RssAnon 0.219
    index: lists file 68.7 MiB, index file 3.52 MiB; RAM after load RssAnon +3.4 MiB, ...
    QPS: batch of 1000 queries (1 thread, 2 threads); 200 one at a time on 1 thread, ...
    | nprobe | recall@10 | batch 1t | batch all | 1-by-1 hot pf0 | hot pf32 | cold pf0 | cold pf32 |
    |-------:|----------:|---------:|----------:|---------------:|---------:|---------:|----------:|
    |     11 |     0.605 |     1363 |      1412 |           1217 |      718 |     1310 |       298 |
    ...
    {"n": 1000000, "d": 512, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from bench.bench_index import Mixture, best_qps  # noqa: E402
from indexing.atomic import atomic_path, write_json  # noqa: E402
from indexing.build import IndexConfig, build_collection  # noqa: E402
from indexing.choose import choose_index, parse_memory  # noqa: E402
from indexing.exact_rerank import StoredRerank, rows_lookup  # noqa: E402
from indexing.faiss_build import lists_path, read_index  # noqa: E402
from indexing.manifest import ShardInfo, VectorIndexInfo  # noqa: E402
from indexing.tune import apply_search_param, exact_knn, recall_at_k  # noqa: E402

K = 10
GEN_BLOCK = 100_000  # rows generated and written at a time
SAMPLE_S = 0.02  # RSS sampling period
ONE_BY_ONE = 200  # queries searched one at a time for the serving-like QPS
MiB = 2**20


# --- data ----------------------------------------------------------------------------------------


def data_dir(n: int, d: int, seed: int) -> Path:
    return Path.home() / ".cache" / "retr" / "bench" / f"ondisk-{n}x{d}-s{seed}"


def ensure_data(folder: Path, n: int, d: int, nq: int, seed: int) -> str:
    """Write xb.npy, the queries and the test ground truth unless a run with these arguments did."""
    params = {"n": n, "d": d, "nq": nq, "seed": seed, "version": 1}
    done = folder / "done.json"
    if done.exists() and json.loads(done.read_text()) == params:
        return "cached"
    t0 = time.perf_counter()
    mix = Mixture.make(n, d, seed)
    rng = np.random.default_rng(seed + 1)
    with atomic_path(folder / "xb.npy") as tmp, open(tmp, "wb") as f:  # plain writes: no mapping grows RSS
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for lo in range(0, n, GEN_BLOCK):
            mix.sample(min(GEN_BLOCK, n - lo), rng).tofile(f)
    t1 = time.perf_counter()
    xq_tune, xq_test = mix.sample(nq, rng), mix.sample(nq, rng)
    _, gt = exact_knn(np.load(folder / "xb.npy", mmap_mode="r"), xq_test, K)
    for name, array in (("xq_tune", xq_tune), ("xq_test", xq_test), ("gt_test", gt)):
        np.save(folder / f"{name}.npy", array)
    write_json(done, params)
    return f"generated in {t1 - t0:.0f} s, exact top-{K} of the test queries in {time.perf_counter() - t1:.0f} s"


# --- measuring memory ----------------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


class RssSampler(threading.Thread):
    """Peaks of RssAnon and RssFile, sampled every SAMPLE_S (ru_maxrss only records their sum)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = dict.fromkeys(("VmRSS", "RssAnon", "RssFile"), 0)
        self.when = dict.fromkeys(self.peak, 0.0)  # time.time() of each peak
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        for key, value in proc_status().items():
            if value > self.peak[key]:
                self.peak[key], self.when[key] = value, time.time()

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        self.sample()
        return dict(self.peak)


def ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# --- workers (each its own process) --------------------------------------------------------------


def build_worker(data: Path, out: Path, budget: int, target: float, seed: int) -> dict:
    baseline = proc_status()  # interpreter + faiss + torch (indexing.build imports the embedder)
    sampler = RssSampler()
    sampler.start()
    xb = np.load(data / "xb.npy", mmap_mode="r")  # read block by block by the build, never copied whole
    xq = np.load(data / "xq_tune.npy")
    n = len(xb)
    config = IndexConfig(max_memory_bytes=budget, target_recall=target, n_queries=len(xq), seed=seed,
                         index_kind="ivf_pq_ondisk")
    t0 = time.time()
    info = build_collection("image", out, xb, np.arange(n, dtype=np.int64), [np.arange(n)], xq, config)
    t_end = time.time()
    peak = sampler.stop()
    # phases, from when build_collection wrote its files: the trained index, then the shard's index
    # file (after its blocks and lists file), then the tuning (which writes nothing)
    t_trained = (out / info.trained).stat().st_mtime
    t_shard = (out / info.shards[0].file).stat().st_mtime
    phases = {"train": t_trained - t0, "add+merge": t_shard - t_trained, "tune": t_end - t_shard}
    peak_phase = {key: next((name for name, end in (("train", t_trained), ("add+merge", t_shard)) if at <= end),
                            "tune") for key, at in sampler.when.items()}
    write_json(out / "info.json", asdict(info))
    result = {"build_s": t_end - t0, "phases": phases, "ru_maxrss": ru_maxrss(), "peak": peak,
              "peak_phase": peak_phase, "baseline": baseline, "info": asdict(info)}
    write_json(out / "build.json", result)  # lets --out re-measure search without rebuilding
    return result


def _evict(path: str | Path) -> None:
    """Drop a file's pages from the page cache (posix_fadvise on that file only)."""
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def _qps_one_by_one(searcher: faiss.Index | StoredRerank, xq: np.ndarray, cold: Sequence[str | Path]) -> float:
    """Queries searched one at a time on 1 thread, as a server gets them; the files in `cold` (the lists
    file, the stored vectors) are evicted from the page cache first, so first reads go to disk."""
    faiss.omp_set_num_threads(1)  # one query per call: more OpenMP threads only add barriers
    for path in cold:
        _evict(path)
    t0 = time.perf_counter()
    for q in xq[:ONE_BY_ONE]:
        searcher.search(q[None], K)
    return min(ONE_BY_ONE, len(xq)) / (time.perf_counter() - t0)


def search_worker(data: Path, out: Path) -> dict:
    """Recall and QPS of the shard as `retr search` answers: the codes' top k * rerank_factor re-ranked
    against the stored vectors (here the float32 xb.npy, memory-mapped), at the tuned nprobe and 2x, 4x
    it; and the codes alone at the tuned nprobe, for the cap the re-rank lifts."""
    obj = json.loads((out / "info.json").read_text())
    info = VectorIndexInfo(**{**obj, "shards": tuple(ShardInfo(**s) for s in obj["shards"])})
    xq, gt = np.load(data / "xq_test.npy"), np.load(data / "gt_test.npy")
    sampler = RssSampler()
    sampler.start()
    before = proc_status()
    index = read_index(out / info.shards[0].file)  # as retr search opens a shard
    xb = np.load(data / "xb.npy", mmap_mode="r")
    loaded = proc_status()
    nlist = faiss.extract_index_ivf(index).nlist
    threads = os.cpu_count() or 1
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename
    vectors_of = rows_lookup(xb, np.arange(len(xb), dtype=np.int64))
    rows = []
    f = info.rerank_factor
    factors = [(f, v) for v in (1, 2, 4)] + [(0, 1)] if f else [(0, v) for v in (1, 2, 4)]
    for factor, times in factors:
        nprobe = min(times * info.search_value, nlist)
        apply_search_param(index, "nprobe", nprobe)
        searcher = StoredRerank(index, vectors_of, factor) if factor else index
        _, I = searcher.search(xq, K)
        row = {"nprobe": nprobe, "factor": factor, "recall": recall_at_k(I, gt, K),
               "qps_1t": best_qps(searcher, xq, K, 1), "qps_all": best_qps(searcher, xq, K, threads),
               "1by1_hot": _qps_one_by_one(searcher, xq, ()),
               "1by1_cold": _qps_one_by_one(searcher, xq, (lists, data / "xb.npy"))}
        faiss.omp_set_num_threads(threads)
        rows.append(row)
    searched = proc_status()
    peak = sampler.stop()
    return {
        "rows": rows,
        "ram_after_load": {k: loaded[k] - before[k] for k in loaded},
        "ram_after_search": searched,
        "peak": peak,
        "ru_maxrss": ru_maxrss(),
    }


def run_worker(kind: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data), "--out", str(out),
           "--max-memory", args.max_memory, "--target-recall", str(args.target_recall), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {kind} worker failed (rc {proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report --------------------------------------------------------------------------------------


def report(args: argparse.Namespace, data: Path, out: Path, data_note: str, build: dict, search: dict) -> dict:
    budget = parse_memory(args.max_memory)
    n, d = args.n, args.d
    plans = choose_index(n, d, budget)
    ondisk = next(p for p in plans if p.kind == "ivf_pq_ondisk")
    info = build["info"]
    shard = out / info["shards"][0]["file"]
    lists_bytes, index_bytes = lists_path(shard).stat().st_size, shard.stat().st_size
    peak = build["peak"]
    print(f"data: {n} x {d} clustered unit vectors in {data} ({n * d * 4 / MiB:.0f} MiB, {data_note})")
    print(f"chooser at {budget / 2**30:.1f} GiB: first pick {plans[0].kind} {plans[0].factory}; on disk "
          f"{ondisk.factory} (estimated RAM {ondisk.est_memory_bytes / MiB:.0f} MiB, "
          f"disk {ondisk.est_disk_bytes / MiB:.0f} MiB)")
    base, where = build["baseline"], build["peak_phase"]
    phases = ", ".join(f"{name} {sec:.0f} s" for name, sec in build["phases"].items())
    print(f"build: {build['build_s']:.1f} s ({phases}; nprobe {info['search_value']} and re-rank "
          f"x{info.get('rerank_factor', 0)} for recall {args.target_recall}, "
          f"tuning recall {info['measured_recall']:.3f})")
    print(f"build peak RSS: ru_maxrss {build['ru_maxrss'] / MiB:.0f} MiB = RssAnon (private) "
          f"{peak['RssAnon'] / MiB:.0f} MiB, in {where['RssAnon']} + RssFile (mapped files) "
          f"{peak['RssFile'] / MiB:.0f} MiB, in {where['RssFile']} (peaks sampled apart); before building the "
          f"process held RssAnon {base['RssAnon'] / MiB:.0f} MiB, RssFile {base['RssFile'] / MiB:.0f} MiB")
    print(f"the build's own RssAnon {(peak['RssAnon'] - base['RssAnon']) / MiB:.0f} MiB vs the chooser's estimate "
          f"{ondisk.est_memory_bytes / MiB:.0f} MiB; peak RSS / budget: ru_maxrss {build['ru_maxrss'] / budget:.3f}, "
          f"RssAnon {peak['RssAnon'] / budget:.3f}")
    print(f"index: lists file {lists_bytes / MiB:.1f} MiB, index file {index_bytes / MiB:.2f} MiB; RAM after load "
          f"RssAnon +{search['ram_after_load']['RssAnon'] / MiB:.1f} MiB, after searching RssFile "
          f"{search['ram_after_search']['RssFile'] / MiB:.1f} MiB (mapped lists + libraries); search process "
          f"peak RSS {search['ru_maxrss'] / MiB:.0f} MiB")
    print(f"QPS: batch of {len(np.load(data / 'xq_test.npy'))} queries (1 thread, {os.cpu_count()} threads); "
          f"{ONE_BY_ONE} one at a time on 1 thread, files in the page cache (hot) or the lists file and the "
          f"stored vectors evicted first (cold); re-rank x: the codes' top 10 * x re-scored against the stored "
          f"vectors (0: the codes alone)")
    print("| nprobe | re-rank x | recall@10 | batch 1t | batch all | 1-by-1 hot | 1-by-1 cold |")
    print("|-------:|----------:|----------:|---------:|----------:|-----------:|------------:|")
    for r in search["rows"]:
        print(f"| {r['nprobe']:6d} | {r['factor']:9d} | {r['recall']:9.3f} | {r['qps_1t']:8.0f} | "
              f"{r['qps_all']:9.0f} | {r['1by1_hot']:10.0f} | {r['1by1_cold']:11.0f} |")
    return {
        "n": n, "d": d, "max_memory": budget, "factory": info["factory"], "nprobe": info["search_value"],
        "build_s": build["build_s"], "build_phases": build["phases"], "build_ru_maxrss": build["ru_maxrss"],
        "build_peak": peak, "build_peak_phase": where, "build_baseline": base,
        "peak_over_budget": build["ru_maxrss"] / budget, "anon_peak_over_budget": peak["RssAnon"] / budget,
        "est_memory": ondisk.est_memory_bytes, "est_disk": ondisk.est_disk_bytes,
        "lists_bytes": lists_bytes, "index_bytes": index_bytes, "search": search,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--target-recall", type=float, default=0.95,
                    help="nprobe and the re-rank depth are tuned to this recall@10 (retr index build's default)")
    ap.add_argument("--nq", type=int, default=1000, help="tuning queries, and as many held-out test queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="index folder (default: a fresh one next to the data); if it holds a finished build of "
                         "this script, only search is measured again")
    ap.add_argument("--worker", choices=("build", "search"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "build":
        result = build_worker(args.data, args.out, parse_memory(args.max_memory), args.target_recall, args.seed)
        print(json.dumps(result))
        return
    if args.worker == "search":
        print(json.dumps(search_worker(args.data, args.out)))
        return
    data = data_dir(args.n, args.d, args.seed)
    data_note = ensure_data(data, args.n, args.d, args.nq, args.seed)
    out = args.out or data / f"index-{args.max_memory}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "build.json").exists():
        build = json.loads((out / "build.json").read_text())
        print(f"build: reusing the build measured earlier in {out}")
    else:
        build = run_worker("build", args, data, out)
    search = run_worker("search", args, data, out)
    print(json.dumps(report(args, data, out, data_note, build, search)))


if __name__ == "__main__":
    main()

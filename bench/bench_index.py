"""Our auto-chosen FAISS index vs autofaiss's, on the same vectors, memory budget and recall target.

    python bench/bench_index.py --n 20000 --dim 64 --skip-autofaiss      # smoke test, seconds
    python bench/bench_index.py --n 20000 --dim 64 --autofaiss-python /tmp/afvenv/bin/python   # ~1 min
    python bench/bench_index.py --n 1000000 --dim 512 --max-memory 4GB --target-recall 0.9 --nq 1000 \\
        --autofaiss-python /tmp/afvenv/bin/python --extra-kinds ivf_sq8,hnsw   # ~9 min on 2 cores

Data: seeded clustered unit vectors (a two-level Gaussian mixture in a 64-d subspace, projected
to --dim, plus isotropic noise), so they index like embeddings rather than uniform noise. Queries
come from the same mixture but are not in the database: --nq test queries, --nq tuning queries.
Exact top-10 ground truth is computed once.

Ours: choose_index -> train_empty (on a sample) -> add_to_clone -> tune_search_params to the
target on the tuning queries -> write. --extra-kinds builds other kinds from our ranked list the
same way, as reference rows. autofaiss: build_index(max_index_memory_usage=budget), which picks
its index and its own search parameters (for a query-time budget, not a recall). It pins numpy<2,
so it runs under --autofaiss-python, e.g. a venv made with
    python -m venv /tmp/afvenv && /tmp/afvenv/bin/pip install autofaiss "pyarrow<20"
(pyarrow 20+ needs numpy 2). Each build runs in its own process, so peak RSS is comparable;
build time is vectors-on-disk to tuned-index-on-disk. Then, in this process and with the same
code for all: recall@10 on the test queries and QPS (batch search of the test queries, k=10,
best of 3) at 1 thread and at all threads. autofaiss's index is measured with its own
parameters and re-tuned by our tuner to the same target; the ratios use the re-tuned row.

Expected output shape (1M x 512, 2 cores, ~9 min; numbers from docs/benchmarks.md):

    data: 1000000 x 512 clustered unit vectors, 1000 test + 1000 tuning queries (gen 13 s, exact k=10 9 s); ...
    ours: IDMap2,IVF1024,PQ128x4fs,RFlat  nprobe=11 k_factor=32 (tuning recall 0.901; train 3.5 s, add 12.7 s, ...)
    ours: hnsw: IDMap2,HNSW32,Flat  efSearch=72 (tuning recall 0.901; train 0.0 s, add 132.5 s, ...)
    autofaiss: HNSW32  efSearch=3395
    | index                  | factory                        | search params         | build s | index MiB | ...
    |------------------------|--------------------------------|-----------------------|---------|-----------| ...
    | ours                   | IDMap2,IVF1024,PQ128x4fs,RFlat | nprobe=11 k_factor=32 |    23.3 |    2032.5 | ...
    | ours: hnsw             | IDMap2,HNSW32,Flat             | efSearch=72           |   140.2 |    2220.3 | ...
    | autofaiss (own params) | HNSW32                         | efSearch=3395         |   164.8 |    2212.6 | ...
    | autofaiss (tuned)      | HNSW32                         | efSearch=2518         |   164.8 |    2212.6 | ...
    (the table goes on with: peak RSS MiB | QPS 1t | QPS all | recall@10)
    ratios ours / autofaiss (tuned to the same target): QPS 1t x57.00, QPS all x60.25, build time x0.14, ...
    {"n": 1000000, "dim": 512, ..., "ratios": {...}, "ratios_vs_own_params": {...}, "rows": [...]}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from indexing.choose import choose_index, parse_memory  # noqa: E402
from indexing.faiss_build import add_to_clone, train_empty, write_index_atomic  # noqa: E402
from indexing.tune import apply_search_param, exact_knn, recall_at_k, tune_search_params  # noqa: E402

K = 10
GEN_CHUNK = 100_000  # rows generated and written at a time (bounds the generator's memory)


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A two-level Gaussian mixture in a `latent`-d subspace of `dim`: topics -> sub-topics -> points."""

    centers: np.ndarray  # (n_sub, latent) sub-topic centres
    spreads: np.ndarray  # (n_sub,) per sub-topic standard deviation
    weights: np.ndarray  # (n_sub,) sampling probabilities
    proj: np.ndarray  # (latent, dim) orthonormal rows: embeds the subspace in R^dim
    noise: float  # per-dim std of isotropic noise in the full space

    @staticmethod
    def make(n: int, dim: int, seed: int) -> Mixture:
        rng = np.random.default_rng(seed)
        latent = min(64, max(2, dim // 2))  # CLIP-like embeddings have a low intrinsic dimension
        n_top, n_sub = 50, max(10, n // 100)  # ~100 points per sub-topic
        sub_scale, spread = 0.4, 0.65  # sub-topics overlap inside a topic: IVF needs nprobe > 1
        top = rng.standard_normal((n_top, latent))
        centers = top[rng.integers(0, n_top, n_sub)] + sub_scale * rng.standard_normal((n_sub, latent))
        q, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
        signal = (1 + sub_scale**2 + spread**2) * latent  # expected squared norm of a latent point
        return Mixture(
            centers=centers.astype(np.float32),
            spreads=(spread * rng.uniform(0.5, 1.5, n_sub)).astype(np.float32),
            weights=rng.dirichlet(np.ones(n_sub)),
            proj=np.ascontiguousarray(q.T, dtype=np.float32),
            noise=float(np.sqrt(0.1 * signal / dim)),  # noise carries ~10% of the energy
        )

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """(m, dim) float32 unit rows."""
        lab = rng.choice(len(self.weights), m, p=self.weights)
        z = self.centers[lab] + self.spreads[lab, None] * rng.standard_normal((m, self.proj.shape[0]), np.float32)
        x = z @ self.proj
        x += np.float32(self.noise) * rng.standard_normal(x.shape, np.float32)
        faiss.normalize_L2(x)
        return x


def write_dataset(workdir: Path, n: int, dim: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write xb to workdir/emb/xb.npy (autofaiss reads that folder); return (xq_test, xq_tune)."""
    mix = Mixture.make(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    (workdir / "emb").mkdir(parents=True, exist_ok=True)
    xb = np.lib.format.open_memmap(workdir / "emb" / "xb.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for i0 in range(0, n, GEN_CHUNK):
        xb[i0 : i0 + GEN_CHUNK] = mix.sample(min(GEN_CHUNK, n - i0), rng)
    xb.flush()
    del xb
    return mix.sample(nq, rng), mix.sample(nq, rng)


# --- builds (each in its own process) ------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    factory: str
    params: str  # search parameters the index is measured with, "name=value ..."
    build_s: float  # vectors on disk -> tuned index on disk
    peak_rss_mib: float  # peak resident memory of the build process
    detail: str = ""  # per-phase timings, tuning recall


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _params(param: str | None, value: int | None, k_factor: int | None) -> str:
    return " ".join(([f"{param}={value}"] if param else []) + ([f"k_factor={k_factor}"] if k_factor else []))


def build_ours(workdir: Path, kind: str | None, max_memory: str, target_recall: float, seed: int) -> Build:
    """Worker: vectors on disk -> tuned index at workdir/ours[-kind].index."""
    xq_tune, gt_tune = np.load(workdir / "xq_tune.npy"), np.load(workdir / "gt_tune.npy")
    t = [time.perf_counter()]
    xb = np.load(workdir / "emb" / "xb.npy", mmap_mode="r")  # read by train/add, never copied whole
    plans = choose_index(len(xb), xb.shape[1], parse_memory(max_memory))
    plan = plans[0] if kind is None else next(p for p in plans if p.kind == kind)
    trained = train_empty(plan, xb, seed=seed)
    t.append(time.perf_counter())
    index = add_to_clone(trained, xb, np.arange(len(xb), dtype=np.int64))
    t.append(time.perf_counter())
    tuned = tune_search_params(index, xq_tune, gt_tune, K, target_recall)
    t.append(time.perf_counter())
    write_index_atomic(index, workdir / _index_name(kind))
    t.append(time.perf_counter())
    phases = ", ".join(
        f"{name} {b - a:.1f} s" for name, a, b in zip(("train", "add", "tune", "write"), t, t[1:], strict=False)
    )
    return Build(
        factory=plan.factory,
        params=_params(tuned.param, tuned.value, tuned.k_factor),
        build_s=t[-1] - t[0],
        peak_rss_mib=_peak_rss_mib(),
        detail=f"tuning recall {tuned.recall:.3f}; {phases}",
    )


def _index_name(kind: str | None) -> str:
    return "ours.index" if kind is None else f"ours-{kind}.index"


def run_ours(workdir: Path, kind: str | None, args: argparse.Namespace) -> Build:
    cmd = [sys.executable, __file__, "--worker", "ours", "--workdir", str(workdir), "--seed", str(args.seed)]
    cmd += ["--max-memory", args.max_memory, "--target-recall", str(args.target_recall)]
    cmd += ["--kind", kind] if kind else []
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"our build worker failed (rc {proc.returncode}): {' '.join(cmd)}")
    return Build(**json.loads(proc.stdout.strip().splitlines()[-1]))


# Runs under --autofaiss-python (its own venv: autofaiss pins numpy<2). argv: workdir budget ram.
_AUTOFAISS_WORKER = r"""
import json, os, resource, sys, time
from autofaiss import build_index
workdir, max_memory, ram = sys.argv[1:4]
t0 = time.perf_counter()
_, infos = build_index(
    embeddings=os.path.join(workdir, "emb"), index_path=os.path.join(workdir, "autofaiss.index"),
    index_infos_path=os.path.join(workdir, "autofaiss_infos.json"), max_index_memory_usage=max_memory,
    current_memory_available=ram, metric_type="ip", nb_cores=os.cpu_count(), save_on_disk=True,
)
print("AUTOFAISS_RESULT " + json.dumps({
    "factory": infos["index_key"], "params": infos.get("index_param") or "",
    "build_s": time.perf_counter() - t0,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run_autofaiss(workdir: Path, max_memory: str, python: str) -> Build:
    log = workdir / "autofaiss.log"
    with open(log, "w") as f:
        cmd = [python, "-c", _AUTOFAISS_WORKER, str(workdir), max_memory, _available_ram()]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AUTOFAISS_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"autofaiss build failed (rc {proc.returncode}); log {log}:\n{log.read_text()[-3000:]}")
    return Build(**json.loads(lines[-1].split(" ", 1)[1]))


def _check_autofaiss(python: str) -> None:
    if subprocess.run([python, "-c", "import autofaiss"], capture_output=True).returncode != 0:
        sys.exit(
            f"{python} cannot import autofaiss. It pins numpy<2, so give it its own venv and pass "
            "--autofaiss-python (see this script's docstring), or run with --skip-autofaiss."
        )


def _available_ram() -> str:
    """autofaiss' current_memory_available: 3/4 of MemAvailable, so it never plans to swap."""
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    return f"{max(1, int(kib * 0.75 / 2**20))}G"


# --- measuring (same code for every index) -------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    factory: str
    params: str
    build_s: float
    index_mib: float
    peak_rss_mib: float
    qps_1t: float
    qps_all: float
    recall: float


def set_params(index: faiss.Index, params: str) -> None:
    """Ours ('nprobe=11 k_factor=32') or autofaiss' ('nprobe=11,efSearch=22,ht=2048')."""
    if "," in params or "ht=" in params:
        faiss.ParameterSpace().set_index_parameters(index, params)  # autofaiss applies them this way
        return
    for item in params.split():
        name, value = item.split("=")
        apply_search_param(index, name, int(value))


def best_qps(index, xq: np.ndarray, k: int, threads: int, passes: int = 3) -> float:
    """Queries/s of index.search(xq, k) on `threads` OpenMP threads: the best of `passes` timed passes."""
    faiss.omp_set_num_threads(threads)
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        index.search(xq, k)
        best = min(best, time.perf_counter() - t0)
    return len(xq) / best

def measure(name: str, path: Path, build: Build, params: str, xq: np.ndarray, gt: np.ndarray) -> Row:
    index = faiss.read_index(str(path))
    set_params(index, params)
    _, I = index.search(xq, K)
    qps = {nt: best_qps(index, xq, K, nt) for nt in (1, os.cpu_count() or 1)}
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    size = path.stat().st_size / 2**20
    return Row(
        name,
        build.factory,
        params,
        build.build_s,
        size,
        build.peak_rss_mib,
        qps[1],
        qps[max(qps)],
        recall_at_k(I, gt, K),
    )


def retune(path: Path, xq_tune: np.ndarray, gt_tune: np.ndarray, target: float) -> str:
    """autofaiss' index re-tuned by our tuner to the same target: the like-for-like comparison."""
    tuned = tune_search_params(faiss.read_index(str(path)), xq_tune, gt_tune, K, target)
    return _params(tuned.param, tuned.value, tuned.k_factor)


# --- report --------------------------------------------------------------------------------------

_COLUMNS = [  # header, Row field, format
    ("index", "name", "{}"),
    ("factory", "factory", "{}"),
    ("search params", "params", "{}"),
    ("build s", "build_s", "{:.1f}"),
    ("index MiB", "index_mib", "{:.1f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ("QPS 1t", "qps_1t", "{:.0f}"),
    ("QPS all", "qps_all", "{:.0f}"),
    ("recall@10", "recall", "{:.3f}"),
]


def markdown_table(rows: list[Row]) -> str:
    cells = [[fmt.format(getattr(r, field)) for _, field, fmt in _COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(_COLUMNS)]
    text_cols = {0, 1, 2}

    def line(values):
        return (
            "| "
            + " | ".join(
                v.ljust(w) if i in text_cols else v.rjust(w)
                for i, (v, w) in enumerate(zip(values, widths, strict=True))
            )
            + " |"
        )

    return "\n".join(
        [line([h for h, _, _ in _COLUMNS]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(c) for c in cells]
    )


def ratios(ours: Row, autofaiss: Row) -> dict:
    return {
        "qps_1t": ours.qps_1t / autofaiss.qps_1t,
        "qps_all": ours.qps_all / autofaiss.qps_all,
        "build_time": ours.build_s / autofaiss.build_s,
        "recall_diff": ours.recall - autofaiss.recall,
    }


# --- main ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    t0 = time.perf_counter()
    xq, xq_tune = write_dataset(workdir, args.n, args.dim, args.nq, args.seed)
    t_gen = time.perf_counter() - t0
    gt = exact_knn(np.load(workdir / "emb" / "xb.npy", mmap_mode="r"), np.vstack([xq, xq_tune]), K)[1]
    gt, gt_tune = gt[: args.nq], gt[args.nq :]
    np.save(workdir / "xq_tune.npy", xq_tune)
    np.save(workdir / "gt_tune.npy", gt_tune)
    print(
        f"data: {args.n} x {args.dim} clustered unit vectors, {args.nq} test + {args.nq} tuning queries "
        f"(gen {t_gen:.0f} s, exact k={K} {time.perf_counter() - t0 - t_gen:.0f} s); {os.cpu_count()} threads; "
        f"budget {args.max_memory}; target recall@{K} {args.target_recall}",
        flush=True,
    )

    rows = []
    for kind in [None, *args.extra_kinds]:
        build = run_ours(workdir, kind, args)
        name = "ours" if kind is None else f"ours: {kind}"
        print(f"{name}: {build.factory}  {build.params} ({build.detail})", flush=True)
        rows.append(measure(name, workdir / _index_name(kind), build, build.params, xq, gt))
    summary: dict = {
        "n": args.n,
        "dim": args.dim,
        "max_memory": args.max_memory,
        "nq": args.nq,
        "target_recall": args.target_recall,
        "threads": os.cpu_count(),
    }
    if not args.skip_autofaiss:
        af = run_autofaiss(workdir, args.max_memory, args.autofaiss_python)
        print(f"autofaiss: {af.factory}  {af.params}", flush=True)
        path = workdir / "autofaiss.index"
        rows.append(measure("autofaiss (own params)", path, af, af.params, xq, gt))
        rows.append(measure("autofaiss (tuned)", path, af, retune(path, xq_tune, gt_tune, args.target_recall), xq, gt))
        r = summary["ratios"] = ratios(rows[0], rows[-1])
        summary["ratios_vs_own_params"] = ratios(rows[0], rows[-2])
    print(markdown_table(rows))
    if "ratios" in summary:
        print(
            f"ratios ours / autofaiss (tuned to the same target): QPS 1t x{r['qps_1t']:.2f}, "
            f"QPS all x{r['qps_all']:.2f}, build time x{r['build_time']:.2f}, "
            f"recall diff {r['recall_diff']:+.3f}"
        )
    print(json.dumps({**summary, "rows": [asdict(row) for row in rows]}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--max-memory", default="4GB")
    p.add_argument("--target-recall", type=float, default=0.9)
    p.add_argument("--nq", type=int, default=1000, help="test queries (and as many tuning queries)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autofaiss-python", default=sys.executable, help="an interpreter that can import autofaiss")
    p.add_argument("--skip-autofaiss", action="store_true")
    p.add_argument(
        "--extra-kinds",
        type=lambda s: [k for k in s.split(",") if k],
        default=[],
        help="also build these kinds from our ranked list, e.g. hnsw,ivf_sq8",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep data and indexes here (default: a temp dir)")
    p.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    p.add_argument("--kind", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parse_memory(args.max_memory)  # fail early on a bad budget
    if not (args.worker or args.skip_autofaiss):
        _check_autofaiss(args.autofaiss_python)
    if args.worker == "ours":
        build = build_ours(args.workdir, args.kind, args.max_memory, args.target_recall, args.seed)
        print(json.dumps(asdict(build)))
    elif args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
            run(args, Path(tmp))


if __name__ == "__main__":
    main()

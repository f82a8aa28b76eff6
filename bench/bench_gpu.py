"""CPU vs GPU in one run: embedding images/s per precision (and its ratio to forward-only), and faiss
IVF build time and QPS at recall@10 >= 0.95. The device check of #28; docs/scale.md reads it.

    python bench/bench_gpu.py                                   # 1024 images; 1M x 512 vectors
    python bench/bench_gpu.py --n-images 128 --n 100000 --nq 500   # smoke test: ~2 min on 2 CPU cores
    python bench/bench_gpu.py --skip-index --model retr:effnet-lite0 --source FOLDER   # torch + weights only

Embedding (`--model`, default retr:imagenet-bridge: EfficientNet-Lite0, the image tower of retr's models):
for the CPU in fp32, and for CUDA in fp32, fp16 and bf16 autocast, `forward` is the model alone on one
preprocessed batch held on the host, and `end-to-end` is `indexing.embed.embed_items` as `retr index
build` runs it (read, decode and preprocess in --workers DataLoader workers, pinned uint8 batches on
CUDA, model, chunk files). Each precision's vectors are compared with the CPU fp32 run (min cosine).

Index: --n clustered unit vectors of --dim (bench_index.py's generator) with --nq held-out queries
and exact top-10. For the two kinds faiss runs on a GPU, IVF-Flat and OPQ + IVF-PQ (the plans
`indexing.choose` makes for n and d), build = train + add (`indexing.faiss_build`, `device=`). nprobe is
the smallest reaching recall@10 >= --target on tuning queries, found on the CPU index
(`indexing.tune`) and used on both; QPS is one batch of all test queries, best of 3, all cores;
the GPU copy is searched through `retrieval.gpu_shards` (the `--device cuda` search path).

A part with no GPU to run on prints why and leaves its GPU rows out; the CPU rows are still measured,
so the script runs anywhere. A GPU needs torch with CUDA (embedding) and faiss-gpu-cu12 (index).

Expected output shape (the smoke run on 2 CPU cores; a GPU adds cuda rows and the GPU ÷ CPU columns):

    machine: 2 cores, GPU none, torch 2.13.0+cpu, faiss 1.15.1
    | device | precision | forward img/s | end-to-end img/s | e2e ÷ forward | ÷ CPU end-to-end | min cos to CPU |
    | cpu | fp32 | 17.4 | 19.6 | 1.128 | 1.00 | 0.9999 |
    | index | device | build s | nprobe | recall@10 | QPS | GPU ÷ CPU build | GPU ÷ CPU QPS |
    | IVF1024,Flat | cpu | 5.7 | 7 | 0.955 | 10895.0 | - | - |
    | OPQ64_512,IVF256,PQ64np | cpu | 38.1 | 8 | 0.6648 | 7077.1 | - | - |
    no GPU rows for embedding: torch sees no CUDA GPU
    no GPU rows for index: faiss 1.15.1 has no GPU support (install faiss-gpu-cu12)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_embed import forward_only  # noqa: E402

from indexing.embed import EmbedConfig, embed_items  # noqa: E402
from indexing.resolve import resolve_items  # noqa: E402
from indexing.store import read_segment_vectors  # noqa: E402
from retrieval.encoders import load_encoder  # noqa: E402

# The embedding part imports no faiss: `--skip-index` runs where only torch and the model's weights are
# installed (a GPU machine that cannot take faiss; docs/scale.md). The index part imports it when it runs.


@dataclass(frozen=True)
class EmbedRow:
    device: str
    precision: str
    forward_img_s: float
    e2e_img_s: float
    ratio: float  # end-to-end / forward
    min_cos_to_cpu: float


@dataclass(frozen=True)
class IndexRow:
    kind: str
    factory: str
    device: str
    build_s: float
    nprobe: int
    recall: float
    qps: float


def embed_rows(args: argparse.Namespace) -> tuple[list[EmbedRow], str | None]:
    items = resolve_items(args.source, progress=False)[: args.n_images]
    runs = [("cpu", "fp32")]
    why_not = None if torch.cuda.is_available() else "torch sees no CUDA GPU"
    if why_not is None:
        runs += [("cuda", "fp32"), ("cuda", "fp16"), ("cuda", "bf16")]
    rows, reference = [], None
    for device, precision in runs:
        encoder = load_encoder(args.model, device=device)
        config = EmbedConfig(batch_size=args.batch_size, num_workers=args.workers, chunk_size=len(items),
                             precision=precision)
        fwd = forward_only(encoder, items, args.batch_size, len(items), precision=precision)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = embed_items(items, Path(tmp) / "seg", encoder, config, progress=False)
            e2e = summary.n_items / (time.perf_counter() - t0)
            vectors = read_segment_vectors(Path(tmp) / "seg").astype(np.float32)
        reference = vectors if reference is None else reference
        cos = float(np.sum(vectors * reference, axis=1).min())
        rows.append(EmbedRow(device, precision, round(fwd, 1), round(e2e, 1), round(e2e / fwd, 3), round(cos, 4)))
        print(f"  embed {device} {precision}: forward {fwd:.1f} img/s, end-to-end {e2e:.1f} img/s", flush=True)
    return rows, why_not


def index_rows(args: argparse.Namespace) -> tuple[list[IndexRow], str | None]:
    import faiss
    from bench_index import K, Mixture, best_qps

    from indexing.choose import choose_index
    from indexing.faiss_build import add_to_clone, train_empty
    from indexing.tune import apply_search_param, exact_knn, recall_at_k, tune_search_params
    from retrieval.gpu_shards import faiss_gpu_count, faiss_to_gpu

    mix = Mixture.make(args.n, args.dim, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    xb = mix.sample(args.n, rng)
    ids = np.arange(args.n, dtype=np.int64)
    xq_tune, xq_test = mix.sample(args.nq, rng), mix.sample(args.nq, rng)
    _, gt_tune = exact_knn(xb, xq_tune, K)
    _, gt_test = exact_knn(xb, xq_test, K)
    plans = {p.kind: p for p in choose_index(args.n, args.dim, 1 << 40)}
    n_gpus = faiss_gpu_count()
    why_not = None if n_gpus else (f"faiss {faiss.__version__} sees no GPU" if hasattr(faiss, "StandardGpuResources")
                                   else f"faiss {faiss.__version__} has no GPU support (install faiss-gpu-cu12)")
    rows = []
    for kind in ("ivf_flat", "ivf_pq"):
        plan = plans[kind]
        built = {}
        for device in ("cpu", "cuda") if n_gpus else ("cpu",):
            t0 = time.perf_counter()
            index = add_to_clone(train_empty(plan, xb, device=device, seed=args.seed), xb, ids, device=device)
            built[device] = (index, time.perf_counter() - t0)
        cpu_index = built["cpu"][0]
        nprobe = tune_search_params(cpu_index, xq_tune, gt_tune, K, args.target).value
        for device, (index, seconds) in built.items():
            apply_search_param(index, "nprobe", nprobe)
            searched = index
            if device == "cuda":
                searched = faiss_to_gpu()(index, 0)
                faiss.GpuParameterSpace().set_index_parameter(searched, "nprobe", nprobe)
            _, found = searched.search(xq_test, K)
            qps = best_qps(searched, xq_test, K, threads=os.cpu_count() or 1)
            rows.append(IndexRow(kind, plan.factory, device, round(seconds, 1), nprobe,
                                 round(recall_at_k(found, gt_test, K), 4), round(qps, 1)))
            print(f"  index {kind} {device}: build {seconds:.1f} s, nprobe {nprobe}, "
                  f"recall {rows[-1].recall:.3f}, {qps:.0f} QPS", flush=True)
    return rows, why_not


def _ratio(rows, row, key: str, match) -> str:
    base = next((r for r in rows if match(r)), None)
    return f"{getattr(row, key) / getattr(base, key):.2f}" if base and getattr(base, key) else "-"


def report(embed: list[EmbedRow], index: list[IndexRow], why: dict[str, str | None]) -> None:
    print("\n| device | precision | forward img/s | end-to-end img/s | e2e ÷ forward | ÷ CPU end-to-end "
          "| min cos to CPU |")
    print("|---|---|---|---|---|---|---|")
    for r in embed:
        vs_cpu = _ratio(embed, r, "e2e_img_s", lambda b: b.device == "cpu")
        print(f"| {r.device} | {r.precision} | {r.forward_img_s} | {r.e2e_img_s} | {r.ratio} | {vs_cpu} | "
              f"{r.min_cos_to_cpu} |")
    print("\n| index | device | build s | nprobe | recall@10 | QPS | GPU ÷ CPU build | GPU ÷ CPU QPS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in index:
        cpu = lambda b, kind=r.kind: b.kind == kind and b.device == "cpu"  # noqa: E731
        build = _ratio(index, r, "build_s", cpu)
        speed = _ratio(index, r, "qps", cpu)
        print(f"| {r.factory} | {r.device} | {r.build_s} | {r.nprobe} | {r.recall} | {r.qps} | "
              f"{build if r.device == 'cuda' else '-'} | {speed if r.device == 'cuda' else '-'} |")
    for part, reason in why.items():
        if reason:
            print(f"no GPU rows for {part}: {reason}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="emoji-google", help="images: a folder, manifest or corpus name")
    p.add_argument("--model", default="retr:imagenet-bridge")
    p.add_argument("--n-images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the index part")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--target", type=float, default=0.95, help="recall@10 nprobe is tuned to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--skip-index", action="store_true")
    args = p.parse_args(argv)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        import faiss

        have_faiss = f"faiss {faiss.__version__}"
    except ImportError:
        have_faiss = "no faiss"
    print(f"machine: {os.cpu_count()} cores, GPU {gpu}, torch {torch.__version__}, {have_faiss}")
    embed, why_embed = ([], "skipped") if args.skip_embed else embed_rows(args)
    index, why_index = ([], "skipped") if args.skip_index else index_rows(args)
    report(embed, index, {"embedding": why_embed, "index": why_index})
    print(json.dumps({"bench": "gpu", "gpu": gpu, "embed": [asdict(r) for r in embed],
                      "index": [asdict(r) for r in index], "n": args.n, "dim": args.dim}))


if __name__ == "__main__":
    main()

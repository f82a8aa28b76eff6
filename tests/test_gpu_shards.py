"""Shards on a GPU (retrieval.gpu_shards, `retr search/serve --device cuda`).

Without a GPU build of faiss the commands fail before loading anything and say what to install. The
routing is checked on the CPU with a stand-in cloner (a faiss CPU clone that counts its searches): an
IVF index's shards go to the "GPU", unfiltered searches are answered there and filtered ones by the
CPU copies, a kind faiss has no GPU version of stays on the CPU, and a shard the cloner refuses is
answered by its CPU copy; every answer is the local search's. With a real faiss GPU the same queries
give the same hits as the CPU.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval.gpu_shards import GpuShards, faiss_gpu_count, gpu_shards
from retrieval.search import Query, open_index
from tests.conftest import PixelEncoder, write_colour_folder

ENCODER = PixelEncoder()
QUERIES = [Query(text=t) for t in ("red", "a blue square", "green", "white thing", "zebra")] + [Query(image_id=5)]


def encoder_factory(spec: str) -> PixelEncoder:
    return ENCODER


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, Path]:
    """The colour corpus (60 items) in 4 shards as IVF-Flat (GPU-able) and as fast-scan IVF-PQ (not)."""
    root = tmp_path_factory.mktemp("gpu-shards")
    write_colour_folder(root / "imgs", per_colour=6, bad=False)
    items = list_items(str(root / "imgs"))
    out = {}
    for kind in ("ivf_flat", "ivf_pq_refine"):
        config = IndexConfig(shards=4, index_kind=kind, embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=8))
        build_index(items, root / kind, ENCODER, config, progress=False)
        out[kind] = root / kind
    return out


class _CountingCopy:
    """Stands in for a GPU index: a CPU clone of the shard that counts the searches it answers."""

    def __init__(self, index: faiss.Index) -> None:
        self.index, self.calls = faiss.clone_index(index), 0

    def search(self, xq: np.ndarray, k: int):
        self.calls += 1
        return self.index.search(xq, k)


def _answers(index_dir: Path, shards=None, where: str | None = None) -> list[list[tuple[int, float]]]:
    idx = open_index(index_dir, encoder_factory, **({"shards": shards} if shards else {}))
    try:
        results = idx.search_batch(QUERIES, k=7, where=where)
    finally:
        idx.close()
    return [[(h.id, round(h.score, 5)) for h in r.results] for r in results]


@pytest.mark.skipif(faiss_gpu_count() > 0, reason="this faiss has a GPU: the error path does not apply")
@pytest.mark.parametrize("command", ["search", "serve"])
def test_device_cuda_without_gpu_faiss_says_what_to_install(indexes, command: str) -> None:
    from app.cli import app

    args = [command, str(indexes["ivf_flat"]), "--device", "cuda", *(["--text", "red"] if command == "search" else [])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert "GPU build of faiss" in res.output and "retr[gpu]" in res.output and "--device cpu" in res.output
    with pytest.raises(ValueError, match="retr\\[gpu\\]"):
        gpu_shards()


def test_ivf_shards_answer_on_the_gpu_copies_and_filters_on_the_cpu(indexes) -> None:
    opened: list[GpuShards] = []
    copies: list[_CountingCopy] = []  # the image collection's first: its shards are cloned first

    def to_gpu(index, gpu):
        copies.append(_CountingCopy(index))
        return copies[-1]

    def opener(index_dir, info, kind):
        opened.append(GpuShards(index_dir, info, kind, to_gpu=to_gpu))
        return opened[-1]

    local = _answers(indexes["ivf_flat"])
    assert _answers(indexes["ivf_flat"], opener) == local
    image = opened[0]
    assert image.kind == "image" and len(image.placement) == 4
    assert all(p.endswith(": gpu") for p in image.placement)
    assert [c.calls for c in copies[:4]] == [1, 1, 1, 1]  # one batched search per shard, on the copies
    assert image.gpu_shards == [None] * 4  # closed with the index: the GPU copies are let go

    copies.clear()
    where = "path LIKE '%red%'"
    filtered = _answers(indexes["ivf_flat"], opener, where=where)
    assert filtered == _answers(indexes["ivf_flat"], where=where)
    assert all(hits for hits in filtered[:-1])
    assert len(copies) >= 4 and sum(c.calls for c in copies) == 0  # a pre-filter is answered on the CPU


def test_kinds_without_a_gpu_version_and_refused_shards_stay_on_the_cpu(indexes) -> None:
    cloned: list[int] = []

    def never(index, gpu):
        cloned.append(gpu)
        raise AssertionError("fast-scan shards must not be sent to the GPU")

    fast = GpuShards(indexes["ivf_pq_refine"], open_index(indexes["ivf_pq_refine"]).manifest.image, "image",
                     to_gpu=never)
    assert not cloned and all("ivf_pq_refine has no faiss GPU version" in p for p in fast.placement)

    def refuse(index, gpu):
        raise RuntimeError("Error in GpuIndexIVF: too many lists for this device")

    assert _answers(indexes["ivf_flat"], lambda d, info, kind: GpuShards(d, info, kind, to_gpu=refuse)) == \
        _answers(indexes["ivf_flat"])
    manifest = open_index(indexes["ivf_flat"]).manifest
    refused = GpuShards(indexes["ivf_flat"], manifest.image, "image", to_gpu=refuse)
    assert all(p.endswith("cpu (Error in GpuIndexIVF: too many lists for this device)") for p in refused.placement)


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpu_count() == 0, reason="needs a GPU build of faiss and a GPU")
def test_real_gpu_shards_give_the_cpu_hits(indexes) -> None:
    local = _answers(indexes["ivf_flat"])
    on_gpu = _answers(indexes["ivf_flat"], gpu_shards())
    assert [[i for i, _ in q] for q in on_gpu] == [[i for i, _ in q] for q in local]
    pairs = [(a, b) for qa, qb in zip(on_gpu, local, strict=True) for a, b in zip(qa, qb, strict=True)]
    assert all(abs(a[1] - b[1]) < 1e-3 for a, b in pairs)

"""GPU paths: the model on CUDA (fp32, fp16 and bf16 autocast) embeds like the CPU. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexing.embed import EmbedConfig, embed_items
from indexing.sources import list_items
from indexing.store import read_segment_meta, read_segment_vectors
from retrieval.encoders import load_encoder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_embedding_matches_cpu(colour_folder: Path, tmp_path: Path, precision: str) -> None:
    items = list_items(str(colour_folder))
    out = {}
    for device in ("cpu", "cuda"):
        encoder = load_encoder("retr:imagenet-bridge", device=device)
        precision_here = precision if device == "cuda" else "fp32"
        config = EmbedConfig(batch_size=8, num_workers=1, chunk_size=16, precision=precision_here)
        folder = tmp_path / f"{device}-{precision}"
        summary = embed_items(items, folder, encoder, config, progress=False)
        assert summary.n_rejected == 2
        out[device] = (read_segment_meta(folder).column("path").to_pylist(), read_segment_vectors(folder))
    assert out["cpu"][0] == out["cuda"][0]
    cos = np.sum(out["cpu"][1] * out["cuda"][1], axis=1)
    # fp32 on GPU differs from CPU by kernel order (~1e-5); fp16 / bf16 autocast by ~1e-3 (float16 storage too).
    assert cos.min() > (0.999 if precision == "fp32" else 0.99)


def test_training_on_cuda_draws_the_cpu_batches_and_loads_on_cpu(tmp_path: Path) -> None:
    """`retr train` on a GPU: heads and batches on CUDA, same sampling as on CPU, checkpoint usable on CPU.

    The run unlocks the tower's last two layers after its locked epochs, so their copies train on CUDA too.
    """
    from retrieval.evaluate import text_image_recall
    from retrieval.training.config import parse_config
    from retrieval.training.data import load_pairs
    from retrieval.training.loop import train
    from tests.test_training import _colour_manifest

    manifest = _colour_manifest(tmp_path / "colours")
    reports = {}
    for device in ("cpu", "cuda"):
        config = parse_config({
            "corpora": [str(manifest)], "out": str(tmp_path / f"run-{device}"), "epochs": 40, "batch_size": 20,
            "lr": 3e-3, "templates": ["{}"], "augment": {"views": 2}, "num_workers": 0, "key_batches": True,
            "i2i_weight": 0.5, "head": {"instance_dim": 16, "dropout": 0.0},
            "unlock": {"layers": 2, "epochs": 4, "lr": 1e-3},
        })
        bridge = load_encoder("retr:imagenet-bridge", device=device)
        reports[device] = train(config, bridge, cache=tmp_path / f"cache-{device}", progress=False)
    cpu, gpu = reports["cpu"], reports["cuda"]
    # same batches (numpy RNG on the CPU), same initial heads: the first epoch's loss agrees to float error
    assert abs(cpu.first_loss - gpu.first_loss) < 1e-2 * cpu.first_loss
    assert gpu.last_loss < 0.5 * gpu.first_loss
    held_out = load_pairs([str(manifest)], "test")
    trained = load_encoder(f"retr:{gpu.out}", device="cpu")  # trained on the GPU, served on a CPU
    assert text_image_recall(trained, held_out).metrics["t2i_R@1"] >= 0.9

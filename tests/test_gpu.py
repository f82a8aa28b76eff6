"""GPU paths: the model on CUDA (fp32 and fp16 autocast) embeds like the CPU. Skipped without a GPU."""

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


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
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
    # fp32 on GPU differs from CPU by kernel order (~1e-5); fp16 autocast by ~1e-3 (float16 storage too).
    assert cos.min() > (0.999 if precision == "fp32" else 0.99)

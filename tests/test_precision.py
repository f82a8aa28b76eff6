"""Reduced precision only where asked for or native; unknown names are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexing.embed import EmbedConfig, embed_items
from indexing.sources import list_items
from indexing.store import read_segment_vectors
from retrieval.encoders import load_encoder
from retrieval.encoders.precision import PRECISIONS, autocast_dtype, native_bf16
from retrieval.training import config


def test_precision_names_map_to_autocast_dtypes() -> None:
    assert PRECISIONS == config.PRECISIONS  # the config validates against the same names without importing torch
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16  # asked for: emulated where not native
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if native_bf16("cpu") else None)
    assert autocast_dtype("auto", "meta") is None  # a device without native bf16 keeps fp32
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        autocast_dtype("fp16", "cpu")


def test_config_checks_unlock_precision() -> None:
    assert config.parse_config({"corpora": ["x"]}).unlock.precision == "auto"
    assert config.parse_config({"corpora": ["x"], "unlock": {"precision": "fp32"}}).unlock.precision == "fp32"
    with pytest.raises(ValueError, match="unlock.precision must be one of auto, fp32, bf16, got 'half'"):
        config.parse_config({"corpora": ["x"], "unlock": {"precision": "half"}})


def test_bf16_indexing_on_a_cpu_embeds_close_to_fp32_and_fp16_stays_fp32(colour_folder: Path, tmp_path: Path) -> None:
    items = list_items(str(colour_folder))
    encoder = load_encoder("retr:imagenet-bridge")
    out = {}
    for precision in ("fp32", "fp16", "bf16"):
        config = EmbedConfig(batch_size=8, num_workers=0, chunk_size=16, storage_dtype="float32", precision=precision)
        summary = embed_items(items, tmp_path / precision, encoder, config, progress=False)
        assert summary.n_rejected == 2  # the corrupt files are still skipped and reported
        out[precision] = read_segment_vectors(tmp_path / precision)
    assert np.array_equal(out["fp16"], out["fp32"])  # fp16 autocast is CUDA-only: a CPU runs fp32
    assert not np.array_equal(out["bf16"], out["fp32"])  # bf16 really ran in bf16 ...
    # ... and lands next to the fp32 vector; the bridge's top-10 classes can reorder where ImageNet is
    # unsure of a plain colour square, hence a looser minimum than median
    cos = np.sum(out["bf16"] * out["fp32"], axis=1)
    assert np.median(cos) > 0.995 and cos.min() > 0.95


def test_eval_embeds_images_at_the_precision_an_index_would(tmp_path: Path) -> None:
    from retrieval.evaluate import EvalPlan, embed_images
    from retrieval.training.data import load_pairs
    from tests.test_training import _colour_manifest

    pairs = load_pairs([str(_colour_manifest(tmp_path / "colours"))], "test")
    encoder = load_encoder("retr:imagenet-bridge")
    (fp32, rows), (bf16, rows16) = embed_images(encoder, pairs), embed_images(encoder, pairs, precision="bf16")
    assert np.array_equal(rows, rows16) and not np.array_equal(fp32, bf16)
    assert np.median(np.sum(fp32 * bf16, axis=1)) > 0.995
    with pytest.raises(ValueError, match="precision must be fp32, fp16 or bf16"):
        EvalPlan(corpora=("x",), precision="int8")

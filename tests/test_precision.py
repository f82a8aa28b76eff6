"""Reduced precision only where asked for or native; unknown names are refused."""

from __future__ import annotations

import pytest
import torch

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

"""Reduced precision where the hardware computes it natively, and only there.

bfloat16 halves the cost of the large matrix products and convolutions on CUDA GPUs that support it
and on CPUs with AVX512-BF16; elsewhere it is emulated and slower than float32, so "auto" keeps fp32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")  # training the unlocked tower layers (TrainConfig.unlock.precision)
EMBED_PRECISIONS = ("fp32", "fp16", "bf16")  # embedding images (retr index build / retr eval --precision)


def cpu_has_bf16() -> bool:
    """Native bfloat16 matrix products (AVX512-BF16); elsewhere bf16 is emulated and slower than fp32."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes bfloat16 natively."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_bf16()


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype `precision` asks for on `device`: None = plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def check_embed_precision(precision: str) -> None:
    """The one check of an image-embedding precision (index builds, evaluation, autocast)."""
    if precision not in EMBED_PRECISIONS:
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")


def embedding_autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """How images are embedded at `precision`: fp16 autocasts on CUDA only (a CPU runs it in fp32);
    bf16 on CUDA and CPUs alike (on a CPU with AVX512-BF16 about twice fp32's images/s for
    retr:default, bench/bench_embed_precision.py; emulated and slower elsewhere)."""
    check_embed_precision(precision)
    kind = torch.device(device).type
    if precision == "fp32" or (precision == "fp16" and kind != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)

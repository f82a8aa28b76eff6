"""Reduced precision where the hardware computes it natively, and only there.

bfloat16 halves the cost of the large matrix products and convolutions on CUDA GPUs that support it
and on CPUs with AVX512-BF16; elsewhere it is emulated and slower than float32, so "auto" keeps fp32.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")


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

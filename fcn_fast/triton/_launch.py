"""Launch helpers shared by the Triton kernels."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import triton
import triton.language as tl


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def split3(v: float) -> tuple[float, float, float]:
    """Three float32 values whose float64 sum is exactly v.

    Triton passes Python float scalars to kernels as float32, which would round
    scale and bias to 24 bits; s = Y * scale + bias would then be off by ~1e-5 at
    Y ~ 200 and taps would differ from the C++ kernels. hi = f32(v) leaves a residual
    v - hi that is exact in float64 and has <= 29 significant bits; mid = f32(of that)
    leaves <= 5 bits, which lo holds exactly. So hi + mid + lo == v (each partial sum
    is exact), for |v| within float32's normal range, which covers every scale/bias.
    """
    hi = float(np.float32(v))
    mid = float(np.float32(v - hi))
    lo = float(np.float32(v - hi - mid))
    return hi, mid, lo


@triton.jit
def f64(hi, mid, lo):
    # Rebuild the double that split3 split; each addition is exact. tl.cast, not .to:
    # the interpreter may hand float arguments over as Python floats.
    return tl.cast(hi, tl.float64) + tl.cast(mid, tl.float64) + tl.cast(lo, tl.float64)

"""Launch helpers shared by the Triton kernels: device guard, exact doubles, alignment hints,
grid sizes."""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
import triton
import triton.language as tl

# Bytes one thread moves per vector access: st.global.v4.b32 / ld.global.v4.b32.
VECTOR_BYTES = 16
# Largest element offset the int32 kernel variants may compute.
INT32_LIMIT = 2**31 - 1


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


@triton.jit
def exact(hi, mid, lo, acc_ty: tl.constexpr):
    """A split3 value in the accumulation type: the float64 rebuild for float64 kernels;
    float32 kernels take hi, which is that double rounded to float32 (so no float64
    instruction in them)."""
    if acc_ty == tl.float64:
        return f64(hi, mid, lo)
    else:
        return tl.cast(hi, acc_ty)


def vector_width(dtype: torch.dtype) -> int:
    """Elements of `dtype` in one 16-byte vector access."""
    return max(1, VECTOR_BYTES // dtype.itemsize)


def pow2_divisor(limit: int, *values: int) -> int:
    """The largest power of two <= limit that divides every value: a divisibility a
    launcher may promise the compiler (tl.multiple_of) for offsets built from them."""
    g = 0
    for v in values:
        g = math.gcd(g, int(v))
    d = 1
    while d * 2 <= limit and (g % (d * 2) == 0):
        d *= 2
    return d


def max_offset(t: torch.Tensor) -> int:
    """The largest element offset from t's data pointer (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def needs_int64(*tensors: torch.Tensor | None) -> bool:
    """Whether any tensor has an element beyond int32 offsets: the kernels' INT64 variant."""
    return any(t is not None and max_offset(t) > INT32_LIMIT for t in tensors)


def index_type(*tensors: torch.Tensor | None):
    """The offset type of the kernels' IDX constexpr: int64 only where a tensor needs it."""
    return tl.int64 if needs_int64(*tensors) else tl.int32


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def interpreted(t: torch.Tensor) -> bool:
    """Whether a launch on t runs in Triton's interpreter (CPU tensors, TRITON_INTERPRET=1),
    which pays per operation rather than per element: launchers then pick larger tiles.
    (Meta tensors count as GPU tensors: the compile tests launch on them.)"""
    return t.device.type == "cpu"


def persistent_programs(device: torch.device, tiles: int, per_sm: int) -> int:
    """Programs of a persistent grid: enough to fill the GPU, at most one per tile. Under
    the interpreter a few, so that tests run the loop over tiles."""
    if device.type == "cpu":
        return max(1, min(tiles, 3))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        sms = _sm_count(index)
    else:
        sms = 132  # no device to ask (meta tensors of the compile tests): an H100's
    return max(1, min(tiles, per_sm * sms))


def pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()

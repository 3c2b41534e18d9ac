"""Rules every layer shares: float dtypes, the accumulation dtype, the output memory format.

The lowest module of the package: ops, reference, triton and the models import it; it
imports nothing of fcn_fast. The C++ kernels apply the same rules (csrc/ops/tensor_checks.h).
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)


class TargetOutOfRangeError(IndexError, ValueError):
    """A class-index target outside [0, C) that is not ignore_index; the message names it.

    An IndexError, as PyTorch's own loss raises, and a ValueError, as fcn_fast raised before.
    Raised on every backend that can check without a device sync (cpu, reference, triton under
    TRITON_INTERPRET=1); cuda and triton on a GPU assert on the device instead, as PyTorch."""


def target_error(error: Exception, op: str) -> Exception:
    """`error` as a TargetOutOfRangeError when it is a kernel's or F.cross_entropy's out-of-range
    target error (they name the value), else `error` itself."""
    text = str(error)
    if isinstance(error, TargetOutOfRangeError) or not (
        "target contains" in text or "out of bounds" in text  # fcn_fast's kernels, PyTorch's
    ):
        return error
    return TargetOutOfRangeError(text if text.startswith(op) else f"{op}: {text}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is channels_last (and not also plain contiguous), else contiguous.

    Every kernel and every fake kernel uses this rule, so outputs have identical strides
    on every backend.
    """
    if (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    ):
        return torch.channels_last
    return torch.contiguous_format

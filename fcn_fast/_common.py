"""Rules every layer shares: float dtypes, the accumulation dtype, the output memory format.

The lowest module of the package: ops, reference, triton and the models import it; it
imports nothing of fcn_fast. The C++ kernels apply the same rules (csrc/ops/tensor_checks.h).
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)


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

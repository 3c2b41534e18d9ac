"""Launch helpers shared by the Triton kernels."""

from __future__ import annotations

import contextlib

import torch


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()

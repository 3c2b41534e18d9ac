"""pixel_cross_entropy: fused per-pixel log-softmax + NLL loss (docs/design.md, "The loss").

Equals F.cross_entropy(logits, target, weight, ignore_index, reduction,
label_smoothing) for logits (N, C) or (N, C, d1, ..., dk) and int64 class-index
targets. The kernels see logits as (N, C, S), S = d1 * ... * dk, with any strides
(NCHW: the pixels are the contiguous axis); the forward keeps only the per-pixel
log-sum-exp (float32, float64 for float64 logits) for backward, which recomputes
softmax - onehot. Reductions are deterministic (fixed-order sums, no atomics).
The extension's op fcn_fast::pixel_cross_entropy runs it: csrc/ops/pixel_cross_entropy.cpp
holds its autograd and picks the kernel by backend (csrc/cpu/, csrc/cuda/,
fcn_fast/triton/pixel_cross_entropy.py).

Targets outside [0, C) that are not ignore_index:
* cpu: ValueError from the forward.
* cuda / triton: checked on the device without a host sync. The kernel sets an
  error flag and the op then calls torch._assert_async on it: the error surfaces
  as a RuntimeError ("device-side assert triggered") at the next synchronising
  call, as PyTorch's own nll_loss does. Under TRITON_INTERPRET=1 (CPU tensors) the
  flag is read at once and raises ValueError.
* reference: whatever F.cross_entropy raises.
"""

from __future__ import annotations

import math

import torch

from fcn_fast import _backend
from fcn_fast._common import LOW_PRECISION, accumulation_dtype
from fcn_fast.ops._checks import check_float, check_tensor
from fcn_fast.reference.pixel_cross_entropy import pixel_cross_entropy_reference

_OP = "pixel_cross_entropy"
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


@_backend.register_fake("fcn_fast::pixel_cross_entropy", "fcn_fast::pixel_cross_entropy_triton")
def _pixel_cross_entropy_fake(
    logits, target, weight, ignore_index, reduction, label_smoothing, backend=None
):
    acc = accumulation_dtype(logits.dtype)
    # The public op: per-pixel outputs shaped like target. Its Triton twin: the kernels'
    # (N, C, S) contract, where target is (N, S) too.
    loss = logits.new_empty(target.shape if reduction == 0 else (), dtype=acc)
    return loss, logits.new_empty(target.shape, dtype=acc), logits.new_empty((), dtype=acc)


@_backend.register_fake(
    "fcn_fast::pixel_cross_entropy_backward", "fcn_fast::pixel_cross_entropy_backward_triton"
)
def _pixel_cross_entropy_backward_fake(
    grad,
    logits,
    target,
    weight,
    lse,
    weight_sum,
    ignore_index,
    reduction,
    label_smoothing,
    backend=None,
):
    return torch.empty_like(logits)


def _check(logits, target, weight, ignore_index, reduction, label_smoothing):
    op = _OP
    check_tensor(logits, "logits", op)
    check_float(logits, "logits", op)
    if (
        logits.dim() < 1
        or (logits.dim() == 1 and logits.shape[0] < 1)
        or (logits.dim() >= 2 and logits.shape[1] < 1)
    ):
        raise ValueError(
            f"{op}: logits must be (C,), (N, C) or (N, C, d1, ..., dk) with C >= 1, "
            f"got shape {tuple(logits.shape)}"
        )
    check_tensor(target, "target", op)
    if target.dtype.is_floating_point:
        raise TypeError(
            f"{op}: target must be int64 class indices; floating targets (class probabilities) "
            f"are not supported, got {target.dtype}"
        )
    if target.dtype != torch.int64:
        raise TypeError(f"{op}: target must be int64 class indices, got {target.dtype}")
    expected = () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{op}: target must have shape {expected} for logits of shape "
            f"{tuple(logits.shape)} (logits without the class dimension), "
            f"got {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(
            f"{op}: target is on {target.device} but logits is on {logits.device}; "
            "move both to one device"
        )
    if weight is not None:
        check_tensor(weight, "weight", op)
        c = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
        if weight.dim() != 1 or weight.shape[0] != c:
            raise ValueError(
                f"{op}: weight must be a 1-D tensor of C = {c} class weights, "
                f"got shape {tuple(weight.shape)}"
            )
        if not weight.is_floating_point():
            raise TypeError(f"{op}: weight must be a floating-point tensor, got {weight.dtype}")
        if weight.device != logits.device:
            raise ValueError(
                f"{op}: weight is on {weight.device} but logits is on {logits.device}; "
                "move both to one device"
            )
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {tuple(_REDUCTIONS)}, got {reduction!r}")
    if not isinstance(label_smoothing, (int, float)) or isinstance(label_smoothing, bool):
        raise TypeError(f"{op}: label_smoothing must be a float, got {label_smoothing!r}")
    if not (math.isfinite(label_smoothing) and 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")


def pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """F.cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing), fused.

    logits: (C,), (N, C) or (N, C, d1, ..., dk), float16/bfloat16/float32/float64, any
    strides (channels_last included); target: int64 class indices shaped like logits
    without the class dimension. The weighted mean is sum w[t] * loss / sum w[t] over
    non-ignored elements; `mean` is NaN when every element is ignored (as PyTorch).
    The result has the logits dtype (float32 under autocast, as F.cross_entropy); arithmetic
    is float32 (float64 for float64).
    """
    _check(logits, target, weight, ignore_index, reduction, label_smoothing)
    backend = _backend.resolve_backend(backend, _OP, logits.device)
    if backend == "reference":
        if (
            weight is not None
            and weight.dtype != logits.dtype
            and not torch.is_autocast_enabled(logits.device.type)
        ):
            weight = weight.to(logits.dtype)  # F.cross_entropy wants them equal
        return pixel_cross_entropy_reference(
            logits, target, weight, ignore_index, reduction, float(label_smoothing)
        )
    if weight is not None:
        # Class weights are read in the accumulation dtype whatever their own: fp32 weights
        # with bf16 logits (a loss module's buffer under autocast) keep their precision.
        weight = weight.to(accumulation_dtype(logits.dtype)).contiguous()
    # csrc/ops/pixel_cross_entropy.cpp: the kernel for each backend, and the autograd.
    loss, _, _ = torch.ops.fcn_fast.pixel_cross_entropy(
        logits,
        target,
        weight,
        ignore_index,
        _REDUCTIONS[reduction],
        float(label_smoothing),
        backend,
    )
    # The loss leaves the kernels in the accumulation dtype and is rounded once, here, to
    # PyTorch's dtype: the logits', or float32 under autocast (its policy for the loss).
    if logits.dtype == torch.float32 or (
        logits.dtype in LOW_PRECISION and torch.is_autocast_enabled(logits.device.type)
    ):
        return loss
    return loss.to(logits.dtype)

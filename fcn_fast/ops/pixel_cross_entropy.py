"""pixel_cross_entropy: fused per-pixel log-softmax + NLL loss (docs/design.md, "The loss").

Equals F.cross_entropy(logits, target, weight, ignore_index, reduction,
label_smoothing) for logits (N, C) or (N, C, d1, ..., dk) and class-index targets (int64,
or int32 / uint8 read as stored, which F.cross_entropy does not take). The kernels see
logits as (N, C, S), S = d1 * ... * dk, with any strides (NCHW: the pixels are the
contiguous axis); the forward keeps only the per-pixel
log-sum-exp (float32, float64 for float64 logits) for backward, which recomputes
softmax - onehot (CPU training of a mean or sum loss on float32/float64 logits keeps the
gradient itself, taken in the forward's pass: docs/design.md 2.3). Reductions are
deterministic (fixed-order sums, no atomics).
The extension's op fcn_fast::pixel_cross_entropy runs it: csrc/ops/pixel_cross_entropy.cpp
holds its autograd and picks the kernel by backend (csrc/cpu/, csrc/cuda/,
fcn_fast/triton/pixel_cross_entropy.py).

Targets outside [0, C) that are not ignore_index raise fcn_fast.TargetOutOfRangeError, both
an IndexError (what PyTorch raises) and a ValueError, naming the value, on cpu (from the
forward), reference (F.cross_entropy's IndexError) and triton under TRITON_INTERPRET=1 (CPU
tensors: the kernel's flag is read at once). cuda / triton on a GPU check on the device
without a host sync: the kernel sets an error flag and the op calls torch._assert_async on
it, so the error surfaces as a RuntimeError ("device-side assert triggered") at the next
synchronising call, as PyTorch's own nll_loss does.
"""

from __future__ import annotations

import torch

from fcn_fast import _backend
from fcn_fast._common import LOW_PRECISION, accumulation_dtype, target_error
from fcn_fast.ops._checks import (
    REDUCTIONS,
    check_float,
    check_loss_options,
    check_target,
    check_tensor,
)
from fcn_fast.reference.pixel_cross_entropy import pixel_cross_entropy_reference

_OP = "pixel_cross_entropy"
# csrc/ops/pixel_cross_entropy.cpp: the kernel for each backend, and the autograd.
_pixel_cross_entropy = _backend.extension_op("pixel_cross_entropy")


@_backend.register_fake("fcn_fast::pixel_cross_entropy", "fcn_fast::pixel_cross_entropy_triton")
def _pixel_cross_entropy_fake(
    logits, target, weight, ignore_index, reduction, label_smoothing, backend=None
):
    acc = accumulation_dtype(logits.dtype)
    # The public op: per-pixel outputs shaped like target. Its Triton twin: the kernels'
    # (N, C, S) contract, where target is (N, S) too.
    loss = logits.new_empty(target.shape if reduction == 0 else (), dtype=acc)
    return loss, logits.new_empty(target.shape, dtype=acc), logits.new_empty((), dtype=acc)


def _gradient_like(logits):
    """The kernels' gradient layout: the logits' own (empty_like), unless their pixels cannot
    be viewed as one axis (the kernels then read a contiguous copy and write contiguously)."""
    # flatten(2) is a view when the pixel dimensions longer than 1 nest (or there are none).
    dims = [(n, s) for n, s in zip(logits.shape[2:], logits.stride()[2:]) if n != 1]
    nested = all(outer == n * s for (_, outer), (n, s) in zip(dims, dims[1:]))
    if logits.numel() > 0 and not nested:
        return logits.new_empty(logits.shape)
    return torch.empty_like(logits)


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
    return _gradient_like(logits)


@_backend.register_fake("fcn_fast::pixel_cross_entropy_with_grad")
def _pixel_cross_entropy_with_grad_fake(logits, target, *loss_options):
    loss, lse, weight_sum = _pixel_cross_entropy_fake(logits, target, *loss_options)
    return loss, lse, weight_sum, _gradient_like(logits)


def _check(logits, target, weight, ignore_index, reduction, label_smoothing):
    op = _OP
    check_tensor(logits, "logits", op)
    check_float(logits, "logits", op)
    # Plain tuples: slicing a torch.Size costs microseconds, which tiny inputs notice.
    shape = tuple(logits.shape)
    c = shape[0] if len(shape) == 1 else shape[1] if len(shape) >= 2 else 0
    if c < 1:
        raise ValueError(
            f"{op}: logits must be (C,), (N, C) or (N, C, d1, ..., dk) with C >= 1, "
            f"got shape {shape}"
        )
    expected = shape[:1] + shape[2:] if len(shape) >= 2 else ()
    check_target(target, expected, lambda: f"logits of shape {shape}", logits, ignore_index, op)
    check_loss_options(weight, c, logits, reduction, label_smoothing, op)


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
    strides (channels_last included); target: class indices shaped like logits without the
    class dimension, int64, int32 or uint8 (ignore_index then a value uint8 holds: 255 for
    VOC, not the default -100). The weighted mean is sum w[t] * loss / sum w[t] over
    non-ignored elements; `mean` is NaN when every element is ignored (as PyTorch).
    The result has the logits dtype (float32 under autocast, as F.cross_entropy); arithmetic
    is float32 (float64 for float64).
    """
    _check(logits, target, weight, ignore_index, reduction, label_smoothing)
    backend = _backend.resolve_backend(backend, _OP, logits.device)
    try:  # an out-of-range target: one exception type on every backend (target_error)
        if backend == "reference":
            return reference_loss(logits, target, weight, ignore_index, reduction, label_smoothing)
        loss, _, _ = _pixel_cross_entropy(
            logits,
            target,
            kernel_weight(weight, logits.dtype),
            ignore_index,
            REDUCTIONS[reduction],
            float(label_smoothing),
            backend,
        )
    except (IndexError, ValueError) as error:
        raise target_error(error, _OP) from None
    return as_loss_dtype(loss, logits)


def reference_loss(logits, target, weight, ignore_index, reduction, label_smoothing):
    """F.cross_entropy, with weights in the logits' dtype as it wants them (under autocast it
    casts both to float32 itself)."""
    if (
        weight is not None
        and weight.dtype != logits.dtype
        and not torch.is_autocast_enabled(logits.device.type)
    ):
        weight = weight.to(logits.dtype)
    return pixel_cross_entropy_reference(
        logits, target, weight, ignore_index, reduction, float(label_smoothing)
    )


def kernel_weight(weight, logits_dtype):
    """Class weights as every kernel reads them: contiguous, in the accumulation dtype whatever
    their own (fp32 weights with bf16 logits, a loss module's buffer under autocast, keep
    their precision)."""
    return None if weight is None else weight.to(accumulation_dtype(logits_dtype)).contiguous()


def as_loss_dtype(loss, logits):
    """The loss leaves the kernels in the accumulation dtype and is rounded once, here, to
    PyTorch's dtype: the logits', or float32 under autocast (its policy for the loss)."""
    if logits.dtype == torch.float32 or (
        logits.dtype in LOW_PRECISION and torch.is_autocast_enabled(logits.device.type)
    ):
        return loss
    return loss.to(logits.dtype)

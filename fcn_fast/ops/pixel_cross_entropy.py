"""pixel_cross_entropy: fused per-pixel log-softmax + NLL loss (DESIGN.md 2.4).

Equals F.cross_entropy(logits, target, weight, ignore_index, reduction,
label_smoothing) for logits (N, C) or (N, C, d1, ..., dk) and int64 class-index
targets. The kernels see logits as (N, C, S), S = d1 * ... * dk, with any strides
(NCHW: the pixels are the contiguous axis); the forward keeps only the per-pixel
log-sum-exp (float32, float64 for float64 logits) for backward, which recomputes
softmax - onehot. Reductions are deterministic (fixed-order sums, no atomics).

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
from fcn_fast.ops._checks import check_float, check_tensor
from fcn_fast.reference.pixel_cross_entropy import pixel_cross_entropy_reference

_OP = "pixel_cross_entropy"
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("fcn_fast::pixel_cross_entropy", mutates_args=())
def pixel_cross_entropy_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: int,
    label_smoothing: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, lse, weight_sum) for logits (N, C, S), target (N, S); see the C++ schema."""
    return _backend.kernel(backend, _OP, "fwd")(
        logits, target, weight, ignore_index, reduction, label_smoothing
    )


def _fake_forward(logits, reduction):
    n, s = logits.shape[0], logits.shape[2]
    acc = _acc_dtype(logits.dtype)
    loss = logits.new_empty((n, s)) if reduction == 0 else logits.new_empty((), dtype=acc)
    return loss, logits.new_empty((n, s), dtype=acc), logits.new_empty((), dtype=acc)


@pixel_cross_entropy_op.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, backend):
    return _fake_forward(logits, reduction)


@torch.library.custom_op("fcn_fast::pixel_cross_entropy_backward", mutates_args=())
def pixel_cross_entropy_backward(
    grad: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    weight_sum: torch.Tensor,
    ignore_index: int,
    reduction: int,
    label_smoothing: float,
    backend: str,
) -> torch.Tensor:
    """grad_logits, recomputing softmax from lse (no saved log-probabilities)."""
    return _backend.kernel(backend, _OP, "bwd")(
        grad, logits, target, weight, lse, weight_sum, ignore_index, reduction, label_smoothing
    )


@pixel_cross_entropy_backward.register_fake
def _(
    grad, logits, target, weight, lse, weight_sum, ignore_index, reduction, label_smoothing, backend
):
    return torch.empty_like(logits)


if _backend.extension_loaded():
    # The C++ kernel ops are called only inside the custom ops above, but get fake
    # kernels too so that they can be traced and opchecked on their own.
    @torch.library.register_fake("fcn_fast::pixel_cross_entropy_fwd")
    def _(logits, target, weight, ignore_index, reduction, label_smoothing):
        return _fake_forward(logits, reduction)

    @torch.library.register_fake("fcn_fast::pixel_cross_entropy_bwd")
    def _(grad, logits, target, weight, lse, weight_sum, ignore_index, reduction, label_smoothing):
        return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction, label_smoothing, backend = inputs
    _, lse, weight_sum = output
    ctx.save_for_backward(logits, target, weight, lse, weight_sum)
    ctx.args = (ignore_index, reduction, label_smoothing, backend)
    ctx.mark_non_differentiable(lse, weight_sum)


def _backward(ctx, grad_loss, grad_lse, grad_weight_sum):
    logits, target, weight, lse, weight_sum = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = pixel_cross_entropy_backward(
            grad_loss, logits, target, weight, lse, weight_sum, *ctx.args
        )
    return grad_logits, None, None, None, None, None, None


pixel_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


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
    name = _backend.resolve_backend(backend, _OP, logits.device)
    if name == "reference":
        if (
            weight is not None
            and weight.dtype != logits.dtype
            and not torch.is_autocast_enabled(logits.device.type)
        ):
            weight = weight.to(logits.dtype)  # F.cross_entropy wants them equal
        return pixel_cross_entropy_reference(
            logits, target, weight, ignore_index, reduction, float(label_smoothing)
        )
    if logits.dim() == 1:  # one sample: (C,) -> (1, C, 1)
        x3, t2 = logits.reshape(1, -1, 1), target.reshape(1, 1)
    elif logits.dim() == 2:
        # (N, C): the samples play the pixels, (1, C, N) with the classes contiguous; no
        # copy. The CPU kernel packs such chunks; the GPU kernels read them strided
        # (correct, but not coalesced: one pixel per thread, as for channels_last).
        x3, t2 = logits.t().unsqueeze(0), target.unsqueeze(0)
    else:
        n, c = logits.shape[:2]
        s = math.prod(logits.shape[2:])
        x3, t2 = logits.reshape(n, c, s), target.reshape(n, s)  # a view for NCHW/NHWC
    if weight is not None:
        # Class weights are read in the accumulation dtype whatever their own: fp32 weights
        # with bf16 logits (a loss module's buffer under autocast) keep their precision.
        weight = weight.to(_acc_dtype(logits.dtype)).contiguous()
    loss, _, _ = pixel_cross_entropy_op(
        x3, t2, weight, ignore_index, _REDUCTIONS[reduction], float(label_smoothing), name
    )
    # PyTorch's dtype: the logits', or float32 under autocast (its fp32 policy for the loss).
    # A reduced loss comes out of the kernels in the accumulation dtype and is rounded once.
    autocast = torch.is_autocast_enabled(logits.device.type)
    out_dtype = torch.float32 if autocast and logits.dtype in _LOW_PRECISION else logits.dtype
    loss = loss.to(out_dtype)
    return loss.reshape(target.shape) if reduction == "none" else loss

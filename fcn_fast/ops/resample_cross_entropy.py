"""Fused heads: the final upsampling with the loss or the argmax, never storing the logits.

    upsample_cross_entropy     pixel_cross_entropy(upsample_skip(coarse, ...), target, ...)
    interpolate_cross_entropy  F.cross_entropy(F.interpolate(logits, target's size), target, ...)
    upsample_argmax            upsample_skip(coarse, ...).argmax(1)
    interpolate_argmax         F.interpolate(x, ...).argmax(1)

The losses keep 4 bytes per full-resolution pixel (the log-sum-exp) for backward, which
recomputes the logits from the low-resolution input; the gradient reaches the input by the
resampler's adjoint as a gather (no atomics). On the CPU kernel, a reduced loss that needs a
gradient takes it in the forward's pass instead, when it is no larger than the log-sum-exp
(docs/design.md, 2.4). The extension's ops fcn_fast::resample_cross_entropy
and fcn_fast::resample_argmax run them: csrc/ops/resample_cross_entropy.cpp holds the autograd
and picks the kernel by backend (csrc/cpu/, csrc/cuda/, fcn_fast/triton/resample_cross_entropy.py).
"""

from __future__ import annotations

import torch

from fcn_fast import _backend
from fcn_fast._common import accumulation_dtype, output_memory_format, target_error
from fcn_fast._decompositions import cross_entropy
from fcn_fast.ops._checks import (
    REDUCTIONS,
    check_float,
    check_loss_options,
    check_target,
    check_tensor,
    int_pair,
)
from fcn_fast.ops._geometry import Geometry, interpolate_geometry, upsample_geometry
from fcn_fast.ops.pixel_cross_entropy import as_loss_dtype, kernel_weight, reference_loss
from fcn_fast.reference import (
    argmax_reference,
    interpolate_add_reference,
    upsample_skip_reference,
)

# csrc/ops/resample_cross_entropy.cpp: the kernels for each backend, and the autograd.
_resample_cross_entropy = _backend.extension_op("resample_cross_entropy")
_resample_argmax = _backend.extension_op("resample_argmax")


@_backend.register_fake(
    "fcn_fast::resample_cross_entropy", "fcn_fast::resample_cross_entropy_triton"
)
def _resample_cross_entropy_fake(
    x,
    target,
    weight,
    scale_h,
    bias_h,
    scale_w,
    bias_w,
    clamp,
    ignore_index,
    reduction,
    label_smoothing,
    backend=None,
):
    acc = accumulation_dtype(x.dtype)
    loss = x.new_empty(target.shape if reduction == 0 else (), dtype=acc)
    return loss, x.new_empty(target.shape, dtype=acc), x.new_empty((), dtype=acc)


@_backend.register_fake("fcn_fast::resample_cross_entropy_with_grad")
def _resample_cross_entropy_with_grad_fake(x, target, weight, *resampling_and_loss_options):
    loss, lse, weight_sum = _resample_cross_entropy_fake(
        x, target, weight, *resampling_and_loss_options
    )
    grad_sum = x.new_empty(x.shape, dtype=lse.dtype)
    return loss, lse, weight_sum, grad_sum.contiguous(memory_format=output_memory_format(x))


@_backend.register_fake(
    "fcn_fast::resample_cross_entropy_backward", "fcn_fast::resample_cross_entropy_backward_triton"
)
def _resample_cross_entropy_backward_fake(
    grad,
    x,
    target,
    weight,
    lse,
    weight_sum,
    scale_h,
    bias_h,
    scale_w,
    bias_w,
    clamp,
    ignore_index,
    reduction,
    label_smoothing,
    backend=None,
):
    return x.new_empty(x.shape).contiguous(memory_format=output_memory_format(x))


@_backend.register_fake("fcn_fast::resample_argmax", "fcn_fast::resample_argmax_triton")
def _resample_argmax_fake(
    x,
    scale_h,
    bias_h,
    scale_w,
    bias_w,
    clamp,
    out_h,
    out_w,
    out_dtype,
    return_confidence,
    backend=None,
):
    n = x.shape[0]
    labels = x.new_empty((n, out_h, out_w), dtype=out_dtype)
    return labels, x.new_empty((n if return_confidence else 0, out_h, out_w), dtype=torch.float32)


def _check_x(x, name, op):
    check_tensor(x, name, op, ndim=4)
    check_float(x, name, op)
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: {name} must have C, H, W >= 1, got shape {tuple(x.shape)}")


def _loss(
    x,
    target,
    geometry: Geometry,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    backend,
    op,
    reference_logits,
):
    """The fused loss on the kernel `backend` picks, or F.cross_entropy of reference_logits()."""
    expected = (x.shape[0], *geometry.out_size)
    check_target(
        target, expected, lambda: f"logits upsampled to {geometry.out_size}", x, ignore_index, op
    )
    check_loss_options(weight, x.shape[1], x, reduction, label_smoothing, op)
    backend = _backend.resolve_backend(backend, op, x.device)
    if geometry.traced:  # plain PyTorch, and the loss as the op's ONNX form writes it out
        loss, _, _ = cross_entropy(
            reference_logits(),
            target,
            kernel_weight(weight, x.dtype),
            ignore_index,
            REDUCTIONS[reduction],
            float(label_smoothing),
        )
        return as_loss_dtype(loss, x)
    try:  # an out-of-range target: one exception type on every backend (target_error)
        if backend == "reference":
            logits = reference_logits()
            return reference_loss(logits, target, weight, ignore_index, reduction, label_smoothing)
        loss, _, _ = _resample_cross_entropy(
            x,
            target,
            kernel_weight(weight, x.dtype),
            *geometry.resampler_args(),
            ignore_index,
            REDUCTIONS[reduction],
            float(label_smoothing),
            backend,
        )
    except (IndexError, ValueError) as error:
        raise target_error(error, op) from None
    return as_loss_dtype(loss, x)


def _argmax(x, geometry: Geometry, out_dtype, return_confidence, backend, op, reference_logits):
    """The fused argmax on the kernel `backend` picks, or reference_logits().argmax(1)."""
    if out_dtype not in (torch.int64, torch.uint8):
        raise TypeError(f"{op}: out_dtype must be torch.int64 or torch.uint8, got {out_dtype!r}")
    if out_dtype == torch.uint8 and x.shape[1] > 256:
        raise ValueError(f"{op}: out_dtype=torch.uint8 holds at most 256 classes, got {x.shape[1]}")
    if not isinstance(return_confidence, bool):
        raise TypeError(f"{op}: return_confidence must be a bool, got {return_confidence!r}")
    backend = _backend.resolve_backend(backend, op, x.device)
    if backend == "reference" or geometry.traced:
        with torch.no_grad():
            return argmax_reference(reference_logits(), out_dtype, return_confidence)
    labels, confidence = _resample_argmax(
        x,
        *geometry.resampler_args(),
        *geometry.out_size,
        out_dtype,
        return_confidence,
        backend,
    )
    return (labels, confidence) if return_confidence else labels


def upsample_cross_entropy(
    coarse: torch.Tensor,
    target: torch.Tensor,
    *,
    factor: int,
    kernel_size: int | None = None,
    crop=0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """The FCN final head and its loss, fused: exactly
    pixel_cross_entropy(upsample_skip(coarse, factor=..., kernel_size=..., crop=...,
    out_size=target.shape[-2:]), target, weight, ignore_index, reduction, label_smoothing).

    coarse: (N, C, h, w) class scores; target: (N, H, W) int64, int32 or uint8 (as
    pixel_cross_entropy). The upsampled (N, C, H, W) scores are never stored; the gradient
    flows to `coarse`.
    """
    op = "upsample_cross_entropy"
    _check_x(coarse, "coarse", op)
    check_tensor(target, "target", op, ndim=3)
    geometry, kernel_size = upsample_geometry(
        coarse.shape[2:], factor, kernel_size, crop, tuple(target.shape[1:]), op
    )
    return _loss(
        coarse,
        target,
        geometry,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        backend,
        op,
        lambda: upsample_skip_reference(
            coarse, None, factor, kernel_size, int_pair(crop, "crop", op), (0, 0), geometry.out_size
        ),
    )


def interpolate_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    align_corners: bool = False,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """The torchvision / DeepLab / SegFormer head and its loss, fused: exactly
    F.cross_entropy(F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
    align_corners=align_corners), target, weight, ...).

    logits: (N, C, h, w) low-resolution scores; target: (N, H, W) int64, int32 or uint8 (as
    pixel_cross_entropy). The upsampled (N, C, H, W) logits are never stored; the gradient
    flows to `logits`.
    """
    op = "interpolate_cross_entropy"
    _check_x(logits, "logits", op)
    check_tensor(target, "target", op, ndim=3)
    size = tuple(target.shape[1:])
    geometry = interpolate_geometry(logits.shape[2:], size, None, align_corners, op)
    return _loss(
        logits,
        target,
        geometry,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        backend,
        op,
        lambda: interpolate_add_reference(logits, None, size, None, align_corners),
    )


def upsample_argmax(
    coarse: torch.Tensor,
    *,
    factor: int,
    kernel_size: int | None = None,
    crop=0,
    out_size=None,
    out_dtype: torch.dtype = torch.int64,
    return_confidence: bool = False,
    backend: str = "auto",
):
    """upsample_skip(coarse, factor=..., kernel_size=..., crop=..., out_size=...).argmax(1),
    fused: labels (N, H, W) of out_dtype (torch.int64, or torch.uint8 for C <= 256), ties to
    the lowest class as torch.argmax. return_confidence=True returns (labels, confidence),
    the winning class's softmax probability in float32. Not differentiable."""
    op = "upsample_argmax"
    _check_x(coarse, "coarse", op)
    geometry, kernel_size = upsample_geometry(
        coarse.shape[2:], factor, kernel_size, crop, out_size, op
    )
    return _argmax(
        coarse,
        geometry,
        out_dtype,
        return_confidence,
        backend,
        op,
        lambda: upsample_skip_reference(
            coarse, None, factor, kernel_size, int_pair(crop, "crop", op), (0, 0), geometry.out_size
        ),
    )


def interpolate_argmax(
    x: torch.Tensor,
    *,
    size=None,
    scale_factor=None,
    align_corners: bool | None = False,
    recompute_scale_factor: bool | None = None,
    out_dtype: torch.dtype = torch.int64,
    return_confidence: bool = False,
    backend: str = "auto",
):
    """F.interpolate(x, size | scale_factor, mode="bilinear", align_corners,
    recompute_scale_factor).argmax(1), fused; out_dtype and return_confidence as
    upsample_argmax. Not differentiable."""
    op = "interpolate_argmax"
    _check_x(x, "x", op)
    geometry = interpolate_geometry(
        x.shape[2:], size, scale_factor, align_corners, op, recompute_scale_factor
    )
    return _argmax(
        x,
        geometry,
        out_dtype,
        return_confidence,
        backend,
        op,
        lambda: interpolate_add_reference(
            x, None, size, scale_factor, align_corners, recompute_scale_factor
        ),
    )

"""Loss modules: PixelCrossEntropyLoss, a drop-in nn.CrossEntropyLoss on pixel_cross_entropy,
and the fused head + loss modules UpsampleCrossEntropyLoss and InterpolateCrossEntropyLoss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import _reduction

from fcn_fast.ops import interpolate_cross_entropy, pixel_cross_entropy, upsample_cross_entropy


class PixelCrossEntropyLoss(nn.Module):
    """nn.CrossEntropyLoss with class-index targets, computed by fcn_fast.pixel_cross_entropy
    (which also takes int32 and uint8 targets).

    Same constructor arguments as nn.CrossEntropyLoss (size_average and reduce are
    its deprecated aliases of reduction), plus the keyword `backend`. `weight` is a
    buffer, so it follows .to() / .cuda() like the module's other state.
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _reduction.legacy_get_string(size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.backend = backend

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pixel_cross_entropy(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, backend={self.backend!r}"
        )


class _FusedHeadLoss(nn.Module):
    """F.cross_entropy's options (weight as a buffer) and `backend`, for the fused heads."""

    def __init__(self, weight, ignore_index, reduction, label_smoothing, backend):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.backend = backend

    def _options(self) -> dict:
        return dict(
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, backend={self.backend!r}"
        )


class UpsampleCrossEntropyLoss(_FusedHeadLoss):
    """The FCN head and its loss for any model: low-resolution scores in, full-resolution
    targets in, the loss of their fixed bilinear upsampling out, never storing it.

        criterion = UpsampleCrossEntropyLoss(factor=8, crop=31, ignore_index=255)
        loss = criterion(coarse_scores, labels)  # (N, C, h, w), (N, H, W) uint8 or int64

    = fcn_fast.upsample_cross_entropy(coarse, target, factor=..., kernel_size=..., crop=...,
    weight=..., ...), i.e. nn.CrossEntropyLoss of upsample_skip(coarse, ..., out_size=target's).
    """

    def __init__(
        self,
        factor: int,
        kernel_size: int | None = None,
        crop=0,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(weight, ignore_index, reduction, label_smoothing, backend)
        self.factor, self.kernel_size, self.crop = factor, kernel_size, crop

    def forward(self, coarse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return upsample_cross_entropy(
            coarse,
            target,
            factor=self.factor,
            kernel_size=self.kernel_size,
            crop=self.crop,
            **self._options(),
        )

    def extra_repr(self) -> str:
        return (
            f"factor={self.factor}, kernel_size={self.kernel_size}, crop={self.crop}, "
            + super().extra_repr()
        )


class InterpolateCrossEntropyLoss(_FusedHeadLoss):
    """The torchvision / DeepLab / SegFormer head and its loss for any model: logits at any
    lower resolution in, nn.CrossEntropyLoss of their bilinear F.interpolate to the targets'
    size out, never storing the upsampled logits.

        criterion = InterpolateCrossEntropyLoss(ignore_index=255)
        loss = criterion(model_logits, labels)  # (N, C, h, w), (N, H, W) uint8 or int64

    = fcn_fast.interpolate_cross_entropy(logits, target, align_corners=..., weight=..., ...).
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        align_corners: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(weight, ignore_index, reduction, label_smoothing, backend)
        self.align_corners = align_corners

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return interpolate_cross_entropy(
            logits, target, align_corners=self.align_corners, **self._options()
        )

    def extra_repr(self) -> str:
        return f"align_corners={self.align_corners}, " + super().extra_repr()

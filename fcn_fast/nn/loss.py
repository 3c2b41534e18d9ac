"""PixelCrossEntropyLoss: a drop-in nn.CrossEntropyLoss on the fused pixel_cross_entropy."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import _reduction

from fcn_fast.ops.pixel_cross_entropy import pixel_cross_entropy


class PixelCrossEntropyLoss(nn.Module):
    """nn.CrossEntropyLoss with class-index targets, computed by fcn_fast.pixel_cross_entropy.

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

"""Modules built on the fcn_fast ops."""

from fcn_fast.nn.loss import (
    InterpolateCrossEntropyLoss,
    PixelCrossEntropyLoss,
    UpsampleCrossEntropyLoss,
)

__all__ = ["InterpolateCrossEntropyLoss", "PixelCrossEntropyLoss", "UpsampleCrossEntropyLoss"]

"""Modules built on the fcn_fast ops."""

from fcn_fast.nn.loss import PixelCrossEntropyLoss

__all__ = ["PixelCrossEntropyLoss"]

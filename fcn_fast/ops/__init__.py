"""Public ops: argument checks, backend choice, and the call of the extension's op."""

from fcn_fast.ops.pixel_cross_entropy import pixel_cross_entropy
from fcn_fast.ops.resample_cross_entropy import (
    interpolate_argmax,
    interpolate_cross_entropy,
    upsample_argmax,
    upsample_cross_entropy,
)
from fcn_fast.ops.resample_skip import interpolate_add, upsample_skip

__all__ = [
    "interpolate_add",
    "interpolate_argmax",
    "interpolate_cross_entropy",
    "pixel_cross_entropy",
    "upsample_argmax",
    "upsample_cross_entropy",
    "upsample_skip",
]

"""Plain-PyTorch oracles of every op: the `reference` backend and what tests compare against."""

from fcn_fast.reference.pixel_cross_entropy import pixel_cross_entropy_reference
from fcn_fast.reference.resample_cross_entropy import argmax_reference
from fcn_fast.reference.resample_skip import (
    bilinear_kernel,
    bilinear_weight,
    interpolate_add_reference,
    transposed_conv_skip,
    upsample_skip_reference,
)

__all__ = [
    "argmax_reference",
    "bilinear_kernel",
    "bilinear_weight",
    "interpolate_add_reference",
    "pixel_cross_entropy_reference",
    "transposed_conv_skip",
    "upsample_skip_reference",
]

"""Plain-PyTorch oracles of every op: the `reference` backend and what tests compare against."""

from fcn_fast.reference.pixel_cross_entropy import pixel_cross_entropy_reference
from fcn_fast.reference.resample_skip import (
    bilinear_kernel,
    bilinear_weight,
    interpolate_add_reference,
    upsample_skip_reference,
)

__all__ = [
    "bilinear_kernel",
    "bilinear_weight",
    "interpolate_add_reference",
    "pixel_cross_entropy_reference",
    "upsample_skip_reference",
]

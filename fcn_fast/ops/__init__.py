"""Public ops: validation, backend choice, and the autograd-aware torch.library custom ops."""

from fcn_fast.ops.pixel_cross_entropy import pixel_cross_entropy
from fcn_fast.ops.resample_skip import interpolate_add, upsample_skip

__all__ = ["interpolate_add", "pixel_cross_entropy", "upsample_skip"]

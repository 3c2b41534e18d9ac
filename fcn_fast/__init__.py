"""fcn_fast: fused kernels for fully convolutional segmentation nets in PyTorch.

Importing never fails because a backend is missing; see available_backends().
"""

import fcn_fast._decompositions  # noqa: F401  (ATen forms of the ops, for torch.onnx.export)
import fcn_fast.triton  # noqa: F401  (registers the Triton kernels; imports no Triton)
from fcn_fast import nn
from fcn_fast._backend import BackendUnavailableError, available_backends
from fcn_fast._common import TargetOutOfRangeError
from fcn_fast.models import (
    FCN8s,
    FCN8sAtOnce,
    FCN16s,
    FCN32s,
    FCNAlexNet,
    FCNGoogLeNet,
)
from fcn_fast.ops import (
    interpolate_add,
    interpolate_argmax,
    interpolate_cross_entropy,
    pixel_cross_entropy,
    upsample_argmax,
    upsample_cross_entropy,
    upsample_skip,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "FCN8s",
    "FCN8sAtOnce",
    "FCN16s",
    "FCN32s",
    "FCNAlexNet",
    "FCNGoogLeNet",
    "TargetOutOfRangeError",
    "available_backends",
    "interpolate_add",
    "interpolate_argmax",
    "interpolate_cross_entropy",
    "nn",
    "pixel_cross_entropy",
    "upsample_argmax",
    "upsample_cross_entropy",
    "upsample_skip",
]

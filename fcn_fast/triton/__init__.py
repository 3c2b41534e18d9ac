"""The Triton kernels, registered as the `triton` backend of the extension's ops.

Each op of csrc/ops/ has a twin `<op>_triton` (its schema is there) that the op's router
calls for backend="triton"; this file registers their implementations. Registering does
not import Triton: a kernel module, and Triton with it, is imported on the first call, so
a TRITON_INTERPRET set before then still applies (the tests set it for CPU tensors).
"""

from __future__ import annotations

import torch

from fcn_fast import _backend


def _implements(qualname: str):
    """Registers a Python function as the kernel of `qualname` for every device (CPU tensors
    run under the interpreter); without the extension there is no op to register."""

    def register(fn):
        if _backend.extension_loaded():
            torch.library.impl(qualname, "CompositeExplicitAutograd")(fn)
        return fn

    return register


@_implements("fcn_fast::resample_skip_triton")
def _resample_skip(*args):
    from fcn_fast.triton.resample_skip import resample_skip_triton

    return resample_skip_triton(*args)


@_implements("fcn_fast::resample_skip_backward_triton")
def _resample_skip_backward(*args):
    from fcn_fast.triton.resample_skip import resample_skip_backward_triton

    return resample_skip_backward_triton(*args)


@_implements("fcn_fast::pixel_cross_entropy_triton")
def _pixel_cross_entropy(*args):
    from fcn_fast.triton.pixel_cross_entropy import pixel_cross_entropy_triton

    return pixel_cross_entropy_triton(*args)


@_implements("fcn_fast::pixel_cross_entropy_backward_triton")
def _pixel_cross_entropy_backward(*args):
    from fcn_fast.triton.pixel_cross_entropy import pixel_cross_entropy_backward_triton

    return pixel_cross_entropy_backward_triton(*args)


@_implements("fcn_fast::resample_cross_entropy_triton")
def _resample_cross_entropy(*args):
    from fcn_fast.triton.resample_cross_entropy import resample_cross_entropy_triton

    return resample_cross_entropy_triton(*args)


@_implements("fcn_fast::resample_cross_entropy_backward_triton")
def _resample_cross_entropy_backward(*args):
    from fcn_fast.triton.resample_cross_entropy import resample_cross_entropy_backward_triton

    return resample_cross_entropy_backward_triton(*args)


@_implements("fcn_fast::resample_argmax_triton")
def _resample_argmax(*args):
    from fcn_fast.triton.resample_cross_entropy import resample_argmax_triton

    return resample_argmax_triton(*args)

"""upsample_skip (FCN decoder step) and interpolate_add (FPN decoder step).

Both front doors check their arguments and map them onto one resampler (docs/design.md,
"The resampler"): out[Y, X] = the 4 bilinear taps of x at (Y * scale + bias), plus a skip
window. That is the extension's op fcn_fast::resample_skip; csrc/ops/resample_skip.cpp
holds its autograd and picks its kernel by backend: csrc/cpu/resample_skip.cpp,
csrc/cuda/resample_skip.cu, fcn_fast/triton/resample_skip.py. The `reference` backend
runs plain PyTorch (fcn_fast/reference/resample_skip.py) instead.
"""

from __future__ import annotations

import torch

from fcn_fast import _backend
from fcn_fast._common import output_memory_format
from fcn_fast.ops._checks import check_float, check_same, check_tensor, int_pair
from fcn_fast.ops._geometry import interpolate_geometry, upsample_geometry
from fcn_fast.reference.resample_skip import interpolate_add_reference, upsample_skip_reference

# csrc/ops/resample_skip.cpp: the kernel for each backend, and the autograd.
_resample_skip = _backend.extension_op("resample_skip")


@_backend.register_fake("fcn_fast::resample_skip", "fcn_fast::resample_skip_triton")
def _resample_skip_fake(
    x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, skip_y, skip_x, backend=None
):
    return x.new_empty((x.shape[0], x.shape[1], out_h, out_w)).contiguous(
        memory_format=output_memory_format(x)
    )


@_backend.register_fake(
    "fcn_fast::resample_skip_backward", "fcn_fast::resample_skip_backward_triton"
)
def _resample_skip_backward_fake(
    grad_out, in_h, in_w, scale_h, bias_h, scale_w, bias_w, clamp, backend=None
):
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], in_h, in_w))


def _check_inputs(x, skip, x_name, op):
    """The spatial sizes (H, W) of x and of skip (None without), after checking both."""
    check_tensor(x, x_name, op, ndim=4)
    check_float(x, x_name, op)
    shape = x.shape  # read once: each read builds a torch.Size, which tiny inputs notice
    # F.interpolate refuses these (and FCN's deconvolution a 0 x 0 weight); N = 0 it takes.
    if shape[1] < 1 or shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{op}: {x_name} must have C, H, W >= 1, got shape {tuple(shape)}")
    if skip is not None:
        check_tensor(skip, "skip", op, ndim=4)
        check_same(skip, x, "skip", x_name, op)
        skip_shape = skip.shape
        if skip_shape[0] != shape[0] or skip_shape[1] != shape[1]:
            raise ValueError(
                f"{op}: skip must have the batch and channel sizes of {x_name} "
                f"{tuple(shape[:2])}, got shape {tuple(skip_shape)}"
            )
        return (shape[2], shape[3]), (skip_shape[2], skip_shape[3])
    return (shape[2], shape[3]), None


def _run(x, skip, geometry, skip_crop, backend, op, reference):
    """The resampler on the kernel `backend` picks, or plain PyTorch for "reference"."""
    backend = _backend.resolve_backend(backend, op, x.device)
    if backend == "reference" or geometry.traced:
        return reference()
    return _resample_skip(
        x, skip, *geometry.resampler_args(), *geometry.out_size, *skip_crop, backend
    )


def upsample_skip(
    coarse: torch.Tensor,
    skip: torch.Tensor | None = None,
    *,
    factor: int,
    kernel_size: int | None = None,
    crop=0,
    skip_crop=0,
    out_size=None,
    backend: str = "auto",
) -> torch.Tensor:
    """FCN decoder step: fixed bilinear ConvTranspose2d of `coarse`, cropped, plus a skip window.

    out[n, c, y, x] = U[n, c, y + crop_y, x + crop_x] + skip[n, c, y + skip_y, x + skip_x]
    where U = conv_transpose2d(coarse, bilinear filter on the channel diagonal,
    stride=factor) has size ((h + 1) * factor, (w + 1) * factor) for kernel 2 * factor
    (one less for kernel 2 * factor - 1, FCN-AlexNet's k63 s32). out_size defaults to
    everything right of the crop. Taps outside `coarse` count as zero, as in the
    deconvolution (this is not F.interpolate: it darkens a band at the border).
    """
    op = "upsample_skip"
    in_size, skip_size = _check_inputs(coarse, skip, "coarse", op)
    geometry, kernel_size = upsample_geometry(in_size, factor, kernel_size, crop, out_size, op)
    crop, skip_crop = int_pair(crop, "crop", op), int_pair(skip_crop, "skip_crop", op)
    _check_skip_window(skip_size, skip_crop, geometry.out_size, op)
    return _run(
        coarse,
        skip,
        geometry,
        skip_crop,
        backend,
        op,
        lambda: upsample_skip_reference(
            coarse, skip, factor, kernel_size, crop, skip_crop, geometry.out_size
        ),
    )


def _check_skip_window(skip_size, skip_crop, out_size, op):
    if skip_size is None:
        return
    hs, ws = skip_size
    if skip_crop[0] + out_size[0] > hs or skip_crop[1] + out_size[1] > ws:
        raise ValueError(
            f"{op}: the skip window at skip_crop {skip_crop} of size {out_size} does not fit "
            f"in skip of spatial size {(hs, ws)}"
        )


def interpolate_add(
    x: torch.Tensor,
    skip: torch.Tensor | None = None,
    *,
    size=None,
    scale_factor=None,
    align_corners: bool | None = False,
    recompute_scale_factor: bool | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """FPN decoder step: F.interpolate(x, size | scale_factor, "bilinear", align_corners,
    recompute_scale_factor) + skip.

    Same output-size and source-index rules as F.interpolate (scale_factor is used
    for the index mapping when given, unless recompute_scale_factor, as PyTorch does);
    `skip` must have the output's shape exactly (no broadcasting).
    """
    op = "interpolate_add"
    in_size, skip_size = _check_inputs(x, skip, "x", op)
    geometry = interpolate_geometry(
        in_size, size, scale_factor, align_corners, op, recompute_scale_factor
    )
    if skip_size is not None and skip_size != geometry.out_size:
        raise ValueError(
            f"{op}: skip must have the output's spatial size {geometry.out_size}, got {skip_size}"
        )
    return _run(
        x,
        skip,
        geometry,
        (0, 0),
        backend,
        op,
        lambda: interpolate_add_reference(
            x, skip, size, scale_factor, align_corners, recompute_scale_factor
        ),
    )

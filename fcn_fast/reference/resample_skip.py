"""Plain-PyTorch FCN decoder step and FPN decoder step, written the way users write them today.

`upsample_skip_reference` is the FCN deconvolution literally: a dense
`conv_transpose2d` with the fixed bilinear filter on the channel diagonal,
a slice, an add. `interpolate_add_reference` is `F.interpolate(...) + skip`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fcn_fast._common import output_memory_format


def bilinear_kernel(kernel_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The k x k bilinear filter of FCN's upsampling layers (Caffe's `bilinear` filler)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(taps, taps).to(dtype=dtype, device=device)


def bilinear_weight(
    channels: int, kernel_size: int, dtype=torch.float32, device=None
) -> torch.Tensor:
    """The (C, C, k, k) ConvTranspose2d weight FCN uses: the bilinear filter on the diagonal."""
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    weight[index, index] = bilinear_kernel(kernel_size, dtype, device)
    return weight


def upsample_skip_reference(
    coarse: torch.Tensor,
    skip: torch.Tensor | None,
    factor: int,
    kernel_size: int,
    crop: tuple[int, int],
    skip_crop: tuple[int, int],
    out_size: tuple[int, int],
) -> torch.Tensor:
    """out = conv_transpose2d(coarse, bilinear, stride=factor)[crop window] + skip[skip window]."""
    weight = bilinear_weight(coarse.shape[1], kernel_size, coarse.dtype, coarse.device)
    return transposed_conv_skip(coarse, skip, weight, factor, crop, skip_crop, out_size)


def transposed_conv_skip(
    coarse: torch.Tensor,
    skip: torch.Tensor | None,
    weight: torch.Tensor,
    stride: int,
    crop: tuple[int, int],
    skip_crop: tuple[int, int],
    out_size: tuple[int, int],
) -> torch.Tensor:
    """out = conv_transpose2d(coarse, weight, stride)[crop window] + skip[skip window], for any
    weight (a learned upsampling layer too)."""
    up = F.conv_transpose2d(coarse, weight, stride=stride)
    (cy, cx), (height, width) = crop, out_size
    out = up[:, :, cy : cy + height, cx : cx + width]
    if skip is None:
        return out.contiguous(memory_format=output_memory_format(coarse))
    sy, sx = skip_crop
    return out + skip[:, :, sy : sy + height, sx : sx + width]


def interpolate_add_reference(
    x: torch.Tensor,
    skip: torch.Tensor | None,
    size=None,
    scale_factor=None,
    align_corners: bool | None = False,
    recompute_scale_factor: bool | None = None,
) -> torch.Tensor:
    """F.interpolate(x, size | scale_factor, mode="bilinear", align_corners,
    recompute_scale_factor) + skip."""
    out = F.interpolate(
        x,
        size=size,
        scale_factor=scale_factor,
        mode="bilinear",
        align_corners=bool(align_corners),
        recompute_scale_factor=recompute_scale_factor,
    )
    return out if skip is None else out + skip

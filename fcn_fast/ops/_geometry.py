"""The two front doors' arguments mapped onto the resampler (docs/design.md, "The resampler").

Along each axis, output index Y samples the input at s = Y * scale + bias (2 taps). A
Geometry is that pair per axis, the boundary rule, and the output size; upsample_skip and
the fused upsample_* heads build it from FCN's deconvolution arguments, interpolate_add and
the interpolate_* heads from F.interpolate's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from fcn_fast.ops._checks import int_pair


class Geometry(NamedTuple):
    out_size: tuple[int, int]
    scale: tuple[float, float]  # (h, w)
    bias: tuple[float, float]
    clamp: bool  # F.interpolate's boundary; else taps outside the input count as zero
    # The index scale is a function of sizes that torch.export / torch.compile trace as
    # symbolic: the op's float arguments would bake in the traced sizes' value, so the front
    # doors run plain PyTorch (F.interpolate) instead, which stays exact at every size.
    traced: bool = False

    def resampler_args(self) -> tuple:
        """The op arguments (scale_h, bias_h, scale_w, bias_w, clamp)."""
        return self.scale[0], self.bias[0], self.scale[1], self.bias[1], self.clamp


def upsample_geometry(in_size, factor, kernel_size, crop, out_size, op) -> tuple[Geometry, int]:
    """FCN's fixed bilinear ConvTranspose2d (kernel 2f or 2f - 1, stride f) cropped at `crop`;
    out_size None: everything right of the crop. Returns (geometry, kernel_size)."""
    if not isinstance(factor, int) or isinstance(factor, bool):
        raise TypeError(f"{op}: factor must be an int, got {factor!r}")
    if factor < 1:
        raise ValueError(f"{op}: factor must be >= 1, got {factor}")
    if kernel_size is None:
        kernel_size = 2 * factor
    if kernel_size not in (2 * factor, 2 * factor - 1):
        raise ValueError(
            f"{op}: kernel_size must be 2*factor ({2 * factor}) or 2*factor-1 "
            f"({2 * factor - 1}) for factor={factor}, got {kernel_size!r}"
        )
    crop = int_pair(crop, "crop", op)
    h, w = in_size
    full = ((h - 1) * factor + kernel_size, (w - 1) * factor + kernel_size)
    if crop[0] >= full[0] or crop[1] >= full[1]:
        raise ValueError(
            f"{op}: crop {crop} must be smaller than the upsampled size {full} "
            f"(coarse {h}x{w}, factor {factor}, kernel_size {kernel_size})"
        )
    if out_size is None:
        out_size = (full[0] - crop[0], full[1] - crop[1])
    out_size = int_pair(out_size, "out_size", op)
    if crop[0] + out_size[0] > full[0] or crop[1] + out_size[1] > full[1]:
        raise ValueError(
            f"{op}: out_size {out_size} at crop {crop} exceeds the upsampled size {full}; "
            f"at most {(full[0] - crop[0], full[1] - crop[1])}"
        )
    # s = Y / f + (c + 0.5) / f - 1 for kernel 2f, (c + 1) / f - 1 for 2f - 1.
    shift = 0.5 if kernel_size == 2 * factor else 1.0
    bias = tuple((c + shift) / factor - 1.0 for c in crop)
    return Geometry(out_size, (1.0 / factor, 1.0 / factor), bias, False), kernel_size


def interpolate_geometry(
    in_size, size, scale_factor, align_corners, op, recompute_scale_factor=None
) -> Geometry:
    """F.interpolate(mode="bilinear")'s output size and source-index rules (align_corners None
    is its default, False; recompute_scale_factor True maps indices by the sizes alone)."""
    # Written out per axis, without generators: every call of an op pays for this.
    if align_corners is None:
        align_corners = False
    if align_corners is not True and align_corners is not False:
        raise TypeError(f"{op}: align_corners must be a bool, got {align_corners!r}")
    if recompute_scale_factor not in (None, True, False):
        raise TypeError(
            f"{op}: recompute_scale_factor must be a bool or None, got {recompute_scale_factor!r}"
        )
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: give exactly one of size or scale_factor")
    h, w = in_size
    if size is not None:
        if recompute_scale_factor:
            raise ValueError(
                f"{op}: recompute_scale_factor is not meaningful with an explicit size"
            )
        out_h, out_w = int_pair(size, "size", op, minimum=1)
        fh = fw = None
    else:
        fh, fw = _scale_pair(scale_factor, op)
        out_h, out_w = int(h * fh), int(w * fw)  # floor, as PyTorch
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"{op}: scale_factor {scale_factor!r} gives an empty output {(out_h, out_w)}"
            )
        if recompute_scale_factor:
            fh = fw = None
    if align_corners:
        scale_h = (h - 1) / (out_h - 1) if out_h > 1 else 0.0
        scale_w = (w - 1) / (out_w - 1) if out_w > 1 else 0.0
        return Geometry(
            (out_h, out_w), (scale_h, scale_w), (0.0, 0.0), True, _symbolic(scale_h, scale_w)
        )
    # PyTorch maps indices with the given scale factor when there is one, else in / out; but
    # an axis whose size does not change is copied whatever the factor (its CPU kernels'
    # rule per axis, e.g. scale_factor 1.4 on 2 columns; its CUDA kernel copies only when
    # both axes keep their size).
    scale_h = 1.0 / fh if fh is not None and out_h != h else h / out_h
    scale_w = 1.0 / fw if fw is not None and out_w != w else w / out_w
    return Geometry(
        (out_h, out_w),
        (scale_h, scale_w),
        (0.5 * scale_h - 0.5, 0.5 * scale_w - 0.5),
        True,
        _symbolic(scale_h, scale_w),
    )


def _symbolic(*values) -> bool:
    return type(values[0]) is not float or type(values[1]) is not float


def _scale_pair(scale_factor, op) -> tuple[float, float]:
    if (type(scale_factor) is float or type(scale_factor) is int) and 0 < scale_factor < math.inf:
        return scale_factor, scale_factor
    pair = isinstance(scale_factor, (tuple, list))
    factors = tuple(scale_factor) if pair else (scale_factor, scale_factor)
    if len(factors) != 2 or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors
    ):
        raise TypeError(f"{op}: scale_factor must be a number or a pair, got {scale_factor!r}")
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"{op}: scale_factor must be positive and finite, got {scale_factor!r}")
    return factors

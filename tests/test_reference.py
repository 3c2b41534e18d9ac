"""The reference backend against independent definitions of the same math.

FCN rows: the literal deconvolution is the reference; here it is checked against
1-D interpolation matrices built directly from the zero-boundary tap rule of docs/design.md
2.1 (so the (scale, bias) mapping the kernels use is checked too). FPN rows: the
clamp-boundary matrices against F.interpolate. Also the bilinear filter itself.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import fcn_fast
from fcn_fast.reference import bilinear_kernel, bilinear_weight


def interpolation_matrix(out_size, in_size, scale, bias, clamp):
    """A[Y, i]: weight of input i in output Y, written from the tap rule of docs/design.md."""
    a = torch.zeros(out_size, in_size, dtype=torch.float64)
    for y in range(out_size):
        s = y * scale + bias
        if clamp:
            s = max(s, 0.0)
            i0 = min(int(math.floor(s)), in_size - 1)
            i1 = min(i0 + 1, in_size - 1)
            lam = min(max(s - i0, 0.0), 1.0)
        else:
            i0 = int(math.floor(s))
            i1 = i0 + 1
            lam = s - i0
        for i, w in ((i0, 1 - lam), (i1, lam)):
            if 0 <= i < in_size:
                a[y, i] += w
    return a


def separable(x, a_rows, a_cols):
    return torch.einsum("yi,ncij,xj->ncyx", a_rows, x, a_cols)


@pytest.mark.parametrize("factor", [1, 2, 3, 8, 16, 32])
@pytest.mark.parametrize("odd", [False, True])
def test_fcn_deconvolution_equals_tap_rule(factor, odd):
    k = 2 * factor - 1 if odd else 2 * factor
    h, w = 3, 4
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    skip = torch.randn(2, 3, 80 * factor, 80 * factor, dtype=torch.float64)
    full = ((h - 1) * factor + k, (w - 1) * factor + k)
    crop = (factor // 2 + 1, factor - 1) if full[0] > factor else (0, 0)
    out = (full[0] - crop[0], full[1] - crop[1])
    ref = fcn_fast.upsample_skip(
        x, skip, factor=factor, kernel_size=k, crop=crop, skip_crop=(2, 3), backend="reference"
    )
    shift = 1.0 if odd else 0.5
    rows = interpolation_matrix(out[0], h, 1 / factor, (crop[0] + shift) / factor - 1, False)
    cols = interpolation_matrix(out[1], w, 1 / factor, (crop[1] + shift) / factor - 1, False)
    expected = separable(x, rows, cols) + skip[:, :, 2 : 2 + out[0], 3 : 3 + out[1]]
    torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "size,align_corners",
    [((7, 9), False), ((13, 4), True), ((1, 1), False), ((1, 3), True), ((2, 3), False)],
)
def test_interpolate_equals_clamp_tap_rule(size, align_corners):
    h, w = 5, 6
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    ref = fcn_fast.interpolate_add(x, size=size, align_corners=align_corners, backend="reference")
    mats = []
    for n, o in zip((h, w), size):
        if align_corners:
            scale, bias = ((n - 1) / (o - 1) if o > 1 else 0.0), 0.0
        else:
            scale = n / o
            bias = 0.5 * scale - 0.5
        mats.append(interpolation_matrix(o, n, scale, bias, True))
    torch.testing.assert_close(ref, separable(x, *mats), rtol=1e-12, atol=1e-12)


def test_bilinear_filter_values():
    # Caffe's bilinear filler for k=4 (factor 2): taps 1/4, 3/4, 3/4, 1/4 per axis.
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)
    torch.testing.assert_close(bilinear_kernel(4, torch.float64), torch.outer(taps, taps))
    # k=3 (odd, factor 2): 1/2, 1, 1/2.
    taps = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(bilinear_kernel(3, torch.float64), torch.outer(taps, taps))
    weight = bilinear_weight(3, 4)
    assert weight.shape == (3, 3, 4, 4)
    assert weight[0, 1].abs().sum() == 0 and weight[2, 2].sum() > 0


def test_fcn_rule_is_not_interpolate():
    """The zero boundary darkens the border: the FCN step differs from F.interpolate there."""
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    out = fcn_fast.upsample_skip(x, factor=2, backend="reference")
    interp = F.interpolate(x, size=out.shape[2:], mode="bilinear", align_corners=False)
    assert out[0, 0, 0, 0] < 0.75
    torch.testing.assert_close(interp, torch.ones_like(interp))

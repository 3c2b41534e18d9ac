"""Checks specific to the Triton resample-skip kernels (op-level tests: test_resample_skip.py).

The exact float64 split of scale/bias, and backward tilings (one class per tile as on a
GPU, tiny row and column tiles, several tiles per persistent program) that the default
block choice does not reach at test sizes, against the autograd adjoint of plain PyTorch
in float64.
"""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from backends import backend_device
from random_geometry import random_resampling

from fcn_fast.reference.resample_skip import bilinear_weight

# The kernels run on the GPU where there is one (backend_device("triton")); whole module, so
# that a new test is selected too (test_split3_is_exact, on the host, costs nothing there).
pytestmark = pytest.mark.gpu

triton_rs = pytest.importorskip("fcn_fast.triton.resample_skip")
split3 = pytest.importorskip("fcn_fast.triton._launch").split3


@pytest.mark.parametrize(
    "v", [1 / 3, 1 / 29, 2 / 599, 2.5 / 3 - 1.0, 1 / 0.6, 0.5 / 0.6 - 0.5, -1e-3 / 7]
)
def test_split3_is_exact(v):
    parts = split3(v)
    assert all(float(np.float32(p)) == p for p in parts)  # each survives the fp32 argument
    assert float(np.float32(v)) != v  # a single float32 would not do
    hi, mid, lo = (np.float64(p) for p in parts)
    assert (hi + mid) + lo == v  # the kernel's float64 rebuild, in its order


# (scale_h, bias_h, scale_w, bias_w, clamp, in_size, out_size) and how to get the reference.
FCN = (1 / 3, 2 / 3 - 1.0, 1 / 3, 3 / 3 - 1.0, False, (4, 5), (11, 13))  # k=5, crop=(1, 2)
INTERP = (7 / 4, 0.5 * 7 / 4 - 0.5, 5 / 12, 0.5 * 5 / 12 - 0.5, True, (7, 5), (4, 12))
CORNERS = (0.0, 0.0, 4 / 8, 0.0, True, (3, 5), (1, 9))  # align_corners, out height 1


def _reference_grad(case, grad_out):
    *_, clamp, in_size, out_size = case
    x = torch.randn(*grad_out.shape[:2], *in_size, dtype=torch.float64, requires_grad=True)
    if case is FCN:
        up = F.conv_transpose2d(x, bilinear_weight(x.shape[1], 5, torch.float64), stride=3)
        out = up[:, :, 1 : 1 + out_size[0], 2 : 2 + out_size[1]]
    else:
        out = F.interpolate(x, size=out_size, mode="bilinear", align_corners=case is CORNERS)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return grad


@pytest.mark.parametrize("case", [FCN, INTERP, CORNERS], ids=["fcn", "interp", "corners"])
# (CB classes, BI rows, BJ >= nj columns per tile, BX output columns read, nj)
@pytest.mark.parametrize("config", [None, (1, 2, 2, 16, 1), (2, 4, 2, 32, 2), (1, 1, 4, 64, 3)])
def test_backward_tilings(case, config):
    device = backend_device("triton")
    *params, _, out_size = case
    grad_out = torch.randn(1, 2, *out_size, dtype=torch.float64)
    expected = _reference_grad(case, grad_out)
    # A transposed view: every tiling also reads non-unit strides.
    g = grad_out.transpose(2, 3).contiguous().transpose(2, 3).to(device)
    if config is not None:
        config = triton_rs.BackwardConfig(*config)
    got = triton_rs.resample_skip_backward_triton(g, *expected.shape[2:], *params, _config=config)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)


def test_forward_zero_boundary_masks_outside_taps():
    # Outside taps have weight 0; multiplying an inf by it would give NaN.
    device = backend_device("triton")
    x = torch.full((1, 1, 3, 3), float("inf"), device=device)
    out = triton_rs.resample_skip_triton(x, None, 0.5, -0.75, 0.5, -0.75, False, 8, 8, 0, 0)
    assert not out.isnan().any()
    assert out.isinf().all()


def test_forward_row_walk_random_geometries():
    """The NCHW forward walks bands of rows keeping two blended input rows: random geometries
    (strong down- and upsampling: i0 jumps and long runs; both boundaries; bands of 16+ rows
    that start mid-run; trips of rows past a band's end) with a skip window, non-contiguous
    x, in float64 against PyTorch."""
    device = backend_device("triton")
    rng = random.Random(2411)
    for case in range(60):
        r = random_resampling(rng, most_in=600, most_out=3000, longest=120)
        (h, w), (H, W) = r.in_size, r.out_size
        N, C = rng.randint(1, 2), rng.randint(1, 3)
        x = torch.randn(N, C, w, h, dtype=torch.float64).transpose(2, 3)  # strided
        sy, sx = rng.randint(0, 3), rng.randint(0, 3)
        skip = torch.randn(N, C, H + sy + rng.randint(0, 2), W + sx + 1, dtype=torch.float64)
        expected = r.reference(x) + skip[:, :, sy : sy + H, sx : sx + W]
        g = r.geometry
        got = triton_rs.resample_skip_triton(
            x.to(device), skip.to(device), *r.scale_bias(), g.clamp, H, W, sy, sx
        )
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12, msg=f"{case} {r}")

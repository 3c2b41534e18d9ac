"""The public resampling ops over random geometries (tests/random_geometry.py), on the cpu
backend and the Triton one (interpreted here: fewer and smaller cases), in float64 against
plain PyTorch: forward and gradient, skip windows, class weights of any sign, all three
reductions, both memory layouts. The CUDA kernels get the same sweeps through the emulation
(tests/test_cuda_emulation.py)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device
from random_geometry import random_class_weights, random_resampling

import fcn_fast

pytestmark = pytest.mark.filterwarnings(  # the Triton interpreter runs masked lanes in numpy
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
)

# (geometries, most input pixels, most output pixels, longest axis) per backend
BUDGET = {"cpu": (300, 2048, 4096, 400), "triton": (12, 96, 400, 60)}
REDUCTIONS = ("none", "mean", "sum")


@pytest.fixture(params=["cpu", "triton"])
def sweep(request):
    backend = request.param
    device = backend_device(backend)
    count, most_in, most_out, longest = BUDGET[backend]
    rng = random.Random(2300 + len(request.node.name))

    def geometries():
        for case in range(count):
            yield case, random_resampling(rng, most_in, most_out, longest)

    return backend, device, rng, geometries


def _layout(rng, x):
    kind = rng.choice(["contiguous", "channels_last", "strided"])
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other column of a wider tensor
        wide = torch.randn(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _resample(r, x, skip, backend):
    if r.kind == "upsample":
        kw = r.kwargs
        return fcn_fast.upsample_skip(
            x, skip, factor=kw["factor"], kernel_size=kw["kernel_size"], crop=kw["crop"],
            out_size=kw["out_size"], backend=backend,
        )  # fmt: skip
    return fcn_fast.interpolate_add(x, skip, **r.kwargs, backend=backend)


def _close(got, want, what, r, scale=1.0):
    atol = 1e-10 * scale * max(1.0, want.nan_to_num().abs().max().item())
    torch.testing.assert_close(
        got, want, rtol=1e-9, atol=atol, equal_nan=True, msg=lambda m: f"{what} of {r}: {m}"
    )


def test_resample_skip(sweep):
    backend, device, rng, geometries = sweep
    for _, r in geometries():
        N, C = rng.randint(1, 2), rng.randint(1, 3)
        (h, w), (H, W) = r.in_size, r.out_size
        x = _layout(rng, torch.randn(N, C, h, w, dtype=torch.float64, device=device))
        skip = torch.randn(N, C, H, W, dtype=torch.float64, device=device)
        skip = _layout(rng, skip) if rng.random() < 0.7 else None
        xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = _resample(r, xf, skip, backend)
        want = r.reference(xr) + (0 if skip is None else skip)
        _close(got, want, "output", r)
        upstream = torch.randn_like(want)
        (gf,) = torch.autograd.grad(got, xf, upstream)
        (gr,) = torch.autograd.grad(want, xr, upstream)
        _close(gf, gr, "gradient", r)


def _fused_loss(r, x, target, backend, **ce):
    if r.kind == "upsample":
        kw = r.kwargs
        return fcn_fast.upsample_cross_entropy(
            x, target, factor=kw["factor"], kernel_size=kw["kernel_size"], crop=kw["crop"],
            backend=backend, **ce,
        )  # fmt: skip
    return fcn_fast.interpolate_cross_entropy(
        x, target, align_corners=r.kwargs["align_corners"], backend=backend, **ce
    )


def test_fused_loss(sweep):
    """Weights of any sign, the all-ignored batch, every reduction; the mean's tolerance grows
    with its condition number sum |w[t]| / |sum w[t]| (mixed-sign weights can nearly cancel)."""
    backend, device, rng, geometries = sweep
    for _, r in geometries():
        if "scale_factor" in r.kwargs:  # the fused heads take the target's size
            r = type(r).of("interpolate", r.in_size, size=r.out_size, **{
                "align_corners": r.kwargs["align_corners"]})  # fmt: skip
        (h, w), (H, W) = r.in_size, r.out_size
        N, C = rng.randint(1, 2), rng.choice([1, 2, 3, 5, 21])
        if C * H * W > 8000:
            C = 2
        x = _layout(rng, torch.randn(N, C, h, w, dtype=torch.float64, device=device) * 2)
        target = torch.randint(0, C, (N, H, W), device=device)
        target[torch.rand(N, H, W, device=device) < rng.choice([0.0, 0.2, 1.0])] = -100
        weight = random_class_weights(rng, C)
        weight = None if weight is None else weight.to(device)
        ce = dict(
            weight=weight,
            ignore_index=-100,
            reduction=rng.choice(REDUCTIONS),
            label_smoothing=rng.choice([0.0, 0.1, 0.6]),
        )
        xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = _fused_loss(r, xf, target, backend, **ce)
        want = F.cross_entropy(r.reference(xr), target, **ce)
        w_t = torch.ones(C, dtype=torch.float64) if weight is None else weight.cpu()
        counted = w_t[target.cpu()[target.cpu() != -100]]
        scale = 1.0
        if ce["reduction"] == "mean" and counted.numel() and counted.sum() != 0:
            scale = (counted.abs().sum() / counted.sum().abs()).item()
        described = f"{r} N{N} C{C} {ce}"
        _close(got, want, "loss", described, scale)
        upstream = torch.rand_like(want) + 0.5
        (gf,) = torch.autograd.grad(got, xf, upstream)
        (gr,) = torch.autograd.grad(want, xr, upstream)
        _close(gf, gr, "gradient", described, scale)


def test_fused_argmax(sweep):
    backend, device, rng, geometries = sweep
    for _, r in geometries():
        N, C = rng.randint(1, 2), rng.choice([1, 2, 5, 21])
        (h, w) = r.in_size
        x = _layout(rng, torch.randn(N, C, h, w, dtype=torch.float64, device=device))
        if r.kind == "upsample":
            kw = r.kwargs
            labels, conf = fcn_fast.upsample_argmax(
                x, factor=kw["factor"], kernel_size=kw["kernel_size"], crop=kw["crop"],
                out_size=kw["out_size"], return_confidence=True, backend=backend,
            )  # fmt: skip
        else:
            labels, conf = fcn_fast.interpolate_argmax(
                x, **r.kwargs, return_confidence=True, backend=backend
            )
        z = r.reference(x)
        # Within rounding of the maximum (exact ties are rounded differently by the two).
        chosen = z.gather(1, labels[:, None])
        assert (chosen >= z.max(1, keepdim=True).values - 1e-9).all(), f"labels of {r}"
        _close(conf.double(), torch.softmax(z, 1).max(1).values, "confidence", r, 1e4)

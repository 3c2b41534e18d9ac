"""Empty batches and empty spatial sizes, on every backend, against what PyTorch gives.

An empty batch is ordinary (the last batch of a sharded loader, a filtered batch): every op
gives what the plain-PyTorch composition gives for N = 0 (mean: NaN, sum: 0, none: an empty
tensor; gradients of the input's shape), and the same for H = 0 or W = 0 where PyTorch takes
them; where PyTorch raises, a ValueError naming the argument. (It killed the process with a
SIGFPE on the cpu backend's one-pass fused head.) Under the Triton interpreter, every launch
is checked for a grid of at least one program.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device

import fcn_fast
from fcn_fast.reference import upsample_skip_reference

pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
)

BACKENDS = ("reference", "cpu", "cuda", "triton")
REDUCTIONS = ("mean", "sum", "none")


@pytest.fixture(params=BACKENDS)
def on(request, monkeypatch):
    """(backend, device); Triton launches are checked for empty grids."""
    backend = request.param
    device = torch.device("cpu") if backend == "reference" else backend_device(backend)
    if backend == "triton" and device.type == "cpu":
        from triton.runtime import interpreter

        run = interpreter.InterpretedFunction.run

        def checked_run(self, *args, grid, **kwargs):
            dims = grid(kwargs) if callable(grid) else grid
            assert all(int(d) >= 1 for d in dims), f"a Triton launch with grid {dims}"
            return run(self, *args, grid=grid, **kwargs)

        monkeypatch.setattr(interpreter.InterpretedFunction, "run", checked_run)
    return backend, device


def _same(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (got, want)
    torch.testing.assert_close(got, want, equal_nan=True)


def _loss_and_grad(fn, x):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def _check_loss(fused, unfused, x):
    got, got_grad = _loss_and_grad(fused, x)
    want, want_grad = _loss_and_grad(unfused, x)
    _same(got, want)
    _same(got_grad, want_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "shape", [(0, 5, 7, 9), (2, 5, 0, 9), (2, 5, 7, 0), (0, 5), (0, 5, 4), (2, 3, 0)]
)
def test_pixel_cross_entropy(on, reduction, shape):
    backend, device = on
    x = torch.randn(shape, dtype=torch.float64, device=device)
    target = torch.zeros(shape[:1] + shape[2:], dtype=torch.long, device=device)
    w = torch.rand(shape[1], dtype=torch.float64, device=device) + 0.5
    for weight, eps in ((None, 0.0), (w, 0.1)):
        ce = dict(weight=weight, reduction=reduction, label_smoothing=eps)
        _check_loss(
            lambda t, ce=ce: fcn_fast.pixel_cross_entropy(t, target, backend=backend, **ce),
            lambda t, ce=ce: F.cross_entropy(t, target, **ce),
            x,
        )
    module = fcn_fast.nn.PixelCrossEntropyLoss(reduction=reduction, backend=backend)
    _check_loss(
        lambda t: module(t, target), lambda t: F.cross_entropy(t, target, reduction=reduction), x
    )


def _upsample_logits(x, factor, crop, out_size):
    return upsample_skip_reference(x, None, factor, 2 * factor, (crop, crop), (0, 0), out_size)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "x_shape,out",
    [((0, 5, 7, 9), (29, 37)), ((0, 3, 2, 2), (8, 8)), ((2, 3, 4, 4), (0, 9))],
    ids=["batch-29x37", "batch-one-pass", "no-rows"],
)
def test_upsample_cross_entropy(on, reduction, x_shape, out):
    """The FCN head accepts any crop window, an empty one too (as the deconvolution's slice);
    N = 0 at 2x2 -> 8x8 takes the cpu backend's one-pass form (C h w <= H W)."""
    backend, device = on
    x = torch.randn(x_shape, dtype=torch.float64, device=device)
    target = torch.zeros(x_shape[0], *out, dtype=torch.long, device=device)
    ce = dict(reduction=reduction, label_smoothing=0.1)
    _check_loss(
        lambda t: fcn_fast.upsample_cross_entropy(
            t, target, factor=4, crop=1, backend=backend, **ce
        ),
        lambda t: F.cross_entropy(_upsample_logits(t, 4, 1, out), target, **ce),
        x,
    )
    module = fcn_fast.nn.UpsampleCrossEntropyLoss(
        factor=4, crop=1, reduction=reduction, backend=backend
    )
    _check_loss(
        lambda t: module(t, target),
        lambda t: F.cross_entropy(_upsample_logits(t, 4, 1, out), target, reduction=reduction),
        x,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("x_shape,out", [((0, 5, 7, 9), (29, 37)), ((0, 3, 2, 2), (8, 8))])
def test_interpolate_cross_entropy(on, reduction, x_shape, out):
    backend, device = on
    x = torch.randn(x_shape, dtype=torch.float64, device=device)
    target = torch.zeros(0, *out, dtype=torch.long, device=device)
    weight = torch.rand(x_shape[1], dtype=torch.float64, device=device)
    ce = dict(weight=weight, reduction=reduction)

    def unfused(t):
        return F.cross_entropy(F.interpolate(t, size=out, mode="bilinear"), target, **ce)

    _check_loss(
        lambda t: fcn_fast.interpolate_cross_entropy(t, target, backend=backend, **ce), unfused, x
    )
    module = fcn_fast.nn.InterpolateCrossEntropyLoss(
        weight=weight, reduction=reduction, backend=backend
    )
    _check_loss(lambda t: module(t, target), unfused, x)


@pytest.mark.parametrize("with_skip", [False, True])
def test_resamplers(on, with_skip):
    backend, device = on
    x = torch.randn(0, 3, 5, 6, dtype=torch.float64, device=device)
    skip = torch.randn(0, 3, 11, 13, dtype=torch.float64, device=device) if with_skip else None
    _check_loss(
        lambda t: fcn_fast.interpolate_add(t, skip, size=(11, 13), backend=backend),
        lambda t: F.interpolate(t, size=(11, 13), mode="bilinear") + (0 if skip is None else skip),
        x,
    )
    skip = torch.randn(0, 3, 16, 16, dtype=torch.float64, device=device) if with_skip else None
    _check_loss(
        lambda t: fcn_fast.upsample_skip(t, skip, factor=2, skip_crop=1, backend=backend),
        lambda t: (
            _upsample_logits(t, 2, 0, (12, 14)) + (0 if skip is None else skip[:, :, 1:13, 1:15])
        ),
        x,
    )
    # An empty output window of the deconvolution: its slice is empty too.
    y = fcn_fast.upsample_skip(x[:0], factor=2, out_size=(0, 5), backend=backend)
    assert y.shape == (0, 3, 0, 5)


def test_argmax(on):
    backend, device = on
    x = torch.randn(0, 3, 5, 6, device=device)
    labels, conf = fcn_fast.interpolate_argmax(
        x, size=(11, 13), return_confidence=True, backend=backend
    )
    assert labels.shape == conf.shape == (0, 11, 13) and labels.dtype == torch.int64
    labels = fcn_fast.upsample_argmax(x, factor=4, out_dtype=torch.uint8, backend=backend)
    assert labels.shape == (0, 24, 28) and labels.dtype == torch.uint8


@pytest.mark.parametrize(
    "call",
    [
        lambda x, b: fcn_fast.interpolate_add(x, size=(0, 5), backend=b),
        lambda x, b: fcn_fast.interpolate_argmax(x, size=(4, 0), backend=b),
        lambda x, b: fcn_fast.interpolate_cross_entropy(
            x, torch.zeros(2, 0, 4, dtype=torch.long, device=x.device), backend=b
        ),
        lambda x, b: fcn_fast.interpolate_add(x[:, :, :0], size=(4, 5), backend=b),
        lambda x, b: fcn_fast.upsample_skip(x[:, :, :, :0], factor=2, backend=b),
        lambda x, b: fcn_fast.upsample_argmax(x[:, :0], factor=2, backend=b),
        lambda x, b: fcn_fast.upsample_skip(x[:, :0], factor=2, backend=b),
        lambda x, b: fcn_fast.interpolate_add(x[:, :0], size=(4, 5), backend=b),
    ],
    ids=[
        "interpolate-to-0-rows",
        "argmax-to-0-columns",
        "loss-to-0-rows",
        "input-0-rows",
        "input-0-columns",
        "argmax-0-classes",
        "upsample-0-classes",
        "interpolate-0-classes",
    ],
)
def test_what_pytorch_refuses_is_a_value_error(on, call):
    """F.interpolate refuses an empty input plane, an empty output size and zero channels
    (so does the deconvolution's 0 x 0 weight): a ValueError naming the argument."""
    backend, device = on
    x = torch.randn(2, 3, 5, 6, device=device)
    with pytest.raises(ValueError, match=r"(size|x|coarse|logits) must"):
        call(x, backend)


@pytest.mark.parametrize("model", ["FCN8s", "FCN32s", "FCNAlexNet"])
def test_model_loss_and_predict_of_an_empty_batch(model):
    backend_device("cpu")
    net = getattr(fcn_fast, model)(n_class=5, width=0.0625).double()
    x = torch.randn(0, 3, 40, 48, dtype=torch.float64)
    target = torch.zeros(0, 40, 48, dtype=torch.long)
    for reduction, want in (("mean", float("nan")), ("sum", 0.0)):
        loss = net.loss(x, target, reduction=reduction)
        torch.testing.assert_close(loss, torch.tensor(want, dtype=torch.float64), equal_nan=True)
        loss.backward()
    assert net.predict(x).shape == (0, 40, 48)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.parameters())

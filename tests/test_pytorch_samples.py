"""PyTorch's own test samples run through fcn_fast: the OpInfo samples of
nn.functional.cross_entropy and of bilinear nn.functional.interpolate, and the ModuleInfo
samples of nn.CrossEntropyLoss, in float64, value and gradient, on the reference and cpu
backends and the Triton one (interpreted here). They are the cheapest peer test suite there
is: random weights of either sign (the cpu backend's zero gradient for a negative weight sum
would have failed here), targets of every rank, ignore_index, smoothing, every reduction.

A sample fcn_fast does not support must raise a clear error, and is listed here as such:
class-probability (floating) targets, which no fcn_fast loss takes.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device

import fcn_fast

pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
)

BACKENDS = ("reference", "cpu", "triton")
UNSUPPORTED_TARGETS = r"floating targets \(class probabilities\) are not supported"


@functools.cache
def _pytorch_test_db():
    """(op_db, module_db) of PyTorch's test internals, imported on first use: importing them
    freezes torch.backends' global flags (a rule of PyTorch's own test suite), which would
    break the tests that set them (the benchmarks' TF32 switch), so they are unfrozen again."""
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db

    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    return op_db, module_db


def _op(name, variant=""):
    op_db, _ = _pytorch_test_db()
    (info,) = [o for o in op_db if o.name == name and o.variant_test_name == variant]
    return info


def _samples(info, device):
    return list(info.sample_inputs(device, torch.float64, requires_grad=True))


@pytest.fixture(params=BACKENDS)
def on(request):
    backend = request.param
    device = torch.device("cpu") if backend == "reference" else backend_device(backend)
    return backend, device


def _value_and_grad(fn, x, upstream=None):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    upstream = torch.rand_like(y) + 0.5 if upstream is None else upstream
    (g,) = torch.autograd.grad(y, x, upstream)
    return y.detach(), g, upstream


def _agree(ours, theirs, x, what):
    want, want_grad, upstream = _value_and_grad(theirs, x)
    got, got_grad, _ = _value_and_grad(ours, x, upstream)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, equal_nan=True, msg=what)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12, msg=what)


def test_cross_entropy_opinfo_samples(on):
    backend, device = on
    ran = unsupported = 0
    for s in _samples(_op("nn.functional.cross_entropy"), device):
        target, kwargs = s.args[0], dict(s.kwargs)
        what = f"{tuple(s.input.shape)} target {tuple(target.shape)} {kwargs}"
        if target.is_floating_point():
            with pytest.raises(TypeError, match=UNSUPPORTED_TARGETS):
                fcn_fast.pixel_cross_entropy(s.input, target, backend=backend, **kwargs)
            unsupported += 1
            continue
        _agree(
            lambda x, t=target, kw=kwargs: fcn_fast.pixel_cross_entropy(
                x, t, backend=backend, **kw
            ),
            lambda x, t=target, kw=kwargs: F.cross_entropy(x, t, **kw),
            s.input,
            what,
        )
        ran += 1
    assert ran >= 10 and unsupported >= 5, (ran, unsupported)


def test_cross_entropy_loss_moduleinfo_samples(on):
    backend, device = on
    _, module_db = _pytorch_test_db()
    (info,) = [m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss]
    ran = unsupported = 0
    for sample in info.module_inputs_func(
        info, device=device, dtype=torch.float64, requires_grad=True, training=True
    ):
        kwargs = dict(sample.constructor_input.kwargs)
        assert not sample.constructor_input.args
        x, target = sample.forward_input.args
        ours = fcn_fast.nn.PixelCrossEntropyLoss(**kwargs, backend=backend)
        theirs = torch.nn.CrossEntropyLoss(**kwargs)
        if target.is_floating_point():
            with pytest.raises(TypeError, match=UNSUPPORTED_TARGETS):
                ours(x, target)
            unsupported += 1
            continue
        _agree(lambda x, t=target, m=ours: m(x, t), lambda x, t=target, m=theirs: m(x, t), x,
               f"{sample.desc}")  # fmt: skip
        ran += 1
    assert ran >= 40 and unsupported >= 20, (ran, unsupported)


def test_bilinear_interpolate_opinfo_samples(on):
    """Through interpolate_add (no skip), interpolate_argmax and, for the losses, through
    interpolate_cross_entropy where the sample gives a size."""
    backend, device = on
    ran = 0
    for s in _samples(_op("nn.functional.interpolate", "bilinear"), device):
        kwargs = dict(s.kwargs)
        assert kwargs.pop("mode") == "bilinear"
        if s.args:
            kwargs["size"] = s.args[0]
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        what = f"{tuple(s.input.shape)} {kwargs}"
        _agree(
            lambda x, kw=kwargs: fcn_fast.interpolate_add(x, backend=backend, **kw),
            lambda x, kw=kwargs: F.interpolate(x, mode="bilinear", **kw),
            s.input,
            what,
        )
        z = F.interpolate(s.input.detach(), mode="bilinear", **kwargs)
        labels = fcn_fast.interpolate_argmax(s.input.detach(), backend=backend, **kwargs)
        assert torch.equal(labels, z.argmax(1)), what
        if "size" in kwargs:
            target = torch.randint(0, z.shape[1], (z.shape[0], *z.shape[2:]), device=device)
            corners = bool(kwargs.get("align_corners"))
            _agree(
                lambda x, t=target, c=corners: fcn_fast.interpolate_cross_entropy(
                    x, t, align_corners=c, backend=backend
                ),
                lambda x, t=target, kw=kwargs: F.cross_entropy(
                    F.interpolate(x, mode="bilinear", **kw), t
                ),
                s.input,
                what,
            )
        ran += 1
    assert ran >= 20, ran

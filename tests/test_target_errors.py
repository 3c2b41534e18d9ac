"""An out-of-range target raises one exception type on every backend that checks it on the host
(issue 26): fcn_fast.TargetOutOfRangeError, both an IndexError (what PyTorch raises) and a
ValueError (what fcn_fast raised), naming the value. cuda / triton on a GPU assert on the
device instead, as PyTorch's own loss (tests/test_pixel_cross_entropy.py, gpu marker)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device

import fcn_fast

HOST_BACKENDS = ("reference", "cpu", "triton")


def _losses(backend):
    """(name, loss of (logits at 1/8, full-resolution target)) for every loss front door."""
    f = fcn_fast
    return [
        ("pixel_cross_entropy", lambda x, t: f.pixel_cross_entropy(
            f.upsample_skip(x, factor=8, crop=4, out_size=t.shape[1:], backend="reference"),
            t, backend=backend)),
        ("upsample_cross_entropy",
         lambda x, t: f.upsample_cross_entropy(x, t, factor=8, crop=4, backend=backend)),
        ("interpolate_cross_entropy",
         lambda x, t: f.interpolate_cross_entropy(x, t, backend=backend)),
        ("PixelCrossEntropyLoss", lambda x, t: f.nn.PixelCrossEntropyLoss(ignore_index=255)(
            F.interpolate(x, size=t.shape[1:], mode="bilinear"), t)),
    ]  # fmt: skip


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("bad", [-1, 5, 17])
def test_out_of_range_target_is_index_and_value_error_naming_it(backend, bad):
    if backend != "reference":
        device = backend_device(backend)
        if device.type == "cuda":
            pytest.skip("a GPU asserts on the device (the gpu-marked tests)")
    x = torch.randn(2, 5, 4, 5, requires_grad=True)
    target = torch.randint(0, 5, (2, 23, 29))
    target[1, 7, 3] = bad
    for name, loss in _losses(backend):
        with pytest.raises(fcn_fast.TargetOutOfRangeError) as info:
            loss(x, target)
        assert isinstance(info.value, IndexError) and isinstance(info.value, ValueError), name
        assert str(bad) in str(info.value), (name, str(info.value))
    # PyTorch itself: IndexError, which `except IndexError` code written for it still catches.
    with pytest.raises(IndexError):
        F.cross_entropy(F.interpolate(x, size=(23, 29), mode="bilinear"), target)


def test_model_loss_raises_it_too():
    model = fcn_fast.FCN8s(n_class=4, width=1 / 16)
    target = torch.zeros(1, 33, 35, dtype=torch.int64)
    target[0, 0, 0] = 4
    with pytest.raises(fcn_fast.TargetOutOfRangeError, match="4"):
        model.loss(torch.randn(1, 3, 33, 35), target)
    target[0, 0, 0] = 255  # ignored: no error
    assert torch.isfinite(model.loss(torch.randn(1, 3, 33, 35), target, ignore_index=255))

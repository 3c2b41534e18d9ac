"""Class-index targets as int64, int32 or uint8 (issue 24, part 3; docs/design.md "Label
dtypes"): every loss op and module gives exactly the int64 target's loss and gradient on every
backend, in float64 on random inputs, the kernels reading the narrow labels as stored; an
ignore_index the target's dtype cannot hold, or another target dtype, is a clear error; an
out-of-range label raises fcn_fast.TargetOutOfRangeError as an int64 one does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device

import fcn_fast
from fcn_fast._decompositions import cross_entropy as traced_cross_entropy
from fcn_fast.nn import (
    InterpolateCrossEntropyLoss,
    PixelCrossEntropyLoss,
    UpsampleCrossEntropyLoss,
)

# The Triton interpreter runs masked-out lanes through numpy (log(0), inf - inf).
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
)

BACKENDS = ("reference", "cpu", "cuda", "triton")
NARROW = (torch.int32, torch.uint8)
HOST_CHECKED = ("reference", "cpu", "triton")  # raise for a bad label without a device sync


def _device(backend):
    return torch.device("cpu") if backend == "reference" else backend_device(backend)


def _ignore(dtype):
    """The ignore label of these tests: VOC's 255 for uint8 (which cannot hold -100)."""
    return 255 if dtype == torch.uint8 else -100


def _target(shape, c, ignore_index, device, ignored=0.2):
    """int64 class indices with a share `ignored` set to ignore_index."""
    t = torch.randint(0, c, shape)
    t[torch.rand(shape) < ignored] = ignore_index
    return t.to(device)


def _loss_and_grad(loss_fn, x, target):
    """loss_fn(x, target) and d/dx of <loss, g> for a fixed random g (1.3 for a scalar)."""
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, target)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(loss.shape, generator=gen, dtype=loss.dtype) if loss.dim() else None
    (grad,) = torch.autograd.grad(loss, x, None if g is None else g.to(loss.device))
    return loss.detach(), grad


def _assert_same_as_int64(loss_fn, x, target, label_dtype, reference_fn=None):
    """loss_fn's loss and gradient with the target as label_dtype equal int64's exactly (the
    same kernels, reading other bytes), and int64's equal reference_fn's in float64."""
    want = _loss_and_grad(loss_fn, x, target)
    # With target's own strides (Tensor.to would make a strided view contiguous).
    narrow = torch.empty_strided(
        target.shape, target.stride(), dtype=label_dtype, device=target.device
    ).copy_(target)
    got = _loss_and_grad(loss_fn, x, narrow)
    for g, w in zip(got, want):
        assert torch.equal(g, w), (label_dtype, (g - w).abs().max())
    if reference_fn is not None:
        ref = _loss_and_grad(reference_fn, x, target)
        for g, w in zip(want, ref):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# (logits shape, layout, reduction, weighted, label_smoothing)
LOSS_CASES = [
    ((2, 21, 9, 11), "contiguous", "mean", True, 0.1),
    ((2, 7, 6, 5), "channels_last", "none", False, 0.0),
    ((13, 5), "contiguous", "sum", True, 0.0),  # (N, C): one pixel per row
    ((2, 4, 37), "contiguous", "mean", False, 0.2),
]


@pytest.mark.parametrize("label_dtype", NARROW)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", LOSS_CASES, ids=[str(c[0]) for c in LOSS_CASES])
def test_pixel_cross_entropy(backend, label_dtype, case):
    shape, layout, reduction, weighted, smoothing = case
    device = _device(backend)
    c = shape[1]
    x = torch.randn(shape, dtype=torch.float64, device=device) * 3
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ignore = _ignore(label_dtype)
    target = _target(shape[:1] + shape[2:], c, ignore, device)
    weight = torch.rand(c, dtype=torch.float64, device=device) + 0.5 if weighted else None
    options = dict(weight=weight, ignore_index=ignore, reduction=reduction)

    def loss_fn(x, t):
        return fcn_fast.pixel_cross_entropy(
            x, t, label_smoothing=smoothing, backend=backend, **options
        )

    def reference(x, t):
        return F.cross_entropy(x, t, label_smoothing=smoothing, **options)

    _assert_same_as_int64(loss_fn, x, target, label_dtype, reference)


@pytest.mark.parametrize("label_dtype", NARROW)
@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_targets(backend, label_dtype):
    """Labels read through their strides (every other column of a wider map)."""
    device = _device(backend)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, device=device)
    ignore = _ignore(label_dtype)
    wide = _target((2, 5, 14), 6, ignore, device)

    def loss_fn(x, t):
        return fcn_fast.pixel_cross_entropy(x, t, ignore_index=ignore, backend=backend)

    target = wide[:, :, ::2]
    assert not target.is_contiguous()
    _assert_same_as_int64(loss_fn, x, target, label_dtype)


# (head, reduction, weighted, label_smoothing): mean and sum take the CPU kernel's one-pass
# training form, none its two passes.
FUSED_CASES = [
    ("upsample", "mean", False, 0.0),
    ("upsample", "none", True, 0.1),
    ("interpolate", "sum", True, 0.0),
    ("interpolate", "mean", False, 0.2),
]


@pytest.mark.parametrize("label_dtype", NARROW)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FUSED_CASES, ids=["-".join(map(str, c)) for c in FUSED_CASES])
def test_fused_heads(backend, label_dtype, case):
    head, reduction, weighted, smoothing = case
    device = _device(backend)
    c = 5
    x = torch.randn(2, c, 4, 5, dtype=torch.float64, device=device) * 2
    ignore = _ignore(label_dtype)
    out = (25, 29) if head == "upsample" else (17, 23)
    # Stored transposed: the kernels read the labels through strides.
    target = _target((2, out[1], out[0]), c, ignore, device).transpose(1, 2)
    weight = torch.rand(c, dtype=torch.float64, device=device) + 0.5 if weighted else None
    options = dict(
        weight=weight, ignore_index=ignore, reduction=reduction, label_smoothing=smoothing
    )

    if head == "upsample":

        def loss_fn(x, t):
            return fcn_fast.upsample_cross_entropy(
                x, t, factor=8, crop=4, backend=backend, **options
            )

        def reference(x, t):
            z = fcn_fast.upsample_skip(x, factor=8, crop=4, out_size=out, backend="reference")
            return F.cross_entropy(z, t, **options)
    else:

        def loss_fn(x, t):
            return fcn_fast.interpolate_cross_entropy(x, t, backend=backend, **options)

        def reference(x, t):
            z = F.interpolate(x, size=out, mode="bilinear", align_corners=False)
            return F.cross_entropy(z, t, **options)

    _assert_same_as_int64(loss_fn, x, target, label_dtype, reference)


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_take_uint8_targets(backend):
    device = _device(backend)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device)
    target = _target((2, 37, 45), 4, 255, device)
    modules = [
        (PixelCrossEntropyLoss(ignore_index=255, backend=backend), lambda x: F.interpolate(
            x, size=(37, 45), mode="bilinear")),
        (UpsampleCrossEntropyLoss(factor=8, crop=3, ignore_index=255, backend=backend), None),
        (InterpolateCrossEntropyLoss(ignore_index=255, label_smoothing=0.1, backend=backend),
         None),
    ]  # fmt: skip
    for module, before in modules:

        def loss_fn(x, t, module=module, before=before):
            return module(x if before is None else before(x), t)

        _assert_same_as_int64(loss_fn, x, target, torch.uint8)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_model_loss_takes_uint8_targets(backend):
    device = _device(backend)
    model = fcn_fast.FCN8s(n_class=4, width=1 / 16, backend=backend).double().to(device)
    model.eval()  # no dropout: both losses see the same scores
    images = torch.randn(1, 3, 33, 35, dtype=torch.float64, device=device)
    target = _target((1, 33, 35), 4, 255, device)
    losses = []
    for t in (target, target.to(torch.uint8)):
        model.zero_grad()
        loss = model.loss(images, t, ignore_index=255)
        loss.backward()
        losses.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(losses[0][0], losses[1][0])
    for g64, g8 in zip(losses[0][1], losses[1][1]):
        assert torch.equal(g64, g8)


def test_traced_formula_takes_narrow_targets():
    """The loss as torch.export / ONNX write it out (fcn_fast._decompositions): narrow targets
    are widened there (gather takes int64; a uint8 index tensor would be a mask)."""
    logits = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    target = _target((2, 4, 3), 5, 255, "cpu")
    weight = torch.rand(5, dtype=torch.float64)
    want = traced_cross_entropy(logits, target, weight, 255, 1, 0.1)
    for dtype in NARROW:
        got = traced_cross_entropy(logits, target.to(dtype), weight, 255, 1, 0.1)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_opcheck_with_uint8_targets():
    backend_device("cpu")
    x = torch.randn(2, 5, 3, 4, requires_grad=True)
    t = _target((2, 3, 4), 5, 255, "cpu").to(torch.uint8)
    op = torch.ops.fcn_fast.pixel_cross_entropy.default
    torch.library.opcheck(op, (x, t, None, 255, 1, 0.1, "cpu"))
    x2 = torch.randn(2, 5, 3, 4, requires_grad=True)
    t2 = _target((2, 21, 29), 5, 255, "cpu").to(torch.int32)
    geometry = (0.125, 0.0, 0.125, 0.0, False)
    torch.library.opcheck(
        torch.ops.fcn_fast.resample_cross_entropy.default,
        (x2, t2, None, *geometry, 255, 2, 0.0, "cpu"),
    )


# ----------------------------------------------------------------------------- errors


def _front_doors(backend="cpu"):
    """(name, call(logits at 1/8 resolution, full-resolution target, **loss options))."""
    f = fcn_fast
    return [
        ("pixel_cross_entropy", lambda x, t, **kw: f.pixel_cross_entropy(
            F.interpolate(x, size=t.shape[1:], mode="bilinear"), t, backend=backend, **kw)),
        ("upsample_cross_entropy", lambda x, t, **kw: f.upsample_cross_entropy(
            x, t, factor=8, crop=4, backend=backend, **kw)),
        ("interpolate_cross_entropy", lambda x, t, **kw: f.interpolate_cross_entropy(
            x, t, backend=backend, **kw)),
    ]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.int16, torch.int8, torch.bool, torch.float32])
def test_other_target_dtypes_are_type_errors(dtype):
    x = torch.randn(2, 5, 3, 4)
    target = torch.zeros(2, 21, 29, dtype=dtype)
    for name, loss in _front_doors():
        with pytest.raises(TypeError, match=f"{name}: target .*int64, int32 or uint8") as info:
            loss(x, target)
        assert str(dtype) in str(info.value)
    with pytest.raises(TypeError, match="target must be class indices"):
        PixelCrossEntropyLoss()(torch.randn(2, 5, 3), torch.zeros(2, 3, dtype=dtype))


def test_a_direct_op_call_with_another_dtype_raises():
    """The C++ ops check too (a call of torch.ops.fcn_fast.* skips the Python front door)."""
    backend_device("cpu")
    x = torch.randn(2, 5, 3)
    t = torch.zeros(2, 3, dtype=torch.int16)
    with pytest.raises((TypeError, RuntimeError), match="int64, int32 or uint8"):
        torch.ops.fcn_fast.pixel_cross_entropy(x, t, None, -100, 1, 0.0, "cpu")
    with pytest.raises((TypeError, RuntimeError), match="int64, int32 or uint8"):
        torch.ops.fcn_fast.resample_cross_entropy(
            torch.randn(2, 5, 3, 4), torch.zeros(2, 6, 8, dtype=torch.int16), None, 0.5, 0.0,
            0.5, 0.0, True, -100, 1, 0.0, "cpu",
        )  # fmt: skip


def test_uint8_targets_need_an_ignore_index_they_can_hold():
    """uint8 can never hold PyTorch's default ignore_index -100: an error that says to pass
    the label that marks ignored pixels (255 for VOC), not a loss that silently ignores
    nothing."""
    x = torch.randn(2, 5, 3, 4)
    target = torch.zeros(2, 21, 29, dtype=torch.uint8)
    for name, loss in _front_doors():
        with pytest.raises(ValueError, match=rf"{name}: ignore_index=-100 \(PyTorch's default\)"):
            loss(x, target)
        for bad in (-1, 256, 1000):
            with pytest.raises(ValueError, match=f"ignore_index={bad} .*uint8.*255") as info:
                loss(x, target, ignore_index=bad)
            assert "0..255" in str(info.value)
        for good in (0, 255):
            assert torch.isfinite(loss(x, target, ignore_index=good, reduction="sum"))
    with pytest.raises(ValueError, match="ignore_index=-100"):
        PixelCrossEntropyLoss()(torch.randn(2, 5, 3), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=f"ignore_index={2**31}.*int32"):
        fcn_fast.pixel_cross_entropy(
            torch.randn(2, 5, 3), torch.zeros(2, 3, dtype=torch.int32), ignore_index=2**31
        )
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        fcn_fast.pixel_cross_entropy(torch.randn(2, 5, 3), target[:, :3, 0], ignore_index=255.0)


@pytest.mark.parametrize("backend", HOST_CHECKED)
@pytest.mark.parametrize(
    "label_dtype,bad,ignore_index",
    [
        (torch.uint8, 9, 255),
        (torch.uint8, 255, 0),  # 255 counts as a class unless it is ignore_index
        (torch.int32, -5, -100),
        (torch.int32, 2**31 - 1, -100),
        (torch.int64, 2**32, -100),  # no wrap to class 0 in a kernel's narrower registers
    ],
)
def test_out_of_range_labels_raise_as_int64_ones(backend, label_dtype, bad, ignore_index):
    device = _device(backend)
    if device.type == "cuda":
        pytest.skip("a GPU asserts on the device (the cuda-marked tests)")
    x = torch.randn(2, 5, 3, 4, device=device)
    target = torch.randint(0, 5, (2, 21, 29))
    target[1, 7, 3] = bad
    target = target.to(label_dtype).to(device)
    for _, loss in _front_doors(backend):
        with pytest.raises(fcn_fast.TargetOutOfRangeError, match=str(bad)):
            loss(x, target, ignore_index=ignore_index)

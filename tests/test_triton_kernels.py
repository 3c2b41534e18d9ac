"""The Triton kernels called directly (the twins' Python functions), under the interpreter
here, against plain PyTorch in float64: the fused heads (resample + cross-entropy, resample
+ argmax), and what the op-level tests (test_resample_skip.py, test_pixel_cross_entropy.py)
do not reach: the launchers' variants (zero-boundary tap masks or not, channels_last tiles,
downsampling, one output row or column), classes up to 300, tilings of the backward
gathers, bitwise determinism.

Geometry as fcn_fast/ops/resample_skip.py computes it: FCN upsampling (factor f, kernel
2f or 2f - 1, crop c): scale 1/f, bias (c + 0.5)/f - 1 or (c + 1)/f - 1, zero boundary;
F.interpolate: scale in/out (align_corners: (in - 1)/(out - 1)), bias 0.5 scale - 0.5 (or
0), clamp. Sizes stay small: the interpreter pays per operation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device
from resample_cases import fcn_head_calls

from fcn_fast._common import output_memory_format
from fcn_fast.reference import bilinear_weight

rce = pytest.importorskip("fcn_fast.triton.resample_cross_entropy")
rs = pytest.importorskip("fcn_fast.triton.resample_skip")
pce = pytest.importorskip("fcn_fast.triton.pixel_cross_entropy")

# Every test runs the kernels on the GPU where there is one (the device fixture below).
# The interpreter runs masked-out lanes through numpy (log(0), inf - inf).
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.filterwarnings(
        "ignore:invalid value encountered:RuntimeWarning",
        "ignore:divide by zero encountered:RuntimeWarning",
        "ignore:overflow encountered:RuntimeWarning",
    ),
]

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
LOW_TOL = {torch.float16: dict(rtol=4e-3, atol=4e-3), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
F64_TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def device():
    return backend_device("triton")


class Head:
    """One resampling: the kernels' (scale, bias, clamp) per axis and its plain-PyTorch twin."""

    def __init__(self, in_size, out_size, geometry, reference):
        self.in_size, self.out_size = in_size, out_size
        self.geometry = geometry  # (scale_h, bias_h, scale_w, bias_w, clamp)
        self.reference = reference

    @classmethod
    def fcn(cls, in_size, factor, crop, out_size, odd_kernel=False):
        kernel = 2 * factor - 1 if odd_kernel else 2 * factor
        shift = 1.0 if odd_kernel else 0.5
        geometry = (
            1 / factor, (crop[0] + shift) / factor - 1, 1 / factor, (crop[1] + shift) / factor - 1,
            False,
        )  # fmt: skip

        def reference(x):
            up = F.conv_transpose2d(x, bilinear_weight(x.shape[1], kernel, x.dtype), stride=factor)
            return up[:, :, crop[0] : crop[0] + out_size[0], crop[1] : crop[1] + out_size[1]]

        return cls(in_size, out_size, geometry, reference)

    @classmethod
    def interpolate(cls, in_size, out_size, align_corners=False):
        geometry = []
        for n, o in zip(in_size, out_size):
            if align_corners:
                geometry += [(n - 1) / (o - 1) if o > 1 else 0.0, 0.0]
            else:
                geometry += [n / o, 0.5 * n / o - 0.5]
        return cls(
            in_size,
            out_size,
            (*geometry, True),
            lambda x: F.interpolate(x, size=out_size, mode="bilinear", align_corners=align_corners),
        )


HEADS = {
    # FCN-8s final head (x8, crop 31), shrunk: every tap inside x (no tap masks).
    "fcn8-crop31": Head.fcn((7, 6), 8, (31, 31), (20, 17)),
    # Odd kernel (FCN-AlexNet's 2f - 1), crops near the edge: taps outside x (masked).
    "fcn3-odd": Head.fcn((4, 5), 3, (1, 2), (11, 13), odd_kernel=True),
    # No crop, everything right of it: the zero border on both sides.
    "fcn2-full": Head.fcn((3, 3), 2, (0, 0), (8, 8)),
    "interp-up": Head.interpolate((7, 5), (13, 12)),
    "interp-down": Head.interpolate((9, 8), (4, 3)),  # downsampling: rows skip in y
    "corners": Head.interpolate((5, 4), (9, 7), align_corners=True),
    "corners-one": Head.interpolate((3, 5), (1, 6), align_corners=True),  # one output row
}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _targets(n, c, out_size, ignore_index, device, ignored=0.2):
    target = torch.randint(0, c, (n, *out_size))
    target[torch.rand(target.shape) < ignored] = ignore_index
    return target.to(device)


def _fused_reference(head, x, target, weight, ignore_index, reduction, smoothing, grad_seed=0):
    """Loss, lse and d loss / d x of F.cross_entropy(head(x)) in float64, and the grad used."""
    xd = x.detach().cpu().double().requires_grad_()
    z = head.reference(xd)
    loss = F.cross_entropy(
        z, target.cpu(), None if weight is None else weight.cpu().double(),
        ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(loss.shape, generator=gen, dtype=torch.float64)
    (grad_x,) = torch.autograd.grad(loss, xd, grad)
    return loss.detach(), torch.logsumexp(z.detach(), 1), grad_x, grad


def _run_fused(head, x, target, weight, ignore_index, reduction, smoothing, grad, config=None):
    red = REDUCTIONS[reduction]
    loss, lse, wsum = rce.resample_cross_entropy_triton(
        x, target, weight, *head.geometry, ignore_index, red, smoothing
    )
    acc = lse.dtype
    g = grad.to(device=x.device, dtype=acc)
    grad_x = rce.resample_cross_entropy_backward_triton(
        g, x, target, weight, lse, wsum, *head.geometry, ignore_index, red, smoothing,
        _config=config,
    )  # fmt: skip
    return loss, lse, wsum, grad_x


@pytest.mark.parametrize(
    "head, layout, c, reduction, smoothing, weighted",
    [
        ("fcn8-crop31", "contiguous", 5, "mean", 0.0, False),
        ("fcn8-crop31", "channels_last", 3, "none", 0.1, True),
        ("fcn3-odd", "contiguous", 4, "sum", 0.2, True),
        ("fcn3-odd", "strided", 1, "mean", 0.0, False),
        ("fcn2-full", "channels_last", 7, "mean", 0.3, False),
        ("interp-up", "contiguous", 33, "mean", 0.1, True),
        ("interp-down", "strided", 6, "none", 0.0, True),
        ("corners", "channels_last", 2, "sum", 0.0, False),
        ("corners-one", "contiguous", 3, "mean", 0.05, True),
    ],
)
def test_fused_loss_matches_composition(device, head, layout, c, reduction, smoothing, weighted):
    head = HEADS[head]
    n, ignore_index = 2, 255
    x = _layout(torch.randn(n, c, *head.in_size, dtype=torch.float64), layout).to(device)
    target = _targets(n, c, head.out_size, ignore_index, device)
    weight = torch.rand(c, dtype=torch.float64, device=device) + 0.5 if weighted else None
    ref_loss, ref_lse, ref_grad, grad = _fused_reference(
        head, x, target, weight, ignore_index, reduction, smoothing
    )
    loss, lse, wsum, grad_x = _run_fused(
        head, x, target, weight, ignore_index, reduction, smoothing, grad
    )
    torch.testing.assert_close(loss.cpu(), ref_loss, **F64_TOL)
    torch.testing.assert_close(lse.cpu(), ref_lse, **F64_TOL)
    valid = target.cpu() != ignore_index
    w = torch.ones(c, dtype=torch.float64) if weight is None else weight.cpu()
    torch.testing.assert_close(wsum.cpu(), w[target.cpu()[valid]].sum(), **F64_TOL)
    # grad_x keeps x's memory format, as resample_skip's forward output does.
    assert grad_x.is_contiguous(memory_format=output_memory_format(x))
    torch.testing.assert_close(grad_x.cpu(), ref_grad, **F64_TOL)


@pytest.mark.parametrize("h", [1, 31])
def test_fused_fcn_head_geometries(device, h):
    """The exact final heads of FCN-32s, FCN-16s, FCN-8s and FCN-AlexNet for an h x h image."""
    for name, coarse, kwargs, _ in fcn_head_calls(h):
        if "pool" in name:
            continue
        factor, crop = kwargs["factor"], kwargs["crop"]
        odd = kwargs.get("kernel_size") == 2 * factor - 1
        head = Head.fcn((coarse, coarse), factor, (crop, crop), (h, h), odd_kernel=odd)
        x = torch.randn(1, 2, coarse, coarse, dtype=torch.float64, device=device)
        target = _targets(1, 2, (h, h), -100, device)
        ref_loss, _, ref_grad, grad = _fused_reference(head, x, target, None, -100, "mean", 0.0)
        loss, _, _, grad_x = _run_fused(head, x, target, None, -100, "mean", 0.0, grad)
        torch.testing.assert_close(loss.cpu(), ref_loss, **F64_TOL, msg=name)
        torch.testing.assert_close(grad_x.cpu(), ref_grad, **F64_TOL, msg=name)


@pytest.mark.parametrize(
    "config",
    [(1, 4, 4, 64, 3), (2, 1, 8, 64, 5), (4, 4, 2, 64, 2)],
    ids=["one-class", "one-row", "class-blocks"],
)
def test_fused_backward_tilings(device, config):
    """Tiles of one class, of one row, class blocks past C; several tiles per persistent
    program."""
    head = HEADS["fcn3-odd"]
    x = torch.randn(1, 3, *head.in_size, dtype=torch.float64, device=device)
    target = _targets(1, 3, head.out_size, 255, device)
    _, _, ref_grad, grad = _fused_reference(head, x, target, None, 255, "mean", 0.1)
    *_, grad_x = _run_fused(
        head, x, target, None, 255, "mean", 0.1, grad, config=rs.BackwardConfig(*config)
    )
    torch.testing.assert_close(grad_x.cpu(), ref_grad, **F64_TOL)


def test_fused_all_ignored(device):
    head = HEADS["interp-up"]
    x = torch.randn(1, 3, *head.in_size, dtype=torch.float64, device=device)
    target = torch.full((1, *head.out_size), -100, device=device)
    loss, _, wsum, grad_x = _run_fused(
        head, x, target, None, -100, "mean", 0.1, torch.tensor(1.0, dtype=torch.float64)
    )
    assert loss.isnan() and wsum.item() == 0.0  # 0 / 0, as F.cross_entropy
    loss, *_ = rce.resample_cross_entropy_triton(x, target, None, *head.geometry, -100, 2, 0.1)
    assert loss.item() == 0.0
    assert torch.equal(grad_x, torch.zeros_like(grad_x))


def test_fused_out_of_range_target_raises(device):
    head = HEADS["fcn2-full"]
    x = torch.randn(1, 3, *head.in_size, device=device)
    target = _targets(1, 3, head.out_size, -100, device)
    target[0, 2, 3] = 3
    with pytest.raises(ValueError, match="outside"):
        rce.resample_cross_entropy_triton(x, target, None, *head.geometry, -100, 1, 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_low_precision(device, dtype):
    """Low-precision x read directly, float32 arithmetic: loss and gradient within the
    dtype's tolerance of the float64 composition on the same (rounded) values."""
    head = HEADS["fcn8-crop31"]
    x = (torch.randn(2, 4, *head.in_size) * 3).to(dtype).to(device)
    target = _targets(2, 4, head.out_size, 255, device)
    ref_loss, _, ref_grad, grad = _fused_reference(head, x, target, None, 255, "mean", 0.1)
    loss, lse, _, grad_x = _run_fused(head, x, target, None, 255, "mean", 0.1, grad)
    assert loss.dtype == lse.dtype == torch.float32 and grad_x.dtype == dtype
    torch.testing.assert_close(loss.double().cpu(), ref_loss, **LOW_TOL[dtype])
    torch.testing.assert_close(grad_x.double().cpu(), ref_grad, **LOW_TOL[dtype])


def test_fused_backward_is_bitwise_deterministic(device):
    head = HEADS["interp-up"]
    x = torch.randn(2, 5, *head.in_size, device=device)
    target = _targets(2, 5, head.out_size, -100, device)
    grad = torch.tensor(1.0)
    first = _run_fused(head, x, target, None, -100, "mean", 0.1, grad)
    second = _run_fused(head, x, target, None, -100, "mean", 0.1, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("head", ["fcn3-odd", "interp-down", "corners"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_argmax_matches_torch(device, head, layout):
    head = HEADS[head]
    x = _layout(torch.randn(2, 6, *head.in_size, dtype=torch.float64), layout).to(device)
    z = head.reference(x.cpu())
    labels, confidence = rce.resample_argmax_triton(
        x, *head.geometry, *head.out_size, torch.int64, True
    )
    assert labels.dtype == torch.int64 and torch.equal(labels.cpu(), z.argmax(1))
    assert confidence.dtype == torch.float32
    torch.testing.assert_close(confidence.cpu().double(), z.softmax(1).amax(1), rtol=1e-6, atol=0)
    labels8, none = rce.resample_argmax_triton(
        x, *head.geometry, *head.out_size, torch.uint8, False
    )
    assert labels8.dtype == torch.uint8 and none.numel() == 0
    assert torch.equal(labels8.cpu().long(), labels.cpu())


def test_argmax_ties_and_nan(device):
    """Ties go to the lowest class, a NaN wins (the first NaN), as torch.argmax."""
    head = HEADS["interp-up"]
    x = torch.randn(1, 5, *head.in_size, dtype=torch.float64)
    x[:, 3] = x[:, 1]  # classes 1 and 3 tie everywhere
    x[:, 1] = torch.maximum(x[:, 1], x.amax(1) + 1.0)  # ... and win everywhere
    x[:, 3] = x[:, 1]
    x[0, 4, 2, 3] = float("nan")
    x[0, 2, 2, 3] = float("nan")
    z = head.reference(x)
    labels, confidence = rce.resample_argmax_triton(
        x.to(device), *head.geometry, *head.out_size, torch.int64, True
    )
    expected = z.argmax(1)
    assert torch.equal(labels.cpu(), expected)
    assert set(labels.unique().tolist()) == {1, 2}  # the tie to 1, the first NaN class 2
    assert confidence.isnan().any() and not confidence[labels == 1].isnan().any()


def test_resample_forward_backward_variants(device):
    """Every head through resample_skip's kernels: NCHW and channels_last outputs, masked and
    unmasked taps, downsampling, one output row; the backward's adjoint exactly."""
    layouts = ("contiguous", "channels_last", "strided")
    for i, (name, head) in enumerate(HEADS.items()):
        for layout in (layouts[i % 3], layouts[(i + 1) % 3]):
            x = _layout(torch.randn(1, 3, *head.in_size, dtype=torch.float64), layout)
            xr = x.detach().clone().requires_grad_()
            ref = head.reference(xr)
            out = rs.resample_skip_triton(x.to(device), None, *head.geometry, *head.out_size, 0, 0)
            torch.testing.assert_close(out.cpu(), ref, **F64_TOL, msg=f"{name} {layout}")
            assert out.is_contiguous(memory_format=output_memory_format(x))
            grad = _layout(torch.randn_like(ref), layout)
            (expected,) = torch.autograd.grad(ref, xr, grad)
            got = rs.resample_skip_backward_triton(grad.to(device), *head.in_size, *head.geometry)
            torch.testing.assert_close(got.cpu(), expected, **F64_TOL, msg=f"{name} {layout}")


@pytest.mark.parametrize("c", [1, 33, 300])
@pytest.mark.parametrize("layout", ["channels_last", "rows"])
def test_loss_class_counts_and_layouts(device, c, layout):
    """pixel_cross_entropy's kernels on class-contiguous logits ((N, C, S) views of a
    channels_last tensor, or (N, C) rows as the op passes them), any class count."""
    if layout == "rows":
        logits = torch.randn(1, 37, c, dtype=torch.float64).transpose(1, 2)  # (1, C, 37)
        ref_logits = logits[0].t()
        target = torch.randint(0, c, (1, 37))
        ref_target = target[0]
    else:
        logits4 = _layout(torch.randn(2, c, 3, 7, dtype=torch.float64), "channels_last")
        logits, ref_logits = logits4.flatten(2), logits4
        target = torch.randint(0, c, (2, 21))
        ref_target = target.view(2, 3, 7)
    target[..., ::5] = -100
    weight = torch.rand(c, dtype=torch.float64) + 0.5
    for reduction, smoothing in (("mean", 0.1), ("none", 0.0), ("sum", 0.2)):
        red = REDUCTIONS[reduction]
        xr = ref_logits.detach().clone().requires_grad_()
        ref = F.cross_entropy(
            xr, ref_target, weight, reduction=reduction, label_smoothing=smoothing
        )
        loss, lse, wsum = pce.pixel_cross_entropy_triton(
            logits.to(device), target.to(device), weight.to(device), -100, red, smoothing
        )
        torch.testing.assert_close(loss.cpu().view(ref.shape), ref, **F64_TOL)
        grad = torch.randn_like(ref)
        (expected,) = torch.autograd.grad(ref, xr, grad)
        g = grad.reshape(loss.shape) if red == 0 else grad
        got = pce.pixel_cross_entropy_backward_triton(
            g.to(device), logits.to(device), target.to(device), weight.to(device), lse, wsum,
            -100, red, smoothing,
        )  # fmt: skip
        assert got.stride() == logits.stride()
        got = got[0].t() if layout == "rows" else got.view(ref_logits.shape)
        torch.testing.assert_close(got.cpu(), expected, **F64_TOL)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_loss_backward_is_bitwise_deterministic(device, layout):
    logits = _layout(torch.randn(2, 7, 5, 9), layout).to(device).flatten(2)
    target = torch.randint(0, 7, (2, 45), device=device)
    loss, lse, wsum = pce.pixel_cross_entropy_triton(logits, target, None, -100, 1, 0.1)
    again = pce.pixel_cross_entropy_triton(logits, target, None, -100, 1, 0.1)
    assert torch.equal(loss, again[0]) and torch.equal(lse, again[1])
    one = torch.tensor(1.0, device=device)
    grads = [
        pce.pixel_cross_entropy_backward_triton(one, logits, target, None, lse, wsum, -100, 1, 0.1)
        for _ in range(2)
    ]
    assert torch.equal(*grads)


@pytest.mark.parametrize("head", ["fcn8-crop31", "fcn3-odd", "corners-one", "interp-up"])
def test_separable_forward_paths(device, monkeypatch, head):
    """The forward's separable path (each input row blended once per tile: the GPU's choice
    for upsampling), which the interpreter otherwise skips for speed."""
    head = HEADS[head]
    x = torch.randn(2, 3, *head.in_size, dtype=torch.float64)
    x[0, 1, 0, 0] = float("inf")  # rows near it that no output taps must not turn NaN
    args = (x.to(device), None, *head.geometry, *head.out_size, 0, 0)
    direct = rs.resample_skip_triton(*args)  # 4 gathers per output
    monkeypatch.setattr(rs, "SEPARABLE_IN_INTERPRETER", True)
    assert rs.separable_rows(head.geometry[0], rs.SEPARABLE_BLOCK_H, torch.device(device)) > 0
    torch.testing.assert_close(rs.resample_skip_triton(*args), direct, **F64_TOL, equal_nan=True)
    x = x[:1].clone()
    x[0, 1, 0, 0] = 0.5
    z = head.reference(x)
    target = _targets(1, 3, head.out_size, -100, device)
    loss, lse, _ = rce.resample_cross_entropy_triton(
        x.to(device), target, None, *head.geometry, -100, 0, 0.1
    )
    ref = F.cross_entropy(z, target.cpu(), reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(loss.cpu(), ref, **F64_TOL)
    torch.testing.assert_close(lse.cpu(), torch.logsumexp(z, 1), **F64_TOL)
    labels, confidence = rce.resample_argmax_triton(
        x.to(device), *head.geometry, *head.out_size, torch.int64, True
    )
    assert torch.equal(labels.cpu(), z.argmax(1))
    torch.testing.assert_close(confidence.cpu().double(), z.softmax(1).amax(1), rtol=1e-6, atol=0)

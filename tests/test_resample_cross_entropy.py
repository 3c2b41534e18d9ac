"""The fused heads (issue 9): upsample_/interpolate_cross_entropy and upsample_/interpolate_argmax
against the unfused composition they replace, on every backend."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device
from resample_cases import alexnet_score_size, fcn_sizes

import fcn_fast
from fcn_fast.reference import upsample_skip_reference

REDUCTIONS = ("none", "mean", "sum")


def unfused_upsample_loss(coarse, target, factor, kernel_size=None, crop=0, **ce):
    """What the fused op replaces: the deconvolution, the crop, then F.cross_entropy."""
    k = kernel_size or 2 * factor
    crop = crop if isinstance(crop, tuple) else (crop, crop)
    logits = upsample_skip_reference(coarse, None, factor, k, crop, (0, 0), tuple(target.shape[1:]))
    return F.cross_entropy(logits, target, **ce)


def unfused_interpolate_loss(logits, target, align_corners=False, **ce):
    up = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=align_corners)
    return F.cross_entropy(up, target, **ce)


def random_target(n, h, w, c, ignore_index=None, device="cpu", ignored=0.2):
    target = torch.randint(0, c, (n, h, w), device=device)
    if ignore_index is not None:
        target[torch.rand(n, h, w, device=device) < ignored] = ignore_index
    return target


def check_loss_and_grad(fused, unfused, x, rel=1e-10):
    """Forward values and the input gradient (for a random upstream gradient) agree."""
    xf = x.detach().clone().requires_grad_()
    xu = x.detach().clone().requires_grad_()
    got, want = fused(xf), unfused(xu)
    assert got.dtype == want.dtype and got.shape == want.shape
    atol = rel * max(1.0, want.nan_to_num().abs().max().item())
    torch.testing.assert_close(got, want, rtol=rel, atol=atol, equal_nan=True)  # all ignored: NaN
    upstream = torch.rand_like(want) + 0.5
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    scale = max(xu.grad.abs().max().item(), 1.0)
    torch.testing.assert_close(xf.grad, xu.grad, rtol=rel, atol=rel * scale)


# ---------------------------------------------------------------------------- upsample


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "factor, kernel_size, crop, coarse, out, classes",
    [
        (2, None, 0, (5, 4), (9, 7), 3),
        (3, 5, 2, (4, 6), (8, 13), 1),
        (8, None, 31, (7, 6), (17, 11), 7),
        (4, 7, 1, (3, 3), (11, 12), 33),
        (1, 1, 0, (6, 5), (6, 5), 4),
    ],
)
def test_upsample_cross_entropy_matches_unfused(
    backend, reduction, factor, kernel_size, crop, coarse, out, classes
):
    device = backend_device(backend)
    x = torch.randn(2, classes, *coarse, dtype=torch.float64, device=device) * 3
    target = random_target(2, *out, classes, ignore_index=255, device=device)
    weight = torch.rand(classes, dtype=torch.float64, device=device) + 0.1
    ce = dict(weight=weight, ignore_index=255, reduction=reduction, label_smoothing=0.1)
    up = dict(factor=factor, kernel_size=kernel_size, crop=crop)
    check_loss_and_grad(
        lambda t: fcn_fast.upsample_cross_entropy(t, target, backend=backend, **up, **ce),
        lambda t: unfused_upsample_loss(t, target, **up, **ce),
        x,
    )


@pytest.mark.parametrize("classes", [1, 2, 21, 150, 1000])
def test_class_counts_cpu(classes):
    backend_device("cpu")
    x = torch.randn(1, classes, 4, 5, dtype=torch.float64)
    target = random_target(1, 9, 11, classes, ignore_index=-100)
    check_loss_and_grad(
        lambda t: fcn_fast.upsample_cross_entropy(t, target, factor=2, crop=1, backend="cpu"),
        lambda t: unfused_upsample_loss(t, target, factor=2, crop=1),
        x,
    )


def test_random_geometries_cpu():
    backend_device("cpu")
    gen = torch.Generator().manual_seed(7)
    for _ in range(12):
        factor = int(torch.randint(1, 9, (), generator=gen))
        kernel = 2 * factor - int(torch.randint(0, 2, (), generator=gen)) if factor > 1 else 2
        h, w = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        full = ((h - 1) * factor + kernel, (w - 1) * factor + kernel)
        crop = int(torch.randint(0, min(full), (), generator=gen))
        out = (
            int(torch.randint(1, full[0] - crop + 1, (), generator=gen)),
            int(torch.randint(1, full[1] - crop + 1, (), generator=gen)),
        )
        classes = int(torch.randint(1, 12, (), generator=gen))
        x = torch.randn(2, classes, h, w, dtype=torch.float64, generator=gen)
        target = random_target(2, *out, classes, ignore_index=-1)
        eps = float(torch.rand((), generator=gen)) * 0.3
        reduction = REDUCTIONS[int(torch.randint(0, 3, (), generator=gen))]
        ce = dict(ignore_index=-1, reduction=reduction, label_smoothing=eps)
        up = dict(factor=factor, kernel_size=kernel, crop=crop)
        check_loss_and_grad(
            lambda t, target=target, up=up, ce=ce: fcn_fast.upsample_cross_entropy(
                t, target, backend="cpu", **up, **ce
            ),
            lambda t, target=target, up=up, ce=ce: unfused_upsample_loss(t, target, **up, **ce),
            x,
        )


def fcn_final_heads(h: int) -> dict:
    """name -> (coarse size, factor, kernel_size, crop) of the FCN final heads, h x h input."""
    s = fcn_sizes(h)
    up2 = 2 * s["score_fr"] + 2
    return {
        "fcn32s": (s["score_fr"], 32, 64, 19),
        "fcn16s": (up2, 16, 32, 27),
        "fcn8s": (2 * up2 + 2, 8, 16, 31),
        "alexnet": (alexnet_score_size(h), 32, 63, 18),
    }


@pytest.mark.parametrize("head", ["fcn32s", "fcn16s", "fcn8s", "alexnet"])
@pytest.mark.parametrize("h", [1, 31, 224, 500])
def test_fcn_final_head_geometries(backend, h, head):
    device = backend_device(backend)
    if backend == "triton" and device.type == "cpu" and h > 31:
        pytest.skip("large heads are too slow in the Triton interpreter; run on a GPU")
    coarse, factor, kernel, crop = fcn_final_heads(h)[head]
    x = torch.randn(1, 5, coarse, coarse, dtype=torch.float64, device=device)
    target = random_target(1, h, h, 5, ignore_index=255, device=device)
    up = dict(factor=factor, kernel_size=kernel, crop=crop)
    check_loss_and_grad(
        lambda t: fcn_fast.upsample_cross_entropy(
            t, target, ignore_index=255, backend=backend, **up
        ),
        lambda t: unfused_upsample_loss(t, target, ignore_index=255, **up),
        x,
    )


def test_all_ignored_is_nan_for_mean(backend):
    device = backend_device(backend)
    x = torch.randn(1, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.full((1, 4, 5), 255, device=device)
    loss = fcn_fast.upsample_cross_entropy(x, target, factor=2, ignore_index=255, backend=backend)
    assert torch.isnan(loss)
    total = fcn_fast.upsample_cross_entropy(
        x, target, factor=2, ignore_index=255, reduction="sum", backend=backend
    )
    total.backward()
    assert total.item() == 0 and torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------------------- interpolate


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "size_in, size_out",
    # the last shrinks 4x: input rows no output row reads get a zero gradient
    [((5, 7), (13, 22)), ((8, 8), (8, 8)), ((9, 4), (5, 11)), ((17, 6), (4, 9))],
)
def test_interpolate_cross_entropy_matches_unfused(backend, align_corners, size_in, size_out):
    device = backend_device(backend)
    x = torch.randn(2, 6, *size_in, dtype=torch.float64, device=device) * 2
    target = random_target(2, *size_out, 6, ignore_index=-100, device=device)
    ce = dict(reduction="mean", label_smoothing=0.05)
    check_loss_and_grad(
        lambda t: fcn_fast.interpolate_cross_entropy(
            t, target, align_corners=align_corners, backend=backend, **ce
        ),
        lambda t: unfused_interpolate_loss(t, target, align_corners=align_corners, **ce),
        x,
    )


# ---------------------------------------------------------------------------- argmax


def test_upsample_argmax_matches_unfused(backend):
    device = backend_device(backend)
    x = torch.randn(2, 7, 6, 5, dtype=torch.float32, device=device)
    up = dict(factor=8, crop=31, out_size=(17, 12))
    want = fcn_fast.upsample_skip(x, backend="reference", **up)
    labels = fcn_fast.upsample_argmax(x, backend=backend, **up)
    assert labels.dtype == torch.int64 and labels.shape == (2, 17, 12)
    assert torch.equal(labels, want.argmax(1))
    labels8, confidence = fcn_fast.upsample_argmax(
        x, out_dtype=torch.uint8, return_confidence=True, backend=backend, **up
    )
    assert labels8.dtype == torch.uint8 and torch.equal(labels8.long(), labels)
    assert confidence.dtype == torch.float32
    torch.testing.assert_close(confidence, torch.softmax(want, 1).amax(1))


@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_argmax_matches_unfused(backend, align_corners):
    device = backend_device(backend)
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64, device=device)
    kwargs = dict(scale_factor=2.5, align_corners=align_corners)
    want = F.interpolate(x, mode="bilinear", **kwargs)
    labels = fcn_fast.interpolate_argmax(x, backend=backend, **kwargs)
    assert torch.equal(labels, want.argmax(1))


def test_argmax_ties_go_to_the_lowest_class(backend):
    device = backend_device(backend)
    # Classes 1 and 3 equal everywhere and above the rest; NaN beats all at one pixel.
    x = torch.randn(1, 5, 4, 4, device=device) - 10
    x[:, 3] = x[:, 1] = torch.rand(4, 4, device=device)
    x[0, 4, 0, 0] = float("nan")
    labels = fcn_fast.interpolate_argmax(x, size=(4, 4), backend=backend)
    want = x.argmax(1)
    assert want[0, 0, 0] == 4 and (want[0].flatten()[1:] == 1).all()
    assert torch.equal(labels, want)


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_far_apart_and_non_finite_logits(backend, dtype, smoothing):
    """The GPU forwards sum exps against a bound (the coarse maxima at a pixel's taps) and
    redo a pixel with a running max where that fails: a tap of weight 0 on a cell 1000 above
    the rest (the exps underflow), one 1000 below, and +inf, -inf and NaN logits. Per-pixel
    losses equal PyTorch's, non-finite exactly where PyTorch's are."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(2, 3, 4, 5, dtype=dtype, generator=gen)
    x[0, 1, 0, 2] = 1000.0  # pixels on cell (0, 1) tap it with weight 0 (align_corners)
    x[1, 0, 1, 1] = -1000.0
    target = torch.randint(0, 3, (2, 7, 9), generator=gen)
    y = x.clone()
    y[0, 2, 3, 4] = float("inf")
    y[1, 0, 3, 0] = float("-inf")
    y[1, 1, 2, 2] = float("nan")
    for logits in (x, y):
        want = unfused_interpolate_loss(
            logits, target, align_corners=True, reduction="none", label_smoothing=smoothing
        )
        got = fcn_fast.interpolate_cross_entropy(
            logits.to(device), target.to(device), align_corners=True, reduction="none",
            label_smoothing=smoothing, backend=backend,
        ).cpu()  # fmt: skip
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
        finite = want.isfinite()
        rel = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(got[finite], want[finite], rtol=rel, atol=rel * 1000)


def test_deterministic_backward(backend):
    device = backend_device(backend)
    x = torch.randn(2, 9, 11, 13, device=device, requires_grad=True)
    target = random_target(2, 40, 50, 9, ignore_index=255, device=device)
    grads = []
    for _ in range(2):
        x.grad = None
        fcn_fast.upsample_cross_entropy(
            x, target, factor=4, crop=3, ignore_index=255, backend=backend
        ).backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cpu_results_do_not_depend_on_the_thread_count(reduction):
    """The CPU kernels split an image's input rows into bands by thread count; the one-pass
    form (mean) pairs output rows and owns each row's loss by band, the two-pass (none) sums
    band by band: loss and gradient are bitwise the same for 1, 2 and 3 threads."""
    backend_device("cpu")
    x = torch.randn(1, 5, 40, 9) * 3
    target = random_target(1, 300, 60, 5, ignore_index=255)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xg = x.clone().requires_grad_()
            loss = fcn_fast.upsample_cross_entropy(
                xg, target, factor=8, crop=5, ignore_index=255, reduction=reduction, backend="cpu"
            )
            loss.sum().backward()
            results.append((loss.detach(), xg.grad))
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_reads_directly_and_autocast_gives_float32(backend, dtype):
    device = backend_device(backend)
    x = torch.randn(2, 5, 6, 7, device=device).to(dtype)
    target = random_target(2, 11, 13, 5, device=device)
    want = unfused_upsample_loss(x.double(), target, factor=2, crop=1)
    got = fcn_fast.upsample_cross_entropy(x, target, factor=2, crop=1, backend=backend)
    assert got.dtype == dtype
    with torch.autocast(device.type, dtype=dtype):
        got32 = fcn_fast.upsample_cross_entropy(x, target, factor=2, crop=1, backend=backend)
    assert got32.dtype == torch.float32
    # fp32 arithmetic on the low-precision input: only the input's rounding is left.
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)


def test_channels_last_and_strided_inputs(backend):
    device = backend_device(backend)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, device=device)
    target = random_target(2, 11, 16, 6, ignore_index=255, device=device)
    wide = torch.zeros(2, 11, 32, dtype=torch.long, device=device)
    wide[..., ::2] = target
    strided_target = wide[..., ::2]
    kwargs = dict(factor=2, crop=(1, 0), ignore_index=255, reduction="sum")
    for layout in (x.to(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().mT):
        check_loss_and_grad(
            lambda t: fcn_fast.upsample_cross_entropy(t, strided_target, backend=backend, **kwargs),
            lambda t: unfused_upsample_loss(t, target, **kwargs),
            layout,
        )
    # channels_last in, channels_last gradient out (as PyTorch's own ops)
    xl = x.to(memory_format=torch.channels_last).requires_grad_()
    fcn_fast.upsample_cross_entropy(xl, target, backend=backend, **kwargs).backward()
    assert xl.grad.is_contiguous(memory_format=torch.channels_last)


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 3, 4, 4)
    t = torch.randint(0, 3, (2, 10, 10))
    uce = fcn_fast.upsample_cross_entropy
    with pytest.raises(ValueError, match="target must have shape"):
        uce(x, t[:1], factor=2)
    with pytest.raises(ValueError, match="out_size"):
        uce(x, torch.randint(0, 3, (2, 11, 11)), factor=2)  # (4+1)*2 = 10 at most
    with pytest.raises(ValueError, match="crop"):
        uce(x, t, factor=2, crop=10)
    with pytest.raises(TypeError, match="target must be class indices of dtype int64, int32 or"):
        uce(x, t.short(), factor=2)
    with pytest.raises(TypeError, match="coarse"):
        uce(x.long(), t, factor=2)
    with pytest.raises(ValueError, match="weight"):
        uce(x, t, factor=2, weight=torch.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        uce(x, t, factor=2, reduction="avg")
    with pytest.raises(ValueError, match="kernel_size"):
        uce(x, t, factor=2, kernel_size=5)
    with pytest.raises(ValueError, match="upsample_cross_entropy.*target contains 7"):
        uce(x, torch.full((2, 10, 10), 7), factor=2, backend="cpu")
    with pytest.raises(ValueError, match="target must have shape"):
        fcn_fast.interpolate_cross_entropy(x, t[:1])  # N differs
    with pytest.raises(TypeError, match="out_dtype"):
        fcn_fast.upsample_argmax(x, factor=2, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="256"):
        fcn_fast.upsample_argmax(torch.randn(1, 300, 2, 2), factor=2, out_dtype=torch.uint8)
    with pytest.raises(ValueError, match="backend"):
        uce(x, t, factor=2, backend="gpu")


# ---------------------------------------------------------------------------- as PyTorch ops


def _cpu_op_args(reduction=1):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    target = random_target(2, 9, 11, 3, ignore_index=255)
    weight = torch.rand(3, dtype=torch.float64) + 0.1
    return x, target, weight, 0.5, -0.25, 0.5, -0.25, False, 255, reduction, 0.1, "cpu"


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(reduction):
    backend_device("cpu")
    args = _cpu_op_args(reduction)
    torch.library.opcheck(torch.ops.fcn_fast.resample_cross_entropy.default, args)
    loss, lse, wsum = torch.ops.fcn_fast.resample_cross_entropy(*args)
    grad = torch.rand_like(loss)
    backward_args = (grad, args[0].detach(), args[1], args[2], lse, wsum, *args[3:])
    torch.library.opcheck(torch.ops.fcn_fast.resample_cross_entropy_backward.default, backward_args)
    x = args[0].detach()
    for dtype in (torch.int64, torch.uint8):
        torch.library.opcheck(
            torch.ops.fcn_fast.resample_argmax.default,
            (x, 0.5, -0.25, 0.5, -0.25, True, 7, 9, dtype, True, "cpu"),
        )


def test_gradcheck_fp64():
    backend_device("cpu")
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    target = random_target(2, 6, 9, 3, ignore_index=255)
    weight = torch.rand(3, dtype=torch.float64) + 0.1
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda t, r=reduction: fcn_fast.upsample_cross_entropy(
                t,
                target,
                factor=2,
                crop=1,
                weight=weight,
                ignore_index=255,
                reduction=r,
                label_smoothing=0.2,
                backend="cpu",
            ),
            (x,),
        )
        assert torch.autograd.gradcheck(
            lambda t, r=reduction: fcn_fast.interpolate_cross_entropy(
                t, target, align_corners=True, ignore_index=255, reduction=r, backend="cpu"
            ),
            (x,),
        )


@pytest.mark.parametrize("reduction", [1, 2])
@pytest.mark.parametrize(
    "head, classes, coarse, out",
    [
        ("upsample", 3, (4, 5), (9, 11)),  # one pass under autograd's rule
        ("upsample", 150, (5, 4), (9, 7)),  # two-pass under the rule: the kernel still works
        ("interpolate", 21, (5, 3), (11, 10)),
        ("interpolate", 1, (1, 1), (3, 4)),
    ],
)
def test_one_pass_kernel_gives_the_summed_loss_gradient(reduction, head, classes, coarse, out):
    """resample_cross_entropy_with_grad, the CPU training path, called directly: its loss, lse
    and weight_sum are the forward kernel's bit for bit, and grad_sum is the gradient of the
    summed (unnormalized) loss in fp64."""
    backend_device("cpu")
    from fcn_fast.ops._geometry import interpolate_geometry, upsample_geometry

    x = torch.randn(2, classes, *coarse, dtype=torch.float64) * 3
    target = random_target(2, *out, classes, ignore_index=255)
    target[0, 0, 0] = 255  # at least one ignored pixel
    weight = torch.rand(classes, dtype=torch.float64) + 0.1
    ce = dict(weight=weight, ignore_index=255, label_smoothing=0.1)
    if head == "upsample":
        geometry, _ = upsample_geometry(coarse, 2, None, 1, out, "test")
        unfused = lambda t: unfused_upsample_loss(t, target, 2, crop=1, reduction="sum", **ce)  # noqa: E731
    else:
        geometry = interpolate_geometry(coarse, out, None, True, "test")
        unfused = lambda t: unfused_interpolate_loss(t, target, True, reduction="sum", **ce)  # noqa: E731
    args = (x, target, weight, *geometry.resampler_args(), 255, reduction, 0.1)
    loss, lse, weight_sum, grad_sum = torch.ops.fcn_fast.resample_cross_entropy_with_grad(*args)
    want = torch.ops.fcn_fast.resample_cross_entropy(*args, "cpu")
    for got, expected in zip((loss, lse, weight_sum), want):
        assert torch.equal(got, expected)
    xr = x.clone().requires_grad_()
    unfused(xr).backward()
    torch.testing.assert_close(grad_sum, xr.grad, rtol=1e-10, atol=1e-10)
    torch.library.opcheck(torch.ops.fcn_fast.resample_cross_entropy_with_grad.default, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_pass_gradient_of_low_precision_input(dtype):
    """The one-pass form keeps its gradient in float32 and rounds once to x's dtype: the
    gradient is the fp64 one up to that rounding."""
    backend_device("cpu")
    x = (torch.randn(2, 3, 5, 6) * 3).to(dtype)
    target = random_target(2, 10, 12, 3, ignore_index=255)
    xg = x.clone().requires_grad_()
    fcn_fast.upsample_cross_entropy(
        xg, target, factor=2, ignore_index=255, backend="cpu"
    ).backward()
    xr = x.double().requires_grad_()
    unfused_upsample_loss(xr, target, factor=2, ignore_index=255).backward()
    assert xg.grad.dtype == dtype
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize(
    "classes, reduction, one_pass",
    [(4, "mean", True), (4, "sum", True), (5, "mean", False), (4, "none", False)],
)
def test_cpu_training_takes_one_pass_when_its_gradient_is_no_larger_than_lse(
    classes, reduction, one_pass
):
    """The rule of csrc/ops/resample_cross_entropy.cpp, seen in the ops the profiler records:
    C * h * w <= H * W (here 16 C <= 64) and a reduced loss take the gradient in the forward's
    pass; otherwise the backward recomputes the logits."""
    backend_device("cpu")
    from torch.profiler import profile

    x = torch.randn(1, classes, 4, 4, requires_grad=True)
    target = random_target(1, 8, 8, classes)
    with profile() as prof:
        loss = fcn_fast.upsample_cross_entropy(
            x, target, factor=2, crop=1, reduction=reduction, backend="cpu"
        )
        loss.sum().backward()
    names = {event.name for event in prof.events()}
    assert ("fcn_fast::resample_cross_entropy_with_grad" in names) == one_pass
    assert ("fcn_fast::resample_cross_entropy_backward" in names) == (not one_pass)


def test_torch_compile_fullgraph_cpu():
    backend_device("cpu")
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = random_target(2, 11, 11, 4, ignore_index=255)

    def step(coarse):
        loss = fcn_fast.upsample_cross_entropy(
            coarse, target, factor=2, crop=1, ignore_index=255, backend="cpu"
        )
        labels = fcn_fast.upsample_argmax(
            coarse, factor=2, crop=1, out_size=(11, 11), backend="cpu"
        )
        return loss, labels

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, labels = compiled(x)
    want_loss, want_labels = step(x)
    torch.testing.assert_close(loss, want_loss)
    assert torch.equal(labels, want_labels)
    (grad,) = torch.autograd.grad(loss, x)
    (want,) = torch.autograd.grad(want_loss, x)
    torch.testing.assert_close(grad, want)


def test_no_full_resolution_logits_are_allocated_cpu():
    """Peak allocation during forward + backward stays far below one N x C x H x W tensor."""
    backend_device("cpu")
    from torch.profiler import ProfilerActivity, profile

    n, c, h, w = 2, 21, 256, 256
    x = torch.randn(n, c, 34, 34, requires_grad=True)
    target = random_target(n, h, w, c, ignore_index=255)
    logits_bytes = n * c * h * w * 4

    def peak_bytes(step):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            live += event.nbytes()
            peak = max(peak, live)
        return peak

    def fused():
        fcn_fast.upsample_cross_entropy(
            x, target, factor=8, crop=6, ignore_index=255, backend="cpu"
        ).backward()

    def unfused():
        unfused_upsample_loss(x, target, factor=8, crop=6, ignore_index=255).backward()

    fused_peak, unfused_peak = peak_bytes(fused), peak_bytes(unfused)
    assert unfused_peak > logits_bytes  # the measurement sees the logits when they exist
    # lse and the per-pixel target gradient scratch: 4 bytes a pixel, plus small buffers.
    assert fused_peak < 0.2 * logits_bytes, (fused_peak, logits_bytes)


# ---------------------------------------------------------------------------- models, modules


@pytest.mark.parametrize(
    "cls",
    [fcn_fast.FCN32s, fcn_fast.FCN16s, fcn_fast.FCN8s, fcn_fast.FCNAlexNet, fcn_fast.FCNGoogLeNet],
    ids=lambda c: c.__name__,
)
def test_model_loss_and_predict_match_forward(cls):
    backend_device("cpu")
    torch.manual_seed(0)
    model = cls(5, width=1 / 16).double().eval()
    for module in model.modules():  # random score layers (they start at zero)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=math.sqrt(2 / module.weight[0].numel()))
    x = torch.randn(2, 3, 37, 41, dtype=torch.float64)
    target = random_target(2, 37, 41, 5, ignore_index=255)
    check_loss_and_grad(
        lambda t: model.loss(t, target, ignore_index=255, label_smoothing=0.1),
        lambda t: F.cross_entropy(model(t), target, ignore_index=255, label_smoothing=0.1),
        x,
        rel=1e-9,
    )
    with torch.no_grad():
        assert torch.equal(model.predict(x), model(x).argmax(1))


def test_loss_modules():
    backend_device("cpu")
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    target = random_target(2, 20, 20, 4, ignore_index=255)
    weight = torch.rand(4, dtype=torch.float64) + 0.5
    up = fcn_fast.nn.UpsampleCrossEntropyLoss(4, crop=3, weight=weight, ignore_index=255)
    torch.testing.assert_close(
        up(x, target),
        unfused_upsample_loss(x, target, factor=4, crop=3, weight=weight, ignore_index=255),
    )
    inter = fcn_fast.nn.InterpolateCrossEntropyLoss(weight=weight, ignore_index=255)
    torch.testing.assert_close(
        inter(x, target), unfused_interpolate_loss(x, target, weight=weight, ignore_index=255)
    )
    assert "weight" in dict(inter.named_buffers())


@pytest.mark.gpu
def test_64bit_indexing(backend):
    """More than 2**31 (never stored) full-resolution logits: the far end's per-pixel loss and
    the gradient of the last input rows match the reference on a tail crop."""
    if backend == "cpu" or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (cuda/triton backends)")
    device = backend_device(backend)
    c, h, w = 600, 2000, 2000  # 2.4e9 logits; x is 1 x 600 x 251 x 251
    x = torch.randn(1, c, 251, 251, device=device, requires_grad=True)
    target = torch.randint(0, c, (1, h, w), device=device)
    loss = fcn_fast.upsample_cross_entropy(
        x, target, factor=8, crop=4, reduction="none", backend=backend
    )
    # The last 16 output rows read only x's last 4 rows (rows away from the tail's top edge).
    tail = x.detach()[:, :, -4:, :].clone().requires_grad_()
    # tail row 0 is x's row 247: full upsampled row 1988 (= output row 1984 + crop 4) is the
    # tail's upsampled row 1988 - 8 * 247 = 12.
    want = unfused_upsample_loss(tail, target[:, -16:, :], factor=8, crop=(12, 4), reduction="none")
    torch.testing.assert_close(loss[:, -16:, :], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["negative", "mixed", "zero-sum"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("head", ["upsample", "interpolate"])
def test_class_weights_of_any_sign(backend, kind, reduction, head):
    """F.cross_entropy's weights may be negative or sum to 0: the fused heads agree, on the
    cpu backend's one-pass form (coarse 3x3 -> 16x16 holds C*h*w <= H*W) and the two-pass one."""
    device = backend_device(backend)
    for c, coarse, out, eps in ((3, (3, 3), (16, 16), 0.0), (5, (4, 3), (7, 9), 0.1)):
        x = torch.randn(2, c, *coarse, dtype=torch.float64, device=device)
        target = random_target(2, *out, c, ignore_index=255, device=device)
        w = torch.rand(c, dtype=torch.float64) + 0.5
        w = {
            "negative": -w,
            "mixed": w * torch.tensor([1.0, -1.0] * c)[:c],
            "zero-sum": w - w.mean(),
        }
        ce = dict(weight=w[kind].to(device), ignore_index=255, reduction=reduction,
                  label_smoothing=eps)  # fmt: skip
        if head == "upsample":
            fused = lambda t, target=target, ce=ce: fcn_fast.upsample_cross_entropy(  # noqa: E731
                t, target, factor=4, backend=backend, **ce
            )
            unfused = lambda t, target=target, ce=ce: unfused_upsample_loss(  # noqa: E731
                t, target, factor=4, **ce
            )
        else:
            fused = lambda t, target=target, ce=ce: fcn_fast.interpolate_cross_entropy(  # noqa: E731
                t, target, backend=backend, **ce
            )
            unfused = lambda t, target=target, ce=ce: unfused_interpolate_loss(t, target, **ce)  # noqa: E731
        check_loss_and_grad(fused, unfused, x)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_mean_over_a_weight_sum_of_zero(backend, smoothing):
    """Every counted pixel of a class weighted 0: PyTorch's mean is 0 / 0, its gradient NaN
    at the coarse cells those pixels reach; every pixel ignored: a gradient of 0. The cpu
    backend's one-pass form keeps only the summed gradient, which cannot tell the two apart,
    so it runs the two-pass backward there."""
    device = backend_device(backend)
    x0 = torch.randn(1, 3, 4, 4, dtype=torch.float64, device=device)
    weight = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, device=device)
    target = torch.full((1, 16, 16), 255, device=device)
    target[:, :6, :6] = 0  # reaches the top-left coarse cells only
    for t in (target, torch.full_like(target, 255)):
        x, xr = x0.clone().requires_grad_(), x0.clone().requires_grad_()
        ce = dict(weight=weight, ignore_index=255, label_smoothing=smoothing)
        got = fcn_fast.interpolate_cross_entropy(x, t, backend=backend, **ce)
        want = unfused_interpolate_loss(xr, t, **ce)
        assert torch.isnan(want) and not torch.isfinite(got)  # NaN, or inf with smoothing
        got.backward()
        want.backward()
        # Non-finite wherever PyTorch's is (the kernels may also spread a NaN to a cell whose
        # bilinear weight is 0 where PyTorch skips it), PyTorch's value wherever finite.
        assert not torch.isfinite(x.grad[~torch.isfinite(xr.grad)]).any()
        finite = torch.isfinite(x.grad)
        torch.testing.assert_close(x.grad[finite], xr.grad[finite], rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(x.grad) == 0  # the last round: every pixel ignored

"""pixel_cross_entropy and PixelCrossEntropyLoss vs F.cross_entropy in float64 (design.md 2.3)."""

import pytest
import torch
import torch.nn.functional as F
from backends import backend_device

import fcn_fast
from fcn_fast import pixel_cross_entropy
from fcn_fast.nn import PixelCrossEntropyLoss

# The Triton interpreter runs masked-out lanes through numpy (log(0), inf - inf).
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
)

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}


def _inputs(n, c, spatial, ignore_index, device, dtype=torch.float32, scale=3.0, ignore_frac=0.2):
    logits = (torch.randn(n, c, *spatial, dtype=torch.float64) * scale).to(dtype).to(device)
    target = torch.randint(0, c, (n, *spatial))
    target[torch.rand(target.shape) < ignore_frac] = ignore_index
    return logits, target.to(device)


def _check(
    backend,
    logits,
    target,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    grad=None,
    tol=None,
):
    """Loss and gradient of `backend` equal F.cross_entropy in float64 on the same inputs."""
    tol = tol or TOL[logits.dtype]
    x = logits.detach().clone().requires_grad_()
    before = x.detach().clone()
    out = pixel_cross_entropy(
        x, target, weight, ignore_index, reduction, label_smoothing, backend=backend
    )
    xd = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(
        xd,
        target,
        None if weight is None else weight.double(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    assert out.dtype == logits.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, equal_nan=True, **tol)
    if grad is None:
        grad = torch.randn_like(ref) if reduction == "none" else torch.tensor(1.7).double()
    out.backward(grad.to(out.dtype))
    ref.backward(grad.double())
    assert x.grad.dtype == logits.dtype and x.grad.shape == logits.shape
    torch.testing.assert_close(x.grad.double(), xd.grad, equal_nan=True, **tol)
    assert torch.equal(x.detach(), before)  # the logits are never overwritten
    return out, x.grad


# (C, spatial, reduction, weighted, label_smoothing, ignore_index)
CASES = [
    (1, (5, 6), "mean", False, 0.0, -100),
    (2, (7,), "sum", True, 0.1, -100),
    (21, (5, 7), "mean", True, 0.0, 255),
    (21, (3, 4, 5), "none", False, 0.2, 0),
    (21, (), "mean", True, 0.1, -100),
    (21, (), "none", False, 0.0, 255),
    (150, (3, 5), "none", True, 0.1, 255),
    (150, (6,), "sum", False, 0.0, 0),
    (1000, (2, 3), "mean", True, 0.3, -100),  # many class tiles: online softmax
    (5, (4,), "mean", False, 1.0, -100),
    (7, (3, 3), "sum", True, 0.0, -100),
]


@pytest.mark.parametrize("c,spatial,reduction,weighted,eps,ignore_index", CASES)
def test_matches_cross_entropy(backend, c, spatial, reduction, weighted, eps, ignore_index):
    device = backend_device(backend)
    logits, target = _inputs(3, c, spatial, ignore_index, device)
    weight = torch.rand(c, device=device) + 0.1 if weighted else None
    _check(backend, logits, target, weight, ignore_index, reduction, eps)


def test_single_sample_and_large_c_reference_backend():
    logits, target = torch.randn(9), torch.tensor(4)
    for backend in ("reference", "cpu"):
        if backend == "cpu":
            backend_device("cpu")
        _check(backend, logits, target, reduction="none", label_smoothing=0.1)
    logits, target = _inputs(2, 3000, (4,), -100, "cpu")
    _check("reference", logits, target, weight=torch.rand(3000) + 0.5, label_smoothing=0.2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_chunks_cpu(channels_last):
    """Several chunks per image and a partial last chunk (CPU tiling): 1024 pixels a chunk
    read in place (NCHW), 8192 / C packed (channels_last)."""
    backend_device("cpu")
    for c, spatial in ((21, (37, 41)), (1000, (3, 700)), (3, (2000, 1)), (150, (9, 11))):
        logits, target = _inputs(2, c, spatial, 255, "cpu")
        if channels_last:
            logits = logits.contiguous(memory_format=torch.channels_last)
        _check("cpu", logits, target, torch.rand(c) + 0.1, 255, "mean", 0.1)
        _check("cpu", logits, target, None, 255, "none", 0.0)


def test_large_gradient_buffer_cpu():
    """A gradient over 16 MiB takes the huge-page allocation path of the CPU backward."""
    backend_device("cpu")
    logits, target = _inputs(1, 21, (450, 460), 255, "cpu", ignore_frac=0.05)
    logits = logits.contiguous(memory_format=torch.channels_last)
    x = logits.clone().requires_grad_()
    pixel_cross_entropy(x, target, None, 255, "sum", 0.1, backend="cpu").backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    xr = logits.clone().requires_grad_()
    F.cross_entropy(xr, target, ignore_index=255, reduction="sum", label_smoothing=0.1).backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)
    first = x.grad.clone()
    pixel_cross_entropy(x, target, None, 255, "sum", 0.1, backend="cpu").backward()
    torch.testing.assert_close(x.grad, 2 * first)  # accumulates into the mapped buffer


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_extreme_logits(backend, reduction):
    device = backend_device(backend)
    logits, target = _inputs(2, 21, (4, 5), 255, device, scale=1e4)
    _check(backend, logits, target, None, 255, reduction, 0.0, tol=dict(rtol=1e-5, atol=1e-3))
    _check(backend, logits, target, None, 255, reduction, 0.1, tol=dict(rtol=1e-5, atol=1e-2))


def test_softmax_accurate_across_exps_whole_range(backend):
    """Logits spread over [-90, 0] below their max: every softmax value exp(x - lse), from 1
    down to exp's underflow, as close to float64 as float32 allows (the kernels' own exp: the
    CPU's polynomial, CUDA's expf, Triton's tl.exp)."""
    device = backend_device(backend)
    c = 2000
    spread = torch.linspace(-90.0, 0.0, c, dtype=torch.float64)
    offsets = torch.tensor([0.0, 17.3, -41.7], dtype=torch.float64)  # same shape, other n
    logits = (spread[torch.randperm(c)][None, :, None] + offsets[:, None, None]).float()
    target = torch.tensor([[5], [c - 1], [0]])
    x = logits.to(device).detach().requires_grad_()
    pixel_cross_entropy(x, target.to(device), reduction="sum", backend=backend).backward()
    xd = logits.double().requires_grad_()
    F.cross_entropy(xd, target, reduction="sum").backward()
    # x - lse is itself rounded to float32: up to 87 * 2^-24 = 5e-6 relative in its exp
    # (PyTorch's float32 F.cross_entropy is off by 8e-6 here). atol: exp may flush to zero
    # what lies below float32's normal range.
    torch.testing.assert_close(x.grad.cpu().double(), xd.grad, rtol=1e-5, atol=1e-37)


def test_logits_far_above_class_0_and_infinities_in_one_chunk(backend):
    """The CPU loss sums exp(x - x[0]) in one pass and falls back to max-shifted passes for a
    chunk where that cannot work: a logit more than 80 above class 0's, an infinite logit.
    Pixels on both sides of that line, side by side, each as float64 says."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(5)
    c, n_pix = 7, 40
    logits = torch.randn(1, c, n_pix, generator=gen, dtype=torch.float64) * 3
    logits[0, 0, 0:4] = torch.tensor([-79.0, -81.0, -120.0, -200.0])  # below the rest by ~80+
    logits[0, 3, 4], logits[0, 0, 5] = 95.0, -95.0  # one logit far above, class 0 far below
    logits[0, 2, 6] = float("-inf")  # a -inf logit that is not class 0
    logits[0, :, 7] = torch.linspace(-30.0, 60.0, c)  # within 80 of class 0, large sum
    target = torch.randint(0, c, (1, n_pix), generator=gen)
    target[0, 6] = 0
    for reduction in ("none", "sum"):
        _check(backend, logits.float().to(device), target.to(device), reduction=reduction)
    # An infinite logit: the pixel's loss is PyTorch's (inf or NaN), the others stay exact.
    logits[0, 1, 8], logits[0, 0, 9] = float("inf"), float("-inf")
    target[0, 9] = 2
    out = pixel_cross_entropy(
        logits.float().to(device), target.to(device), reduction="none", backend=backend
    )
    ref = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(out.cpu().double(), ref, equal_nan=True, **TOL[torch.float32])


def test_neg_inf_non_target_logits(backend):
    device = backend_device(backend)
    logits, target = _inputs(2, 6, (3, 5), -100, device)
    mask = torch.rand(logits.shape, device=device) < 0.5
    onehot = F.one_hot(target.clamp(min=0), 6).movedim(-1, 1).bool()
    logits = logits.masked_fill(mask & ~onehot, float("-inf"))
    logits[:, 1:, 0, 0] = float("-inf")  # classes 1.. are -inf: a pixel with one finite logit
    logits[:, 0, 0, 0], target[:, 0, 0] = 0.5, 0
    for reduction in ("none", "mean"):
        out, grad = _check(backend, logits, target, torch.rand(6, device=device), -100, reduction)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_nan_propagates(backend):
    device = backend_device(backend)
    logits, target = _inputs(2, 5, (3, 4), -100, device, ignore_frac=0.0)
    logits[1, 2, 1, 1] = float("nan")
    out = pixel_cross_entropy(logits, target, reduction="none", backend=backend)
    ref = F.cross_entropy(logits.double(), target, reduction="none")
    assert torch.isnan(out[1, 1, 1]) and torch.isnan(ref[1, 1, 1])
    torch.testing.assert_close(out.double(), ref, equal_nan=True, **TOL[torch.float32])
    assert torch.isnan(pixel_cross_entropy(logits, target, backend=backend))


def test_all_ignored(backend):
    device = backend_device(backend)
    logits, target = _inputs(2, 4, (3, 3), 255, device, ignore_frac=1.0)
    weight = torch.rand(4, device=device)
    out, grad = _check(backend, logits, target, weight, 255, "mean", 0.1)
    assert torch.isnan(out)  # 0 / 0, as PyTorch
    out, grad = _check(backend, logits, target, None, 255, "sum", 0.0)
    assert out.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_empty(backend):
    device = backend_device(backend)
    logits, target = torch.randn(2, 4, 0, 3, device=device), torch.zeros(2, 0, 3, dtype=torch.long)
    target = target.to(device)
    _check(backend, logits, target, reduction="sum")
    _check(backend, logits, target, reduction="none")
    assert torch.isnan(pixel_cross_entropy(logits, target, backend=backend))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    device = backend_device(backend)
    logits, target = _inputs(2, 21, (3, 5), 255, device, dtype=dtype)
    weight = (torch.rand(21, device=device) + 0.1).to(dtype)
    for reduction, eps in (("mean", 0.1), ("none", 0.0), ("sum", 0.0)):
        _check(backend, logits, target, weight, 255, reduction, eps)


def test_layouts_and_expanded_grad(backend):
    device = backend_device(backend)
    base, target = _inputs(2, 21, (6, 9), 255, device)
    channels_last = base.contiguous(memory_format=torch.channels_last)
    sliced, _ = _inputs(2, 21, (12, 9), 255, device)
    sliced = sliced[:, :, ::2, :]  # non-contiguous pixels: reshape copies
    permuted = base.permute(0, 1, 3, 2)  # (N, C, W, H) view
    for logits, tgt in (
        (channels_last, target),
        (sliced, target),
        (permuted, target.transpose(1, 2)),
        (base[:, ::2], target.clamp(max=10)),  # every other class: strided channels
    ):
        _check(backend, logits, tgt, None, 255, "mean", 0.1)
        grad = torch.randn(1, *tgt.shape[1:], dtype=torch.float64, device=device).expand(tgt.shape)
        _check(backend, logits, tgt, None, 255, "none", 0.0, grad=grad)
    rows = torch.randn(21, 13, device=device).t()  # (N, C) with classes strided
    _check(backend, rows, torch.randint(0, 21, (13,), device=device), reduction="sum")
    out, grad = _check(backend, channels_last, target, None, 255)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_deterministic(backend):
    device = backend_device(backend)
    size = (40, 50) if backend == "cpu" else (5, 11)
    logits, target = _inputs(2, 21, size, 255, device)
    weight = torch.rand(21, device=device)

    def run():
        x = logits.clone().requires_grad_()
        out = pixel_cross_entropy(x, target, weight, 255, "mean", 0.1, backend=backend)
        out.backward()
        return out.detach(), x.grad

    first, again = run(), run()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    if backend == "cpu":  # fixed chunking: the thread count does not change a bit
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = run()
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(first[0], single[0]) and torch.equal(first[1], single[1])


@pytest.mark.parametrize("bad", [-1, 4, 255])
def test_out_of_range_target(backend, bad):
    device = backend_device(backend)
    if device.type == "cuda":
        pytest.skip("a device-side assert poisons the CUDA context; see test_cuda_bad_target")
    logits, target = _inputs(2, 4, (3, 3), -100, device)
    target[1, 2, 0] = bad
    with pytest.raises(ValueError, match="target"):
        pixel_cross_entropy(logits, target, backend=backend)


@pytest.mark.gpu
def test_cuda_bad_target_raises_async():
    """cuda/triton: the async device assert surfaces as a RuntimeError at a sync.

    It corrupts the CUDA context, so this runs in its own process.
    """
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the check is a device-side assert)")
    import subprocess
    import sys

    for backend in ("cuda", "triton"):
        if not fcn_fast.available_backends()[backend].available:
            continue
        code = (
            "import torch, fcn_fast\n"
            "x = torch.randn(2, 4, 8, device='cuda')\n"
            "t = torch.zeros(2, 8, dtype=torch.long, device='cuda'); t[1, 3] = 7\n"
            f"fcn_fast.pixel_cross_entropy(x, t, backend='{backend}')\n"
            "torch.cuda.synchronize()\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "assert" in (proc.stderr + proc.stdout).lower()


def test_argument_errors():
    x, t = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    pce = pixel_cross_entropy
    with pytest.raises(TypeError, match="logits"):
        pce(x.numpy(), t)
    with pytest.raises(TypeError, match="logits"):
        pce(x.long(), t)
    with pytest.raises(ValueError, match="logits"):
        pce(torch.randn(2, 0, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        pce(torch.randn(()), torch.tensor(0))
    with pytest.raises(TypeError, match="target.*probabilities"):
        pce(x, torch.rand(2, 3, 4, 5))
    with pytest.raises(TypeError, match="target must be class indices of dtype int64, int32 or"):
        pce(x, t.short())
    with pytest.raises(TypeError, match="target"):
        pce(x, [0, 1])
    with pytest.raises(ValueError, match="target must have shape"):
        pce(x, t[:, :3])
    with pytest.raises(ValueError, match="target must have shape"):
        pce(x, t[0])
    with pytest.raises(ValueError, match="weight"):
        pce(x, t, torch.rand(4))
    with pytest.raises(ValueError, match="weight"):
        pce(x, t, torch.rand(3, 1))
    with pytest.raises(TypeError, match="weight must be a floating-point"):
        pce(x, t, torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="weight"):
        pce(x, t, [1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="ignore_index"):
        pce(x, t, ignore_index=2.0)
    with pytest.raises(ValueError, match="reduction"):
        pce(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        pce(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        pce(x, t, label_smoothing=-0.1)
    with pytest.raises(TypeError, match="label_smoothing"):
        pce(x, t, label_smoothing="0.1")
    with pytest.raises(ValueError, match="backend"):
        pce(x, t, backend="numpy")
    with pytest.raises(ValueError, match="cuda"):
        pce(x, t, backend="cuda")  # CPU tensors


def test_device_mismatch_errors():
    x, t = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    with pytest.raises(ValueError, match="target is on"):
        pixel_cross_entropy(x, t.to("meta"))
    with pytest.raises(ValueError, match="weight is on"):
        pixel_cross_entropy(x, t, torch.rand(3, device="meta"))


def test_auto_and_reference_backends():
    logits, target = _inputs(2, 5, (3, 4), -100, "cpu")
    assert fcn_fast._backend.resolve_backend("auto", "pixel_cross_entropy", logits.device) in (
        "cpu",
        "reference",
    )
    for backend in ("auto", "reference"):
        _check(backend, logits, target, torch.rand(5) + 0.1, -100, "mean", 0.2)


def test_opcheck():
    backend_device("cpu")
    op = torch.ops.fcn_fast.pixel_cross_entropy.default
    backward = torch.ops.fcn_fast.pixel_cross_entropy_backward.default
    for dtype, reduction, weighted, eps in (
        (torch.float32, 1, True, 0.1),
        (torch.float64, 0, False, 0.0),
        (torch.bfloat16, 2, True, 0.0),
    ):
        # N-D logits as the public op takes them, and the (N, C) case it transposes.
        for shape in ((2, 5, 3, 2), (7, 5)):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            t = torch.randint(0, 5, shape[:1] + shape[2:])
            t.view(-1)[1] = -100
            # The op reads class weights in the accumulation dtype (the front door converts).
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            w = torch.rand(5, dtype=acc) if weighted else None
            torch.library.opcheck(op, (x, t, w, -100, reduction, eps, "cpu"))
            loss, lse, wsum = op(x, t, w, -100, reduction, eps, "cpu")
            g = torch.randn_like(loss)
            args = (g, x.detach(), t, w, lse, wsum, -100, reduction, eps, "cpu")
            torch.library.opcheck(backward, args)
        # The Triton twins the routers call, on the kernels' (N, C, S) contract: schema and
        # fake kernel.
        if fcn_fast.available_backends()["triton"].available:
            checks = ("test_schema", "test_faketensor")
            x3, t2 = torch.randn(2, 5, 6, dtype=dtype), torch.randint(0, 5, (2, 6))
            fwd_args = (x3, t2, w, -100, reduction, eps)
            torch.library.opcheck(
                torch.ops.fcn_fast.pixel_cross_entropy_triton, fwd_args, test_utils=checks
            )
            loss, lse, wsum = torch.ops.fcn_fast.pixel_cross_entropy_triton(*fwd_args)
            bwd_args = (torch.randn_like(loss), x3, t2, w, lse, wsum, -100, reduction, eps)
            torch.library.opcheck(
                torch.ops.fcn_fast.pixel_cross_entropy_backward_triton,
                bwd_args,
                test_utils=checks,
            )


def test_gradcheck_fp64():
    backend_device("cpu")
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (2, 3, 2))
    t[0, 0, 0] = 255
    w = torch.rand(4, dtype=torch.float64) + 0.1
    for reduction in ("none", "mean", "sum"):

        def f(inp, reduction=reduction):
            return pixel_cross_entropy(inp, t, w, 255, reduction, 0.15, backend="cpu")

        assert torch.autograd.gradcheck(f, (x,))


def test_torch_compile_cpu():
    backend_device("cpu")
    logits, target = _inputs(2, 7, (5, 6), 255, "cpu")
    weight = torch.rand(7) + 0.1

    def loss_fn(x):
        return pixel_cross_entropy(x, target, weight, 255, "mean", 0.1, backend="cpu") * 2.0

    compiled = torch.compile(loss_fn, fullgraph=True)  # forward and AOT-compiled backward
    x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = compiled(x), loss_fn(y)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.gpu
def test_torch_compile_triton():
    if not torch.cuda.is_available():
        pytest.skip("torch.compile cannot trace a Triton op under the interpreter: needs a GPU")
    backend_device("triton")
    logits, target = _inputs(2, 7, (5, 6), 255, "cuda")
    x = logits.clone().requires_grad_()
    f = torch.compile(
        lambda x: pixel_cross_entropy(x, target, None, 255, "mean", 0.1, backend="triton"),
        fullgraph=True,
    )
    torch.testing.assert_close(f(x), pixel_cross_entropy(x, target, None, 255, "mean", 0.1))


def test_module_matches_nn_cross_entropy(backend):
    device = backend_device(backend)
    logits, target = _inputs(2, 6, (3, 4), 255, device)
    weight = torch.rand(6, device=device) + 0.1
    kwargs = dict(weight=weight, ignore_index=255, reduction="sum", label_smoothing=0.05)
    ours = PixelCrossEntropyLoss(**kwargs, backend=backend)
    ref = torch.nn.CrossEntropyLoss(**kwargs)
    torch.testing.assert_close(ours(logits, target), ref(logits, target), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.state_dict()["weight"], weight)
    with pytest.warns(UserWarning, match="deprecated"):  # reduce=False, as nn.CrossEntropyLoss
        legacy = PixelCrossEntropyLoss(None, None, 255, False, backend=backend)
    assert legacy.reduction == "none" and legacy(logits, target).shape == target.shape
    assert "backend" in repr(ours)


def test_weight_layout_and_dtype(backend, device):
    """A non-contiguous weight, and fp32 weights with bf16 logits (a loss module's buffer
    under autocast): read at full precision, as F.cross_entropy does under autocast."""
    logits = torch.randn(2, 5, 7, device=device)
    target = torch.randint(0, 5, (2, 7), device=device)
    weight = (torch.rand(10, dtype=torch.float64, device=device) + 0.1)[::2]
    expected = F.cross_entropy(logits.double(), target, weight, label_smoothing=0.1)
    got = pixel_cross_entropy(logits.double(), target, weight, label_smoothing=0.1, backend=backend)
    torch.testing.assert_close(got, expected)
    low = logits.bfloat16()
    expected = F.cross_entropy(low.double(), target, weight.float().double(), label_smoothing=0.1)
    got = pixel_cross_entropy(low, target, weight.float(), label_smoothing=0.1, backend=backend)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, rtol=1e-2, atol=1e-2)


def test_autocast_returns_float32_like_pytorch(backend, device):
    """Under autocast the fused loss returns float32, as F.cross_entropy, and is the float32
    loss of the bf16 logits (read directly, rounded once at the end).

    Eager differs by device. On the CPU, cross_entropy_loss is on autocast's float32 list: it
    computes exactly that. On CUDA it is not, and it calls log_softmax(x, dtype=x.dtype), which
    autocast leaves in bf16: the log-probabilities are rounded to bf16 before the float32 NLL
    (docs/design.md 2.3). That was the 5e-5 "mismatch" of the first H200 run; the fused loss is
    the more exact one, and within bf16's resolution of eager."""
    logits = torch.randn(2, 7, 5, 6, device=device).bfloat16()
    target = torch.randint(0, 7, (2, 5, 6), device=device)
    weight = torch.rand(7, device=device) + 0.1
    for reduction in ("mean", "sum", "none"):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            eager = F.cross_entropy(logits, target, weight, reduction=reduction)
            got = pixel_cross_entropy(logits, target, weight, reduction=reduction, backend=backend)
        assert eager.dtype == got.dtype == torch.float32
        exact = F.cross_entropy(logits.double(), target, weight.double(), reduction=reduction)
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)
        # bf16 log-probabilities of a few units: 2^-9 relative each, 0.02 at worst.
        torch.testing.assert_close(got, eager, rtol=1e-2, atol=2e-2)
        if device.type == "cpu":
            torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_64bit_indexing(backend):
    """More than 2**31 logits: the far end's loss and gradient match the reference on it."""
    if backend == "cpu" or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (cuda/triton backends)")
    device = backend_device(backend)
    c, s = 21, 2**27  # 2.8e9 fp16 logits (5.6 GB), one image
    logits = torch.randn(1, c, s, device=device, dtype=torch.float16, requires_grad=True)
    target = torch.randint(0, c, (1, s), device=device)
    loss = pixel_cross_entropy(logits, target, reduction="none", backend=backend)
    tail = slice(s - 1000, s)
    want = F.cross_entropy(logits.detach()[:, :, tail].float(), target[:, tail], reduction="none")
    torch.testing.assert_close(loss[:, tail].float(), want, rtol=1e-3, atol=1e-3)
    grad = torch.rand_like(loss)
    (g,) = torch.autograd.grad(loss, logits, grad)
    tail_logits = logits.detach()[:, :, tail].float().requires_grad_()
    (want_g,) = torch.autograd.grad(
        F.cross_entropy(tail_logits, target[:, tail], reduction="none"), tail_logits, grad[:, tail]
    )
    torch.testing.assert_close(g[:, :, tail].float(), want_g, rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
def test_fp16_grad_scaler_step_gives_pytorchs_finite_gradients(backend):
    """fp16 autocast with GradScaler's default 65536 scale (above fp16's largest value): one
    conv -> loss step gives the finite gradients F.cross_entropy's step gives."""
    if not torch.cuda.is_available():
        pytest.skip("GradScaler's fp16 recipe is a CUDA one")
    device = backend_device(backend)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 7, 3, padding=1).to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    target = torch.randint(0, 7, (2, 16, 16), device=device)
    grads = []
    for loss_fn in (
        lambda z: F.cross_entropy(z, target),
        lambda z: pixel_cross_entropy(z, target, backend=backend),
    ):
        conv.zero_grad(set_to_none=True)
        scaler = torch.amp.GradScaler("cuda", init_scale=65536.0)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(conv(x))
        scaler.scale(loss).backward()
        grads.append(conv.weight.grad.clone())
    assert torch.isfinite(grads[0]).all() and torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-2, atol=2e-2 * grads[0].abs().max())


def _fp64_gradient(logits, target, weight, ignore_index, reduction, eps, upstream=1.0):
    xd = logits.detach().double().requires_grad_()
    w = None if weight is None else weight.double()
    loss = F.cross_entropy(
        xd, target, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps
    )
    (loss * upstream).backward()
    return xd.grad


@pytest.mark.parametrize("reduction", [1, 2])
@pytest.mark.parametrize(
    "c, shape, layout",
    [
        (21, (3, 21, 7, 9), "nchw"),
        (150, (2, 150, 5, 3), "channels_last"),  # packed chunks, gradient stored from a buffer
        (1, (2, 1, 4, 5), "nchw"),
        (5, (7, 5), "rows"),  # (N, C): classes contiguous
        (21, (21,), "one pixel"),
        (21, (2, 21, 6, 8), "permuted"),  # pixels not contiguous
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pass_kernel_gives_the_loss_gradient(reduction, c, shape, layout, dtype):
    """pixel_cross_entropy_with_grad, the CPU training path, called directly: its loss, lse and
    weight_sum are the forward kernel's bit for bit, and its gradient (for an upstream gradient
    of 1) is F.cross_entropy's in fp64, in the logits' layout."""
    backend_device("cpu")
    logits = torch.randn(shape, dtype=torch.float64) * 3
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        logits = logits.transpose(2, 3)
    logits = logits.to(dtype)
    target_shape = (shape[0], *logits.shape[2:]) if len(shape) > 1 else ()
    target = torch.randint(0, c, target_shape)
    if target.dim():
        target.view(-1)[0] = 255  # an ignored pixel
    weight = torch.rand(c, dtype=dtype) + 0.1
    args = (logits, target, weight, 255, reduction, 0.1)
    loss, lse, weight_sum, grad = torch.ops.fcn_fast.pixel_cross_entropy_with_grad(*args)
    want = torch.ops.fcn_fast.pixel_cross_entropy(*args, "cpu")
    for got, expected in zip((loss, lse, weight_sum), want):
        assert torch.equal(got, expected)
    reduction_name = {1: "mean", 2: "sum"}[reduction]
    expected = _fp64_gradient(logits, target, weight, 255, reduction_name, 0.1)
    assert grad.dtype == dtype and grad.shape == logits.shape
    if layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad.double(), expected, **TOL[dtype])
    torch.library.opcheck(torch.ops.fcn_fast.pixel_cross_entropy_with_grad.default, args)


def test_one_pass_kernel_with_every_pixel_ignored():
    """Mean over no pixel: NaN loss as PyTorch's, and a gradient of 0 (not 0 / 0)."""
    backend_device("cpu")
    logits, target = torch.randn(2, 4, 3, 5), torch.full((2, 3, 5), 255)
    loss, _, weight_sum, grad = torch.ops.fcn_fast.pixel_cross_entropy_with_grad(
        logits, target, None, 255, 1, 0.1
    )
    assert loss.isnan() and weight_sum == 0
    assert torch.equal(grad, torch.zeros_like(logits))


@pytest.mark.parametrize(
    "dtype, reduction, one_pass",
    [
        (torch.float32, "mean", True),
        (torch.float64, "sum", True),
        (torch.float32, "none", False),  # a gradient per pixel: nothing to take in advance
        (torch.bfloat16, "mean", False),  # the kept gradient would be rounded twice
    ],
)
def test_cpu_training_takes_one_pass_for_reduced_float_losses(dtype, reduction, one_pass):
    """The rule of csrc/ops/pixel_cross_entropy.cpp, seen in the ops the profiler records."""
    backend_device("cpu")
    from torch.profiler import profile

    logits, target = _inputs(2, 5, (4, 3), 255, "cpu", dtype)
    x = logits.requires_grad_()
    with profile() as prof:
        pixel_cross_entropy(x, target, ignore_index=255, reduction=reduction, backend="cpu")
        pixel_cross_entropy(
            x, target, ignore_index=255, reduction=reduction, backend="cpu"
        ).sum().backward()
    names = {event.name for event in prof.events()}
    assert ("fcn_fast::pixel_cross_entropy_with_grad" in names) == one_pass
    assert ("fcn_fast::pixel_cross_entropy_backward" in names) == (not one_pass)


def test_one_pass_upstream_gradients_and_retained_graphs():
    """Every way the kept gradient leaves the backward (csrc/ops/pixel_cross_entropy.cpp)
    gives F.cross_entropy's gradient: handed over for an upstream gradient of 1, scaled in
    place when the graph is freed, scaled into a new tensor when it is retained or was
    handed over before; and a handed-over gradient modified in place is reported."""
    backend_device("cpu")
    logits, target = _inputs(2, 21, (6, 7), 255, "cpu")
    weight = torch.rand(21) + 0.1

    def loss_of(x):
        return pixel_cross_entropy(x, target, weight, 255, "mean", 0.1, backend="cpu")

    def expected(upstream):
        return _fp64_gradient(logits, target, weight, 255, "mean", 0.1, upstream).float()

    def close(got, upstream):
        torch.testing.assert_close(got, expected(upstream), rtol=1e-5, atol=1e-7)

    x = logits.clone().requires_grad_()
    loss = loss_of(x)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)  # handed over
    (g2,) = torch.autograd.grad(loss * 0.5, x, retain_graph=True)  # into a new tensor
    (g3,) = torch.autograd.grad(loss * 3.0, x)  # handed over before: into a new tensor
    close(g1, 1.0), close(g2, 0.5), close(g3, 3.0)

    x = logits.clone().requires_grad_()
    (loss_of(x) * -2.0).backward()  # freed after this backward: scaled in place
    close(x.grad, -2.0)
    (loss_of(x) * 0.25).backward()  # accumulates into x.grad
    close(x.grad, -1.75)

    x = logits.clone().requires_grad_()
    loss = loss_of(x)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    g1.mul_(2)  # the kept tensor itself
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, x)


def signed_weights(kind, c, device):
    """F.cross_entropy takes any real class weights; its mean divides by their sum over the
    counted pixels, whatever its sign."""
    w = torch.rand(c, dtype=torch.float64) + 0.5
    if kind == "negative":  # the weight sum is negative
        w = -w
    elif kind == "mixed":
        w[::2] = -w[::2]
    elif kind == "zero-sum":  # the class weights sum to 0 (smoothing's total)
        w = w - w.mean()
    return w.to(device)


@pytest.mark.parametrize("kind", ["negative", "mixed", "zero-sum"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_class_weights_of_any_sign(backend, kind, reduction, dtype):
    """A negative weight sum was a zero gradient on the cpu backend's one-pass form."""
    device = backend_device(backend)
    for c, spatial, eps in ((3, (), 0.0), (5, (4, 7), 0.1), (21, (9,), 0.0)):
        logits, target = _inputs(2, c, spatial, -100, device, dtype=dtype)
        weight = signed_weights(kind, c, device).to(dtype)
        _check(backend, logits, target, weight, -100, reduction, eps)
    # The reproducer: two pixels, weights all negative.
    x = torch.randn(2, 3, dtype=torch.float64, device=device)
    w = -(torch.rand(3, dtype=torch.float64, device=device) + 0.5)
    _, grad = _check(backend, x, torch.tensor([0, 2], device=device), w, reduction="mean")
    assert grad.abs().sum() > 0


def assert_pytorchs_non_finite(got, want):
    """Equal where PyTorch's value is finite, non-finite where it is not (NaN or inf: the two
    may reach an infinite product by different orders)."""
    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), (got, want)
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_mean_over_a_weight_sum_of_zero(backend, smoothing):
    """PyTorch's one special case is every pixel ignored (NaN loss, zero gradient); counted
    pixels whose weights sum to 0 (here: a class weighted 0) give a NaN loss and a non-finite
    gradient at those pixels, as F.cross_entropy's."""
    device = backend_device(backend)
    logits, target = _inputs(2, 4, (3, 5), -100, device, dtype=torch.float64, ignore_frac=0.3)
    weight = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64, device=device)
    target[target != -100] = 0
    for t in (target, torch.full_like(target, -100)):
        x, xr = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        got = pixel_cross_entropy(x, t, weight, label_smoothing=smoothing, backend=backend)
        want = F.cross_entropy(xr, t, weight, label_smoothing=smoothing)
        # NaN as PyTorch's, or inf where smoothing's sum is not 0 (PyTorch divides the smoothing
        # and target terms by the weight sum apart, and the target's 0 / 0 wins).
        assert torch.isnan(want) and not torch.isfinite(got)
        got.backward()
        want.backward()
        assert_pytorchs_non_finite(x.grad, xr.grad)
    assert torch.count_nonzero(x.grad) == 0  # every pixel ignored

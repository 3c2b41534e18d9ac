"""upsample_skip / interpolate_add as PyTorch ops: errors, gradcheck, opcheck, torch.compile."""

import pytest
import torch
from resample_cases import randn

import fcn_fast
from fcn_fast import BackendUnavailableError

needs_cpu = pytest.mark.skipif(
    not fcn_fast.available_backends()["cpu"].available, reason="C++ extension not built"
)


@needs_cpu
def test_gradcheck_upsample_skip_cpu():
    coarse = randn(2, 3, 3, 4, requires_grad=True)
    skip = randn(2, 3, 8, 9, requires_grad=True)
    for factor, kernel, out_size in [
        (2, 4, (5, 6)),
        (3, 5, (5, 6)),
        (1, 1, (2, 3)),
        (4, 8, (5, 6)),
    ]:
        assert torch.autograd.gradcheck(
            lambda c, s, f=factor, k=kernel, o=out_size: fcn_fast.upsample_skip(
                c, s, factor=f, kernel_size=k, crop=1, skip_crop=(2, 1), out_size=o, backend="cpu"
            ),
            (coarse, skip),
            fast_mode=True,
        )


@needs_cpu
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=(7, 3)),
        dict(size=(4, 9), align_corners=True),
        dict(scale_factor=0.6),
        dict(scale_factor=2.5),
        dict(size=(1, 1), align_corners=True),
    ],
    ids=str,
)
def test_gradcheck_interpolate_add_cpu(kwargs):
    x = randn(2, 3, 5, 6, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: fcn_fast.interpolate_add(t, backend="cpu", **kwargs), (x,), fast_mode=True
    )


def _op_args(skip: str | None):
    """skip: None, "window" (a window inside a larger skip), "whole" (skip is the window)."""
    coarse = randn(2, 3, 4, 5, requires_grad=True)
    skip_t, at = None, (0, 0)
    if skip == "window":
        skip_t, at = randn(2, 3, 16, 16, requires_grad=True), (1, 2)
    elif skip == "whole":
        skip_t = randn(2, 3, 9, 11, requires_grad=True)
    return (coarse, skip_t, 0.5, -0.25, 0.5, 0.25, False, 9, 11, *at, "cpu")


@needs_cpu
@pytest.mark.parametrize("skip", [None, "window", "whole"])
def test_opcheck_resample_skip(skip):
    torch.library.opcheck(torch.ops.fcn_fast.resample_skip.default, _op_args(skip))


@needs_cpu
def test_opcheck_backward_and_triton_ops():
    grad = randn(2, 3, 9, 11)
    torch.library.opcheck(
        torch.ops.fcn_fast.resample_skip_backward.default,
        (grad, 4, 5, 0.5, -0.25, 0.5, 0.25, True, "cpu"),
    )
    # The Triton twins the routers call: schema and fake kernel (the interpreter runs them).
    if fcn_fast.available_backends()["triton"].available:
        checks = ("test_schema", "test_faketensor")
        torch.library.opcheck(
            torch.ops.fcn_fast.resample_skip_triton.default,
            _op_args("window")[:-1],
            test_utils=checks,
        )
        torch.library.opcheck(
            torch.ops.fcn_fast.resample_skip_backward_triton.default,
            (grad, 4, 5, 0.5, -0.25, 0.5, 0.25, True),
            test_utils=checks,
        )


@needs_cpu
def test_torch_compile_fullgraph_cpu():
    def decoder(score, pool4, lateral):
        up = fcn_fast.upsample_skip(score, pool4, factor=2, skip_crop=5, backend="cpu")
        out = fcn_fast.upsample_skip(up, factor=8, crop=31, out_size=(40, 40), backend="cpu")
        return out, fcn_fast.interpolate_add(up, lateral, scale_factor=2, backend="cpu")

    score = randn(2, 3, 4, 4, dtype=torch.float32, requires_grad=True)
    pool4 = randn(2, 3, 20, 20, dtype=torch.float32, requires_grad=True)
    lateral = randn(2, 3, 20, 20, dtype=torch.float32, requires_grad=True)
    compiled = torch.compile(decoder, fullgraph=True, backend="aot_eager")
    outs = compiled(score, pool4, lateral)
    refs = decoder(score, pool4, lateral)
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r)
    grads = torch.autograd.grad(sum(o.sum() for o in outs), (score, pool4, lateral))
    ref_grads = torch.autograd.grad(sum(r.sum() for r in refs), (score, pool4, lateral))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


@needs_cpu
def test_torch_compile_inductor_cpu():
    def step(x, skip):
        return fcn_fast.upsample_skip(x, skip, factor=2, skip_crop=1, backend="cpu") * 2

    x = randn(1, 2, 3, 3, dtype=torch.float32)
    skip = randn(1, 2, 10, 10, dtype=torch.float32)
    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(x, skip), step(x, skip))


@pytest.mark.gpu
def test_torch_compile_triton_gpu():
    if not torch.cuda.is_available():
        pytest.skip("torch.compile cannot trace Triton kernels under the interpreter: needs a GPU")
    x = randn(2, 3, 8, 8, dtype=torch.float32, device="cuda")
    skip = randn(2, 3, 24, 24, dtype=torch.float32, device="cuda")
    for backend in ("triton", "cuda"):
        if not fcn_fast.available_backends()[backend].available:
            continue

        def step(a, b, backend=backend):
            return fcn_fast.upsample_skip(a, b, factor=2, skip_crop=3, backend=backend)

        torch.testing.assert_close(torch.compile(step, fullgraph=True)(x, skip), step(x, skip))


# ---- bad input: each raises a clear error naming the argument -------------------------------

X = randn(2, 3, 4, 5)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (
            lambda: fcn_fast.upsample_skip(randn(3, 4, 5), factor=2),
            ValueError,
            "coarse must be 4-D",
        ),
        (lambda: fcn_fast.upsample_skip("x", factor=2), TypeError, "coarse must be a torch.Tensor"),
        (lambda: fcn_fast.upsample_skip(X.long(), factor=2), TypeError, "coarse must be float"),
        (lambda: fcn_fast.upsample_skip(X, randn(2, 4, 20, 20), factor=2), ValueError, "channel"),
        (lambda: fcn_fast.upsample_skip(X, randn(1, 3, 20, 20), factor=2), ValueError, "batch"),
        (
            lambda: fcn_fast.upsample_skip(X, randn(2, 3, 20, 20).float(), factor=2),
            TypeError,
            "skip has dtype",
        ),
        (
            lambda: fcn_fast.upsample_skip(X, randn(2, 3, 9, 12), factor=2),
            ValueError,
            "skip window",
        ),
        (
            lambda: fcn_fast.upsample_skip(X, randn(2, 3, 10, 12), factor=2, skip_crop=-1),
            ValueError,
            "skip_crop must be >= 0",
        ),
        (lambda: fcn_fast.upsample_skip(X, factor=0), ValueError, "factor must be >= 1"),
        (lambda: fcn_fast.upsample_skip(X, factor=2.0), TypeError, "factor must be an int"),
        (lambda: fcn_fast.upsample_skip(X, factor=2, kernel_size=5), ValueError, "kernel_size"),
        (lambda: fcn_fast.upsample_skip(X, factor=2, crop=10), ValueError, "crop"),
        (lambda: fcn_fast.upsample_skip(X, factor=2, crop=(1, 2, 3)), TypeError, "crop"),
        (lambda: fcn_fast.upsample_skip(X, factor=2, out_size=(11, 5)), ValueError, "out_size"),
        (
            lambda: fcn_fast.upsample_skip(X, factor=2, crop=2, out_size=(9, 3)),
            ValueError,
            "out_size",
        ),
        (lambda: fcn_fast.upsample_skip(randn(2, 3, 0, 5), factor=2), ValueError, "H, W >= 1"),
        (
            lambda: fcn_fast.upsample_skip(X, factor=2, backend="gpu"),
            ValueError,
            "backend must be one of",
        ),
        (
            lambda: fcn_fast.upsample_skip(X, factor=2, backend="cuda"),
            BackendUnavailableError,
            "backend='cuda' cannot run here",
        ),
        (lambda: fcn_fast.interpolate_add(X), ValueError, "exactly one of size or scale_factor"),
        (lambda: fcn_fast.interpolate_add(X, size=4, scale_factor=2), ValueError, "exactly one"),
        (lambda: fcn_fast.interpolate_add(X, size=0), ValueError, "size must be >= 1"),
        (lambda: fcn_fast.interpolate_add(X, scale_factor=-1.0), ValueError, "scale_factor"),
        (lambda: fcn_fast.interpolate_add(X, scale_factor=0.1), ValueError, "empty output"),
        (lambda: fcn_fast.interpolate_add(X, scale_factor="2"), TypeError, "scale_factor"),
        (
            lambda: fcn_fast.interpolate_add(X, randn(2, 3, 8, 9), size=(8, 10)),
            ValueError,
            "skip must have the output's spatial size",
        ),
        (
            lambda: fcn_fast.interpolate_add(X, size=8, align_corners=1),
            TypeError,
            "align_corners",
        ),
        (
            lambda: fcn_fast.interpolate_add(X, size=8, recompute_scale_factor=True),
            ValueError,
            "recompute_scale_factor is not meaningful with an explicit size",
        ),
        (
            lambda: fcn_fast.interpolate_add(X, scale_factor=2, recompute_scale_factor="yes"),
            TypeError,
            "recompute_scale_factor must be a bool or None",
        ),
        (lambda: fcn_fast.interpolate_add(X.int(), size=8), TypeError, "x must be float"),
    ],
)
def test_bad_input(call, error, match):
    if "backend='cuda'" in match and torch.cuda.is_available():
        pytest.skip("a GPU is present: the cuda backend can run")
    with pytest.raises(error, match=match):
        call()


@pytest.mark.gpu
def test_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU for a second device")
    with pytest.raises(ValueError, match="skip is on cuda"):
        fcn_fast.upsample_skip(X, randn(2, 3, 20, 20, device="cuda"), factor=2)


def test_cpu_backend_rejects_meta_tensors():
    """A device the backend can't run is a clear error, not a crash."""
    if not fcn_fast.available_backends()["cpu"].available:
        pytest.skip("C++ extension not built")
    with pytest.raises(BackendUnavailableError, match="it runs CPU tensors"):
        fcn_fast.upsample_skip(X.to("meta"), factor=2, backend="cpu")

"""upsample_skip and interpolate_add on every kernel backend against the plain-PyTorch reference.

Forward and both gradients in float64 (and the low-precision dtypes against a float64
reference), random shapes, factors 1-32, both kernel parities, crops and skip windows,
non-contiguous and channels_last inputs, the FCN head shapes, empty batches, determinism.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from resample_cases import fcn_head_calls, non_contiguous, randn

import fcn_fast

INTERPRETED = not torch.cuda.is_available()  # Triton runs in its (slow) interpreter here

TOLERANCE = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=2e-2),
}


def small(backend: str) -> bool:
    return backend == "triton" and INTERPRETED


def run_both(op, args, kwargs, backend, grad_seed=0):
    """Forward and backward of `op` with `backend` and with "reference"; returns both triples."""
    results = []
    for name in (backend, "reference"):
        inputs = [
            a.detach().clone().requires_grad_(a.requires_grad) if a is not None else None
            for a in args
        ]
        out = op(*inputs, backend=name, **kwargs)
        gen = torch.Generator(device="cpu").manual_seed(grad_seed)
        grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
        grads = (
            torch.autograd.grad(out, [a for a in inputs if a is not None and a.requires_grad], grad)
            if out.requires_grad
            else ()
        )
        results.append((out, grads))
    return results


def assert_close(actual, expected, dtype=torch.float64):
    torch.testing.assert_close(actual.double(), expected.double(), **TOLERANCE[dtype])


def assert_match(results, dtype=torch.float64):
    (out, grads), (ref_out, ref_grads) = results
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert_close(out, ref_out, dtype)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape
        assert_close(g, r, dtype)


def random_upsample_case(rng: random.Random, backend: str, device):
    factor = rng.choice([1, 2, 3, 4, 5, 8, 16, 32] if not small(backend) else [1, 2, 3, 8, 32])
    kernel = rng.choice([2 * factor, 2 * factor - 1])
    h, w = rng.randint(1, 6), rng.randint(1, 6)
    full = ((h - 1) * factor + kernel, (w - 1) * factor + kernel)
    crop = (rng.randrange(full[0]), rng.randrange(full[1]))
    out = (rng.randint(1, full[0] - crop[0]), rng.randint(1, full[1] - crop[1]))
    if small(backend):
        out = (min(out[0], 40), min(out[1], 40))
    use_skip = rng.random() < 0.7
    skip_crop = (rng.randint(0, 3), rng.randint(0, 3))
    n, c = rng.randint(1, 2), rng.randint(1, 3)
    coarse = randn(n, c, h, w, device=device, requires_grad=True)
    skip = None
    if use_skip:
        skip = randn(
            n,
            c,
            out[0] + skip_crop[0] + rng.randint(0, 2),
            out[1] + skip_crop[1] + rng.randint(0, 2),
            device=device,
            requires_grad=True,
        )
    kwargs = dict(factor=factor, kernel_size=kernel, crop=crop, out_size=out)
    if use_skip:
        kwargs["skip_crop"] = skip_crop
    return coarse, skip, kwargs


@pytest.mark.parametrize("seed", range(12))
def test_upsample_skip_random(backend, device, seed):
    rng = random.Random(seed)
    coarse, skip, kwargs = random_upsample_case(rng, backend, device)
    assert_match(run_both(fcn_fast.upsample_skip, (coarse, skip), kwargs, backend))


@pytest.mark.parametrize("factor", [1, 2, 3, 7, 8, 16, 32])
@pytest.mark.parametrize("odd_kernel", [False, True])
def test_upsample_skip_factors_default_window(backend, device, factor, odd_kernel):
    """Every factor, both kernel parities, default out_size (everything right of the crop)."""
    kernel = 2 * factor - 1 if odd_kernel else 2 * factor
    hw = (2, 3) if small(backend) else (4, 5)
    coarse = randn(1, 2, *hw, device=device, requires_grad=True)
    kwargs = dict(factor=factor, kernel_size=kernel, crop=(factor // 2, factor - 1))
    assert_match(run_both(fcn_fast.upsample_skip, (coarse, None), kwargs, backend))


@pytest.mark.parametrize("h", [1, 31, 224, 500])
def test_fcn_head_shapes(backend, device, h):
    """The exact FCN-32s/16s/8s/AlexNet head calls for these input sizes."""
    if small(backend) and h > 31:
        pytest.skip("large FCN heads are too slow in the Triton interpreter; run on a GPU")
    for name, size, kwargs, skip_size in fcn_head_calls(h):
        coarse = randn(1, 3, size, size, device=device, requires_grad=True)
        skip = None
        if skip_size is not None:
            skip = randn(1, 3, skip_size, skip_size, device=device, requires_grad=True)
        results = run_both(fcn_fast.upsample_skip, (coarse, skip), kwargs, backend)
        if "out_size" in kwargs:
            assert results[0][0].shape[2:] == (h, h), name
        assert_match(results)


INTERPOLATE_CASES = [
    dict(size=(7, 9)),
    dict(size=(13, 4), align_corners=True),
    dict(size=(1, 1)),
    dict(size=(1, 5), align_corners=True),
    dict(size=17),
    dict(scale_factor=2),
    dict(scale_factor=2.5),
    dict(scale_factor=(1.3, 3)),
    dict(scale_factor=0.6),
    dict(scale_factor=4, align_corners=True),
    dict(size=(3, 2)),  # downsampling
]


@pytest.mark.parametrize("kwargs", INTERPOLATE_CASES, ids=str)
@pytest.mark.parametrize("with_skip", [False, True])
def test_interpolate_add(backend, device, kwargs, with_skip):
    x = randn(2, 3, 5, 6, device=device, requires_grad=True)
    expected_shape = F.interpolate(x.detach(), mode="bilinear", **kwargs).shape
    skip = randn(*expected_shape, device=device, requires_grad=True) if with_skip else None
    results = run_both(fcn_fast.interpolate_add, (x, skip), kwargs, backend)
    assert results[0][0].shape == expected_shape
    assert_match(results)


def test_interpolate_add_fpn_step(backend, device):
    """An FPN decoder step: x2 upsampling of a coarse map plus the lateral feature."""
    hw = (4, 5) if small(backend) else (16, 21)
    x = randn(2, 4, *hw, device=device, requires_grad=True)
    lateral = randn(2, 4, 2 * hw[0], 2 * hw[1], device=device, requires_grad=True)
    results = run_both(fcn_fast.interpolate_add, (x, lateral), dict(scale_factor=2), backend)
    assert_match(results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_dtypes(backend, device, dtype):
    """fp32 accumulation inside: close to the float64 reference (docs/design.md 4 tolerances)."""
    coarse = randn(2, 3, 4, 5, device=device)
    skip = randn(2, 3, 30, 38, device=device)
    kwargs = dict(factor=8, crop=3, skip_crop=(1, 2), out_size=(28, 35))
    out = fcn_fast.upsample_skip(coarse.to(dtype), skip.to(dtype), backend=backend, **kwargs)
    # The reference from the same (rounded) inputs, in float64.
    ref = fcn_fast.upsample_skip(
        coarse.to(dtype).double(), skip.to(dtype).double(), backend="reference", **kwargs
    )
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    grad = randn(*out.shape, device=device).to(dtype)
    c = coarse.to(dtype).requires_grad_()
    (g,) = torch.autograd.grad(fcn_fast.upsample_skip(c, backend=backend, **kwargs), c, grad)
    c64 = coarse.to(dtype).double().requires_grad_()
    (g64,) = torch.autograd.grad(
        fcn_fast.upsample_skip(c64, backend="reference", **kwargs), c64, grad.double()
    )
    assert g.dtype == dtype
    assert_close(g, g64, dtype)


def test_non_contiguous_inputs_and_grad(backend, device):
    coarse = non_contiguous(randn(2, 3, 4, 5, device=device, requires_grad=True))
    skip = randn(2, 3, 40, 50, device=device).transpose(2, 3).contiguous().transpose(2, 3)
    skip = skip.requires_grad_()
    assert not skip.is_contiguous()
    kwargs = dict(factor=4, crop=(1, 2), skip_crop=(3, 4), out_size=(17, 19))
    assert_match(run_both(fcn_fast.upsample_skip, (coarse, skip), kwargs, backend))
    # An expanded (stride-0) grad_output, as from out.sum().
    c = coarse.detach().requires_grad_()
    fcn_fast.upsample_skip(c, backend=backend, **kwargs).sum().backward()
    c_ref = coarse.detach().requires_grad_()
    fcn_fast.upsample_skip(c_ref, backend="reference", **kwargs).sum().backward()
    assert_close(c.grad, c_ref.grad)


def test_channels_last(backend, device):
    coarse = randn(2, 5, 4, 6, device=device).contiguous(memory_format=torch.channels_last)
    skip = randn(2, 5, 30, 40, device=device).contiguous(memory_format=torch.channels_last)
    coarse.requires_grad_()
    skip.requires_grad_()
    kwargs = dict(factor=4, crop=2, skip_crop=1, out_size=(18, 25))
    results = run_both(fcn_fast.upsample_skip, (coarse, skip), kwargs, backend)
    assert_match(results)
    out = results[0][0]
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_empty_batch(backend, device):
    coarse = randn(0, 3, 4, 5, device=device, requires_grad=True)
    skip = randn(0, 3, 20, 20, device=device, requires_grad=True)
    out = fcn_fast.upsample_skip(
        coarse, skip, factor=2, skip_crop=1, out_size=(9, 11), backend=backend
    )
    assert out.shape == (0, 3, 9, 11)
    out.sum().backward()
    assert coarse.grad.shape == coarse.shape and skip.grad.shape == skip.shape


def test_backward_is_deterministic(backend, device):
    coarse = randn(2, 3, 6, 7, device=device, dtype=torch.float32, requires_grad=True)
    grad = randn(2, 3, 40, 48, device=device, dtype=torch.float32)
    grads = []
    for _ in range(2):
        out = fcn_fast.upsample_skip(coarse, factor=8, crop=5, out_size=(40, 48), backend=backend)
        (g,) = torch.autograd.grad(out, coarse, grad)
        grads.append(g)
    assert torch.equal(grads[0], grads[1])


def test_forward_does_not_modify_inputs(backend, device):
    coarse = randn(1, 2, 3, 4, device=device)
    skip = randn(1, 2, 12, 14, device=device)
    before = coarse.clone(), skip.clone()
    fcn_fast.upsample_skip(coarse, skip, factor=2, skip_crop=1, out_size=(8, 10), backend=backend)
    assert torch.equal(coarse, before[0]) and torch.equal(skip, before[1])


@pytest.mark.gpu
def test_64bit_indexing(backend):
    """More than 2**31 output elements: the far end matches a small computation of it."""
    if backend == "cpu" or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (cuda/triton backends)")
    from backends import backend_device

    device = backend_device(backend)
    h, w = 2**14 + 3, 2**15  # output (2h + 2) x (2w + 2) = 2.15e9 > 2**31 elements (4.3 GB)
    coarse = torch.randn(1, 1, h, w, device=device, dtype=torch.float16, requires_grad=True)
    out = fcn_fast.upsample_skip(coarse, factor=2, backend=backend)
    assert out.numel() > 2**31
    tail = coarse.detach()[:, :, h - 4 :, :]
    expected = fcn_fast.upsample_skip(tail, factor=2, backend="reference")
    # Rows of the tail computation away from its artificial top edge equal out's last rows.
    torch.testing.assert_close(out[:, :, -6:, :].float(), expected[:, :, -6:, :].float())
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, coarse, grad)
    tail_grad = torch.autograd.grad(
        fcn_fast.upsample_skip(tail.requires_grad_(), factor=2, backend="reference"),
        tail,
        grad[:, :, -10:, :],
    )[0]
    torch.testing.assert_close(
        g[:, :, -2:, :].float(), tail_grad[:, :, -2:, :].float(), rtol=1e-2, atol=1e-2
    )

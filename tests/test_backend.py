"""Backend selection: available_backends, auto, clear errors, import without the extension."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fcn_fast
from fcn_fast import BackendUnavailableError
from fcn_fast._backend import BACKENDS, resolve_backend


def test_available_backends_reports_every_backend_with_a_reason():
    status = fcn_fast.available_backends()
    assert set(status) == set(BACKENDS)
    assert status["reference"].available
    for name, entry in status.items():
        assert isinstance(entry.available, bool) and entry.reason, name
    if not torch.cuda.is_available():
        assert not status["cuda"].available


def test_auto_on_cpu_prefers_the_cpu_kernels():
    expected = "cpu" if fcn_fast.available_backends()["cpu"].available else "reference"
    assert resolve_backend("auto", "resample_skip", torch.device("cpu")) == expected


def test_unavailable_backend_names_reason_and_alternatives():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError) as info:
        resolve_backend("cuda", "resample_skip", torch.device("cpu"))
    message = str(info.value)
    assert "backend='cuda'" in message and "reference" in message
    assert isinstance(info.value, ValueError)


def test_triton_on_cpu_needs_the_interpreter():
    script = textwrap.dedent(
        """
        import torch, fcn_fast
        from fcn_fast import BackendUnavailableError
        if torch.cuda.is_available():
            raise SystemExit(0)
        try:
            fcn_fast.upsample_skip(torch.randn(1, 1, 2, 2), factor=2, backend="triton")
        except BackendUnavailableError as error:
            assert "TRITON_INTERPRET" in str(error), error
            print("raised")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert torch.cuda.is_available() or "raised" in result.stdout


def test_import_without_extension_or_triton_falls_back_to_reference():
    """Importing fcn_fast never fails because a backend is missing."""
    script = textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in ("fcn_fast._C", "triton") or name.startswith("triton."):
                    raise ImportError(f"blocked {name} for the test")
        sys.meta_path.insert(0, Block())
        import importlib.util
        _find = importlib.util.find_spec
        def find_spec(name, *args):
            return None if name == "triton" else _find(name, *args)
        importlib.util.find_spec = find_spec
        import torch, fcn_fast
        status = fcn_fast.available_backends()
        assert not status["cpu"].available and "not built" in status["cpu"].reason, status
        assert not status["triton"].available, status
        x = torch.randn(1, 2, 3, 3)
        out = fcn_fast.upsample_skip(x, factor=2)  # auto -> reference
        ref = fcn_fast.upsample_skip(x, factor=2, backend="reference")
        assert torch.equal(out, ref)
        try:
            fcn_fast.upsample_skip(x, factor=2, backend="cpu")
        except fcn_fast.BackendUnavailableError as error:
            assert "not built" in str(error)
            print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


# ---------------------------------------------------------------------------------------------
# How the public ops call the extension: its direct bindings fcn_fast._C.<op>
# (csrc/ops/module.cpp), or torch.ops.fcn_fast.<op> where Python-level dispatch is needed.

needs_extension = pytest.mark.skipif(
    not fcn_fast._backend.extension_loaded(), reason="the C++ extension is not built"
)


@needs_extension
def test_direct_binding_is_the_torch_ops_op_with_its_autograd():
    from fcn_fast import _C

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    skip = torch.randn(2, 3, 11, 13, dtype=torch.float64, generator=gen, requires_grad=True)
    args = (x, skip, 0.5, -0.25, 0.625, -0.3, True, 9, 12, 1, 0, "cpu")
    direct, through = _C.resample_skip(*args), torch.ops.fcn_fast.resample_skip(*args)
    assert torch.equal(direct, through)
    assert type(direct.grad_fn) is type(through.grad_fn)
    grad = torch.randn(direct.shape, dtype=torch.float64, generator=gen)
    for a, b in zip(
        torch.autograd.grad(direct, (x, skip), grad), torch.autograd.grad(through, (x, skip), grad)
    ):
        assert torch.equal(a, b)

    # Tuple results, and a dtype argument.
    args = (x.detach(), 0.5, -0.25, 0.625, -0.3, False, 9, 12, torch.uint8, True, "cpu")
    for a, b in zip(_C.resample_argmax(*args), torch.ops.fcn_fast.resample_argmax(*args)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    target = torch.randint(0, 3, (2, 5, 7), generator=gen)
    args = (x.detach(), target, None, -100, 1, 0.1, "cpu")
    for a, b in zip(_C.pixel_cross_entropy(*args), torch.ops.fcn_fast.pixel_cross_entropy(*args)):
        assert torch.equal(a, b)


@needs_extension
def test_direct_binding_rejects_bad_arguments_with_a_python_error():
    from fcn_fast import _C

    x = torch.randn(1, 2, 3, 3)
    good = [x, None, 0.5, -0.25, 0.5, -0.25, False, 4, 4, 0, 0, "cpu"]
    with pytest.raises(TypeError, match="takes 12 positional arguments, got 11"):
        _C.resample_skip(*good[:-1])
    for index, bad, expected in [
        (0, x.numpy(), "must be a Tensor"),
        (1, 3, "must be a Tensor"),
        (2, "0.5", "must be a float"),
        (6, 1, "must be a bool"),
        (7, 4.0, "must be an int"),
        (11, b"cpu", "must be a str"),
    ]:
        args = list(good)
        args[index] = bad
        with pytest.raises(TypeError, match=f"argument {index} {expected}"):
            _C.resample_skip(*args)
    # The op's own checks raise through the binding as through torch.ops.
    with pytest.raises(ValueError, match='backend must be "cpu", "cuda" or "triton"'):
        _C.resample_skip(*good[:-1], "gpu")


@needs_extension
def test_torch_function_modes_and_subclasses_see_the_torch_ops_op():
    """The direct binding would hide the call from __torch_function__: such calls go through
    torch.ops, as a built-in op's would."""
    from torch.overrides import TorchFunctionMode

    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    with Record():
        fcn_fast.interpolate_add(x, size=(8, 8))
        fcn_fast.pixel_cross_entropy(x, target)
    assert torch.ops.fcn_fast.resample_skip.default in seen
    assert torch.ops.fcn_fast.pixel_cross_entropy.default in seen

    class Tagged(torch.Tensor):
        pass

    out = fcn_fast.upsample_skip(x.as_subclass(Tagged), factor=2)
    assert type(out) is Tagged  # as F.interpolate's would be
    assert torch.equal(out.as_subclass(torch.Tensor), fcn_fast.upsample_skip(x, factor=2))


@needs_extension
def test_fake_tensors_reach_the_fake_kernels_through_the_direct_binding():
    """FakeTensorMode (torch.compile's shape propagation) is a dispatch mode: the binding's
    dispatcher call reaches the ops' fake kernels as torch.ops does."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 3, 5, 7)
        out = fcn_fast.interpolate_add(x, torch.empty(2, 3, 9, 11), size=(9, 11))
        loss = fcn_fast.pixel_cross_entropy(x, torch.zeros(2, 5, 7, dtype=torch.long))
        labels = fcn_fast.upsample_argmax(x, factor=2)
    assert isinstance(out, FakeTensor) and out.shape == (2, 3, 9, 11)
    assert isinstance(loss, FakeTensor) and loss.shape == ()
    assert isinstance(labels, FakeTensor) and labels.shape == (2, 12, 16)


@needs_extension
@pytest.mark.parametrize("op", ["pixel_cross_entropy", "upsample_cross_entropy"])
def test_double_backward_raises_a_clear_error(op):
    """create_graph=True records the backward kernel's autograd node; differentiating it again
    says it is not supported instead of returning a wrong second derivative."""
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    if op == "pixel_cross_entropy":
        loss = fcn_fast.pixel_cross_entropy(x, torch.randint(0, 3, (1, 4, 4)), backend="cpu")
    else:
        loss = fcn_fast.upsample_cross_entropy(
            x, torch.randint(0, 3, (1, 8, 8)), factor=2, crop=1, backend="cpu"
        )
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    assert grad.requires_grad
    with pytest.raises(RuntimeError, match="double backward of .* not supported"):
        grad.sum().backward()

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

"""Shared test set-up: Triton's interpreter on machines without a GPU, backend/device choice,
and the `gpu` marker (pytest -m gpu: the tests that run a kernel on a CUDA device there).

TRITON_INTERPRET must be set before triton is first imported, so it is set here,
at collection time, when no CUDA GPU is present (docs/design.md 4).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from backends import KERNEL_BACKENDS, backend_device  # noqa: E402

# Backends whose tests run on a CUDA device where one is visible (Triton runs interpreted
# on CPU tensors only where none is).
GPU_BACKENDS = ("cuda", "triton")


def pytest_collection_modifyitems(items):
    """Mark `gpu` every case of a backend parameter that is cuda or triton (the `backend`
    fixture and the modules' own); tests that take a CUDA device otherwise carry the
    marker by hand. The emulation, nvcc and PTX tests run on the CPU and stay unmarked."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, str) and v in GPU_BACKENDS for v in params.values()):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def device(backend):
    return backend_device(backend)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Shared test set-up: Triton's interpreter on machines without a GPU, and backend/device choice.

TRITON_INTERPRET must be set before triton is first imported, so it is set here,
at collection time, when no CUDA GPU is present (DESIGN.md 5).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fcn_fast import available_backends  # noqa: E402

KERNEL_BACKENDS = ("cpu", "cuda", "triton")


def backend_device(backend: str) -> torch.device:
    """The device a backend's tests run on here, or skip with the reason it can't run."""
    status = available_backends()[backend]
    if not status.available:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "triton" and not torch.cuda.is_available():
        return torch.device("cpu")  # interpreted
    return torch.device("cuda")


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def device(backend):
    return backend_device(backend)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

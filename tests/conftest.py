"""Shared test set-up: Triton's interpreter on machines without a GPU, and backend/device choice.

TRITON_INTERPRET must be set before triton is first imported, so it is set here,
at collection time, when no CUDA GPU is present (docs/design.md 4).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from backends import KERNEL_BACKENDS, backend_device  # noqa: E402


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def device(backend):
    return backend_device(backend)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Which device a backend's tests run on here (imported by the tests; conftest holds fixtures)."""

from __future__ import annotations

import pytest
import torch

from fcn_fast import available_backends

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

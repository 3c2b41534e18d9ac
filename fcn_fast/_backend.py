"""Which kernel implementation runs an op: backend names, availability, `auto` (DESIGN.md 4).

Importing this never fails because a backend is missing: a missing extension or
Triton only makes that backend unavailable, with the reason recorded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from typing import NamedTuple

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")


class BackendStatus(NamedTuple):
    available: bool
    reason: str


class BackendUnavailableError(ValueError):
    """The requested backend cannot run these tensors on this machine."""


def _try_import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as error:  # ImportError, or an ABI error from a stale build
        return None, f"{type(error).__name__}: {error}"


_C, _C_ERROR = _try_import("fcn_fast._C")


def extension_loaded() -> bool:
    return _C is not None


def extension_has_cuda() -> bool:
    return _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fcn_fast::resample_skip_fwd", "CUDA"
    )


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Read once, at import: resolve_backend then only reads plain Python values, which
# torch.compile traces without graph breaks. find_spec, not import: importing triton
# here would fix TRITON_INTERPRET too early.
_INTERPRET = triton_interpret()
_HAS_CUDA_KERNELS = extension_has_cuda()
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_status() -> BackendStatus:
    if not _TRITON_INSTALLED:
        return BackendStatus(False, "Triton is not installed (pip install triton)")
    version = importlib.metadata.version("triton")
    if torch.cuda.is_available():
        return BackendStatus(True, f"Triton {version} on CUDA")
    if _INTERPRET:
        return BackendStatus(
            True, f"Triton {version} interpreter (TRITON_INTERPRET=1), CPU tensors"
        )
    return BackendStatus(
        False, "no CUDA GPU; CPU tensors need TRITON_INTERPRET=1 (slow, for tests)"
    )


def _compute_status() -> dict[str, BackendStatus]:
    if _C is None:
        why = f"the C++ extension fcn_fast._C is not built ({_C_ERROR}); pip install -e ."
        cpu = cuda = BackendStatus(False, why)
    else:
        cpu = BackendStatus(True, "C++ extension fcn_fast._C")
        if not _HAS_CUDA_KERNELS:
            cuda = BackendStatus(
                False, "the extension was built without CUDA kernels (see README: build with CUDA)"
            )
        elif not torch.cuda.is_available():
            cuda = BackendStatus(False, "CUDA kernels are built but no CUDA GPU is visible")
        else:
            cuda = BackendStatus(True, "CUDA kernels built; a CUDA GPU is visible")
    return {
        "reference": BackendStatus(True, "plain PyTorch"),
        "cpu": cpu,
        "cuda": cuda,
        "triton": _triton_status(),
    }


_STATUS = _compute_status()


def available_backends() -> dict[str, BackendStatus]:
    """For this machine: which backends run, and why the others don't."""
    return dict(_STATUS)


def _unavailable(
    backend: str, op: str, reason: str, device: torch.device
) -> BackendUnavailableError:
    usable = [name for name in BACKENDS if _can_run(name, device) is None]
    return BackendUnavailableError(
        f"{op}: backend={backend!r} cannot run here: {reason}. "
        f"Backends that can run {device.type} tensors here: {usable} (or backend='auto')."
    )


def _can_run(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run tensors on `device`, else the reason it can't."""
    if backend == "reference":
        return None
    status = _STATUS[backend]
    if backend == "cpu":
        if not status.available:
            return status.reason
        return None if device.type == "cpu" else f"it runs CPU tensors, got {device.type} tensors"
    if backend == "cuda":
        if not _HAS_CUDA_KERNELS:
            return status.reason
        return None if device.type == "cuda" else f"it runs CUDA tensors, got {device.type} tensors"
    # triton
    if not _TRITON_INSTALLED:
        return status.reason
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _INTERPRET:
        return None
    return f"Triton runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}"


# Preferred GPU backend per op for backend="auto", from the benchmark table
# (benchmarks/results/). Until a GPU table exists, CUDA C++ first.
GPU_PREFERENCE = {
    "resample_skip": ("cuda", "triton"),
    "pixel_cross_entropy": ("cuda", "triton"),
}


def resolve_backend(backend: str, op: str, device: torch.device) -> str:
    """The backend that runs `op` on tensors of `device`; raises if the request can't run."""
    if not isinstance(backend, str) or backend not in ("auto", *BACKENDS):
        raise ValueError(f"{op}: backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    if backend != "auto":
        reason = _can_run(backend, device)
        if reason is not None:
            raise _unavailable(backend, op, reason, device)
        return backend
    if device.type == "cuda":
        for name in GPU_PREFERENCE.get(op, ("cuda", "triton")):
            if _can_run(name, device) is None:
                return name
        return "reference"
    if device.type == "cpu" and _can_run("cpu", device) is None:
        return "cpu"
    return "reference"


def kernel(backend: str, op: str, stage: str):
    """The kernel function `<op>_<stage>` (stage "fwd" or "bwd") of a kernel backend: the
    C++ op torch.ops.fcn_fast.<op>_<stage> for cpu/cuda (it dispatches on the device), or
    fcn_fast.triton.<op>.<op>_<stage>, imported on first use."""
    name = f"{op}_{stage}"
    if backend == "triton":
        return getattr(importlib.import_module(f"fcn_fast.triton.{op}"), name)
    return getattr(torch.ops.fcn_fast, name)

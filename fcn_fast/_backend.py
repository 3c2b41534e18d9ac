"""Which implementation runs an op: backend names, availability, `auto` (docs/design.md).

Backends: "reference" (plain PyTorch, in Python), and the kernels of the C++ extension
fcn_fast._C: "cpu" (C++), "cuda" (CUDA C++, when built), "triton" (Triton kernels that the
extension's ops call; see fcn_fast/triton/__init__.py). Importing this never fails because
a backend is missing: a missing extension or Triton only makes that backend unavailable,
with the reason recorded. Every fact is read once, at import, so that resolve_backend is
two dictionary lookups (cheap per call, and traced by torch.compile without graph breaks).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from typing import NamedTuple

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
DEVICE_TYPES = ("cpu", "cuda")


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
    """Whether fcn_fast._C was built with its CUDA kernels (it says so itself)."""
    return bool(getattr(_C, "with_cuda", 0))


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# find_spec, not import: importing triton here would fix TRITON_INTERPRET too early.
_INTERPRET = triton_interpret()
_HAS_CUDA_KERNELS = extension_has_cuda()
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_GPU = torch.cuda.is_available()
_NOT_BUILT = (
    f"the C++ extension fcn_fast._C is not built ({_C_ERROR}); build it against the installed "
    "torch with `pip install --no-build-isolation -e .` (the README's set-up)"
)


def _triton_status() -> BackendStatus:
    if not _TRITON_INSTALLED:
        return BackendStatus(False, "Triton is not installed (pip install triton)")
    if _C is None:  # the extension's ops call the Triton kernels
        return BackendStatus(False, _NOT_BUILT)
    version = importlib.metadata.version("triton")
    if _GPU:
        return BackendStatus(True, f"Triton {version} on CUDA")
    if _INTERPRET:
        return BackendStatus(
            True, f"Triton {version} interpreter (TRITON_INTERPRET=1), CPU tensors"
        )
    return BackendStatus(
        False, "no CUDA GPU; CPU tensors need TRITON_INTERPRET=1 (slow, for tests)"
    )


def _cuda_status() -> BackendStatus:
    if _C is None:
        return BackendStatus(False, _NOT_BUILT)
    if not _HAS_CUDA_KERNELS:
        return BackendStatus(
            False, "the extension was built without CUDA kernels (see README: build with CUDA)"
        )
    if not _GPU:
        return BackendStatus(False, "CUDA kernels are built but no CUDA GPU is visible")
    return BackendStatus(True, "CUDA kernels built; a CUDA GPU is visible")


_STATUS = {
    "reference": BackendStatus(True, "plain PyTorch"),
    "cpu": BackendStatus(True, "C++ extension fcn_fast._C")
    if _C is not None
    else BackendStatus(False, _NOT_BUILT),
    "cuda": _cuda_status(),
    "triton": _triton_status(),
}


def available_backends() -> dict[str, BackendStatus]:
    """For this machine: which backends run, and why the others don't."""
    return dict(_STATUS)


def _why_not(backend: str, device_type: str) -> str | None:
    """None if `backend` can run tensors of `device_type` here, else the reason it can't."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not _TRITON_INSTALLED or _C is None:
            return _STATUS["triton"].reason
        if device_type == "cuda" or (device_type == "cpu" and _INTERPRET):
            return None
        return (
            "Triton runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
            f"got {device_type} tensors"
        )
    if backend == "cuda" and not _HAS_CUDA_KERNELS:
        return _STATUS["cuda"].reason
    if backend == "cpu" and _C is None:
        return _STATUS["cpu"].reason
    if device_type != backend:
        return f"it runs {backend.upper()} tensors, got {device_type} tensors"
    return None


_WHY_NOT = {(b, d): _why_not(b, d) for b in BACKENDS for d in DEVICE_TYPES}


def can_run(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run tensors on `device` here, else the reason it can't."""
    key = (backend, device.type)
    return _WHY_NOT[key] if key in _WHY_NOT else _why_not(backend, device.type)


# backend="auto" on a GPU: the faster kernel per public op, from the GPU benchmark table
# (benchmarks/results/). Set from the first measured table (H200, 2026-11-26, the kernels of
# ee06b59): Triton was faster on the large resampling rows, CUDA on every loss row. A new GPU
# run prints what to set here: `python -m fcn_fast.bench prefer results.json` (gpu_suite.sh
# does, into steps.log). Ops not listed try cuda, then triton.
GPU_PREFERENCE = {
    "upsample_skip": ("triton", "cuda"),
    "interpolate_add": ("triton", "cuda"),
    "pixel_cross_entropy": ("cuda", "triton"),
}


def _auto(op: str, device_type: str) -> str:
    if device_type == "cuda":
        for name in GPU_PREFERENCE.get(op, ("cuda", "triton")):
            if _WHY_NOT[(name, "cuda")] is None:
                return name
        return "reference"
    if device_type == "cpu" and _WHY_NOT[("cpu", "cpu")] is None:
        return "cpu"
    return "reference"


_CPU = torch.device("cpu")


def resolve_backend(backend: str, op: str, device: torch.device) -> str:
    """The backend that runs public op `op` on tensors of `device`; raises if it can't run.

    `op` is the function the user called: errors name it.
    """
    if backend == "auto":
        # device.type builds a new str (0.8 us, more than the rest of this function): a CPU
        # device is recognised by comparison instead.
        return _auto(op, "cpu" if device == _CPU else device.type)
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    reason = can_run(backend, device)
    if reason is not None:
        usable = [name for name in BACKENDS if can_run(name, device) is None]
        raise BackendUnavailableError(
            f"{op}: backend={backend!r} cannot run here: {reason}. "
            f"Backends that can run {device.type} tensors here: {usable} (or backend='auto')."
        )
    return backend


def register_fake(*qualnames: str):
    """Decorator: `fn` is the fake (shape and dtype only) kernel of the extension's ops
    `qualnames`, for torch.compile and opcheck. Nothing to register without the extension."""

    def register(fn):
        if _C is not None:
            for name in qualnames:
                torch.library.register_fake(name)(fn)
        return fn

    return register


def extension_op(name: str):
    """A function calling the extension's op fcn_fast::<name> with positional arguments.

    It calls the op through the extension's direct binding fcn_fast._C.<name>, which skips
    torch.ops' per-argument conversion (about 8 us a call, csrc/ops/module.cpp) and runs the
    same dispatcher entry: autograd, kernels and dispatch modes are unchanged. Two callers
    need torch.ops itself: torch.compile, which traces torch.ops calls (and sees this
    branch as a constant), and arguments with __torch_function__ (tensor subclasses,
    TorchFunctionModes), which only torch.ops hands to Python.
    """
    if _C is None:

        def unavailable(*args):
            raise RuntimeError(_NOT_BUILT)

        return unavailable
    through_torch_ops = getattr(torch.ops.fcn_fast, name).default
    direct = getattr(_C, name)
    is_compiling, has_torch_function = torch.compiler.is_compiling, torch._C._has_torch_function

    def call(*args):
        if is_compiling() or has_torch_function(args):
            return through_torch_ops(*args)
        return direct(*args)

    call.__name__ = call.__qualname__ = name
    return call

"""The CUDA kernels' per-thread code, run on the CPU against fcn_fast.reference (no GPU needed).

Every CUDA kernel (csrc/cuda/*.cu) is a thin __global__ wrapper around per-thread functions
in csrc/include/fcn_fast/*_kernels.h, shaped by host-side plans in the same headers.
tests/cuda_emulation/emulate.cpp, compiled here with g++, runs those very functions over the
whole grid (every block, every thread, block phases in barrier order) on CPU tensors: a wrong
index, tap, tail or vector condition in them fails these tests. What it cannot run as written
is the block-level glue in the .cu files (shared-memory declarations, __syncthreads, the warp
shuffles of the block sum, the last-block ticket); emulate.cpp mirrors it, and the fixed
summation order of the block sum is reproduced.

Inputs sit inside NaN-filled buffers (a read outside a tensor shows up as NaN), outputs inside
NaN guard bands that must survive (a write outside fails), and base pointers are misaligned on
purpose in some cases: the emulation raises on any misaligned 16-byte access. Both index widths
run (the 64-bit path forced by a flag), in float32 and float64.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import random
import shutil
import subprocess
import tempfile

import pytest
import torch
from random_geometry import Resampling, random_class_weights, random_resampling

from fcn_fast.ops._geometry import interpolate_geometry
from fcn_fast.reference import (
    interpolate_add_reference,
    pixel_cross_entropy_reference,
    upsample_skip_reference,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "csrc", "include")
SOURCE = os.path.join(ROOT, "tests", "cuda_emulation", "emulate.cpp")
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
GUARD = 64  # elements of NaN before and after every buffer

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")


# ---------------------------------------------------------------------------------------------
# Building and calling the emulation


def _build() -> str:
    headers = sorted(
        os.path.join(INCLUDE, "fcn_fast", f) for f in os.listdir(os.path.join(INCLUDE, "fcn_fast"))
    )
    digest = hashlib.sha256()
    for path in [SOURCE, *headers]:
        with open(path, "rb") as file:
            digest.update(file.read())
    out_dir = os.path.join(tempfile.gettempdir(), "fcn_fast_cuda_emulation")
    os.makedirs(out_dir, exist_ok=True)
    library = os.path.join(out_dir, f"emulate-{digest.hexdigest()[:16]}.so")
    if not os.path.exists(library):
        partial = f"{library}.{os.getpid()}.tmp"
        command = [
            "g++",
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",  # the kernels spell out each fma; no other contraction
            "-fPIC",
            "-shared",
            "-DFCN_FAST_EMULATION",
            "-Wall",
            "-Wno-unknown-pragmas",
            f"-I{INCLUDE}",
            SOURCE,
            "-o",
            partial,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        os.replace(partial, library)
    return library


class Emulator:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)

    def call(self, name, *args):
        error = ctypes.create_string_buffer(256)
        chosen = (ctypes.c_int64 * 8)()
        converted = []
        for a in args:
            if isinstance(a, torch.Tensor):
                converted.append(ctypes.c_void_p(a.data_ptr()))
            elif a is None:
                converted.append(ctypes.c_void_p(0))
            elif isinstance(a, bool):
                converted.append(ctypes.c_int(int(a)))
            elif isinstance(a, float):
                converted.append(ctypes.c_double(a))
            elif isinstance(a, (tuple, list)):
                if any(isinstance(v, float) for v in a):
                    converted.append((ctypes.c_double * len(a))(*a))
                else:
                    converted.append((ctypes.c_int64 * len(a))(*a))
            elif isinstance(a, Int):
                converted.append(ctypes.c_int(a.value))
            else:
                converted.append(ctypes.c_int64(a))
        converted += [chosen, error]
        rc = getattr(self.lib, name)(*converted)
        if rc != 0:
            raise RuntimeError(error.value.decode())
        return list(chosen)


class Int:
    """A C int argument (the rest of the plain integers are int64)."""

    def __init__(self, value):
        self.value = int(value)


@pytest.fixture(scope="module")
def emu():
    return Emulator(_build())


def dtype_code(dtype):
    return Int(0 if dtype == torch.float32 else 1)


# Target dtypes, their LabelType codes (kernel_types.h), the ignore_index each uses here (a
# uint8 target cannot hold -100), and the value around a target that no read may see.
LABEL_DTYPES = (torch.int64, torch.int32, torch.uint8)
LABEL_CODES = {torch.int64: 0, torch.int32: 1, torch.uint8: 2}
GUARD_LABEL = {torch.int64: -(2**40), torch.int32: -(2**31), torch.uint8: 254}


def ignore_label(dtype):
    return 255 if dtype == torch.uint8 else -100


def labels(t):
    """A target's two emulation arguments: its data and its LabelType code."""
    return t, Int(LABEL_CODES[t.dtype])


# ---------------------------------------------------------------------------------------------
# Tensors inside NaN guard bands


def _strides(shape, layout):
    """Element strides of `layout` for `shape` and the number of elements the layout spans."""
    if layout == "contiguous":
        order = list(range(len(shape)))[::-1]
        step = [1] * len(shape)
    elif layout == "channels_last":  # classes (dim 1) fastest
        order = [1, *range(len(shape) - 1, 1, -1), 0]
        step = [1] * len(shape)
    elif layout == "strided":  # every other element along the last dim, padded rows
        order = list(range(len(shape)))[::-1]
        step = [2] + [1] * (len(shape) - 1)
    else:
        raise ValueError(layout)
    strides = [0] * len(shape)
    span = 1
    for k, d in enumerate(order):
        strides[d] = span * step[k]
        span = strides[d] * shape[d] + (3 if layout == "strided" and k == 1 else 0)
    return strides, span


def place(values, layout="contiguous", misalign=0):
    """values as a tensor of `layout` inside a NaN-filled buffer, its start moved by `misalign`
    elements (a misaligned base pointer when misalign * element size is not a multiple of 16)."""
    strides, span = _strides(values.shape, layout)
    fill = float("nan") if values.is_floating_point() else GUARD_LABEL[values.dtype]
    buffer = torch.full((span + 2 * GUARD + misalign,), fill, dtype=values.dtype)
    view = buffer.as_strided(values.shape, strides, GUARD + misalign)
    view.copy_(values)
    view.guarded_buffer = buffer
    return view


def empty_guarded(shape, dtype, layout="contiguous", misalign=0):
    strides, span = _strides(shape, layout)
    fill = float("nan") if dtype.is_floating_point else -7
    buffer = torch.full((span + 2 * GUARD + misalign,), fill, dtype=dtype)
    view = buffer.as_strided(shape, strides, GUARD + misalign)
    return view, buffer


def assert_guards(view, buffer):
    """Nothing written outside the view."""
    mask = torch.ones_like(buffer, dtype=torch.bool)
    mask.as_strided(view.shape, view.stride(), view.storage_offset())[...] = False
    outside = buffer[mask]
    if buffer.dtype.is_floating_point:
        assert torch.isnan(outside).all(), "a kernel wrote outside its output"
    else:
        assert (outside == -7).all(), "a kernel wrote outside its output"


def sizes(t):
    return list(t.shape)


def strides(t):
    return list(t.stride())


def close(got, expected, dtype):
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got.double(), expected.double(), **tol, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# Geometry of the front doors


def upsample_geometry(h, w, factor, kernel_size, crop, out_size):
    shift = 0.5 if kernel_size == 2 * factor else 1.0
    return (
        1.0 / factor,
        (crop[0] + shift) / factor - 1.0,
        1.0 / factor,
        (crop[1] + shift) / factor - 1.0,
    )


def resampler(kind, x_shape, spec):
    """(scale_bias, clamp, out_size, reference(x) -> z) of an upsample / interpolate spec."""
    h, w = x_shape[2], x_shape[3]
    if kind == "upsample":
        factor, kernel, crop = spec["factor"], spec.get("kernel", 2 * spec["factor"]), spec["crop"]
        full = ((h - 1) * factor + kernel, (w - 1) * factor + kernel)
        out = spec.get("out", (full[0] - crop[0], full[1] - crop[1]))
        sb = upsample_geometry(h, w, factor, kernel, crop, out)

        def reference(x, skip=None, skip_crop=(0, 0)):
            return upsample_skip_reference(x, skip, factor, kernel, crop, skip_crop, out)

        return sb, False, out, reference
    corners = spec["align_corners"]
    geometry = interpolate_geometry((h, w), spec["size"], None, corners, "emulation")
    out, sb = geometry.out_size, geometry.resampler_args()[:4]

    def reference(x, skip=None, skip_crop=(0, 0)):
        if skip is not None:  # interpolate_add adds a same-sized skip: cut the window out
            skip = skip[
                :, :, skip_crop[0] : skip_crop[0] + out[0], skip_crop[1] : skip_crop[1] + out[1]
            ]
        return interpolate_add_reference(x, skip, size=out, align_corners=corners)

    return sb, True, out, reference


RESAMPLERS = [
    ("upsample", dict(factor=2, crop=(0, 0))),  # FCN-8s pool4 step
    ("upsample", dict(factor=8, crop=(3, 5), out=(33, 29))),  # crop and out_size
    ("upsample", dict(factor=4, kernel=7, crop=(1, 2))),  # odd kernel (FCN-AlexNet)
    ("upsample", dict(factor=3, crop=(0, 7))),
    ("interpolate", dict(size=(29, 37), align_corners=False)),  # non-integer ratio
    ("interpolate", dict(size=(31, 17), align_corners=True)),
    ("interpolate", dict(size=(4, 5), align_corners=False)),  # downsampling
    ("interpolate", dict(size=(1, 9), align_corners=True)),  # one output row: scale 0
]


# ---------------------------------------------------------------------------------------------
# resample_skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kind,spec", RESAMPLERS, ids=[f"{k}{i}" for i, (k, _) in enumerate(RESAMPLERS)]
)
@pytest.mark.parametrize(
    "layout,with_skip,force64,vector,misalign",
    [
        ("contiguous", False, False, 0, 0),
        ("contiguous", True, True, 0, 0),
        ("channels_last", True, False, 0, 0),
        ("channels_last", False, True, 8, 0),
        ("strided", True, False, 0, 1),
        ("contiguous", True, False, 2, 1),
        ("contiguous", True, False, 8, 0),
    ],
)
def test_resample_skip_forward(
    emu, dtype, kind, spec, layout, with_skip, force64, vector, misalign
):
    torch.manual_seed(len(str(spec)) + vector)
    x_shape = (2, 3, 6, 7)
    sb, clamp, out_size, reference = resampler(kind, x_shape, spec)
    x64 = torch.randn(x_shape, dtype=torch.float64)
    skip64, skip_crop = None, (0, 0)
    if with_skip:
        skip_crop = (2, 3)
        skip64 = torch.randn(2, 3, out_size[0] + 4, out_size[1] + 5, dtype=torch.float64)
    expected = reference(x64, skip64, skip_crop)
    x = place(x64.to(dtype), layout, misalign)
    skip = place(skip64.to(dtype), layout, misalign) if with_skip else None
    out_layout = "channels_last" if layout == "channels_last" else "contiguous"
    out, buffer = empty_guarded((2, 3, *out_size), dtype, out_layout, misalign)
    chosen = emu.call(
        "emu_resample_skip",
        dtype_code(dtype),
        sizes(x),
        x,
        strides(x),
        skip,
        strides(skip) if with_skip else [0, 0, 0, 0],
        sizes(skip) if with_skip else [0, 0, 0, 0],
        skip_crop[0],
        skip_crop[1],
        out_size[0],
        out_size[1],
        out,
        strides(out),
        list(map(float, sb)),
        Int(clamp),
        Int(force64),
        Int(vector),
    )
    assert chosen[1] == int(force64)
    close(out, expected, dtype)
    assert_guards(out, buffer)


def test_forward_plan_vectorizes_aligned_rows(emu):
    """The 16-byte path is taken where it can be, and not where it cannot."""
    x = place(torch.randn(1, 2, 5, 5))
    for out_w, misalign, expect in (
        (64, 0, (4, 1)),
        (62, 0, (2, 1)),
        (61, 0, (1, 0)),
        (64, 1, (1, 0)),
    ):
        out, _ = empty_guarded((1, 2, 40, out_w), torch.float32, "contiguous", misalign)
        chosen = emu.call(
            "emu_resample_skip",
            dtype_code(torch.float32),
            sizes(x),
            x,
            strides(x),
            None,
            [0] * 4,
            [0] * 4,
            0,
            0,
            40,
            out_w,
            out,
            strides(out),
            [0.125, -0.4, 0.125, -0.4],
            Int(False),
            Int(False),
            Int(0),
        )
        assert (chosen[0], chosen[2]) == expect, (out_w, misalign, chosen)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kind,spec", RESAMPLERS, ids=[f"{k}{i}" for i, (k, _) in enumerate(RESAMPLERS)]
)
@pytest.mark.parametrize(
    "layout,force64,vector,misalign",
    [
        ("contiguous", False, 0, 0),
        ("channels_last", False, 0, 0),
        ("contiguous", True, 0, 0),
        ("channels_last", True, 2, 0),
        ("strided", False, 0, 1),
        ("contiguous", False, 8, 0),
    ],
)
def test_resample_skip_backward(emu, dtype, kind, spec, layout, force64, vector, misalign):
    torch.manual_seed(7 + len(str(spec)))
    x_shape = (2, 3, 6, 7)
    sb, clamp, out_size, reference = resampler(kind, x_shape, spec)
    x64 = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    g64 = torch.randn(2, 3, *out_size, dtype=torch.float64)
    (expected,) = torch.autograd.grad(reference(x64), x64, g64)
    grad = place(g64.to(dtype), layout, misalign)
    gx, buffer = empty_guarded(x_shape, dtype, "contiguous")
    emu.call(
        "emu_resample_skip_backward",
        dtype_code(dtype),
        sizes(grad),
        grad,
        strides(grad),
        x_shape[2],
        x_shape[3],
        gx,
        strides(gx),
        list(map(float, sb)),
        Int(clamp),
        Int(force64),
        Int(vector),
    )
    close(gx, expected, dtype)
    assert_guards(gx, buffer)


def test_backward_is_one_pass_over_grad_out(emu):
    """The large FCN-8s head backward reads grad_out rows with 16-byte loads, NCHW and
    channels_last, in blocks whose shared accumulators fit."""
    grad = place(torch.randn(1, 21, 96, 128))
    sb = upsample_geometry(13, 17, 8, 16, (31, 31), (96, 128))
    for layout in ("contiguous", "channels_last"):
        g = place(torch.randn(1, 21, 96, 128), layout)
        gx, _ = empty_guarded((1, 21, 13, 17), torch.float32)
        chosen = emu.call(
            "emu_resample_skip_backward",
            dtype_code(torch.float32),
            sizes(g),
            g,
            strides(g),
            13,
            17,
            gx,
            strides(gx),
            list(sb),
            Int(False),
            Int(False),
            Int(0),
        )
        assert chosen[0] == 4 and chosen[2] == 1, chosen  # V, grad_vector
        assert chosen[4] == (layout == "channels_last"), chosen  # interleaved
        assert chosen[7] <= 46 * 1024, chosen
    del grad


# ---------------------------------------------------------------------------------------------
# pixel_cross_entropy


def loss_case(
    N,
    C,
    S,
    dtype,
    layout,
    ignore_frac=0.2,
    misalign=0,
    target_layout="contiguous",
    label_dtype=torch.int64,
):
    """logits, their int64 target (ignore_label(label_dtype) where ignored), and both placed
    for the emulation, the target as label_dtype."""
    logits64 = torch.randn(N, C, S, dtype=torch.float64) * 3
    target = torch.randint(0, C, (N, S))
    target[torch.rand(N, S) < ignore_frac] = ignore_label(label_dtype)
    x = place(logits64.to(dtype), layout, misalign)
    t = place(target.to(label_dtype), target_layout)
    return logits64, target, x, t


def emu_loss_forward(
    emu, x, t, weight, loss, lse, wsum, flags, reduction, smoothing=0.0, force64=False, pixels=0
):
    """The emulated CUDA loss forward (ignore_index ignore_label(t.dtype)); returns the launch
    plan chosen."""
    return emu.call(
        "emu_pixel_cross_entropy",
        dtype_code(x.dtype),
        sizes(x),
        x,
        strides(x),
        *labels(t),
        strides(t),
        weight,
        loss,
        lse,
        wsum,
        flags,
        ignore_label(t.dtype),
        reduction,
        float(smoothing),
        Int(force64),
        Int(pixels),
    )


LOSS_CASES = [
    # N, C, S, layout, pixels (0: plan), force64, misalign, target dtype
    (2, 5, 37, "contiguous", 0, False, 0, torch.int64),
    (3, 21, 64, "contiguous", 0, True, 0, torch.uint8),
    (2, 4, 33, "contiguous", 1, False, 1, torch.int32),
    (2, 21, 300, "channels_last", 0, False, 0, torch.uint8),  # staged (S past one chunk)
    (2, 6, 19, "channels_last", 0, True, 1, torch.int64),  # staged, misaligned: element copies
    (2, 7, 23, "channels_last", 4, False, 0, torch.int32),  # pixel runs, interleaved logits
    (2, 3, 29, "strided", 0, False, 0, torch.uint8),
    (1, 1, 17, "contiguous", 0, False, 0, torch.int64),  # one class
    (2, 9, 40, "contiguous", 8, False, 0, torch.uint8),  # the bf16 width, in float
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", LOSS_CASES, ids=[f"case{i}" for i in range(len(LOSS_CASES))])
@pytest.mark.parametrize(
    "reduction,weighted,smoothing",
    [("mean", False, 0.0), ("mean", True, 0.1), ("sum", True, 0.0), ("none", False, 0.2)],
)
def test_pixel_cross_entropy(emu, dtype, case, reduction, weighted, smoothing):
    N, C, S, layout, pixels, force64, misalign, label_dtype = case
    torch.manual_seed(N * 100 + C + S)
    logits64, target, x, t = loss_case(
        N,
        C,
        S,
        dtype,
        layout,
        misalign=misalign,
        target_layout="strided" if C % 2 else "contiguous",
        label_dtype=label_dtype,
    )
    ignore = ignore_label(label_dtype)
    weight64 = torch.rand(C, dtype=torch.float64) + 0.5 if weighted else None
    weight = weight64.to(dtype) if weighted else None
    ref_logits = logits64.clone().requires_grad_(True)
    expected = pixel_cross_entropy_reference(
        ref_logits, target, weight64, ignore, reduction, smoothing
    )
    acc = dtype
    loss, loss_buffer = empty_guarded((N, S) if reduction == "none" else (), acc)
    lse, lse_buffer = empty_guarded((N, S), acc)
    wsum, _ = empty_guarded((), acc)
    flags = torch.zeros(2, dtype=torch.int32)
    emu_loss_forward(
        emu, x, t, weight, loss, lse, wsum, flags, REDUCTIONS[reduction], smoothing, force64, pixels
    )
    assert flags[0] == 0
    close(loss, expected.detach(), dtype)
    close(lse, torch.logsumexp(logits64, dim=1), dtype)
    w = weight64 if weighted else torch.ones(C, dtype=torch.float64)
    valid = target != ignore
    close(wsum, w[target[valid]].sum(), dtype)
    assert_guards(loss, loss_buffer)
    assert_guards(lse, lse_buffer)

    # Backward, from the saved lse and weight_sum.
    grad64 = (
        torch.randn(N, S, dtype=torch.float64)
        if reduction == "none"
        else torch.tensor(1.7, dtype=torch.float64)
    )
    (expected_grad,) = torch.autograd.grad(expected, ref_logits, grad64)
    grad = place(grad64.to(acc), "strided") if reduction == "none" else grad64.to(acc)
    out_layout = "channels_last" if layout == "channels_last" else "contiguous"
    out, out_buffer = empty_guarded((N, C, S), dtype, out_layout, misalign)
    emu.call(
        "emu_pixel_cross_entropy_backward",
        dtype_code(dtype),
        sizes(x),
        grad,
        strides(grad) if reduction == "none" else [0, 0],
        x,
        strides(x),
        *labels(t),
        strides(t),
        weight,
        lse,
        wsum,
        out,
        strides(out),
        ignore,
        REDUCTIONS[reduction],
        float(smoothing),
        Int(force64),
        Int(pixels),
    )
    close(out, expected_grad, dtype)
    assert_guards(out, out_buffer)


def test_pixel_cross_entropy_paths(emu):
    """NCHW takes 16-byte pixel runs; channels_last the staged chunks with 16-byte copies;
    a bad target raises the flag."""
    _, _, x, t = loss_case(2, 21, 64, torch.float32, "contiguous")
    lse, _ = empty_guarded((2, 64), torch.float32)
    loss, wsum = torch.empty(()), torch.empty(())
    flags = torch.zeros(2, dtype=torch.int32)
    chosen = emu_loss_forward(emu, x, t, None, loss, lse, wsum, flags, reduction=1)
    assert chosen[0] == 4 and chosen[3] == 1 and chosen[4] == 1, chosen
    _, _, x, t = loss_case(2, 21, 64, torch.float32, "channels_last")
    t[0, 5] = 21  # out of range
    chosen = emu_loss_forward(emu, x, t, None, loss, lse, wsum, flags, reduction=1)
    assert chosen[2] > 0 and chosen[5] == 1, chosen
    assert flags[0] == 1


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_non_finite_logits_are_pytorchs(emu, layout):
    """A -inf logit adds nothing (also as class 0), a +inf or NaN logit makes the pixel's loss
    NaN: each pixel's loss as F.cross_entropy's."""
    logits64, target, _, _ = loss_case(1, 5, 24, torch.float32, "contiguous", ignore_frac=0.0)
    logits64[0, 2, 0] = float("-inf")
    logits64[0, 0, 1] = float("-inf")
    logits64[0, :, 2] = float("-inf")
    logits64[0, 0, 2] = 0.5
    target[0, 2] = 0
    logits64[0, 3, 3] = float("inf")
    logits64[0, 0, 4] = float("inf")
    logits64[0, 1, 5] = float("nan")
    x, t = place(logits64.float(), layout), place(target)
    expected = torch.nn.functional.cross_entropy(logits64, target, reduction="none")
    loss, _ = empty_guarded((1, 24), torch.float32)
    lse, _ = empty_guarded((1, 24), torch.float32)
    wsum = torch.empty(())
    emu_loss_forward(emu, x, t, None, loss, lse, wsum, torch.zeros(2, dtype=torch.int32), 0)
    torch.testing.assert_close(loss.double(), expected, equal_nan=True, rtol=1e-5, atol=1e-6)
    assert torch.isnan(expected[0, 3:6]).all() and torch.isfinite(expected[0, :3]).all()


def test_all_ignored_mean_is_nan(emu):
    _, _, x, t = loss_case(1, 4, 20, torch.float32, "contiguous", ignore_frac=1.1)
    lse, _ = empty_guarded((1, 20), torch.float32)
    loss, wsum = torch.empty(()), torch.empty(())
    emu_loss_forward(emu, x, t, None, loss, lse, wsum, torch.zeros(2, dtype=torch.int32), 1)
    assert math.isnan(loss.item()) and wsum.item() == 0.0


# ---------------------------------------------------------------------------------------------
# Fused heads: resample_cross_entropy and resample_argmax


FUSED_RESAMPLERS = [
    ("upsample", dict(factor=4, crop=(5, 3), out=(21, 26))),
    ("upsample", dict(factor=2, crop=(0, 0))),
    ("upsample", dict(factor=8, kernel=15, crop=(2, 1), out=(40, 37))),
    ("interpolate", dict(size=(23, 31), align_corners=False)),
    ("interpolate", dict(size=(17, 19), align_corners=True)),
    ("interpolate", dict(size=(3, 4), align_corners=False)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kind,spec", FUSED_RESAMPLERS, ids=[f"{k}{i}" for i, (k, _) in enumerate(FUSED_RESAMPLERS)]
)
@pytest.mark.parametrize(
    "C,layout,reduction,weighted,smoothing,force64,misalign,label_dtype",
    [
        (5, "contiguous", "mean", False, 0.0, False, 0, torch.int64),
        (21, "channels_last", "mean", True, 0.1, False, 0, torch.uint8),
        (3, "strided", "none", True, 0.0, True, 1, torch.int32),
        (7, "contiguous", "sum", False, 0.3, True, 0, torch.uint8),
        (40, "channels_last", "none", False, 0.0, False, 1, torch.int64),  # class groups
    ],
)
def test_resample_cross_entropy(
    emu, dtype, kind, spec, C, layout, reduction, weighted, smoothing, force64, misalign,
    label_dtype,
):  # fmt: skip
    torch.manual_seed(C + len(str(spec)))
    x_shape = (2, C, 6, 7)
    sb, clamp, out_size, reference = resampler(kind, x_shape, spec)
    H, W = out_size
    x64 = torch.randn(x_shape, dtype=torch.float64) * 2
    ignore = ignore_label(label_dtype)
    target = torch.randint(0, C, (2, H, W))
    target[torch.rand(2, H, W) < 0.15] = ignore
    weight64 = torch.rand(C, dtype=torch.float64) + 0.5 if weighted else None
    xr = x64.clone().requires_grad_(True)
    z = reference(xr)
    expected = pixel_cross_entropy_reference(z, target, weight64, ignore, reduction, smoothing)
    x = place(x64.to(dtype), layout, misalign)
    t = place(target.to(label_dtype), "strided" if C % 2 else "contiguous")
    weight = weight64.to(dtype) if weighted else None
    loss, loss_buffer = empty_guarded(
        (2, H, W) if reduction == "none" else (), dtype, "contiguous", misalign
    )
    lse, lse_buffer = empty_guarded((2, H, W), dtype, "contiguous", misalign)
    wsum = torch.empty((), dtype=dtype)
    flags = torch.zeros(2, dtype=torch.int32)
    emu.call(
        "emu_resample_cross_entropy",
        dtype_code(dtype),
        sizes(x),
        x,
        strides(x),
        *labels(t),
        strides(t),
        H,
        W,
        list(map(float, sb)),
        Int(clamp),
        weight,
        loss,
        lse,
        wsum,
        flags,
        ignore,
        REDUCTIONS[reduction],
        float(smoothing),
        Int(force64),
        Int(0),
    )
    assert flags[0] == 0
    close(loss, expected.detach(), dtype)
    close(lse, torch.logsumexp(z.detach(), dim=1), dtype)
    assert_guards(loss, loss_buffer)
    assert_guards(lse, lse_buffer)

    grad64 = (
        torch.rand(2, H, W, dtype=torch.float64)
        if reduction == "none"
        else torch.tensor(0.8, dtype=torch.float64)
    )
    (expected_grad,) = torch.autograd.grad(expected, xr, grad64)
    grad = place(grad64.to(dtype), "strided") if reduction == "none" else grad64.to(dtype)
    out_layout = "channels_last" if layout == "channels_last" else "contiguous"
    gx, gx_buffer = empty_guarded(x_shape, dtype, out_layout)
    emu.call(
        "emu_resample_cross_entropy_backward",
        dtype_code(dtype),
        sizes(x),
        grad,
        strides(grad) if reduction == "none" else [0, 0, 0],
        x,
        strides(x),
        *labels(t),
        strides(t),
        H,
        W,
        list(map(float, sb)),
        Int(clamp),
        weight,
        lse,
        wsum,
        gx,
        strides(gx),
        ignore,
        REDUCTIONS[reduction],
        float(smoothing),
        Int(force64),
    )
    close(gx, expected_grad, dtype)
    assert_guards(gx, gx_buffer)


def test_fused_backward_blocks_fit(emu):
    """The fused backward's blocks for the issue-9 heads: FCN-8s (C21, x8) and DeepLab (C150,
    x8, interpolate) plan into an H100 block's share of shared memory (half of 228 KB less the
    1 KB reserved a block: fused_backward_smem_budget), C150 in class groups."""
    for C, kind, spec in (
        (21, "upsample", dict(factor=8, crop=(31, 31), out=(64, 64))),
        (150, "interpolate", dict(size=(64, 64), align_corners=False)),
    ):
        x = place(torch.randn(1, C, 10, 10))
        sb, clamp, (H, W), _ = resampler(kind, x.shape, spec)
        t = place(torch.randint(0, C, (1, H, W)))
        lse = torch.zeros(1, H, W)
        gx, _ = empty_guarded(tuple(x.shape), torch.float32)
        chosen = emu.call(
            "emu_resample_cross_entropy_backward",
            dtype_code(torch.float32),
            sizes(x),
            torch.tensor(1.0),
            [0, 0, 0],
            x,
            strides(x),
            *labels(t),
            strides(t),
            H,
            W,
            list(sb),
            Int(clamp),
            None,
            lse,
            torch.tensor(1.0),
            gx,
            strides(gx),
            -100,
            1,
            0.0,
            Int(False),
        )
        assert 0 < chosen[5] <= 228 * 1024 // 2 - 1024, chosen
        assert 1 <= chosen[0] <= C and (C < 150 or chosen[0] < C), chosen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kind,spec", FUSED_RESAMPLERS, ids=[f"{k}{i}" for i, (k, _) in enumerate(FUSED_RESAMPLERS)]
)
@pytest.mark.parametrize(
    "C,layout,uint8,confidence,force64,misalign",
    [
        (6, "contiguous", False, True, False, 0),
        (21, "channels_last", True, True, False, 0),
        (4, "strided", False, False, True, 1),
        (9, "contiguous", True, False, False, 1),
    ],
)
def test_resample_argmax(emu, dtype, kind, spec, C, layout, uint8, confidence, force64, misalign):
    torch.manual_seed(C * 3 + len(str(spec)))
    x_shape = (2, C, 6, 7)
    sb, clamp, (H, W), reference = resampler(kind, x_shape, spec)
    x64 = torch.randn(x_shape, dtype=torch.float64)
    x64[:, C - 1] = x64[:, 0]  # ties with class 0: the lowest class wins
    if (
        kind == "interpolate"
    ):  # (the FCN reference's dense deconvolution spreads NaN to all classes)
        x64[0, 1, 2, 3] = float("nan")  # NaN wins where it reaches
    z = reference(x64)
    expected = z.argmax(1)
    x = place(x64.to(dtype), layout, misalign)
    labels, lab_buffer = empty_guarded(
        (2, H, W), torch.uint8 if uint8 else torch.int64, "contiguous", misalign
    )
    conf, conf_buffer = (
        empty_guarded((2, H, W), torch.float32, "contiguous", misalign)
        if confidence
        else (None, None)
    )
    emu.call(
        "emu_resample_argmax",
        dtype_code(dtype),
        sizes(x),
        x,
        strides(x),
        H,
        W,
        list(map(float, sb)),
        Int(clamp),
        labels,
        Int(uint8),
        conf,
        Int(force64),
    )
    # The winner is a class within rounding of the maximum, the lowest of them in float64 (the
    # references round classes of equal inputs differently, so exact ties are not exact there);
    # the constructed tie (class C - 1 equals class 0) never goes to C - 1; NaN wins.
    got = labels.long()
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    nan = torch.isnan(z).any(1)
    candidates = z >= z.nan_to_num(-math.inf).max(1, keepdim=True).values - tol
    assert candidates.gather(1, got[:, None])[:, 0][~nan].all()
    if dtype == torch.float64:
        lowest = candidates.long().argmax(1)
        assert torch.equal(got[~nan], lowest[~nan])
    assert not (got == C - 1).any()
    assert torch.equal(got[nan], expected[nan])
    assert_guards(labels, lab_buffer)
    if confidence:
        close(conf, torch.softmax(z, 1).max(1).values.float(), torch.float32)
        assert_guards(conf, conf_buffer)


# ---------------------------------------------------------------------------------------------
# Random geometries: many bands and blocks, strong down- and upsampling (tests/random_geometry.py)

SWEEP_BACKWARD = 2000  # geometries per backward kernel (the silent-failures issue's target)
SWEEP_FORWARD = 400


def _sweep(name, count, seed, run_case):
    """Runs run_case(rng, case) -> None or a failure description for `count` geometries; fails
    with the first few descriptions (each names its geometry, so it can be rerun alone)."""
    rng = random.Random(seed)
    failures = []
    for case in range(count):
        state = rng.getstate()
        try:
            problem = run_case(rng, case)
        except RuntimeError as error:  # the emulation's own errors (bad access, no plan)
            rng.setstate(state)
            problem = f"{random_resampling(rng)}: {error}"
        if problem is not None:
            failures.append(f"case {case}: {problem}")
    assert not failures, f"{name}: {len(failures)} of {count} geometries fail:\n" + "\n".join(
        failures[:5]
    )


def _mismatch(got, expected, dtype, atol=None):
    """None when got equals expected to the dtype's tolerance with no NaN of its own, else why."""
    nans = int((torch.isnan(got) & ~torch.isnan(expected)).sum())
    if nans:
        return f"{nans} of {got.numel()} NaN"
    try:
        if atol is None:
            close(got, expected, dtype)
        else:
            torch.testing.assert_close(
                got.double(), expected.double(), rtol=2e-5, atol=atol, equal_nan=True
            )
    except AssertionError as error:
        return str(error).splitlines()[0]
    return None


def _random_layout(rng):
    return rng.choice(["contiguous", "channels_last", "strided"])


def test_random_geometries_resample_skip_backward(emu):
    def run_case(rng, case):
        r = random_resampling(rng)
        N, C = rng.randint(1, 2), rng.randint(1, 3)
        dtype = torch.float32 if case % 4 == 3 else torch.float64
        layout, force64 = _random_layout(rng), rng.random() < 0.2
        (h, w), (H, W) = r.in_size, r.out_size
        x64 = torch.randn(N, C, h, w, dtype=torch.float64, requires_grad=True)
        g64 = torch.randn(N, C, H, W, dtype=torch.float64)
        (expected,) = torch.autograd.grad(r.reference(x64), x64, g64)
        grad = place(g64.to(dtype), layout)
        gx, buffer = empty_guarded((N, C, h, w), dtype)
        emu.call(
            "emu_resample_skip_backward",
            dtype_code(dtype),
            sizes(grad),
            grad,
            strides(grad),
            h,
            w,
            gx,
            strides(gx),
            r.scale_bias(),
            Int(r.geometry.clamp),
            Int(force64),
            Int(0),
        )
        assert_guards(gx, buffer)
        problem = _mismatch(gx, expected, dtype)
        return problem and f"{r} N{N} C{C} {layout} {dtype} force64={force64}: {problem}"

    _sweep("resample_skip backward", SWEEP_BACKWARD, 2301, run_case)


def test_random_geometries_resample_skip_forward(emu):
    def run_case(rng, case):
        r = random_resampling(rng)
        N, C = rng.randint(1, 2), rng.randint(1, 3)
        dtype = torch.float32 if case % 4 == 3 else torch.float64
        layout, misalign = _random_layout(rng), rng.choice([0, 0, 1])
        (h, w), (H, W) = r.in_size, r.out_size
        x64 = torch.randn(N, C, h, w, dtype=torch.float64)
        crop = (rng.randint(0, 3), rng.randint(0, 3))
        skip64 = torch.randn(N, C, H + crop[0] + rng.randint(0, 2), W + crop[1], dtype=x64.dtype)
        window = skip64[:, :, crop[0] : crop[0] + H, crop[1] : crop[1] + W]
        expected = r.reference(x64) + window
        x, skip = place(x64.to(dtype), layout, misalign), place(skip64.to(dtype), layout, misalign)
        out_layout = "channels_last" if layout == "channels_last" else "contiguous"
        out, buffer = empty_guarded((N, C, H, W), dtype, out_layout, misalign)
        emu.call(
            "emu_resample_skip",
            dtype_code(dtype),
            sizes(x),
            x,
            strides(x),
            skip,
            strides(skip),
            sizes(skip),
            crop[0],
            crop[1],
            H,
            W,
            out,
            strides(out),
            r.scale_bias(),
            Int(r.geometry.clamp),
            Int(rng.random() < 0.2),
            Int(0),
        )
        assert_guards(out, buffer)
        problem = _mismatch(out, expected, dtype)
        return problem and f"{r} N{N} C{C} {layout} misalign {misalign} {dtype}: {problem}"

    _sweep("resample_skip forward", SWEEP_FORWARD, 2302, run_case)


def _random_loss_options(rng, C):
    reduction = rng.choice(["none", "mean", "sum"])
    smoothing = rng.choice([0.0, 0.0, 0.1, 0.7])
    return reduction, smoothing, random_class_weights(rng, C)


def emulated_fused_backward(
    emu, grad, x, t, r, weight, lse, wsum, gx, reduction, smoothing, force64
):
    """The CUDA fused backward as resample_cross_entropy_backward_cuda runs it: the fused kernel,
    or, where its blocks do not fit in shared memory (an upsampling by ~32), the binding's
    unfused fallback: the resampler forward to the full-resolution logits z, the loss backward
    on z, the resampler backward. Returns whether the fallback ran."""
    N, C, (H, W) = x.shape[0], x.shape[1], r.out_size
    common = (r.scale_bias(), Int(r.geometry.clamp))
    loss_args = (ignore_label(t.dtype), REDUCTIONS[reduction], float(smoothing), Int(force64))
    try:
        emu.call(
            "emu_resample_cross_entropy_backward",
            dtype_code(x.dtype),
            sizes(x),
            grad,
            strides(grad) if reduction == "none" else [0, 0, 0],
            x,
            strides(x),
            *labels(t),
            strides(t),
            H,
            W,
            *common,
            weight,
            lse,
            wsum,
            gx,
            strides(gx),
            *loss_args,
        )
        return False
    except RuntimeError as error:
        if "no block shape fits" not in str(error):
            raise
    out_layout = "channels_last" if x.stride(1) == 1 and C > 1 else "contiguous"
    z, _ = empty_guarded((N, C, H, W), x.dtype, out_layout)
    emu.call(
        "emu_resample_skip",
        dtype_code(x.dtype),
        sizes(x),
        x,
        strides(x),
        None,
        [0] * 4,
        [0] * 4,
        0,
        0,
        H,
        W,
        z,
        strides(z),
        *common,
        Int(force64),
        Int(0),
    )
    zf = z.flatten(2)
    grad_z = torch.empty_like(zf)
    gf = grad.reshape(N, H * W) if reduction == "none" else grad
    tf = t.reshape(N, H * W)
    emu.call(
        "emu_pixel_cross_entropy_backward",
        dtype_code(x.dtype),
        sizes(zf),
        gf,
        strides(gf) if reduction == "none" else [0, 0],
        zf,
        strides(zf),
        *labels(tf),
        strides(tf),
        weight,
        lse.reshape(N, H * W),
        wsum,
        grad_z,
        strides(grad_z),
        *loss_args,
        Int(0),
    )
    g4 = grad_z.view(N, C, H, W)
    emu.call(
        "emu_resample_skip_backward",
        dtype_code(x.dtype),
        sizes(g4),
        g4,
        strides(g4),
        x.shape[2],
        x.shape[3],
        gx,
        strides(gx),
        *common,
        Int(force64),
        Int(0),
    )
    return True


def test_random_geometries_resample_cross_entropy(emu):
    """The fused head's forward and backward over random geometries, class counts (class
    groups in the backward past 32 interleaved classes), weights of any sign, both layouts."""

    def run_case(rng, case):
        r = random_resampling(rng, most_in=1024, most_out=2048)
        N, C = rng.randint(1, 2), rng.choice([1, 2, 3, 5, 8, 21, 40])
        (h, w), (H, W) = r.in_size, r.out_size
        if C * H * W > 24000:
            C = 2
        dtype = torch.float32 if case % 4 == 3 else torch.float64
        layout, force64 = _random_layout(rng), rng.random() < 0.2
        reduction, smoothing, weight64 = _random_loss_options(rng, C)
        label_dtype = LABEL_DTYPES[case % 3]  # not drawn: the geometries stay the seed's
        ignore = ignore_label(label_dtype)
        x64 = torch.randn(N, C, h, w, dtype=torch.float64) * 2
        target = torch.randint(0, C, (N, H, W))
        target[torch.rand(N, H, W) < rng.choice([0.0, 0.2, 0.9])] = ignore
        xr = x64.clone().requires_grad_(True)
        expected = pixel_cross_entropy_reference(
            r.reference(xr), target, weight64, ignore, reduction, smoothing
        )
        grad64 = (
            torch.rand(N, H, W, dtype=torch.float64)
            if reduction == "none"
            else torch.tensor(0.8, dtype=torch.float64)
        )
        (expected_grad,) = torch.autograd.grad(expected, xr, grad64)
        x, t = place(x64.to(dtype), layout), place(target.to(label_dtype), _random_layout(rng))
        weight = None if weight64 is None else weight64.to(dtype)
        loss, _ = empty_guarded((N, H, W) if reduction == "none" else (), dtype)
        lse, lse_buffer = empty_guarded((N, H, W), dtype)
        wsum, flags = torch.empty((), dtype=dtype), torch.zeros(2, dtype=torch.int32)
        described = (
            f"{r} N{N} C{C} {layout} {dtype} {label_dtype} {reduction} eps {smoothing} w {weight64}"
        )
        emu.call(
            "emu_resample_cross_entropy",
            dtype_code(dtype),
            sizes(x),
            x,
            strides(x),
            *labels(t),
            strides(t),
            H,
            W,
            r.scale_bias(),
            Int(r.geometry.clamp),
            weight,
            loss,
            lse,
            wsum,
            flags,
            ignore,
            REDUCTIONS[reduction],
            float(smoothing),
            Int(force64),
            Int(0),
        )
        assert_guards(lse, lse_buffer)
        # float32 sums of per-pixel losses: each pixel's is exact to ~1e-7 of its logits'
        # spread, which a sum over many pixels adds up where the total is ~0 (one class).
        atol = None if dtype == torch.float64 or reduction != "sum" else 1e-6 * N * H * W
        problem = _mismatch(loss, expected.detach(), dtype, atol)
        if problem is not None:
            return f"{described}: loss {problem}"
        grad = place(grad64.to(dtype), "strided") if reduction == "none" else grad64.to(dtype)
        out_layout = "channels_last" if layout == "channels_last" else "contiguous"
        gx, gx_buffer = empty_guarded((N, C, h, w), dtype, out_layout)
        emulated_fused_backward(
            emu, grad, x, t, r, weight, lse, wsum, gx, reduction, smoothing, force64
        )
        assert_guards(gx, gx_buffer)
        problem = _mismatch(gx, expected_grad, dtype)
        return problem and f"{described}: grad {problem}"

    _sweep("resample_cross_entropy forward + backward", SWEEP_BACKWARD, 2303, run_case)


def test_random_geometries_resample_argmax(emu):
    def run_case(rng, case):
        r = random_resampling(rng, most_in=1024, most_out=2048)
        N, C = rng.randint(1, 2), rng.choice([1, 2, 5, 21])
        (h, w), (H, W) = r.in_size, r.out_size
        dtype = torch.float32 if case % 4 == 3 else torch.float64
        layout = _random_layout(rng)
        x64 = torch.randn(N, C, h, w, dtype=torch.float64)
        z = r.reference(x64)
        x = place(x64.to(dtype), layout)
        labels, buffer = empty_guarded((N, H, W), torch.int64)
        conf, conf_buffer = empty_guarded((N, H, W), torch.float32)
        emu.call(
            "emu_resample_argmax",
            dtype_code(dtype),
            sizes(x),
            x,
            strides(x),
            H,
            W,
            r.scale_bias(),
            Int(r.geometry.clamp),
            labels,
            Int(False),
            conf,
            Int(rng.random() < 0.2),
        )
        assert_guards(labels, buffer)
        assert_guards(conf, conf_buffer)
        # The winner is within rounding of the maximum (exact ties differ by rounding).
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        best = z.max(1, keepdim=True).values
        chosen = z.gather(1, labels.clamp(0, C - 1)[:, None])
        if not ((labels >= 0) & (labels < C)).all() or not (chosen >= best - tol).all():
            return f"{r} N{N} C{C} {layout} {dtype}: a label is not a maximum"
        return _mismatch(conf.double(), torch.softmax(z, 1).max(1).values, torch.float32)

    _sweep("resample_argmax", SWEEP_FORWARD, 2304, run_case)


@pytest.mark.parametrize(
    "x_shape,size", [((1, 2, 512, 40), (7, 40)), ((1, 2, 96, 8), (2, 8))], ids=["512x40", "96x8"]
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_of_bands_no_output_reads_is_zero(emu, x_shape, size, layout):
    """Downsampling by more than a band: the bands between the rows read get a gradient of 0,
    not the shared memory's earlier contents (NaN here: 20,480 of 40,960 before the fix)."""
    r = Resampling.of("interpolate", x_shape[2:], size=size, align_corners=False)
    x64 = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    g64 = torch.randn(*x_shape[:2], *size, dtype=torch.float64)
    (expected,) = torch.autograd.grad(r.reference(x64), x64, g64)
    grad = place(g64, layout)
    gx, buffer = empty_guarded(x_shape, torch.float64)
    emu.call(
        "emu_resample_skip_backward",
        dtype_code(torch.float64),
        sizes(grad),
        grad,
        strides(grad),
        x_shape[2],
        x_shape[3],
        gx,
        strides(gx),
        r.scale_bias(),
        Int(True),
        Int(False),
        Int(0),
    )
    assert not torch.isnan(gx).any()
    assert (expected == 0).sum() > expected.numel() // 3  # most rows are read by no output
    close(gx, expected, torch.float64)
    assert_guards(gx, buffer)


@pytest.mark.parametrize(
    "kind,spec,in_size",
    [
        ("interpolate", dict(size=(2, 8), align_corners=False), (96, 8)),  # unread bands
        ("upsample", dict(factor=32, kernel_size=64, crop=(19, 19), out_size=(97, 101)), (5, 5)),
        ("upsample", dict(factor=32, kernel_size=63, crop=(18, 18), out_size=(61, 64)), (4, 4)),
    ],
    ids=["96x8-to-2x8", "fcn32s", "alexnet"],
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_backward_hard_geometries(emu, kind, spec, in_size, layout):
    """The fused head's backward where its blocks gather from no output row (768 of 2,304 NaN
    before the fix) and where they do not fit in shared memory at all (FCN-32s and
    FCN-AlexNet upsample by 32: the binding's unfused fallback, emulated as it runs)."""
    C, smoothing, reduction = 3, 0.1, "mean"
    r = Resampling.of(kind, in_size, **spec)
    H, W = r.out_size
    x64 = torch.randn(1, C, *in_size, dtype=torch.float64)
    target = torch.randint(0, C, (1, H, W))
    xr = x64.clone().requires_grad_(True)
    expected = pixel_cross_entropy_reference(r.reference(xr), target, None, -100, reduction, 0.1)
    (expected_grad,) = torch.autograd.grad(expected, xr)
    x, t = place(x64, layout), place(target)
    lse = torch.logsumexp(r.reference(x64), 1).contiguous()
    wsum = torch.tensor(float(H * W), dtype=torch.float64)
    gx, buffer = empty_guarded(tuple(x.shape), torch.float64, layout)
    fallback = emulated_fused_backward(
        emu, torch.tensor(1.0, dtype=torch.float64), x, t, r, None, lse, wsum, gx, reduction,
        smoothing, False,
    )  # fmt: skip
    assert fallback == (kind == "upsample")
    assert not torch.isnan(gx).any()
    close(gx, expected_grad, torch.float64)
    assert_guards(gx, buffer)

"""The benchmark cases: one registry read by the pytest benchmarks (benchmarks/) and the report.

A case is one op (or model step) at one shape. It knows how to build its inputs
for a device and dtype, how to run one timed step on a backend (forward, or
forward+backward / training step), and the fewest bytes that step must move
(docs/design.md, "Performance method": each input read once, each output written
once). The runner (fcn_fast.bench.runner) does the rest: numerics against the
reference first, then timing, copy bandwidth, speed-up and peak memory.

Adding a case is a `register(OpCase(...))` call below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import fcn_fast
from fcn_fast.reference import (
    argmax_reference,
    interpolate_add_reference,
    upsample_skip_reference,
)

SIZES = ("quick", "default", "full")
MODES = ("fwd", "fwdbwd", "train")
LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Backends the suite times on each device: "compile" is torch.compile of the reference.
# Triton on a CPU only runs interpreted (a test tool, not a performance backend).
DEVICE_BACKENDS = {
    "cpu": ("reference", "cpu"),
    "cuda": ("reference", "compile", "cuda", "triton"),
}
# What our kernels are compared with; their own numerics never fail a case:
#   reference  the plain-PyTorch code users write today (eager)
#   compile    torch.compile of that code
#   unfused    the fused heads' cases only: fcn_fast's unfused ops in sequence, backend "auto"
#              (upsample_skip / interpolate_add, then pixel_cross_entropy or argmax)
BASELINES = ("reference", "compile", "unfused")


class Unsupported(Exception):
    """This backend cannot run this case here (a reason, not a failure)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case:
    op: str
    label: str  # short shape name, unique per op and device
    shape: str  # human-readable shape
    sizes: frozenset[str]  # the --bench-size values that include this case
    devices: tuple[str, ...] = ("cpu", "cuda")
    # GPU time is scarce (a few minutes per session), so the default GPU sweep is shaped:
    # headline cases add bf16 (fp16 in the full size only), or `gpu_dtypes` names the
    # dtypes outright; torch.compile of the reference is timed only at `compile_dtypes`
    # (each compile takes 10-30 s); the full size runs every dtype and backend everywhere.
    headline: bool = False
    gpu_dtypes: tuple[torch.dtype, ...] | None = None
    compile_dtypes: tuple[torch.dtype, ...] = ()
    modes: tuple[str, ...] = ("fwd", "fwdbwd")
    backends: tuple[str, ...] | None = None  # None: every backend of the device
    # "unfused" for the fused heads (see BASELINES); timed on every device after the reference.
    extra_baselines: tuple[str, ...] = ()
    # Tiny shapes whose time is the host's (Python, dispatch, launch): timed over many more
    # rounds, so that the median of many short calls is stable.
    host_bound: bool = False
    # Numerics tolerance per dtype on max|got - ref| / max|ref| (per output tensor).
    tolerance: tuple[tuple[str, float], ...] = (("fp32", 1e-5), ("bf16", 1e-2), ("fp16", 4e-3))
    # True: the oracle is the reference in fp32 on the same (upcast) inputs; False: the
    # reference backend at the case's own dtype (models under autocast).
    oracle_upcast: bool = True
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.op}/{self.label}"

    def tol(self, dtype: torch.dtype) -> float:
        return dict(self.tolerance)[DTYPE_NAMES[dtype]]

    def dtypes(self, device: str, size: str) -> tuple[torch.dtype, ...]:
        if device != "cuda":
            return (torch.float32,)
        if size == "full":
            return (torch.float32, torch.bfloat16, torch.float16)
        if self.gpu_dtypes is not None:
            return self.gpu_dtypes
        return (torch.float32, torch.bfloat16) if self.headline else (torch.float32,)

    def backend_names(
        self, device: str, size: str, dtype: torch.dtype, mode: str
    ) -> tuple[str, ...]:
        """The backends of one (dtype, mode) group, the reference first (its time is the base)."""
        names = [
            n for n in self.backends or DEVICE_BACKENDS[device] if n in DEVICE_BACKENDS[device]
        ]
        if not (size == "full" or dtype in self.compile_dtypes):
            names = [n for n in names if n != "compile"]
        baselines = [n for n in names if n in BASELINES] + list(self.extra_baselines)
        return (*baselines, *(n for n in names if n not in BASELINES))

    def check(self, got, want, dtype: torch.dtype) -> tuple[bool, float, str]:
        """(ok, worst error, detail) of a backend's results against the oracle's."""
        return compare(got, want, self.tol(dtype))

    # Subclasses implement these three.
    def inputs(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def step(
        self, inputs: dict[str, torch.Tensor], backend: str, mode: str, dtype: torch.dtype
    ) -> Callable[[], tuple[torch.Tensor, ...]]:
        """A zero-argument callable running one timed step; it returns the tensors to check."""
        raise NotImplementedError

    def min_bytes(self, dtype: torch.dtype, mode: str) -> int | None:
        return None

    def forward_for_backward(self, inputs, backend, dtype):
        """A callable running the forward with autograd on (its result holds the graph), or None."""
        return None


def compare(got, want, tol: float) -> tuple[bool, float, str]:
    """(ok, worst error, detail): per tensor max|got - want| / max|want|; NaN fails."""
    if len(got) != len(want):
        return False, float("inf"), f"{len(got)} results, the reference has {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g is None or tuple(g.shape) != tuple(w.shape):
            shape = None if g is None else tuple(g.shape)
            return False, float("inf"), f"result {i}: shape {shape}, reference {tuple(w.shape)}"
        g, w = g.detach().double(), w.detach().double()
        scale = w.abs().max().item() if w.numel() else 0.0
        diff = (g - w).abs().max().item() if w.numel() else 0.0
        err = diff / scale if scale > 0 else diff
        if not err <= tol:  # NaN fails too
            return False, err, f"result {i}: max rel err {err:.3g} > tol {tol:g}"
        worst = max(worst, err)
    return True, worst, ""


def compare_labels(got, want, tol: float) -> tuple[bool, float, str]:
    """(ok, share of labels that differ, detail). Labels are not close or far: a pixel whose two
    best classes are within rounding of each other may go either way, so a share up to `tol`
    of the pixels may differ; a wrong kernel changes far more."""
    if len(got) != len(want) or any(tuple(g.shape) != tuple(w.shape) for g, w in zip(got, want)):
        shapes = [tuple(g.shape) for g in got], [tuple(w.shape) for w in want]
        return False, float("inf"), f"label shapes {shapes[0]}, reference {shapes[1]}"
    if any(g.dtype != w.dtype for g, w in zip(got, want, strict=True)):
        return False, float("inf"), f"label dtype {got[0].dtype}, reference {want[0].dtype}"
    differ = sum(int((g != w).sum()) for g, w in zip(got, want, strict=True))
    share = differ / max(sum(w.numel() for w in want), 1)
    if not share <= tol:
        return False, share, f"{differ} labels differ ({share:.3g} of pixels > tol {tol:g})"
    return True, share, ""


_COMPILED: dict[Any, Callable] = {}


def reset_compiled() -> None:
    """Forget compiled references (the runner calls this between cases)."""
    if _COMPILED:
        _COMPILED.clear()
        with contextlib.suppress(Exception):
            torch._dynamo.reset()


def _compiled(key, fn):
    if key not in _COMPILED:
        # dynamic=False: one specialised graph per shape, as a user with fixed shapes gets.
        _COMPILED[key] = torch.compile(fn, dynamic=False)
    return _COMPILED[key]


def _raise_limits():
    # Several dtypes x modes of one function recompile it; past dynamo's limit it would
    # silently fall back to eager and the "compile" row would time eager code.
    config = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpCase(Case):
    """A functional op: inputs -> one output tensor, gradients for `grads`."""

    make: Callable[[torch.device, torch.dtype, torch.Generator], dict[str, torch.Tensor]]
    # call(**inputs, backend=...) -> output. backend="reference" runs the plain-PyTorch code
    # itself (not fcn_fast's front door), "unfused" the unfused fcn_fast ops, any other name
    # the fcn_fast op on that backend.
    call: Callable[..., torch.Tensor]
    grads: tuple[str, ...]
    bytes_fn: Callable[[int], tuple[int, int]]  # element size -> (forward, backward) bytes
    # Low-precision rows run under torch.autocast, as a mixed-precision net runs its head:
    # the inputs are in the low precision already (the layer before wrote them so).
    autocast: bool = False
    labels: bool = False  # the output is class labels: numerics is the share that differs

    def inputs(self, device, dtype):
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return self.make(device, dtype, gen)

    def check(self, got, want, dtype):
        if self.labels:
            return compare_labels(got, want, self.tol(dtype))
        return compare(got, want, self.tol(dtype))

    def _fn(self, backend):
        if backend == "compile":
            _raise_limits()
            return _compiled((self.key, "op"), functools.partial(self.call, backend="reference"))
        return functools.partial(self.call, backend=backend)

    def _precision(self, inputs, dtype):
        """torch.autocast for an autocast case's low-precision inputs; not for the fp32 oracle."""
        floats = [t for t in inputs.values() if t.is_floating_point()]
        if self.autocast and dtype in LOW_PRECISION and floats and floats[0].dtype == dtype:
            return torch.autocast(floats[0].device.type, dtype=dtype)
        return contextlib.nullcontext()

    def step(self, inputs, backend, mode, dtype):
        fn = self._fn(backend)
        precision = self._precision(inputs, dtype)
        if mode == "fwd":
            if isinstance(precision, contextlib.nullcontext):
                return lambda: (fn(**inputs),)  # nothing around the call: tiny rows time it

            def forward():
                with precision:
                    return (fn(**inputs),)

            return forward
        leaves = {k: v.detach().requires_grad_(k in self.grads) for k, v in inputs.items()}
        wrt = [leaves[k] for k in self.grads]
        grad_out = []  # made on the first call, from a fixed seed, rounded to the case dtype

        def run():
            with precision:
                out = fn(**leaves)
            if not grad_out:
                grad_out.append(_grad_like(out, dtype, self.seed + 1))
            grads = torch.autograd.grad(out, wrt, grad_out[0])
            return (out.detach(), *grads)

        return run

    def forward_for_backward(self, inputs, backend, dtype):
        fn = self._fn(backend)
        leaves = {k: v.detach().requires_grad_(k in self.grads) for k, v in inputs.items()}
        precision = self._precision(inputs, dtype)

        def forward():
            with precision:
                return fn(**leaves)

        return forward

    def min_bytes(self, dtype, mode):
        fwd, bwd = self.bytes_fn(torch.empty((), dtype=dtype).element_size())
        return fwd if mode == "fwd" else fwd + bwd


def _grad_like(out, dtype, seed):
    if out.dim() == 0:
        return None  # a scalar loss: d/d(loss) = 1
    gen = torch.Generator(device=out.device)
    gen.manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float32)
    return grad.to(dtype).to(out.dtype)


def _randn(shape, device, dtype, gen):
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def _targets(n, c, h, w, device, gen, ignored, ignore_index, dtype=torch.int64):
    """Class indices (n, h, w) of `dtype` with a share `ignored` of them set to ignore_index."""
    target = torch.randint(0, c, (n, h, w), generator=gen, device=device)
    drop = torch.rand((n, h, w), generator=gen, device=device) < ignored
    return target.masked_fill_(drop, ignore_index).to(dtype)


def _labels_shape(label_dtype) -> str:
    """The shape string's note of a target dtype other than PyTorch's int64."""
    return (
        "" if label_dtype == torch.int64 else f", {str(label_dtype).removeprefix('torch.')} labels"
    )


CASES: list[Case] = []


def register(case: Case) -> Case:
    if any(c.key == case.key and set(c.devices) & set(case.devices) for c in CASES):
        raise ValueError(f"benchmark case {case.key} is registered twice for one device")
    CASES.append(case)
    return case


def op_names(cases: list[Case] | None = None) -> list[str]:
    """Every op name of the registry, in registration order (what --ops accepts)."""
    return list(dict.fromkeys(c.op for c in (CASES if cases is None else cases)))


def select(
    size: str,
    device: str,
    ops=None,
    backends=None,
    dtypes=None,
    modes=None,
    cases: list[Case] | None = None,
):
    """The (case, backend, dtype, mode) runs of one sweep, reference first within a group."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    runs = []
    for case in CASES if cases is None else cases:
        if size not in case.sizes or device not in case.devices:
            continue
        if ops and case.op not in ops:
            continue
        for dtype in case.dtypes(device, size):
            if dtypes and DTYPE_NAMES[dtype] not in dtypes:
                continue
            for mode in case.modes:
                if modes and mode not in modes:
                    continue
                for backend in case.backend_names(device, size, dtype, mode):
                    if backends and backend not in backends:
                        continue
                    runs.append((case, backend, dtype, mode))
    return runs


def priority(run) -> int:
    """A run's rank in a GPU lease's order (cli --order priority): the fused heads and the
    model rows first (what the lease is most for), then the other rows, then the torch.compile
    rows (10-30 s of compiling each). Sorting is stable: reference first within a group."""
    case, backend = run[0], run[1]
    if backend == "compile":
        return 2
    return 0 if "unfused" in case.extra_baselines else 1


DEFAULT = frozenset({"default", "full"})
FULL = frozenset({"full"})
QUICK = frozenset({"quick"})
EVERY_SIZE = frozenset(SIZES)


# --------------------------------------------------------------------------------------------
# upsample_skip: the FCN decoder steps (issue 2's head table at 500x500)


def upsample_skip_case(
    label, n, c, coarse, factor, *, crop=0, out=None, skip=None, skip_crop=0, **kw
) -> OpCase:
    """FCN decoder step: coarse (n, c, coarse, coarse) upsampled by `factor` (kernel 2*factor)."""
    full = (coarse + 1) * factor
    out = out if out is not None else full - crop
    assert crop + out <= full and (skip is None or skip_crop + out <= skip)

    def make(device, dtype, gen):
        inputs = {"coarse": _randn((n, c, coarse, coarse), device, dtype, gen)}
        if skip is not None:
            inputs["skip"] = _randn((n, c, skip, skip), device, dtype, gen)
        return inputs

    def call(coarse, skip=None, *, backend):
        if backend == "reference":
            return upsample_skip_reference(
                coarse, skip, factor, 2 * factor, (crop, crop), (skip_crop, skip_crop), (out, out)
            )
        return fcn_fast.upsample_skip(
            coarse,
            skip,
            factor=factor,
            crop=crop,
            skip_crop=skip_crop,
            out_size=(out, out),
            backend=backend,
        )

    def nbytes(es):
        window = out * out if skip is not None else 0
        fwd = es * n * c * (coarse * coarse + window + out * out)
        bwd = es * n * c * (out * out + coarse * coarse + (skip * skip if skip else 0))
        return fwd, bwd

    shape = f"N{n} C{c} {coarse}² x{factor} crop{crop}"
    if skip is not None:
        shape += f" +skip {skip}² @{skip_crop}"
    shape += f" → {out}²"
    return OpCase(
        op="upsample_skip",
        label=label,
        shape=shape,
        make=make,
        call=call,
        grads=("coarse", "skip") if skip is not None else ("coarse",),
        bytes_fn=nbytes,
        **kw,
    )


for _case in (
    # FCN-8s at 500x500: score_fr 16 -> 34 (+pool4), 34 -> 70 (+pool3), 70 -> x8 -> 500.
    upsample_skip_case("fcn8s-final", 4, 21, 70, 8, crop=31, out=500, sizes=DEFAULT, headline=True),
    upsample_skip_case("fcn8s-pool4", 4, 21, 16, 2, skip=44, skip_crop=5, sizes=DEFAULT),
    upsample_skip_case("fcn8s-pool3", 4, 21, 34, 2, skip=88, skip_crop=9, sizes=DEFAULT),
    upsample_skip_case("fcn32s", 4, 21, 16, 32, crop=19, out=500, sizes=DEFAULT),
    # The large shape: a GPU-sized batch at 1024x1024 (a smaller batch on CPU, full size only).
    upsample_skip_case(
        "large",
        16,
        21,
        132,
        8,
        crop=31,
        out=1024,
        sizes=DEFAULT,
        devices=("cuda",),
        headline=True,
        compile_dtypes=(torch.float32,),
    ),
    upsample_skip_case("large", 4, 21, 132, 8, crop=31, out=1024, sizes=FULL, devices=("cpu",)),
    # Host overhead (issue 8): a shape so small that only the call itself costs.
    upsample_skip_case(
        "overhead", 1, 3, 4, 2, crop=1, out=8, skip=8, sizes=EVERY_SIZE, host_bound=True
    ),
    # Smoke shapes: odd sizes, with and without skip.
    upsample_skip_case("quick-final", 1, 21, 13, 8, crop=31, out=73, sizes=QUICK),
    upsample_skip_case("quick-skip", 2, 5, 7, 2, skip=23, skip_crop=5, sizes=QUICK),
):
    register(_case)


# --------------------------------------------------------------------------------------------
# interpolate_add: FPN / DeepLab-style decoder steps


def interpolate_add_case(
    label, n, c, h, w, out_h, out_w, *, skip=True, align_corners=False, scale_factor=None, **kw
) -> OpCase:
    def make(device, dtype, gen):
        inputs = {"x": _randn((n, c, h, w), device, dtype, gen)}
        if skip:
            inputs["skip"] = _randn((n, c, out_h, out_w), device, dtype, gen)
        return inputs

    size = None if scale_factor else (out_h, out_w)

    def call(x, skip=None, *, backend):
        if backend == "reference":
            return interpolate_add_reference(x, skip, size, scale_factor, align_corners)
        return fcn_fast.interpolate_add(
            x,
            skip,
            size=size,
            scale_factor=scale_factor,
            align_corners=align_corners,
            backend=backend,
        )

    def nbytes(es):
        big = n * c * out_h * out_w
        fwd = es * (n * c * h * w + (big if skip else 0) + big)
        bwd = es * (big + n * c * h * w)  # the skip's gradient is grad_out itself: no copy
        return fwd, bwd

    shape = f"N{n} C{c} {h}x{w} → {out_h}x{out_w}" + (" +skip" if skip else "")
    shape += " ac" if align_corners else ""
    return OpCase(
        op="interpolate_add",
        label=label,
        shape=shape,
        make=make,
        call=call,
        grads=("x", "skip") if skip else ("x",),
        bytes_fn=nbytes,
        **kw,
    )


for _case in (
    # FPN top-down step: P4 -> P3 (x2) plus the lateral.
    interpolate_add_case(
        "fpn-p4-p3", 4, 256, 64, 64, 128, 128, scale_factor=2.0, sizes=DEFAULT, headline=True
    ),
    # Logits to image size, as DeepLab-style heads do (no skip).
    interpolate_add_case("logits-500", 4, 21, 63, 63, 500, 500, skip=False, sizes=DEFAULT),
    interpolate_add_case(
        "large",
        16,
        21,
        128,
        128,
        1024,
        1024,
        sizes=DEFAULT,
        devices=("cuda",),
        headline=True,
        compile_dtypes=(torch.float32,),
    ),
    interpolate_add_case("large", 4, 21, 128, 128, 1024, 1024, sizes=FULL, devices=("cpu",)),
    # An odd width (no aligned 16-byte rows): the model holds it near the main row.
    interpolate_add_case(
        "odd-1025", 16, 21, 128, 128, 1025, 1025, sizes=DEFAULT, devices=("cuda",)
    ),
    interpolate_add_case("overhead", 1, 3, 4, 4, 8, 8, sizes=EVERY_SIZE, host_bound=True),
    interpolate_add_case("quick-skip", 2, 7, 15, 17, 31, 33, align_corners=True, sizes=QUICK),
):
    register(_case)


# --------------------------------------------------------------------------------------------
# pixel_cross_entropy: the loss on full-resolution logits (VOC, ADE20K, Cityscapes shapes)

IGNORE_INDEX = 255  # VOC's and Cityscapes' "void" label


def pixel_cross_entropy_case(
    label, n, c, h, w, *, ignored=0.05, channels_last=False, label_dtype=torch.int64, **kw
) -> OpCase:
    """The loss on (n, c, h, w) logits; label_dtype: the targets' (uint8: as VOC's PNGs are
    read; F.cross_entropy, the reference, takes them as int64 only)."""
    pixels = n * h * w
    label_bytes = torch.empty((), dtype=label_dtype).element_size()

    def make(device, dtype, gen):
        logits = _randn((n, c, h, w), device, torch.float32, gen).mul_(3.0).to(dtype)
        if channels_last:  # a channels_last net's logits: the class axis is the contiguous one
            logits = logits.contiguous(memory_format=torch.channels_last)
        return {
            "logits": logits,
            "target": _targets(n, c, h, w, device, gen, ignored, IGNORE_INDEX, label_dtype),
        }

    def call(logits, target, *, backend):
        if backend == "reference":
            return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)
        return fcn_fast.pixel_cross_entropy(
            logits, target, ignore_index=IGNORE_INDEX, backend=backend
        )

    def nbytes(es):
        # Forward reads logits and targets; backward reads them again and writes the gradient.
        fwd = es * pixels * c + label_bytes * pixels
        bwd = 2 * es * pixels * c + label_bytes * pixels
        return fwd, bwd

    return OpCase(
        op="pixel_cross_entropy",
        label=label,
        shape=f"N{n} C{c} {h}x{w} {ignored:.0%} ignored"
        + (" channels_last" if channels_last else "")
        + _labels_shape(label_dtype),
        make=make,
        call=call,
        grads=("logits",),
        bytes_fn=nbytes,
        **kw,
    )


for _case in (
    pixel_cross_entropy_case("voc-500", 4, 21, 500, 500, sizes=DEFAULT, headline=True),
    # ADE20K (150 classes) and Cityscapes (19 classes, 1024x2048): GPU default, CPU full.
    pixel_cross_entropy_case("ade20k", 4, 150, 512, 512, sizes=DEFAULT, devices=("cuda",)),
    pixel_cross_entropy_case("ade20k", 4, 150, 512, 512, sizes=FULL, devices=("cpu",)),
    pixel_cross_entropy_case(
        "cityscapes", 2, 19, 1024, 2048, sizes=DEFAULT, devices=("cuda",), headline=True
    ),
    pixel_cross_entropy_case("cityscapes", 2, 19, 1024, 2048, sizes=FULL, devices=("cpu",)),
    pixel_cross_entropy_case(
        "large",
        16,
        21,
        1024,
        1024,
        sizes=DEFAULT,
        devices=("cuda",),
        headline=True,
        compile_dtypes=(torch.float32,),
    ),
    # GPU rows the model holds to within 10 points of their op's main row: channels_last
    # logits of 150 classes (the staged kernels), odd widths (no aligned 16-byte vectors).
    pixel_cross_entropy_case(
        "ade20k-cl", 4, 150, 512, 512, channels_last=True, sizes=DEFAULT, devices=("cuda",)
    ),
    pixel_cross_entropy_case("odd-1025", 16, 21, 1025, 1025, sizes=DEFAULT, devices=("cuda",)),
    # uint8 targets, as VOC / ADE20K / Cityscapes PNGs hold them: 1 byte a pixel, not 8.
    pixel_cross_entropy_case(
        "large-u8", 16, 21, 1024, 1024, sizes=DEFAULT, devices=("cuda",), label_dtype=torch.uint8
    ),
    pixel_cross_entropy_case("overhead", 1, 3, 4, 4, sizes=EVERY_SIZE, host_bound=True),
    pixel_cross_entropy_case("quick", 2, 5, 33, 47, sizes=QUICK),
    pixel_cross_entropy_case("quick-u8", 2, 5, 33, 47, sizes=QUICK, label_dtype=torch.uint8),
):
    register(_case)


# --------------------------------------------------------------------------------------------
# Fused heads (issue 9): the final upsampling with the loss or the argmax, never storing the
# full-resolution logits. Baselines: the plain-PyTorch composition ("reference", what users
# write), and fcn_fast's unfused ops in sequence ("unfused").
#
# Fewest bytes. Loss forward: the low-resolution input and the targets read once, the loss
# written. Backward: the input and the targets read again, the log-sum-exp the forward kept
# read (4 B per pixel), the input's gradient written. Argmax: the input read, labels written.

LSE_BYTES = 4  # the float32 log-sum-exp per pixel the loss keeps for backward
LOSS_BYTES = 4  # one reduced loss (float32; bf16 rounds it to 2 B, a difference of 2 bytes)


def _loss_bytes(low_res, pixels, label_dtype=torch.int64):
    label_bytes = torch.empty((), dtype=label_dtype).element_size()  # 8 for int64

    def nbytes(es):
        fwd = es * low_res + label_bytes * pixels + LOSS_BYTES
        bwd = es * low_res + label_bytes * pixels + LSE_BYTES * pixels + es * low_res
        return fwd, bwd

    return nbytes


def _argmax_bytes(low_res, pixels, label_bytes=8):
    return lambda es: (es * low_res + label_bytes * pixels, 0)


def upsample_cross_entropy_case(
    label, n, c, coarse, factor, *, crop, out, ignored=0.05, label_dtype=torch.int64, **kw
) -> OpCase:
    """The FCN final head and its loss: coarse (n, c, coarse²) x factor, cropped to out²;
    targets of label_dtype (as pixel_cross_entropy_case)."""
    assert crop + out <= (coarse + 1) * factor

    def make(device, dtype, gen):
        # Scores of a few units, as a trained net's: the loss is not all log(C).
        coarse_scores = _randn((n, c, coarse, coarse), device, torch.float32, gen).mul_(3.0)
        target = _targets(n, c, out, out, device, gen, ignored, IGNORE_INDEX, label_dtype)
        return {"coarse": coarse_scores.to(dtype), "target": target}

    def call(coarse, target, *, backend):
        if backend == "reference":
            logits = upsample_skip_reference(
                coarse, None, factor, 2 * factor, (crop, crop), (0, 0), (out, out)
            )
            return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)
        if backend == "unfused":
            logits = fcn_fast.upsample_skip(coarse, factor=factor, crop=crop, out_size=(out, out))
            return fcn_fast.pixel_cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        return fcn_fast.upsample_cross_entropy(
            coarse, target, factor=factor, crop=crop, ignore_index=IGNORE_INDEX, backend=backend
        )

    return OpCase(
        op="upsample_cross_entropy",
        label=label,
        shape=f"N{n} C{c} {coarse}² x{factor} crop{crop} → {out}², {ignored:.0%} ignored"
        + _labels_shape(label_dtype),
        make=make,
        call=call,
        grads=("coarse",),
        bytes_fn=_loss_bytes(n * c * coarse * coarse, n * out * out, label_dtype),
        modes=("fwdbwd",),
        extra_baselines=("unfused",),
        **kw,
    )


def interpolate_cross_entropy_case(label, n, c, h, out, *, ignored=0.05, **kw) -> OpCase:
    """The DeepLab / torchvision head and its loss: F.interpolate (bilinear) to the targets'
    size, then F.cross_entropy; low-precision rows under torch.autocast."""

    def make(device, dtype, gen):
        logits = _randn((n, c, h, h), device, torch.float32, gen).mul_(3.0).to(dtype)
        return {
            "logits": logits,
            "target": _targets(n, c, out, out, device, gen, ignored, IGNORE_INDEX),
        }

    def call(logits, target, *, backend):
        if backend == "reference":
            up = F.interpolate(logits, size=(out, out), mode="bilinear", align_corners=False)
            return F.cross_entropy(up, target, ignore_index=IGNORE_INDEX)
        if backend == "unfused":
            up = fcn_fast.interpolate_add(logits, size=(out, out))
            return fcn_fast.pixel_cross_entropy(up, target, ignore_index=IGNORE_INDEX)
        return fcn_fast.interpolate_cross_entropy(
            logits, target, ignore_index=IGNORE_INDEX, backend=backend
        )

    return OpCase(
        op="interpolate_cross_entropy",
        label=label,
        shape=f"N{n} C{c} {h}² → {out}², {ignored:.0%} ignored",
        make=make,
        call=call,
        grads=("logits",),
        bytes_fn=_loss_bytes(n * c * h * h, n * out * out),
        modes=("fwdbwd",),
        extra_baselines=("unfused",),
        autocast=True,
        **kw,
    )


# Labels: fp32 logits computed in a different order may swap a near tie, about one pixel in
# a million; bf16 rows compare with the fp32 oracle on the same bf16 inputs.
LABEL_TOLERANCE = (("fp32", 1e-5), ("bf16", 1e-4), ("fp16", 1e-4))


def upsample_argmax_case(label, n, c, coarse, factor, *, crop, out, **kw) -> OpCase:
    """FCN inference: the final upsampling and the argmax over classes."""

    def make(device, dtype, gen):
        return {"coarse": _randn((n, c, coarse, coarse), device, dtype, gen)}

    def call(coarse, *, backend):
        if backend == "reference":
            logits = upsample_skip_reference(
                coarse, None, factor, 2 * factor, (crop, crop), (0, 0), (out, out)
            )
            return argmax_reference(logits)
        if backend == "unfused":
            logits = fcn_fast.upsample_skip(coarse, factor=factor, crop=crop, out_size=(out, out))
            return argmax_reference(logits)
        return fcn_fast.upsample_argmax(
            coarse, factor=factor, crop=crop, out_size=(out, out), backend=backend
        )

    return OpCase(
        op="upsample_argmax",
        label=label,
        shape=f"N{n} C{c} {coarse}² x{factor} crop{crop} → {out}² labels",
        make=make,
        call=call,
        grads=(),
        bytes_fn=_argmax_bytes(n * c * coarse * coarse, n * out * out),
        modes=("fwd",),
        extra_baselines=("unfused",),
        labels=True,
        tolerance=LABEL_TOLERANCE,
        **kw,
    )


def interpolate_argmax_case(label, n, c, h, out, **kw) -> OpCase:
    """DeepLab-style inference: F.interpolate (bilinear) to the image size, then the argmax."""

    def make(device, dtype, gen):
        return {"x": _randn((n, c, h, h), device, dtype, gen)}

    def call(x, *, backend):
        if backend == "reference":
            up = F.interpolate(x, size=(out, out), mode="bilinear", align_corners=False)
            return argmax_reference(up)
        if backend == "unfused":
            return argmax_reference(fcn_fast.interpolate_add(x, size=(out, out)))
        return fcn_fast.interpolate_argmax(x, size=(out, out), backend=backend)

    return OpCase(
        op="interpolate_argmax",
        label=label,
        shape=f"N{n} C{c} {h}² → {out}² labels",
        make=make,
        call=call,
        grads=(),
        bytes_fn=_argmax_bytes(n * c * h * h, n * out * out),
        modes=("fwd",),
        extra_baselines=("unfused",),
        labels=True,
        tolerance=LABEL_TOLERANCE,
        **kw,
    )


_GPU_ONLY, _CPU_ONLY = ("cuda",), ("cpu",)
for _case in (
    # FCN-8s head + loss. CPU: VOC at 500x500 (issue 9: >= 25x eager); GPU: the large shape
    # (>= 20x eager, >= 3x unfused, peak extra memory <= 5% of eager's), fp32 and bf16.
    upsample_cross_entropy_case(
        "fcn8s-final", 4, 21, 70, 8, crop=31, out=500, sizes=DEFAULT, devices=_CPU_ONLY
    ),
    upsample_cross_entropy_case(
        "large", 16, 21, 132, 8, crop=31, out=1024, sizes=DEFAULT, devices=_GPU_ONLY, headline=True
    ),
    upsample_cross_entropy_case(
        "large-u8",
        16,
        21,
        132,
        8,
        crop=31,
        out=1024,
        sizes=DEFAULT,
        devices=_GPU_ONLY,
        label_dtype=torch.uint8,
    ),
    upsample_cross_entropy_case("quick", 1, 21, 13, 8, crop=31, out=73, sizes=QUICK),
    upsample_cross_entropy_case(
        "quick-u8", 1, 21, 13, 8, crop=31, out=73, sizes=QUICK, label_dtype=torch.uint8
    ),
    # DeepLab-style head + loss on ADE20K's 150 classes, bf16 under autocast on the GPU
    # (>= 8x eager, >= 3x torch.compile of it); fp32 and a smaller batch on the CPU.
    interpolate_cross_entropy_case(
        "ade20k-512",
        16,
        150,
        64,
        512,
        sizes=DEFAULT,
        devices=_GPU_ONLY,
        gpu_dtypes=(torch.bfloat16,),
        compile_dtypes=(torch.bfloat16,),
    ),
    interpolate_cross_entropy_case("ade20k-512", 2, 150, 64, 512, sizes=DEFAULT, devices=_CPU_ONLY),
    interpolate_cross_entropy_case("quick", 2, 7, 15, 37, sizes=QUICK),
    # Inference: FCN-8s labels (GPU: >= 10x eager upsample + argmax), DeepLab-style labels.
    upsample_argmax_case(
        "fcn8s-final", 4, 21, 70, 8, crop=31, out=500, sizes=DEFAULT, devices=_CPU_ONLY
    ),
    upsample_argmax_case(
        "large", 16, 21, 132, 8, crop=31, out=1024, sizes=DEFAULT, devices=_GPU_ONLY
    ),
    upsample_argmax_case("quick", 1, 21, 13, 8, crop=31, out=73, sizes=QUICK),
    interpolate_argmax_case("ade20k-512", 16, 150, 64, 512, sizes=DEFAULT, devices=_GPU_ONLY),
    interpolate_argmax_case("ade20k-512", 2, 150, 64, 512, sizes=FULL, devices=_CPU_ONLY),
    interpolate_argmax_case("quick", 2, 7, 15, 37, sizes=QUICK),
):
    register(_case)


# --------------------------------------------------------------------------------------------
# FCN-8s: inference forward, and the training step (forward, loss, backward, SGD step).
#   reference  reference heads + nn.CrossEntropyLoss on model(x): plain PyTorch
#   unfused    fcn_fast heads (backend "auto") + pixel_cross_entropy on model(x)
#   kernels    model.loss(x, target): the final head and the loss fused, on that backend
# GPU: FCN8s(n_class=150), N8 512², bf16 autocast, channels_last (issue 9: >= 1.15x step time,
# >= 15% lower peak memory than the reference). CPU: reduced width, fp32, VOC's 21 classes: the
# reference heads' dense deconvolution costs C² per pixel, and at C150 it alone would take
# seconds a step on two cores.

# The reduced-width FCN-8s of the CPU sweep: 1/8 of VGG16's channels, same layers and crops.
REDUCED_WIDTH = 1 / 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelCase(Case):
    n: int
    height: int
    width: int
    n_class: int = 21
    reduced: bool = False
    oracle_upcast: bool = False
    modes: tuple[str, ...] = ("fwd", "train")
    backends: tuple[str, ...] | None = ("reference", "cpu", "cuda", "triton")  # no compile
    extra_baselines: tuple[str, ...] = ("unfused",)
    tolerance: tuple[tuple[str, float], ...] = (("fp32", 1e-4), ("bf16", 5e-2), ("fp16", 2e-2))

    def dtypes(self, device, size):
        if device != "cuda":
            return (torch.float32,)
        # bf16 autocast + channels_last is the GPU training recipe; fp32 in the full size.
        return (torch.float32, torch.bfloat16) if size == "full" else (torch.bfloat16,)

    def backend_names(self, device, size, dtype, mode):
        names = super().backend_names(device, size, dtype, mode)
        # Inference has no loss to fuse: "unfused" would time the same forward again.
        return tuple(n for n in names if mode == "train" or n != "unfused")

    def inputs(self, device, dtype):
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        images = torch.randn((self.n, 3, self.height, self.width), generator=gen, device=device)
        target = torch.randint(
            0, self.n_class, (self.n, self.height, self.width), generator=gen, device=device
        )
        if self._channels_last(dtype):
            images = images.contiguous(memory_format=torch.channels_last)
        return {"images": images, "target": target}

    def _channels_last(self, dtype):
        return dtype in LOW_PRECISION

    def _model(self, backend, device, dtype):
        cls = fcn_fast.FCN8s
        # A full-width VGG16 training step would take minutes on a small CPU.
        kwargs = {"width": REDUCED_WIDTH} if self.reduced else {}
        heads = "auto" if backend == "unfused" else backend
        # Built on the device (VGG16's 134M parameters initialise slowly on a CPU), from one
        # seed: every backend starts from the same weights.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
            torch.manual_seed(self.seed)
            model = cls(self.n_class, backend=heads, **kwargs)
        model = model.to(device)
        if self._channels_last(dtype):
            model = model.to(memory_format=torch.channels_last)
        return model

    def step(self, inputs, backend, mode, dtype):
        device = inputs["images"].device
        model = self._model(backend, device, dtype)
        images, target = inputs["images"], inputs["target"]
        autocast = (
            torch.autocast(device.type, dtype=dtype)
            if dtype in LOW_PRECISION
            else contextlib.nullcontext()
        )

        if mode == "fwd":
            model.eval()

            def infer():
                with torch.no_grad(), autocast:
                    return (model(images),)

            return infer

        if backend == "reference":
            criterion = torch.nn.CrossEntropyLoss()

            def loss_fn():
                return criterion(model(images), target)
        elif backend == "unfused":

            def loss_fn():
                return fcn_fast.pixel_cross_entropy(model(images), target)
        else:

            def loss_fn():
                return model.loss(images, target)

        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)

        def train():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn()
            loss.backward()
            grads = [p.grad for p in params]
            opt.step()
            return (loss.detach(), *grads)

        return train


for _case in (
    ModelCase(
        op="fcn8s",
        label="reduced-224",
        shape="FCN-8s reduced width, N2 3x224x224",
        n=2,
        height=224,
        width=224,
        reduced=True,
        sizes=DEFAULT,
        devices=_CPU_ONLY,
    ),
    ModelCase(
        op="fcn8s",
        label="vgg16-500",
        shape="FCN-8s VGG16, N1 3x500x500",
        n=1,
        height=500,
        width=500,
        sizes=FULL,
        devices=_CPU_ONLY,
    ),
    ModelCase(
        op="fcn8s",
        label="vgg16-512",
        shape="FCN-8s VGG16 C150, N8 3x512x512",
        n=8,
        height=512,
        width=512,
        n_class=150,
        sizes=DEFAULT,
        devices=_GPU_ONLY,
    ),
    ModelCase(
        op="fcn8s",
        label="quick",
        shape="FCN-8s reduced width, N1 3x37x45",
        n=1,
        height=37,
        width=45,
        reduced=True,
        sizes=QUICK,
    ),
):
    register(_case)

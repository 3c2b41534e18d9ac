"""The benchmark cases: one registry read by the pytest benchmarks (benchmarks/) and the report.

A case is one op (or model step) at one shape. It knows how to build its inputs
for a device and dtype, how to run one timed step on a backend (forward, or
forward+backward / training step), and the fewest bytes that step must move
(DESIGN.md 6: each input read once, each output written once). The runner
(fcn_fast.bench.runner) does the rest: numerics against the reference first,
then timing, copy bandwidth, speed-up and peak memory.

Adding a case is a `register(OpCase(...))` call below. Cases for ops that are not
in this build yet (pixel_cross_entropy, FCN8s) register only when fcn_fast has them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch

import fcn_fast

SIZES = ("quick", "default", "full")
MODES = ("fwd", "fwdbwd", "train")
LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}
# Backends the suite times on each device: "compile" is torch.compile of the reference.
# Triton on a CPU only runs interpreted (a test tool, not a performance backend).
DEVICE_BACKENDS = {
    "cpu": ("reference", "cpu"),
    "cuda": ("reference", "compile", "cuda", "triton"),
}


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
    # headline cases add bf16 (fp16 in the full size only), and torch.compile of the
    # reference is timed for compare_compile cases at fp32 only (each compile takes
    # 10-30 s); the full size runs every dtype and backend everywhere.
    headline: bool = False
    compare_compile: bool = False
    modes: tuple[str, ...] = ("fwd", "fwdbwd")
    backends: tuple[str, ...] | None = None  # None: every backend of the device
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
        return (torch.float32, torch.bfloat16) if self.headline else (torch.float32,)

    def backend_names(self, device: str, size: str, dtype: torch.dtype) -> tuple[str, ...]:
        names = self.backends or DEVICE_BACKENDS[device]
        with_compile = size == "full" or (self.compare_compile and dtype == torch.float32)
        return tuple(
            n for n in names if n in DEVICE_BACKENDS[device] and (n != "compile" or with_compile)
        )

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
    call: Callable[..., torch.Tensor]  # call(**inputs, backend=...) -> output
    grads: tuple[str, ...]
    bytes_fn: Callable[[int], tuple[int, int]]  # element size -> (forward, backward) bytes

    def inputs(self, device, dtype):
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return self.make(device, dtype, gen)

    def _fn(self, backend):
        if backend == "compile":
            _raise_limits()
            return _compiled((self.key, "op"), functools.partial(self.call, backend="reference"))
        return functools.partial(self.call, backend=backend)

    def step(self, inputs, backend, mode, dtype):
        fn = self._fn(backend)
        if mode == "fwd":
            return lambda: (fn(**inputs),)
        leaves = {k: v.detach().requires_grad_(k in self.grads) for k, v in inputs.items()}
        wrt = [leaves[k] for k in self.grads]
        grad_out = []  # made on the first call, from a fixed seed, rounded to the case dtype

        def run():
            out = fn(**leaves)
            if not grad_out:
                grad_out.append(_grad_like(out, dtype, self.seed + 1))
            grads = torch.autograd.grad(out, wrt, grad_out[0])
            return (out.detach(), *grads)

        return run

    def forward_for_backward(self, inputs, backend, dtype):
        fn = self._fn(backend)
        leaves = {k: v.detach().requires_grad_(k in self.grads) for k, v in inputs.items()}
        return lambda: fn(**leaves)

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


CASES: list[Case] = []


def register(case: Case) -> Case:
    if any(c.key == case.key and set(c.devices) & set(case.devices) for c in CASES):
        raise ValueError(f"benchmark case {case.key} is registered twice for one device")
    CASES.append(case)
    return case


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
                for backend in case.backend_names(device, size, dtype):
                    if backends and backend not in backends:
                        continue
                    runs.append((case, backend, dtype, mode))
    return runs


# --------------------------------------------------------------------------------------------
# upsample_skip: the FCN decoder steps (issue 2's head table at 500x500)

DEFAULT = frozenset({"default", "full"})
FULL = frozenset({"full"})
QUICK = frozenset({"quick"})


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
        compare_compile=True,
    ),
    upsample_skip_case("large", 4, 21, 132, 8, crop=31, out=1024, sizes=FULL, devices=("cpu",)),
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

    def call(x, skip=None, *, backend):
        size = None if scale_factor else (out_h, out_w)
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
        bwd = es * (big + n * c * h * w + (big if skip else 0))
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
        compare_compile=True,
    ),
    interpolate_add_case("large", 4, 21, 128, 128, 1024, 1024, sizes=FULL, devices=("cpu",)),
    interpolate_add_case("quick-skip", 2, 7, 15, 17, 31, 33, align_corners=True, sizes=QUICK),
):
    register(_case)


# --------------------------------------------------------------------------------------------
# pixel_cross_entropy (issue 3): active once fcn_fast has the op.


def pixel_cross_entropy_case(label, n, c, h, w, *, ignored=0.05, ignore_index=255, **kw) -> OpCase:
    pixels = n * h * w

    def make(device, dtype, gen):
        logits = _randn((n, c, h, w), device, torch.float32, gen).mul_(3.0).to(dtype)
        target = torch.randint(0, c, (n, h, w), generator=gen, device=device)
        drop = torch.rand((n, h, w), generator=gen, device=device) < ignored
        return {"logits": logits, "target": target.masked_fill_(drop, ignore_index)}

    def call(logits, target, *, backend):
        return fcn_fast.pixel_cross_entropy(
            logits, target, ignore_index=ignore_index, backend=backend
        )

    def nbytes(es):
        # Issue 3: forward reads logits and targets; backward reads them again, writes the grad.
        fwd = es * pixels * c + 8 * pixels
        bwd = 2 * es * pixels * c + 8 * pixels
        return fwd, bwd

    return OpCase(
        op="pixel_cross_entropy",
        label=label,
        shape=f"N{n} C{c} {h}x{w} {ignored:.0%} ignored",
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
        compare_compile=True,
    ),
    pixel_cross_entropy_case("quick", 2, 5, 33, 47, sizes=QUICK),
):
    register(_case)


# --------------------------------------------------------------------------------------------
# FCN-8s (issue 4): inference forward and the training step (forward, loss, backward, SGD
# step) with fused heads + pixel_cross_entropy vs reference heads + the reference loss.
# Active once fcn_fast has FCN8s (and pixel_cross_entropy).


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
    tolerance: tuple[tuple[str, float], ...] = (("fp32", 1e-4), ("bf16", 5e-2), ("fp16", 2e-2))

    def dtypes(self, device, size):
        # bf16 autocast + channels_last is the GPU training recipe (issue 4).
        return (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)

    def backend_names(self, device, size, dtype):
        return tuple(n for n in self.backends if n in DEVICE_BACKENDS[device])

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
        # Built on the device (VGG16's 134M parameters initialise slowly on a CPU), from one
        # seed: every backend starts from the same weights.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
            torch.manual_seed(self.seed)
            model = cls(self.n_class, backend=backend, **kwargs)
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

        def loss_fn(logits):
            return fcn_fast.pixel_cross_entropy(logits, target, backend=backend)

        if mode == "fwd":
            model.eval()

            def infer():
                with torch.no_grad(), autocast:
                    return (model(images),)

            return infer
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)

        def train():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(images))
            loss.backward()
            grads = [p.grad for p in params]
            opt.step()
            return (loss.detach(), *grads)

        return train


_FCN = {"modes": ("fwd", "train"), "headline": True}
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
        devices=("cpu",),
        **_FCN,
    ),
    ModelCase(
        op="fcn8s",
        label="vgg16-500",
        shape="FCN-8s VGG16, N1 3x500x500",
        n=1,
        height=500,
        width=500,
        sizes=FULL,
        devices=("cpu",),
        **_FCN,
    ),
    ModelCase(
        op="fcn8s",
        label="vgg16-512",
        shape="FCN-8s VGG16, N8 3x512x512",
        n=8,
        height=512,
        width=512,
        sizes=DEFAULT,
        devices=("cuda",),
        **_FCN,
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
        **_FCN,
    ),
):
    register(_case)


def describe_bytes(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    if nbytes == 0:
        return "0 B"
    unit = min(int(math.log(nbytes, 1000)), 4)
    return f"{nbytes / 1000**unit:.3g} {('B', 'kB', 'MB', 'GB', 'TB')[unit]}"

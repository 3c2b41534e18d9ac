"""Static sm_90 performance model: predicted GPU times of the benchmark rows, from the
kernels' machine code, without a GPU (docs/design.md 5, "The static model").

For every row of the default GPU sweep and each kernel backend (cuda, triton):

1. The row's fcn_fast op calls are recorded by running its benchmark step on fake tensors
   (FakeTensorMode): the same ops, shapes, strides and dtypes a GPU run dispatches.
2. Each op call becomes the kernel launches its backend would make: for cuda, the launch
   plans of csrc/include/fcn_fast/*_kernels.h (the launchers' own host code, compiled from
   csrc/tools/launch_plans.cpp); for triton, the launchers run on meta tensors with Triton's
   launch replaced by a recorder, and each launch compiled for sm_90.
3. Each kernel's sm_90 machine code (fcn_fast/bench/sass.py) gives registers, shared memory,
   the instructions of one steady-state trip of its element loop and the elements that trip
   handles, and the global-load bytes in flight per thread (from the scoreboards).
4. A launch's time is the largest of
      bytes moved / copy bandwidth                                   (memory)
      thread-instructions / (SMs x 128 per clock)                    (issue)
      exps / (SMs x 16 MUFU.EX2 per clock)                           (exp)
      bytes read / (read bytes in flight per SM x SMs / latency)     (latency)
      a kernel's shortest time back to back in a stream, ~2 us       (launch)
   where thread-instructions = instructions per element x elements + the straight-line code
   once per thread, and bytes in flight per SM = per-thread bytes in flight x resident
   threads (occupancy from registers, threads, shared memory). A row's time is the sum of its
   launches'.

What it cannot see: caches (every byte counts as DRAM traffic, gathers of a small input as
L1/L2 hits: not counted), DRAM page effects, clocks under load, tail effects of the last
wave, divergent branches (a trip follows the shortest path), and instruction latencies
beyond the scoreboard waits on global loads. Every figure it prints is a prediction, not a
measurement.

    python -m fcn_fast.bench model [--json PATH] [--markdown PATH] [--ops ...]
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import math
import os
import subprocess
import tempfile

import torch

from fcn_fast.bench import sass

# ------------------------------------------------------------------------------- hardware


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    sms: int
    clock_ghz: float
    peak_tbps: float  # HBM peak
    copy_tbps: float  # a device-to-device copy's bandwidth (the memory roof)
    issue_per_clock: int = 128  # thread-instructions per SM per clock: 4 schedulers x 32
    exp_per_clock: int = 16  # MUFU.EX2 lanes per SM per clock
    # The Little's-law term's effective latency: 600-900 ns loaded DRAM latency plus queueing,
    # set so that 32 KB of reads in flight per SM reach 80% of an H100's copy (the rule of
    # thumb the kernels are held to); the first GPU run calibrates it.
    latency_ns: float = 1800.0
    registers: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    shared_bytes: int = 228 * 1024  # per SM; each block also reserves 1 KB
    # The shortest a kernel takes on the device, launched back to back in one stream (the
    # tiny rows: their time is this per launch, not their bytes).
    launch_us: float = 2.0

    @property
    def issue_rate(self) -> float:  # thread-instructions per second
        return self.sms * self.issue_per_clock * self.clock_ghz * 1e9

    @property
    def exp_rate(self) -> float:
        return self.sms * self.exp_per_clock * self.clock_ghz * 1e9

    @property
    def copy_rate(self) -> float:  # bytes per second
        return self.copy_tbps * 1e12


H100 = Hardware("H100 SXM", sms=132, clock_ghz=1.755, peak_tbps=3.35, copy_tbps=3.0)
H200 = Hardware("H200", sms=132, clock_ghz=1.98, peak_tbps=4.8, copy_tbps=4.3)
HARDWARE = (H100, H200)


def occupancy(hw: Hardware, registers: int, threads: int, shared: int) -> int:
    """Resident threads per SM for blocks of `threads` using `registers` a thread and
    `shared` bytes of shared memory (static + dynamic)."""
    warps = max(1, math.ceil(threads / 32))
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256  # allocated per warp in 256s
    by_registers = (hw.registers // regs_per_warp) // warps
    by_warps = hw.max_warps // warps
    by_shared = hw.shared_bytes // (shared + 1024)
    blocks = max(0, min(by_registers, by_warps, by_shared, hw.max_blocks))
    return blocks * warps * 32


# ------------------------------------------------------------------------------- kernels


@dataclasses.dataclass
class KernelFacts:
    """What the machine code of one kernel says (per-thread figures)."""

    label: str
    registers: int
    shared: int
    spills: int
    unit: str  # what an element is counted by in a trip: ex2, store, load
    trip_instructions: int
    trip_elements: float
    straight_line: int  # a working thread's instructions outside the element loop
    exit_path: int  # an idle thread's (one that returns at once)
    branches: int  # conditional branches in the trip's body (paths not counted)
    load_bytes_in_flight: int  # per thread, global loads outstanding at once
    # per thread, the most global load bytes outstanding in a loop before the element loop
    # (a staging phase, such as the fused backward's per-pixel loads into shared memory)
    staging_in_flight: int
    widest_load: int
    widest_store: int

    @property
    def per_element(self) -> float:
        return self.trip_instructions / self.trip_elements if self.trip_elements else 0.0


def _trip_elements(trip: sass.Trip, unit: str, element_bytes: int) -> float:
    if unit == "ex2":
        return float(trip.ex2)
    if unit == "store":
        return trip.store_bytes / element_bytes
    if unit == "load":
        return trip.load_bytes / element_bytes
    if unit == "compare":  # argmax: one compare of z with the best so far per (pixel, class)
        return float(sum(1 for i in trip.instrs if i.base in ("FSETP", "FMNMX", "DSETP")))
    raise ValueError(unit)


def analyse(function: sass.Function, unit: str, element_bytes: int) -> KernelFacts:
    """The element loop: the innermost loop with the most elements per trip, or, where no
    innermost loop handles elements (an inner loop only zeroes a buffer), the loop that does
    (its trip then runs the inner loop once)."""
    best = None
    for innermost in (True, False):
        for loop in sass.loops(function):
            if innermost and not loop.innermost:
                continue
            trip = sass.trip(function, loop)
            elements = _trip_elements(trip, unit, element_bytes) if unit else 0.0
            if elements <= 0:
                continue
            key = (elements, -trip.count)
            if best is None or key > best[0]:
                best = (key, trip, elements, loop)
        if best is not None:
            break
    trip = best[1] if best else sass.Trip([], 0)
    elements = best[2] if best else 0.0
    # A working thread's code outside the loop: its shortest way around it (the other loops
    # once); without an element loop (a Triton program per tile), every instruction.
    around = sass.around_loop(function, best[3]) if best else sass.straight_line(function)
    loads = [i.global_load_bytes for i in function.instrs if i.global_load_bytes]
    stores = [i.global_store_bytes for i in function.instrs if i.global_store_bytes]
    staging = [
        sass.trip(function, loop).load_bytes_in_flight()
        for loop in sass.loops(function)
        if loop.innermost and best is not None and loop.head < best[3].head
    ]
    return KernelFacts(
        label=function.label(),
        registers=function.registers,
        shared=function.shared,
        spills=function.local,
        unit=unit,
        trip_instructions=trip.count,
        trip_elements=elements,
        straight_line=around,
        exit_path=sass.exit_path(function),
        branches=trip.branches,
        # Without an element loop (a Triton program per tile) the whole body is one trip.
        load_bytes_in_flight=(
            trip if trip.instrs else sass.Trip(function.instrs, 0)
        ).load_bytes_in_flight(),
        staging_in_flight=max(staging, default=0),
        widest_load=max(loads, default=0),
        widest_store=max(stores, default=0),
    )


@dataclasses.dataclass
class Launch:
    """One kernel launch of a row and what it moves."""

    backend: str
    facts: KernelFacts
    threads_per_block: int
    blocks: int
    dynamic_shared: int
    elements: int  # of the kernel's unit (outputs, logits, (pixel, class) pairs, ...)
    exps: int  # MUFU.EX2 executed (the exp unit's work)
    bytes_read: int
    bytes_written: int
    working_threads: int | None = None  # those that do the work (None: all); the rest return
    # The bytes are read by a staging loop before the element loop (whose own loads are
    # cache-resident tables): Little's law with the staging loop's bytes in flight.
    read_in_staging: bool = False

    @property
    def instructions(self) -> float:
        """Thread-instructions: the element loop's trips, the code around it once per working
        thread (all of a kernel without an element loop, such as Triton's tile kernels), and
        the way out of a thread that returns at once."""
        f = self.facts
        threads = self.blocks * self.threads_per_block
        working = threads if self.working_threads is None else self.working_threads
        return (
            f.per_element * self.elements
            + f.straight_line * working
            + f.exit_path * max(threads - working, 0)
        )

    @property
    def in_flight_per_thread(self) -> int:
        """Global load bytes a thread keeps outstanding where the kernel reads its bytes."""
        f = self.facts
        return f.staging_in_flight if self.read_in_staging else f.load_bytes_in_flight

    def times(self, hw: Hardware) -> dict[str, float]:
        """Seconds under each bound."""
        f = self.facts
        threads = self.blocks * self.threads_per_block
        instructions = self.instructions
        resident = occupancy(
            hw, f.registers, self.threads_per_block, f.shared + self.dynamic_shared
        )
        in_flight = self.in_flight_per_thread * max(min(resident, threads), 1)
        out = {
            "memory": (self.bytes_read + self.bytes_written) / hw.copy_rate,
            "issue": instructions / hw.issue_rate,
            "exp": self.exps / hw.exp_rate,
            "latency": (
                self.bytes_read * hw.latency_ns * 1e-9 / (in_flight * hw.sms)
                if self.bytes_read and in_flight
                else 0.0
            ),
            "launch": hw.launch_us * 1e-6,
        }
        return out

    def resident_warps(self, hw: Hardware) -> int:
        f = self.facts
        return (
            occupancy(hw, f.registers, self.threads_per_block, f.shared + self.dynamic_shared) // 32
        )


# ------------------------------------------------------------------------------- recording


@dataclasses.dataclass
class OpCall:
    name: str  # the fcn_fast op, e.g. "resample_skip_backward"
    args: tuple
    outputs: tuple


def record_calls(case, backend: str, dtype: torch.dtype, mode: str) -> list[OpCall]:
    """The fcn_fast op calls of one benchmark step, on fake tensors. `backend` "unfused" runs
    the unfused baseline with every op on the backend in `unfused_backend`."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    import fcn_fast._backend as backends

    calls: list[OpCall] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.namespace == "fcn_fast":
                outputs = out if isinstance(out, (tuple, list)) else (out,)
                calls.append(OpCall(func._opname, tuple(args), tuple(outputs)))
            return out

    resolve = backends.resolve_backend
    chosen = backend[len("unfused:") :] if backend.startswith("unfused:") else backend
    # The kernel backends run here on fake CPU tensors: no availability check.
    backends.resolve_backend = lambda name, op, device: chosen if name == "auto" else name
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), Recorder():
            inputs = case.inputs(torch.device("cpu"), dtype)
            step_backend = "unfused" if backend.startswith("unfused:") else backend
            case.step(inputs, step_backend, mode, dtype)()
    finally:
        backends.resolve_backend = resolve
    return calls


# Aten ops that move no data (views) and the loss ops that read only what they gather.
_VIEW_OPS = {
    "view", "_unsafe_view", "slice", "select", "t", "transpose", "permute", "expand", "alias",
    "detach", "as_strided", "unsqueeze", "squeeze", "reshape", "ones_like", "zeros_like",
}  # fmt: skip
_GATHER_OPS = {"nll_loss_forward", "nll_loss2d_forward"}
_SCATTER_OPS = {"nll_loss_backward", "nll_loss2d_backward"}


def eager_bytes(case, dtype: torch.dtype, mode: str) -> int:
    """The byte floor of the eager PyTorch step (the case's reference backend, under its
    autocast): each aten op reads its tensor inputs and writes its outputs once, views move
    nothing, nll_loss reads the targets and the logits it gathers, its backward writes its
    whole output. Recorded on fake CPU tensors: the same aten ops as on a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    total = 0

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total
            out = func(*args, **(kwargs or {}))
            name = func._opname
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if func.namespace != "aten" or name in _VIEW_OPS:
                return out
            if name in _GATHER_OPS:  # (logits, target, ...): target and one logit a pixel
                target = inputs[1]
                total += _tensor_bytes([target]) + target.numel() * inputs[0].element_size()
            elif name in _SCATTER_OPS:  # (grad, logits, target, ...): writes the whole grad
                total += _tensor_bytes([inputs[2]]) + _tensor_bytes(outputs)
            else:
                total += _tensor_bytes(inputs) + _tensor_bytes(outputs)
            return out

    with FakeTensorMode(allow_non_fake_inputs=True):
        inputs = case.inputs(torch.device("cpu"), dtype)
        step = case.step(inputs, "reference", mode, dtype)
        with Counter():
            step()
    return total


def _tensor_bytes(values) -> int:
    seen, total = set(), 0
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel():
            key = (id(v.untyped_storage()) if not hasattr(v, "fake_mode") else id(v), v.numel())
            if key not in seen:
                seen.add(key)
                total += v.numel() * v.element_size()
    return total


# ------------------------------------------------------------------------------- cuda launches

_TYPE_NAMES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.bfloat16: "__nv_bfloat16",
    torch.float16: "__half",
}


@functools.cache
def _plans():
    source = os.path.join(sass.ROOT, "csrc", "tools", "launch_plans.cpp")
    include = os.path.join(sass.ROOT, "csrc", "include")
    headers = [
        os.path.join(include, "fcn_fast", f) for f in os.listdir(os.path.join(include, "fcn_fast"))
    ]
    digest = hashlib.sha256()
    for path in sorted([source, *headers]):
        with open(path, "rb") as file:
            digest.update(file.read())
    library = os.path.join(
        tempfile.gettempdir(), "fcn_fast_sass", f"plans-{digest.hexdigest()[:16]}.so"
    )
    if not os.path.exists(library):
        os.makedirs(os.path.dirname(library), exist_ok=True)
        partial = f"{library}.{os.getpid()}.tmp"
        command = [
            "g++",
            "-std=c++17",
            "-O1",
            "-fPIC",
            "-shared",
            f"-I{include}",
            source,
            "-o",
            partial,
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(partial, library)
    return ctypes.CDLL(library)


def _i64(values):
    return (ctypes.c_int64 * len(values))(*[int(v) for v in values])


def _f64(values):
    return (ctypes.c_double * len(values))(*[float(v) for v in values])


def _plan(name, *args) -> list[int]:
    out = (ctypes.c_int64 * 16)()
    converted = []
    for a in args:
        if isinstance(a, ctypes.Array):
            converted.append(a)
        elif isinstance(a, bool):
            converted.append(ctypes.c_int(int(a)))
        else:
            converted.append(ctypes.c_int64(a) if not isinstance(a, _Int) else ctypes.c_int(a.v))
    getattr(_plans(), name)(*converted, out)
    return list(out)


class _Int:
    """A C int argument (plain Python ints are int64)."""

    def __init__(self, v):
        self.v = int(v)


@functools.cache
def _cuda_index(arch: str = "sm_90") -> dict[str, sass.Function]:
    return {f.label(): f for f in sass.cuda_functions(arch)}


def _cuda_kernel(name: str, *args: str) -> sass.Function:
    label = f"{name}<{', '.join(args)}>"
    index = _cuda_index()
    if label not in index:
        raise KeyError(f"no kernel {label} in the sm_90 cubins")
    return index[label]


def _vector_name(element_size: int, index64: bool, V: int) -> str:
    """with_vector_width / with_pixels: the 16-byte width, its half (>= 4 only), or 1."""
    wide = 1 if index64 else 16 // element_size
    half = wide // 2 if wide >= 4 else 1
    return str(V if V in (wide, half) else 1)


def _index_name(index64) -> str:
    return "long" if index64 else "int"


# The loss kernels' label_t (the target's dtype) as cuobjdump spells it.
_LABEL_NAMES = {torch.int64: "long", torch.int32: "int", torch.uint8: "unsigned char"}


CUDA_UNITS = {
    "resample_skip_forward_kernel": "store",
    "resample_skip_backward_kernel": "load",
    "loss_forward_runs_kernel": "ex2",
    "loss_forward_staged_kernel": "ex2",
    "loss_backward_runs_kernel": "ex2",
    "loss_backward_staged_kernel": "ex2",
    "fused_forward_kernel": "ex2",
    "fused_backward_kernel": "ex2",
    "fused_argmax_kernel": "compare",
    "resample_tables_kernel": "",
}


def _launch(backend, function, unit_bytes, threads, blocks, smem, elements, exps, read, written):
    facts = _analysed(function, CUDA_UNITS.get(function.name, ""), unit_bytes)
    return Launch(backend, facts, threads, blocks, smem, elements, exps, read, written)


_ANALYSED: dict = {}


def _analysed(function, unit, unit_bytes) -> KernelFacts:
    # Keyed by id(): the entry keeps the function alive, so that its id is not reused by a
    # later function (a Triton launch's is created per call) and handed this one's facts.
    key = (id(function), unit, unit_bytes)
    if key not in _ANALYSED:
        _ANALYSED[key] = (function, analyse(function, unit, unit_bytes))
    return _ANALYSED[key][1]


def _tables_launch(backend, acc_name, entries):
    function = _cuda_kernel("resample_tables_kernel", acc_name)
    return _launch(backend, function, 4, 256, math.ceil(entries / 256), 0, 0, 0, 0, 0)


def _pixels_of(t: torch.Tensor) -> torch.Tensor:
    """csrc/ops/pixel_cross_entropy.cpp's view of the logits: (N, C, S)."""
    if t.dim() == 1:
        return t.reshape(1, -1, 1)
    if t.dim() == 2:
        return t.t().unsqueeze(0)
    return t.flatten(2)


def _per_pixel(t: torch.Tensor, logits_dim: int) -> torch.Tensor:
    if logits_dim == 1:
        return t.reshape(1, 1)
    if logits_dim == 2:
        return t.unsqueeze(0)
    return t.flatten(1)


def cuda_launches(call: OpCall) -> list[Launch]:
    a, name = call.args, call.name
    read, written = _tensor_bytes(a), _tensor_bytes(call.outputs)
    b = "cuda"
    if name == "resample_skip":
        x, skip = a[0], a[1]
        sb, clamp, (oh, ow), (sy, sx) = a[2:6], a[6], a[7:9], a[9:11]
        es, tname = x.element_size(), _TYPE_NAMES[x.dtype]
        out = call.outputs[0]
        p = _plan(
            "plan_resample_forward_c", _i64(x.shape), _i64(x.stride()), _Int(skip is not None),
            _i64(skip.shape if skip is not None else [0] * 4),
            _i64(skip.stride() if skip is not None else [0] * 4), sy, sx, oh, ow,
            _i64(out.stride()), _Int(es),
        )  # fmt: skip
        V, index64, grid_x, grid_y, threads = p[:5]
        kernel = _cuda_kernel(
            "resample_skip_forward_kernel",
            _vector_name(es, index64, V),
            tname,
            _index_name(index64),
        )
        acc = "double" if x.dtype == torch.float64 else "float"
        return [
            _tables_launch(b, acc, oh + ow),
            _launch(b, kernel, es, threads, grid_x * grid_y, 0, out.numel(), 0, read, written),
        ]
    if name == "resample_skip_backward":
        g, in_h, in_w, sb, clamp = a[0], a[1], a[2], a[3:7], a[7]
        es, tname = g.element_size(), _TYPE_NAMES[g.dtype]
        acc_size = 8 if g.dtype == torch.float64 else 4
        gx = call.outputs[0]
        p = _plan(
            "plan_resample_backward_c", _i64(g.shape), _i64(g.stride()), in_h, in_w,
            _i64(gx.stride()), _f64(sb), _Int(clamp), _Int(es), _Int(acc_size),
        )  # fmt: skip
        V, index64, blocks, groups, smem, threads = p[:6]
        if groups == 0:
            return []
        kernel = _cuda_kernel(
            "resample_skip_backward_kernel", _vector_name(es, index64, V), tname,
            _index_name(index64),
        )  # fmt: skip
        acc = "double" if g.dtype == torch.float64 else "float"
        return [
            _tables_launch(b, acc, in_h + in_w + g.shape[2] + g.shape[3]),
            _launch(b, kernel, es, threads, blocks * groups, smem, g.numel(), 0, read, written),
        ]
    if name in ("pixel_cross_entropy", "pixel_cross_entropy_backward"):
        backward = name.endswith("backward")
        logits = a[1] if backward else a[0]
        target = a[2] if backward else a[1]
        x, t = _pixels_of(logits), _per_pixel(target, logits.dim())
        out = _pixels_of(call.outputs[0]) if backward else x
        N, C, S = x.shape
        es, tname = x.element_size(), _TYPE_NAMES[x.dtype]
        acc_size = 8 if x.dtype == torch.float64 else 4
        p = _plan(
            "plan_pixel_cross_entropy_c", N, C, S, _i64(x.stride()), _i64(t.stride()),
            _Int(backward), _i64(out.stride()), _Int(es), _Int(acc_size),
        )  # fmt: skip
        P, index64, grid_x, grid_y, threads, smem, chunk = p[:7]
        stem = "loss_backward" if backward else "loss_forward"
        smooth = "true" if float(a[-2]) > 0 else "false"
        label = _LABEL_NAMES[target.dtype]
        if chunk > 0:
            kernel = _cuda_kernel(
                f"{stem}_staged_kernel", tname, label, _index_name(index64), smooth
            )
        else:
            kernel = _cuda_kernel(
                f"{stem}_runs_kernel", _vector_name(es, index64, P), tname, label,
                _index_name(index64), smooth,
            )  # fmt: skip
        n = N * C * S
        launch = _launch(b, kernel, es, threads, grid_x * grid_y, smem, n, n, read, written)
        # The staged kernels (channels_last) load a chunk of pixels into shared memory first.
        launch.read_in_staging = chunk > 0
        return [launch]
    if name in ("resample_cross_entropy", "resample_cross_entropy_backward", "resample_argmax"):
        backward = name.endswith("backward")
        x = a[1] if backward else a[0]
        if name == "resample_argmax":
            sb, clamp, (oh, ow) = a[1:5], a[5], a[6:8]
            t_strides = [0, 0, 0]
        else:
            target = a[2] if backward else a[1]
            sb, clamp = (a[6:10], a[10]) if backward else (a[3:7], a[7])
            oh, ow = target.shape[1:]
            t_strides = target.stride()
        smoothing = 0.0 if name == "resample_argmax" else float(a[-2])
        N, C = x.shape[:2]
        es, tname = x.element_size(), _TYPE_NAMES[x.dtype]
        acc_size = 8 if x.dtype == torch.float64 else 4
        p = _plan(
            "plan_fused_c", _i64(x.shape), _i64(x.stride()), _i64(t_strides), oh, ow, _f64(sb),
            _Int(clamp), _Int(1 if backward else 0), _Int(acc_size), _Int(smoothing > 0),
        )  # fmt: skip
        index64, threads, groups, blocks, smem, capacity = p[1], p[4], *p[5:9]
        acc = "double" if x.dtype == torch.float64 else "float"
        pairs = N * C * oh * ow
        # Table entries: taps per output row and column, the backward's adjoint ranges per input
        # row and column, the fused passes' row runs per output row.
        entries = oh + ow + (x.shape[2] + x.shape[3] if backward else 0)
        tables = _tables_launch(b, acc, entries + oh)
        if name in ("resample_cross_entropy", "resample_argmax"):
            # plan_fused_forward: the coarse-max pass (a thread per coarse pixel; the argmax
            # only for its confidence), then a thread per fine pixel, those that start a strip
            # of R rows doing the strip's work.
            rows = 8 if sb[0] <= 1 / 6 else 2
            if name == "resample_argmax":
                label = _LABEL_NAMES[a[8]]
                conf = bool(a[9])
                kernel = _cuda_kernel(
                    "fused_argmax_kernel", tname, label, _index_name(index64), str(rows),
                    "true" if conf else "false",
                )  # fmt: skip
                exps = pairs if conf else 0
            else:
                conf = True
                smooth = "true" if smoothing > 0 else "false"
                kernel = _cuda_kernel(
                    "fused_forward_kernel", tname, _LABEL_NAMES[target.dtype],
                    _index_name(index64), str(rows), smooth,
                )  # fmt: skip
                exps = pairs
            blocks = -(-ow // threads) * min(oh, 65535)  # plan_fused_forward
            main = _launch(b, kernel, es, threads, blocks, 0, pairs, exps, read, written)
            # Each working thread runs a strip for each image (its code around the class loop
            # N times): counted as N threads.
            main.working_threads = N * ow * _strips(oh, x.shape[2], sb[0], sb[1], clamp, rows)
            launches = [tables, main]
            if conf:
                cmax = _cuda_kernel("coarse_max_kernel", tname, _index_name(index64))
                coarse_blocks = -(-(x.shape[2] * x.shape[3]) // threads) * min(N, 65535)
                launches.insert(1, _launch(b, cmax, es, threads, coarse_blocks, 0, 0, 0, 0, 0))
            return launches
        if groups == 0:  # the unfused fallback: not modelled as one kernel
            return []
        # Each block recomputes the output pixels its band and tile read: at most `capacity`.
        halo = max(1.0, blocks * capacity / (oh * ow))
        smooth = "true" if smoothing > 0 else "false"
        kernel = _cuda_kernel(
            "fused_backward_kernel", tname, _LABEL_NAMES[target.dtype], _index_name(index64), smooth
        )
        work = int(pairs * halo)
        # Phase P stages each block's region of pixels (target, lse and a per-pixel gradient
        # where reduction is "none") for each group of classes; the element loop then reads
        # only the coarse x and the tables, which the caches hold.
        grad, lse = a[0], a[4]
        per_pixel = target.element_size() + lse.element_size()
        per_pixel += grad.element_size() if grad.numel() > 1 else 0
        staged = groups * blocks * capacity * per_pixel
        launch = _launch(
            b, kernel, es, threads, blocks * groups, smem, work, work, staged + _tensor_bytes([x]),
            written,
        )  # fmt: skip
        launch.read_in_staging = True
        return [tables, launch]
    raise KeyError(f"no CUDA launch model for fcn_fast::{name}")


def _strips(out_h, in_h, scale, bias, clamp, rows) -> int:
    """Strips of the fused forward: runs of output rows reading the same input rows (the
    tables' row_run_start, in Python), each cut into pieces of `rows`."""

    def taps(Y):
        s = Y * scale + bias
        if clamp:
            i0 = min(int(max(s, 0.0)), in_h - 1)
            return (i0, min(i0 + 1, in_h - 1))
        i0 = math.floor(s)
        return (min(max(i0, 0), in_h - 1), min(max(i0 + 1, 0), in_h - 1), i0 < 0, i0 + 1 >= in_h)

    strips, run = 0, 0
    for Y in range(out_h):
        if Y > 0 and taps(Y) == taps(Y - 1):
            run += 1
        else:
            run = 0
        strips += run % rows == 0
    return strips


# ------------------------------------------------------------------------------- triton launches

# (module, kernel) -> unit; kernels without an element loop (a program per tile) need none.
TRITON_UNITS = {
    ("resample_skip", "_fwd_rows_kernel"): "store",
    ("resample_skip", "_fwd_pixels_kernel"): "store",
    ("resample_skip", "_bwd_kernel"): "load",
    ("pixel_cross_entropy", "_fwd_pixels_kernel"): "ex2",
    ("pixel_cross_entropy", "_fwd_classes_kernel"): "ex2",
    ("pixel_cross_entropy", "_bwd_pixels_kernel"): "ex2",
    ("pixel_cross_entropy", "_bwd_classes_kernel"): "ex2",
    ("resample_cross_entropy", "_fwd_kernel"): "ex2",
    ("resample_cross_entropy", "_bwd_kernel"): "ex2",
    ("resample_cross_entropy", "_argmax_kernel"): "compare",
}


def _meta_like(t):
    if not isinstance(t, torch.Tensor):
        return t
    return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="meta")


def triton_launches(call: OpCall) -> list[Launch]:
    """Run the op's Triton twin on meta tensors with launches recorded and compiled."""
    import importlib

    from triton.runtime.jit import JITFunction

    args = [_meta_like(v) for v in call.args[:-1]]  # the backend string is the router's
    name = call.name
    if name.startswith("pixel_cross_entropy"):
        backward = name.endswith("backward")
        logits_index = 1 if backward else 0
        dim = args[logits_index].dim()
        args[logits_index] = _pixels_of(args[logits_index])
        args[logits_index + 1] = _per_pixel(args[logits_index + 1], dim)  # target
        if backward:
            args[4] = _per_pixel(args[4], dim)  # lse
            if call.args[-3] == 0:  # reduction none: per-pixel grad
                args[0] = _per_pixel(args[0], dim)
    module = {
        "resample_skip": "resample_skip",
        "resample_skip_backward": "resample_skip",
        "pixel_cross_entropy": "pixel_cross_entropy",
        "pixel_cross_entropy_backward": "pixel_cross_entropy",
        "resample_cross_entropy": "resample_cross_entropy",
        "resample_cross_entropy_backward": "resample_cross_entropy",
        "resample_argmax": "resample_cross_entropy",
    }[name]
    twin = getattr(importlib.import_module(f"fcn_fast.triton.{module}"), f"{name}_triton")
    launches = []
    original = JITFunction.run

    def record(self, *a, grid, warmup, **kw):
        launches.append((self, a, kw, grid))

    JITFunction.run = record
    try:
        twin(*args)
    finally:
        JITFunction.run = original
    read, written = _tensor_bytes(call.args), _tensor_bytes(call.outputs)
    out = []
    for kernel, a, kw, grid in launches:
        compiled = _triton_compile(kernel, a, kw)
        function = sass.triton_function(compiled)
        function.name = kernel.fn.__name__
        dims = grid(kw) if callable(grid) else grid
        blocks = math.prod(int(d) for d in dims)
        threads = int(kw.get("num_warps", 4)) * 32
        key = (module, function.name)
        unit = TRITON_UNITS.get(key, "")
        elements, exps = _triton_elements(key, call)
        facts = _analysed(function, unit, _unit_bytes(call))
        main = elements > 0
        out.append(
            Launch("triton", facts, threads, blocks, 0, elements, exps,
                   read if main else 0, written if main else 0)
        )  # fmt: skip
    return out


def _unit_bytes(call: OpCall) -> int:
    for v in call.args:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.element_size()
    return 4


def _triton_elements(key, call: OpCall) -> tuple[int, int]:
    """(elements of the kernel's unit, exps) of a Triton launch; (0, 0) for helpers."""
    module, kernel = key
    a = call.args
    if module == "resample_skip" and kernel == "_fwd_rows_kernel":
        return call.outputs[0].numel(), 0
    if module == "resample_skip" and kernel in ("_fwd_pixels_kernel",):
        return call.outputs[0].numel(), 0
    if module == "resample_skip" and kernel == "_bwd_kernel":
        return a[0].numel(), 0
    if module == "pixel_cross_entropy" and kernel.startswith(("_fwd", "_bwd")):
        logits = a[1] if call.name.endswith("backward") else a[0]
        return logits.numel(), logits.numel()
    if module == "resample_cross_entropy" and kernel in (
        "_fwd_kernel",
        "_bwd_kernel",
        "_argmax_kernel",
    ):
        x = a[1] if call.name.endswith("backward") else a[0]
        if call.name == "resample_argmax":
            oh, ow = a[6], a[7]
        else:
            target = a[2] if call.name.endswith("backward") else a[1]
            oh, ow = target.shape[1:]
        pairs = x.shape[0] * x.shape[1] * oh * ow
        exps = 0 if call.name == "resample_argmax" else pairs
        return pairs, exps
    return 0, 0


_TRITON_COMPILED: dict = {}


def _triton_compile(kernel, args, kwargs):
    """Compile a recorded launch for sm_90 as Triton would specialize it on a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = _specialize(kernel, args, kwargs)
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    key = (kernel.fn.__qualname__, repr(signature), repr(constexprs), repr(attrs), repr(options))
    if key not in _TRITON_COMPILED:
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        _TRITON_COMPILED[key] = triton.compile(
            source, target=GPUTarget("cuda", 90, 32), options=options
        )
    return _TRITON_COMPILED[key]


_TENSOR_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.uint8: "u8",
    torch.bool: "i1",
}


def _specialize(kernel, args, kwargs):
    """signature, constexprs and attrs as Triton's launcher specializes these arguments (ints
    equal to 1 become constants; pointers and ints divisible by 16 are marked so)."""
    bound = kernel.signature.bind(
        *args, **{k: v for k, v in kwargs.items() if k in kernel.arg_names}
    )
    bound.apply_defaults()
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        param = kernel.params[i]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TENSOR_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "u1"
        elif isinstance(value, int):
            if value == 1:
                signature[name] = "constexpr"
                constexprs[(i,)] = 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: argument {name} = {value!r}")
    return signature, constexprs, attrs


# ------------------------------------------------------------------------------- rows

FUSED_LOSS_OPS = ("upsample_cross_entropy", "interpolate_cross_entropy")
ARGMAX_OPS = ("upsample_argmax", "interpolate_argmax")
STREAMING_OPS = ("upsample_skip", "interpolate_add", "pixel_cross_entropy")


def row_elements(calls: list[OpCall]) -> int:
    """The row's elements: outputs of the resampler, logits of the loss, (pixel, class) pairs
    of the fused heads."""
    first = calls[0]
    a = first.args
    if first.name == "resample_skip":
        return first.outputs[0].numel()
    if first.name == "pixel_cross_entropy":
        return a[0].numel()
    if first.name == "resample_argmax":
        return a[0].shape[0] * a[0].shape[1] * a[6] * a[7]
    if first.name == "resample_cross_entropy":
        return a[0].shape[0] * a[0].shape[1] * a[1].shape[1] * a[1].shape[2]
    raise KeyError(first.name)


@dataclasses.dataclass
class Row:
    op: str
    case: str
    shape: str
    mode: str
    dtype: str
    backend: str
    launches: list[Launch]
    elements: int
    min_bytes: int
    unfused: list[Launch] | None = None  # the fused heads: fcn_fast's unfused chain
    eager_bytes: int = 0  # the fused heads: eager PyTorch's byte floor (eager_bytes)

    def time(self, hw: Hardware, launches=None) -> float:
        return sum(max(launch.times(hw).values()) for launch in launches or self.launches)

    def main_launch(self, hw: Hardware) -> Launch:
        return max(self.launches, key=lambda launch: max(launch.times(hw).values()))

    def to_json(self) -> dict:
        out = {
            "op": self.op,
            "case": self.case,
            "shape": self.shape,
            "mode": self.mode,
            "dtype": self.dtype,
            "backend": self.backend,
            "elements": self.elements,
            "min_bytes": self.min_bytes,
            "instructions_per_element": round(
                sum(launch.instructions for launch in self.launches) / self.elements, 2
            ),
            "kernels": [],
        }
        for hw in HARDWARE:
            key = "h100" if hw is H100 else "h200"
            t = self.time(hw)
            main = self.main_launch(hw)
            times = main.times(hw)
            out[key] = {
                "predicted_ms": round(t * 1e3, 4),
                "predicted_pct_copy": round(100 * self.min_bytes / hw.copy_rate / t, 1),
                "bound": max(times, key=times.get),
            }
            if self.unfused:
                out[key]["unfused_predicted_ms"] = round(self.time(hw, self.unfused) * 1e3, 4)
        main = self.main_launch(H100)
        out.update(
            predicted_ms=out["h100"]["predicted_ms"],
            predicted_pct_copy=out["h100"]["predicted_pct_copy"],
            bound=out["h100"]["bound"],
            registers=main.facts.registers,
            warps_per_sm=main.resident_warps(H100),
            bytes_in_flight_per_sm=main.in_flight_per_thread * main.resident_warps(H100) * 32,
        )
        for launch in self.launches:
            f = launch.facts
            if not launch.elements:
                continue
            times = launch.times(H100)
            out["kernels"].append(
                {
                    "kernel": f.label,
                    "registers": f.registers,
                    "shared_bytes": f.shared + launch.dynamic_shared,
                    "spill_bytes": f.spills,
                    "threads_per_block": launch.threads_per_block,
                    "blocks": launch.blocks,
                    "warps_per_sm": launch.resident_warps(H100),
                    "unit": f.unit,
                    "loop_instructions": f.trip_instructions,
                    "loop_elements": f.trip_elements,
                    "loop_branches": f.branches,
                    "instructions_per_element": round(launch.instructions / launch.elements, 2),
                    "elements": launch.elements,
                    "exps": launch.exps,
                    "load_bytes_in_flight_per_thread": launch.in_flight_per_thread,
                    "bytes_in_flight_per_sm": launch.in_flight_per_thread
                    * launch.resident_warps(H100)
                    * 32,
                    "widest_load_bytes": f.widest_load,
                    "widest_store_bytes": f.widest_store,
                    "bytes": launch.bytes_read + launch.bytes_written,
                    "instructions_per_byte": round(
                        launch.instructions / max(launch.bytes_read + launch.bytes_written, 1), 2
                    ),
                    "predicted_ms": round(max(times.values()) * 1e3, 4),
                    "bound": max(times, key=times.get),
                    "times_ms": {k: round(v * 1e3, 4) for k, v in times.items()},
                }
            )
        return out


def _launches(calls, backend) -> list[Launch]:
    build = cuda_launches if backend == "cuda" else triton_launches
    return [launch for call in calls for launch in build(call)]


def model_rows(ops=None, backends=("cuda", "triton"), dtypes=None, cases=None) -> list[Row]:
    """Predictions for the default GPU sweep's op rows (model rows are whole networks: their
    convolutions are not fcn_fast's kernels, so they are left out)."""
    from fcn_fast.bench.cases import DTYPE_NAMES, OpCase, select

    os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
    rows = []
    for case, backend, dtype, mode in select("default", "cuda", ops=ops, cases=cases):
        if backend not in backends or not isinstance(case, OpCase):
            continue
        if dtypes and DTYPE_NAMES[dtype] not in dtypes:
            continue
        calls = record_calls(case, backend, dtype, mode)
        row = Row(
            op=case.op,
            case=case.label,
            shape=case.shape,
            mode=mode,
            dtype=DTYPE_NAMES[dtype],
            backend=backend,
            launches=_launches(calls, backend),
            elements=row_elements(calls),
            min_bytes=case.min_bytes(dtype, mode),
        )
        if "unfused" in case.extra_baselines:
            unfused_calls = record_calls(case, f"unfused:{backend}", dtype, mode)
            row.unfused = _launches(unfused_calls, backend) + _torch_argmax(case, unfused_calls)
            row.eager_bytes = eager_bytes(case, dtype, mode)
        rows.append(row)
    return rows


def _torch_argmax(case, calls) -> list[Launch]:
    """The unfused argmax reads the full-resolution logits with torch's kernel: modelled as
    its bytes at copy rate (no machine code of PyTorch's here)."""
    if case.op not in ARGMAX_OPS:
        return []
    z = calls[-1].outputs[0]
    facts = KernelFacts("torch argmax", 0, 0, 0, "", 0, 0.0, 0, 0, 0, 0, 0, 0, 0)
    labels = z.numel() // z.shape[1] * 8
    return [Launch("torch", facts, 256, 0, 0, 0, 0, z.numel() * z.element_size(), labels)]


# ------------------------------------------------------------------------------- targets


def auto_backend(op: str) -> str:
    """The GPU backend `auto` picks for a public op (fcn_fast/_backend.py's GPU_PREFERENCE)."""
    from fcn_fast._backend import GPU_PREFERENCE

    return GPU_PREFERENCE.get(op, ("cuda", "triton"))[0]


@dataclasses.dataclass
class Check:
    row: str
    target: str
    value: float
    limit: float
    higher_is_better: bool
    auto: bool  # the backend `auto` picks (the issue's targets are for it)

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def to_json(self) -> dict:
        return {
            "row": self.row,
            "target": self.target,
            "value": round(self.value, 3),
            "limit": self.limit,
            "passed": self.passed,
            "auto_backend": self.auto,
        }


def _key(row: Row) -> str:
    return f"{row.op}/{row.case} {row.mode} {row.dtype} {row.backend}"


STREAMING_KERNELS = {
    "resample_skip_forward_kernel",
    "resample_skip_backward_kernel",
    "loss_forward_runs_kernel",
    "loss_forward_staged_kernel",
    "loss_backward_runs_kernel",
    "loss_backward_staged_kernel",
    "_fwd_rows_kernel",
    "_fwd_pixels_kernel",
    "_fwd_classes_kernel",
    "_bwd_pixels_kernel",
    "_bwd_classes_kernel",
    "_bwd_kernel",
}


# Rows held to within 10 points (% of copy) of their op's main row: channels_last logits of
# 150 classes, odd widths, narrow labels.
VARIANT_OF = {"ade20k-cl": "ade20k", "odd-1025": "large"}


def _main_case(case: str) -> str | None:
    if case.endswith("-u8"):  # uint8 labels: the bench's "large-u8", "quick-u8"
        return case[: -len("-u8")]
    return VARIANT_OF.get(case)


def checks(rows: list[Row], hw: Hardware = H100) -> list[Check]:
    """The issue's targets, row by row, on the model's H100 predictions."""
    out = []
    by_key = {(r.op, r.case, r.mode, r.dtype, r.backend): r for r in rows}
    for row in rows:
        main = by_key.get((row.op, _main_case(row.case), row.mode, row.dtype, row.backend))
        if main is None or not row.min_bytes or not main.min_bytes:
            continue
        auto = row.backend == auto_backend(row.op)
        times = main.main_launch(hw).times(hw)
        if max(times, key=times.get) == "memory":
            pct = 100 * row.min_bytes / hw.copy_rate / row.time(hw)
            main_pct = 100 * main.min_bytes / hw.copy_rate / main.time(hw)
            out.append(
                Check(_key(row), f"% of copy minus {main.case}'s", pct - main_pct, -10, True, auto)
            )
        else:
            # An issue- or exp-bound main row (the fused heads): fewer bytes (uint8 labels)
            # lower its % of copy without slowing it, so hold the variant's time per element
            # to within 10% of the main row's instead.
            ratio = (row.time(hw) / row.elements) / (main.time(hw) / main.elements)
            label = f"time per element over {main.case}'s"
            out.append(Check(_key(row), label, ratio, 1.10, False, auto))
    for row in rows:
        key, auto = _key(row), row.backend == auto_backend(row.op)
        if row.op in STREAMING_OPS and row.case.startswith("large"):
            for launch in row.launches:
                if launch.facts.label.split("<")[0] not in STREAMING_KERNELS or not launch.elements:
                    continue
                times = launch.times(hw)
                t = max(times.values())
                moved = launch.bytes_read + launch.bytes_written
                name = launch.facts.label.split("<")[0]
                out.append(
                    Check(key, f"{name}: % of copy", 100 * moved / hw.copy_rate / t, 85, True, auto)
                )
                # Little's law concerns reads: a kernel that mostly writes (an upsampling
                # without skip reads x, 1/64 of what it stores) needs none in flight.
                if launch.bytes_read * 4 >= moved:
                    in_flight = launch.in_flight_per_thread * launch.resident_warps(hw) * 32
                    out.append(
                        Check(key, f"{name}: KB in flight per SM", in_flight / 1024, 32, True, auto)
                    )
                out.append(
                    Check(
                        key,
                        f"{name}: instructions per byte",
                        launch.instructions / moved,
                        4.4,
                        False,
                        auto,
                    )
                )
        if row.op in FUSED_LOSS_OPS:
            per_pair = sum(launch.instructions for launch in row.launches) / row.elements
            out.append(
                Check(key, "fwd+bwd instructions per (pixel, class)", per_pair, 30, False, auto)
            )
            t = row.time(hw)
            if row.unfused:
                unfused = row.time(hw, row.unfused)
                need = 3 if row.dtype in ("bf16", "fp16") else 5
                out.append(
                    Check(key, "x faster than the unfused chain", unfused / t, need, True, auto)
                )
                floor = row.eager_bytes
                out.append(
                    Check(
                        key,
                        "x faster than eager (its byte floor)",
                        floor / hw.copy_rate / t,
                        10,
                        True,
                        auto,
                    )
                )
            forward = [
                launch
                for launch in row.launches
                if launch.facts.label.split("<")[0] in ("fused_forward_kernel", "_fwd_kernel")
            ]
            for launch in forward:
                times = launch.times(hw)
                roof = max(times["memory"], times["exp"])
                out.append(
                    Check(
                        key,
                        "forward: time over its exp/memory roof",
                        max(times.values()) / roof,
                        1.25,
                        False,
                        auto,
                    )
                )
        if row.op in ARGMAX_OPS:
            per_pair = sum(launch.instructions for launch in row.launches) / row.elements
            out.append(Check(key, "instructions per (pixel, class)", per_pair, 15, False, auto))
            if row.unfused:
                out.append(
                    Check(
                        key,
                        "x faster than upsample + argmax",
                        row.time(hw, row.unfused) / row.time(hw),
                        5,
                        True,
                        auto,
                    )
                )
    return out


# ------------------------------------------------------------------------------- report

PREDICTED = "predicted by the static sm_90 model (fcn_fast.bench.model), not measured"


def environment() -> dict:
    import platform

    meta = {
        "note": PREDICTED,
        "hardware": [dataclasses.asdict(hw) for hw in HARDWARE],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    nvcc = sass._tool("nvcc")
    if nvcc:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        meta["nvcc"] = version.strip().splitlines()[-1]
    try:
        meta["git"] = subprocess.run(
            ["git", "-C", sass.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        meta["git"] = None
    return meta


def markdown(rows: list[Row], results: list[Check], meta: dict) -> str:
    lines = [
        f"# Static sm_90 model: {PREDICTED}",
        "",
        f"git {meta.get('git')}, torch {meta.get('torch')}, triton {meta.get('triton')}, "
        f"{meta.get('nvcc', 'nvcc ?')}. H100 SXM: 132 SMs x 128 thread-instructions/clock at "
        f"1.755 GHz, 16 MUFU.EX2/clock/SM, copy 3.0 TB/s (3.35 peak), 1.8 us effective latency; "
        f"H200: 1.98 GHz, copy 4.3 TB/s (4.8 peak). Method and limits: docs/design.md 5.",
        "",
        "| op | case | mode | dtype | backend | H100 ms | % copy | bound | H200 ms | instr/elem "
        "| regs | warps/SM | KB in flight/SM | unfused H100 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        j = row.to_json()
        unfused = j["h100"].get("unfused_predicted_ms")
        unfused = "" if unfused is None else f"{unfused:.3f}"
        lines.append(
            f"| {row.op} | {row.case} | {row.mode} | {row.dtype} | {row.backend} "
            f"| {j['h100']['predicted_ms']:.3f} | {j['h100']['predicted_pct_copy']:.1f} "
            f"| {j['h100']['bound']} | {j['h200']['predicted_ms']:.3f} "
            f"| {j['instructions_per_element']:.1f} | {j['registers']} | {j['warps_per_sm']} "
            f"| {j['bytes_in_flight_per_sm'] / 1024:.1f} | {unfused} |"
        )
    lines += [
        "",
        "## Kernels (H100)",
        "",
        "| row | kernel | regs | warps/SM | loop instr / elements | branches | instr/elem "
        "| instr/byte | B in flight/thread | ms | bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for k in row.to_json()["kernels"]:
            lines.append(
                f"| {_key(row)} | `{k['kernel']}` | {k['registers']} | {k['warps_per_sm']} "
                f"| {k['loop_instructions']} / {k['loop_elements']:g} ({k['unit']}) "
                f"| {k['loop_branches']} | {k['instructions_per_element']:.1f} "
                f"| {k['instructions_per_byte']:.2f} | {k['load_bytes_in_flight_per_thread']} "
                f"| {k['predicted_ms']:.3f} | {k['bound']} |"
            )
    lines += [
        "",
        "## Targets (issue 24), H100 predictions",
        "",
        "| row | target | value | limit | met | auto's backend |",
        "|---|---|---|---|---|---|",
    ]
    for c in results:
        sign = ">=" if c.higher_is_better else "<="
        lines.append(
            f"| {c.row} | {c.target} | {c.value:.2f} | {sign} {c.limit:g} "
            f"| {'yes' if c.passed else '**no**'} | {'yes' if c.auto else ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv, prog) -> int:
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(
        prog=f"{prog} model",
        description="Predict the GPU sweep's times from the kernels' sm_90 machine code, "
        "without a GPU (nvcc, cuobjdump and Triton needed). " + PREDICTED + ".",
    )
    p.add_argument("--arch", default="sm_90", choices=("sm_90",))
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--ops", action="append", help="only these ops (comma-separated)")
    p.add_argument("--backends", default="cuda,triton")
    p.add_argument("--dtypes", help="only these dtypes: fp32,bf16")
    args = p.parse_args(argv)
    missing = sass.missing_tools()
    if missing:
        print(f"{prog} model: needs {', '.join(missing)} (not found)", file=sys.stderr)
        return 2
    ops = [o for v in args.ops or () for o in v.split(",")] or None
    rows = model_rows(
        ops=ops,
        backends=tuple(args.backends.split(",")),
        dtypes=args.dtypes.split(",") if args.dtypes else None,
    )
    results = checks(rows)
    meta = environment()
    text = markdown(rows, results, meta)
    print(text)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {
                    "meta": meta,
                    "rows": [r.to_json() for r in rows],
                    "targets": [c.to_json() for c in results],
                },
                file,
                indent=1,
            )
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(text)
    return 0

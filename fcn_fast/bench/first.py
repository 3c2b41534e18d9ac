"""The first three minutes of a GPU run (issue 25): what benchmarks/gpu_first.sh measures.

    python -m fcn_fast.bench first bandwidth  --json F   the streaming kernels against a copy
    python -m fcn_fast.bench first fused      --json F   the fused heads: bound by work or bytes?
    python -m fcn_fast.bench first downsample --json F   strong downsampling backward, bitwise
    python -m fcn_fast.bench first tiny       --json F   one small call of every kernel
                                                          (what compute-sanitizer runs)
    python -m fcn_fast.bench first profile               the loss and fused forwards (what ncu
                                                          profiles, between profiler start/stop)
    python -m fcn_fast.bench first summary DIR           the markdown summary of gpu_first.sh's DIR

Options: --device cuda|cpu (default cuda when one is visible), --size large|tiny (default large
on cuda, tiny on cpu), --backends, --dtypes. On a CPU the same code runs at tiny sizes with
the cpu backend (the reference stands in as a second one; triton too under TRITON_INTERPRET=1):
CI runs it (gpu_first.sh --dry-run) so that a typo cannot waste a lease. Timing: CUDA
events with L2 flushed before each round (timing.measure), median of 10 rounds after 3
warm-up ones (3 after 1 on a CPU). Numerics are checked against the plain-PyTorch reference
before anything is timed. Exit status: 0 when every row passed its checks, 1 when one
failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import math
import os
import re
import sys
from collections.abc import Callable

import torch

import fcn_fast
from fcn_fast import _backend
from fcn_fast.bench import cases, timing
from fcn_fast.bench.cases import DTYPE_NAMES, IGNORE_INDEX
from fcn_fast.reference import argmax_reference

NEVER = frozenset()  # a case built here is in no sweep
ROUNDS = {"cuda": (10, 3), "cpu": (3, 1)}  # (timed rounds, warm-up rounds)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------- common


def kernel_backends(device: torch.device) -> list[str]:
    """The kernel backends that run here: cuda and triton on a GPU; cpu (and triton, when
    interpreted) on a CPU."""
    names = ("cuda", "triton") if device.type == "cuda" else ("cpu", "triton")
    return [b for b in names if _backend.can_run(b, device) is None]


def median_ms(fn, device: torch.device, flush: bool = True) -> float:
    rounds, warmup = ROUNDS[device.type]
    return timing.median(timing.measure(fn, device, rounds, warmup, flush=flush)) * 1e3


def copy_ms(nbytes: int, device: torch.device) -> float:
    """A device copy moving `nbytes` in all (half read, half written), timed as the kernels."""
    half = max(nbytes // 2, 1)
    src = torch.ones(half, dtype=torch.uint8, device=device)
    dst = torch.zeros(half, dtype=torch.uint8, device=device)
    return median_ms(lambda: dst.copy_(src), device)


def upcast(inputs: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}


def retained_backward(out: torch.Tensor, wrt: list[torch.Tensor], dtype: torch.dtype, seed: int):
    """A callable running only the backward of `out` (its graph kept), with the gradient the
    benchmark cases use (cases._grad_like: fixed seed, rounded to the case dtype)."""
    grad = cases._grad_like(out, dtype, seed)
    return lambda: torch.autograd.grad(out, wrt, grad, retain_graph=True)


def environment(device: torch.device, size: str) -> dict:
    from fcn_fast.bench.runner import _git_commit

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": size,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "git_commit": _git_commit(),
        "backends": kernel_backends(device),
        "timing": "median of {} rounds after {} warm-up; ".format(*ROUNDS[device.type])
        + ("CUDA events, L2 flushed before each round" if device.type == "cuda" else "CPU"),
    }


class Sink:
    """Rows written to JSON after each one (a step cut short by its time limit keeps them)."""

    def __init__(self, path: str | None, meta: dict):
        self.path, self.meta, self.rows = path, meta, []

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        print(_line(row), file=sys.stderr, flush=True)
        if self.path:
            with open(self.path, "w") as f:
                json.dump({"meta": self.meta, "results": self.rows}, f, indent=1)
        return row

    def failed(self) -> int:
        return sum(1 for r in self.rows if r.get("status") != "ok")


def _line(row: dict) -> str:
    keys = ("op", "variant", "case", "layout", "mode", "dtype", "backend")
    label = " ".join(str(row[k]) for k in keys if k in row)
    figures = ", ".join(
        f"{k} {_fmt(row[k])}"
        for k in ("ms", "fused_ms", "unfused_ms", "pct_of_copy", "max_rel_err")
        if row.get(k) is not None
    )
    return f"{label}: {row.get('status')} {figures} {row.get('reason', '')}".rstrip()


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _error(row: dict, error: Exception) -> dict:
    row.update(status="failed", reason=f"raised {type(error).__name__}: {error}"[:500])
    return row


def _check(row: dict, ok: bool, err: float, detail: str) -> bool:
    row["max_rel_err"] = err
    if not ok:
        row.update(status="failed", reason=f"numerics: {detail}")
    return ok


# ------------------------------------------------------------------------------- bandwidth


def streaming_cases(size: str) -> list[cases.OpCase]:
    """The upsample without skip, interpolate_add with skip and the loss: the `large` cases of
    the GPU sweep, or tiny ones of the same kinds."""
    if size == "large":
        ops = ("upsample_skip", "interpolate_add", "pixel_cross_entropy")
        return [registered(op, "large") for op in ops]
    return [
        cases.upsample_skip_case("tiny", 2, 3, 9, 8, crop=5, out=60, sizes=NEVER),
        cases.interpolate_add_case("tiny", 2, 3, 8, 8, 33, 35, sizes=NEVER),
        cases.pixel_cross_entropy_case("tiny", 2, 5, 17, 19, sizes=NEVER),
    ]


def registered(op: str, label: str) -> cases.OpCase:
    return next(c for c in cases.CASES if c.op == op and c.label == label and "cuda" in c.devices)


def bandwidth(device, size, backends, dtypes, sink: Sink) -> None:
    """Each streaming kernel's forward, and its backward alone (the graph kept), against a copy
    of the fewest bytes that part must move."""
    for case in streaming_cases(size):
        for dtype in dtypes:
            inputs = case.inputs(device, dtype)
            with _exact():
                oracle = case.step(upcast(inputs), "reference", "fwdbwd", dtype)()
            fwd_bytes, bwd_bytes = case.bytes_fn(torch.empty((), dtype=dtype).element_size())
            for backend in backends:
                for part, nbytes in (("fwd", fwd_bytes), ("bwd", bwd_bytes)):
                    row = {"op": case.op, "case": case.label, "shape": case.shape, "mode": part}
                    row.update(dtype=DTYPE_NAMES[dtype], backend=backend, bytes=nbytes)
                    try:
                        _bandwidth_row(row, case, inputs, oracle, backend, dtype, part, device)
                    except Exception as error:
                        _error(row, error)
                    sink.add(row)
            del inputs, oracle


def _bandwidth_row(row, case, inputs, oracle, backend, dtype, part, device):
    if part == "fwd":
        fn = case.step(inputs, backend, "fwd", dtype)
        want = oracle[:1]
    else:
        leaves = {k: v.detach().requires_grad_(k in case.grads) for k, v in inputs.items()}
        out = case.call(**leaves, backend=backend)
        fn = retained_backward(out, [leaves[k] for k in case.grads], dtype, case.seed + 1)
        want = oracle[1:]
    with _exact():
        got = fn()
    if not _check(row, *case.check(tuple(got), want, dtype)):
        return
    del got
    row["ms"] = median_ms(fn, device)
    row["copy_ms"] = copy_ms(row["bytes"], device)
    row["gbps"] = row["bytes"] / row["ms"] / 1e6
    row["pct_of_copy"] = 100.0 * row["copy_ms"] / row["ms"]
    row["status"] = "ok"


@contextlib.contextmanager
def _exact():
    from fcn_fast.bench.runner import exact_fp32

    with exact_fp32(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        yield


# ------------------------------------------------------------------------------- fused heads

# The FCN-8s final head of the GPU sweep's `large` fused cases (N, C, coarse, factor, crop,
# out), and a tiny one: coarse (N, C, coarse²) upsampled x factor, cropped to out².
HEADS = {"large": (16, 21, 132, 8, 31, 1024), "tiny": (2, 6, 9, 8, 5, 60)}


def head_variants(size: str) -> list[tuple[str, int, int, bool, torch.dtype]]:
    """(variant, N, C, flush L2, label dtype): the head, then half its classes, then twice its
    pixels, then a batch small enough that inputs and outputs fit in L2, timed flushed and
    resident; then the head with uint8 labels (the loss only): 7 of its forward's 12 bytes a
    pixel fewer, and the label each strip row waits on before its target logit (design.md
    5.1) a narrower load."""
    n, c = HEADS[size][:2]
    small = 2 if size == "large" else 1
    return [
        ("base", n, c, True, torch.int64),
        ("C/2", n, c // 2, True, torch.int64),
        ("2x pixels", 2 * n, c, True, torch.int64),
        (f"N{small}", small, c, True, torch.int64),
        (f"N{small} in L2", small, c, False, torch.int64),
        ("uint8 labels", n, c, True, torch.uint8),
    ]


def fused(device, size, backends, dtypes, sink: Sink) -> None:
    """Forward, backward and argmax of the fused head beside fcn_fast's unfused chain on the
    same backend, per variant. A compute-bound (issue-bound) kernel's time follows the work
    N·C·H·W (C/2: about half) and not the bytes (the targets dominate them: C/2 leaves them),
    and does not drop when its inputs sit in L2."""
    _, _, coarse, factor, crop, out = HEADS[size]
    for variant, n, c, flush, label_dtype in head_variants(size):
        loss = cases.upsample_cross_entropy_case(
            variant, n, c, coarse, factor, crop=crop, out=out, sizes=NEVER,
            label_dtype=label_dtype,
        )  # fmt: skip
        argmax = cases.upsample_argmax_case(
            variant, n, c, coarse, factor, crop=crop, out=out, sizes=NEVER
        )
        for dtype in dtypes:
            inputs = loss.inputs(device, dtype)
            x = {"coarse": inputs["coarse"]}
            es = torch.empty((), dtype=dtype).element_size()
            with _exact():
                oracle = loss.step(upcast(inputs), "reference", "fwdbwd", dtype)()
                labels = argmax.step(upcast(x), "reference", "fwd", dtype)()
            checks = {
                "fwd": (loss, oracle[:1], loss.bytes_fn(es)[0]),
                "bwd": (loss, oracle[1:], loss.bytes_fn(es)[1]),
                "argmax": (argmax, labels, argmax.bytes_fn(es)[0]),
            }
            if label_dtype != torch.int64:
                del checks["argmax"]  # the argmax reads no labels
            for backend in backends:
                steps = _head_steps(loss, argmax, inputs, dtype, backend, (factor, crop, out))
                for mode, (case, want, nbytes) in checks.items():
                    row = {"op": case.op, "variant": variant, "n": n, "c": c, "mode": mode}
                    row.update(dtype=DTYPE_NAMES[dtype], backend=backend, flush=flush)
                    row.update(work=n * c * out * out, bytes=nbytes)
                    try:
                        _fused_row(row, case, want, *steps[mode], dtype, device)
                    except Exception as error:
                        _error(row, error)
                    sink.add(row)
            del inputs, oracle, labels


def _head_steps(loss, argmax, inputs, dtype, backend, geometry):
    """Per mode, (fused, unfused): callables that build the step to time (a backward builds
    its forward's graph first). Unfused: upsample_skip, then pixel_cross_entropy or torch's
    argmax, on the same backend."""
    factor, crop, out = geometry
    x, target = inputs["coarse"], inputs["target"]

    def logits(z):
        return fcn_fast.upsample_skip(
            z, factor=factor, crop=crop, out_size=(out, out), backend=backend
        )

    def chain(z):
        return fcn_fast.pixel_cross_entropy(
            logits(z), target, ignore_index=IGNORE_INDEX, backend=backend
        )

    def backward_of(loss_of):
        def build():
            leaf = x.detach().requires_grad_()
            return retained_backward(loss_of(leaf), [leaf], dtype, loss.seed + 1)

        return build

    return {
        "fwd": (lambda: loss.step(inputs, backend, "fwd", dtype), lambda: lambda: (chain(x),)),
        "bwd": (
            backward_of(lambda z: loss.call(z, target, backend=backend)),
            backward_of(chain),
        ),
        "argmax": (
            lambda: argmax.step({"coarse": x}, backend, "fwd", dtype),
            lambda: lambda: (argmax_reference(logits(x)),),
        ),
    }


def _fused_row(row, case, want, fused_step, unfused_step, dtype, device):
    fused = fused_step()
    with _exact():
        got = fused()
    if not _check(row, *case.check(tuple(got), want, dtype)):
        return
    del got
    row["fused_ms"] = median_ms(fused, device, row["flush"])
    row["ns_per_work"] = row["fused_ms"] * 1e6 / row["work"]
    row["gbps"] = row["bytes"] / row["fused_ms"] / 1e6
    row["status"] = "ok"
    del fused
    row["unfused_ms"] = median_ms(unfused_step(), device, row["flush"])


def fused_verdicts(rows: list[dict]) -> list[dict]:
    """Per (backend, dtype, mode): how the fused time moved from `base` to `C/2` and to
    `2x pixels` against the work and the bytes, and how much it dropped with its inputs in L2.
    `follows`: whichever of work and bytes the C/2 time ratio is closer to (in log)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("fused_ms")]
    by = {(r["backend"], r["dtype"], r["mode"], r["variant"]): r for r in ok}
    verdicts = []
    for backend, dtype, mode in dict.fromkeys((r["backend"], r["dtype"], r["mode"]) for r in ok):
        base = by.get((backend, dtype, mode, "base"))
        if base is None:
            continue
        v = {"backend": backend, "dtype": dtype, "mode": mode}
        for name in ("C/2", "2x pixels", "uint8 labels"):
            r = by.get((backend, dtype, mode, name))
            if r is not None:
                v[name] = {
                    "time": r["fused_ms"] / base["fused_ms"],
                    "work": r["work"] / base["work"],
                    "bytes": r["bytes"] / base["bytes"],
                }
        half = v.get("C/2")
        if half:
            to_work = abs(math.log(half["time"] / half["work"]))
            to_bytes = abs(math.log(half["time"] / half["bytes"]))
            v["follows"] = "work" if to_work < to_bytes else "bytes"
        small = [r for k, r in by.items() if k[:3] == (backend, dtype, mode) and k[3][:1] == "N"]
        dram = next((r for r in small if r["flush"]), None)
        l2 = next((r for r in small if not r["flush"]), None)
        if dram and l2:
            v["l2_over_dram"] = l2["fused_ms"] / dram["fused_ms"]
        verdicts.append(v)
    return verdicts


# ------------------------------------------------------------------------------- downsampling


def downsample(device, size, backends, dtypes, sink: Sink) -> None:
    """The backward where most input rows are read by no output row (downsampling by more
    than a band; the CUDA backward once left their gradient unzeroed): interpolate_add
    1x2x512x40 -> 7x40 and interpolate_cross_entropy 1x3x96x8 -> 2x8, both layouts. Per
    backend: the gradient twice (bitwise equal, no NaN), against the float64 reference, and
    against every other backend."""
    gen = torch.Generator().manual_seed(25)
    x_add = torch.randn(1, 2, 512, 40, generator=gen, dtype=torch.float64)
    g_add = torch.randn(1, 2, 7, 40, generator=gen, dtype=torch.float64)
    x_ce = torch.randn(1, 3, 96, 8, generator=gen, dtype=torch.float64).mul_(3)
    t_ce = torch.randint(0, 3, (1, 2, 8), generator=gen)

    def add(x, backend):
        (gx,) = torch.autograd.grad(
            fcn_fast.interpolate_add(x, size=(7, 40), backend=backend), x, g_add.to(x)
        )
        return gx

    def ce(x, backend):
        loss = fcn_fast.interpolate_cross_entropy(
            x, t_ce.to(x.device), label_smoothing=0.1, backend=backend
        )
        return torch.autograd.grad(loss, x)[0]

    for name, x64, grad_of in (("interpolate_add 512x40->7x40", x_add, add), (
        "interpolate_cross_entropy 96x8->2x8", x_ce, ce)):  # fmt: skip
        expected = grad_of(x64.clone().requires_grad_(), "reference")
        for layout in ("contiguous", "channels_last"):
            grads = {}
            for backend in backends:
                row = {"case": name, "layout": layout, "backend": backend, "status": "ok"}
                try:
                    grads[backend] = _downsample_row(row, x64, grad_of, expected, layout, device)
                except Exception as error:
                    _error(row, error)
                for other, g in grads.items():
                    if other != backend and backend in grads:
                        row[f"vs_{other}"] = _rel(grads[backend], g)
                sink.add(row)


def _downsample_row(row, x64, grad_of, expected, layout, device):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x64.float().to(device).contiguous(memory_format=fmt)
    first = grad_of(x.clone().requires_grad_(), row["backend"])
    second = grad_of(x.clone().requires_grad_(), row["backend"])
    row["bitwise_repeat"] = bool(torch.equal(first, second))
    row["nan"] = bool(torch.isnan(first).any())
    row["max_rel_err"] = _rel(first, expected)
    # float32 sums of up to 74 rows: PyTorch's own backward is 2.6e-5 off here; an unzeroed
    # or unwritten band is off by the gradient itself.
    if row["nan"] or not row["bitwise_repeat"] or not row["max_rel_err"] <= 1e-4:
        row.update(status="failed", reason="NaN, a repeat that differs, or error > 1e-4")
    return first


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ------------------------------------------------------------------------------- tiny calls


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values at storage offset 1: no 16-byte alignment for vector loads."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    return view


def tiny_calls(device: torch.device) -> list[tuple[str, Callable]]:
    """(name, call of a backend): one small call of every kernel, forward and backward, in
    the layouts and alignments that take their other paths: channels_last (the loss's staged
    chunks), storage offset 1, odd widths, bf16, the fused heads, and reductions over several
    blocks (the last block sums the partials). The same values on any device."""
    gen = torch.Generator().manual_seed(0)  # drawn on the CPU

    def randn(*shape):
        return torch.randn(shape, generator=gen).to(device)

    def randint(high, *shape):
        return torch.randint(0, high, shape, generator=gen).to(device)

    def with_grads(fn, *xs):
        """fn(*xs, backend) and its gradients, for an output gradient of a fixed seed."""

        def call(backend):
            leaves = [x.detach().requires_grad_() for x in xs]
            out = fn(*leaves, backend)
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            grad = grad.to(device, out.dtype) if out.dim() else None
            return (out.detach(), *torch.autograd.grad(out, leaves, grad))

        return call

    def forward(fn, *xs):
        return lambda backend: fn(*xs, backend)

    coarse, skip = randn(2, 3, 5, 7), randn(2, 3, 13, 17)
    x, skip2 = randn(2, 3, 7, 9), randn(2, 3, 15, 19)
    logits, target = randn(2, 5, 37, 41).mul_(3), randint(5, 2, 37, 41)
    target[:, ::7] = IGNORE_INDEX
    weight = torch.rand(5, generator=gen).to(device)
    head, head_target = randn(2, 5, 5, 6).mul_(3), randint(5, 2, 30, 33)
    wide, wide_target = randn(1, 300, 5, 7), randint(300, 1, 5, 7)
    low, low_target = randn(1, 5, 96, 8), randint(5, 1, 2, 8)
    tall = randn(1, 2, 40, 9)

    def upsample(c, s, b):
        return fcn_fast.upsample_skip(
            c, s, factor=2, crop=1, skip_crop=2, out_size=(9, 13), backend=b
        )

    def interpolate(x, s, b):
        return fcn_fast.interpolate_add(x, s, size=(15, 19), align_corners=True, backend=b)

    def loss(z, b, reduction="mean"):
        return fcn_fast.pixel_cross_entropy(
            z, target, weight, IGNORE_INDEX, reduction, label_smoothing=0.1, backend=b
        )

    def head_loss(z, b):
        return fcn_fast.upsample_cross_entropy(z, head_target, factor=8, crop=3, backend=b)

    def head_labels(z, b):
        return fcn_fast.upsample_argmax(
            z, factor=8, crop=3, out_size=(30, 33), out_dtype=torch.uint8,
            return_confidence=True, backend=b,
        )  # fmt: skip

    calls = []
    for kind in ("contiguous", "channels_last", "offset1"):
        c, s, xx, s2, lg, hd = (_layout(t, kind) for t in (coarse, skip, x, skip2, logits, head))
        calls += [
            (f"upsample_skip {kind} odd widths", with_grads(upsample, c, s)),
            (f"interpolate_add {kind} align_corners", with_grads(interpolate, xx, s2)),
            (f"pixel_cross_entropy {kind} mean over blocks", with_grads(loss, lg)),
            (f"upsample_cross_entropy {kind}", with_grads(head_loss, hd)),
            (f"upsample_argmax {kind} uint8 + confidence", forward(head_labels, hd)),
        ]
    return calls + [
        (
            "interpolate_add downsampling (bands no output reads)",
            with_grads(lambda t, b: fcn_fast.interpolate_add(t, size=(5, 9), backend=b), tall),
        ),
        (
            "upsample_skip bf16 odd widths",
            with_grads(
                lambda c, b: fcn_fast.upsample_skip(c, factor=2, out_size=(9, 13), backend=b),
                coarse.bfloat16(),
            ),
        ),
        ("pixel_cross_entropy sum", with_grads(lambda z, b: loss(z, b, "sum"), logits)),
        ("pixel_cross_entropy none", forward(lambda z, b: loss(z, b, "none"), logits)),
        (
            "pixel_cross_entropy 300 classes channels_last bf16",
            with_grads(
                lambda z, b: fcn_fast.pixel_cross_entropy(z, wide_target, backend=b),
                wide.bfloat16().contiguous(memory_format=torch.channels_last),
            ),
        ),
        (
            "interpolate_cross_entropy 96x8 -> 2x8",
            with_grads(
                lambda z, b: fcn_fast.interpolate_cross_entropy(z, low_target, backend=b), low
            ),
        ),
        (
            "interpolate_argmax",
            forward(lambda z, b: fcn_fast.interpolate_argmax(z, size=(17, 19), backend=b), head),
        ),
    ]


def _layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return _misaligned(t) if kind == "offset1" else t


def tiny(device, size, backends, dtypes, sink: Sink) -> None:
    """Every tiny call on each backend against the reference backend on the CPU (the same
    inputs: under compute-sanitizer, only the kernels under test and copies run on the GPU)."""
    cpu = torch.device("cpu")
    for (name, call), (_, reference) in zip(tiny_calls(device), tiny_calls(cpu), strict=True):
        want = _flat(reference("reference"))
        for backend in backends:
            row = {"case": name, "backend": backend, "status": "ok"}
            try:
                got = _flat(call(backend))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # an asynchronous fault is this call's
                _check(row, *_compare_tiny(got, want))
            except Exception as error:
                _error(row, error)
            sink.add(row)


def _flat(result):
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _compare_tiny(got, want) -> tuple[bool, float, str]:
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g = g.detach().cpu()
        if tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            return False, math.inf, f"result {i}: {g.dtype} {tuple(g.shape)}, reference {w.dtype}"
        if not g.is_floating_point():  # labels: near ties may go either way
            differ = float((g != w).float().mean())
            if differ > 0.01:
                return False, differ, f"result {i}: {differ:.3g} of labels differ"
            continue
        tol = 1e-4 if g.dtype == torch.float32 else 2e-2
        err = _rel(g, w)
        if not err <= tol:
            return False, err, f"result {i}: max rel err {err:.3g} > {tol:g}"
        worst = max(worst, err)
    return True, worst, ""


# ------------------------------------------------------------------------------- profile


def profile(device, size, backends, dtypes, sink: Sink) -> None:
    """The loss forward and the fused head's forward at `size`, once each per backend after a
    warm-up, between torch.cuda.profiler start and stop (ncu --profile-from-start off)."""
    pce = streaming_cases(size)[2]
    n, c, coarse, factor, crop, out = HEADS[size]
    head = cases.upsample_cross_entropy_case(
        "profile", n, c, coarse, factor, crop=crop, out=out, sizes=NEVER
    )
    steps = []
    for case in (pce, head):
        inputs = case.inputs(device, torch.float32)
        for backend in backends:
            step = case.step(inputs, backend, "fwd", torch.float32)
            steps.append((f"{case.op} fwd {backend}", step))
    for _, step in steps:
        step()  # compile, load, allocate: outside the profiled range
    timing.sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.profiler.start()
    for name, step in steps:
        step()
        timing.sync(device)
        sink.add({"case": name, "status": "ok"})
    if cuda:
        torch.cuda.profiler.stop()


# ------------------------------------------------------------------------------- summary


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) if v is not None else "-" for v in r) + " |" for r in rows]
    return lines


def summary(directory: str) -> str:
    """gpu_first.sh's summary: each step's exit status and time, then the figures of each."""
    lines = ["# gpu_first.sh summary", ""]
    env = os.path.join(directory, "environment.txt")
    if os.path.exists(env):
        with open(env) as f:
            lines += ["```", f.read().strip(), "```", ""]
    steps = []
    with contextlib.suppress(OSError), open(os.path.join(directory, "steps.tsv")) as f:
        steps = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    lines += _table(["step", "exit", "seconds", "limit s"], steps) + [""]
    lines += ["exit 124: cut at its time limit; the rows measured before are kept.", ""]

    data = _load(os.path.join(directory, "bandwidth.json"))
    if data:
        lines += ["## Streaming kernels against a same-size copy", ""]
        lines += _table(
            ["op", "part", "dtype", "backend", "ms", "GB/s", "% copy", "status"],
            [
                [r["op"], r["mode"], r["dtype"], r["backend"], r.get("ms"), r.get("gbps"),
                 r.get("pct_of_copy"), r["status"] if r["status"] == "ok" else r.get("reason")]
                for r in data["results"]
            ],
        ) + [""]  # fmt: skip
    data = _load(os.path.join(directory, "fused.json"))
    if data:
        lines += ["## Fused heads beside the unfused chain", ""]
        lines += _table(
            ["variant", "mode", "dtype", "backend", "fused ms", "unfused ms", "ns/(px·class)",
             "GB/s", "status"],
            [
                [r["variant"], r["mode"], r["dtype"], r["backend"], r.get("fused_ms"),
                 r.get("unfused_ms"), r.get("ns_per_work"), r.get("gbps"),
                 r["status"] if r["status"] == "ok" else r.get("reason")]
                for r in data["results"]
            ],
        ) + [""]  # fmt: skip
        verdicts = fused_verdicts(data["results"])
        lines += _table(
            ["backend", "dtype", "mode", "C/2: time / work / bytes", "2x px: time / work / bytes",
             "follows", "L2 / DRAM time", "uint8 labels: time / work / bytes"],
            [
                [v["backend"], v["dtype"], v["mode"], _ratios(v.get("C/2")),
                 _ratios(v.get("2x pixels")), v.get("follows"), v.get("l2_over_dram"),
                 _ratios(v.get("uint8 labels"))]
                for v in verdicts
            ],
        ) + [""]  # fmt: skip
    data = _load(os.path.join(directory, "downsample.json"))
    if data:
        lines += ["## Strong downsampling backward", ""]
        others = sorted({k for r in data["results"] for k in r if k.startswith("vs_")})
        lines += _table(
            ["case", "layout", "backend", "repeat bitwise", "NaN", "err vs reference", *others,
             "status"],
            [
                [r["case"], r["layout"], r["backend"], r.get("bitwise_repeat"), r.get("nan"),
                 r.get("max_rel_err"), *(r.get(k) for k in others),
                 r["status"] if r["status"] == "ok" else r.get("reason")]
                for r in data["results"]
            ],
        ) + [""]  # fmt: skip
    data = _load(os.path.join(directory, "tiny.json"))
    if data:
        failed = [r for r in data["results"] if r["status"] != "ok"]
        lines += [f"## Tiny calls: {len(data['results']) - len(failed)} ok, {len(failed)} failed"]
        lines += [f"* {r['case']} {r['backend']}: {r.get('reason')}" for r in failed] + [""]
    for tool in ("racecheck", "memcheck"):
        log = os.path.join(directory, f"{tool}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                found = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: .*", f.read())
            lines += [f"* compute-sanitizer {tool}: {'; '.join(found) or 'no summary line'}"]
    for name in ("tests", "tests-index64"):
        log = os.path.join(directory, f"{name}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                tail = [line for line in f.read().splitlines() if line.strip()][-1:]
            lines += [f"* pytest ({name}): {tail[0] if tail else 'no output'}"]
    ncu = glob.glob(os.path.join(directory, "ncu*.log"))
    lines += [f"* ncu: {'see ' + os.path.basename(ncu[0]) if ncu else 'not run'}", ""]
    return "\n".join(lines)


def _ratios(r: dict | None) -> str | None:
    return None if r is None else f"{r['time']:.2f} / {r['work']:.2f} / {r['bytes']:.2f}"


# ------------------------------------------------------------------------------- command line

STEPS = {
    "bandwidth": bandwidth,
    "fused": fused,
    "downsample": downsample,
    "tiny": tiny,
    "profile": profile,
}


def main(argv, prog="python -m fcn_fast.bench") -> int:
    if argv and argv[0] == "summary":
        if len(argv) != 2 or not os.path.isdir(argv[1]):
            print(f"usage: {prog} first summary DIR (gpu_first.sh's folder)", file=sys.stderr)
            return 2
        print(summary(argv[1]))
        return 0
    p = argparse.ArgumentParser(
        prog=f"{prog} first",
        description="The first three minutes of a GPU run (benchmarks/gpu_first.sh).",
    )
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--size", choices=sorted(HEADS), help="default: large on cuda, tiny on cpu")
    p.add_argument("--backends", help="comma-separated (default: the kernel backends that run)")
    p.add_argument("--dtypes", help="comma-separated: fp32,bf16,fp16 (default fp32,bf16 on cuda)")
    p.add_argument("--json", metavar="PATH", help="the rows, written after each one")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{prog} first: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    size = args.size or ("large" if device.type == "cuda" else "tiny")
    backends = args.backends.split(",") if args.backends else kernel_backends(device)
    for backend in backends:
        reason = _backend.can_run(backend, device)
        if reason is not None:
            print(f"{prog} first: backend {backend!r} cannot run: {reason}", file=sys.stderr)
            return 2
    names = (args.dtypes or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(",")
    if any(n not in DTYPES for n in names):
        print(f"{prog} first: --dtypes takes {', '.join(DTYPES)}", file=sys.stderr)
        return 2
    sink = Sink(args.json, environment(device, size))
    STEPS[args.step](device, size, backends, [DTYPES[n] for n in names], sink)
    failed = sink.failed()
    print(f"{args.step}: {len(sink.rows) - failed} ok, {failed} failed ({device}, {size})")
    return 1 if failed else 0

"""Timing, copy bandwidth and peak memory: the measuring half of the benchmark suite.

CPU: time.perf_counter around each call, a fixed torch thread count (reported).
CUDA: CUDA events around each call, with the L2 cache flushed (a 256 MB buffer
overwritten) before every round, so small inputs are not timed out of L2.
Both: warm-up rounds, then the median of the timed rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

L2_FLUSH_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long to time one step: budgets per measurement and bounds on the round counts."""

    budget_s: float  # timed rounds: about this long in all
    min_rounds: int
    max_rounds: int
    warmup: int  # at least this many untimed rounds ...
    warmup_s: float  # ... and about this long (allocator and oneDNN caches settle), at most 10

    def rounds(self, estimate_s: float) -> int:
        wanted = math.ceil(self.budget_s / max(estimate_s, 1e-6))
        return max(self.min_rounds, min(self.max_rounds, wanted))

    def warmup_rounds(self, estimate_s: float) -> int:
        wanted = math.ceil(self.warmup_s / max(estimate_s, 1e-6))
        return max(self.warmup, min(10, wanted))

    def host_bound(self, device_type: str) -> Plan:
        """The plan for steps of a few microseconds: the same time budget, spent on up to
        HOST_BOUND_ROUNDS rounds, so that the median of many calls is stable."""
        most = HOST_BOUND_ROUNDS[device_type]
        return dataclasses.replace(self, max_rounds=max(self.max_rounds, most))


PLANS = {
    ("cpu", "quick"): Plan(0.02, 2, 3, 1, 0.0),
    ("cpu", "default"): Plan(0.4, 5, 50, 1, 0.1),
    ("cpu", "full"): Plan(1.0, 7, 100, 2, 0.3),
    ("cuda", "quick"): Plan(0.02, 3, 10, 2, 0.0),
    ("cuda", "default"): Plan(0.1, 10, 100, 3, 0.02),
    ("cuda", "full"): Plan(0.3, 20, 300, 5, 0.05),
}

# Host-bound steps: CPU rounds cost only the call; a CUDA round also flushes L2 (~0.1 ms).
HOST_BOUND_ROUNDS = {"cpu": 5000, "cuda": 1000}

# A runner executes (target, setup, rounds, warmup): `setup` before each call, untimed.
# The default runs them in a loop; pytest passes benchmark.pedantic so pytest-benchmark
# records the same calls it reports.
Runner = Callable[[Callable[[], object], Callable[[], None], int, int], None]


def loop_runner(target, setup, rounds, warmup):
    for _ in range(warmup + rounds):
        setup()
        target()


class Timer:
    """Wraps a step so that every call appends its duration (seconds) to `samples`."""

    def __init__(self, device: torch.device, flush: bool = True):
        self.device = device
        self.samples: list[float] = []
        self._flush = None
        if device.type == "cuda" and flush:  # flush=False: what the step left in L2 stays
            self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)

    def setup(self) -> None:
        if self._flush is not None:
            self._flush.zero_()  # evict the step's inputs from L2
            torch.cuda.synchronize(self.device)  # untimed by pytest-benchmark too

    def wrap(self, fn: Callable[[], object]) -> Callable[[], None]:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)

            def target():
                start.record()
                fn()
                end.record()
                end.synchronize()
                self.samples.append(start.elapsed_time(end) / 1e3)

            return target

        def target():
            t0 = time.perf_counter()
            fn()
            self.samples.append(time.perf_counter() - t0)

        return target


def measure(
    fn,
    device: torch.device,
    rounds: int,
    warmup: int,
    runner: Runner | None = None,
    flush: bool = True,
):
    """Per-round seconds of `fn` after `warmup` untimed rounds (dropped from the samples)."""
    timer = Timer(device, flush)
    (runner or loop_runner)(timer.wrap(fn), timer.setup, rounds, warmup)
    samples = timer.samples[warmup:] or timer.samples  # a disabled pytest-benchmark runs once
    return samples


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_once(fn, device: torch.device):
    """(result, seconds) of one call, synchronised: used for the numerics call and estimates."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t0


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def copy_seconds(nbytes: int, device: torch.device, plan: Plan, fresh: bool = False) -> float:
    """Median time of a device copy moving `nbytes` in all (nbytes / 2 read, nbytes / 2 written).

    fresh=False copies into a buffer whose pages are already mapped (pure bandwidth);
    fresh=True clones into newly allocated memory, as an op returning a new tensor must:
    on a CPU, large allocations come straight from the OS and every page faults on first
    write, which can cost more than the copy itself.
    """
    half = max(nbytes // 2, 1)
    src = torch.ones(half, dtype=torch.uint8, device=device)
    dst = torch.zeros(half, dtype=torch.uint8, device=device)  # pages touched before timing

    def copy():
        if fresh:
            return src.clone()
        dst.copy_(src)

    _, estimate = timed_once(copy, device)
    samples = measure(copy, device, plan.rounds(estimate), plan.warmup_rounds(estimate))
    return median(samples)


CPU_MEMORY_MEASURE = (
    "peak bytes allocated during one call beyond what was live before (the inputs), "
    "from torch.profiler memory events (CPU allocator)"
)
CUDA_MEMORY_MEASURE = (
    "torch.cuda.max_memory_allocated during one call minus memory_allocated before it (the inputs)"
)


def memory_measure(device: torch.device) -> str:
    return CUDA_MEMORY_MEASURE if device.type == "cuda" else CPU_MEMORY_MEASURE


def peak_memory(fn, device: torch.device) -> int | None:
    """Peak bytes one call of `fn` allocates beyond what is live before it (see memory_measure)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak
    return _cpu_peak(fn)


def held_memory(fn, device: torch.device) -> int | None:
    """Bytes still allocated after `fn` returns while its result is alive (outputs + saved).

    For a forward with autograd on, that is what forward holds for backward (and the output).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device) - before
        del result
        return held
    return _cpu_peak(fn, held=True)


def _cpu_peak(fn, held: bool = False) -> int | None:
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
            result = fn()
            if not held:
                del result
        events = [e for e in p.profiler.kineto_results.events() if e.name() == "[memory]"]
        result = None
    except Exception:
        return None  # a profiler without memory events: reported as "-", never guessed
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return live if held else peak


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints profiler start/stop lines on fd 2; keep the report readable."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

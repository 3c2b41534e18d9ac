"""Runs benchmark cases: numerics against the reference first, then timing and the derived figures.

One `Bench` per process: it fixes the thread count, and caches per shape what
several rows share (inputs, the numerics oracle, the reference's time, copy times).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import subprocess

import torch

import fcn_fast
from fcn_fast import _backend
from fcn_fast.bench import cases as _cases
from fcn_fast.bench import timing
from fcn_fast.bench.cases import BASELINES, DTYPE_NAMES, Case, compare, reset_compiled

__all__ = ["BASELINES", "Bench", "Result", "compare", "exact_fp32"]


@dataclasses.dataclass
class Result:
    op: str
    case: str
    shape: str
    backend: str
    dtype: str
    mode: str
    device: str
    host_bound: bool = False  # a tiny shape timing the call itself (the overhead rows)
    status: str = "ok"  # ok | failed | skipped
    reason: str = ""
    numerics: str = ""  # "OK (max rel err 3e-07)", "reference", "FAIL: ..."
    max_rel_err: float | None = None
    ms: float | None = None  # median
    ms_min: float | None = None
    rounds: int = 0
    bytes: int | None = None
    gbps: float | None = None
    copy_ms: float | None = None
    copy_gbps: float | None = None
    pct_of_copy: float | None = None
    # CPU only: the same copy into freshly allocated memory (page faults included), the floor
    # for an op that returns a new tensor; and the share of it achieved.
    fresh_copy_ms: float | None = None
    pct_of_fresh_copy: float | None = None
    reference_ms: float | None = None
    speedup: float | None = None
    # Fused-head rows: the unfused fcn_fast ops' time for the same step, and the speed-up over it.
    unfused_ms: float | None = None
    speedup_vs_unfused: float | None = None
    # Low-precision rows: speed-up over the reference in float32 (NCHW for the models), i.e.
    # what the low-precision recipe and fcn_fast gain together over plain fp32 PyTorch.
    speedup_vs_fp32_reference: float | None = None
    peak_mem_bytes: int | None = None
    # This row's peak memory as a share of the reference's (eager PyTorch's) for the same step.
    peak_mem_pct_of_reference: float | None = None
    # fwdbwd rows: bytes the forward leaves allocated for backward (saved tensors + output).
    held_mem_bytes: int | None = None
    threads: int = 0

    def extra_info(self) -> dict:
        """The fields pytest-benchmark stores with each case (its JSON's extra_info)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("op", "case")}


@contextlib.contextmanager
def exact_fp32():
    """No TF32 in cuDNN convolutions or matmuls: fp32 checks need fp32 arithmetic.

    PyTorch lets cuDNN use TF32 for fp32 convolutions by default, which would put the
    reference's conv_transpose2d 1e-3 off. Numerics calls run under this; timing does
    not (the reference is timed as users run it).
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Bench:
    """A benchmark session on one device."""

    def __init__(self, device: str = "cpu", size: str = "default", threads: int | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA GPU is visible")
        self.size = size
        self.plan = timing.PLANS[(self.device.type, size)]
        # A fixed thread count, reported with every row: timings depend on it.
        torch.set_num_threads(threads or torch.get_num_threads())
        self.threads = torch.get_num_threads()
        self._case: Case | None = None
        self._inputs: dict = {}
        self._oracle: dict = {}
        self._baseline_ms: dict = {}
        self._ref_peak: dict = {}
        self._copy_s: dict = {}
        self.results: list[Result] = []  # every row run() returned, in order

    # ---------------------------------------------------------------- environment
    def environment(self) -> dict:
        try:
            import triton

            triton_version = triton.__version__
        except Exception:
            triton_version = None
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            # Other processes skew CPU timings: the load when the run started (1/5/15 min).
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "device": self.device.type,
            "device_name": gpu or _cpu_model(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "threads": self.threads,
            "size": self.size,
            "torch": torch.__version__,
            "triton": triton_version,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "fcn_fast": fcn_fast.__version__,
            "git_commit": _git_commit(),
            "backends": {k: list(v) for k, v in fcn_fast.available_backends().items()},
            "timing": (
                f"median of >= {self.plan.min_rounds} rounds after >= {self.plan.warmup} warm-up; "
                + (
                    "CUDA events, L2 flushed before each round"
                    if self.device.type == "cuda"
                    else f"time.perf_counter, torch.set_num_threads({self.threads})"
                )
            ),
            "bytes": "fewest bytes the step must move: each input read once, each output "
            "written once; fwdbwd adds the backward's (docs/design.md, Performance method)",
            "copy": "median time of a device copy moving the same number of bytes "
            "(half read, half written) into mapped memory; on CPU, % fresh: the same copy "
            "into newly allocated memory (page faults included, as for a new output)",
            "memory": timing.memory_measure(self.device),
        }

    # ---------------------------------------------------------------- caches
    def _enter(self, case: Case) -> None:
        if self._case is not case:
            self._case = case
            self._inputs.clear()
            self._oracle.clear()
            reset_compiled()

    def inputs(self, case: Case, dtype: torch.dtype) -> dict:
        self._enter(case)
        if dtype not in self._inputs:
            self._inputs[dtype] = case.inputs(self.device, dtype)
        return self._inputs[dtype]

    def oracle(self, case: Case, dtype: torch.dtype, mode: str):
        """The reference's result: in fp32 on the same (upcast) inputs, or at the case dtype."""
        key = (dtype, mode)
        if key not in self._oracle:
            inputs = self.inputs(case, dtype)
            if case.oracle_upcast and dtype != torch.float32:
                inputs = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}
            torch.manual_seed(1234)  # the same dropout masks for every backend
            with exact_fp32():
                result = case.step(inputs, "reference", mode, dtype)()
            self._oracle[key] = tuple(t.detach().clone() for t in result)
        return self._oracle[key]

    def _plan(self, case: Case) -> timing.Plan:
        return self.plan.host_bound(self.device.type) if case.host_bound else self.plan

    def baseline_ms(self, case: Case, dtype: torch.dtype, mode: str, backend: str) -> float:
        """A baseline's median time for this step: from its row, or timed now if not run."""
        key = (case.key, case.shape, dtype, mode, backend)
        if key not in self._baseline_ms:
            fn = case.step(self.inputs(case, dtype), backend, mode, dtype)
            estimate = _estimate(fn, self.device, case.host_bound)
            plan = self._plan(case)
            samples = timing.measure(
                fn, self.device, plan.rounds(estimate), plan.warmup_rounds(estimate)
            )
            self._baseline_ms[key] = timing.median(samples) * 1e3
        return self._baseline_ms[key]

    def reference_ms(self, case: Case, dtype: torch.dtype, mode: str) -> float:
        return self.baseline_ms(case, dtype, mode, "reference")

    def reference_peak(self, case: Case, dtype: torch.dtype, mode: str) -> int | None:
        """The reference's peak memory for this step: from its row, or measured now."""
        key = (case.key, case.shape, dtype, mode)
        if key not in self._ref_peak:
            fn = case.step(self.inputs(case, dtype), "reference", mode, dtype)
            timing.timed_once(fn, self.device)  # warm: lazy initialisation is not the step's
            self._ref_peak[key] = timing.peak_memory(fn, self.device)
        return self._ref_peak[key]

    def copy_ms(self, nbytes: int, fresh: bool = False) -> float:
        if (nbytes, fresh) not in self._copy_s:
            seconds = timing.copy_seconds(nbytes, self.device, self.plan, fresh)
            self._copy_s[(nbytes, fresh)] = seconds
        return self._copy_s[(nbytes, fresh)] * 1e3

    # ---------------------------------------------------------------- one row
    def run(self, case: Case, backend: str, dtype: torch.dtype, mode: str, runner=None) -> Result:
        """Check numerics, then time. Never raises for a mismatch: see Result.status."""
        res = self._run(case, backend, dtype, mode, runner)
        self.results.append(res)
        return res

    def _run(self, case, backend, dtype, mode, runner) -> Result:
        res = Result(
            op=case.op,
            case=case.label,
            shape=case.shape,
            backend=backend,
            dtype=DTYPE_NAMES[dtype],
            mode=mode,
            device=self.device.type,
            host_bound=case.host_bound,
            threads=self.threads,
        )
        if backend not in BASELINES:
            reason = _backend.can_run(backend, self.device)
            if reason is not None:
                res.status, res.reason = "skipped", f"backend {backend!r} unavailable: {reason}"
                return res
        inputs = self.inputs(case, dtype)
        try:
            fn = case.step(inputs, backend, mode, dtype)
            torch.manual_seed(1234)
            # torch.compile guards on the TF32 flags: check it as it is timed (a baseline).
            exact = exact_fp32() if backend != "compile" else contextlib.nullcontext()
            with exact:
                got, estimate = timing.timed_once(fn, self.device)
        except (
            _cases.Unsupported,  # looked up when raised: the registry module may be reloaded
            ImportError,
            NotImplementedError,
            _backend.BackendUnavailableError,
        ) as e:
            res.status, res.reason = "skipped", f"{type(e).__name__}: {e}"
            return res
        except Exception as e:  # a kernel that raises is a failed row, not a dead sweep
            res.status = "failed"
            res.numerics = res.reason = f"FAIL: raised {type(e).__name__}: {e}"
            return res
        if backend == "reference" and not (case.oracle_upcast and dtype != torch.float32):
            res.numerics = "reference"
            self._oracle.setdefault((dtype, mode), tuple(t.detach().clone() for t in got))
        else:
            ok, err, detail = case.check(got, self.oracle(case, dtype, mode), dtype)
            res.max_rel_err = err
            if not ok and backend in BASELINES:
                # A baseline (not our code) off the fp32 oracle: say so, but time it anyway.
                res.numerics = f"baseline {err:.1e} > tol"
            elif not ok:
                res.status = "failed"
                res.numerics = res.reason = f"FAIL: {detail}"
                return res
            else:
                res.numerics = f"OK ({err:.1e})"
        del got
        # The first call included compilation / autotuning / lazy initialisation; tiny steps
        # are estimated from warm calls, or their round count would come out far too low.
        if self.device.type == "cuda" or case.host_bound:
            estimate = _estimate(fn, self.device, case.host_bound)

        plan = self._plan(case)
        rounds, warmup = plan.rounds(estimate), plan.warmup_rounds(estimate)
        samples = timing.measure(fn, self.device, rounds, warmup, runner)
        res.rounds = len(samples)
        res.ms = timing.median(samples) * 1e3
        res.ms_min = min(samples) * 1e3
        if backend in BASELINES:
            self._baseline_ms[(case.key, case.shape, dtype, mode, backend)] = res.ms
        res.reference_ms = self.reference_ms(case, dtype, mode)
        res.speedup = res.reference_ms / res.ms
        # After the reference (and compile) rows, which run before the unfused row.
        unfused = "unfused" in case.backend_names(self.device.type, self.size, dtype, mode)
        if unfused and backend not in ("reference", "compile"):
            res.unfused_ms = self.baseline_ms(case, dtype, mode, "unfused")
            res.speedup_vs_unfused = res.unfused_ms / res.ms
        if dtype != torch.float32:
            res.speedup_vs_fp32_reference = self.reference_ms(case, torch.float32, mode) / res.ms
        res.bytes = case.min_bytes(dtype, mode)
        if res.bytes:
            res.gbps = res.bytes / res.ms / 1e6
            res.copy_ms = self.copy_ms(res.bytes)
            res.copy_gbps = res.bytes / res.copy_ms / 1e6
            res.pct_of_copy = 100.0 * res.copy_ms / res.ms
            if self.device.type == "cpu":
                res.fresh_copy_ms = self.copy_ms(res.bytes, fresh=True)
                res.pct_of_fresh_copy = 100.0 * res.fresh_copy_ms / res.ms
        res.peak_mem_bytes = timing.peak_memory(fn, self.device)
        if backend == "reference":
            self._ref_peak[(case.key, case.shape, dtype, mode)] = res.peak_mem_bytes
        ref_peak = self.reference_peak(case, dtype, mode)
        if res.peak_mem_bytes is not None and ref_peak:
            res.peak_mem_pct_of_reference = 100.0 * res.peak_mem_bytes / ref_peak
        if mode == "fwdbwd" and backend != "compile":
            forward = case.forward_for_backward(inputs, backend, dtype)
            if forward is not None:
                res.held_mem_bytes = timing.held_memory(forward, self.device)
        return res


def _estimate(fn, device: torch.device, host_bound: bool) -> float:
    """Seconds per call, for choosing round counts: one call, or the fastest of five when
    the step is host-bound (one slow call would cut thousands of rounds to a few)."""
    calls = 5 if host_bound else 1
    return min(timing.timed_once(fn, device)[1] for _ in range(calls))

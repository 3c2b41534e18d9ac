"""`python -m fcn_fast.bench` / `fcn-fast bench`: run the suite and print a table a person can read.

    python -m fcn_fast.bench                    default sweep on the GPU if there is one, else CPU
    python -m fcn_fast.bench --quick            smoke run (seconds)
    python -m fcn_fast.bench --full             the long sweep
    python -m fcn_fast.bench --json r.json --markdown r.md --plot r.png
    python -m fcn_fast.bench show r.json        re-print a saved run
    python -m fcn_fast.bench readme             the README performance section, from
                                                benchmarks/results/
    python -m fcn_fast.bench prefer r.json      GPU_PREFERENCE as a GPU run measured it
    python -m fcn_fast.bench model              predicted GPU times, from the sm_90 machine
                                                code, without a GPU
    python -m fcn_fast.bench first STEP         the first three minutes of a GPU run
                                                (benchmarks/gpu_first.sh)
    python -m fcn_fast.bench compare r.json m.json   the model's predictions beside a GPU
                                                run's measurements, per row

Exit status: 0 when every row's numerics passed, 1 when one failed, 2 on bad usage,
130 when interrupted (the rows measured so far are still printed and written).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time

import torch

from fcn_fast.bench import report
from fcn_fast.bench.cases import (
    BASELINES,
    DEVICE_BACKENDS,
    DTYPE_NAMES,
    MODES,
    SIZES,
    op_names,
    priority,
    select,
)

OTHER_COMMANDS = """other commands:
  show FILE.json [--markdown PATH] [--plot PATH]
                        re-print a saved results file (and render it again)
  readme [--results DIR]
                        print the README's performance section from the results
                        files committed under benchmarks/results/
  prefer FILE.json      the GPU_PREFERENCE of fcn_fast/_backend.py that a GPU run
                        measured, and the rows where it is slower than eager or
                        torch.compile
  model [--json PATH] [--markdown PATH] [--ops ...] [--backends cuda,triton]
                        predicted GPU times from the kernels' sm_90 machine code,
                        without a GPU (nvcc, cuobjdump, Triton)
  first {bandwidth,fused,downsample,tiny,profile} [--device] [--size] [--json PATH]
  first summary DIR     the measurements of benchmarks/gpu_first.sh (fcn_fast/bench/first.py)
  compare RESULTS.json MODEL.json [--gpu h100|h200] [--threshold 25] [--markdown PATH]
                        per row: predicted ms, measured ms, error %; flags > 25%
"""


def _backend_names() -> list[str]:
    """Every backend name a sweep can time, baselines first."""
    kernels = [b for names in DEVICE_BACKENDS.values() for b in names if b not in BASELINES]
    return list(dict.fromkeys([*BASELINES, *kernels]))


def _split(values):
    if not values:
        return None
    return [v for value in values for v in value.split(",") if v]


def _run_parser(prog):
    p = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [run] [options] | {prog} show FILE.json | {prog} readme | "
        f"{prog} prefer FILE.json",
        description="Benchmark fcn_fast's kernels against plain PyTorch (numerics checked first).",
        epilog=OTHER_COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", choices=SIZES, default="default", help="sweep size")
    size.add_argument("--quick", action="store_const", const="quick", dest="size", help="smoke run")
    size.add_argument("--full", action="store_const", const="full", dest="size", help="long sweep")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is visible")
    p.add_argument("--ops", action="append", help="only these ops (comma-separated)")
    p.add_argument("--backends", action="append", help="only these backends (comma-separated)")
    p.add_argument("--dtypes", action="append", help="only these dtypes: fp32,bf16,fp16")
    p.add_argument("--modes", action="append", help="only these modes: fwd,fwdbwd,train")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (for machines)")
    p.add_argument("--markdown", metavar="PATH", help="write the results as a markdown table")
    p.add_argument(
        "--plot", metavar="PATH", help="PNG: one panel per op, backends side by side (matplotlib)"
    )
    p.add_argument(
        "--order",
        choices=("registry", "priority"),
        default="registry",
        help="priority: run the fused heads and model rows first and the torch.compile rows "
        "last (a GPU lease's order); the outputs keep the registry's order",
    )
    p.add_argument("--list", action="store_true", help="list the runs of this sweep and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def _outputs(args, meta, results, title=""):
    if args.json:
        report.write_json(args.json, meta, results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown_report(meta, results))
    if getattr(args, "plot", None):
        report.plot_results(results, args.plot, title)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # `timeout` sends SIGTERM: finish like Ctrl-C, keeping the rows


def run_main(argv, prog="python -m fcn_fast.bench") -> int:
    args = _run_parser(prog).parse_args(argv)
    if args.plot and not report.plot_available():
        print(report.PLOT_MISSING, file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    filters = {
        "ops": (_split(args.ops), op_names()),
        "backends": (_split(args.backends), _backend_names()),
        "dtypes": (_split(args.dtypes), list(DTYPE_NAMES.values())),
        "modes": (_split(args.modes), list(MODES)),
    }
    for option, (given, valid) in filters.items():
        unknown = [v for v in given or () if v not in valid]
        if unknown:
            print(
                f"--{option}: unknown {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(valid)}",
                file=sys.stderr,
            )
            return 2
    runs = select(args.size, device, **{option: given for option, (given, _) in filters.items()})
    # Positions in the registry's order, in the order they run: the outputs are put back in
    # the registry's order at the end.
    positions = list(range(len(runs)))
    if args.order == "priority":
        positions.sort(key=lambda i: priority(runs[i]))
        runs = [runs[i] for i in positions]
    if args.list:
        for case, backend, dtype, mode in runs:
            print(f"{case.op} {case.label} [{case.shape}] {mode} {DTYPE_NAMES[dtype]} {backend}")
        return 0
    if not runs:
        print("no benchmark runs match these options (see --list)", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():  # --list needs no GPU
        print("--device cuda: no CUDA GPU is visible here", file=sys.stderr)
        return 2

    from fcn_fast.bench.runner import Bench

    bench = Bench(device, args.size, args.threads)
    meta = bench.environment()
    meta["command"] = " ".join([prog, *map(shlex.quote, argv)])
    title = report.describe_machine(meta)
    if not args.quiet:
        print(f"fcn_fast.bench: {len(runs)} runs on {title}", file=sys.stderr)
    results = []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    start = time.perf_counter()
    interrupted = False
    try:
        for i, (case, backend, dtype, mode) in enumerate(runs, 1):
            r = bench.run(case, backend, dtype, mode)
            results.append(r)
            if not args.quiet:
                took = f"{r.ms:.3g} ms, {r.speedup:.2f}x ref" if r.ms is not None else r.status
                elapsed = time.perf_counter() - start
                print(
                    f"[{i:>3}/{len(runs)} {elapsed:5.0f}s] {case.op} {case.label} {mode} "
                    f"{DTYPE_NAMES[dtype]} {backend}: {took} {r.numerics}",
                    file=sys.stderr,
                    flush=True,
                )
            if args.json:  # progressively, so a run cut short still leaves its rows
                report.write_json(args.json, meta, results)
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted after {len(results)} of {len(runs)} runs", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    results = [r for _, r in sorted(zip(positions, results), key=lambda pair: pair[0])]
    meta["interrupted"] = interrupted
    meta["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"\n{title}\n")
    print(report.text_table(results))
    print(f"\n{report.summary(results)}; {meta['wall_s']} s")
    _outputs(args, meta, results, title)
    if interrupted:
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


def _load(path: str, command: str):
    """(meta, results) of a results file, or None after saying in one line on stderr why not."""
    try:
        return report.load_json(path)
    except OSError as error:
        print(f"{command}: cannot read {path}: {error.strerror}", file=sys.stderr)
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
    return None


def show_main(argv, prog) -> int:
    p = argparse.ArgumentParser(prog=f"{prog} show", description="Re-print a saved results file.")
    p.add_argument("json_file")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--plot", metavar="PATH")
    args = p.parse_args(argv)
    if args.plot and not report.plot_available():
        print(report.PLOT_MISSING, file=sys.stderr)
        return 2
    loaded = _load(args.json_file, f"{prog} show")
    if loaded is None:
        return 2
    meta, results = loaded
    title = report.describe_machine(meta)
    print(f"{title}\n")
    print(report.text_table(results))
    print(f"\n{report.summary(results)}")
    args.json = None
    _outputs(args, meta, results, title)
    return 1 if any(r.status == "failed" for r in results) else 0


def readme_main(argv, prog) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} readme",
        description="Print the README's performance section from committed results files.",
    )
    default = os.path.join(os.getcwd(), "benchmarks", "results")
    p.add_argument("--results", default=default, help="folder of results JSON files")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        print(f"no results folder at {args.results}", file=sys.stderr)
        return 2
    print(report.readme_section(args.results))
    return 0


def prefer_main(argv, prog) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} prefer",
        description="Print fcn_fast/_backend.py's GPU_PREFERENCE as a GPU run measured it: per "
        "op, the cuda and triton backends by the geometric mean of their times over the rows "
        "both measured; then the rows where the first is slower than eager or torch.compile.",
    )
    p.add_argument("json_file", metavar="FILE.json")
    args = p.parse_args(argv)
    loaded = _load(args.json_file, f"{prog} prefer")
    if loaded is None:
        return 2
    print(report.preference_report(loaded[1]))
    return 0


def main(argv=None, prog="python -m fcn_fast.bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "readme":
        return readme_main(argv[1:], prog)
    if argv and argv[0] == "show":
        return show_main(argv[1:], prog)
    if argv and argv[0] == "prefer":
        return prefer_main(argv[1:], prog)
    if argv and argv[0] == "model":
        from fcn_fast.bench import model

        return model.main(argv[1:], prog)
    if argv and argv[0] == "compare":
        from fcn_fast.bench import compare

        return compare.main(argv[1:], prog)
    if argv and argv[0] == "first":
        from fcn_fast.bench import first

        return first.main(argv[1:], prog)
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run_main(argv, prog)

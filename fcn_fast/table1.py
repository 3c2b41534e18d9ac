"""`fcn-fast table1`: the FCN paper's Table 1, reproduced on the machine at hand.

    fcn-fast table1 [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--size 500] [--trials 20]
                    [--width 1.0] [--json F] [--markdown F]
    fcn-fast table1 readme [--results DIR] [--update README.md]

For FCN-AlexNet, FCN-32s (FCN-VGG16), FCN-GoogLeNet, FCN-16s and FCN-8s, beside the
paper's column: conv layers, parameters, receptive field and max stride, read from the
models' layer graphs (fcn_fast.receptive_field); forward time and peak memory at batch 1,
measured here with fcn_fast's fused heads and with plain-PyTorch heads. Mean IU is the
paper's. `readme` renders the README section from committed results files.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch

import fcn_fast
from fcn_fast.models import FCN8s, FCN16s, FCN32s, FCNAlexNet, FCNGoogLeNet
from fcn_fast.receptive_field import analyze

SCHEMA = "fcn_fast.table1/1"
WARMUP = 2  # untimed forwards per variant first (allocator, oneDNN / cuDNN plans settle)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("fused", "reference")  # backend "auto" (fcn_fast's heads), plain-PyTorch heads
PAPER_DEVICE = "NVIDIA Tesla K40c, Caffe"
# bvlc_googlenet's last pool (pool5/7x7_s1), which the paper discards (section 4.1).
GOOGLENET_FINAL_POOL = 7


def _paper_column(mean_iu, forward_ms, conv_layers, parameters_m, receptive_field, max_stride):
    return {
        "mean_iu": mean_iu,
        "forward_ms": forward_ms,
        "conv_layers": conv_layers,
        "parameters_m": parameters_m,
        "receptive_field": receptive_field,
        "max_stride": max_stride,
    }


# (name, model class, the paper's Table 1 column or None): Table 1's nets, then the skip nets.
NETS = (
    ("FCN-AlexNet", FCNAlexNet, _paper_column(39.8, 50, 8, 57, 355, 32)),
    ("FCN-32s (FCN-VGG16)", FCN32s, _paper_column(56.0, 210, 16, 134, 404, 32)),
    ("FCN-GoogLeNet", FCNGoogLeNet, _paper_column(42.5, 59, 22, 6, 907, 32)),
    ("FCN-16s", FCN16s, None),
    ("FCN-8s", FCN8s, None),
)


# ---------------------------------------------------------------------------- counting


def _number(x):
    """A stride as JSON: an int when whole, else "p/q"."""
    return int(x) if x.denominator == 1 else str(x)


def architecture(model_class) -> dict:
    """Conv layers, parameters, receptive field and strides of the published net (width 1),
    built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = model_class()
    graph = analyze(model)
    facts = {
        "conv_layers": graph.conv_layers,
        "conv_modules": graph.conv_modules,
        "parameters": sum(p.numel() for p in model.parameters()),
        "receptive_field": graph.receptive_field,
        "max_stride": _number(graph.max_stride),
        "output_stride": _number(graph.output_stride),
    }
    if model_class is FCNGoogLeNet:
        pooled = graph.geometry.window(GOOGLENET_FINAL_POOL, 1, 0)
        facts["receptive_field_with_final_pool"] = pooled.size
    return facts


# ---------------------------------------------------------------------------- timing


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


class _Clock:
    """Seconds of one call: CUDA events on a GPU (synchronised after), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn) -> float:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def measure_forward(model_class, *, device, dtype, size, trials, width, log=None) -> dict:
    """Forward time and peak memory of one net, fused heads and reference heads.

    One model, batch 1, a size x size image, eval() and no_grad. The two variants
    alternate trial by trial (and swap order each trial), so a change in machine load
    hits both alike.
    """
    from fcn_fast.bench import timing

    torch.manual_seed(0)
    model = model_class(width=width).to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    if device.type == "cuda" and dtype != "fp32":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    backends = {"fused": "auto", "reference": "reference"}
    clock = _Clock(device)
    samples = {v: [] for v in VARIANTS}
    out = {}
    with torch.no_grad(), _autocast(device, dtype):
        for trial in range(WARMUP + trials):
            order = VARIANTS if trial % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                model.set_backend(backends[variant])
                seconds = clock(lambda: model(x))
                if trial >= WARMUP:
                    samples[variant].append(seconds * 1e3)
            if log:
                log(".")
        for variant in VARIANTS:
            model.set_backend(backends[variant])
            peak = timing.peak_memory(lambda: model(x), device)
            ms = samples[variant]
            out[variant] = {
                "backend": backends[variant],
                "mean_ms": statistics.fmean(ms),
                "std_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
                "min_ms": min(ms),
                "samples_ms": ms,
                "peak_mb": None if peak is None else peak / 1e6,
            }
    return out


# ---------------------------------------------------------------------------- environment


def _git(*args) -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        run = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Facts a reader needs to compare this run with another."""
    from fcn_fast._backend import resolve_backend

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += ", with uncommitted changes"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
        ),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # A niced run yields the cores to other processes: its times include their load.
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "fused_backend": resolve_backend("auto", "resample_skip", device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fcn_fast": fcn_fast.__version__,
        "git_commit": commit,
    }


def _loadavg():
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run(*, device="cpu", dtype="fp32", size=500, trials=20, width=1.0, command="", log=None):
    """Measure everything; returns the results document written as JSON."""
    device = torch.device(device)
    meta = environment(device)
    meta.update(
        command=command,
        dtype=dtype,
        size=size,
        trials=trials,
        warmup=WARMUP,
        width=width,
        loadavg=_loadavg(),
    )
    rows = []
    for name, model_class, paper in NETS:
        if log:
            log(f"{name} ")
        row = {"net": name, "model": model_class.__name__, "paper": paper}
        row.update(architecture(model_class))
        row["forward"] = measure_forward(
            model_class,
            device=device,
            dtype=dtype,
            size=size,
            trials=trials,
            width=width,
            log=log,
        )
        rows.append(row)
        if log:
            log("\n")
    meta["loadavg_after"] = _loadavg()
    return {"schema": SCHEMA, "meta": meta, "rows": rows}


# ---------------------------------------------------------------------------- rendering


def _ms(value) -> str:
    return "–" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _paper(row, key, fmt="{}") -> str:
    paper = row["paper"]
    return "–" if paper is None or paper.get(key) is None else fmt.format(paper[key])


def _beside_paper(row, ours: str, key, fmt="{}") -> str:
    """`ours (paper X)`, or `ours` alone for a net Table 1 does not have."""
    return ours if row["paper"] is None else f"{ours} (paper {_paper(row, key, fmt)})"


def _table(doc) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table: one column per net, as the paper's."""
    rows = doc["rows"]
    meta = doc["meta"]
    fused, ref = (f"forward ms, {v} heads" for v in ("fused", "reference"))
    fused += f" (`{meta['fused_backend']}` kernels)"

    def cells(fn):
        return [fn(r) for r in rows]

    def with_paper(key):
        return lambda r: _beside_paper(r, str(r[key]), key)

    def parameters(r):
        return _beside_paper(r, f"{r['parameters'] / 1e6:.1f}M", "parameters_m", "{}M")

    def rf(r):
        mark = "¹" if "receptive_field_with_final_pool" in r else ""
        return _beside_paper(r, f"{r['receptive_field']}{mark}", "receptive_field")

    def stats(variant):
        def cell(r):
            f = r["forward"][variant]
            return f"{_ms(f['mean_ms'])} ± {_ms(f['std_ms'])}"

        return cell

    def speedup(r):
        f = r["forward"]
        return f"{f['reference']['mean_ms'] / f['fused']['mean_ms']:.2f}×"

    def peak(r):
        f = r["forward"]
        return " / ".join(_ms(f[v]["peak_mb"]) for v in VARIANTS)

    header = ["", *(r["net"] for r in rows)]
    body = [
        ["mean IU, VOC2011 val (paper, not measured here)", *cells(lambda r: _paper(r, "mean_iu"))],
        [fused, *cells(stats("fused"))],
        [ref, *cells(stats("reference"))],
        ["reference / fused time", *cells(speedup)],
        [f"forward ms, paper ({PAPER_DEVICE})", *cells(lambda r: _paper(r, "forward_ms"))],
        ["peak MB of the forward, fused / reference", *cells(peak)],
        ["conv layers", *cells(with_paper("conv_layers"))],
        ["parameters", *cells(parameters)],
        ["receptive field", *cells(rf)],
        ["max stride", *cells(with_paper("max_stride"))],
        ["stride of the coarse scores", *cells(lambda r: str(r["output_stride"]))],
    ]
    return header, body


def describe_run(meta) -> str:
    if meta["device"] == "cuda":
        machine = f"{meta['device_name']} (CUDA {meta['cuda']})"
    else:
        machine = f"{meta['device_name']}, {meta['threads']} threads"
    versions = f"torch {meta['torch']}" + (f", triton {meta['triton']}" if meta["triton"] else "")
    code = f"fcn_fast {meta['fcn_fast']} (git {meta['git_commit']})"
    return f"{machine}; {versions}; {code}; {meta['date']}"


def notes(doc) -> list[str]:
    """What each row counts, and how it was measured."""
    meta, rows = doc["meta"], doc["rows"]
    by_name = {r["model"]: r for r in rows}
    modules = ", ".join(f"{r['net']} {r['conv_modules']}" for r in rows)
    out = [
        f"Forward: batch 1, a {meta['size']}×{meta['size']} image, {meta['dtype']}"
        + (" (autocast)" if meta["dtype"] != "fp32" else "")
        + f", eval() and torch.no_grad(); mean ± standard deviation of {meta['trials']} trials "
        f"after {meta['warmup']} warm-up runs, the two variants alternating trial by trial. "
        f'Fused heads: `backend="auto"`, which ran fcn_fast\'s `{meta["fused_backend"]}` '
        "kernels for the upsampling, crop and skip sums; reference heads: "
        '`set_backend("reference")`, plain PyTorch (conv_transpose2d, slice, add). The trunk '
        "is the same PyTorch convolutions in both.",
        "Peak MB: memory allocated during one forward beyond what was live before it (the "
        "weights and the input): "
        + (
            "torch.cuda.max_memory_allocated."
            if meta["device"] == "cuda"
            else "torch.profiler memory events of the CPU allocator."
        ),
        "Mean IU: the paper's Table 1 (PASCAL VOC 2011 val), not measured here; with the data "
        "at hand, `fcn-fast eval` measures it. Table 1 has no FCN-16s / FCN-8s column.",
        "Conv layers: the learned convolutions on the longest path from the image to the "
        "coarse scores, score layer included (as the paper counts: AlexNet's 5 + fc6, fc7 "
        "and the score layer); the fixed bilinear upsampling layers are not learned and not "
        "counted. GoogLeNet's inception branches run side by side, so its 22 is the depth; "
        f"Conv2d modules in all: {modules}.",
        "Parameters: learned weights and biases of the published nets (width 1, counted on "
        "the meta device); the fixed upsampling filters are buffers, not counted.",
        "Receptive field: the most image rows one unit of the coarse scores (the input of "
        "the final upsampling layer) reads, computed exactly from the model's torch.fx graph "
        "(kernel sizes, strides, paddings and crops of every layer; the hull over inception "
        "branches and skip sums; checked against gradient support in the tests). FCN-16s and "
        "FCN-8s's coarse scores are their fused stride-16 / stride-8 maps, which also read "
        "through the ×2 upsampling layers. Max stride: the coarsest grid of any layer.",
    ]
    googlenet = by_name.get("FCNGoogLeNet")
    if googlenet:
        rf, pooled = googlenet["receptive_field"], googlenet["receptive_field_with_final_pool"]
        stride = googlenet["max_stride"]
        out.append(
            f"¹ FCN-GoogLeNet: our trunk stops at inception5b, without GoogLeNet's final "
            f"{GOOGLENET_FINAL_POOL}×{GOOGLENET_FINAL_POOL} average pool, which the paper "
            f"says it discards; its receptive field is {rf}. The same trunk with that pool "
            f"reads {pooled} = {rf} + {GOOGLENET_FINAL_POOL - 1}·{stride} rows (computed the "
            "same way), the paper's figure: the paper's count appears to include the pool."
        )
    if meta["width"] != 1.0:
        out.append(
            f"Timed at width {meta['width']:g} (channels scaled), not the published nets; "
            "the counts are of the published nets."
        )
    load = meta.get("loadavg")
    if load:
        after = meta.get("loadavg_after") or load
        out.append(
            f"Load average (1 / 5 / 15 min) at the start: {' / '.join(map(str, load))}; "
            f"1 min at the end: {after[0]} ({meta['cpu_count']} CPUs)"
            + (f"; the run was niced ({meta['nice']})." if meta.get("nice") else ".")
        )
        if meta["device"] == "cpu" and max(load[0], after[0]) > meta["cpu_count"]:
            out.append(
                "The load exceeded the CPU count: other processes shared the cores during "
                "the run, so the times are inflated, and differences between the variants "
                "smaller than their standard deviations are noise."
            )
    return out


def text_report(doc) -> str:
    header, body = _table(doc)
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [describe_run(doc["meta"]), ""]
    for k, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", *notes(doc), ""])


def markdown_report(doc) -> str:
    meta = doc["meta"]
    header, body = _table(doc)
    lines = [
        f"**{describe_run(meta)}**",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in body),
        "",
    ]
    return "\n".join(lines + [f"{n}\n" for n in notes(doc)])


# ---------------------------------------------------------------------------- files, README


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def load(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a fcn-fast table1 results file (schema {SCHEMA})")
    return doc


README_BEGIN = (
    "<!-- table1: generated by `fcn-fast table1 readme --update README.md`; do not edit by hand -->"
)
README_END = "<!-- end table1 -->"


def newest_results(results_dir: str) -> list[tuple[str, dict]]:
    """The newest table1 results file per (device, dtype), CPU first."""
    newest: dict[tuple, tuple[str, dict]] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "table1-*.json"))):
        doc = load(path)
        key = (doc["meta"]["device"] != "cpu", doc["meta"]["device_name"], doc["meta"]["dtype"])
        if key not in newest or doc["meta"]["date"] > newest[key][1]["meta"]["date"]:
            newest[key] = (path, doc)
    return [newest[k] for k in sorted(newest)]


def readme_section(results_dir: str, root: str) -> str:
    """The README's "Table 1 on this machine" section, from the committed results files."""
    out = [
        README_BEGIN,
        "## Table 1 on this machine",
        "",
        "The FCN paper's Table 1, beside the same nets in fcn_fast, from `fcn-fast table1` "
        "(one command; `--device cuda`, `--dtype bf16`, `--json`, `--markdown`). Generated "
        "from the newest `benchmarks/results/table1-*.json` per device: counts and receptive "
        "fields are read from the models, times and memory measured, mean IU quoted.",
        "",
    ]
    found = newest_results(results_dir)
    if not found:
        out += ["No table1 results have been committed yet.", ""]
    for path, doc in found:
        meta = doc["meta"]
        title = "GPU" if meta["device"] == "cuda" else "CPU"
        out += [
            f"### {title}, {meta['dtype']}",
            "",
            f"From `{os.path.relpath(path, root)}`.",
            "",
            markdown_report(doc),
        ]
    return "\n".join(out).rstrip("\n") + "\n" + README_END


def update_readme(readme: str, results_dir: str) -> None:
    """Replace the section between README_BEGIN and README_END in `readme`."""
    with open(readme) as f:
        text = f.read()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no `{README_BEGIN}` ... `{README_END}` markers")
    section = readme_section(results_dir, os.path.dirname(os.path.abspath(readme)))
    write(readme, text[:start] + section + text[end + len(README_END) :])


# ---------------------------------------------------------------------------- CLI


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a positive {kind.__name__}, got {text!r}"
            ) from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def readme_main(argv, prog) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} readme",
        description="Print (or write into README.md) the README's Table 1 section, from "
        "committed table1 results files.",
    )
    p.add_argument("--results", default=os.path.join("benchmarks", "results"))
    p.add_argument("--update", metavar="README", help="rewrite the section in this file")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        p.error(f"no results folder at {args.results}")
    try:
        if args.update:
            update_readme(args.update, args.results)
        else:
            print(readme_section(args.results, os.getcwd()))
    except ValueError as e:
        p.error(str(e))
    return 0


def main(argv=None, prog="fcn-fast table1") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "readme":
        return readme_main(argv[1:], prog)
    p = argparse.ArgumentParser(
        prog=prog,
        description="The FCN paper's Table 1 on this machine: counts and receptive fields from "
        "the models, forward time and memory measured with fused and reference heads. "
        f"`{prog} readme` prints the README section from committed results.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="bf16/fp16: autocast")
    p.add_argument("--size", type=_positive(int), default=500, help="image side (default 500)")
    p.add_argument("--trials", type=_positive(int), default=20, help="timed forwards per net")
    p.add_argument(
        "--width",
        type=_positive(float),
        default=1.0,
        help="channel multiplier of the timed nets (1 = published; smaller for quick checks)",
    )
    p.add_argument("--json", metavar="F", help="write the results as JSON")
    p.add_argument("--markdown", metavar="F", help="write the table as markdown")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False)")

    def log(text):
        print(text, end="", file=sys.stderr, flush=True)

    command = shlex.join(["fcn-fast", "table1", *argv])
    doc = run(
        device=args.device,
        dtype=args.dtype,
        size=args.size,
        trials=args.trials,
        width=args.width,
        command=command,
        log=log,
    )
    print(text_report(doc))
    if args.json:
        write(args.json, json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        write(args.markdown, markdown_report(doc))
    return 0

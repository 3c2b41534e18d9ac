"""Presenting results: the console table, markdown, JSON, the speed-up plot, the README section.

Everything here reads Result rows (or the JSON written from them), so a saved
results file renders exactly as the run that produced it. No number is ever
computed here that was not measured: derived columns come from the run.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import inspect
import json
import math
import os

from fcn_fast.bench.runner import Result

SCHEMA = "fcn_fast.bench/1"
_NUMERIC = ("ms", "GB/s", "% copy", "% fresh", "× ref", "× unfused", "peak MB", "peak % ref")
COLUMNS = (
    "op",
    "case",
    "shape",
    "mode",
    "dtype",
    "backend",
    "ms",
    "GB/s",
    "% copy",
    "% fresh",
    "× ref",
    "× unfused",
    "peak MB",
    "peak % ref",
    "numerics",
)
# Columns shown only where some row has them: % fresh (CPU runs), × unfused (fused heads).
_OPTIONAL = {
    "% fresh": "pct_of_fresh_copy",
    "× unfused": "speedup_vs_unfused",
    "peak % ref": "peak_mem_pct_of_reference",
}


def _num(value, fmt=None):
    """`fmt`, or about three significant digits without an exponent."""
    if value is None:
        return "-"
    if fmt is not None:
        return format(value, fmt)
    for limit, f in ((100, ".0f"), (10, ".1f"), (1, ".2f"), (0.01, ".3f")):
        if abs(value) >= limit:
            return format(value, f)
    return format(value, ".2g")


def row_cells(r: Result) -> list[str]:
    if r.status == "skipped":
        numerics = f"skipped: {r.reason}"
    elif r.status == "failed":
        numerics = r.numerics or f"FAIL: {r.reason}"
    else:
        numerics = r.numerics
    mem = None if r.peak_mem_bytes is None else r.peak_mem_bytes / 1e6
    return [
        r.op,
        r.case,
        r.shape,
        r.mode,
        r.dtype,
        r.backend,
        _num(r.ms),
        _num(r.gbps),
        _num(r.pct_of_copy),
        _num(r.pct_of_fresh_copy),
        _num(r.speedup, ".2f"),
        _num(r.speedup_vs_unfused, ".2f"),
        _num(mem),
        _num(r.peak_mem_pct_of_reference),
        numerics,
    ]


def _columns(results):
    """Column indexes to show: the optional ones only where some row has a value."""
    hidden = {
        COLUMNS.index(column)
        for column, field in _OPTIONAL.items()
        if all(getattr(r, field) is None for r in results)
    }
    return [i for i in range(len(COLUMNS)) if i not in hidden]


def text_table(results: list[Result], width_limit: int = 60) -> str:
    keep = _columns(results)
    rows = [[list(COLUMNS)[i] for i in keep]]
    rows += [[cells[i] for i in keep] for cells in map(row_cells, results)]
    numeric = {k for k, i in enumerate(keep) if COLUMNS[i] in _NUMERIC}
    rows = [
        [c if len(c) <= width_limit else c[: width_limit - 1] + "…" for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(keep))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    keep = _columns(results)
    lines = ["| " + " | ".join(COLUMNS[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    for r in results:
        cells = row_cells(r)
        lines.append("| " + " | ".join(cells[i].replace("|", "\\|") for i in keep) + " |")
    return "\n".join(lines)


def describe_machine(meta: dict) -> str:
    if meta.get("device") == "cuda":
        what = f"{meta.get('device_name')} (CUDA {meta.get('cuda')})"
    else:
        what = f"{meta.get('cpu_model')}, {meta.get('threads')} threads"
    versions = f"torch {meta.get('torch')}"
    if meta.get("triton"):
        versions += f", triton {meta.get('triton')}"
    return f"{what}; {versions}; {meta.get('date')}"


def _load_note(meta: dict) -> str:
    before, after = meta.get("loadavg"), meta.get("loadavg_after")
    if not before:
        return ""
    note = f" Load average (1 min) at the start: {before[0]:.2f}"
    if after:
        note += f", at the end: {after[0]:.2f}"
    return note + f" ({meta.get('cpu_count')} CPUs)."


def summary(results: list[Result]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    return f"{counts['ok']} ok, {counts['failed']} failed numerics, {counts['skipped']} skipped"


# ---------------------------------------------------------------------------- JSON


def to_json(meta: dict, results: list[Result]) -> dict:
    return {"schema": SCHEMA, "meta": meta, "results": [dataclasses.asdict(r) for r in results]}


def write_json(path: str, meta: dict, results: list[Result]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(to_json(meta, results), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)  # a run killed mid-write leaves the previous complete file


def load_json(path: str) -> tuple[dict, list[Result]]:
    """(meta, results) of a results file. Raises OSError if it cannot be read, ValueError
    (one line, naming the file) if it is not a results file of this schema."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except ValueError as error:  # not JSON, or not text at all
        raise ValueError(f"{path}: not a fcn_fast.bench results file (not JSON: {error})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise ValueError(f"{path}: not a fcn_fast.bench results file (schema {schema!r})")
    fields = {f.name for f in dataclasses.fields(Result)}
    try:
        results = [Result(**{k: v for k, v in r.items() if k in fields}) for r in data["results"]]
        return data["meta"], results
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: a damaged fcn_fast.bench results file ({error!r})") from None


def markdown_report(meta: dict, results: list[Result]) -> str:
    return "\n".join(
        [
            f"**{describe_machine(meta)}**",
            "",
            f"Command: `{meta.get('command', 'python -m fcn_fast.bench')}` "
            f"(size {meta.get('size')}, git {meta.get('git_commit')})",
            "",
            markdown_table(results),
            "",
            f"{summary(results)}. Timing: {meta.get('timing')}. Bytes: {meta.get('bytes')}. "
            f"% copy: {meta.get('copy')}. Peak memory: {meta.get('memory')}." + _load_note(meta),
            "",
        ]
    )


# ---------------------------------------------------------------------------- plot


PLOT_MISSING = (
    "--plot needs matplotlib, which is not installed here. Install it with "
    "`pip install matplotlib` (or `pip install fcn_fast[plot]`), or leave out --plot."
)


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# Bar colours and legend names per backend, the same in every panel.
_BACKEND_STYLE = {
    "reference": ("eager PyTorch (reference)", "#7f7f7f"),
    "compile": ("torch.compile", "#bcbd22"),
    "unfused": ("fcn_fast unfused ops", "#9467bd"),
    "cpu": ("fcn_fast cpu", "#1f77b4"),
    "cuda": ("fcn_fast cuda", "#2ca02c"),
    "triton": ("fcn_fast triton", "#ff7f0e"),
}
PLOT_WIDTH_PX = 1600
_DPI = 100
_TOP_IN, _PANEL_IN = 0.8, 3.6  # inches: title and legend; one row of panels


def _panels(rows: list[Result]) -> list[tuple[str, str, list[Result]]]:
    """(title, metric, rows) per panel: one per op with its % of copy bandwidth; the
    host-bound rows together in µs per call; ops without a byte count (models) in speed-up."""
    panels = []
    tiny = [r for r in rows if r.host_bound]
    for op in dict.fromkeys(r.op for r in rows if not r.host_bound):
        mine = [r for r in rows if r.op == op and not r.host_bound]
        metric = "pct_of_copy" if all(r.pct_of_copy is not None for r in mine) else "speedup"
        panels.append((op, metric, mine))
    if tiny:
        panels.append(("host overhead: tiny shapes (N1 C3 4×4)", "us", tiny))
    return panels


_METRICS = {
    "pct_of_copy": ("% of copy bandwidth (higher is better)", lambda r: r.pct_of_copy),
    "speedup": ("× faster than eager PyTorch", lambda r: r.speedup),
    "us": ("µs per call (lower is better, log)", lambda r: r.ms * 1e3),
}


def plot_results(results: list[Result], path: str, title: str = "") -> None:
    """One panel per op: each case (shape, mode, dtype) a group of bars, one bar per backend
    (eager, torch.compile, unfused, cpu/cuda/triton), with a shared legend; 1600 px wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.status == "ok" and r.ms]
    layout = _layout(_panels(rows))
    height = _TOP_IN + _PANEL_IN * max(len(layout), 1)
    fig = plt.figure(figsize=(PLOT_WIDTH_PX / _DPI, height), dpi=_DPI)
    grid = fig.add_gridspec(max(len(layout), 1), 2)
    shown = {}
    for i, line in enumerate(layout):
        for j, (name, metric, mine) in enumerate(line):
            ax = fig.add_subplot(grid[i, :] if len(line) == 1 else grid[i, j])
            shown.update(_panel(ax, name, metric, mine))
    order = [b for b in _BACKEND_STYLE if b in shown] + [
        b for b in shown if b not in _BACKEND_STYLE
    ]
    fig.suptitle(title or "fcn_fast vs plain PyTorch", fontsize=11, y=1 - 0.12 / height)
    fig.legend(
        [shown[b] for b in order],
        [_BACKEND_STYLE.get(b, (b, None))[0] for b in order],
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.35 / height),
        ncol=len(order) or 1,
        fontsize=10,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - _TOP_IN / height))
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


# A panel with more groups of bars than this gets a row of its own (full width).
_HALF_WIDTH_GROUPS = 8


def _group(metric: str, r: Result) -> str:
    """The x label a row's bar goes to: its case (or op, in the overhead panel), mode, dtype."""
    return f"{r.op if metric == 'us' else r.case}\n{r.mode} {r.dtype}"


def _layout(panels):
    """Rows of the figure: a wide panel alone, narrow ones two by two, in order."""
    lines, waiting = [], None
    for panel in panels:
        _, metric, rows = panel
        if len({_group(metric, r) for r in rows}) > _HALF_WIDTH_GROUPS:
            lines.append([panel])
        elif waiting is None:
            waiting = [panel]
            lines.append(waiting)
        else:
            waiting.append(panel)
            waiting = None
    return lines


def _panel(ax, name: str, metric: str, rows: list[Result]) -> dict:
    """Draw one panel; returns {backend: bar handle} for the legend."""
    ylabel, value = _METRICS[metric]
    group_of = functools.partial(_group, metric)
    groups = list(dict.fromkeys(map(group_of, rows)))
    known = [b for b in _BACKEND_STYLE if any(r.backend == b for r in rows)]
    backends = known + list(dict.fromkeys(r.backend for r in rows if r.backend not in known))
    width = 0.8 / max(len(backends), 1)
    handles = {}
    for b, backend in enumerate(backends):
        xs, ys = [], []
        for r in rows:
            if r.backend == backend:
                xs.append(groups.index(group_of(r)) + (b - (len(backends) - 1) / 2) * width)
                ys.append(value(r))
        color = _BACKEND_STYLE.get(backend, (backend, None))[1]
        handles[backend] = bars = ax.bar(xs, ys, width, color=color, label=backend)
        # The value on each bar: a 20x faster kernel leaves eager's bar a sliver.
        ax.bar_label(bars, [_num(y) for y in ys], rotation=90, padding=2, fontsize=6.5)
    if metric == "speedup":
        ax.axhline(1.0, color="black", linewidth=0.8)
    if metric == "us":
        ax.set_yscale("log")
        ax.set_ylim(top=max(value(r) for r in rows) * 8)  # room for the values, in log space
    ax.margins(y=0.15)  # room for the values above the tallest bars
    ax.set_title(name, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return handles


# ---------------------------------------------------------------------------- README


def newest_results(results_dir: str) -> dict[str, tuple[str, dict, list[Result]]]:
    """The newest committed results file per device type ("cpu", "cuda")."""
    newest: dict[str, tuple[str, dict, list[Result]]] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        try:
            meta, results = load_json(path)
        except (OSError, ValueError):
            continue
        device = meta.get("device", "cpu")
        if device not in newest or meta.get("date", "") > newest[device][1].get("date", ""):
            newest[device] = (path, meta, results)
    return newest


def readme_section(results_dir: str) -> str:
    newest = newest_results(results_dir)
    out = [
        "## Performance",
        "",
        "Measured, never estimated (the GPU section's predicted table, shown until a GPU run "
        "is committed, is labelled as such): generated by `python -m fcn_fast.bench readme` "
        "from the newest results files committed under `benchmarks/results/`. Every row first "
        "checked "
        "its numerics against the plain-PyTorch reference. `× ref` is the speed-up over the "
        "reference timed in the same run; `% copy` is the achieved bandwidth for the fewest "
        "bytes the op must move, as a share of a measured copy of that many bytes on the same "
        "device; `% fresh` (CPU) the same against a copy into newly allocated memory, which "
        "pays the page faults a new output pays. `× unfused` (fused heads, training step) is "
        "the speed-up over fcn_fast's unfused ops in sequence. Peak MB: memory allocated "
        "during one call beyond its inputs; `peak % ref` that as a share of the reference's. "
        "Details: `benchmarks/README.md`.",
        "",
    ]
    for device, title in (("cpu", "CPU"), ("cuda", "GPU")):
        out += [f"### {title}", ""]
        if device not in newest:
            out += [f"No {title} measurements have been committed for this version yet.", ""]
            if device == "cuda":
                out += model_predictions(results_dir)
            continue
        path, meta, results = newest[device]
        out += [f"From `{os.path.relpath(path)}`.", "", markdown_report(meta, results)]
    return "\n".join(out)


def model_predictions(results_dir: str) -> list[str]:
    """README lines: the newest static-model output's H100 predictions for the backend that
    `auto` picks, at the largest case of each op, labelled as predictions."""
    from fcn_fast._backend import GPU_PREFERENCE

    paths = sorted(
        p
        for p in glob.glob(os.path.join(results_dir, "model-sm90-*.json"))
        if not p.endswith("-before.json")
    )
    if not paths:
        return []
    with open(paths[-1]) as file:
        data = json.load(file)
    out = [
        "**Predicted, not measured**: until a GPU run is committed, these are the static sm_90 "
        f"model's predictions for an H100 SXM (`{os.path.relpath(paths[-1])}`, "
        "`python -m fcn_fast.bench model`; method and limits in docs/design.md §5.1), for the "
        "backend `auto` picks, at each op's largest case.",
        "",
        "| op | case | mode | dtype | backend | predicted ms | predicted % copy | bound "
        "| instr / element | × unfused (predicted) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    largest = {}
    for row in data["rows"]:
        if row["case"] in ("overhead", "quick") or row["dtype"] not in ("fp32", "bf16"):
            continue
        largest.setdefault(row["op"], row["case"])
        if row["case"] in ("large", "ade20k-512"):
            largest[row["op"]] = row["case"]
    for row in data["rows"]:
        auto = GPU_PREFERENCE.get(row["op"], ("cuda", "triton"))[0]
        if row["backend"] != auto or row["case"] != largest.get(row["op"]):
            continue
        if row["dtype"] not in ("fp32", "bf16"):
            continue
        h100 = row["h100"]
        unfused = h100.get("unfused_predicted_ms")
        ratio = f"{unfused / h100['predicted_ms']:.1f}" if unfused else "-"
        out.append(
            f"| {row['op']} | {row['case']} | {row['mode']} | {row['dtype']} | {row['backend']} "
            f"| {h100['predicted_ms']:.3f} | {h100['predicted_pct_copy']:.0f} | {h100['bound']} "
            f"| {row['instructions_per_element']:.1f} | {ratio} |"
        )
    return out + [""]


# ---------------------------------------------------------------------------- GPU preference

GPU_KERNELS = ("cuda", "triton")


def _passed(r: Result) -> bool:
    return r.status == "ok" and r.ms is not None and r.numerics.startswith(("OK", "reference"))


def _kernel_times(results: list[Result], op: str) -> dict[str, dict[tuple, float]]:
    """backend -> {(case, shape, dtype, mode): ms} of op's GPU kernel rows that passed."""
    times: dict[str, dict[tuple, float]] = {}
    for r in results:
        if r.op == op and r.device == "cuda" and r.backend in GPU_KERNELS and _passed(r):
            times.setdefault(r.backend, {})[(r.case, r.shape, r.dtype, r.mode)] = r.ms
    return times


def _shared_rows(times: dict[str, dict[tuple, float]]) -> set:
    return set.intersection(*(set(rows) for rows in times.values()))


def _log_mean(rows: dict[tuple, float], keys) -> float:
    return sum(math.log(rows[k]) for k in keys) / len(keys)


def gpu_preference(results: list[Result]) -> dict[str, tuple[str, ...]]:
    """Per op of a GPU run, its kernel backends fastest first: by the geometric mean of their
    times over the rows (case, dtype, mode) that every one of them measured with passing
    numerics (with one kernel measured, it alone). Only public ops: the model rows (fcn8s)
    time whole networks, whose ops each follow their own entry."""
    import fcn_fast  # here, not at the top: fcn_fast imports nothing of bench

    preference = {}
    for op in dict.fromkeys(r.op for r in results if r.device == "cuda"):
        times = _kernel_times(results, op)
        if not times or not inspect.isfunction(getattr(fcn_fast, op, None)):
            continue
        keys = _shared_rows(times)
        preference[op] = tuple(sorted(times, key=lambda b: _log_mean(times[b], keys or times[b])))
    return preference


def rows_slower_than_baselines(results: list[Result], op: str, backend: str) -> list[str]:
    """The rows where `backend` is slower than eager PyTorch or torch.compile of it, as lines."""
    best: dict[tuple, tuple[float, str]] = {}
    for r in results:
        if r.op == op and r.backend in ("reference", "compile") and _passed(r):
            key = (r.case, r.shape, r.dtype, r.mode)
            if key not in best or r.ms < best[key][0]:
                best[key] = (r.ms, r.backend)
    lines = []
    for r in results:
        key = (r.case, r.shape, r.dtype, r.mode)
        if r.op == op and r.backend == backend and _passed(r) and key in best:
            baseline_ms, baseline = best[key]
            if r.ms > baseline_ms:
                lines.append(
                    f"{r.case} {r.dtype} {r.mode}: {r.ms:.3g} ms, {baseline} {baseline_ms:.3g} ms"
                )
    return lines


def preference_report(results: list[Result]) -> str:
    """`GPU_PREFERENCE` for fcn_fast/_backend.py as measured, and the rows where the backend
    `auto` would then pick is slower than eager or torch.compile."""
    preference = gpu_preference(results)
    if not preference:
        return "No GPU rows of the cuda or triton backends with passing numerics in this file."
    out = ["GPU_PREFERENCE = {"]
    out += [f"    {op!r}: {backends!r}," for op, backends in preference.items()]
    out += ["}", ""]
    for op, backends in preference.items():
        times = _kernel_times(results, op)
        keys = _shared_rows(times)
        if len(backends) > 1 and keys:
            first, second = times[backends[0]], times[backends[1]]
            ratio = math.exp(_log_mean(first, keys) - _log_mean(second, keys))
            wins = sum(first[k] <= second[k] for k in keys)
            out.append(
                f"{op}: {backends[0]} takes {ratio:.2f}x {backends[1]}'s time (geometric mean "
                f"of {len(keys)} rows; faster in {wins})"
            )
        slower = rows_slower_than_baselines(results, op, backends[0])
        out.append(f"{op}: {backends[0]} slower than eager or compile in {len(slower)} rows")
        out += [f"    {line}" for line in slower]
    return "\n".join(out)

"""The static model's predictions beside a GPU run's measurements, per row (issue 25).

    python -m fcn_fast.bench compare RESULTS.json MODEL.json [--gpu h100|h200]
                                     [--threshold 25] [--markdown PATH]

RESULTS.json: a GPU run's results (gpu_suite.sh's results.json, or gpu_first.sh's
bandwidth.json, whose forward rows match). MODEL.json: `python -m fcn_fast.bench model
--json` (benchmarks/results/model-sm90-*.json). Rows match on (op, case, mode, dtype,
backend); the kernel rows (cuda, triton) are compared, at the GPU the run names (H200 or
else H100) unless --gpu says. Error % = (predicted - measured) / measured; a row off by more
than the threshold is flagged: the model missed something there (docs/design.md 5). Rows that
time the call itself (host-bound), failed rows and rows the model predicts 0 for are left
out and counted. Prints markdown. Exit status 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

KERNEL_BACKENDS = ("cuda", "triton")
KEY = ("op", "case", "mode", "dtype", "backend")


def gpu_of(meta: dict) -> str:
    """The model's column for the GPU a run names: h200 for an H200, else h100."""
    return "h200" if "H200" in str(meta.get("device_name", "")).upper() else "h100"


def compare(measured: list[dict], predicted: list[dict], gpu: str, threshold: float) -> dict:
    """{"rows": per matched row (key, predicted_ms, measured_ms, error_pct, flagged),
    and the counts of what was left out}."""
    model = {tuple(r[k] for k in KEY): r for r in predicted}
    rows, left_out = [], {"host-bound": 0, "failed": 0, "predicted 0": 0, "no prediction": 0}
    seen = set()
    for r in measured:
        if r.get("backend") not in KERNEL_BACKENDS:
            continue
        key = tuple(r.get(k) for k in KEY)
        if key in model:
            seen.add(key)
        if r.get("host_bound"):
            left_out["host-bound"] += 1
            continue
        if r.get("status") != "ok" or not r.get("ms"):
            left_out["failed"] += 1
            continue
        if key not in model:
            left_out["no prediction"] += 1
            continue
        p = model[key].get(gpu, {}).get("predicted_ms", model[key].get("predicted_ms"))
        if not p:
            left_out["predicted 0"] += 1
            continue
        error = 100.0 * (p - r["ms"]) / r["ms"]
        rows.append(
            {
                **dict(zip(KEY, key, strict=True)),
                "predicted_ms": p,
                "measured_ms": r["ms"],
                "error_pct": error,
                "flagged": abs(error) > threshold,
                "bound": model[key].get(gpu, {}).get("bound", model[key].get("bound")),
            }
        )
    return {"rows": rows, "left_out": left_out, "unmeasured": len(set(model) - seen)}


def markdown(result: dict, gpu: str, threshold: float, sources: tuple[str, str]) -> str:
    rows = result["rows"]
    flagged = [r for r in rows if r["flagged"]]
    lines = [
        f"# Model against measurement ({gpu.upper()})",
        "",
        f"Measured: `{sources[0]}`; predicted: `{sources[1]}` (the static sm_90 model). "
        f"Error = (predicted - measured) / measured; **off** beyond ±{threshold:g}%.",
        "",
        "| op | case | mode | dtype | backend | predicted ms | measured ms | error % | bound "
        "(model) | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['case']} | {r['mode']} | {r['dtype']} | {r['backend']} "
            f"| {r['predicted_ms']:.4g} | {r['measured_ms']:.4g} | {r['error_pct']:+.1f} "
            f"| {r['bound'] or '-'} | {'**off**' if r['flagged'] else ''} |"
        )
    median = statistics.median(abs(r["error_pct"]) for r in rows) if rows else float("nan")
    left = ", ".join(f"{v} {k}" for k, v in result["left_out"].items() if v)
    lines += [
        "",
        f"{len(rows)} rows compared, {len(flagged)} off by more than {threshold:g}% "
        f"(median |error| {median:.1f}%). Left out of the measured kernel rows: "
        f"{left or 'none'}. Model rows without a measurement: {result['unmeasured']}.",
    ]
    return "\n".join(lines) + "\n"


def _load(path: str, key: str, prog: str):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        print(f"{prog}: cannot read {path}: {error}", file=sys.stderr)
        return None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        print(f"{prog}: {path} has no '{key}' list", file=sys.stderr)
        return None
    return data


def main(argv, prog="python -m fcn_fast.bench") -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} compare",
        description="The static model's predicted times beside a GPU run's, per row.",
    )
    p.add_argument("results", metavar="RESULTS.json", help="a GPU run's results")
    p.add_argument("model", metavar="MODEL.json", help="python -m fcn_fast.bench model --json")
    p.add_argument("--gpu", choices=("h100", "h200"), help="default: the GPU the run names")
    p.add_argument("--threshold", type=float, default=25.0, help="flag beyond this error %%")
    p.add_argument("--markdown", metavar="PATH", help="also write the table here")
    args = p.parse_args(argv)
    measured = _load(args.results, "results", f"{prog} compare")
    predicted = _load(args.model, "rows", f"{prog} compare")
    if measured is None or predicted is None:
        return 2
    meta = measured.get("meta", {})
    if meta.get("device") != "cuda":
        print(
            f"{prog} compare: {args.results} was measured on {meta.get('device')!r}, "
            "not a GPU: the model predicts GPU times",
            file=sys.stderr,
        )
        return 2
    gpu = args.gpu or gpu_of(meta)
    result = compare(measured["results"], predicted["rows"], gpu, args.threshold)
    text = markdown(result, gpu, args.threshold, (args.results, args.model))
    print(text, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0

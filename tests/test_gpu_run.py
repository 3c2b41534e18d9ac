"""The GPU run's preparations, checked without a GPU (issue 25): the `gpu` marker's selection,
the preflight, the first-three-minutes measurements at tiny sizes on the CPU, the
model-vs-measured comparison, and the shell syntax of the two GPU scripts."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collect(*args: str) -> list[str]:
    """Node ids that `pytest --collect-only -q ARGS` selects (a subprocess: a fresh session)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_gpu_marker_selects_the_tests_that_run_kernels_on_a_cuda_device():
    on_cpu = [
        "tests/test_cuda_emulation.py",
        "tests/test_cuda_build.py",
        "tests/test_machine_code.py",
        "tests/test_triton_compile.py",
    ]
    files = [*on_cpu, "tests/test_resample_skip.py", "tests/test_resample_skip_api.py"]
    every = _collect(*files)
    gpu = set(_collect("-m", "gpu", *files))
    assert not [t for t in gpu if t.split("::")[0] in on_cpu]  # they run in CI, on the CPU
    resample = [t for t in every if t.startswith("tests/test_resample_skip.py::")]
    kernels = {t for t in resample if "[cuda" in t or "[triton" in t}
    assert kernels and kernels <= gpu  # every cuda and triton case of the backend fixture
    # cpu cases stay out, except of a test marked by hand (it skips its cpu case itself)
    assert {t for t in resample if "[cpu" in t} & gpu == {
        "tests/test_resample_skip.py::test_64bit_indexing[cpu]"
    }
    api = {t.split("::")[1] for t in gpu if t.startswith("tests/test_resample_skip_api.py")}
    assert api == {"test_torch_compile_triton_gpu", "test_device_mismatch"}  # marked by hand


def _load(path: str, name: str):
    """A module of benchmarks/ (not a package) by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preflight_fails_only_for_what_the_build_needs(monkeypatch, capsys):
    preflight = _load("benchmarks/preflight.py", "preflight")
    real = preflight._package
    monkeypatch.setattr(preflight, "which", lambda tool: None if tool == "ncu" else "/bin/true")
    monkeypatch.setattr(preflight, "_torch", lambda: ("2.13.0", None))
    assert preflight.main([]) == 0  # ncu missing: named, not failed
    out = capsys.readouterr().out
    verdict = out.rstrip().splitlines()[-1]
    assert "MISSING  ncu" in out and verdict.startswith("preflight: ok") and "ncu" in verdict
    assert preflight.main(["--cuda"]) == 1  # a CPU torch cannot build the CUDA kernels
    assert "FAILED: torch no-cuda" in capsys.readouterr().out
    monkeypatch.setattr(preflight, "_package", lambda n: "65.3" if n == "setuptools" else real(n))
    assert preflight.main([]) == 1
    assert "FAILED: setuptools old" in capsys.readouterr().out


def test_preflight_finds_tools_under_the_cuda_toolkit(monkeypatch, tmp_path, capsys):
    preflight = _load("benchmarks/preflight.py", "preflight")
    tool = tmp_path / "compute-sanitizer" / "compute-sanitizer"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho 'NVIDIA (R) Compute Sanitizer'; echo 'Version 2099.1'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert preflight.main(["--which", "compute-sanitizer"]) == 0
    assert capsys.readouterr().out.strip() == str(tool)
    assert preflight._tool_version("compute-sanitizer") == (str(tool), "Version 2099.1")
    assert preflight.main(["--which", "ncu"]) == 1


def _rows(path) -> list[dict]:
    import json

    with open(path) as f:
        return json.load(f)["results"]


def test_first_steps_run_on_the_cpu_at_tiny_sizes(tmp_path, capsys):
    """gpu_first.sh's measuring steps, in this process (the dry run runs them as commands)."""
    from fcn_fast.bench import first

    cpu = ["--device", "cpu", "--backends", "cpu"]
    for step in ("bandwidth", "fused", "tiny", "profile"):
        assert first.main([step, *cpu, "--json", str(tmp_path / f"{step}.json")]) == 0, step
    two = ["--device", "cpu", "--backends", "cpu,reference"]
    assert first.main(["downsample", *two, "--json", str(tmp_path / "downsample.json")]) == 0
    bandwidth = _rows(tmp_path / "bandwidth.json")
    assert [(r["op"], r["mode"]) for r in bandwidth] == [
        (op, part)
        for op in ("upsample_skip", "interpolate_add", "pixel_cross_entropy")
        for part in ("fwd", "bwd")
    ]
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["pct_of_copy"] > 0 for r in bandwidth)
    fused = _rows(tmp_path / "fused.json")
    # 5 variants x (fwd, bwd, argmax), and uint8 labels x (fwd, bwd)
    assert len(fused) == 5 * 3 + 2 and all(r["fused_ms"] and r["unfused_ms"] for r in fused)
    assert {r["variant"] for r in fused} == {
        "base", "C/2", "2x pixels", "N1", "N1 in L2", "uint8 labels"
    }  # fmt: skip
    downsample = _rows(tmp_path / "downsample.json")
    assert len(downsample) == 2 * 2 * 2 and all(r["bitwise_repeat"] for r in downsample)
    assert all("vs_cpu" in r for r in downsample if r["backend"] == "reference")
    assert len(_rows(tmp_path / "tiny.json")) == len(first.tiny_calls(torch.device("cpu")))
    capsys.readouterr()
    text = first.summary(str(tmp_path))
    for section in ("same-size copy", "unfused chain", "follows", "Strong downsampling"):
        assert section in text
    assert "Tiny calls: 22 ok, 0 failed" in text


def test_first_fails_the_rows_of_a_wrong_kernel(tmp_path, monkeypatch):
    import fcn_fast
    from fcn_fast.bench import first

    real = fcn_fast.upsample_skip

    def off_by_one(*args, backend="auto", **kwargs):
        out = real(*args, backend=backend, **kwargs)
        return out if backend == "reference" else out + 1

    monkeypatch.setattr(fcn_fast, "upsample_skip", off_by_one)
    path = tmp_path / "bandwidth.json"
    assert first.main(["bandwidth", "--device", "cpu", "--backends", "cpu", "--json", str(path)])
    failed = [r for r in _rows(path) if r["status"] != "ok"]
    assert {(r["op"], r["mode"]) for r in failed} == {("upsample_skip", "fwd")}
    assert failed[0]["reason"].startswith("numerics") and "ms" not in failed[0]


def test_fused_verdicts_say_whether_time_follows_work_or_bytes():
    from fcn_fast.bench.first import fused_verdicts

    def row(backend, variant, ms, work, nbytes, flush=True):
        return {"status": "ok", "backend": backend, "dtype": "fp32", "mode": "fwd",
                "variant": variant, "fused_ms": ms, "work": work, "bytes": nbytes,
                "flush": flush}  # fmt: skip

    rows = [
        row("issue", "base", 2.0, 100, 50),
        row("issue", "C/2", 1.05, 50, 48),  # half the work, the same bytes: half the time
        row("issue", "N2", 0.20, 10, 5),
        row("issue", "N2 in L2", 0.19, 10, 5, flush=False),
        row("issue", "uint8 labels", 1.9, 100, 20),  # fewer bytes, the same work
        row("memory", "base", 2.0, 100, 50),
        row("memory", "C/2", 1.9, 50, 48),
    ]
    issue, memory = fused_verdicts(rows)
    assert issue["follows"] == "work" and memory["follows"] == "bytes"
    assert issue["C/2"] == {"time": 1.05 / 2.0, "work": 0.5, "bytes": 48 / 50}
    assert issue["l2_over_dram"] == 0.19 / 0.20 and "l2_over_dram" not in memory
    assert issue["uint8 labels"] == {"time": 1.9 / 2.0, "work": 1.0, "bytes": 20 / 50}
    assert "uint8 labels" not in memory


def test_first_times_the_gpu_sweeps_large_cases():
    from fcn_fast.bench import cases, first

    registered = {c.key: c.shape for c in cases.CASES if "cuda" in c.devices}
    streaming = first.streaming_cases("large")
    assert [c.key for c in streaming] == [
        "upsample_skip/large", "interpolate_add/large", "pixel_cross_entropy/large"
    ]  # fmt: skip
    n, c, coarse, factor, crop, out = first.HEADS["large"]
    head = cases.upsample_cross_entropy_case("large", n, c, coarse, factor, crop=crop, out=out,
                                             sizes=first.NEVER)  # fmt: skip
    assert head.shape == registered["upsample_cross_entropy/large"]


def test_priority_order_runs_fused_heads_and_models_first_and_compile_last(capsys):
    from fcn_fast.bench import cases, cli

    runs = cases.select("default", "cuda")
    ordered = sorted(runs, key=cases.priority)
    ranks = [cases.priority(r) for r in ordered]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 2
    assert {r[0].op for r in ordered if cases.priority(r) == 0} == {
        "upsample_cross_entropy", "interpolate_cross_entropy", "upsample_argmax",
        "interpolate_argmax", "fcn8s",
    }  # fmt: skip
    assert [r[1] for r in ordered[-7:]] == ["compile"] * 7
    assert cli.main(["--device", "cuda", "--list", "--order", "priority"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("upsample_cross_entropy large") and lines[-1].endswith(" compile")


def test_gpu_scripts_parse_and_name_tests_that_exist():
    """bash -n on both scripts (CI also runs them: .ci/run's dry runs), and the node ids
    gpu_first.sh hands pytest are collected (pytest would exit 4 on the GPU otherwise)."""
    import re

    for script in ("benchmarks/gpu_first.sh", "benchmarks/gpu_suite.sh"):
        result = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    with open(os.path.join(ROOT, "benchmarks/gpu_first.sh")) as f:
        ids = re.findall(r'"(tests/[\w/]+\.py::\w+\[\w+\])"', f.read())
    assert len(ids) == 2 and set(_collect(*ids)) == set(ids)


def test_compare_puts_the_models_prediction_beside_the_measurement(tmp_path, capsys):
    import json

    from fcn_fast.bench import cli

    def model_row(op, case, mode, backend, h100, h200, dtype="fp32"):
        return {"op": op, "case": case, "mode": mode, "dtype": dtype, "backend": backend,
                "predicted_ms": h100, "bound": "memory",
                "h100": {"predicted_ms": h100, "bound": "memory"},
                "h200": {"predicted_ms": h200, "bound": "latency"}}  # fmt: skip

    def measured(op, case, mode, backend, ms, status="ok", **extra):
        return {"op": op, "case": case, "mode": mode, "dtype": "fp32", "backend": backend,
                "ms": ms, "status": status, **extra}  # fmt: skip

    model = {"meta": {}, "rows": [
        model_row("upsample_skip", "large", "fwd", "cuda", 0.40, 0.30),
        model_row("pixel_cross_entropy", "large", "fwd", "triton", 1.50, 1.00),
        model_row("pixel_cross_entropy", "overhead", "fwd", "cuda", 0.0, 0.0),
        model_row("interpolate_add", "large", "fwd", "cuda", 2.0, 1.5),  # not measured
    ]}  # fmt: skip
    results = {"meta": {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}, "results": [
        measured("upsample_skip", "large", "fwd", "reference", 7.0),  # a baseline: not compared
        measured("upsample_skip", "large", "fwd", "cuda", 0.50),
        measured("pixel_cross_entropy", "large", "fwd", "triton", 1.00),
        measured("pixel_cross_entropy", "overhead", "fwd", "cuda", 0.02, host_bound=True),
        measured("pixel_cross_entropy", "large", "fwd", "cuda", None, status="failed"),
        measured("fcn8s", "vgg16-512", "train", "cuda", 46.0),
    ]}  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(model))
    (tmp_path / "results.json").write_text(json.dumps(results))
    files = [str(tmp_path / "results.json"), str(tmp_path / "model.json")]
    md = tmp_path / "compare.md"
    assert cli.main(["compare", *files, "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert out == md.read_text() and out.startswith("# Model against measurement (H100)")
    table = [line for line in out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert table == [
        "| upsample_skip | large | fwd | fp32 | cuda | 0.4 | 0.5 | -20.0 | memory |  |",
        "| pixel_cross_entropy | large | fwd | fp32 | triton | 1.5 | 1 | +50.0 | memory "
        "| **off** |",
    ]
    assert "2 rows compared, 1 off by more than 25% (median |error| 35.0%)" in out
    assert "1 host-bound, 1 failed, 1 no prediction" in out
    assert "Model rows without a measurement: 1." in out  # interpolate_add
    # An H200 run reads the model's H200 column: 0.30 against 0.50 is off.
    results["meta"]["device_name"] = "NVIDIA H200"
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert cli.main(["compare", *files, "--threshold", "30"]) == 0
    out = capsys.readouterr().out
    assert (
        "| upsample_skip | large | fwd | fp32 | cuda | 0.3 | 0.5 | -40.0 | latency | **off** |"
        in out
    )
    results["meta"]["device"] = "cpu"
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert cli.main(["compare", *files]) == 2
    assert "not a GPU" in capsys.readouterr().err

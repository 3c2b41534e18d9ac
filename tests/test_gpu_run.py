"""The GPU run's preparations, checked without a GPU (issue 25): the `gpu` marker's selection,
the preflight, the first-three-minutes measurements at tiny sizes on the CPU, the
model-vs-measured comparison, and the shell syntax of the two GPU scripts."""

from __future__ import annotations

import os
import subprocess
import sys

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

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

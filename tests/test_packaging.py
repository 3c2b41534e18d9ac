"""fcn_fast installs as a package, not only in place: `python -m build --sdist` gives an sdist
that carries every source and header, and `pip install` of it into a fresh virtual
environment (torch preinstalled, --no-build-isolation as the README says) builds
fcn_fast._C from the clean unpack and runs an op.

Slow (it compiles the extension once more, ~2 minutes on 2 cores), so it runs once, here.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build", reason="the `build` package (test extra) makes the sdist")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ROOT])
    (path,) = glob.glob(str(out / "fcn_fast-*.tar.gz"))
    return path


def test_sdist_carries_every_source_and_header(sdist):
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    sources = [
        os.path.relpath(path, ROOT)
        for pattern in ("*.h", "*.cuh", "*.cu", "*.cpp")
        for path in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True)
    ]
    assert sources and not [s for s in sources if s not in names], "missing from the sdist"
    for required in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "docs/design.md"):
        assert required in names, required


def test_sdist_installs_into_a_fresh_venv_and_runs(sdist, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first and pinned to the running one (its CPU wheel is on this machine's disk).
    run([*pip, f"torch=={torch.__version__.split('+')[0]}", "numpy", "setuptools>=77", "wheel"])
    env = {**os.environ, "FCN_FAST_CUDA": "0", "MAX_JOBS": "2"}
    run([*pip, "--no-build-isolation", "--no-deps", sdist], env=env)
    check = (
        "import torch, fcn_fast, fcn_fast._C\n"
        "x = torch.randn(1, 2, 3, 3, dtype=torch.float64)\n"
        "got = fcn_fast.upsample_skip(x, factor=2, backend='cpu')\n"
        "want = fcn_fast.upsample_skip(x, factor=2, backend='reference')\n"
        "assert torch.allclose(got, want), (got - want).abs().max()\n"
        "print(fcn_fast.__file__)\n"
    )
    # Run outside the checkout, so that the installed package is the one imported.
    result = run([python, "-c", check], cwd=str(tmp_path))
    assert str(venv) in result.stdout, result.stdout

"""CUDA sources compile here even without a GPU (docs/design.md 3.3).

Every csrc/cuda/*.cu is compiled with `nvcc -c` for sm_80 and sm_90; every
csrc/cuda/*_binding.cpp (the ATen side, normally built only against a CUDA
torch) is syntax-checked with the host compiler against this torch's headers.
"""

import glob
import os
import shutil
import subprocess

import pytest
import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
BINDINGS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_binding.cpp")))
NVCC = shutil.which("nvcc") or (
    os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
)
needs_nvcc = pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="nvcc not found")


def test_there_are_cuda_sources():
    assert CU_FILES and BINDINGS


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", CU_FILES, ids=os.path.basename)
def test_nvcc_compiles(source, arch, tmp_path):
    command = [
        NVCC,
        "-c",
        "-std=c++17",
        "-O3",
        f"-arch={arch}",
        "-I",
        os.path.join(ROOT, "csrc", "include"),
        source,
        "-o",
        str(tmp_path / "k.o"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


def _cuda_include_dir():
    real = os.path.realpath(NVCC)
    with open(real, "rb") as file:
        text = file.read(4096)
    if text.startswith(b"#!"):  # a wrapper script: find the toolkit it calls
        for token in text.decode(errors="replace").split():
            if token.endswith("/bin/nvcc"):
                real = token
    return os.path.join(os.path.dirname(os.path.dirname(real)), "include")


@needs_nvcc
@pytest.mark.parametrize("source", BINDINGS, ids=os.path.basename)
def test_binding_syntax(source, tmp_path):
    cuda_include = _cuda_include_dir()
    if not os.path.exists(os.path.join(cuda_include, "cuda_runtime_api.h")):
        pytest.skip(f"no CUDA headers at {cuda_include}")
    # A CPU build of torch ships the c10/cuda headers but not this generated one.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [
        str(tmp_path),
        *cpp_extension.include_paths(),
        cuda_include,
        os.path.join(ROOT, "csrc", "include"),
    ]
    command = ["g++", "-std=c++20", "-fsyntax-only", "-Wall"]
    command += [f"-I{path}" for path in includes] + [source]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr

"""Builds fcn_fast._C: the C++ CPU kernels always, the CUDA kernels when possible.

FCN_FAST_CUDA=1 forces the CUDA build (and fails loudly if it cannot), FCN_FAST_CUDA=0
skips it; unset, CUDA kernels are built when torch is a CUDA build and nvcc is found.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "fcn_fast builds its extension against the torch you already have.\n"
        "Install torch first (e.g. pip install torch==2.13.0), then:\n"
        "    pip install --no-build-isolation -e .\n"
        "(--no-build-isolation keeps pip from fetching a second, multi-GB torch to build with.)"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda():
    forced = os.environ.get("FCN_FAST_CUDA")
    if forced not in (None, "", "0", "1"):
        sys.exit(f"FCN_FAST_CUDA must be 0 or 1, got {forced!r}")
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME or "", "bin")) is None:
        reasons.append("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    if forced == "0":
        print("fcn_fast: FCN_FAST_CUDA=0, building CPU kernels only")
        return False
    if reasons:
        if forced == "1":
            sys.exit(
                "fcn_fast: FCN_FAST_CUDA=1 but the CUDA build cannot run: " + "; ".join(reasons)
            )
        print("fcn_fast: building CPU kernels only (" + "; ".join(reasons) + ")")
        return False
    return True


CPU_SOURCES = _rel("csrc/ops/*.cpp") + _rel("csrc/cpu/*.cpp")
CUDA_SOURCES = _rel("csrc/cuda/*.cpp") + _rel("csrc/cuda/*.cu")
# The C++ standard is whatever torch requires (BuildExtension sets it). at::parallel_for
# is header code built on `#pragma omp parallel`: without -fopenmp it silently runs on
# one thread. The GOMP symbols resolve against the OpenMP runtime torch already loads.
CXX_FLAGS = ["-O3"] + (["-fopenmp"] if sys.platform.startswith("linux") else [])
INCLUDE_DIRS = [os.path.join(ROOT, "csrc", "include")]


def _cpu_extension():
    return CppExtension(
        "fcn_fast._C",
        CPU_SOURCES,
        include_dirs=INCLUDE_DIRS,
        extra_compile_args={"cxx": CXX_FLAGS},
    )


def _cuda_extension():
    return CUDAExtension(
        "fcn_fast._C",
        CPU_SOURCES + CUDA_SOURCES,
        include_dirs=INCLUDE_DIRS,
        define_macros=[("FCN_FAST_WITH_CUDA", "1")],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-lineinfo"]},
    )


class BuildWithCpuFallback(BuildExtension):
    """An optional CUDA build that fails says why and falls back to the CPU kernels."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            if os.environ.get("FCN_FAST_CUDA") == "1" or not any(
                s.endswith(".cu") for s in ext.sources
            ):
                raise
            print(f"fcn_fast: the CUDA build failed ({error}); building CPU kernels only")
            cpu = _cpu_extension()
            ext.sources, ext.define_macros = cpu.sources, cpu.define_macros
            ext.extra_compile_args, ext.libraries = cpu.extra_compile_args, cpu.libraries
            ext.library_dirs, ext.extra_link_args = cpu.library_dirs, cpu.extra_link_args
            super().build_extension(ext)


setup(
    ext_modules=[_cuda_extension() if _want_cuda() else _cpu_extension()],
    cmdclass={"build_ext": BuildWithCpuFallback},
)

"""Roofline sanity of the CUDA kernels from their machine code, without a GPU (issue 8 item 5).

Each csrc/cuda/*.cu is compiled once to an sm_90 cubin (the static model's, fcn_fast.bench.sass)
and disassembled (cuobjdump -sass).
For every kernel that touches every element (all but the small tap-table kernel), in each
float32 / float16 / bfloat16 instantiation:
* no fp64 instruction (DADD, DMUL, DFMA, DSETP, ..., or an .F64 conversion): the index math
  lives in the table kernel, which may use fp64;
* no 64-bit integer division (its routine starts from an I2F.U64.RP / I2F.S64 reciprocal
  seed; 32-bit divisions outside the loops are fine);
* no local-memory traffic (LDL / STL: spilled registers).
And the forward kernels' vector instantiations (16 bytes per thread, 32-bit indices) store
with 128-bit global stores (STG.E.128). The float64 instantiations are exempt from the fp64
rule (their data is fp64). The findings are printed as a table, and repeated in any failure.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest
import torch.utils.cpp_extension as cpp_extension

from fcn_fast.bench import sass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc") or (
    os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
)

TABLE_KERNELS = {"resample_tables_kernel"}
# Forward kernels and the template argument that is the per-thread vector width (elements).
# Not the fused heads' forward and argmax: a thread per fine column, so a warp's stores of lse
# and loss (labels, confidence) fill whole lines, and a pixel's store is 1 instruction of its
# C-class loop.
FORWARD_KERNELS = {
    "resample_skip_forward_kernel": 0,
    "loss_forward_runs_kernel": 0,
}
ELEMENT_BYTES = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2}
FP64_OPCODES = {"DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA"}


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    candidates = []
    if NVCC:
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(NVCC)), "cuobjdump"))
    if cpp_extension.CUDA_HOME:
        candidates.append(os.path.join(cpp_extension.CUDA_HOME, "bin", "cuobjdump"))
    spec = importlib.util.find_spec("triton")  # Triton ships the CUDA binary tools
    if spec is not None and spec.submodule_search_locations:
        base = list(spec.submodule_search_locations)[0]
        candidates.append(os.path.join(base, "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in candidates if os.path.exists(c)), None)


CUOBJDUMP = _cuobjdump()
CXXFILT = shutil.which("c++filt")
pytestmark = pytest.mark.skipif(
    NVCC is None or CUOBJDUMP is None or CXXFILT is None,
    reason="needs nvcc, cuobjdump (CUDA toolkit or Triton) and c++filt",
)


@dataclass
class Kernel:
    name: str  # e.g. resample_skip_forward_kernel
    args: list[str]  # template arguments
    source: str
    opcodes: list[str] = field(default_factory=list)

    def count(self, predicate) -> int:
        return sum(1 for op in self.opcodes if predicate(op))

    @property
    def fp64(self) -> int:
        return self.count(
            lambda op: op.split(".")[0] in FP64_OPCODES or ".F64" in op or "64H" in op
        )

    @property
    def div64(self) -> int:
        return self.count(lambda op: re.match(r"I2F\.(U|S)64", op) is not None)

    @property
    def local(self) -> int:
        return self.count(lambda op: op.startswith(("LDL", "STL")))

    @property
    def stg128(self) -> int:
        return self.count(lambda op: op.startswith("STG.E.128"))

    @property
    def ldg128(self) -> int:
        return self.count(lambda op: op.startswith("LDG.E.128") or op.startswith("LDG.E.ENL2.256"))

    @property
    def element(self) -> str:
        return next((a for a in self.args if a in ELEMENT_BYTES), "?")

    @property
    def index64(self) -> bool:
        # The index type is the last integer type argument (a label type, int64 "long" too,
        # comes before it).
        ints = [a for a in self.args if a in ("int", "long", "long long")]
        return bool(ints) and ints[-1] != "int"

    def label(self) -> str:
        return f"{self.name}<{', '.join(self.args)}>"


def _template_args(demangled: str) -> tuple[str, list[str]]:
    head = demangled.replace("(anonymous namespace)::", "").replace("fcn_fast::", "")
    head = head.split("(", 1)[0]
    head = head.removeprefix("void ").strip()
    if "<" not in head:
        return head, []
    name, rest = head.split("<", 1)
    args = [a.strip() for a in rest.rsplit(">", 1)[0].split(",")]
    return name.strip(), args


def _disassemble(cubins) -> list[Kernel]:
    kernels = []
    for cubin in cubins:
        source = os.path.basename(cubin).removesuffix(".cubin")
        listing = subprocess.run(
            [CUOBJDUMP, "-sass", cubin], capture_output=True, text=True, check=True
        ).stdout
        current = []
        mangled = []
        for line in listing.splitlines():
            match = re.search(r"Function : (\S+)", line)
            if match:
                mangled.append(match.group(1))
                current = []
                kernels.append(Kernel("", [], source, current))
                continue
            match = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
            if match and kernels:
                current.append(match.group(1))
        demangled = subprocess.run(
            [CXXFILT], input="\n".join(mangled), capture_output=True, text=True, check=True
        ).stdout.splitlines()
        for kernel, name in zip(kernels[len(kernels) - len(mangled) :], demangled):
            kernel.name, kernel.args = _template_args(name)
    return kernels


@pytest.fixture(scope="module")
def kernels():
    # The static model's cubins (nvcc -cubin -O3 -arch=sm_90, cached by source hash): the
    # label-typed loss kernels take minutes to compile, so the model's tests reuse them.
    found = _disassemble(sass.cuda_cubins("sm_90"))
    print("\n" + report(found))
    return found


def report(kernels) -> str:
    lines = [
        f"{'kernel':72s} {'STG.128':>7s} {'LDG.128':>7s} {'fp64':>5s} {'div64':>5s} {'LDL/STL':>7s}"
    ]
    for k in kernels:
        lines.append(
            f"{k.label():72s} {k.stg128:7d} {k.ldg128:7d} {k.fp64:5d} {k.div64:5d} {k.local:7d}"
        )
    return "\n".join(lines)


def element_kernels(kernels):
    return [k for k in kernels if k.name not in TABLE_KERNELS]


def test_every_source_has_kernels(kernels):
    sources = {k.source for k in kernels}
    assert sources == {os.path.basename(s) for s in CU_FILES}, report(kernels)
    assert any(k.name in TABLE_KERNELS for k in kernels)


def test_no_fp64_in_element_kernels(kernels):
    bad = [k for k in element_kernels(kernels) if k.element != "double" and k.fp64]
    assert not bad, "fp64 instructions in:\n" + report(bad)


def test_no_64bit_integer_division(kernels):
    bad = [k for k in element_kernels(kernels) if k.div64]
    assert not bad, "64-bit integer division in:\n" + report(bad)


def test_no_local_memory_spills(kernels):
    bad = [k for k in element_kernels(kernels) if k.element != "double" and k.local]
    assert not bad, "local memory (spilled registers) in:\n" + report(bad)


def test_forward_kernels_store_16_bytes(kernels):
    vector = []
    for k in kernels:
        if k.name not in FORWARD_KERNELS or k.index64 or k.element == "?":
            continue
        width = int(k.args[FORWARD_KERNELS[k.name]])
        if width * ELEMENT_BYTES[k.element] >= 16 or k.name.startswith("fused"):
            vector.append(k)
    assert vector, report(kernels)
    names = {k.name for k in vector}
    assert names == set(FORWARD_KERNELS), report(kernels)
    bad = [k for k in vector if k.stg128 == 0]
    assert not bad, "no STG.E.128 in the vector forward kernels:\n" + report(bad)

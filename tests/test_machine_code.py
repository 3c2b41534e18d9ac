"""Roofline sanity of the CUDA kernels from their machine code, without a GPU (issue 8 item 5).

Each csrc/cuda/*.cu is compiled once to an sm_90 cubin and disassembled (cuobjdump -sass) by
the static model's fcn_fast.bench.sass, whose kernels this test reads.
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
import os
import re
from dataclasses import dataclass, field

import pytest

from fcn_fast.bench import sass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))

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


pytestmark = pytest.mark.skipif(
    bool(sass.missing_tools()),
    reason=f"needs {', '.join(sass.missing_tools())} (nvcc, cuobjdump from the CUDA toolkit or "
    "Triton, c++filt)",
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


@pytest.fixture(scope="module")
def kernels():
    # The static model's cubins (nvcc -cubin -O3 -arch=sm_90, cached by source hash): the
    # label-typed loss kernels take minutes to compile, so the model's tests reuse them.
    found = [
        Kernel(f.name, f.args, f.source, [i.op for i in f.instrs])
        for f in sass.cuda_functions("sm_90")
    ]
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

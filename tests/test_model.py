"""The static sm_90 model (fcn_fast/bench/model.py, sass.py): its SASS reading on hand-made
machine code, its occupancy arithmetic, and the model run on the kernels as they are, which
must meet the GPU-model issue's targets and stay within each kernel's committed budget
(benchmarks/results/model-sm90-*.json). Everything here is a prediction: no GPU runs."""

import glob
import json
import os
import subprocess
import sys

import pytest

from fcn_fast.bench import model, sass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _word(stall=1, write_sb=7, read_sb=7, wait=0):
    """The second 64-bit word of a Hopper instruction: its scheduling controls at bit 41."""
    control = stall | 0 << 4 | write_sb << 5 | read_sb << 8 | wait << 11
    return f"/* 0x{control << 41:016x} */"


def _sass(lines):
    """cuobjdump -sass text for (address, instruction, controls) lines."""
    out = ["        Function : _Z6kernelPf"]
    for addr, text, controls in lines:
        out.append(f"        /*{addr:04x}*/                   {text} ;   /* 0x0000000000000000 */")
        out.append(f"                                                      {_word(**controls)}")
    return "\n".join(out)


# A loop of two 16-byte loads (scoreboards 0 and 1) whose results are waited on after both
# were issued, then an exit and the self-branch that pads every function.
LOOP = _sass(
    [
        (0x00, "MOV R1, c[0x0][0x28]", {}),
        (0x10, "LDG.E.128 R4, desc[UR4][R2.64]", {"write_sb": 0}),
        (0x20, "LDG.E.128 R8, desc[UR4][R2.64+0x10]", {"write_sb": 1}),
        (0x30, "FADD R0, R4, R5", {"wait": 0b01}),
        (0x40, "FADD R0, R8, R0", {"wait": 0b10, "stall": 4}),
        (0x50, "@P0 BRA 0x10", {}),
        (0x60, "EXIT", {}),
        (0x70, "BRA 0x70", {}),
    ]
)


def test_parse_controls_and_loop():
    (f,) = sass.parse_sass(LOOP)
    assert [i.base for i in f.instrs] == ["MOV", "LDG", "LDG", "FADD", "FADD", "BRA", "EXIT", "BRA"]
    assert (f.instrs[1].write_sb, f.instrs[3].wait, f.instrs[4].stall) == (0, 0b01, 4)
    assert f.instrs[4].wait == 0b10 and f.instrs[0].write_sb == 7
    assert f.instrs[1].global_load_bytes == 16 and f.instrs[3].global_load_bytes == 0
    (loop,) = sass.loops(f)  # the padding self-branch is no loop
    assert (loop.head, loop.back, loop.innermost) == (1, 5, True)
    trip = sass.trip(f, loop)
    assert trip.count == 5 and trip.load_bytes == 32
    assert trip.load_bytes_in_flight() == 32  # both loads issued before the first wait
    assert sass.around_loop(f, loop) == 2  # MOV before, EXIT after
    assert sass.exit_path(f) == 7


def test_in_flight_counts_only_unwaited_loads():
    # Each load waited on at once: one 16-byte load in flight at a time.
    serial = _sass(
        [
            (0x00, "LDG.E.128 R4, desc[UR4][R2.64]", {"write_sb": 0}),
            (0x10, "FADD R0, R4, R5", {"wait": 0b01}),
            (0x20, "LDG.E.128 R8, desc[UR4][R2.64+0x10]", {"write_sb": 0}),
            (0x30, "FADD R0, R8, R0", {"wait": 0b01}),
            (0x40, "@P0 BRA 0x0", {}),
            (0x50, "EXIT", {}),
        ]
    )
    (f,) = sass.parse_sass(serial)
    (loop,) = sass.loops(f)
    assert sass.trip(f, loop).load_bytes_in_flight() == 16


def test_loop_that_returns_from_inside():
    # Triton's loops: the exit is inside the body and the back edge is the last branch.
    inside = _sass(
        [
            (0x00, "MOV R1, c[0x0][0x28]", {}),
            (0x10, "STG.E.128 desc[UR4][R2.64], R4", {}),
            (0x20, "@!P0 EXIT", {}),
            (0x30, "BRA 0x10", {}),
            (0x40, "BRA 0x40", {}),
        ]
    )
    (f,) = sass.parse_sass(inside)
    (loop,) = sass.loops(f)
    assert sass.trip(f, loop).store_bytes == 16
    assert sass.around_loop(f, loop) == 2  # MOV, and the EXIT inside the loop


def test_occupancy():
    h = model.H100
    assert model.occupancy(h, 64, 256, 0) == 1024  # 4 blocks of 256 by registers
    assert model.occupancy(h, 128, 256, 0) == 512
    assert model.occupancy(h, 32, 256, 0) == 2048  # 64 warps: the SM's limit
    assert model.occupancy(h, 64, 256, 100 * 1024) == 512  # 2 blocks by shared memory
    assert model.occupancy(h, 255, 1024, 0) == 0  # a block that cannot be resident


# Targets the committed kernels miss, and by how much at most (value, limit): the note on
# the GPU-model issue says why. A kernel that misses by more, or misses another target,
# fails here.
KNOWN_MISSES = {
    ("upsample_cross_entropy/large fwdbwd bf16 cuda", "x faster than eager (its byte floor)"): 9.9,
}
ROW_FIELDS = (
    "op", "case", "mode", "dtype", "backend", "predicted_ms", "predicted_pct_copy",
    "instructions_per_element", "registers", "warps_per_sm", "bytes_in_flight_per_sm", "bound",
)  # fmt: skip


def _committed() -> dict:
    paths = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "model-sm90-*.json")))
    paths = [p for p in paths if not p.endswith("-before.json")]
    assert paths, "no committed model output (python -m fcn_fast.bench model --json ...)"
    with open(paths[-1]) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    missing = sass.missing_tools()
    if missing:
        pytest.skip(f"the model needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("model") / "model.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile Triton
    subprocess.run(
        [sys.executable, "-m", "fcn_fast.bench", "model", "--json", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=1200,
    )
    with open(out) as file:
        return json.load(file)


def test_committed_output_has_every_field():
    data = _committed()
    assert data["rows"] and data["targets"]
    for row in data["rows"]:
        assert all(field in row for field in ROW_FIELDS), row["op"]
        assert row["h100"]["predicted_ms"] > 0 and row["h200"]["predicted_ms"] > 0
    assert "predicted" in data["meta"]["note"] and "not measured" in data["meta"]["note"]


def test_targets_met(predicted):
    failed = {}
    for target in predicted["targets"]:
        if target["auto_backend"] and not target["passed"]:
            failed[(target["row"], target["target"])] = (target["value"], target["limit"])
    unexpected = {k: v for k, v in failed.items() if k not in KNOWN_MISSES}
    assert not unexpected, f"targets missed: {unexpected}"
    for key, (value, limit) in failed.items():
        bound = KNOWN_MISSES[key]
        worse = value < bound if limit > bound else value > bound
        assert not worse, f"{key}: {value} (known miss, at most {bound}; target {limit})"


def test_kernels_within_committed_budget(predicted):
    """Per kernel of each committed row: registers, warps per SM and instructions per element
    no worse than committed (5% slack for the instruction count's code-layout noise)."""
    committed = {
        (r["op"], r["case"], r["mode"], r["dtype"], r["backend"]): r for r in _committed()["rows"]
    }
    worse = []
    compared = 0
    for row in predicted["rows"]:
        key = (row["op"], row["case"], row["mode"], row["dtype"], row["backend"])
        if key not in committed:
            continue  # a new row: the targets test covers it
        budget = {k["kernel"]: k for k in committed[key]["kernels"]}
        for k in row["kernels"]:
            b = budget.get(k["kernel"])
            if b is None:
                continue
            compared += 1
            if (
                k["registers"] > b["registers"]
                or k["warps_per_sm"] < b["warps_per_sm"]
                or k["instructions_per_element"] > 1.05 * b["instructions_per_element"] + 0.1
            ):
                worse.append(f"{key} {k['kernel']}: {k} (budget {b})")
    assert compared > 50
    assert not worse, "\n".join(worse[:10])

"""sm_90 machine code of fcn_fast's kernels, read without a GPU: the facts the static model
(fcn_fast.bench.model) predicts from.

* CUDA: each csrc/cuda/*.cu is compiled with `nvcc -cubin -arch=sm_90` (cached by the hash of
  the sources); Triton: a launch is compiled for sm_90 by triton.compile (its cubin).
* `cuobjdump -sass` gives the instructions, each with its 128-bit encoding, whose top bits are
  the scheduling controls (Volta and later): stall cycles, the scoreboard a variable-latency
  instruction (a global load, say) writes, and the scoreboards an instruction waits on. So the
  loads in flight are read off the code, not guessed: a load is outstanding from its issue to
  the first instruction that waits on its scoreboard.
* `cuobjdump --dump-resource-usage` gives registers, shared memory and spills per function.

A loop is a backward branch. Its steady state is one trip along the shortest path from its
head to its back edge (a branch that skips a rare path, a new maximum say, is taken); the
model counts the instructions of that trip, and the elements it handles, to get instructions
per element.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(tempfile.gettempdir(), "fcn_fast_sass")

# Bytes moved by a global load or store, from its width modifier (32-bit without one).
_WIDTH_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16, "ENL2.256": 32}


# --------------------------------------------------------------------------------- tools


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), name))
    spec = importlib.util.find_spec("triton")  # Triton ships cuobjdump and ptxas
    if spec is not None and spec.submodule_search_locations:
        base = list(spec.submodule_search_locations)[0]
        candidates.append(os.path.join(base, "backends", "nvidia", "bin", name))
    return next((c for c in candidates if os.path.exists(c)), None)


def missing_tools() -> list[str]:
    """The tools this module needs that are not found (nvcc, cuobjdump, c++filt)."""
    return [t for t in ("nvcc", "cuobjdump", "c++filt") if _tool(t) is None]


# --------------------------------------------------------------------------------- parsing


@dataclasses.dataclass
class Instr:
    addr: int
    pred: str  # "@P0", "@!P1" or ""
    op: str  # opcode with modifiers, e.g. LDG.E.128.CONSTANT
    operands: str
    stall: int
    write_sb: int  # scoreboard this instruction's result sets (7: none)
    read_sb: int  # scoreboard guarding its source registers (7: none)
    wait: int  # mask of scoreboards waited on before issue

    @property
    def base(self) -> str:
        return self.op.split(".", 1)[0]

    @property
    def target(self) -> int | None:
        """The address a BRA jumps to (None for other instructions)."""
        if self.base != "BRA":
            return None
        match = re.search(r"0x([0-9a-f]+)\s*$", self.operands)
        return int(match.group(1), 16) if match else None

    def _width(self) -> int:
        mods = self.op.split(".")[1:]
        if "ENL2" in mods:
            return 32
        for m in mods:
            if m in _WIDTH_BYTES:
                return _WIDTH_BYTES[m]
        return 4

    @property
    def global_load_bytes(self) -> int:
        """Bytes a global load reads (LDG; LDGSTS, cp.async, too)."""
        return self._width() if self.base in ("LDG", "LDGSTS") else 0

    @property
    def global_store_bytes(self) -> int:
        return self._width() if self.base in ("STG", "RED", "ATOMG") else 0


@dataclasses.dataclass
class Function:
    mangled: str
    name: str  # demangled, without namespaces and arguments
    args: list[str]  # template arguments
    instrs: list[Instr]
    registers: int = 0
    shared: int = 0  # static shared memory (bytes)
    local: int = 0  # spill bytes per thread

    def label(self) -> str:
        return f"{self.name}<{', '.join(self.args)}>" if self.args else self.name


_LINE = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);\s*/\*\s*0x([0-9a-f]{16})\s*\*/"
)
_CONTROL = re.compile(r"^\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")


def parse_sass(text: str) -> list[Function]:
    """Functions of `cuobjdump -sass` output (names mangled; demangle() fills them in)."""
    functions: list[Function] = []
    pending = None
    for line in text.splitlines():
        match = re.search(r"Function : (\S+)", line)
        if match:
            functions.append(Function(match.group(1), "", [], []))
            pending = None
            continue
        match = _LINE.search(line)
        if match and functions:
            addr, pred, op, operands, _low = match.groups()
            pending = (int(addr, 16), (pred or "").strip(), op, operands.strip())
            continue
        match = _CONTROL.match(line)
        if match and pending is not None:
            control = int(match.group(1), 16) >> 41
            addr, pred, op, operands = pending
            functions[-1].instrs.append(
                Instr(
                    addr,
                    pred,
                    op,
                    operands,
                    stall=control & 15,
                    write_sb=(control >> 5) & 7,
                    read_sb=(control >> 8) & 7,
                    wait=(control >> 11) & 63,
                )
            )
            pending = None
    return functions


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    usage, current = {}, None
    for line in text.splitlines():
        match = re.search(r"Function (\S+):", line)
        if match:
            current = match.group(1)
            continue
        if current and "REG:" in line:
            usage[current] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d\])?):(\d+)", line)}
            current = None
    return usage


def _template_args(demangled: str) -> tuple[str, list[str]]:
    head = demangled.replace("(anonymous namespace)::", "").replace("fcn_fast::", "")
    head = head.split("(", 1)[0].removeprefix("void ").strip()
    if "<" not in head:
        return head, []
    name, rest = head.split("<", 1)
    return name.strip(), [a.strip() for a in rest.rsplit(">", 1)[0].split(",")]


def demangle(functions: list[Function]) -> None:
    names = [f.mangled for f in functions]
    out = subprocess.run(
        [_tool("c++filt")], input="\n".join(names), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for f, d in zip(functions, out):
        f.name, f.args = _template_args(d) if d != f.mangled else (f.mangled, [])


def disassemble(cubin: str) -> list[Function]:
    """The functions of a cubin file, with their resource usage."""
    cuobjdump = _tool("cuobjdump")
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True)
    usage = subprocess.run(
        [cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True, check=True
    )
    functions = parse_sass(sass.stdout)
    resources = parse_resource_usage(usage.stdout)
    for f in functions:
        r = resources.get(f.mangled, {})
        # Spilled registers live in the stack frame (STACK), local arrays in LOCAL.
        f.registers, f.shared = r.get("REG", 0), r.get("SHARED", 0)
        f.local = r.get("LOCAL", 0) + r.get("STACK", 0)
    demangle(functions)
    return functions


# --------------------------------------------------------------------------------- compiling


def _sources_digest(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as file:
            digest.update(path.encode() + b"\0" + file.read())
    return digest.hexdigest()[:16]


@functools.cache
def cuda_cubins(arch: str = "sm_90") -> tuple[str, ...]:
    """Each csrc/cuda/*.cu compiled for `arch` (nvcc -cubin, side by side), as `NAME.cu.cubin`
    paths, cached by the hash of the sources and headers (tests/test_machine_code.py reads the
    same cubins)."""
    include = os.path.join(ROOT, "csrc", "include")
    sources = sorted(
        os.path.join(ROOT, "csrc", "cuda", f)
        for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
        if f.endswith(".cu")
    )
    headers = [
        os.path.join(d, f)
        for d in (os.path.join(include, "fcn_fast"), os.path.join(ROOT, "csrc", "cuda"))
        for f in os.listdir(d)
        if f.endswith((".h", ".cuh"))
    ]
    out_dir = os.path.join(CACHE, f"{arch}-{_sources_digest(sources + headers)}")
    os.makedirs(out_dir, exist_ok=True)
    processes = []
    for source in sources:
        cubin = os.path.join(out_dir, os.path.basename(source) + ".cubin")
        partial = f"{cubin}.{os.getpid()}.tmp"
        if os.path.exists(cubin):
            processes.append((cubin, partial, None))
            continue
        command = [_tool("nvcc"), "-cubin", "-std=c++17", "-O3", f"-arch={arch}", "-I", include]
        command += [source, "-o", partial]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        processes.append((cubin, partial, process))
    for cubin, partial, process in processes:
        if process is not None:
            _, stderr = process.communicate(timeout=1800)
            if process.returncode != 0:
                raise RuntimeError(f"nvcc failed for {cubin}:\n{stderr}")
            os.replace(partial, cubin)
    return tuple(cubin for cubin, _, _ in processes)


@functools.cache
def cuda_functions(arch: str = "sm_90") -> tuple[Function, ...]:
    """Every kernel of csrc/cuda/*.cu compiled for `arch`."""
    functions = []
    for cubin in cuda_cubins(arch):
        for f in disassemble(cubin):
            f.source = os.path.basename(cubin).removesuffix(".cubin")
            functions.append(f)
    return tuple(functions)


def triton_function(compiled) -> Function:
    """The Function of a triton.compile() result (its cubin, registers and shared memory)."""
    digest = hashlib.sha256(compiled.asm["cubin"]).hexdigest()[:16]
    path = os.path.join(CACHE, "triton", f"{compiled.metadata.name}-{digest}.cubin")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "wb") as file:
            file.write(compiled.asm["cubin"])
        os.replace(partial, path)
    (function,) = disassemble(path)
    function.shared = max(function.shared, int(compiled.metadata.shared))
    return function


# --------------------------------------------------------------------------------- loops


@dataclasses.dataclass
class Loop:
    head: int  # index of the first instruction
    back: int  # index of the backward branch
    innermost: bool = True


@dataclasses.dataclass
class Trip:
    """One trip through a loop's body."""

    instrs: list[Instr]
    branches: int  # conditional branches inside the body (paths the count may not take)

    @property
    def count(self) -> int:
        return len(self.instrs)

    def opcode_count(self, *bases: str) -> int:
        return sum(1 for i in self.instrs if i.base in bases)

    @property
    def load_bytes(self) -> int:
        return sum(i.global_load_bytes for i in self.instrs)

    @property
    def store_bytes(self) -> int:
        return sum(i.global_store_bytes for i in self.instrs)

    @property
    def ex2(self) -> int:
        return sum(1 for i in self.instrs if i.op.startswith("MUFU.EX2"))

    def load_bytes_in_flight(self) -> int:
        """The most global-load bytes outstanding at once (issued, not yet waited on), over
        two trips so that loads issued for the next trip count."""
        outstanding = [0] * 8
        most = 0
        for instr in self.instrs + self.instrs:
            for sb in range(6):
                if instr.wait >> sb & 1:
                    outstanding[sb] = 0
            if instr.global_load_bytes and instr.write_sb < 6:
                outstanding[instr.write_sb] += instr.global_load_bytes
            most = max(most, sum(outstanding))
        return most


def loops(function: Function) -> list[Loop]:
    index = {instr.addr: k for k, instr in enumerate(function.instrs)}
    found = []
    for k, instr in enumerate(function.instrs):
        target = instr.target
        # (A branch to itself is the trap after EXIT that pads every function: not a loop.)
        if target is not None and target < instr.addr and target in index:
            found.append(Loop(index[target], k))
    for loop in found:
        loop.innermost = not any(
            other is not loop and loop.head <= other.head and other.back <= loop.back
            for other in found
        )
    return found


def trip(function: Function, loop: Loop) -> Trip:
    """The shortest path from the loop's head to its back edge (forward branches within the
    body taken or not, whichever is shorter; exits out of the body never taken)."""
    instrs = function.instrs
    index = {instr.addr: k for k, instr in enumerate(instrs)}
    inf = 1 << 30
    best = [inf] * (loop.back + 2)
    nxt = [None] * (loop.back + 2)
    best[loop.back] = 1
    branches = 0
    for k in range(loop.back - 1, loop.head - 1, -1):
        instr = instrs[k]
        options = []
        target = instr.target
        unconditional = instr.pred in ("", "@PT") and instr.base in ("BRA", "EXIT", "RET")
        if not unconditional:
            options.append(k + 1)
        if target is not None and target > instr.addr and index.get(target, inf) <= loop.back:
            options.append(index[target])
            branches += 0 if unconditional else 1
        options = [o for o in options if best[o] < inf]
        if options:
            o = min(options, key=lambda o: best[o])
            best[k], nxt[k] = best[o] + 1, o
    path, k = [], loop.head
    while k is not None and k <= loop.back:
        path.append(instrs[k])
        k = nxt[k] if k != loop.back else None
    return Trip(path, branches)


def straight_line(function: Function) -> int:
    """Instructions outside every loop (an upper bound of what a thread runs once)."""
    inside = set()
    for loop in loops(function):
        inside.update(range(loop.head, loop.back + 1))
    return sum(1 for k in range(len(function.instrs)) if k not in inside)


def shortest_path(function: Function, start: int, stop) -> int:
    """Instructions on the shortest path from instruction `start` to one where stop(index) holds
    (inclusive), along forward branches and fall-throughs (each loop's body once: its back edge
    is never taken). Returns a large number when no instruction satisfies stop."""
    instrs = function.instrs
    index = {instr.addr: k for k, instr in enumerate(instrs)}
    inf = 1 << 30
    best = [inf] * (len(instrs) + 1)
    for k in range(len(instrs) - 1, start - 1, -1):
        if stop(k):
            best[k] = 1
            continue
        instr = instrs[k]
        options = []
        unconditional = instr.pred in ("", "@PT") and instr.base in ("BRA", "EXIT", "RET")
        if not unconditional and k + 1 < len(instrs):  # a predicated branch may fall through
            options.append(k + 1)
        target = instr.target
        if target is not None and target > instr.addr and target in index:
            options.append(index[target])
        if (
            instr.base == "BRA"
            and target is not None
            and target <= instr.addr
            and k + 1 < len(instrs)
        ):
            options.append(k + 1)  # a back edge: leave the loop instead
        values = [best[o] for o in options if best[o] < inf]
        if values:
            best[k] = 1 + min(values)
    return best[start]


def exit_path(function: Function) -> int:
    """Instructions a thread that returns at once runs: the shortest path to an EXIT."""
    return shortest_path(function, 0, lambda k: function.instrs[k].base == "EXIT")


def around_loop(function: Function, loop: Loop) -> int:
    """Instructions a thread runs outside `loop` on the shortest way through it: from the entry
    to the loop's head, and from the instruction after its back edge to an EXIT."""
    before = shortest_path(function, 0, lambda k: k == loop.head) - 1
    after = shortest_path(function, loop.back + 1, lambda k: function.instrs[k].base == "EXIT")
    exits_inside = any(i.base == "EXIT" for i in function.instrs[loop.head : loop.back + 1])
    if exits_inside:  # the loop's last trip returns from inside it (Triton's loops do)
        after = min(after, 1)
    return before + after

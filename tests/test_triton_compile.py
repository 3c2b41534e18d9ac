"""Every Triton kernel compiles to PTX for sm_90 here, without a GPU, and its machine code
passes the bandwidth guard of issue 8 (item 5).

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python, not the compiler: a kernel
can pass every interpreted test and still fail to compile. So a subprocess without
TRITON_INTERPRET runs the real launchers on meta tensors (shapes and strides, no data) with
Triton's launch replaced by a recorder, and compiles each recorded launch as Triton would
specialize it for those arguments (ints equal to 1 and pointers / ints divisible by 16, as
on a GPU, where allocations are 256-byte aligned). The launches cover the benchmark shapes
(the guard's subject: int32 offsets, 16-byte-divisible rows) and the other constexpr
variants the launchers choose (zero-boundary tap masks, channels_last, skip, smoothing,
weights, reductions, float64, int64 offsets beyond 2^31 elements).

The guard, on the PTX of every kernel that touches every element (the tap-table kernel may
use float64; finish_kernel adds per-program partials):
* no float64 instruction (.f64) unless the data is float64;
* no 64-bit integer division or remainder (div/rem .s64/.u64);
* 128-bit vector global stores (st.global.v4.b32, or .v2.b64) where the issue asks for
  them (the forward kernels' benchmark variants), and 128-bit loads of the streamed tensor.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from fcn_fast.bench.model import _specialize as specialize  # as Triton's launcher does

# ---------------------------------------------------------------- subprocess side


def _record_launches(run):
    """Replace JITFunction.run with a recorder while run() calls the launchers."""
    from triton.runtime.jit import JITFunction

    launches = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    JITFunction.run = record
    try:
        run()
    finally:
        JITFunction.run = original
    return launches


_COMPILED: dict = {}


def _compile(kernel, args, kwargs) -> str:
    """PTX of the launch; launches that specialize alike (the tap-table kernel of most cases)
    compile once."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = specialize(kernel, args, kwargs)
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    key = (kernel.fn.__qualname__, repr(signature), repr(constexprs), repr(attrs), repr(options))
    if key not in _COMPILED:
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        target = GPUTarget("cuda", 90, 32)
        _COMPILED[key] = triton.compile(source, target=target, options=options).asm["ptx"]
    return _COMPILED[key]


def _findings(ptx: str) -> dict:
    # Instructions only: strip comments, the .version/.target header and register decls.
    body = "\n".join(
        line.split("//")[0]
        for line in ptx.splitlines()
        if not line.lstrip().startswith((".reg", ".version", ".target", ".address_size", "//"))
    )
    return {
        "f64": len(re.findall(r"\.f64\b", body)),
        "div64": len(re.findall(r"\b(?:div|rem)(?:\.\w+)*\.[su]64\b", body)),
        "vec_stores": len(
            re.findall(r"\bst\.global(?:\.\w+)*\.(?:v4\.b32|v4\.f32|v2\.b64)\b", body)
        ),
        "vec_loads": len(
            re.findall(r"\bld\.global(?:\.\w+)*\.(?:v4\.b32|v4\.f32|v2\.b64)\b", body)
        ),
        "stores": len(re.findall(r"\bst\.global\b", body)),
    }


def _meta(*shape, dtype="float32", channels_last=False):
    import torch

    t = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


# Each case: (label, element dtype, launcher call over meta tensors, rules per kernel name).
# Rules: "vec_stores" / "vec_loads" list the kernels that must have 128-bit stores / loads.


def _resample_cases():
    from fcn_fast.triton import resample_skip as rs

    up = (1 / 8, 31.5 / 8 - 1.0, 1 / 8, 31.5 / 8 - 1.0, False)  # FCN-8s final: x8, crop 31
    interp = (1 / 8, 0.5 / 8 - 0.5, 1 / 8, 0.5 / 8 - 0.5, True)  # 128 -> 1024, align False
    cases = [
        (
            "upsample large float32",
            "float32",
            lambda: (
                rs.resample_skip_triton(_meta(16, 21, 132, 132), None, *up, 1024, 1024, 0, 0),
                rs.resample_skip_backward_triton(_meta(16, 21, 1024, 1024), 132, 132, *up),
            ),
            {"vec_stores": ["_fwd_rows_kernel"], "vec_loads": ["_bwd_kernel"]},
        ),
        (
            "upsample large bfloat16",
            "bfloat16",
            lambda: rs.resample_skip_triton(
                _meta(16, 21, 132, 132, dtype="bfloat16"), None, *up, 1024, 1024, 0, 0
            ),
            {"vec_stores": ["_fwd_rows_kernel"]},
        ),
        (
            "interpolate large + skip float32",
            "float32",
            lambda: rs.resample_skip_triton(
                _meta(16, 21, 128, 128), _meta(16, 21, 1024, 1024), *interp, 1024, 1024, 0, 0
            ),
            {"vec_stores": ["_fwd_rows_kernel"], "vec_loads": ["_fwd_rows_kernel"]},
        ),
    ]
    odd = (1 / 3, 2 / 3 - 1.0, 1 / 3, 1.0 - 1.0, False)  # taps outside x: masked variant
    cases += [
        (
            "zero boundary, odd sizes, skip, float16",
            "float16",
            lambda: rs.resample_skip_triton(
                _meta(2, 3, 4, 5, dtype="float16"),
                _meta(2, 3, 13, 17, dtype="float16"),
                *odd,
                11,
                13,
                1,
                2,
            ),  # fmt: skip
            {},
        ),
        (
            "channels_last x (C=21) with skip, backward of channels_last grad",
            "float32",
            lambda: (
                rs.resample_skip_triton(
                    _meta(4, 21, 34, 34, channels_last=True),
                    _meta(4, 21, 88, 88, channels_last=True),
                    *up,
                    70,
                    70,
                    9,
                    9,
                ),  # fmt: skip
                rs.resample_skip_backward_triton(
                    _meta(4, 21, 70, 70, channels_last=True), 34, 34, *up
                ),
            ),
            {},
        ),
        (
            "channels_last x (C=256): vector stores along the classes",
            "float32",
            lambda: rs.resample_skip_triton(
                _meta(4, 256, 64, 64, channels_last=True), None, *interp[:4], True, 128, 128, 0, 0
            ),
            {"vec_stores": ["_fwd_pixels_kernel"]},
        ),
        (
            "downsampling (4 gathers per output)",
            "float32",
            lambda: rs.resample_skip_triton(
                _meta(2, 3, 14, 9), None, 1.75, 0.375, 1.8, 0.4, True, 8, 5, 0, 0
            ),
            {},
        ),
        (
            "float64",
            "float64",
            lambda: (
                rs.resample_skip_triton(
                    _meta(2, 3, 7, 5, dtype="float64"), None, *odd, 11, 13, 0, 0
                ),
                rs.resample_skip_backward_triton(_meta(2, 3, 11, 13, dtype="float64"), 7, 5, *odd),
            ),
            {},
        ),
        (
            "int64 offsets (> 2^31 output elements)",
            "float16",
            lambda: (
                rs.resample_skip_triton(
                    _meta(1, 1, 2**13 + 3, 2**14, dtype="float16"),
                    None,
                    0.5,
                    -0.75,
                    0.5,
                    -0.75,
                    False,
                    2**14 + 8,
                    2**15 + 2,
                    0,
                    0,
                ),  # fmt: skip
                rs.resample_skip_backward_triton(
                    _meta(1, 1, 2**14 + 8, 2**15 + 2, dtype="float16"),
                    2**13 + 3,
                    2**14,
                    0.5,
                    -0.75,
                    0.5,
                    -0.75,
                    False,
                ),  # fmt: skip
            ),
            {},
        ),
    ]
    return cases


def _loss_cases():
    import torch

    from fcn_fast.triton import pixel_cross_entropy as pce

    def run(
        N,
        C,
        S,
        dtype,
        reduction,
        smoothing,
        weight,
        channels_last=False,
        ignore=255,
        labels="int64",
    ):
        acc = "float64" if dtype == "float64" else "float32"
        if channels_last:
            logits = _meta(N, S, C, dtype=dtype).transpose(1, 2)
        else:
            logits = _meta(N, C, S, dtype=dtype)
        target = _meta(N, S, dtype=labels)
        w = _meta(C, dtype=acc) if weight else None
        loss, lse, wsum = pce.pixel_cross_entropy_triton(
            logits, target, w, ignore, reduction, smoothing
        )
        grad = _meta(N, S, dtype=acc) if reduction == 0 else torch.empty((), device="meta")
        pce.pixel_cross_entropy_backward_triton(
            grad, logits, target, w, lse, wsum, ignore, reduction, smoothing
        )

    big = 1024 * 1024
    pixels = ["_fwd_pixels_kernel", "_bwd_pixels_kernel"]
    return [
        ("loss large float32", "float32", lambda: run(16, 21, big, "float32", 1, 0.0, False),
         {"vec_stores": pixels, "vec_loads": pixels}),
        ("loss large bfloat16", "bfloat16", lambda: run(16, 21, big, "bfloat16", 1, 0.0, False),
         {"vec_stores": pixels, "vec_loads": pixels}),
        ("loss large float32 uint8 labels", "float32",
         lambda: run(16, 21, big, "float32", 1, 0.0, False, labels="uint8"),
         {"vec_stores": pixels, "vec_loads": pixels}),
        ("loss channels_last int32 labels, reduction none", "float32",
         lambda: run(2, 19, 64 * 64, "float32", 0, 0.0, False, channels_last=True,
                     labels="int32"), {}),
        ("loss channels_last C=32, smoothing, weights", "bfloat16",
         lambda: run(4, 32, 512 * 512, "bfloat16", 1, 0.1, True, channels_last=True),
         {"vec_stores": ["_bwd_classes_kernel"], "vec_loads": ["_fwd_classes_kernel"]}),
        ("loss reduction none, smoothing, weights, odd S", "float16",
         lambda: run(2, 7, 33 * 33, "float16", 0, 0.2, True), {}),
        ("loss float64", "float64", lambda: run(2, 5, 49, "float64", 1, 0.1, True), {}),
        ("loss int64 offsets", "float16", lambda: run(1, 3, 2**30, "float16", 1, 0.0, False), {}),
    ]  # fmt: skip


def _fused_cases():
    import torch

    from fcn_fast.triton import resample_cross_entropy as rce

    up = (1 / 8, 31.5 / 8 - 1.0, 1 / 8, 31.5 / 8 - 1.0, False)
    interp = (1 / 8, 0.5 / 8 - 0.5, 1 / 8, 0.5 / 8 - 0.5, True)

    def run(x, geo, out, reduction=1, smoothing=0.0, weight=False, backward=True, labels="int64"):
        N, C = x.shape[:2]
        acc = "float64" if x.dtype == torch.float64 else "float32"
        target = _meta(N, *out, dtype=labels)
        w = _meta(C, dtype=acc) if weight else None
        loss, lse, wsum = rce.resample_cross_entropy_triton(
            x, target, w, *geo, 255, reduction, smoothing
        )
        if backward:
            grad = _meta(N, *out, dtype=acc) if reduction == 0 else torch.empty((), device="meta")
            rce.resample_cross_entropy_backward_triton(
                grad, x, target, w, lse, wsum, *geo, 255, reduction, smoothing
            )
        rce.resample_argmax_triton(x, *geo, *out, torch.int64, False)
        rce.resample_argmax_triton(x, *geo, *out, torch.uint8, True)

    return [
        ("fused FCN-8s head large float32", "float32",
         lambda: run(_meta(16, 21, 132, 132), up, (1024, 1024)),
         {"vec_stores": ["_fwd_kernel", "_argmax_kernel"]}),
        ("fused FCN-8s head large float32 uint8 labels", "float32",
         lambda: run(_meta(16, 21, 132, 132), up, (1024, 1024), labels="uint8"),
         {"vec_stores": ["_fwd_kernel", "_argmax_kernel"]}),
        ("fused FCN-8s head large bfloat16", "bfloat16",
         lambda: run(_meta(16, 21, 132, 132, dtype="bfloat16"), up, (1024, 1024), backward=False),
         {"vec_stores": ["_fwd_kernel", "_argmax_kernel"]}),
        ("fused DeepLab head C=150 channels_last, smoothing, weights", "bfloat16",
         lambda: run(_meta(16, 150, 64, 64, dtype="bfloat16", channels_last=True), interp,
                     (512, 512), smoothing=0.1, weight=True), {}),
        ("fused zero boundary with outside taps, reduction none", "float16",
         lambda: run(_meta(2, 5, 4, 5, dtype="float16"), (1 / 3, -1 / 3, 1 / 3, 0.0, False),
                     (11, 13), reduction=0), {}),
        ("fused float64, downsampling (4 gathers per pixel)", "float64",
         lambda: run(_meta(2, 5, 14, 9, dtype="float64"), (1.75, 0.375, 1.8, 0.4, True), (8, 5),
                     smoothing=0.1), {}),
        ("fused float32, downsampling", "float32",
         lambda: run(_meta(2, 5, 14, 9), (1.75, 0.375, 1.8, 0.4, True), (8, 5), backward=False),
         {}),
    ]  # fmt: skip


MODULES = {"resample_skip": _resample_cases, "loss": _loss_cases, "fused": _fused_cases}
EXEMPT = {"_tap_tables_kernel": "builds the tap tables in float64 (issue 8 allows it)"}


def _main(module: str) -> None:
    """Compile every launch of the module's cases; print one JSON line per kernel variant."""
    seen = set()
    for label, dtype, call, rules in MODULES[module]():
        for kernel, args, kwargs in _record_launches(call):
            name = kernel.fn.__name__
            ptx = _compile(kernel, args, kwargs)
            key = (label, name)
            if key in seen:
                continue
            seen.add(key)
            print(json.dumps({"case": label, "dtype": dtype, "kernel": name,
                              "rules": [r for r, ks in rules.items() if name in ks],
                              **_findings(ptx)}), flush=True)  # fmt: skip


# ---------------------------------------------------------------- pytest side


def _check(rows: list[dict]) -> list[str]:
    problems = []
    for row in rows:
        where = f"{row['kernel']} ({row['case']})"
        if row["kernel"] in EXEMPT:
            continue
        if row["dtype"] != "float64" and row["f64"]:
            problems.append(f"{where}: {row['f64']} float64 instructions")
        if row["div64"]:
            problems.append(f"{where}: {row['div64']} 64-bit integer divisions")
        if "vec_stores" in row["rules"] and not row["vec_stores"]:
            problems.append(f"{where}: no 128-bit vector store ({row['stores']} stores)")
        if "vec_loads" in row["rules"] and not row["vec_loads"]:
            problems.append(f"{where}: no 128-bit vector load")
    return problems


@pytest.fixture(scope="module")
def compilations():
    """One compiling subprocess per module, all started at once (compiling is CPU-bound
    and single-threaded: they share the cores)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    procs = {
        module: subprocess.Popen(
            [sys.executable, __file__, module],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in MODULES
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("module", list(MODULES))
def test_triton_kernels_compile_for_sm90_and_pass_the_guard(module, compilations):
    stdout, stderr = compilations[module].communicate(timeout=900)
    assert compilations[module].returncode == 0, stdout[-5000:] + stderr[-5000:]
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert rows, stdout + stderr
    table = "\n".join(
        f"  {r['kernel']:<22} {r['case']:<58} f64={r['f64']:<3} div64={r['div64']} "
        f"v4-stores={r['vec_stores']:<3} v4-loads={r['vec_loads']}"
        for r in rows
    )
    print(f"\nPTX findings ({module}):\n{table}")
    problems = _check(rows)
    assert not problems, "\n".join(problems) + "\nFindings:\n" + table


if __name__ == "__main__":
    _main(sys.argv[1])

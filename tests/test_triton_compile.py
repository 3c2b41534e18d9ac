"""Every Triton kernel compiles to PTX for sm_90 here, without a GPU.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python, not the compiler: a
kernel can pass every interpreted test and still fail to compile (an unsupported op,
a dtype mismatch, a non-constexpr shape). This compiles each kernel, in the
constexpr variants the launchers use, for a Hopper target. The compiler needs the
real @triton.jit functions, so it runs in a subprocess without TRITON_INTERPRET.
"""

import os
import subprocess
import sys

import pytest

SPLIT_DOUBLES = {f"{p}{i}" for p in ("sh", "bh", "sw", "bw", "eps", "epc") for i in range(3)}


def compile_kernel(kernel, pointers: dict, constexprs: dict) -> None:
    """Compile with the given pointer element types; other scalars: split doubles fp32,
    the rest int64 (the launchers pass sizes and strides as Python ints)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = "fp32" if name in SPLIT_DOUBLES else "i64"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert ".entry" in compiled.asm["ptx"], kernel


def compile_resample_skip() -> None:
    import triton.language as tl

    from fcn_fast.triton import resample_skip as rs

    for dtype, acc in (("fp16", tl.float32), ("bf16", tl.float32), ("fp64", tl.float64)):
        for clamp in (False, True):
            compile_kernel(
                rs._resample_skip_fwd_kernel,
                {"x_ptr": f"*{dtype}", "skip_ptr": f"*{dtype}", "out_ptr": f"*{dtype}"},
                dict(CLAMP=clamp, HAS_SKIP=True, ACC=acc, BLOCK_H=16, BLOCK_W=128),
            )
            for chunked in (False, True):
                compile_kernel(
                    rs._resample_skip_bwd_kernel,
                    {"g_ptr": f"*{dtype}", "gx_ptr": f"*{dtype}"},
                    dict(CLAMP=clamp, ACC=acc, BI=8, BJ=16, KX=64, CHUNKED=chunked),
                )


def compile_pixel_cross_entropy() -> None:
    from fcn_fast.triton import pixel_cross_entropy as pce

    for dtype, acc in (("bf16", "fp32"), ("fp32", "fp32"), ("fp64", "fp64")):
        common = {
            "x_ptr": f"*{dtype}",
            "t_ptr": "*i64",
            "w_ptr": f"*{acc}",
            "lse_ptr": f"*{acc}",
            "wtotal_ptr": f"*{acc}",
        }
        for smooth in (False, True):
            compile_kernel(
                pce._fwd_kernel,
                {**common, "loss_ptr": f"*{dtype}", "part_ptr": f"*{acc}", "err_ptr": "*i32"},
                dict(HAS_WEIGHT=True, SMOOTH=smooth, STORE_LOSS=True, BLOCK_P=128, BLOCK_C=16),
            )
            for reduction in (0, 1):
                compile_kernel(
                    pce._bwd_kernel,
                    {**common, "g_ptr": f"*{dtype}", "wsum_ptr": f"*{acc}", "out_ptr": f"*{dtype}"},
                    dict(
                        REDUCTION=reduction, HAS_WEIGHT=True, SMOOTH=smooth, BLOCK_P=128, BLOCK_C=16
                    ),
                )
        compile_kernel(
            pce._sum_partials_kernel,
            {"part_ptr": f"*{acc}", "out_ptr": f"*{acc}"},
            dict(BLOCK=256),
        )


@pytest.mark.parametrize("module", ["resample_skip", "pixel_cross_entropy"])
def test_triton_kernels_compile_for_sm90(module):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, __file__, module], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled" in result.stdout


if __name__ == "__main__":
    {"resample_skip": compile_resample_skip, "pixel_cross_entropy": compile_pixel_cross_entropy}[
        sys.argv[1]
    ]()
    print("compiled")

"""Triton kernels of the resample-skip op (DESIGN.md 2.1-2.3): the forward and its adjoint.

Same contract as the C++ kernels (csrc/ops/resample_skip.h); registered as the op's
`triton` backend by fcn_fast/triton/__init__.py;
the per-axis tap math transcribes csrc/include/fcn_fast/resample_skip_math.h, in float64.

Forward: each program owns a BLOCK_H x BLOCK_W output tile of one (n, c) plane; row and
column taps are computed once per tile, then 4 masked gathers, the skip add and a store.

Backward: a gather, no atomics, so it is bitwise deterministic. Each program owns BI x BJ
input elements of one plane and walks the output rows y that read any of its rows (the
resample_first_output / resample_window bounds). Per row it forms the horizontal adjoint
h[j] = sum_k wx[j, k] * grad_out[y, first(j) + k] over each column's window of outputs
(a [BJ, KX] gather of contiguous segments, so each warp reads consecutive addresses),
then acc[i, j] += wy[i] * h[j]. The per-column windows replace a dense [BJ, span] weight
matrix: that one does span / (2 * factor) times more multiply-adds than there are taps.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fcn_fast._common import FLOAT_DTYPES, output_memory_format
from fcn_fast.triton._launch import device_guard, f64, split3

# Elements per program-wide 2-D tile (forward tile, backward [BJ, KX] window tile), and
# warps per program: 8 keeps registers near 110 per thread for these tiles (ptxas, sm_90;
# int64 offsets cost two registers each), where 4 warps need 135-200.
_TILE = 2048
_NUM_WARPS = 8
# Widest column window handled in one gather; wider windows (factors > ~60, or
# align_corners onto a huge output) loop over chunks of this many outputs.
_MAX_KX = 256


def _pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _window(scale: float, out_size: int) -> int:
    """resample_window of resample_skip_math.h, in the same double arithmetic."""
    if not scale > 0.0:
        return out_size
    w = math.floor(2.0 / scale) + 4.0
    return int(w) if w < out_size else out_size


@triton.jit
def _tap(idx, scale, bias, in_size, CLAMP: tl.constexpr):
    """resample_tap: (i0, i1, w0, w1, ok0, ok1) of output indices idx, float64 weights.

    okK says whether tap K lies inside the input (always true for clamp); its weight is
    0 when it does not, and callers mask that tap's load rather than multiply by 0.
    """
    s = idx.to(tl.float64) * scale + bias
    if CLAMP:
        s = tl.maximum(s, 0.0)
        i0 = tl.minimum(s.to(tl.int64), in_size - 1)
        lam = s - i0.to(tl.float64)
        lam = tl.minimum(tl.maximum(lam, 0.0), 1.0)
        i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
        ok0 = i0 >= 0
        ok1 = i1 >= 0
    else:
        i0 = s.to(tl.int64)  # truncates; step down for negative non-integers: floor
        i0 = tl.where(i0.to(tl.float64) > s, i0 - 1, i0)
        lam = s - i0.to(tl.float64)
        i1 = i0 + 1
        ok0 = (i0 >= 0) & (i0 < in_size)
        ok1 = (i1 >= 0) & (i1 < in_size)
    w0 = tl.where(ok0, 1.0 - lam, 0.0)
    w1 = tl.where(ok1, lam, 0.0)
    return i0, i1, w0, w1, ok0, ok1


@triton.jit
def _first_output(i, scale, bias):
    """resample_first_output for a vector of input indices i (0 where scale <= 0)."""
    sc = scale + tl.zeros(i.shape, dtype=tl.float64)
    pos = sc > 0.0
    t = (i.to(tl.float64) - 1.0 - bias) / tl.where(pos, sc, 1.0)
    c = t.to(tl.int64)
    c = tl.where(c.to(tl.float64) < t, c + 1, c)  # ceil
    return tl.where(pos, tl.maximum(c - 1, 0), 0)


@triton.jit
def _resample_skip_fwd_kernel(
    x_ptr,
    skip_ptr,
    out_ptr,
    C,
    in_h,
    in_w,
    out_h,
    out_w,
    tiles_w,
    tiles_per_plane,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ss_n,
    ss_c,
    ss_h,
    ss_w,
    os_n,
    os_c,
    os_h,
    os_w,
    skip_y,
    skip_x,
    sh0,
    sh1,
    sh2,
    bh0,
    bh1,
    bh2,
    sw0,
    sw1,
    sw2,
    bw0,
    bw1,
    bw2,
    CLAMP: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # int64 from the start: every offset below is int64, so > 2^31-element tensors work.
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // tiles_per_plane
    tile = pid - plane * tiles_per_plane
    n = plane // C
    c = plane - n * C
    ty = tile // tiles_w
    tx = tile - ty * tiles_w
    oy = ty * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = tx * BLOCK_W + tl.arange(0, BLOCK_W)
    in_y = oy < out_h
    in_x = ox < out_w

    i0y, i1y, w0y, w1y, ok0y, ok1y = _tap(oy, f64(sh0, sh1, sh2), f64(bh0, bh1, bh2), in_h, CLAMP)
    i0x, i1x, w0x, w1x, ok0x, ok1x = _tap(ox, f64(sw0, sw1, sw2), f64(bw0, bw1, bw2), in_w, CLAMP)
    w0y = w0y.to(ACC)[:, None]
    w1y = w1y.to(ACC)[:, None]
    w0x = w0x.to(ACC)[None, :]
    w1x = w1x.to(ACC)[None, :]

    base = x_ptr + n * xs_n + c * xs_c
    row0 = (i0y * xs_h)[:, None]
    row1 = (i1y * xs_h)[:, None]
    col0 = (i0x * xs_w)[None, :]
    col1 = (i1x * xs_w)[None, :]
    m_out = in_y[:, None] & in_x[None, :]
    # Taps outside the input are masked, not multiplied by 0 (0 * inf would be NaN).
    m0y = m_out & ok0y[:, None]
    m1y = m_out & ok1y[:, None]
    x00 = tl.load(base + row0 + col0, mask=m0y & ok0x[None, :], other=0.0).to(ACC)
    x10 = tl.load(base + row1 + col0, mask=m1y & ok0x[None, :], other=0.0).to(ACC)
    x01 = tl.load(base + row0 + col1, mask=m0y & ok1x[None, :], other=0.0).to(ACC)
    x11 = tl.load(base + row1 + col1, mask=m1y & ok1x[None, :], other=0.0).to(ACC)
    # Horizontal blend first, then vertical: the order of the C++ and CUDA kernels.
    v = w0y * (w0x * x00 + w1x * x01) + w1y * (w0x * x10 + w1x * x11)
    if HAS_SKIP:
        s_off = (
            n * ss_n + c * ss_c + ((oy + skip_y) * ss_h)[:, None] + ((ox + skip_x) * ss_w)[None, :]
        )
        v += tl.load(skip_ptr + s_off, mask=m_out, other=0.0).to(ACC)
    o_off = n * os_n + c * os_c + (oy * os_h)[:, None] + (ox * os_w)[None, :]
    tl.store(out_ptr + o_off, v.to(out_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def _col_adjoint(
    cols,
    first,
    k0,
    win_w,
    out_w,
    scale,
    bias,
    in_w,
    CLAMP: tl.constexpr,
    ACC: tl.constexpr,
    KX: tl.constexpr,
):
    """Outputs first[j] + k0 + [0, KX) of each input column cols[j]: (X, valid, weight).

    weight is resample_weight: the tap weights of X that land on cols[j], summed (both taps
    coincide at the clamped last column). valid mirrors the C++ window k < count[j].
    """
    k = k0 + tl.arange(0, KX)
    ox = first[:, None] + k[None, :]
    ok = (k[None, :] < win_w) & (ox < out_w)
    i0, i1, w0, w1, _, _ = _tap(ox, scale, bias, in_w, CLAMP)
    cols_b = cols[:, None]
    w = tl.where(i0 == cols_b, w0.to(ACC), 0.0) + tl.where(i1 == cols_b, w1.to(ACC), 0.0)
    return ox, ok, tl.where(ok, w, 0.0)


@triton.jit
def _resample_skip_bwd_kernel(
    g_ptr,
    gx_ptr,
    C,
    in_h,
    in_w,
    out_h,
    out_w,
    tiles_j,
    tiles_per_plane,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    win_h,
    win_w,
    sh0,
    sh1,
    sh2,
    bh0,
    bh1,
    bh2,
    sw0,
    sw1,
    sw2,
    bw0,
    bw1,
    bw2,
    CLAMP: tl.constexpr,
    ACC: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    KX: tl.constexpr,
    CHUNKED: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // tiles_per_plane
    tile = pid - plane * tiles_per_plane
    n = plane // C
    c = plane - n * C
    ti = tile // tiles_j
    tj = tile - ti * tiles_j
    rows = ti * BI + tl.arange(0, BI)
    cols = tj * BJ + tl.arange(0, BJ)
    scale_h = f64(sh0, sh1, sh2)
    bias_h = f64(bh0, bh1, bh2)
    scale_w = f64(sw0, sw1, sw2)
    bias_w = f64(bw0, bw1, bw2)

    # Rows: input row i is read by outputs [row_first[i], row_end[i]) (C++ first/count).
    row_first = tl.minimum(_first_output(rows, scale_h, bias_h), out_h)
    row_end = tl.minimum(row_first + win_h, out_h)
    y_lo = tl.min(row_first, axis=0)
    y_hi = tl.max(tl.where(rows < in_h, row_end, 0), axis=0)
    col_first = tl.minimum(_first_output(cols, scale_w, bias_w), out_w)

    g_plane = g_ptr + n * gs_n + c * gs_c
    if not CHUNKED:
        # The column windows fit in one [BJ, KX] tile: weights and offsets once per program.
        ox, ok, wx = _col_adjoint(
            cols, col_first, 0, win_w, out_w, scale_w, bias_w, in_w, CLAMP, ACC, KX
        )
        g_off = ox * gs_w
    acc = tl.zeros([BI, BJ], dtype=ACC)
    for y in range(y_lo, y_hi):
        g_row = g_plane + y * gs_h
        if CHUNKED:
            h = tl.zeros([BJ], dtype=ACC)
            for k0 in range(0, win_w, KX):
                ox, ok, wx = _col_adjoint(
                    cols, col_first, k0, win_w, out_w, scale_w, bias_w, in_w, CLAMP, ACC, KX
                )
                g = tl.load(g_row + ox * gs_w, mask=ok, other=0.0).to(ACC)
                h += tl.sum(wx * g, axis=1)
        else:
            g = tl.load(g_row + g_off, mask=ok, other=0.0).to(ACC)
            h = tl.sum(wx * g, axis=1)
        # Vertical adjoint weights of row y for the tile's rows: _tap inlined (a call per
        # iteration costs milliseconds in the interpreter), on a vector, not a scalar.
        sy = (y + tl.zeros([BI], dtype=tl.int64)).to(tl.float64) * scale_h + bias_h
        if CLAMP:
            sy = tl.maximum(sy, 0.0)
            i0 = tl.minimum(sy.to(tl.int64), in_h - 1)
            lam = tl.minimum(tl.maximum(sy - i0.to(tl.float64), 0.0), 1.0)
            i1 = tl.where(i0 < in_h - 1, i0 + 1, i0)
        else:
            i0 = sy.to(tl.int64)
            i0 = tl.where(i0.to(tl.float64) > sy, i0 - 1, i0)
            lam = sy - i0.to(tl.float64)
            i1 = i0 + 1
        # Taps outside the input match no stored row (rows < in_h) of the tile.
        wy = tl.where(rows == i0, (1.0 - lam).to(ACC), 0.0) + tl.where(rows == i1, lam.to(ACC), 0.0)
        # Only rows whose window holds y take it, as in C++: a 0 weight times an inf
        # gradient outside the window must not turn into NaN.
        take = (y >= row_first) & (y < row_end)
        acc = tl.where(take[:, None], acc + wy[:, None] * h[None, :], acc)

    gx_off = plane * in_h * in_w + (rows * in_w)[:, None] + cols[None, :]
    mask = (rows < in_h)[:, None] & (cols < in_w)[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=mask)


def _triton_acc_type(dtype: torch.dtype):
    """fcn_fast._common.accumulation_dtype, as a Triton type (a constexpr of the kernels)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_plane_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise ValueError(f"fcn_fast triton: {name} must be a 4-D tensor (N, C, H, W)")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fcn_fast triton: {name} must be floating point, got {t.dtype}")


def _fwd_blocks(out_h: int, out_w: int) -> tuple[int, int]:
    block_w = min(128, max(16, _pow2(out_w)))
    block_h = max(1, min(_pow2(out_h), _TILE // block_w))
    return block_h, block_w


def resample_skip_triton(
    x: torch.Tensor,
    skip: torch.Tensor | None,
    scale_h: float,
    bias_h: float,
    scale_w: float,
    bias_w: float,
    clamp: bool,
    out_h: int,
    out_w: int,
    skip_y: int,
    skip_x: int,
) -> torch.Tensor:
    """out[n, c, Y, X] = 4-tap bilinear sample of x at (Y*scale_h+bias_h, X*scale_w+bias_w)
    + skip[n, c, Y + skip_y, X + skip_x]; memory format of x, dtype of x."""
    _check_plane_tensor(x, "x")
    N, C, in_h, in_w = x.shape
    if out_h < 0 or out_w < 0:
        raise ValueError(f"fcn_fast triton: negative output size ({out_h}, {out_w})")
    if skip is not None:
        _check_plane_tensor(skip, "skip")
        if skip.dtype != x.dtype or skip.device != x.device:
            raise ValueError("fcn_fast triton: skip must have the dtype and device of x")
        if (
            skip.shape[:2] != x.shape[:2]
            or skip_y < 0
            or skip_x < 0
            or skip_y + out_h > skip.shape[2]
            or skip_x + out_w > skip.shape[3]
        ):
            raise ValueError("fcn_fast triton: skip window out of range")
    out = torch.empty(
        (N, C, out_h, out_w), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x)
    )
    if out.numel() == 0:
        return out
    if in_h < 1 or in_w < 1:
        raise ValueError("fcn_fast triton: x has an empty spatial axis")
    block_h, block_w = _fwd_blocks(out_h, out_w)
    tiles_h, tiles_w = triton.cdiv(out_h, block_h), triton.cdiv(out_w, block_w)
    grid = (N * C * tiles_h * tiles_w,)
    skip_arg = skip if skip is not None else out
    with device_guard(x):
        _resample_skip_fwd_kernel[grid](
            x,
            skip_arg,
            out,
            C,
            in_h,
            in_w,
            out_h,
            out_w,
            tiles_w,
            tiles_h * tiles_w,
            *x.stride(),
            *skip_arg.stride(),
            *out.stride(),
            skip_y,
            skip_x,
            *split3(scale_h),
            *split3(bias_h),
            *split3(scale_w),
            *split3(bias_w),
            CLAMP=bool(clamp),
            HAS_SKIP=skip is not None,
            ACC=_triton_acc_type(x.dtype),
            BLOCK_H=block_h,
            BLOCK_W=block_w,
            num_warps=_NUM_WARPS,
        )
    return out


def _bwd_blocks(
    planes: int, in_h: int, in_w: int, win_w: int, scale_w: float, min_programs: int = 0
) -> tuple[int, int, int]:
    """(BI, BJ, KX) of the backward: KX covers a column's window of outputs (up to
    _MAX_KX; wider windows are chunked), BJ * KX ~ _TILE. BI trades the vertical
    multiply-adds (BI per row of grad_out, useful on ~2 rows) against re-reading the
    window rows at the tile's edges (~2 * factor rows per tile): about sqrt(8 * factor),
    at least 8 (downsampling re-reads ~5 window rows per tile). Tiles shrink until
    there are min_programs programs (GPU occupancy). Not yet tuned on a GPU.
    """
    kx = min(max(2, _pow2(win_w)), _MAX_KX)
    bj = max(2, min(_pow2(in_w), _TILE // kx, 128))
    factor = 1.0 / scale_w if scale_w > 0 else 1.0
    bi = max(2, min(_pow2(in_h), max(8, _pow2(int(math.sqrt(8.0 * factor)))), 32))
    while planes * triton.cdiv(in_h, bi) * triton.cdiv(in_w, bj) < min_programs and (
        bi > 2 or bj > 2
    ):
        if bi >= bj and bi > 2:
            bi //= 2
        else:
            bj //= 2
    return bi, bj, kx


def resample_skip_backward_triton(
    grad_out: torch.Tensor,
    in_h: int,
    in_w: int,
    scale_h: float,
    bias_h: float,
    scale_w: float,
    bias_w: float,
    clamp: bool,
    _blocks: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """grad_x (N, C, in_h, in_w), contiguous: the exact adjoint of resample_skip_fwd's
    resampling, gathered per input element (no atomics). `_blocks` forces (BI, BJ, KX)
    for tests."""
    _check_plane_tensor(grad_out, "grad_out")
    if in_h < 1 or in_w < 1:
        raise ValueError(f"fcn_fast triton: input size must be positive, got ({in_h}, {in_w})")
    N, C, out_h, out_w = grad_out.shape
    grad_x = torch.empty((N, C, in_h, in_w), dtype=grad_out.dtype, device=grad_out.device)
    if grad_x.numel() == 0:
        return grad_x
    if out_h == 0 or out_w == 0:
        return grad_x.zero_()
    win_h, win_w = _window(scale_h, out_h), _window(scale_w, out_w)
    min_programs = 0
    if grad_out.is_cuda:
        sms = torch.cuda.get_device_properties(grad_out.device).multi_processor_count
        min_programs = 4 * sms
    bi, bj, kx = _blocks or _bwd_blocks(N * C, in_h, in_w, win_w, scale_w, min_programs)
    tiles_i, tiles_j = triton.cdiv(in_h, bi), triton.cdiv(in_w, bj)
    grid = (N * C * tiles_i * tiles_j,)
    with device_guard(grad_out):
        _resample_skip_bwd_kernel[grid](
            grad_out,
            grad_x,
            C,
            in_h,
            in_w,
            out_h,
            out_w,
            tiles_j,
            tiles_i * tiles_j,
            *grad_out.stride(),
            win_h,
            win_w,
            *split3(scale_h),
            *split3(bias_h),
            *split3(scale_w),
            *split3(bias_w),
            CLAMP=bool(clamp),
            ACC=_triton_acc_type(grad_out.dtype),
            BI=bi,
            BJ=bj,
            KX=kx,
            CHUNKED=win_w > kx,
            num_warps=_NUM_WARPS,
        )
    return grad_x

"""Tap tables of the resampler: the one Triton kernel that computes in float64.

Along each axis, output index Y samples the input at s = Y * scale + bias (docs/design.md 2.1).
The C++ kernels evaluate that in double (csrc/include/fcn_fast/resample_skip_math.h); Triton
receives scale and bias as float32 (see split3), and float64 arithmetic per element would
cost the kernels that touch every element their memory bandwidth. So one small kernel,
launched once per op call, evaluates the taps of every output row and column (and, for
the backward, the adjoint window of every input column) in float64, exactly as
resample_skip_math.h does, and the element kernels read them.

Layout (offsets in elements; the element kernels recompute them from the sizes):
  itab (int32)  [0, oh)              i0 of output row Y (floor of s; clamped for clamp)
                [oh, oh+ow)          i0 of output column X
                then, with adjoint:  first_y[in_h], first_x[in_w], count_x[in_w]
  wtab (acc)    [0, oh) w0 of rows, [oh, 2oh) w1 of rows, [2oh, 2oh+ow) w0 of columns,
                [2oh+ow, 2oh+2ow) w1 of columns, then with adjoint: wadj_x[in_w, win_x],
                the weight of output column first_x[j] + k on input column j.
The second tap is i1 = i0 + 1 (zero boundary: outside taps carry weight 0; i0 is kept
within [-2, in + 1] so that it stays monotone and int32) or min(i0 + 1, in - 1) (clamp).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fcn_fast.triton._launch import f64, split3

_BLOCK = 256  # table entries per program


class TapTables(NamedTuple):
    itab: torch.Tensor
    wtab: torch.Tensor
    win_y: int  # rows of grad_out that one input row can read (resample_window)
    win_x: int  # the same for columns; the row length of wadj_x


def resample_window(scale: float, out_size: int) -> int:
    """resample_window of resample_skip_math.h, in the same double arithmetic."""
    if not scale > 0.0:
        return out_size
    w = math.floor(2.0 / scale) + 4.0
    return int(w) if w < out_size else out_size


@triton.jit
def tap_f64(o, scale, bias, in_size, CLAMP: tl.constexpr):
    """resample_tap of resample_skip_math.h for int32 output indices o: (i0, i1, w0, w1),
    weights in float64 (0 for taps outside the input under the zero boundary)."""
    s = o.to(tl.float64) * scale + bias
    if CLAMP:
        s = tl.minimum(tl.maximum(s, 0.0), in_size.to(tl.float64))  # in range for the int cast
        i0 = tl.minimum(s.to(tl.int32), in_size - 1)
        lam = tl.minimum(tl.maximum(s - i0.to(tl.float64), 0.0), 1.0)
        i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
        w0 = 1.0 - lam
        w1 = lam
    else:
        base = tl.floor(s)
        lam = s - base
        # Far outside taps all weigh 0; clamping keeps i0 int32 and monotone in o.
        base = tl.minimum(tl.maximum(base, -2.0), in_size.to(tl.float64) + 1.0)
        i0 = base.to(tl.int32)
        i1 = i0 + 1
        w0 = tl.where((i0 >= 0) & (i0 < in_size), 1.0 - lam, 0.0)
        w1 = tl.where((i1 >= 0) & (i1 < in_size), lam, 0.0)
    return i0, i1, w0, w1


@triton.jit
def _first_output_f64(i, scale, bias, out_size):
    """min(resample_first_output(i), out_size) for int32 input indices i."""
    sc = scale + tl.zeros(i.shape, dtype=tl.float64)
    pos = sc > 0.0
    y = tl.ceil((i.to(tl.float64) - 1.0 - bias) / tl.where(pos, sc, 1.0)) - 1.0
    y = tl.minimum(tl.maximum(y, 0.0), out_size.to(tl.float64))
    return tl.where(pos, y.to(tl.int32), 0)


@triton.jit
def _store_forward_taps(itab_ptr, wtab_ptr, o, n_out, i_off, w0_off, w1_off, in_size, scale, bias,
                        CLAMP: tl.constexpr):  # fmt: skip
    """i0, w0, w1 of the output indices o (one axis) into the tables."""
    m = o < n_out
    i0, _, w0, w1 = tap_f64(o, scale, bias, in_size, CLAMP)
    acc_ty = wtab_ptr.dtype.element_ty
    tl.store(itab_ptr + i_off + o, i0, mask=m)
    tl.store(wtab_ptr + w0_off + o, w0.to(acc_ty), mask=m)
    tl.store(wtab_ptr + w1_off + o, w1.to(acc_ty), mask=m)


@triton.jit
def _store_column_adjoint(itab_ptr, wtab_ptr, j, i_off, w_off, in_w, out_w, win_x, scale, bias,
                          CLAMP: tl.constexpr, WIN_P: tl.constexpr):  # fmt: skip
    """first_x, count_x and wadj_x of the input columns j."""
    acc_ty = wtab_ptr.dtype.element_ty
    mj = j < in_w
    first = _first_output_f64(j, scale, bias, out_w)
    count = tl.minimum(win_x, out_w - first)
    tl.store(itab_ptr + i_off + j, first, mask=mj)
    tl.store(itab_ptr + i_off + in_w + j, count, mask=mj)
    k = tl.arange(0, WIN_P)[None, :]
    i0, i1, w0, w1 = tap_f64(first[:, None] + k, scale, bias, in_w, CLAMP)
    jb = j[:, None]
    # resample_weight: the weights of the taps that land on j, summed in acc precision.
    w = tl.where(i0 == jb, w0.to(acc_ty), 0.0) + tl.where(i1 == jb, w1.to(acc_ty), 0.0)
    w = tl.where(k < count[:, None], w, 0.0)
    tl.store(wtab_ptr + w_off + jb * win_x + k, w, mask=mj[:, None] & (k < win_x))


@triton.jit
def _tap_tables_kernel(
    itab_ptr,
    wtab_ptr,
    in_h,
    in_w,
    out_h,
    out_w,
    win_x,
    blocks_rows,
    blocks_cols,
    blocks_first,
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
    BLOCK: tl.constexpr,
    BLOCK_J: tl.constexpr,
    WIN_P: tl.constexpr,
):
    # Sections of the grid, in table order (see the module docstring).
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    if pid < blocks_rows:  # forward taps of the output rows
        _store_forward_taps(
            itab_ptr, wtab_ptr, pid * BLOCK + offs, out_h, 0, 0, out_h, in_h,
            f64(sh0, sh1, sh2), f64(bh0, bh1, bh2), CLAMP,
        )  # fmt: skip
    elif pid < blocks_rows + blocks_cols:  # forward taps of the output columns
        _store_forward_taps(
            itab_ptr, wtab_ptr, (pid - blocks_rows) * BLOCK + offs, out_w, out_h, 2 * out_h,
            2 * out_h + out_w, in_w, f64(sw0, sw1, sw2), f64(bw0, bw1, bw2), CLAMP,
        )  # fmt: skip
    elif pid < blocks_rows + blocks_cols + blocks_first:  # first output row of each input row
        i = (pid - blocks_rows - blocks_cols) * BLOCK + offs
        first = _first_output_f64(i, f64(sh0, sh1, sh2), f64(bh0, bh1, bh2), out_h)
        tl.store(itab_ptr + out_h + out_w + i, first, mask=i < in_h)
    else:  # adjoint window of each input column: first, count and the weight of each output
        j = (pid - blocks_rows - blocks_cols - blocks_first) * BLOCK_J + tl.arange(0, BLOCK_J)
        _store_column_adjoint(
            itab_ptr, wtab_ptr, j, out_h + out_w + in_h, 2 * (out_h + out_w), in_w, out_w,
            win_x, f64(sw0, sw1, sw2), f64(bw0, bw1, bw2), CLAMP, WIN_P,
        )  # fmt: skip


def tap_tables(
    scale_h: float,
    bias_h: float,
    scale_w: float,
    bias_w: float,
    clamp: bool,
    in_h: int,
    in_w: int,
    out_h: int,
    out_w: int,
    acc_dtype: torch.dtype,
    device: torch.device,
    adjoint: bool = False,
) -> TapTables:
    """The tap tables of one resampling, from one allocation and one launch (call it under
    the tensors' device guard). adjoint=True adds first_y, and first_x/count_x/wadj_x."""
    win_y, win_x = resample_window(scale_h, out_h), resample_window(scale_w, out_w)
    n_int = out_h + out_w + (in_h + 2 * in_w if adjoint else 0)
    n_w = 2 * (out_h + out_w) + (in_w * win_x if adjoint else 0)
    ratio = 2 if acc_dtype == torch.float64 else 1
    start = n_int + (n_int & 1)  # 8-byte aligned for float64 weights
    buf = torch.empty(start + ratio * n_w, dtype=torch.int32, device=device)
    itab, wtab = buf[:n_int], buf[start:].view(acc_dtype)
    blocks_rows, blocks_cols = triton.cdiv(out_h, _BLOCK), triton.cdiv(out_w, _BLOCK)
    blocks_first = triton.cdiv(in_h, _BLOCK) if adjoint else 0
    win_p = triton.next_power_of_2(max(win_x, 1))
    block_j = max(1, min(64, 4096 // win_p))
    blocks_adj = triton.cdiv(in_w, block_j) if adjoint else 0
    grid = (blocks_rows + blocks_cols + blocks_first + blocks_adj,)
    if grid[0] > 0:
        _tap_tables_kernel[grid](
            itab,
            wtab,
            in_h,
            in_w,
            out_h,
            out_w,
            win_x,
            blocks_rows,
            blocks_cols,
            blocks_first,
            *split3(scale_h),
            *split3(bias_h),
            *split3(scale_w),
            *split3(bias_w),
            CLAMP=bool(clamp),
            BLOCK=_BLOCK,
            BLOCK_J=block_j,
            WIN_P=win_p,
            num_warps=4,
        )
    return TapTables(itab, wtab, win_y, win_x)


def taps_in_range(scale: float, bias: float, in_size: int, out_size: int) -> bool:
    """Whether every tap of every output lies inside the input (zero boundary), with a
    margin for rounding: then the element kernels need no per-tap masks."""
    if out_size < 1 or not scale >= 0.0:
        return False
    lo = bias - 1e-6
    hi = (out_size - 1) * scale + bias + 1e-6
    return lo >= 0.0 and math.floor(hi) + 1 <= in_size - 1

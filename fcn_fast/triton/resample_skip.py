"""Triton kernels of the resample-skip op (docs/design.md 2.1-2.2): the forward and its adjoint.

Same contract as the C++ kernels (csrc/ops/resample_skip.h); registered as the op's
`triton` backend by fcn_fast/triton/__init__.py. The taps of every output row and column
come from one table kernel (fcn_fast/triton/_taps.py, float64 as the C++ math); the
kernels below touch every element with float32 (float64 for float64 data) and int32
offsets (an INT64 variant for tensors beyond 2^31 elements), and no integer division
per element.

Forward, NCHW output (_fwd_rows_kernel): a program walks a band of output rows of one
(n, c) plane down a tile of columns, keeping the two input rows its rows read blended
horizontally in registers (i0 never decreases: a row of x is gathered once per band, 2
gathers per column), so an output row costs its vertical blend, the skip and full-row
stores that the compiler emits as 16-byte vectors (out_w is passed as a multiple of VEC, so
every row start is provably aligned). Channels_last output (_fwd_pixels_kernel):
a program owns BLOCK_P pixels of one output row times BLOCK_C classes, so stores and the
gathers of a channels_last x run along the contiguous class axis.

Backward (_bwd_kernel): grad_x = Ry^T grad_out Rx, a deterministic gather. A persistent
program owns, in turn, tiles of BI input rows x nj input columns x CB classes. Phase 1
reads each grad_out row of the tile's window once, coalesced (one [CB, BX] load per output
row y), and adds it with its two row weights into two running accumulators, the input
rows i0(y) and i0(y) + 1; a row is complete once i0 moves past it (i0 is monotone in y)
and goes to a per-program scratch slot (L2-resident). Phase 2 applies the column adjoint:
each input column j sums its window of scratch columns with the table's weights. Every
sum runs in a fixed order: bitwise identical run to run, no atomics.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fcn_fast._common import FLOAT_DTYPES, output_memory_format
from fcn_fast.triton._launch import (
    device_guard,
    index_type,
    interpreted,
    persistent_programs,
    pow2,
    pow2_divisor,
    vector_width,
)
from fcn_fast.triton._taps import tap_tables, taps_in_range

# Elements per channels_last forward program (16 per thread at 4 warps: four 16-byte stores
# for fp32).
_TILE = 2048
_NUM_WARPS = 4
# NCHW forward: programs to aim for (~8 a multiprocessor on 132 SMs, 4 waves of tails), and
# the fewest rows a program's band has.
_FILL_PROGRAMS = 4096
_MIN_BAND = 16
# Backward: persistent programs per SM, and the largest phase-2 tile (CB * BI * BJ).
_BWD_PROGRAMS_PER_SM = 4
_BWD_TILE = 2048


@triton.jit
def tap_ok(i, in_size):
    """Whether taps i lie inside [0, in_size) (zero boundary)."""
    return (i >= 0) & (i < in_size)


@triton.jit
def tile_taps(itab_ptr, wtab_ptr, oy, ox, in_h, in_w, out_h, out_w, CLAMP: tl.constexpr):
    """Taps of a [BH, 1] x [1, BW] tile of outputs, from the tables: (i0, i1, w0, w1) of its
    rows ([BH, 1]) and of its columns ([1, BW]). Outputs past the edge take the last row's
    or column's taps (inside x); their results are dropped."""
    ry = tl.minimum(oy, out_h - 1)
    rx = tl.minimum(ox, out_w - 1)
    i0y = tl.load(itab_ptr + ry)
    w0y = tl.load(wtab_ptr + ry)
    w1y = tl.load(wtab_ptr + out_h + ry)
    i0x = tl.load(itab_ptr + out_h + rx)
    w0x = tl.load(wtab_ptr + 2 * out_h + rx)
    w1x = tl.load(wtab_ptr + 2 * out_h + out_w + rx)
    if CLAMP:
        i1y = tl.minimum(i0y + 1, in_h - 1)
        i1x = tl.minimum(i0x + 1, in_w - 1)
    else:
        i1y = i0y + 1
        i1x = i0x + 1
    return i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x


@triton.jit
def blend(
    x_c, r_base, i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x, in_h, in_w, xs_h, xs_w,
    acc_ty: tl.constexpr, ROWS: tl.constexpr, TAP_MASK: tl.constexpr, IDX: tl.constexpr,
):  # fmt: skip
    """The resampled tile of the x plane at x_c, from tile_taps' taps: horizontal blend, then
    vertical, the order of the C++ kernels. Taps outside x (zero boundary, TAP_MASK) are
    masked loads, not a multiplication by their 0 weight (0 * inf would be NaN).

    ROWS == 0: 4 gathers per output. ROWS > 0 (upsampling): the tile's rows read at most
    ROWS input rows from r_base (the first row's i0); each is blended horizontally once, 2
    gathers per column, and added to the rows that tap it: ~2 operations per output and row
    instead of 4 gathers and 6 operations."""
    c0 = i0x.to(IDX) * xs_w
    c1 = i1x.to(IDX) * xs_w
    k0x = tap_ok(i0x, in_w)
    k1x = tap_ok(i1x, in_w)
    if ROWS == 0:
        r0 = i0y.to(IDX) * xs_h
        r1 = i1y.to(IDX) * xs_h
        if TAP_MASK:
            k0y = tap_ok(i0y, in_h)
            k1y = tap_ok(i1y, in_h)
            x00 = tl.load(x_c + r0 + c0, mask=k0y & k0x, other=0.0).to(acc_ty)
            x01 = tl.load(x_c + r0 + c1, mask=k0y & k1x, other=0.0).to(acc_ty)
            x10 = tl.load(x_c + r1 + c0, mask=k1y & k0x, other=0.0).to(acc_ty)
            x11 = tl.load(x_c + r1 + c1, mask=k1y & k1x, other=0.0).to(acc_ty)
        else:
            x00 = tl.load(x_c + r0 + c0).to(acc_ty)
            x01 = tl.load(x_c + r0 + c1).to(acc_ty)
            x10 = tl.load(x_c + r1 + c0).to(acc_ty)
            x11 = tl.load(x_c + r1 + c1).to(acc_ty)
        return w0y * (w0x * x00 + w1x * x01) + w1y * (w0x * x10 + w1x * x11)
    else:
        d0 = i0y - r_base
        d1 = i1y - r_base
        v = tl.zeros_like(w0y * w0x)
        for k in tl.static_range(ROWS):
            row = r_base + k
            if TAP_MASK:
                # A vector mask: the interpreter rejects one broadcast from a scalar test.
                row_ok = tap_ok(row + tl.zeros_like(i0x), in_h)
                r = row.to(IDX) * xs_h
                xa = tl.load(x_c + r + c0, mask=row_ok & k0x, other=0.0).to(acc_ty)
                xb = tl.load(x_c + r + c1, mask=row_ok & k1x, other=0.0).to(acc_ty)
            else:
                # Every tapped row is inside x; one past the end that no output taps reads
                # the last row instead (its weight is 0).
                r = tl.minimum(row, in_h - 1).to(IDX) * xs_h
                xa = tl.load(x_c + r + c0).to(acc_ty)
                xb = tl.load(x_c + r + c1).to(acc_ty)
            h = w0x * xa + w1x * xb
            t0 = d0 == k
            t1 = d1 == k
            coef = tl.where(t0, w0y, 0.0) + tl.where(t1, w1y, 0.0)
            # Only the rows that tap row k take it: 0 * inf would be NaN.
            v = tl.where(t0 | t1, v + coef * h, v)
        return v


@triton.jit
def _tap_row(x_c, row, c0, c1, k0x, k1x, w0x, w1x, in_h, xs_h, acc_ty: tl.constexpr,
             TAP_MASK: tl.constexpr, IDX: tl.constexpr):  # fmt: skip
    """Input row `row` of the x plane at x_c blended horizontally at a row of output columns:
    2 gathers per column (L1/L2 hits: x is 1/f^2 of the output). Under TAP_MASK a tap
    outside x is a masked load of 0, not a multiplication by its 0 weight."""
    r = row.to(IDX) * xs_h
    if TAP_MASK:
        # A vector mask: the interpreter rejects one broadcast from a scalar test.
        row_ok = tap_ok(row + tl.zeros(k0x.shape, tl.int32), in_h)
        xa = tl.load(x_c + r + c0, mask=row_ok & k0x, other=0.0).to(acc_ty)
        xb = tl.load(x_c + r + c1, mask=row_ok & k1x, other=0.0).to(acc_ty)
    else:
        xa = tl.load(x_c + r + c0).to(acc_ty)
        xb = tl.load(x_c + r + c1).to(acc_ty)
    return w0x * xa + w1x * xb


@triton.jit
def _fwd_rows_kernel(
    x_ptr,
    skip_ptr,
    out_ptr,
    itab_ptr,
    wtab_ptr,
    C,
    in_h,
    in_w,
    out_h,
    out_w_v,
    tiles_w,
    bands,
    band_h,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ss_n,
    ss_c,
    ss_h,
    ss_w,
    skip_y,
    skip_x,
    CLAMP: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    TAP_MASK: tl.constexpr,
    EVEN_W: tl.constexpr,
    IDX: tl.constexpr,
    VEC: tl.constexpr,
    SKIP_ALIGN: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """A program walks a band of band_h output rows of one (n, c) plane down a tile of
    BLOCK_W columns. The two input rows its rows read stay blended horizontally in registers
    (h0, h1) and change only when i0 does (i0 never decreases): an output row costs its
    vertical blend, the skip and the store, ~3 operations an element."""
    # out_w as a multiple of VEC: the compiler then knows every output row starts on a
    # 16-byte boundary and that the column mask is constant over each vector.
    out_w = out_w_v * VEC
    acc_ty = wtab_ptr.dtype.element_ty
    pid = tl.program_id(0)
    per_plane = bands * tiles_w
    plane = pid // per_plane  # int32, once per program
    tile = pid - plane * per_plane
    band = tile // tiles_w
    tx = tile - band * tiles_w
    n = plane // C
    c = plane - n * C
    ox = tx * BLOCK_W + tl.arange(0, BLOCK_W)
    rx = tl.minimum(ox, out_w - 1)  # columns past the edge take the last one's taps
    i0x = tl.load(itab_ptr + out_h + rx)
    w0x = tl.load(wtab_ptr + 2 * out_h + rx)
    w1x = tl.load(wtab_ptr + 2 * out_h + out_w + rx)
    i1x = tl.minimum(i0x + 1, in_w - 1) if CLAMP else i0x + 1
    c0 = i0x.to(IDX) * xs_w
    c1 = i1x.to(IDX) * xs_w
    k0x = tap_ok(i0x, in_w)
    k1x = tap_ok(i1x, in_w)
    x_c = x_ptr + n.to(IDX) * xs_n + c.to(IDX) * xs_c
    y_begin = band * band_h
    y_end = tl.minimum(y_begin + band_h, out_h)
    cached = tl.load(itab_ptr + y_begin)  # the input row h0 holds; h1 holds the next
    h0 = _tap_row(x_c, cached, c0, c1, k0x, k1x, w0x, w1x, in_h, xs_h, acc_ty, TAP_MASK, IDX)
    h1 = _tap_row(
        x_c, tl.minimum(cached + 1, in_h - 1) if CLAMP else cached + 1,
        c0, c1, k0x, k1x, w0x, w1x, in_h, xs_h, acc_ty, TAP_MASK, IDX,
    )  # fmt: skip
    m_col = ox < out_w
    # ROWS rows a trip, their skip loads issued first (Little's law: a thread's one 16-byte
    # load a row would leave too few bytes in flight). Past the band's end a trip redoes its
    # last row: the same value stored again.
    for y in range(y_begin, y_end, ROWS):
        skips = ()
        if HAS_SKIP:
            for k in tl.static_range(ROWS):
                yk = tl.minimum(y + k, y_end - 1)
                s_row = (
                    n.to(IDX) * ss_n
                    + c.to(IDX) * ss_c
                    + (yk + skip_y).to(IDX) * ss_h
                    + skip_x.to(IDX) * ss_w
                )
                s_row = tl.multiple_of(s_row, SKIP_ALIGN)
                s_ptr = skip_ptr + s_row + ox.to(IDX) * ss_w
                if EVEN_W:
                    skips = skips + (tl.load(s_ptr).to(acc_ty),)
                else:
                    skips = skips + (tl.load(s_ptr, mask=m_col, other=0.0).to(acc_ty),)
        for k in tl.static_range(ROWS):
            yk = tl.minimum(y + k, y_end - 1)
            i0 = tl.load(itab_ptr + yk)
            w0y = tl.load(wtab_ptr + yk)
            w1y = tl.load(wtab_ptr + out_h + yk)
            if i0 != cached:
                if i0 == cached + 1:
                    h0 = h1
                else:
                    h0 = _tap_row(
                        x_c, i0, c0, c1, k0x, k1x, w0x, w1x, in_h, xs_h, acc_ty, TAP_MASK, IDX
                    )
                h1 = _tap_row(
                    x_c, tl.minimum(i0 + 1, in_h - 1) if CLAMP else i0 + 1,
                    c0, c1, k0x, k1x, w0x, w1x, in_h, xs_h, acc_ty, TAP_MASK, IDX,
                )  # fmt: skip
                cached = i0
            v = w0y * h0 + w1y * h1
            if HAS_SKIP:
                v += skips[k]
            o_ptr = out_ptr + (plane.to(IDX) * out_h + yk) * out_w + ox
            if EVEN_W:
                tl.store(o_ptr, v.to(out_ptr.dtype.element_ty))
            else:
                tl.store(o_ptr, v.to(out_ptr.dtype.element_ty), mask=m_col)


@triton.jit
def _fwd_pixels_kernel(
    x_ptr,
    skip_ptr,
    out_ptr,
    itab_ptr,
    wtab_ptr,
    C_v,
    in_h,
    in_w,
    out_h,
    out_w,
    p_blocks,
    c_blocks,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ss_n,
    ss_c,
    ss_h,
    ss_w,
    skip_y,
    skip_x,
    CLAMP: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    TAP_MASK: tl.constexpr,
    EVEN: tl.constexpr,
    IDX: tl.constexpr,
    VEC: tl.constexpr,
    SKIP_ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Channels_last output: out[n, y, x, c] at ((n * out_h + y) * out_w + x) * C + c.
    C = C_v * VEC  # a multiple of VEC, so pixel rows start aligned (see _fwd_rows_kernel)
    acc_ty = wtab_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rest = pid // c_blocks
    cb = pid - rest * c_blocks
    row = rest // p_blocks  # n * out_h + y
    pb = rest - row * p_blocks
    n = row // out_h
    y = row - n * out_h
    ox = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    rx = tl.minimum(ox, out_w - 1)
    cl = tl.minimum(cc, C - 1)  # classes past C read class C - 1; their stores are masked
    # The row's taps, spread over the pixels (a vector mask below: the interpreter rejects
    # masks broadcast from a scalar comparison).
    i0y = tl.load(itab_ptr + y) + tl.zeros_like(ox)
    w0y = tl.load(wtab_ptr + y)
    w1y = tl.load(wtab_ptr + out_h + y)
    i0x = tl.load(itab_ptr + out_h + rx)
    w0x = tl.load(wtab_ptr + 2 * out_h + rx)[:, None]
    w1x = tl.load(wtab_ptr + 2 * out_h + out_w + rx)[:, None]
    if CLAMP:
        i1y = tl.minimum(i0y + 1, in_h - 1)
        i1x = tl.minimum(i0x + 1, in_w - 1)
    else:
        i1y = i0y + 1
        i1x = i0x + 1

    x_base = x_ptr + n.to(IDX) * xs_n + (cl.to(IDX) * xs_c)[None, :]
    r0 = (i0y.to(IDX) * xs_h)[:, None]
    r1 = (i1y.to(IDX) * xs_h)[:, None]
    c0 = (i0x.to(IDX) * xs_w)[:, None]
    c1 = (i1x.to(IDX) * xs_w)[:, None]
    if TAP_MASK:
        k0y = tap_ok(i0y, in_h)[:, None]
        k1y = tap_ok(i1y, in_h)[:, None]
        k0x = tap_ok(i0x, in_w)[:, None]
        k1x = tap_ok(i1x, in_w)[:, None]
        x00 = tl.load(x_base + r0 + c0, mask=k0y & k0x, other=0.0).to(acc_ty)
        x01 = tl.load(x_base + r0 + c1, mask=k0y & k1x, other=0.0).to(acc_ty)
        x10 = tl.load(x_base + r1 + c0, mask=k1y & k0x, other=0.0).to(acc_ty)
        x11 = tl.load(x_base + r1 + c1, mask=k1y & k1x, other=0.0).to(acc_ty)
    else:
        x00 = tl.load(x_base + r0 + c0).to(acc_ty)
        x01 = tl.load(x_base + r0 + c1).to(acc_ty)
        x10 = tl.load(x_base + r1 + c0).to(acc_ty)
        x11 = tl.load(x_base + r1 + c1).to(acc_ty)
    v = w0y * (w0x * x00 + w1x * x01) + w1y * (w0x * x10 + w1x * x11)

    m_out = (ox < out_w)[:, None] & (cc < C)[None, :]
    if HAS_SKIP:
        s_pix = n.to(IDX) * ss_n + (y + skip_y).to(IDX) * ss_h + (ox + skip_x).to(IDX) * ss_w
        s_pix = tl.multiple_of(s_pix, SKIP_ALIGN)
        s_ptr = skip_ptr + s_pix[:, None] + (cc.to(IDX) * ss_c)[None, :]
        if EVEN:
            v += tl.load(s_ptr).to(acc_ty)
        else:
            v += tl.load(s_ptr, mask=m_out, other=0.0).to(acc_ty)
    o_pix = (row.to(IDX) * out_w + ox) * C
    o_ptr = out_ptr + o_pix[:, None] + cc[None, :]
    if EVEN:
        tl.store(o_ptr, v.to(out_ptr.dtype.element_ty))
    else:
        tl.store(o_ptr, v.to(out_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def flush_rows(slot_rows, lo, hi, i_lo, r, acc0, acc1, BX: tl.constexpr):
    """Store the finished input rows [lo, hi) of the running accumulators to the scratch
    slot: row r is acc0, row r + 1 is acc1, rows further on got no contribution (0)."""
    for rw in range(lo, hi):
        v = tl.where(rw == r, acc0, tl.where(rw == r + 1, acc1, 0.0))
        tl.store(slot_rows + (rw - i_lo) * BX, v)


@triton.jit
def column_adjoint(
    slot,
    itab_ptr,
    wtab_ptr,
    j_lo,
    nj,
    x_lo,
    in_w,
    out_h,
    out_w,
    in_h,
    win_x,
    CB: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    BX: tl.constexpr,
):
    """Phase 2 of the backward: [CB, BI, BJ] = for each input column j of the tile, the sum
    over its window k < count[j] of wadj_x[j, k] * slot[cb, i, first_x[j] + k - x_lo]."""
    acc_ty = wtab_ptr.dtype.element_ty
    js = tl.arange(0, BJ)
    cols = j_lo + js
    j_ok = (js < nj) & (cols < in_w)
    i_fx = out_h + out_w + in_h
    fx = tl.load(itab_ptr + i_fx + cols, mask=j_ok, other=0) - x_lo
    count = tl.load(itab_ptr + i_fx + in_w + cols, mask=j_ok, other=0)
    w_row = wtab_ptr + 2 * (out_h + out_w) + cols * win_x
    s_ptr = (
        slot
        + tl.arange(0, CB)[:, None, None] * (BI * BX)
        + tl.arange(0, BI)[None, :, None] * BX
        + fx[None, None, :]
    )
    acc = tl.zeros([CB, BI, BJ], dtype=acc_ty)
    for k in range(win_x):
        take = k < count
        w = tl.load(w_row + k, mask=take, other=0.0)
        s = tl.load(s_ptr + k, mask=take[None, None, :], other=0.0)
        acc += w[None, None, :] * s
    return acc


@triton.jit
def store_tile(gx_ptr, acc, n, cc, i_lo, j_lo, nj, C, in_h, in_w, s_n, s_c, s_h, s_w,
               IDX: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):  # fmt: skip
    """Store a [CB, BI, BJ] tile of grad_x (classes cc, rows i_lo.., columns j_lo..)."""
    rows = i_lo + tl.arange(0, BI)
    js = tl.arange(0, BJ)
    cols = j_lo + js
    off = (
        n.to(IDX) * s_n
        + (cc.to(IDX) * s_c)[:, None, None]
        + (rows.to(IDX) * s_h)[None, :, None]
        + (cols.to(IDX) * s_w)[None, None, :]
    )
    m = (cc < C)[:, None, None] & (rows < in_h)[None, :, None]
    m = m & ((js < nj) & (cols < in_w))[None, None, :]
    tl.store(gx_ptr + off, acc.to(gx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_kernel(
    g_ptr,
    gx_ptr,
    scratch_ptr,
    itab_ptr,
    wtab_ptr,
    C,
    in_h,
    in_w,
    out_h,
    out_w,
    n_tiles,
    tiles_i,
    tiles_j,
    c_blocks,
    nj,
    win_y,
    win_x,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    gxs_n,
    gxs_c,
    gxs_h,
    gxs_w,
    CLAMP: tl.constexpr,
    IDX: tl.constexpr,
    VEC: tl.constexpr,
    G_ALIGN: tl.constexpr,
    CB: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    BX: tl.constexpr,
):
    acc_ty = wtab_ptr.dtype.element_ty
    pid = tl.program_id(0)
    cls = tl.arange(0, CB)
    xs = tl.arange(0, BX)
    slot = scratch_ptr + pid * (CB * BI * BX)
    slot_rows = slot + cls[:, None] * (BI * BX) + xs[None, :]
    i_fy = out_h + out_w
    for t in range(pid, n_tiles, tl.num_programs(0)):
        # Tile order: row tiles fastest, so programs running side by side share the grad_out
        # rows of their vertical halo in L2.
        rest = t // tiles_i
        ti = t - rest * tiles_i
        rest2 = rest // tiles_j
        tj = rest - rest2 * tiles_j
        n = rest2 // c_blocks
        cb = rest2 - n * c_blocks
        i_lo = ti * BI
        i_hi = tl.minimum(i_lo + BI, in_h)
        j_lo = tj * nj
        cc = cb * CB + cls
        # The output columns of the tile's input columns, from an aligned start.
        x_lo = (tl.load(itab_ptr + i_fy + in_h + j_lo) // VEC) * VEC
        y_lo = tl.load(itab_ptr + i_fy + i_lo)
        y_hi = tl.minimum(tl.load(itab_ptr + i_fy + i_hi - 1) + win_y, out_h)
        ox = x_lo + xs
        m = (cc < C)[:, None] & (ox < out_w)[None, :]
        # The tile's first class and image in one (hinted) scalar: with CB = 1 the column
        # offsets are then provably contiguous and aligned.
        g_plane = n.to(IDX) * gs_n + (cb * CB).to(IDX) * gs_c
        g_cols = (cls.to(IDX) * gs_c)[:, None] + (ox.to(IDX) * gs_w)[None, :]

        acc0 = tl.zeros([CB, BX], dtype=acc_ty)  # input row r
        acc1 = tl.zeros([CB, BX], dtype=acc_ty)  # input row r + 1
        r = i_lo - 2
        # Three rows in flight (a persistent program has few warps to hide DRAM latency
        # with): g_a is row y, g_b row y + 1, g_c row y + 2; loads past the window re-read
        # its last row.
        y_last = tl.maximum(y_hi - 1, 0)
        row = tl.multiple_of(g_plane + tl.minimum(y_lo, y_last).to(IDX) * gs_h, G_ALIGN)
        g_a = tl.load(g_ptr + row + g_cols, mask=m, other=0.0)
        row = tl.multiple_of(g_plane + tl.minimum(y_lo + 1, y_last).to(IDX) * gs_h, G_ALIGN)
        g_b = tl.load(g_ptr + row + g_cols, mask=m, other=0.0)
        row = tl.multiple_of(g_plane + tl.minimum(y_lo + 2, y_last).to(IDX) * gs_h, G_ALIGN)
        g_c = tl.load(g_ptr + row + g_cols, mask=m, other=0.0)
        tl.debug_barrier()  # the slot's previous tile has been read by every thread
        for y in range(y_lo, y_hi):
            i0 = tl.load(itab_ptr + y)
            w0 = tl.load(wtab_ptr + y)
            w1 = tl.load(wtab_ptr + out_h + y)
            g = g_a.to(acc_ty)
            g_a = g_b
            g_b = g_c
            row = tl.multiple_of(g_plane + tl.minimum(y + 3, y_last).to(IDX) * gs_h, G_ALIGN)
            g_c = tl.load(g_ptr + row + g_cols, mask=m, other=0.0)
            if i0 > r:
                # Input rows below i0 are complete: row r is acc0, r + 1 acc1, and rows
                # further on got nothing (downsampling). (flush_rows, inlined: a helper
                # call per row costs the interpreter milliseconds.)
                for rw in range(tl.maximum(r, i_lo), tl.minimum(i0, i_hi)):
                    v = tl.where(rw == r, acc0, tl.where(rw == r + 1, acc1, 0.0))
                    tl.store(slot_rows + (rw - i_lo) * BX, v)
                acc0 = tl.where(i0 == r + 1, acc1, 0.0)
                acc1 = tl.zeros([CB, BX], dtype=acc_ty)
                r = i0
            # The second tap: row i0 + 1, or i0 itself at the clamp edge, where both weights
            # add (resample_weight).
            if CLAMP:
                same = i0 >= in_h - 1
                acc0 += (w0 + tl.where(same, w1, 0.0)) * g
                acc1 += tl.where(same, 0.0, w1) * g
            else:
                acc0 += w0 * g
                acc1 += w1 * g
        flush_rows(slot_rows, tl.maximum(r, i_lo), i_hi, i_lo, r, acc0, acc1, BX)
        tl.debug_barrier()  # the slot's rows are visible to every thread

        acc = column_adjoint(
            slot,
            itab_ptr,
            wtab_ptr,
            j_lo,
            nj,
            x_lo,
            in_w,
            out_h,
            out_w,
            in_h,
            win_x,
            CB,
            BI,
            BJ,
            BX,
        )
        store_tile(gx_ptr, acc, n, cc, i_lo, j_lo, nj, C, in_h, in_w, gxs_n, gxs_c, gxs_h, gxs_w,
                   IDX, BI, BJ)  # fmt: skip


def _check_plane_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise ValueError(f"fcn_fast triton: {name} must be a 4-D tensor (N, C, H, W)")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fcn_fast triton: {name} must be floating point, got {t.dtype}")


# Tile height of the separable forward, and the most input rows it blends per tile (about
# 2 * ROWS operations per output, against ~22 for 4 gathers and their blend).
SEPARABLE_BLOCK_H = 8
_MAX_ROWS = 6
# The interpreter pays per operation, where the separable path has ROWS times more: it
# takes the 4-gather path unless a test asks for the other (tests/test_triton_kernels.py).
SEPARABLE_IN_INTERPRETER = False


def separable_rows(scale_h: float, block_h: int, device: torch.device) -> int:
    """ROWS of blend(): how many input rows a tile of block_h output rows can tap (their
    first taps differ by at most ceil((block_h - 1) * scale), +1 for the second tap, +1 for
    rounding of the float64 taps), or 0 (4 gathers per output) where that is not cheaper."""
    if device.type == "cpu" and not SEPARABLE_IN_INTERPRETER:
        return 0
    rows = math.floor((block_h - 1) * scale_h + 1e-9) + 3 if scale_h >= 0.0 else 0
    return rows if rows <= min(_MAX_ROWS, block_h + 1) else 0


def _zero_taps_in_range(scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w):
    """Whether the forward can skip per-tap masks: always under clamp, and under the zero
    boundary when every tap lies inside x (the FCN heads' crops mostly do)."""
    return clamp or (
        taps_in_range(scale_h, bias_h, in_h, out_h) and taps_in_range(scale_w, bias_w, in_w, out_w)
    )


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
    memory_format = output_memory_format(x)
    out = torch.empty(
        (N, C, out_h, out_w), dtype=x.dtype, device=x.device, memory_format=memory_format
    )
    if out.numel() == 0:
        return out
    if in_h < 1 or in_w < 1:
        raise ValueError("fcn_fast triton: x has an empty spatial axis")
    with device_guard(x):
        _forward(
            x, skip, out, scale_h, bias_h, scale_w, bias_w, clamp, skip_y, skip_x, memory_format
        )
    return out


def _forward(x, skip, out, scale_h, bias_h, scale_w, bias_w, clamp, skip_y, skip_x, fmt):
    N, C, in_h, in_w = x.shape
    out_h, out_w = out.shape[2:]
    tables = tap_tables(
        scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w,
        acc_dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
        device=x.device,
    )  # fmt: skip
    has_skip = skip is not None
    skip_arg = skip if has_skip else out
    ss = skip_arg.stride()
    tap_mask = not _zero_taps_in_range(
        scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w
    )
    vec_max = vector_width(x.dtype)
    common = dict(
        CLAMP=bool(clamp),
        HAS_SKIP=has_skip,
        TAP_MASK=tap_mask,
        IDX=index_type(x, skip, out),
        num_warps=_NUM_WARPS,
    )
    if fmt == torch.channels_last:
        vec = pow2_divisor(vec_max, C)
        block_c = min(pow2(C), 64)
        block_p = max(1, min(pow2(out_w), _TILE // block_c))
        p_blocks, c_blocks = triton.cdiv(out_w, block_p), triton.cdiv(C, block_c)
        # Skip loads are vectors too when its class axis is contiguous and aligned.
        skip_align = (
            pow2_divisor(vec, ss[0], ss[2], ss[3], skip_y * ss[2] + skip_x * ss[3])
            if has_skip and ss[1] == 1
            else 1
        )
        grid = (N * out_h * p_blocks * c_blocks,)
        _fwd_pixels_kernel[grid](
            x, skip_arg, out, tables.itab, tables.wtab,
            C // vec, in_h, in_w, out_h, out_w, p_blocks, c_blocks,
            *x.stride(), *ss, skip_y, skip_x,
            EVEN=out_w % block_p == 0 and C % block_c == 0,
            VEC=vec, SKIP_ALIGN=skip_align, BLOCK_P=block_p, BLOCK_C=block_c, **common,
        )  # fmt: skip
    else:
        vec = pow2_divisor(vec_max, out_w)
        # One 16-byte vector a thread a row; rows a trip: 32 bytes of skip in flight a thread.
        block_w = min(pow2(out_w), vec * 32 * _NUM_WARPS)
        tiles_w = triton.cdiv(out_w, block_w)
        # Bands of rows: about _FILL_PROGRAMS programs, each band long enough that loading
        # its first two input rows is a small part of its work.
        planes = N * C * tiles_w
        band_h = min(out_h, max(_MIN_BAND, triton.cdiv(planes * out_h, _FILL_PROGRAMS)))
        bands = triton.cdiv(out_h, band_h)
        skip_align = (
            pow2_divisor(vec, ss[0], ss[1], ss[2], skip_x) if has_skip and ss[3] == 1 else 1
        )
        grid = (N * C * bands * tiles_w,)
        _fwd_rows_kernel[grid](
            x, skip_arg, out, tables.itab, tables.wtab,
            C, in_h, in_w, out_h, out_w // vec, tiles_w, bands, band_h,
            *x.stride(), *ss, skip_y, skip_x,
            EVEN_W=out_w % block_w == 0, VEC=vec, SKIP_ALIGN=skip_align,
            ROWS=(4 if x.element_size() == 2 else 2) if has_skip else 1, BLOCK_W=block_w,
            **common,
        )  # fmt: skip


class BackwardConfig:
    """Tile of the backward: CB classes x BI input rows x nj input columns (BJ >= nj, a
    power of two), reading BX output columns per grad_out row."""

    def __init__(self, cb: int, bi: int, bj: int, bx: int, nj: int):
        self.cb, self.bi, self.bj, self.bx, self.nj = cb, bi, bj, bx, nj

    @property
    def slot(self) -> int:
        return self.cb * self.bi * self.bx

    def check(self, scale_w: float, win_x: int, vec: int) -> None:
        """The BX output columns from the tile's aligned start must hold every output its nj
        input columns read: first_x grows by at most 1 / scale + 1 per column
        (resample_first_output), the window is win_x, the alignment costs < vec."""
        span = (self.nj - 1) / scale_w + 1 if scale_w > 0.0 else 0
        if self.nj > self.bj or span + win_x + vec - 1 > self.bx + 1e-6:
            raise ValueError(f"fcn_fast triton: backward tile {vars(self)} too small")


def backward_config(
    C: int,
    in_h: int,
    in_w: int,
    scale_w: float,
    win_x: int,
    vec: int,
    class_major: bool,
    elt: int,
    interpreted: bool = False,
) -> BackwardConfig:
    """Class-contiguous grad_out (channels_last) takes 32 bytes of classes per pixel and
    ~2048 elements per load; NCHW takes one class and one 16-byte vector per thread. The
    row tile BI trades the vertical halo (~2f rows per tile) against phase 2's registers.
    The interpreter pays per operation, not per element: there, all classes in one tile."""
    tile = _BWD_TILE
    if interpreted:
        cb, bx, tile = min(pow2(C), 16), 128 * vec, 8 * _BWD_TILE
    elif class_major:
        cb = min(pow2(C), max(1, 32 // elt))
        bx = max(64, 2048 // cb)
    else:
        cb = 1
        bx = 128 * vec
    # Outputs of nj consecutive input columns span <= (nj - 1) / scale + 1 + win_x; the
    # aligned start adds < vec: nj as large as BX allows (resample_first_output's bounds).
    while bx < win_x + vec + 2:
        bx *= 2
    # (scale 0: one output column, which every input column reads)
    nj = int((bx - win_x - vec - 1) * scale_w) + 1 if scale_w > 0.0 else in_w
    bi = max(1, min(pow2(in_h), 16))
    nj = max(1, min(nj, in_w, max(1, tile // (cb * bi))))
    bj = pow2(nj)
    return BackwardConfig(cb, bi, bj, bx, nj)


def resample_skip_backward_triton(
    grad_out: torch.Tensor,
    in_h: int,
    in_w: int,
    scale_h: float,
    bias_h: float,
    scale_w: float,
    bias_w: float,
    clamp: bool,
    _config: BackwardConfig | None = None,
) -> torch.Tensor:
    """grad_x (N, C, in_h, in_w), contiguous: the exact adjoint of resample_skip_triton's
    resampling, gathered per input element (no atomics). `_config` forces the tiling (tests)."""
    _check_plane_tensor(grad_out, "grad_out")
    if in_h < 1 or in_w < 1:
        raise ValueError(f"fcn_fast triton: input size must be positive, got ({in_h}, {in_w})")
    N, C, out_h, out_w = grad_out.shape
    grad_x = torch.empty((N, C, in_h, in_w), dtype=grad_out.dtype, device=grad_out.device)
    if grad_x.numel() == 0:
        return grad_x
    if out_h == 0 or out_w == 0:
        return grad_x.zero_()
    with device_guard(grad_out):
        _backward(grad_out, grad_x, scale_h, bias_h, scale_w, bias_w, clamp, _config)
    return grad_x


def _backward(grad_out, grad_x, scale_h, bias_h, scale_w, bias_w, clamp, config):
    N, C, out_h, out_w = grad_out.shape
    in_h, in_w = grad_x.shape[2:]
    acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    tables = tap_tables(
        scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w,
        acc_dtype=acc, device=grad_out.device, adjoint=True,
    )  # fmt: skip
    gs = grad_out.stride()
    class_major = gs[1] == 1 and C > 1 and gs[3] != 1
    vec = vector_width(grad_out.dtype)
    if config is None:
        config = backward_config(
            C, in_h, in_w, scale_w, tables.win_x, vec, class_major, grad_out.element_size(),
            interpreted=interpreted(grad_out),
        )  # fmt: skip
    config.check(scale_w, tables.win_x, vec)
    # Row starts of grad_out are vector-aligned when its strides allow (contiguous rows).
    g_align = pow2_divisor(vec, gs[0], gs[1], gs[2]) if gs[3] == 1 else 1
    tiles_i, tiles_j = triton.cdiv(in_h, config.bi), triton.cdiv(in_w, config.nj)
    c_blocks = triton.cdiv(C, config.cb)
    n_tiles = N * c_blocks * tiles_j * tiles_i
    programs = persistent_programs(grad_out.device, n_tiles, _BWD_PROGRAMS_PER_SM)
    scratch = torch.empty(programs * config.slot, dtype=acc, device=grad_out.device)
    _bwd_kernel[(programs,)](
        grad_out, grad_x, scratch, tables.itab, tables.wtab,
        C, in_h, in_w, out_h, out_w, n_tiles, tiles_i, tiles_j, c_blocks, config.nj,
        tables.win_y, tables.win_x, *gs, *grad_x.stride(),
        CLAMP=bool(clamp), IDX=index_type(grad_out, grad_x), VEC=vec, G_ALIGN=g_align,
        CB=config.cb, BI=config.bi, BJ=config.bj, BX=config.bx, num_warps=_NUM_WARPS,
    )  # fmt: skip

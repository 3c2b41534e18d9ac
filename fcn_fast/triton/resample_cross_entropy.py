"""Triton kernels of the fused heads (docs/design.md 2.4): resampler + cross-entropy, and
resampler + argmax, without ever storing the full-resolution logits. Contract and math:
csrc/ops/resample_cross_entropy.h; registered by fcn_fast/triton/__init__.py.

z[n, c, Y, X] is the resampler of fcn_fast/triton/resample_skip.py applied to x (taps from
the float64 table kernel, the same blend order), recomputed wherever it is needed.

Forward (_fwd_kernel) and argmax (_argmax_kernel): a program owns a tile of BLOCK_P fine
pixels and walks the classes; per class one logit tile from gathers of x (L1/L2 hits: x is
1/f^2 of the logits). The forward sums exps against a bound, the largest coarse logit at a
pixel's taps (_coarse_max_kernel's pass; z is a convex combination of its taps), with no
running max; a tile with a pixel whose sum is NaN or underflowed walks its classes again
with the online softmax (docs/design.md 2.5). It keeps the per-pixel lse (4 bytes a pixel)
and per-program partials that fcn_fast/triton/pixel_cross_entropy.py's finish kernel adds
in a fixed order.

Backward (_bwd_kernel): grad_x = Ry^T (s * (softmax(z) - q)) Rx per (n, c) plane, the
gather of resample_skip's backward with its grad_out computed in place: a persistent
program owns, in turn, tiles of CB classes x BI input rows x nj input columns, walks the
fine rows y of the tile's window once, computes d loss / d z for [CB, BX] fine pixels from
x (4 taps), the saved lse and the target, and accumulates them into the two input rows y
reads (running accumulators, finished rows to a per-program scratch slot), then applies the
column adjoint from the slot. Fixed summation order, no atomics: bitwise deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcn_fast._common import accumulation_dtype, output_memory_format
from fcn_fast.triton import resample_skip
from fcn_fast.triton._launch import (
    device_guard,
    exact,
    index_type,
    interpreted,
    persistent_programs,
    pow2,
    pow2_divisor,
    split3,
    vector_width,
)
from fcn_fast.triton._taps import tap_tables, taps_in_range
from fcn_fast.triton.pixel_cross_entropy import (
    check_targets,
    finish_kernel,
    finish_pixels,
    grad_coefficients,
    load_target,
    online_add,
    target_weight,
    weight_total,
)
from fcn_fast.triton.resample_skip import (
    SEPARABLE_BLOCK_H,
    BackwardConfig,
    blend,
    column_adjoint,
    flush_rows,
    separable_rows,
    store_tile,
    tap_ok,
    tile_taps,
)

_NUM_WARPS = 4
_BLOCK_P = 512  # fine pixels per forward / argmax program
_CMAX_BLOCK = 256  # coarse pixels per _coarse_max_kernel program
_BWD_PROGRAMS_PER_SM = 2
# [CB, BX] = [8, 256] per fine row and about six such tensors live: 8 elements a thread each.
_BWD_NUM_WARPS = 8


@triton.jit
def _coarse_max_kernel(
    x_ptr, cmax_ptr, total, C, in_h, in_w, xs_n, xs_c, xs_h, xs_w, BLOCK: tl.constexpr,
    IDX: tl.constexpr,
):  # fmt: skip
    """cmax[n, i, j] = max over classes of x[n, :, i, j] in the accumulation dtype: the bound
    of _fwd_kernel's exps (a NaN logit may or may not win here; either way the pixels that
    read it get a NaN sum and take the exact pass)."""
    k = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK)
    mask = k < total
    plane = in_h * in_w
    n = k // plane
    rest = k - n * plane
    i = rest // in_w
    j = rest - i * in_w
    p = x_ptr + n * xs_n + i * xs_h + j * xs_w
    m = tl.full((BLOCK,), float("-inf"), cmax_ptr.dtype.element_ty)
    for _ in range(C):
        m = tl.maximum(m, tl.load(p, mask=mask, other=float("-inf")).to(m.dtype))
        p += xs_c
    tl.store(cmax_ptr + k, m, mask=mask)


@triton.jit
def _logit_bound(cm, i0y, i1y, i0x, i1x, in_h, in_w):
    """The coarse maxima at a tile's taps ([BH, 1] rows x [1, BW] columns), their max per
    pixel: z is a convex combination of its taps, so z <= this. A tap outside x reads as 0
    (the zero boundary's value), so 0 joins the bound there."""
    k0y, k1y = tap_ok(i0y, in_h), tap_ok(i1y, in_h)
    k0x, k1x = tap_ok(i0x, in_w), tap_ok(i1x, in_w)
    r0, r1 = cm + i0y * in_w, cm + i1y * in_w
    m00 = tl.load(r0 + i0x, mask=k0y & k0x, other=0.0)
    m01 = tl.load(r0 + i1x, mask=k0y & k1x, other=0.0)
    m10 = tl.load(r1 + i0x, mask=k1y & k0x, other=0.0)
    m11 = tl.load(r1 + i1x, mask=k1y & k1x, other=0.0)
    return tl.maximum(tl.maximum(m00, m01), tl.maximum(m10, m11))


@triton.jit
def _fwd_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    loss_ptr,
    lse_ptr,
    part_ptr,
    itab_ptr,
    wtab_ptr,
    cmax_ptr,
    C,
    in_h,
    in_w,
    out_h,
    out_w_v,
    tiles_w,
    tiles_per_image,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    t_n,
    t_h,
    t_w,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    CLAMP: tl.constexpr,
    TAP_MASK: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    STORE_LOSS: tl.constexpr,
    IDX: tl.constexpr,
    VEC: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    out_w = out_w_v * VEC  # aligned rows of lse / loss (see resample_skip's forward)
    acc_ty = lse_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // tiles_per_image  # once per program
    tile = pid - n * tiles_per_image
    ty = tile // tiles_w
    oy = ty * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = (tile - ty * tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (oy < out_h) & (ox < out_w)
    eps = exact(eps0, eps1, eps2, acc_ty)
    eps_over_c = exact(epc0, epc1, epc2, acc_ty)
    i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x = tile_taps(
        itab_ptr, wtab_ptr, oy, ox, in_h, in_w, out_h, out_w, CLAMP
    )
    r_base = tl.load(itab_ptr + ty * BLOCK_H)  # i0 of the tile's first row, its smallest
    t = load_target(t_ptr + n.to(IDX) * t_n + oy.to(IDX) * t_h + ox.to(IDX) * t_w, mask)
    x_img = x_ptr + n.to(IDX) * xs_n
    log2e = tl.full((), 1.4426950408889634, acc_ty)
    ln2 = tl.full((), 0.6931471805599453, acc_ty)
    # In base 2 against the bound M (docs/design.md 2.5, as the CUDA forward): per logit
    # one FMA and one exp2 into s = sum 2^(z log2e - m2), no running max to compare with.
    m2 = _logit_bound(cmax_ptr + n.to(IDX) * in_h * in_w, i0y, i1y, i0x, i1x, in_h, in_w) * log2e
    s = tl.zeros((BLOCK_H, BLOCK_W), acc_ty)
    zt = tl.zeros((BLOCK_H, BLOCK_W), acc_ty)
    swx2 = tl.zeros((BLOCK_H, BLOCK_W), acc_ty)
    wacc = tl.zeros((), acc_ty)
    x_c = x_img  # class c's plane, advanced by a class per iteration
    for c in range(C):
        # The logits of class c at the tile's fine pixels, as resample_skip's forward.
        z = blend(
            x_c, r_base, i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x, in_h, in_w, xs_h, xs_w,
            acc_ty, ROWS, TAP_MASK, IDX,
        )  # fmt: skip
        x_c += xs_c
        e2 = z * log2e - m2
        s += tl.exp2(e2)
        if SMOOTH:
            wc = tl.load(w_ptr + c).to(acc_ty) if HAS_WEIGHT else tl.full((), 1.0, acc_ty)
            swx2 += wc * e2
            wacc += wc
        zt = tl.where(t == c, z, zt)
    m = m2 * ln2
    swx = swx2 * ln2
    # Exact unless a logit was NaN or +-inf (NaN sum), or the bound was so loose that the
    # exps underflowed (2^-60): then the tile's classes again, with a running max.
    fast = (s >= 8.67361737988403547e-19) | ~mask
    if tl.min(fast.to(tl.int32)) == 0:
        m_e = tl.full((BLOCK_H, BLOCK_W), float("-inf"), acc_ty)
        s_e = tl.zeros((BLOCK_H, BLOCK_W), acc_ty)
        swx_e = tl.zeros((BLOCK_H, BLOCK_W), acc_ty)
        w_seen = tl.zeros((), acc_ty)
        x_c = x_img
        for c in range(C):
            z = blend(
                x_c, r_base, i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x, in_h, in_w, xs_h, xs_w,
                acc_ty, ROWS, TAP_MASK, IDX,
            )  # fmt: skip
            x_c += xs_c
            m_e, s_e, swx_e, w_seen = online_add(
                z, c, m_e, s_e, swx_e, w_seen, w_ptr, HAS_WEIGHT, SMOOTH
            )
        m = tl.where(fast, m, m_e)
        s = tl.where(fast, s, s_e)
        swx = tl.where(fast, swx, swx_e)
    finish_pixels(
        lse_ptr, loss_ptr, part_ptr, pid, (n.to(IDX) * out_h + oy) * out_w + ox, mask, t, zt, m, s,
        swx, wacc, C, ignore_index, w_ptr, eps, eps_over_c, HAS_WEIGHT, SMOOTH, STORE_LOSS,
    )  # fmt: skip


@triton.jit
def _argmax_kernel(
    x_ptr,
    labels_ptr,
    conf_ptr,
    itab_ptr,
    wtab_ptr,
    C,
    in_h,
    in_w,
    out_h,
    out_w_v,
    tiles_w,
    tiles_per_image,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    CLAMP: tl.constexpr,
    TAP_MASK: tl.constexpr,
    CONFIDENCE: tl.constexpr,
    IDX: tl.constexpr,
    VEC: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    out_w = out_w_v * VEC
    acc_ty = wtab_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // tiles_per_image
    tile = pid - n * tiles_per_image
    ty = tile // tiles_w
    oy = ty * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = (tile - ty * tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (oy < out_h) & (ox < out_w)
    i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x = tile_taps(
        itab_ptr, wtab_ptr, oy, ox, in_h, in_w, out_h, out_w, CLAMP
    )
    r_base = tl.load(itab_ptr + ty * BLOCK_H)
    x_img = x_ptr + n.to(IDX) * xs_n
    x_c = x_img
    best = tl.full((BLOCK_H, BLOCK_W), float("-inf"), acc_ty)
    label = tl.zeros((BLOCK_H, BLOCK_W), tl.int32)
    for c in range(C):
        z = blend(
            x_c,
            r_base,
            i0y,
            i1y,
            w0y,
            w1y,
            i0x,
            i1x,
            w0x,
            w1x,
            in_h,
            in_w,
            xs_h,
            xs_w,
            acc_ty,
            ROWS,
            TAP_MASK,
            IDX,
        )  # the logits of class c, as in _fwd_kernel; fmt: skip
        x_c += xs_c
        # torch.argmax: the first maximum wins; the first NaN beats everything.
        take = (z > best) | ((z != z) & (best == best))
        best = tl.where(take, z, best)
        label = tl.where(take, c, label)
    pix = (n.to(IDX) * out_h + oy) * out_w + ox
    tl.store(labels_ptr + pix, label.to(labels_ptr.dtype.element_ty), mask=mask)
    if CONFIDENCE:
        # exp(z_max - lse) = 1 / sum_c exp(z_c - z_max): a second pass over the classes.
        s = tl.zeros((BLOCK_H, BLOCK_W), acc_ty)
        x_c = x_img
        for _ in range(C):
            z = blend(
                x_c, r_base, i0y, i1y, w0y, w1y, i0x, i1x, w0x, w1x, in_h, in_w, xs_h, xs_w,
                acc_ty, ROWS, TAP_MASK, IDX,
            )  # fmt: skip
            x_c += xs_c
            s += tl.exp(z - best)
        tl.store(conf_ptr + pix, (1.0 / s).to(conf_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    g_ptr,
    x_ptr,
    t_ptr,
    w_ptr,
    lse_ptr,
    wsum_ptr,
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
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    t_n,
    t_h,
    t_w,
    g_n,
    g_h,
    g_w,
    gxs_n,
    gxs_c,
    gxs_h,
    gxs_w,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    CLAMP: tl.constexpr,
    TAP_MASK: tl.constexpr,
    REDUCTION: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    IDX: tl.constexpr,
    VEC: tl.constexpr,
    CB: tl.constexpr,
    BI: tl.constexpr,
    BJ: tl.constexpr,
    BX: tl.constexpr,
):
    acc_ty = wtab_ptr.dtype.element_ty
    pid = tl.program_id(0)
    eps = exact(eps0, eps1, eps2, acc_ty)
    eps_over_c = exact(epc0, epc1, epc2, acc_ty)
    wtotal = weight_total(w_ptr, C, HAS_WEIGHT, acc_ty, 128) if SMOOTH else 0.0
    if REDUCTION == 0:
        g_all = tl.zeros((), acc_ty)
    else:
        g_all = tl.load(g_ptr).to(acc_ty)
        if REDUCTION == 1:
            g_all = g_all / tl.load(wsum_ptr).to(acc_ty)
    cls = tl.arange(0, CB)
    xs = tl.arange(0, BX)
    slot = scratch_ptr + pid * (CB * BI * BX)
    slot_rows = slot + cls[:, None] * (BI * BX) + xs[None, :]
    i_fy = out_h + out_w
    for t in range(pid, n_tiles, tl.num_programs(0)):
        # Tile order: class blocks fastest, then row tiles: programs side by side share the
        # tile's lse and targets (and their vertical halo) in L2.
        rest = t // c_blocks
        cb = t - rest * c_blocks
        rest2 = rest // tiles_i
        ti = rest - rest2 * tiles_i
        n = rest2 // tiles_j
        tj = rest2 - n * tiles_j
        i_lo = ti * BI
        i_hi = tl.minimum(i_lo + BI, in_h)
        j_lo = tj * nj
        cc = cb * CB + cls
        cl = tl.minimum(cc, C - 1)  # classes past C compute on class C - 1; never stored
        x_lo = (tl.load(itab_ptr + i_fy + in_h + j_lo) // VEC) * VEC
        y_lo = tl.load(itab_ptr + i_fy + i_lo)
        y_hi = tl.minimum(tl.load(itab_ptr + i_fy + i_hi - 1) + win_y, out_h)
        ox = x_lo + xs
        x_ok = ox < out_w
        # Column taps of the tile's fine columns (row taps per fine row, below).
        rx = tl.minimum(ox, out_w - 1)
        i0x = tl.load(itab_ptr + out_h + rx)
        w0x = tl.load(wtab_ptr + 2 * out_h + rx)[None, :]
        w1x = tl.load(wtab_ptr + 2 * out_h + out_w + rx)[None, :]
        i1x = tl.minimum(i0x + 1, in_w - 1) if CLAMP else i0x + 1
        k0x = tap_ok(i0x, in_w)[None, :]
        k1x = tap_ok(i1x, in_w)[None, :]
        x_cls = x_ptr + n.to(IDX) * xs_n + (cl.to(IDX) * xs_c)[:, None]
        x_c0 = x_cls + (i0x.to(IDX) * xs_w)[None, :]
        x_c1 = x_cls + (i1x.to(IDX) * xs_w)[None, :]
        if HAS_WEIGHT:
            w_cls = tl.load(w_ptr + cl).to(acc_ty)[:, None]
        else:
            w_cls = tl.full((CB, 1), 1.0, acc_ty)
        t_row = t_ptr + n.to(IDX) * t_n + ox.to(IDX) * t_w
        g_row = g_ptr + n.to(IDX) * g_n + ox.to(IDX) * g_w
        lse_row = lse_ptr + n.to(IDX) * out_h * out_w + ox

        acc0 = tl.zeros([CB, BX], dtype=acc_ty)  # input row r
        acc1 = tl.zeros([CB, BX], dtype=acc_ty)  # input row r + 1
        r = i_lo - 2
        # x's rows i0(y) and i1(y), blended horizontally at the fine columns: they change
        # every 1/scale fine rows, so they are kept (rows hr and its second tap).
        h0 = tl.zeros([CB, BX], dtype=acc_ty)
        h1 = tl.zeros([CB, BX], dtype=acc_ty)
        hr = tl.full((), -(2**30), tl.int32)
        # The next fine row's targets, lse and upstream gradient are loaded one row ahead
        # (rows past the window re-read its last row).
        y_last = tl.maximum(y_hi - 1, 0)
        y_pf = tl.minimum(y_lo, y_last).to(IDX)
        tgt_next = load_target(t_row + y_pf * t_h, x_ok)
        lse_next = tl.load(lse_row + y_pf * out_w, mask=x_ok, other=0.0)
        if REDUCTION == 0:
            g_next = tl.load(g_row + y_pf * g_h, mask=x_ok, other=0.0)
        tl.debug_barrier()  # the slot's previous tile has been read by every thread
        for y in range(y_lo, y_hi):
            i0 = tl.load(itab_ptr + y)
            w0 = tl.load(wtab_ptr + y)
            w1 = tl.load(wtab_ptr + out_h + y)
            i1 = tl.minimum(i0 + 1, in_h - 1) if CLAMP else i0 + 1
            tgt = tgt_next
            lse = lse_next
            y_pf = tl.minimum(y + 1, y_last).to(IDX)
            tgt_next = load_target(t_row + y_pf * t_h, x_ok)
            lse_next = tl.load(lse_row + y_pf * out_w, mask=x_ok, other=0.0)
            # d loss / d z at the fine pixels (y, ox) of classes cc (grad_coef of the C++
            # math): a * softmax - b * onehot - d * w[c].
            valid, _, wt = target_weight(tgt, x_ok, C, ignore_index, w_ptr, HAS_WEIGHT, acc_ty)
            if REDUCTION == 0:
                scale = tl.where(valid, g_next.to(acc_ty), 0.0)
                g_next = tl.load(g_row + y_pf * g_h, mask=x_ok, other=0.0)
            else:
                scale = tl.where(valid, g_all, 0.0)
            a, b = grad_coefficients(scale, wt, wtotal, eps, eps_over_c, SMOOTH)
            if i0 != hr:
                # The 4 taps of x, blended as the forward (helpers inlined, see _fwd_kernel).
                r0 = i0.to(IDX) * xs_h
                r1 = i1.to(IDX) * xs_h
                if TAP_MASK:
                    # Row masks as vectors: the interpreter rejects masks broadcast from a
                    # scalar comparison.
                    k0y = tap_ok(i0 + tl.zeros_like(xs), in_h)[None, :]
                    k1y = tap_ok(i1 + tl.zeros_like(xs), in_h)[None, :]
                    x00 = tl.load(x_c0 + r0, mask=k0y & k0x, other=0.0).to(acc_ty)
                    x01 = tl.load(x_c1 + r0, mask=k0y & k1x, other=0.0).to(acc_ty)
                    x10 = tl.load(x_c0 + r1, mask=k1y & k0x, other=0.0).to(acc_ty)
                    x11 = tl.load(x_c1 + r1, mask=k1y & k1x, other=0.0).to(acc_ty)
                else:
                    x00 = tl.load(x_c0 + r0).to(acc_ty)
                    x01 = tl.load(x_c1 + r0).to(acc_ty)
                    x10 = tl.load(x_c0 + r1).to(acc_ty)
                    x11 = tl.load(x_c1 + r1).to(acc_ty)
                h0 = w0x * x00 + w1x * x01
                h1 = w0x * x10 + w1x * x11
                hr = i0
            z = w0 * h0 + w1 * h1
            lse_b = lse[None, :]
            g = tl.exp(tl.where(z == float("-inf"), float("-inf"), z - lse_b)) * a[None, :]
            if SMOOTH:
                g -= (scale * eps_over_c)[None, :] * w_cls
            g = tl.where(cc[:, None] == tgt[None, :], g - b[None, :], g)
            g = tl.where(valid[None, :], g, 0.0)
            # Into the running rows, as resample_skip's backward (flush_rows inlined).
            if i0 > r:
                for rw in range(tl.maximum(r, i_lo), tl.minimum(i0, i_hi)):
                    v = tl.where(rw == r, acc0, tl.where(rw == r + 1, acc1, 0.0))
                    tl.store(slot_rows + (rw - i_lo) * BX, v)
                acc0 = tl.where(i0 == r + 1, acc1, 0.0)
                acc1 = tl.zeros([CB, BX], dtype=acc_ty)
                r = i0
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


def _tap_mask(scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w) -> bool:
    return not (
        clamp
        or (
            taps_in_range(scale_h, bias_h, in_h, out_h)
            and taps_in_range(scale_w, bias_w, in_w, out_w)
        )
    )


def _pixel_tiles(out_h: int, out_w: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_H, BLOCK_W, tiles_w, tiles per image) of the forward and argmax programs:
    _BLOCK_P fine pixels each, 8 rows when the image has them (upsampling then blends each
    input row once per tile, see resample_skip.blend); more under the interpreter, which
    pays per program."""
    interpreted_direct = device.type == "cpu" and not resample_skip.SEPARABLE_IN_INTERPRETER
    pixels = 4096 if device.type == "cpu" else _BLOCK_P
    block_h = min(pow2(out_h), pixels if interpreted_direct else SEPARABLE_BLOCK_H)
    block_w = min(pow2(out_w), max(pixels // block_h, 16))
    tiles_w = triton.cdiv(out_w, block_w)
    return block_h, block_w, tiles_w, tiles_w * triton.cdiv(out_h, block_h)


def resample_cross_entropy_triton(
    x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp, ignore_index, reduction,
    label_smoothing,
):  # fmt: skip
    """(loss, lse, weight_sum) of the cross-entropy of the resampled x; see the C++ schema."""
    with device_guard(x):
        return _forward(
            x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp, ignore_index,
            reduction, label_smoothing,
        )  # fmt: skip


def _forward(
    x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp, ignore_index, reduction,
    label_smoothing,
):  # fmt: skip
    N, C, in_h, in_w = x.shape
    out_h, out_w = target.shape[1:]
    acc = accumulation_dtype(x.dtype)
    device = x.device
    lse = torch.empty((N, out_h, out_w), dtype=acc, device=device)
    loss = torch.empty((N, out_h, out_w) if reduction == 0 else (), dtype=acc, device=device)
    weight_sum = torch.empty((), dtype=acc, device=device)
    ok = torch.empty((), dtype=torch.bool, device=device)
    block_h, block_w, tiles_w, tiles = _pixel_tiles(out_h, out_w, device)
    grid = N * tiles
    parts = torch.empty((max(grid, 1), 3), dtype=acc, device=device)
    if grid > 0:
        tables = tap_tables(
            scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w, acc, device
        )
        vec = pow2_divisor(vector_width(acc), out_w)
        cmax = torch.empty((N, in_h, in_w), dtype=acc, device=device)
        _coarse_max_kernel[(triton.cdiv(cmax.numel(), _CMAX_BLOCK),)](
            x, cmax, cmax.numel(), C, in_h, in_w, *x.stride(), BLOCK=_CMAX_BLOCK,
            IDX=index_type(x, cmax), num_warps=4,
        )  # fmt: skip
        _fwd_kernel[(grid,)](
            x, target, weight.contiguous() if weight is not None else lse, loss, lse, parts,
            tables.itab, tables.wtab, cmax,
            C, in_h, in_w, out_h, out_w // vec, tiles_w, tiles, *x.stride(), *target.stride(),
            ignore_index, *split3(label_smoothing), *split3(label_smoothing / C),
            CLAMP=bool(clamp),
            TAP_MASK=_tap_mask(scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w),
            HAS_WEIGHT=weight is not None, SMOOTH=label_smoothing > 0, STORE_LOSS=reduction == 0,
            IDX=index_type(x, target, lse), VEC=vec,
            ROWS=separable_rows(scale_h, block_h, x.device), BLOCK_H=block_h, BLOCK_W=block_w,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
    finish_kernel[(1,)](
        parts, grid, loss, weight_sum, ok, REDUCTION=reduction, BLOCK=1024, num_warps=4
    )
    check_targets(ok, C, ignore_index, target)
    return loss, lse, weight_sum


def resample_argmax_triton(
    x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, out_dtype, return_confidence
):
    """(labels (N, out_h, out_w) of out_dtype, confidence float32 or empty)."""
    N, C, in_h, in_w = x.shape
    if out_dtype not in (torch.int64, torch.uint8) or (out_dtype == torch.uint8 and C > 256):
        raise ValueError("fcn_fast triton: out_dtype must be int64, or uint8 for <= 256 classes")
    labels = torch.empty((N, out_h, out_w), dtype=out_dtype, device=x.device)
    # Not asked for: empty, (0, out_h, out_w) as the op's fake kernel says.
    shape = (N if return_confidence else 0, out_h, out_w)
    confidence = torch.empty(shape, dtype=torch.float32, device=x.device)
    if labels.numel() == 0:
        return labels, confidence
    with device_guard(x):
        acc = accumulation_dtype(x.dtype)
        tables = tap_tables(
            scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w, acc, x.device
        )
        block_h, block_w, tiles_w, tiles = _pixel_tiles(out_h, out_w, x.device)
        vec = pow2_divisor(vector_width(acc), out_w)
        _argmax_kernel[(N * tiles,)](
            x, labels, confidence if return_confidence else labels, tables.itab, tables.wtab,
            C, in_h, in_w, out_h, out_w // vec, tiles_w, tiles, *x.stride(),
            CLAMP=bool(clamp),
            TAP_MASK=_tap_mask(scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w),
            CONFIDENCE=bool(return_confidence), IDX=index_type(x, labels), VEC=vec,
            ROWS=separable_rows(scale_h, block_h, x.device), BLOCK_H=block_h, BLOCK_W=block_w,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
    return labels, confidence


def _bwd_config(C: int, in_h: int, in_w: int, scale_w: float, win_x: int, vec: int, interpreted):
    """CB classes share each fine pixel's lse / target / grad load; BX fine columns per row;
    BI input rows per tile. See resample_skip.backward_config for the column count nj. The
    interpreter pays per operation, not per element: there, all classes in one tile."""
    cb = min(pow2(C), 16 if interpreted else 8)
    bx = 256
    while bx < win_x + vec + 2:
        bx *= 2
    nj = int((bx - win_x - vec - 1) * scale_w) + 1 if scale_w > 0.0 else in_w
    bi = max(1, min(pow2(in_h), 16))
    nj = max(1, min(nj, in_w, max(1, 4096 // (cb * bi))))
    return BackwardConfig(cb, bi, pow2(nj), bx, nj)


def resample_cross_entropy_backward_triton(
    grad, x, target, weight, lse, weight_sum, scale_h, bias_h, scale_w, bias_w, clamp,
    ignore_index, reduction, label_smoothing, _config=None,
):  # fmt: skip
    """grad_x in x's dtype and memory format: the resampler's adjoint of d loss / d z,
    gathered per element of x (no atomics). `_config` forces the tiling (tests)."""
    N, C, in_h, in_w = x.shape
    out_h, out_w = target.shape[1:]
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                         memory_format=output_memory_format(x))  # fmt: skip
    if grad_x.numel() == 0:
        return grad_x
    if out_h == 0 or out_w == 0:
        return grad_x.zero_()
    with device_guard(x):
        acc = accumulation_dtype(x.dtype)
        tables = tap_tables(
            scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w, acc, x.device,
            adjoint=True,
        )  # fmt: skip
        vec = vector_width(acc)
        config = _config or _bwd_config(
            C, in_h, in_w, scale_w, tables.win_x, vec, interpreted=interpreted(x)
        )
        config.check(scale_w, tables.win_x, vec)
        tiles_i, tiles_j = triton.cdiv(in_h, config.bi), triton.cdiv(in_w, config.nj)
        c_blocks = triton.cdiv(C, config.cb)
        n_tiles = N * tiles_j * tiles_i * c_blocks
        programs = persistent_programs(x.device, n_tiles, _BWD_PROGRAMS_PER_SM)
        scratch = torch.empty(programs * config.slot, dtype=acc, device=x.device)
        g_strides = grad.stride() if reduction == 0 else (0, 0, 0)
        lse = lse.contiguous()
        w_arg = weight.contiguous() if weight is not None else lse  # indexed as w_ptr + c
        _bwd_kernel[(programs,)](
            grad, x, target, w_arg, lse, weight_sum, grad_x,
            scratch, tables.itab, tables.wtab,
            C, in_h, in_w, out_h, out_w, n_tiles, tiles_i, tiles_j, c_blocks, config.nj,
            tables.win_y, tables.win_x, *x.stride(), *target.stride(), *g_strides,
            *grad_x.stride(), ignore_index, *split3(label_smoothing), *split3(label_smoothing / C),
            CLAMP=bool(clamp),
            TAP_MASK=_tap_mask(scale_h, bias_h, scale_w, bias_w, clamp, in_h, in_w, out_h, out_w),
            REDUCTION=reduction, HAS_WEIGHT=weight is not None, SMOOTH=label_smoothing > 0,
            IDX=index_type(x, target, lse, grad if reduction == 0 else None), VEC=vec,
            CB=config.cb, BI=config.bi, BJ=config.bj, BX=config.bx, num_warps=_BWD_NUM_WARPS,
        )  # fmt: skip
    return grad_x

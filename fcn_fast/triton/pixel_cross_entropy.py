"""Triton kernels of pixel_cross_entropy: the contract of the C++ kernels
(csrc/ops/pixel_cross_entropy.h), registered as the op's `triton` backend by
fcn_fast/triton/__init__.py.

Two layouts of the (N, C, S) logits, each with its own program shape:
* pixel-contiguous (NCHW; also the generic path for any strides): a program owns BLOCK_P
  pixels of one image and walks the classes one at a time, each a [BLOCK_P] load that the
  compiler emits as 16-byte vectors (8 bf16 or 4 fp32 pixels per access). The softmax
  statistics are per pixel, so no reduction crosses threads.
* class-contiguous (channels_last, (N, C) logits): a program owns a [BLOCK_P, BLOCK_C] tile
  that loads rows of classes; the per-pixel max and sums reduce along the contiguous axis,
  inside a warp.
The forward's online softmax costs one exp per logit (a new maximum rescales the running
sum with the exp it computes anyway). It writes the per-pixel lse and one (loss, weight,
bad targets) partial per program; a one-program kernel adds the partials in a fixed order
(deterministic, no atomics) and writes the reduced loss, the weight sum and the targets'
check flag, which the op asserts without a host sync. The backward recomputes
softmax - onehot from lse: it reads the logits once and writes the gradient once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcn_fast._common import TargetOutOfRangeError, accumulation_dtype
from fcn_fast.triton._launch import (
    device_guard,
    exact,
    index_type,
    interpreted,
    pow2,
    pow2_divisor,
    split3,
    vector_width,
)

_NUM_WARPS = 4
_TILE = 2048  # elements per class-contiguous tile
_PARTS = 3  # per program: loss sum, weight sum, bad targets


@triton.jit
def log_sum(s, m):
    """log s, s the sum of exp(x - m) over a pixel's classes; NaN when the max m is +inf, as
    PyTorch (x - max is NaN for the +inf logit): the one-exp update counts a new maximum as
    exp(0) = 1, where the +inf logit's own exp(inf - inf) is NaN."""
    return tl.where(m == float("inf"), float("nan"), tl.log(s))


@triton.jit
def shifted(x, m):
    """x - m, except that a -inf logit stays -inf (shifted_logit of the C++ math)."""
    return tl.where(x == float("-inf"), float("-inf"), x - m)


@triton.jit
def pixel_loss(logs, xt_m, wt, swx, wtotal, eps, eps_over_c, SMOOTH: tl.constexpr):
    """pixel_loss of pixel_cross_entropy_math.h."""
    loss = (1.0 - eps) * (wt * (logs - xt_m))
    if SMOOTH:
        loss += eps_over_c * (wtotal * logs - swx)
    return loss


@triton.jit
def load_target(ptrs, mask):
    """Class-index targets as stored (int64, int32 or uint8: no converted copy), the narrow
    ones widened to int32 in registers; int64 stays int64, so that a label outside int32 is
    still out of range."""
    t = tl.load(ptrs, mask=mask, other=0)
    if t.dtype != tl.int64:
        t = t.to(tl.int32)
    return t


@triton.jit
def online_add(x, c, m, s, swx, wacc, w_ptr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """Class c's logits x into the online softmax (max m, sum s, smoothing sum swx, class
    weights so far wacc), one exp per logit: e = exp(-|x - m|) is the new term when x <= m and
    the rescale of s when x > m; a -inf logit adds 0 (also when m is still -inf, where x - m
    is NaN); NaN poisons s. Returns the new (m, s, swx, wacc)."""
    gt = x > m
    e = tl.exp(tl.where(gt, m - x, x - m))
    e = tl.where(x == float("-inf"), 0.0, e)
    if SMOOTH:
        wc = tl.load(w_ptr + c).to(m.dtype) if HAS_WEIGHT else tl.full((), 1.0, m.dtype)
        # OnlineLse::add: a new maximum moves the weighted sum of the earlier logits.
        # (nested where: a scalar condition in `&` trips the interpreter)
        swx += tl.where(gt, tl.where(wacc != 0.0, wacc * (m - x), 0.0), 0.0)
        m = tl.where(gt, x, m)
        swx += wc * tl.where(x == float("-inf"), float("-inf"), x - m)
        wacc += wc
    else:
        m = tl.where(gt, x, m)
    s = tl.where(gt, s * e + 1.0, s + e)
    return m, s, swx, wacc


@triton.jit
def target_weight(t, mask, C, ignore_index, w_ptr, HAS_WEIGHT: tl.constexpr, acc_ty: tl.constexpr):
    """Per pixel: whether its target counts (in [0, C), not ignore_index), whether it is bad
    (outside [0, C) and not ignore_index), and its class weight (0 where it does not count)."""
    active = mask & (t != ignore_index)
    valid = active & (t >= 0) & (t < C)
    bad = active & ((t < 0) | (t >= C))
    if HAS_WEIGHT:
        wt = tl.load(w_ptr + tl.where(valid, t, 0), mask=valid, other=0.0).to(acc_ty)
    else:
        wt = tl.where(valid, 1.0, 0.0).to(acc_ty)
    return valid, bad, wt


@triton.jit
def finish_pixels(
    lse_ptr, loss_ptr, part_ptr, pid, pix, mask, t, xt, m, s, swx, wtotal, C, ignore_index, w_ptr,
    eps, eps_over_c, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, STORE_LOSS: tl.constexpr,
):  # fmt: skip
    """The end of a forward program, from its pixels' online-softmax state (max m, sum s,
    smoothing sum swx) and target logit xt (any value where the target does not count): their
    lse, their losses (stored for reduction none) and the program's (loss, weight, bad
    targets) partials, which finish_kernel adds."""
    logs = log_sum(s, m)
    tl.store(lse_ptr + pix, m + logs, mask=mask)
    valid, bad, wt = target_weight(t, mask, C, ignore_index, w_ptr, HAS_WEIGHT, m.dtype)
    loss = pixel_loss(logs, shifted(xt, m), wt, swx, wtotal, eps, eps_over_c, SMOOTH)
    loss = tl.where(valid, loss, 0.0)
    if STORE_LOSS:
        tl.store(loss_ptr + pix, loss, mask=mask)
    tl.store(part_ptr + 3 * pid, tl.sum(loss))
    tl.store(part_ptr + 3 * pid + 1, tl.sum(wt))
    tl.store(part_ptr + 3 * pid + 2, tl.sum(bad.to(wt.dtype)))


@triton.jit
def _fwd_pixels_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    loss_ptr,
    lse_ptr,
    part_ptr,
    S_v,
    C,
    sN,
    sC,
    sS,
    tN,
    tS,
    tiles_s,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    STORE_LOSS: tl.constexpr,
    IDX: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # S as a multiple of ALIGN (and sN, sC multiples of it, see the launcher): the compiler
    # then proves every class row of the tile aligned and its mask constant per vector.
    S = S_v * ALIGN
    acc_ty = lse_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // tiles_s  # once per program
    ps = (pid - n * tiles_s) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = ps < S
    eps = exact(eps0, eps1, eps2, acc_ty)
    eps_over_c = exact(epc0, epc1, epc2, acc_ty)
    t = load_target(t_ptr + n.to(IDX) * tN + ps.to(IDX) * tS, mask)
    x_pix = x_ptr + ps.to(IDX) * sS
    row = n.to(IDX) * sN  # offset of class c's row, advanced by sC per class
    m = tl.full((BLOCK_P,), float("-inf"), acc_ty)
    s = tl.zeros((BLOCK_P,), acc_ty)
    xt = tl.zeros((BLOCK_P,), acc_ty)
    swx = tl.zeros((BLOCK_P,), acc_ty)
    wacc = tl.zeros((), acc_ty)  # sum of the class weights so far (the same for every pixel)
    # Unrolled by 8 so that 8 classes' loads are issued before their exps wait on them: 1
    # load in flight a thread left the kernel latency-bound at 30% of copy (model, sm_90:
    # large fp32 / bf16 30% -> 96% / 92%; the backward, already memory-bound, lost in-flight
    # loads when unrolled).
    for c in tl.range(C, loop_unroll_factor=8):
        # Pixels past S read 0, not -inf: no log(0) for them (their results are dropped).
        x = tl.load(x_pix + tl.multiple_of(row, ALIGN), mask=mask, other=0.0).to(acc_ty)
        row += sC
        m, s, swx, wacc = online_add(x, c, m, s, swx, wacc, w_ptr, HAS_WEIGHT, SMOOTH)
        xt = tl.where(t == c, x, xt)
    finish_pixels(
        lse_ptr, loss_ptr, part_ptr, pid, n.to(IDX) * S + ps, mask, t, xt, m, s, swx, wacc, C,
        ignore_index, w_ptr, eps, eps_over_c, HAS_WEIGHT, SMOOTH, STORE_LOSS,
    )  # fmt: skip


@triton.jit
def _fwd_classes_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    loss_ptr,
    lse_ptr,
    part_ptr,
    S,
    C,
    sN,
    sC,
    sS,
    tN,
    tS,
    tiles_s,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    STORE_LOSS: tl.constexpr,
    IDX: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Classes contiguous (sC == 1): [BLOCK_P, BLOCK_C] tiles, reductions along the classes.
    acc_ty = lse_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // tiles_s
    ps = (pid - n * tiles_s) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = ps < S
    eps = exact(eps0, eps1, eps2, acc_ty)
    eps_over_c = exact(epc0, epc1, epc2, acc_ty)
    pix = tl.multiple_of(n.to(IDX) * sN + ps.to(IDX) * sS, ALIGN)
    m = tl.full((BLOCK_P,), float("-inf"), acc_ty)
    s = tl.zeros((BLOCK_P,), acc_ty)
    swx = tl.zeros((BLOCK_P,), acc_ty)
    wacc = tl.zeros((), acc_ty)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        mask_c = cs < C
        x = tl.load(
            x_ptr + pix[:, None] + (cs.to(IDX) * sC)[None, :],
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        ).to(acc_ty)
        x = tl.where(mask_c[None, :], x, float("-inf"))  # padding classes add exp(-inf) = 0
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # -inf guards: no NaN from (-inf) - (-inf), as the C++ math.
        rescale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        d = shifted(x, m_new[:, None])
        s = s * rescale + tl.sum(tl.exp(d), axis=1)
        if SMOOTH:
            if HAS_WEIGHT:
                wc = tl.load(w_ptr + cs, mask=mask_c, other=0.0).to(acc_ty)
            else:
                wc = tl.where(mask_c, 1.0, 0.0).to(acc_ty)
            swx += tl.where(m != m_new, tl.where(wacc != 0.0, wacc * (m - m_new), 0.0), 0.0)
            swx += tl.sum(tl.where(mask_c[None, :], wc[None, :] * d, 0.0), axis=1)
            wacc += tl.sum(wc, axis=0)
        m = m_new
    t = load_target(t_ptr + n.to(IDX) * tN + ps.to(IDX) * tS, mask_p)
    in_range = mask_p & (t >= 0) & (t < C)
    xt = tl.load(x_ptr + pix + tl.where(in_range, t, 0).to(IDX) * sC, mask=in_range, other=0.0)
    finish_pixels(
        lse_ptr, loss_ptr, part_ptr, pid, n.to(IDX) * S + ps, mask_p, t, xt.to(acc_ty), m, s, swx,
        wacc, C, ignore_index, w_ptr, eps, eps_over_c, HAS_WEIGHT, SMOOTH, STORE_LOSS,
    )  # fmt: skip


@triton.jit
def finish_kernel(
    part_ptr,
    n_parts,
    loss_ptr,
    wsum_ptr,
    ok_ptr,
    REDUCTION: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program: adds the per-program (loss, weight, bad) partials in a fixed order, and
    writes the reduced loss (mean: sum / weight sum, NaN when every pixel is ignored),
    the weight sum and whether every target was in range."""
    acc_ty = wsum_ptr.dtype.element_ty
    acc_loss = tl.zeros((BLOCK,), acc_ty)
    acc_w = tl.zeros((BLOCK,), acc_ty)
    acc_bad = tl.zeros((BLOCK,), acc_ty)
    for i0 in range(0, n_parts, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        mask = offs < n_parts
        acc_loss += tl.load(part_ptr + 3 * offs, mask=mask, other=0.0)
        acc_w += tl.load(part_ptr + 3 * offs + 1, mask=mask, other=0.0)
        acc_bad += tl.load(part_ptr + 3 * offs + 2, mask=mask, other=0.0)
    loss = tl.sum(acc_loss, axis=0)
    wsum = tl.sum(acc_w, axis=0)
    if REDUCTION == 1:
        tl.store(loss_ptr, loss / wsum)
    elif REDUCTION == 2:
        tl.store(loss_ptr, loss)
    tl.store(wsum_ptr, wsum)
    tl.store(ok_ptr, tl.sum(acc_bad, axis=0) == 0.0)


@triton.jit
def grad_scale(g_ptr, wsum_ptr, gN, gS, n, ps, valid, REDUCTION: tl.constexpr, IDX: tl.constexpr):
    """Per pixel: d loss / d (pixel loss), 0 for ignored pixels (grad_coef's `scale`)."""
    acc_ty = wsum_ptr.dtype.element_ty
    if REDUCTION == 0:
        g = tl.load(g_ptr + n.to(IDX) * gN + ps.to(IDX) * gS, mask=valid, other=0.0)
        return g.to(acc_ty)
    else:
        g = tl.load(g_ptr).to(acc_ty)
        if REDUCTION == 1:
            g = g / tl.load(wsum_ptr).to(acc_ty)
        return tl.where(valid, g, 0.0)


@triton.jit
def weight_total(w_ptr, C, HAS_WEIGHT: tl.constexpr, acc_ty: tl.constexpr, BLOCK: tl.constexpr):
    """sum_c w[c] (C without weights), in a fixed order."""
    if HAS_WEIGHT:
        acc = tl.zeros((BLOCK,), acc_ty)
        for c0 in range(0, C, BLOCK):
            cs = c0 + tl.arange(0, BLOCK)
            acc += tl.load(w_ptr + cs, mask=cs < C, other=0.0).to(acc_ty)
        return tl.sum(acc, axis=0)
    else:
        return tl.full((), C, acc_ty)


@triton.jit
def grad_coefficients(scale, wt, wtotal, eps, eps_over_c, SMOOTH: tl.constexpr):
    """grad_coef of the C++ math, d loss / d x[c] = softmax[c] * a - [c == t] * b - d * w[c]:
    (a, b) per pixel, from its scale (grad_scale) and target weight; d is scale * eps_over_c.
    wtotal (the sum of the class weights) matters only when smoothing."""
    b = scale * ((1.0 - eps) * wt)
    if SMOOTH:
        return b + scale * (eps_over_c * wtotal), b
    else:
        return b, b


@triton.jit
def _bwd_pixels_kernel(
    g_ptr,
    x_ptr,
    t_ptr,
    w_ptr,
    lse_ptr,
    wsum_ptr,
    out_ptr,
    S_v,
    C,
    sN,
    sC,
    sS,
    tN,
    tS,
    gN,
    gS,
    oN,
    oC,
    oS,
    tiles_s,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    REDUCTION: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    IDX: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    S = S_v * ALIGN
    acc_ty = lse_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // tiles_s
    ps = (pid - n * tiles_s) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = ps < S
    eps = exact(eps0, eps1, eps2, acc_ty)
    eps_over_c = exact(epc0, epc1, epc2, acc_ty)
    t = load_target(t_ptr + n.to(IDX) * tN + ps.to(IDX) * tS, mask)
    valid, _, wt = target_weight(t, mask, C, ignore_index, w_ptr, HAS_WEIGHT, acc_ty)
    scale = grad_scale(g_ptr, wsum_ptr, gN, gS, n, ps, valid, REDUCTION, IDX)
    wtotal = weight_total(w_ptr, C, HAS_WEIGHT, acc_ty, 128) if SMOOTH else 0.0
    a, b = grad_coefficients(scale, wt, wtotal, eps, eps_over_c, SMOOTH)
    d = scale * eps_over_c
    lse = tl.load(lse_ptr + n.to(IDX) * S + ps, mask=mask, other=0.0)
    x_pix = x_ptr + ps.to(IDX) * sS
    o_pix = out_ptr + ps.to(IDX) * oS
    x_row = n.to(IDX) * sN  # class c's rows, advanced by a class per iteration
    o_row = n.to(IDX) * oN
    for c in range(C):
        x = tl.load(x_pix + tl.multiple_of(x_row, ALIGN), mask=mask, other=0.0).to(acc_ty)
        # shifted() inlined (a helper call per class is slow in the interpreter)
        grad = tl.exp(tl.where(x == float("-inf"), float("-inf"), x - lse)) * a
        if SMOOTH:
            if HAS_WEIGHT:
                grad -= d * tl.load(w_ptr + c).to(acc_ty)
            else:
                grad -= d
        grad = tl.where(t == c, grad - b, grad)
        tl.store(o_pix + tl.multiple_of(o_row, ALIGN), grad.to(out_ptr.dtype.element_ty), mask=mask)
        x_row += sC
        o_row += oC


@triton.jit
def _bwd_classes_kernel(
    g_ptr,
    x_ptr,
    t_ptr,
    w_ptr,
    lse_ptr,
    wsum_ptr,
    out_ptr,
    S,
    C,
    sN,
    sC,
    sS,
    tN,
    tS,
    gN,
    gS,
    oN,
    oC,
    oS,
    tiles_s,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    REDUCTION: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    IDX: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    acc_ty = lse_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // tiles_s
    ps = (pid - n * tiles_s) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = ps < S
    eps = exact(eps0, eps1, eps2, acc_ty)
    eps_over_c = exact(epc0, epc1, epc2, acc_ty)
    t = load_target(t_ptr + n.to(IDX) * tN + ps.to(IDX) * tS, mask_p)
    valid, _, wt = target_weight(t, mask_p, C, ignore_index, w_ptr, HAS_WEIGHT, acc_ty)
    scale = grad_scale(g_ptr, wsum_ptr, gN, gS, n, ps, valid, REDUCTION, IDX)
    wtotal = weight_total(w_ptr, C, HAS_WEIGHT, acc_ty, 128) if SMOOTH else 0.0
    a, b = grad_coefficients(scale, wt, wtotal, eps, eps_over_c, SMOOTH)
    d = scale * eps_over_c
    lse = tl.load(lse_ptr + n.to(IDX) * S + ps, mask=mask_p, other=0.0)
    x_pix = tl.multiple_of(n.to(IDX) * sN + ps.to(IDX) * sS, ALIGN)
    o_pix = tl.multiple_of(n.to(IDX) * oN + ps.to(IDX) * oS, ALIGN)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        mask_c = cs < C
        m2 = mask_p[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + x_pix[:, None] + (cs.to(IDX) * sC)[None, :], mask=m2, other=0.0).to(
            acc_ty
        )
        grad = tl.exp(shifted(x, lse[:, None])) * a[:, None]
        if SMOOTH:
            if HAS_WEIGHT:
                wc = tl.load(w_ptr + cs, mask=mask_c, other=0.0).to(acc_ty)
                grad -= d[:, None] * wc[None, :]
            else:
                grad -= d[:, None]
        grad = tl.where(cs[None, :] == t[:, None], grad - b[:, None], grad)
        o_ptr = out_ptr + o_pix[:, None] + (cs.to(IDX) * oC)[None, :]
        tl.store(o_ptr, grad.to(out_ptr.dtype.element_ty), mask=m2)


def _class_major(t: torch.Tensor) -> bool:
    """Whether the [BLOCK_P, BLOCK_C] kernels take (N, C, S) logits: contiguous classes
    (channels_last, or (N, C) logits); and, under the interpreter, which pays per operation
    rather than per element, many classes in any layout (a loop step per class is slow
    there; on a GPU the per-class loop is the fast NCHW path)."""
    C = t.shape[1]
    return (t.stride(1) == 1 and C > 1 and t.stride(2) != 1) or (interpreted(t) and C > 64)


def _pixel_block(dtype: torch.dtype) -> int:
    # Two 16-byte vectors per thread per class for fp32/fp64, one for 16-bit dtypes.
    return _NUM_WARPS * 32 * max(vector_width(dtype), 8)


def _class_blocks(C: int) -> tuple[int, int]:
    block_c = min(pow2(C), 64)
    return max(1, _TILE // block_c), block_c


def pixel_cross_entropy_triton(logits, target, weight, ignore_index, reduction, label_smoothing):
    """(loss, lse, weight_sum) for logits (N, C, S), target (N, S); see the C++ schema."""
    with device_guard(logits):
        return _forward(logits, target, weight, ignore_index, reduction, label_smoothing)


def _forward(logits, target, weight, ignore_index, reduction, label_smoothing):
    N, C, S = logits.shape
    acc = accumulation_dtype(logits.dtype)
    device = logits.device
    lse = torch.empty((N, S), dtype=acc, device=device)
    # The loss in the accumulation dtype for every reduction (csrc/ops/pixel_cross_entropy.h).
    loss = torch.empty((N, S) if reduction == 0 else (), dtype=acc, device=device)
    weight_sum = torch.empty((), dtype=acc, device=device)
    ok = torch.empty((), dtype=torch.bool, device=device)
    class_major = _class_major(logits)
    vec = vector_width(logits.dtype)
    if class_major:
        block_p, block_c = _class_blocks(C)
        sN, sC, sS = logits.stride()
        align = pow2_divisor(vec, sN, sS) if sC == 1 else 1
    else:
        block_p = _pixel_block(logits.dtype)
        align = (
            pow2_divisor(vec, logits.stride(0), logits.stride(1), S) if logits.stride(2) == 1 else 1
        )
    tiles_s = triton.cdiv(S, block_p)
    grid = (N * tiles_s,)
    parts = torch.empty((max(grid[0], 1), 3), dtype=acc, device=device)
    common = dict(
        HAS_WEIGHT=weight is not None,
        SMOOTH=label_smoothing > 0,
        STORE_LOSS=reduction == 0,
        IDX=index_type(logits, target, lse),
        ALIGN=align,
        BLOCK_P=block_p,
        num_warps=_NUM_WARPS,
    )
    # The kernels index the class weights as w_ptr + c (the ops pass them contiguous).
    w_arg = weight.contiguous() if weight is not None else lse
    if grid[0] > 0:
        if class_major:
            _fwd_classes_kernel[grid](
                logits, target, w_arg, loss, lse, parts,
                S, C, *logits.stride(), *target.stride(), tiles_s,
                ignore_index, *split3(label_smoothing), *split3(label_smoothing / C),
                BLOCK_C=block_c, **common,
            )  # fmt: skip
        else:
            _fwd_pixels_kernel[grid](
                logits, target, w_arg, loss, lse, parts,
                S // align, C, *logits.stride(), *target.stride(), tiles_s,
                ignore_index, *split3(label_smoothing), *split3(label_smoothing / C),
                **common,
            )  # fmt: skip
    finish_kernel[(1,)](
        parts, grid[0], loss, weight_sum, ok, REDUCTION=reduction, BLOCK=1024, num_warps=4
    )
    check_targets(ok, C, ignore_index, target)
    return loss, lse, weight_sum


def check_targets(ok: torch.Tensor, C: int, ignore_index: int, target: torch.Tensor) -> None:
    msg = (
        f"pixel_cross_entropy: target contains a value outside [0, C) = [0, {C}) "
        f"that is not ignore_index ({ignore_index})"
    )
    if ok.device.type == "cpu":  # the interpreter: no device to sync with
        if not bool(ok):  # the first bad value, named as the CPU kernels name it
            bad = target[(target != ignore_index) & ((target < 0) | (target >= C))]
            raise TargetOutOfRangeError(
                f"pixel_cross_entropy: target contains {int(bad[0])}, outside [0, C) = "
                f"[0, {C}) and not ignore_index ({ignore_index})"
            )
    elif ok.device.type == "cuda":
        torch._assert_async(ok, msg)  # no host sync: fails at a later sync


def pixel_cross_entropy_backward_triton(
    grad, logits, target, weight, lse, weight_sum, ignore_index, reduction, label_smoothing
):
    """grad_logits from lse: grad * (softmax - onehot) with weight and smoothing."""
    with device_guard(logits):
        return _backward(
            grad, logits, target, weight, lse, weight_sum, ignore_index, reduction, label_smoothing
        )


def _backward(
    grad, logits, target, weight, lse, weight_sum, ignore_index, reduction, label_smoothing
):
    N, C, S = logits.shape
    out = torch.empty_like(logits)
    if out.numel() == 0:
        return out
    lse = lse.contiguous()
    gN, gS = grad.stride() if reduction == 0 else (0, 0)
    vec = vector_width(logits.dtype)
    common = dict(
        REDUCTION=reduction,
        HAS_WEIGHT=weight is not None,
        SMOOTH=label_smoothing > 0,
        IDX=index_type(logits, target, out),
        num_warps=_NUM_WARPS,
    )
    # The kernels index the class weights as w_ptr + c (the ops pass them contiguous).
    w_arg = weight.contiguous() if weight is not None else lse
    eps = (*split3(label_smoothing), *split3(label_smoothing / C))
    if _class_major(logits):
        block_p, block_c = _class_blocks(C)
        dense = logits.stride(1) == 1 and out.stride(1) == 1
        align = pow2_divisor(vec, *logits.stride()[::2], *out.stride()[::2]) if dense else 1
        tiles_s = triton.cdiv(S, block_p)
        _bwd_classes_kernel[(N * tiles_s,)](
            grad, logits, target, w_arg, lse, weight_sum, out,
            S, C, *logits.stride(), *target.stride(), gN, gS,
            *out.stride(), tiles_s, ignore_index, *eps,
            ALIGN=align, BLOCK_P=block_p, BLOCK_C=block_c, **common,
        )  # fmt: skip
    else:
        block_p = _pixel_block(logits.dtype)
        dense = logits.stride(2) == 1 and out.stride(2) == 1
        strides = (*logits.stride()[:2], *out.stride()[:2], S)
        align = pow2_divisor(vec, *strides) if dense else 1
        tiles_s = triton.cdiv(S, block_p)
        _bwd_pixels_kernel[(N * tiles_s,)](
            grad, logits, target, w_arg, lse, weight_sum, out,
            S // align, C, *logits.stride(), *target.stride(), gN, gS, *out.stride(), tiles_s,
            ignore_index, *eps, ALIGN=align, BLOCK_P=block_p, **common,
        )  # fmt: skip
    return out

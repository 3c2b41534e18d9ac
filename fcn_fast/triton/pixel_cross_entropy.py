"""Triton kernels of pixel_cross_entropy: the contract of the C++ kernels
(csrc/ops/pixel_cross_entropy.h), registered as the op's `triton` backend by
fcn_fast/triton/__init__.py.

A program owns BLOCK_P pixels of one image (coalesced along the pixel axis for
NCHW) and walks the classes in tiles of BLOCK_C with an online softmax, so any C
works. The forward writes the per-pixel lse and one (loss, weight) partial per
program; a one-program kernel adds the partials in a fixed order (deterministic,
no atomics). Out-of-range targets set an error flag, checked without a host sync
(see fcn_fast/ops/pixel_cross_entropy.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcn_fast._common import accumulation_dtype
from fcn_fast.triton._launch import device_guard, f64, split3


@triton.jit
def _fwd_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    loss_ptr,
    lse_ptr,
    part_ptr,
    err_ptr,
    S,
    C,
    sN,
    sC,
    sS,
    tN,
    tS,
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    wtotal_ptr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    STORE_LOSS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # One grid axis (axis 1 is limited to 65535 programs, too few for large N).
    pid = tl.program_id(0).to(tl.int64)
    tiles_s = tl.cdiv(S, BLOCK_P)
    n = pid // tiles_s
    pid_s = pid % tiles_s
    acc_ty = lse_ptr.dtype.element_ty
    wtotal = tl.load(wtotal_ptr)
    # label_smoothing and label_smoothing / C, exact doubles (see split3).
    eps = f64(eps0, eps1, eps2).to(acc_ty)
    eps_over_c = f64(epc0, epc1, epc2).to(acc_ty)
    offs_s = pid_s * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_s = offs_s < S
    base = x_ptr + n * sN + offs_s.to(tl.int64) * sS
    m = tl.full((BLOCK_P,), float("-inf"), acc_ty)
    s = tl.zeros((BLOCK_P,), acc_ty)
    swx = tl.zeros((BLOCK_P,), acc_ty)
    wacc = tl.zeros((BLOCK_P,), acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_s[None, :]
        ptrs = base[None, :] + offs_c.to(tl.int64)[:, None] * sC
        x = tl.load(ptrs, mask=mask, other=float("-inf")).to(acc_ty)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # Guards keep -inf logits from making NaN (-inf - -inf), as the C++ math does.
        scale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        d = tl.where(x == float("-inf"), float("-inf"), x - m_new[None, :])
        s = s * scale + tl.sum(tl.exp(d), axis=0)
        if SMOOTH:
            if HAS_WEIGHT:
                wc = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(acc_ty)
            else:
                wc = tl.where(mask_c, 1.0, 0.0).to(acc_ty)
            shift = tl.where((wacc == 0.0) | (m == m_new), 0.0, wacc * (m - m_new))
            swx = swx + shift + tl.sum(tl.where(mask, wc[:, None] * d, 0.0), axis=0)
            wacc = wacc + tl.sum(wc, axis=0)
        m = m_new
    logs = tl.log(s)
    tl.store(lse_ptr + n * S + offs_s, m + logs, mask=mask_s)
    t = tl.load(t_ptr + n * tN + offs_s.to(tl.int64) * tS, mask=mask_s, other=ignore_index)
    active = mask_s & (t != ignore_index)
    bad = active & ((t < 0) | (t >= C))
    tl.store(err_ptr + offs_s * 0, tl.full((BLOCK_P,), 1, tl.int32), mask=bad)
    valid = active & (t >= 0) & (t < C)
    tc = tl.where(valid, t, 0)
    xt = tl.load(base + tc * sC, mask=valid, other=0.0).to(acc_ty)
    xt_m = tl.where(xt == float("-inf"), float("-inf"), xt - m)
    if HAS_WEIGHT:
        wt = tl.load(w_ptr + tc, mask=valid, other=0.0).to(acc_ty)
    else:
        wt = tl.where(valid, 1.0, 0.0).to(acc_ty)
    loss = (1.0 - eps) * (wt * (logs - xt_m))
    if SMOOTH:
        loss += eps_over_c * (wtotal * logs - swx)
    loss = tl.where(valid, loss, 0.0)
    if STORE_LOSS:
        tl.store(loss_ptr + n * S + offs_s, loss.to(loss_ptr.dtype.element_ty), mask=mask_s)
    part = pid
    tl.store(part_ptr + 2 * part, tl.sum(loss, axis=0))
    tl.store(part_ptr + 2 * part + 1, tl.sum(wt, axis=0))


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, n_parts, BLOCK: tl.constexpr):
    """out[0] = sum of losses, out[1] = sum of weights, in a fixed order (one program)."""
    acc_ty = out_ptr.dtype.element_ty
    acc_loss = tl.zeros((BLOCK,), acc_ty)
    acc_w = tl.zeros((BLOCK,), acc_ty)
    for i0 in range(0, n_parts, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        mask = offs < n_parts
        acc_loss += tl.load(part_ptr + 2 * offs, mask=mask, other=0.0)
        acc_w += tl.load(part_ptr + 2 * offs + 1, mask=mask, other=0.0)
    tl.store(out_ptr, tl.sum(acc_loss, axis=0))
    tl.store(out_ptr + 1, tl.sum(acc_w, axis=0))


@triton.jit
def _bwd_kernel(
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
    ignore_index,
    eps0,
    eps1,
    eps2,
    epc0,
    epc1,
    epc2,
    wtotal_ptr,
    REDUCTION: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # One grid axis (axis 1 is limited to 65535 programs, too few for large N).
    pid = tl.program_id(0).to(tl.int64)
    tiles_s = tl.cdiv(S, BLOCK_P)
    n = pid // tiles_s
    pid_s = pid % tiles_s
    acc_ty = lse_ptr.dtype.element_ty
    wtotal = tl.load(wtotal_ptr)
    # label_smoothing and label_smoothing / C, exact doubles (see split3).
    eps = f64(eps0, eps1, eps2).to(acc_ty)
    eps_over_c = f64(epc0, epc1, epc2).to(acc_ty)
    offs_s = pid_s * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_s = offs_s < S
    offs_s64 = offs_s.to(tl.int64)
    t = tl.load(t_ptr + n * tN + offs_s64 * tS, mask=mask_s, other=ignore_index)
    valid = mask_s & (t != ignore_index) & (t >= 0) & (t < C)
    if REDUCTION == 0:
        scale = tl.load(g_ptr + n * gN + offs_s64 * gS, mask=valid, other=0.0).to(acc_ty)
    else:
        g = tl.load(g_ptr).to(acc_ty)
        if REDUCTION == 1:
            g = g / tl.load(wsum_ptr).to(acc_ty)
        scale = tl.where(valid, g, 0.0)
    tc = tl.where(valid, t, 0)
    if HAS_WEIGHT:
        wt = tl.load(w_ptr + tc, mask=valid, other=0.0).to(acc_ty)
    else:
        wt = tl.where(valid, 1.0, 0.0).to(acc_ty)
    b = scale * ((1.0 - eps) * wt)
    a = b + scale * (eps_over_c * wtotal)
    dsc = scale * eps_over_c
    lse = tl.load(lse_ptr + n * S + offs_s, mask=mask_s, other=0.0)
    xbase = x_ptr + n * sN + offs_s64 * sS
    obase = out_ptr + n * oN + offs_s64 * oS
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_s[None, :]
        x = tl.load(xbase[None, :] + offs_c.to(tl.int64)[:, None] * sC, mask=mask, other=0.0)
        x = x.to(acc_ty)
        d = tl.where(x == float("-inf"), float("-inf"), x - lse[None, :])
        grad = tl.exp(d) * a[None, :]
        if SMOOTH:
            if HAS_WEIGHT:
                wc = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(acc_ty)
            else:
                wc = tl.where(mask_c, 1.0, 0.0).to(acc_ty)
            grad = grad - dsc[None, :] * wc[:, None]
        grad = tl.where(offs_c[:, None] == t[None, :], grad - b[None, :], grad)
        optrs = obase[None, :] + offs_c.to(tl.int64)[:, None] * oC
        tl.store(optrs, grad.to(out_ptr.dtype.element_ty), mask=mask)


def _blocks(C: int, device: torch.device) -> tuple[int, int]:
    if device.type == "cuda":
        return 128, min(triton.next_power_of_2(C), 32)
    return 32, min(triton.next_power_of_2(C), 16)  # interpreter: small tiles, still online


def pixel_cross_entropy_triton(logits, target, weight, ignore_index, reduction, label_smoothing):
    """(loss, lse, weight_sum) for logits (N, C, S), target (N, S); see the C++ schema."""
    with device_guard(logits):
        return _forward(logits, target, weight, ignore_index, reduction, label_smoothing)


def _forward(logits, target, weight, ignore_index, reduction, label_smoothing):
    N, C, S = logits.shape
    acc = accumulation_dtype(logits.dtype)
    device = logits.device
    BLOCK_P, BLOCK_C = _blocks(C, device)
    grid = (triton.cdiv(S, BLOCK_P) * N,)
    lse = torch.empty((N, S), dtype=acc, device=device)
    # The loss in the accumulation dtype for every reduction (csrc/ops/pixel_cross_entropy.h).
    loss = torch.empty((N, S) if reduction == 0 else (), dtype=acc, device=device)
    parts = torch.zeros((grid[0], 2), dtype=acc, device=device)
    err = torch.zeros(1, dtype=torch.int32, device=device)
    wtotal = _wtotal(weight, C, acc, device)
    if S > 0 and N > 0:
        _fwd_kernel[grid](
            logits,
            target,
            weight if weight is not None else lse,
            loss,
            lse,
            parts,
            err,
            S,
            C,
            *logits.stride(),
            *target.stride(),
            ignore_index,
            *split3(label_smoothing),
            *split3(label_smoothing / C),
            wtotal,
            HAS_WEIGHT=weight is not None,
            SMOOTH=label_smoothing > 0,
            STORE_LOSS=reduction == 0,
            BLOCK_P=BLOCK_P,
            BLOCK_C=BLOCK_C,
        )
    sums = torch.empty(2, dtype=acc, device=device)
    _sum_partials_kernel[(1,)](parts, sums, parts.shape[0], BLOCK=256)
    _check_targets(err, C, ignore_index)
    if reduction == 1:
        loss = sums[0] / sums[1]  # 0 / 0 = NaN when all are ignored
    elif reduction == 2:
        loss = sums[0].clone()
    return loss, lse, sums[1].clone()


def _wtotal(weight, C, acc, device):
    """sum_c w[c] as a 1-element device tensor (read by the kernels: no host sync)."""
    if weight is None:
        return torch.full((1,), float(C), dtype=acc, device=device)
    return weight.detach().to(acc).sum().reshape(1)


def _check_targets(err, C, ignore_index):
    msg = (
        f"pixel_cross_entropy: target contains a value outside [0, C) = [0, {C}) "
        f"that is not ignore_index ({ignore_index})"
    )
    if err.device.type == "cuda":
        torch._assert_async(err[0] == 0, msg)  # no host sync: fails at a later sync
    elif int(err[0]) != 0:  # CPU tensors (interpreter): no device to sync with
        raise ValueError(msg)


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
    acc = accumulation_dtype(logits.dtype)
    BLOCK_P, BLOCK_C = _blocks(C, logits.device)
    grid = (triton.cdiv(S, BLOCK_P) * N,)
    gN, gS = grad.stride() if reduction == 0 else (0, 0)
    _bwd_kernel[grid](
        grad,
        logits,
        target,
        weight if weight is not None else lse,
        lse.contiguous(),
        weight_sum,
        out,
        S,
        C,
        *logits.stride(),
        *target.stride(),
        gN,
        gS,
        *out.stride(),
        ignore_index,
        *split3(label_smoothing),
        *split3(label_smoothing / C),
        _wtotal(weight, C, acc, logits.device),
        REDUCTION=reduction,
        HAS_WEIGHT=weight is not None,
        SMOOTH=label_smoothing > 0,
        BLOCK_P=BLOCK_P,
        BLOCK_C=BLOCK_C,
    )
    return out

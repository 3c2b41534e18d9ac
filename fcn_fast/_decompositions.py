"""The extension's ops written in standard ATen ops, for torch.onnx.export (docs/design.md 3.4).

torch.onnx.export(..., dynamo=True) lowers an exported program with every decomposition in
torch._decomp.decomposition_table, then translates the ATen ops to ONNX. Registering these
there makes a model with fcn_fast ops export as it is, whether the user hands the exporter
the model or an ExportedProgram that still holds the ops (torch.export.export keeps them:
its default decompositions are the core ATen ones, which do not include these).

* the zero-boundary resampler (FCN's fixed bilinear deconvolution) is that deconvolution,
  grouped (one bilinear filter per channel: ConvTranspose with group=C), then a slice;
  taps outside the input count as zero exactly as in the op;
* the clamp resampler is F.interpolate(mode="bilinear") (Resize), with the scale factor
  when the op maps indices by one, else with the output size;
* the argmax ops are that, then argmax (ArgMax; Softmax and ReduceMax for the confidence);
* the losses are that, then F.cross_entropy, with the log-sum-exp and weight sum the op
  also returns.

FakeTensorMode also reads the table, for inputs with symbolic sizes, before the op's own
fake kernel. These functions then return the fake kernel's result (same shapes and
strides): they decompose only under a tracer (make_fx / run_decompositions).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from fcn_fast import _backend
from fcn_fast._common import accumulation_dtype, output_memory_format

_REDUCTIONS = ("none", "mean", "sum")


def _tracing() -> bool:
    """Whether a proxy tracer (make_fx, run_decompositions) is recording this call; else the
    caller is FakeTensorMode computing output metadata."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None


def _fcn_axis(scale: float, bias: float) -> tuple[int, int, int] | None:
    """(factor, kernel_size, crop) of FCN's deconvolution with this index mapping, or None.

    upsample_geometry maps kernel 2f at crop c to bias (c + 0.5)/f - 1, kernel 2f - 1 to
    (c + 1)/f - 1 (fcn_fast/ops/_geometry.py)."""
    factor = round(1.0 / scale)
    if factor < 1 or abs(factor * scale - 1.0) > 1e-12:
        return None
    shifted = (bias + 1.0) * factor  # c + 0.5 or c + 1
    for kernel_size, shift in ((2 * factor, 0.5), (2 * factor - 1, 1.0)):
        crop = round(shifted - shift)
        if crop >= 0 and abs(crop + shift - shifted) < 1e-6:
            return factor, kernel_size, crop
    return None


def _bilinear_taps(kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    # Traced ops, not torch.tensor: a constant made inside a decomposition is not
    # functional (lift_fresh + detach_); the exporter folds these into one initializer.
    index = torch.arange(kernel_size, dtype=like.dtype, device=like.device)
    return 1 - (index - center).abs() / factor


def resample(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w) -> torch.Tensor:
    """The resampler of docs/design.md 2.1 in ATen ops (no skip)."""
    h, w = x.shape[2], x.shape[3]
    if not clamp:
        axes = _fcn_axis(scale_h, bias_h), _fcn_axis(scale_w, bias_w)
        if None in axes:
            raise NotImplementedError(
                "fcn_fast: no ONNX decomposition of a zero-boundary resampling that is not "
                f"FCN's deconvolution (scale {scale_h, scale_w}, bias {bias_h, bias_w})"
            )
        (fh, kh, ch), (fw, kw, cw) = axes
        channels = x.shape[1]
        weight = torch.outer(_bilinear_taps(kh, x), _bilinear_taps(kw, x))
        weight = weight.expand(channels, 1, kh, kw)
        up = F.conv_transpose2d(x, weight, stride=(fh, fw), groups=channels)
        return up[:, :, ch : ch + out_h, cw : cw + out_w]
    # F.interpolate's three index mappings (fcn_fast/ops/_geometry.py interpolate_geometry).
    if bias_h == 0.0 and bias_w == 0.0 and not (scale_h == 1.0 and scale_w == 1.0):
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)
    by_size = _is_ratio(scale_h, h, out_h) and _is_ratio(scale_w, w, out_w)
    if by_size:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    # A given scale factor f maps with 1/f (an axis whose size it keeps is copied: scale 1).
    return torch.ops.aten.upsample_bilinear2d.vec(x, None, False, [1.0 / scale_h, 1.0 / scale_w])


def _is_ratio(scale, size_in, size_out) -> bool:
    # A symbolic size: the front door mapped by a given factor (a scale computed from
    # symbolic sizes would have made them static when passed to the op as a float).
    if isinstance(size_in, torch.SymInt) or isinstance(size_out, torch.SymInt):
        return False
    return scale == size_in / size_out


def _resample_skip(x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, sy, sx, *_):
    if not _tracing():
        return _fake("resample_skip")(
            x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, sy, sx
        )
    out = resample(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w)
    if skip is not None:
        out = out + skip[:, :, sy : sy + out_h, sx : sx + out_w]
    return out.contiguous(memory_format=output_memory_format(x))


def _resample_argmax(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, dtype, conf, *_):
    if not _tracing():
        return _fake("resample_argmax")(
            x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, dtype, conf
        )
    logits = resample(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w)
    labels = logits.argmax(1).to(dtype)
    if not conf:
        return labels, x.new_empty((0, out_h, out_w), dtype=torch.float32)
    return labels, torch.softmax(logits.float(), 1).amax(1)


def cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing):
    """(loss, per-pixel log-sum-exp, weight sum) as the kernels return them, in the
    accumulation dtype: docs/design.md 2.3's formula, written out (the exporter's own
    translation of F.cross_entropy weights the smoothing term differently from PyTorch)."""
    logits = logits.to(accumulation_dtype(logits.dtype))
    lse = torch.logsumexp(logits, 1)
    neg_log_p = lse.unsqueeze(1) - logits
    target = target.long()  # gather and indexing take int64 (a uint8 index is a mask)
    counted = target != ignore_index
    safe = torch.where(counted, target, 0)
    picked = neg_log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    if weight is None:
        w_target = torch.ones_like(picked)
        smooth = neg_log_p.sum(1)
    else:
        weight = weight.to(logits.dtype)
        w_target = weight[safe]
        shape = [1, -1] + [1] * (logits.dim() - 2)
        smooth = (neg_log_p * weight.view(shape)).sum(1)
    loss = (1 - label_smoothing) * w_target * picked
    if label_smoothing:
        loss = loss + label_smoothing / logits.shape[1] * smooth
    loss = torch.where(counted, loss, 0)
    weight_sum = torch.where(counted, w_target, 0).sum()
    if _REDUCTIONS[reduction] == "mean":
        return loss.sum() / weight_sum, lse, weight_sum
    if _REDUCTIONS[reduction] == "sum":
        return loss.sum(), lse, weight_sum
    return loss, lse, weight_sum


def _pixel_cross_entropy(logits, target, weight, ignore_index, reduction, smoothing, *_):
    if not _tracing():
        return _fake("pixel_cross_entropy")(
            logits, target, weight, ignore_index, reduction, smoothing
        )
    return cross_entropy(logits, target, weight, ignore_index, reduction, smoothing)


def _resample_cross_entropy(x, target, weight, *args):
    if not _tracing():
        return _fake("resample_cross_entropy")(x, target, weight, *args)
    scale_h, bias_h, scale_w, bias_w, clamp, ignore_index, reduction, smoothing = args[:8]
    out_h, out_w = target.shape[1], target.shape[2]
    logits = resample(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w)
    return cross_entropy(logits, target, weight, ignore_index, reduction, smoothing)


def _fake(name):
    """The op's own fake kernel, in fcn_fast/ops/<module> (imported late: fcn_fast.ops imports
    this package; by importlib: the package's attributes of those names are the functions)."""
    module, fake = {
        "resample_skip": ("resample_skip", "_resample_skip_fake"),
        "resample_argmax": ("resample_cross_entropy", "_resample_argmax_fake"),
        "resample_cross_entropy": ("resample_cross_entropy", "_resample_cross_entropy_fake"),
        "pixel_cross_entropy": ("pixel_cross_entropy", "_pixel_cross_entropy_fake"),
    }[name]
    return getattr(importlib.import_module(f"fcn_fast.ops.{module}"), fake)


def _register():
    if not _backend.extension_loaded():
        return
    ops = torch.ops.fcn_fast
    table = {
        ops.resample_skip.default: _resample_skip,
        ops.resample_argmax.default: _resample_argmax,
        ops.pixel_cross_entropy.default: _pixel_cross_entropy,
        ops.resample_cross_entropy.default: _resample_cross_entropy,
    }
    for op, fn in table.items():
        torch._decomp.register_decomposition(op)(fn)


_register()

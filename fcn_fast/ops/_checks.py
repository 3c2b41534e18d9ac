"""Argument checks shared by the public ops: each error names the argument and what was expected."""

from __future__ import annotations

import math

import torch

from fcn_fast._common import FLOAT_DTYPES

# F.cross_entropy's reductions, as the ops' integer codes.
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def check_tensor(t, name: str, op: str, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_float(t: torch.Tensor, name: str, op: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_same(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str, op: str) -> None:
    """`t` must live on the same device as `ref` and have its dtype."""
    if t.device != ref.device:
        raise ValueError(
            f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
            "move both to one device"
        )
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def int_pair(value, name: str, op: str, minimum: int = 0) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a (y, x) tuple."""
    # The common cases without generic tuple building: every call of an op pays for this.
    if type(value) is int and value >= minimum:
        return value, value
    if type(value) is tuple and len(value) == 2:
        y, x = value
        if type(y) is int and type(x) is int and y >= minimum and x >= minimum:
            return value
    pair = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else (value, value)
    # torch.SymInt: a size traced with dynamic shapes (torch.export, torch.compile).
    if len(pair) != 2 or not all(
        isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return pair


# Class-index target dtypes, each with the ignore_index values it can hold. Every backend reads
# them as stored (docs/design.md, "Label dtypes"); the reference converts to int64.
LABEL_DTYPES = {
    torch.int64: (-(2**63), 2**63 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.uint8: (0, 255),
}


def check_target(target, expected_shape, expected_for, like, ignore_index, op) -> None:
    """Class indices (int64, int32 or uint8) of `expected_shape` (a tuple) on `like`'s device,
    and an ignore_index the target's dtype can hold; expected_for() says what that shape is
    expected for (called only to word an error)."""
    check_tensor(target, "target", op)
    bounds = LABEL_DTYPES.get(target.dtype)
    if bounds is None:
        probabilities = target.dtype.is_floating_point
        raise TypeError(
            f"{op}: target must be class indices of dtype int64, int32 or uint8; "
            + (
                "floating targets (class probabilities) are not supported; "
                if probabilities
                else ""
            )
            + f"got {target.dtype}"
        )
    if tuple(target.shape) != expected_shape:
        raise ValueError(
            f"{op}: target must have shape {expected_shape} for {expected_for()}, "
            f"got {tuple(target.shape)}"
        )
    if target.device != like.device:
        raise ValueError(
            f"{op}: target is on {target.device} but the logits are on {like.device}; "
            "move both to one device"
        )
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    low, high = bounds
    if not low <= ignore_index <= high:
        default = " (PyTorch's default)" if ignore_index == -100 else ""
        example = ", e.g. 255 (VOC's and Cityscapes' void)" if target.dtype == torch.uint8 else ""
        other = ", or an int64 target" if target.dtype != torch.int64 else ""
        raise ValueError(
            f"{op}: ignore_index={ignore_index}{default} cannot occur in a {target.dtype} "
            f"target (values {low}..{high}), so it would ignore nothing: pass the label your "
            f"data marks ignored pixels with as ignore_index{example}{other}"
        )


def check_loss_options(weight, num_classes, like, reduction, label_smoothing, op):
    """F.cross_entropy's weight, reduction and label_smoothing (check_target: ignore_index)."""
    if weight is not None:
        check_tensor(weight, "weight", op)
        if weight.dim() != 1 or weight.shape[0] != num_classes:
            raise ValueError(
                f"{op}: weight must be a 1-D tensor of C = {num_classes} class weights, "
                f"got shape {tuple(weight.shape)}"
            )
        if not weight.is_floating_point():
            raise TypeError(f"{op}: weight must be a floating-point tensor, got {weight.dtype}")
        if weight.device != like.device:
            raise ValueError(
                f"{op}: weight is on {weight.device} but the logits are on {like.device}; "
                "move both to one device"
            )
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    if not isinstance(label_smoothing, (int, float)) or isinstance(label_smoothing, bool):
        raise TypeError(f"{op}: label_smoothing must be a float, got {label_smoothing!r}")
    if not (math.isfinite(label_smoothing) and 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")

"""Plain-PyTorch oracle of pixel_cross_entropy: F.cross_entropy itself (docs/design.md, 2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_cross_entropy_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """F.cross_entropy with class-index targets; out-of-range targets raise as PyTorch does.
    int32 and uint8 targets are converted to the int64 that F.cross_entropy takes."""
    return F.cross_entropy(
        logits,
        target.long(),
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )

"""Plain-PyTorch halves of the fused heads: what follows the upsampling in an unfused net.

The loss half is F.cross_entropy (reference/pixel_cross_entropy.py); the argmax half is here.
"""

from __future__ import annotations

import torch


def argmax_reference(logits: torch.Tensor, out_dtype=torch.int64, return_confidence=False):
    """logits.argmax(1) as out_dtype; with return_confidence, also the winning class's softmax
    probability in float32: (labels, confidence)."""
    labels = logits.argmax(1).to(out_dtype)
    if not return_confidence:
        return labels
    return labels, torch.softmax(logits.float(), 1).amax(1)

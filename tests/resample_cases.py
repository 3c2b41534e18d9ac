"""Shared builders for resample-skip tests: random inputs and FCN head geometry."""

from __future__ import annotations

import math

import torch


def fcn_sizes(h: int) -> dict[str, int]:
    """Spatial sizes inside FCN-VGG16 for an h x h input (conv1_1 pad 100, ceil-mode pools)."""
    pool3 = math.ceil((h + 198) / 8)
    pool4 = math.ceil(pool3 / 2)
    pool5 = math.ceil(pool4 / 2)
    score_fr = pool5 - 6
    return {"pool3": pool3, "pool4": pool4, "score_fr": score_fr}


def alexnet_score_size(h: int) -> int:
    """score_fr size of FCN-AlexNet: conv1 11x11 s4 pad 100, three 3x3 s2 ceil pools, fc6 6x6."""
    size = (h + 200 - 11) // 4 + 1
    for _ in range(3):
        size = math.ceil((size - 3) / 2) + 1
    return size - 5


def fcn_head_calls(h: int):
    """(name, coarse size, upsample_skip kwargs, skip size or None) for every FCN head step.

    The table of issue 2: FCN-32s, FCN-16s, FCN-8s (each step) and FCN-AlexNet's k63 s32.
    """
    s = fcn_sizes(h)
    f = s["score_fr"]
    up2 = 2 * f + 2
    up4 = 2 * up2 + 2
    return [
        ("fcn32s", f, dict(factor=32, crop=19, out_size=(h, h)), None),
        ("fcn16s-pool4", f, dict(factor=2, skip_crop=5), s["pool4"]),
        ("fcn16s-final", up2, dict(factor=16, crop=27, out_size=(h, h)), None),
        ("fcn8s-pool4", f, dict(factor=2, skip_crop=5), s["pool4"]),
        ("fcn8s-pool3", up2, dict(factor=2, skip_crop=9), s["pool3"]),
        ("fcn8s-final", up4, dict(factor=8, crop=31, out_size=(h, h)), None),
        (
            "alexnet",
            alexnet_score_size(h),
            dict(factor=32, kernel_size=63, crop=18, out_size=(h, h)),
            None,
        ),
    ]


def randn(*shape, dtype=torch.float64, device="cpu", requires_grad=False):
    """Random normal values (never zeros), optionally as a non-contiguous view."""
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: every other element of a wider tensor."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    view = wide[..., ::2]
    assert not view.is_contiguous()
    return view.detach().requires_grad_(t.requires_grad)

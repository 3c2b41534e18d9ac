"""Random resampling geometries for the sweeps of the kernels' tiling and banding.

Fixed cases test what a reader can name; these find what nobody named: a band of input rows
that no output reads (downsampling by more than a band), many bands and blocks, one-row
outputs, crops at every edge. Each geometry is a front door's arguments (FCN's upsampling or
F.interpolate's), the kernels' (scale, bias, clamp) from fcn_fast's own mapping, and its
plain-PyTorch twin as the oracle (F.conv_transpose2d with the bilinear filter, or
F.interpolate), which does not use that mapping.

Per axis: an input of 1 to several hundred, a ratio log-uniform in [0.02, 32] (interpolate) or
a factor of 1 to 32 with a random crop and output window (upsample). Pixel budgets keep each
case small enough for the CPU emulation and the Triton interpreter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fcn_fast.ops._geometry import Geometry, interpolate_geometry, upsample_geometry
from fcn_fast.reference import upsample_skip_reference

RATIO_RANGE = (0.02, 32.0)


@dataclass
class Resampling:
    kind: str  # "upsample" or "interpolate"
    in_size: tuple[int, int]
    kwargs: dict  # the public op's geometry arguments (upsample_skip / interpolate_add)
    geometry: Geometry

    @classmethod
    def of(cls, kind: str, in_size: tuple[int, int], **kwargs) -> Resampling:
        """From upsample_skip's (factor, kernel_size, crop, out_size) or interpolate_add's
        (size or scale_factor, align_corners) arguments."""
        if kind == "upsample":
            geometry, _ = upsample_geometry(
                in_size, kwargs["factor"], kwargs["kernel_size"], kwargs["crop"],
                kwargs["out_size"], "test",
            )  # fmt: skip
        else:
            geometry = interpolate_geometry(
                in_size, kwargs.get("size"), kwargs.get("scale_factor"), kwargs["align_corners"],
                "test",
            )  # fmt: skip
        return cls(kind, tuple(in_size), kwargs, geometry)

    @property
    def out_size(self) -> tuple[int, int]:
        return self.geometry.out_size

    def scale_bias(self) -> list[float]:
        g = self.geometry
        return [g.scale[0], g.bias[0], g.scale[1], g.bias[1]]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The resampled x in plain PyTorch (the FCN deconvolution, or F.interpolate)."""
        if self.kind == "upsample":
            kw = self.kwargs
            return upsample_skip_reference(
                x, None, kw["factor"], kw["kernel_size"], kw["crop"], (0, 0), kw["out_size"]
            )
        return F.interpolate(x, mode="bilinear", **self.kwargs)

    def __str__(self) -> str:
        return f"{self.kind} {self.in_size} -> {self.out_size} {self.kwargs}"


def _length(rng: random.Random, most: int) -> int:
    """1 to `most`, mostly small: half up to 12, a third up to 64, the rest up to `most`."""
    u = rng.random()
    top = 12 if u < 0.5 else 64 if u < 0.85 else most
    return rng.randint(1, min(top, most))


def _ratio(rng: random.Random) -> float:
    lo, hi = (math.log(r) for r in RATIO_RANGE)
    return math.exp(rng.uniform(lo, hi))


def _interpolate(rng: random.Random, h: int, w: int) -> Resampling | None:
    align_corners = rng.random() < 0.3
    if rng.random() < 0.25:  # scale_factor: PyTorch maps indices with it, not in / out
        # Now and then a factor that keeps an axis's size (PyTorch then copies that axis).
        factors = tuple(
            round(1.0 + rng.random() / (n + 1), 3) if rng.random() < 0.2 else round(_ratio(rng), 3)
            for n in (h, w)
        )
        if int(h * factors[0]) < 1 or int(w * factors[1]) < 1:
            return None
        kwargs = dict(scale_factor=factors, align_corners=align_corners)
        geometry = interpolate_geometry((h, w), None, factors, align_corners, "random")
    else:
        size = (max(1, round(h * _ratio(rng))), max(1, round(w * _ratio(rng))))
        kwargs = dict(size=size, align_corners=align_corners)
        geometry = interpolate_geometry((h, w), size, None, align_corners, "random")
    return Resampling("interpolate", (h, w), kwargs, geometry)


def _upsample(rng: random.Random, h: int, w: int) -> Resampling:
    factor = min(32, max(1, round(math.exp(rng.uniform(0.0, math.log(32.0))))))
    kernel = 2 * factor - 1 if rng.random() < 0.3 and factor > 1 else 2 * factor
    full = ((h - 1) * factor + kernel, (w - 1) * factor + kernel)
    crop = tuple(rng.randint(0, n - 1) if rng.random() < 0.7 else 0 for n in full)
    out = tuple(rng.randint(1, n - c) for n, c in zip(full, crop))
    geometry, _ = upsample_geometry((h, w), factor, kernel, crop, out, "random")
    kwargs = dict(factor=factor, kernel_size=kernel, crop=crop, out_size=out)
    return Resampling("upsample", (h, w), kwargs, geometry)


def random_resampling(
    rng: random.Random, most_in: int = 2048, most_out: int = 4096, longest: int = 400
) -> Resampling:
    """One geometry with at most `most_in` input and `most_out` output pixels, each axis at
    most `longest` long."""
    while True:
        h, w = _length(rng, longest), _length(rng, longest)
        if h * w > most_in:
            continue
        r = _upsample(rng, h, w) if rng.random() < 0.35 else _interpolate(rng, h, w)
        if r is None:
            continue
        oh, ow = r.out_size
        if oh * ow <= most_out and oh <= 4 * longest and ow <= 4 * longest:
            return r


def random_class_weights(rng: random.Random, C: int, dtype=torch.float64):
    """None, positive, negative, mixed-sign or zero-sum class weights (F.cross_entropy takes
    any real weights)."""
    kind = rng.choice(["none", "positive", "negative", "mixed", "zero-sum"])
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(rng.getrandbits(31))
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.25
    if kind == "negative":
        w = -w
    elif kind == "mixed":
        w = w * (torch.randint(0, 2, (C,), generator=g) * 2 - 1)
    elif kind == "zero-sum" and C > 1:
        w = w - w.mean()
    return w.to(dtype)

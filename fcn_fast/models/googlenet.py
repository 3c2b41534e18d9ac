"""FCN-GoogLeNet: the Inception v1 (bvlc_googlenet) trunk without its average pooling and
classifier, a 1x1 score layer and one fixed bilinear x32 upsampling.

No reference net was published, so the alignment is derived here. Every layer but
conv1 and the four 3x3 stride-2 max-pools is stride 1 with "same" padding, so it maps
output position o to input position o. conv1 (7x7, stride 2, padding P) maps o to
2 o - P + 3, and each ceil-mode pool maps o to 2 o + 1. Composed, score position o
sits at input pixel 32 o + 33 - P. All kernels are odd, so the trunk's grid has integer
offsets and an odd upsampling kernel is needed to hit it: kernel 63 (2 * 32 - 1,
centre tap 31, as FCN-AlexNet) maps score o to upsampled pixel 32 o + 31, and
crop = 31 - (33 - P) = P - 2 puts output pixel y on input pixel y.

P = 18 is the least padding for which every input size >= 1 gets through the pools and
gives an upsampled map covering the input (the padding-100 trick of the VGG FCNs,
sized for this trunk); the original GoogLeNet pads conv1 by 3 and rejects
inputs smaller than 31 pixels. Hence CONV1_PADDING = 18, CROP = 16.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fcn_fast.models._common import FCNBase, check_n_class, check_width, scaled

CONV1_PADDING = 18
CROP = CONV1_PADDING - 2

# bvlc_googlenet: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module.
_INCEPTION = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
_POOL_AFTER = {"inception3b": "pool3", "inception4e": "pool4"}


def _conv_relu(x, conv):
    return F.relu(conv(x), inplace=True)


class Inception(nn.Module):
    """Inception v1 module: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1, concatenated."""

    def __init__(self, in_channels, b1, b3_reduce, b3, b5_reduce, b5, pool_proj):
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, b1, 1)
        self.branch3x3_reduce = nn.Conv2d(in_channels, b3_reduce, 1)
        self.branch3x3 = nn.Conv2d(b3_reduce, b3, 3, padding=1)
        self.branch5x5_reduce = nn.Conv2d(in_channels, b5_reduce, 1)
        self.branch5x5 = nn.Conv2d(b5_reduce, b5, 5, padding=2)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.pool_proj = nn.Conv2d(in_channels, pool_proj, 1)
        self.out_channels = b1 + b3 + b5 + pool_proj

    def forward(self, x):
        return torch.cat(
            [
                _conv_relu(x, self.branch1x1),
                _conv_relu(_conv_relu(x, self.branch3x3_reduce), self.branch3x3),
                _conv_relu(_conv_relu(x, self.branch5x5_reduce), self.branch5x5),
                _conv_relu(self.pool(x), self.pool_proj),
            ],
            dim=1,
        )


class FCNGoogLeNet(FCNBase):
    """FCN-GoogLeNet (6M parameters at width 1): Inception v1 trunk, score_fr, x32 bilinear.

    Args:
        n_class: number of output classes.
        backend: upsample_skip kernel ("auto", "reference", "cpu", "cuda", "triton").
        width: channel multiplier of the trunk (1.0 = the published net).
    """

    def __init__(self, n_class: int = 21, *, backend: str = "auto", width: float = 1.0):
        super().__init__(backend)
        self.n_class = check_n_class(n_class)
        self.width = check_width(width)
        c1, c2r, c2 = (scaled(c, width) for c in (64, 64, 192))
        self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=CONV1_PADDING)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2_reduce = nn.Conv2d(c1, c2r, 1)
        self.conv2 = nn.Conv2d(c2r, c2, 3, padding=1)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = c2
        for name, config in _INCEPTION.items():
            module = Inception(channels, *(scaled(c, width) for c in config))
            setattr(self, name, module)
            channels = module.out_channels
            if name in _POOL_AFTER:
                setattr(self, _POOL_AFTER[name], nn.MaxPool2d(3, stride=2, ceil_mode=True))
        self.drop = nn.Dropout2d(0.4)
        self.score_fr = nn.Conv2d(channels, self.n_class, 1)
        self.upscore = self._make_upscore(self.n_class, 63, 32)
        self.init_weights(("score_fr",))

    def final_head(self, x):
        h = self.norm1(self.pool1(_conv_relu(x, self.conv1)))
        h = _conv_relu(_conv_relu(h, self.conv2_reduce), self.conv2)
        h = self.pool2(self.norm2(h))
        for name in _INCEPTION:
            h = getattr(self, name)(h)
            if name in _POOL_AFTER:
                h = getattr(self, _POOL_AFTER[name])(h)
        h = self.drop(h)
        return self.score_fr(h), self.upscore, CROP

"""FCN-AlexNet: the single-stream FCN on the Caffe AlexNet trunk (voc-fcn-alexnet).

conv1 11x11 stride 4 padded by 100, LRN after pool1 and pool2, grouped conv2 / conv4 /
conv5 (groups=2, as the two-GPU original), 3x3 stride-2 ceil-mode max-pools, fc6 a
6x6 convolution, fc7 1x1, score_fr 1x1, and one fixed bilinear upsampling of kernel 63
(2 * 32 - 1) and stride 32, cropped by 18: the trunk maps score position o to input
pixel 32 o + 13, the odd kernel's centre is tap 31, and 31 - 13 = 18.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from fcn_fast.models._common import FCNBase, check_n_class, check_width, scaled

CROP = 18


class FCNAlexNet(FCNBase):
    """FCN-AlexNet (57M parameters at width 1).

    Args:
        n_class: number of output classes.
        backend: upsample_skip kernel ("auto", "reference", "cpu", "cuda", "triton").
        width: channel multiplier of the trunk (1.0 = the published net); channel counts
            of the grouped layers stay even.
    """

    def __init__(self, n_class: int = 21, *, backend: str = "auto", width: float = 1.0):
        super().__init__(backend)
        self.n_class = check_n_class(n_class)
        self.width = check_width(width)
        c1, c2, c3, c4, c5 = (scaled(c, width, multiple=2) for c in (96, 256, 384, 384, 256))
        fc = scaled(4096, width)
        self.conv1 = nn.Conv2d(3, c1, 11, stride=4, padding=100)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # Caffe's LRN: x / (1 + alpha / n * sum of squares over n channels) ** beta
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=2)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=2)
        self.pool5 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.fc6 = nn.Conv2d(c5, fc, 6)
        self.drop6 = nn.Dropout2d()
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop7 = nn.Dropout2d()
        self.score_fr = nn.Conv2d(fc, self.n_class, 1)
        self.upscore = self._make_upscore(self.n_class, 63, 32)
        self.init_weights(("score_fr",))

    def final_head(self, x):
        h = self.norm1(self.pool1(F.relu(self.conv1(x), inplace=True)))
        h = self.norm2(self.pool2(F.relu(self.conv2(h), inplace=True)))
        h = F.relu(self.conv3(h), inplace=True)
        h = F.relu(self.conv4(h), inplace=True)
        h = self.pool5(F.relu(self.conv5(h), inplace=True))
        h = self.drop6(F.relu(self.fc6(h), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        return self.score_fr(h), self.upscore, CROP

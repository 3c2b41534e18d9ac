"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on the VGG16 trunk (Long, Shelhamer, Darrell).

The published Caffe nets (fcn.berkeleyvision.org), with the module names and
state_dict keys of pytorch-fcn's torchfcn.models, so its checkpoints load with
strict=True. Trunk: conv1_1 padded by 100 (so every input size >= 1 gives an output
covering the input), 3x3 convs, 2x2 ceil-mode max-pools, fc6 7x7 and fc7 1x1 as
convolutions with Dropout2d. Heads: fixed bilinear upsampling fused with the crop and
the skip sum by fcn_fast.upsample_skip, at the published offsets:

    FCN-32s  upscore   k64 s32, crop 19
    FCN-16s  upscore2  k4 s2 + score_pool4[5:]       -> upscore16 k32 s16, crop 27
    FCN-8s   upscore2  k4 s2 + score_pool4[5:]       -> upscore_pool4 k4 s2 + score_pool3[9:]
             -> upscore8 k16 s8, crop 31
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from fcn_fast.models._common import (
    FCNBase,
    check_n_class,
    check_width,
    scaled,
    unwrap_state_dict,
)

_BLOCKS = (
    ("conv1_1", "conv1_2"),
    ("conv2_1", "conv2_2"),
    ("conv3_1", "conv3_2", "conv3_3"),
    ("conv4_1", "conv4_2", "conv4_3"),
    ("conv5_1", "conv5_2", "conv5_3"),
)
_CHANNELS = (64, 128, 256, 512, 512)
_SCORE_LAYERS = ("score_fr", "score_pool3", "score_pool4")


def _torchvision_keys():
    """(torchvision VGG16 key, FCN layer, attribute, reshape-to-fc) for every trunk tensor."""
    keys, index = [], 0
    for block in _BLOCKS:
        for name in block:  # features: conv, ReLU, conv, ReLU, ..., MaxPool
            keys += [(f"features.{index}.{a}", name, a) for a in ("weight", "bias")]
            index += 2
        index += 1
    for index, name in ((0, "fc6"), (3, "fc7")):  # classifier: Linear, ReLU, Dropout, Linear
        keys += [(f"classifier.{index}.{a}", name, a) for a in ("weight", "bias")]
    return keys


class VGG16FCN(FCNBase):
    """The VGG16 trunk shared by FCN32s / FCN16s / FCN8s / FCN8sAtOnce.

    Args:
        n_class: number of output classes (21 for PASCAL VOC).
        backend: upsample_skip kernel of the heads: "auto", "reference" (plain PyTorch),
            "cpu", "cuda" or "triton"; change later with set_backend().
        width: channel multiplier of the trunk (conv and fc layers). 1.0 is the published
            net (134M parameters); e.g. width=1/16 keeps the architecture, crops and
            output sizes with ~0.5M parameters, for tests and CPU demos. Layer names stay
            the same; the shapes of a reduced-width state_dict differ.
    """

    def __init__(self, n_class: int = 21, *, backend: str = "auto", width: float = 1.0):
        super().__init__(backend)
        self.n_class = check_n_class(n_class)
        self.width = check_width(width)
        channels = 3
        self.pool_channels = []
        for number, (block, out) in enumerate(zip(_BLOCKS, _CHANNELS, strict=True), start=1):
            out = scaled(out, width)
            for name in block:
                padding = 100 if name == "conv1_1" else 1
                setattr(self, name, nn.Conv2d(channels, out, 3, padding=padding))
                channels = out
            setattr(self, f"pool{number}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            self.pool_channels.append(channels)
        fc = scaled(4096, width)
        self.fc6 = nn.Conv2d(channels, fc, 7)
        self.drop6 = nn.Dropout2d()
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop7 = nn.Dropout2d()
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        self._build_head()
        self.init_weights(_SCORE_LAYERS)

    def _build_head(self):
        raise NotImplementedError

    def features(self, x):
        """(pool3, pool4, fc7 activations) of the trunk."""
        pools = []
        h = x
        for number, block in enumerate(_BLOCKS, start=1):
            for name in block:
                h = F.relu(getattr(self, name)(h), inplace=True)
            h = getattr(self, f"pool{number}")(h)
            pools.append(h)
        h = self.drop6(F.relu(self.fc6(h), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        return pools[2], pools[3], h

    def copy_params_from_vgg16(self, vgg16: nn.Module) -> None:
        """Warm-start the trunk from a torchvision-layout VGG16 module (`features`,
        `classifier`), as pytorch-fcn's helper; fc6/fc7 are reshaped into convolutions."""
        _load_vgg16_state(self, vgg16.state_dict(), "vgg16")


class FCN32s(VGG16FCN):
    """FCN-32s: score_fr upsampled x32 (k64, crop 19). See VGG16FCN for the arguments."""

    def _build_head(self):
        self.upscore = self._make_upscore(self.n_class, 64, 32)

    def final_head(self, x):
        _, _, h = self.features(x)
        return self.score_fr(h), self.upscore, 19


class FCN16s(VGG16FCN):
    """FCN-16s: x2 + pool4 scores, then x16 (k32, crop 27). See VGG16FCN for the arguments."""

    def _build_head(self):
        self.score_pool4 = nn.Conv2d(self.pool_channels[3], self.n_class, 1)
        self.upscore2 = self._make_upscore(self.n_class, 4, 2)
        self.upscore16 = self._make_upscore(self.n_class, 32, 16)

    def final_head(self, x):
        _, pool4, h = self.features(x)
        h = self.upscore2(self.score_fr(h), self.score_pool4(pool4), skip_crop=5)
        return h, self.upscore16, 27

    def copy_params_from_fcn32s(self, fcn32s: nn.Module) -> None:
        """Warm-start from a trained FCN-32s (every layer both nets have)."""
        self.copy_params_from(fcn32s)


class FCN8s(VGG16FCN):
    """FCN-8s: x2 + pool4 scores, x2 + pool3 scores, then x8 (k16, crop 31).
    See VGG16FCN for the arguments."""

    pool4_scale: float | None = None
    pool3_scale: float | None = None

    def _build_head(self):
        self.score_pool3 = nn.Conv2d(self.pool_channels[2], self.n_class, 1)
        self.score_pool4 = nn.Conv2d(self.pool_channels[3], self.n_class, 1)
        self.upscore2 = self._make_upscore(self.n_class, 4, 2)
        self.upscore8 = self._make_upscore(self.n_class, 16, 8)
        self.upscore_pool4 = self._make_upscore(self.n_class, 4, 2)

    def final_head(self, x):
        pool3, pool4, h = self.features(x)
        if self.pool4_scale is not None:
            pool4 = pool4 * self.pool4_scale
            pool3 = pool3 * self.pool3_scale
        h = self.upscore2(self.score_fr(h), self.score_pool4(pool4), skip_crop=5)
        h = self.upscore_pool4(h, self.score_pool3(pool3), skip_crop=9)
        return h, self.upscore8, 31

    def copy_params_from_fcn16s(self, fcn16s: nn.Module) -> None:
        """Warm-start from a trained FCN-16s (every layer both nets have)."""
        self.copy_params_from(fcn16s)


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained in one stage: the pool4 and pool3 inputs of the score layers are
    scaled by 0.01 and 0.0001 (as the published at-once net). See VGG16FCN for the
    arguments."""

    pool4_scale = 0.01
    pool3_scale = 0.0001


def _load_vgg16_state(model: VGG16FCN, state, source: str) -> None:
    keys = _torchvision_keys()
    missing = [key for key, _, _ in keys if key not in state]
    if missing:
        shown = ", ".join(missing[:8]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 8 else ""
        )
        raise ValueError(
            f"load_vgg16_backbone: {source} is not a torchvision VGG16 state_dict "
            f"(features.N / classifier.0 / classifier.3); missing keys: {shown}"
        )
    pairs = []
    for key, name, attr in keys:
        value, target = state[key], getattr(getattr(model, name), attr)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"load_vgg16_backbone: {source}: {key} is not a tensor")
        # classifier.0 (4096, 25088) is fc6 (4096, 512, 7, 7); classifier.3 is fc7 1x1.
        if value.numel() != target.numel() or value.shape[0] != target.shape[0]:
            raise ValueError(
                f"load_vgg16_backbone: {source}: {key} has shape {tuple(value.shape)}, "
                f"which does not fit {name}.{attr} of shape {tuple(target.shape)} "
                f"(model width={model.width})"
            )
        pairs.append((target, value.reshape(target.shape)))
    with torch.no_grad():
        for target, value in pairs:
            target.copy_(value)


def load_vgg16_backbone(model: VGG16FCN, path) -> VGG16FCN:
    """Load a torchvision-format VGG16 state_dict file onto the trunk of an FCN.

    `features.{0,2,5,...,28}` go to conv1_1 ... conv5_3; `classifier.0` and
    `classifier.3` are reshaped into the fc6 (7x7) and fc7 (1x1) convolutions; score
    and upsampling layers are left as they are. The file is read with
    torch.load(weights_only=True); nothing is downloaded. A file that is not a VGG16
    state_dict raises ValueError naming the missing keys. Returns the model.
    """
    if not isinstance(model, VGG16FCN):
        raise TypeError(
            f"load_vgg16_backbone: model must be a VGG16 FCN (FCN32s, FCN16s, FCN8s, "
            f"FCN8sAtOnce), got {type(model).__name__}"
        )
    if not isinstance(path, (str, os.PathLike)) and not hasattr(path, "read"):
        raise TypeError(
            f"load_vgg16_backbone: path must be a file path or file object, got {path!r}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(
            f"load_vgg16_backbone: {path} holds a {type(state).__name__}, not a state_dict"
        )
    _load_vgg16_state(model, unwrap_state_dict(state), str(path))
    return model

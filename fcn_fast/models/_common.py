"""Pieces shared by the FCN models: the fixed bilinear upsampling layer, the model base class
(backend choice, checkpoint loading, initialisation) and the FCN recipe's optimizer groups."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn

from fcn_fast._backend import BACKENDS
from fcn_fast.ops import pixel_cross_entropy, upsample_argmax, upsample_cross_entropy, upsample_skip
from fcn_fast.ops._checks import int_pair
from fcn_fast.reference import argmax_reference, bilinear_weight, transposed_conv_skip

_BACKEND_CHOICES = ("auto", *BACKENDS)


class NonBilinearUpscoreWarning(UserWarning):
    """A loaded upsampling weight is not the bilinear filter; that layer runs unfused."""


def check_backend(backend) -> str:
    if not isinstance(backend, str) or backend not in _BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {_BACKEND_CHOICES}, got {backend!r}")
    return backend


def check_n_class(n_class) -> int:
    if not isinstance(n_class, int) or isinstance(n_class, bool):
        raise TypeError(f"n_class must be an int, got {n_class!r}")
    if n_class < 1:
        raise ValueError(f"n_class must be >= 1, got {n_class}")
    return n_class


def check_width(width) -> float:
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(
            f"width must be a positive number (1.0 = the published net), got {width!r}"
        )
    return float(width)


def scaled(channels: int, width: float, multiple: int = 1) -> int:
    """`channels * width`, rounded to a multiple of `multiple` (grouped convs), at least one."""
    return max(multiple, multiple * round(channels * width / multiple))


class BilinearUpscore(nn.Module):
    """FCN's fixed upsampling layer (Caffe `Deconvolution`, bilinear filler, lr_mult 0).

    Holds the (C, C, k, k) ConvTranspose2d weight as the buffer `weight`, so state_dicts
    match pytorch-fcn (`upscore*.weight`, no bias); it is not a parameter and is not
    trained. While the weight is the bilinear filter, forward runs
    `fcn_fast.upsample_skip` (upsampling, crop and skip-add fused) on `backend`. A
    checkpoint whose weight is something else (a learned deconvolution) makes the layer
    warn when loaded and run the general `F.conv_transpose2d` with that weight: correct,
    never silently fused. The check runs on `load_state_dict`; after editing `weight`
    in place, call `check_weight()`.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, backend: str = "auto"):
        super().__init__()
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.backend = check_backend(backend)
        self.register_buffer("weight", bilinear_weight(channels, kernel_size))
        self.is_bilinear = True

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, {self.channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, fixed bilinear, backend={self.backend!r}"
        )

    def check_weight(self, tolerance: float | None = None) -> bool:
        """Whether `weight` is the bilinear filter (to `tolerance`, default: its dtype's eps)."""
        w = self.weight
        if w.is_meta:  # no values to check (parameter counting on the meta device)
            return self.is_bilinear
        if tolerance is None:
            tolerance = torch.finfo(w.dtype).eps
        exact = bilinear_weight(self.channels, self.kernel_size, torch.float64, w.device)
        self.is_bilinear = bool((w.detach().double() - exact).abs().max() <= tolerance)
        return self.is_bilinear

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)
        source = state_dict.get(prefix + "weight")
        if not isinstance(source, torch.Tensor) or source.shape != self.weight.shape:
            return  # missing or mis-shaped: load_state_dict reports it
        # A bilinear filter saved in half precision is still the bilinear filter.
        dtypes = [d for d in (source.dtype, self.weight.dtype) if d.is_floating_point]
        eps = max(torch.finfo(d).eps for d in dtypes)
        if not self.check_weight(eps):
            name = prefix[:-1] or type(self).__name__
            warnings.warn(
                f"{name}: the loaded upsampling weight is not the fixed bilinear filter; "
                "this layer runs the general F.conv_transpose2d with the loaded weight "
                "instead of the fused fcn_fast.upsample_skip",
                NonBilinearUpscoreWarning,
                stacklevel=2,
            )

    def forward(self, coarse, skip=None, *, crop=0, skip_crop=0, out_size=None):
        """upsample_skip(coarse, skip, factor=stride, kernel_size, crop, skip_crop, out_size)."""
        if self.is_bilinear:
            return upsample_skip(
                coarse,
                skip,
                factor=self.stride,
                kernel_size=self.kernel_size,
                crop=crop,
                skip_crop=skip_crop,
                out_size=out_size,
                backend=self.backend,
            )
        return self._general(coarse, skip, crop, skip_crop, out_size)

    def cross_entropy(self, coarse, target, *, crop=0, **ce_kwargs):
        """F.cross_entropy(self(coarse, crop=crop, out_size=target's size), target, **ce_kwargs),
        fused (fcn_fast.upsample_cross_entropy) while the weight is bilinear."""
        if self.is_bilinear:
            return upsample_cross_entropy(
                coarse,
                target,
                factor=self.stride,
                kernel_size=self.kernel_size,
                crop=crop,
                backend=self.backend,
                **ce_kwargs,
            )
        logits = self._general(coarse, None, crop, 0, tuple(target.shape[-2:]))
        return pixel_cross_entropy(logits, target, backend=self.backend, **ce_kwargs)

    def argmax(
        self, coarse, *, crop=0, out_size=None, out_dtype=torch.int64, return_confidence=False
    ):
        """self(coarse, crop=crop, out_size=out_size).argmax(1), fused (fcn_fast.upsample_argmax)
        while the weight is bilinear; return_confidence adds the winner's softmax probability."""
        if self.is_bilinear:
            return upsample_argmax(
                coarse,
                factor=self.stride,
                kernel_size=self.kernel_size,
                crop=crop,
                out_size=out_size,
                out_dtype=out_dtype,
                return_confidence=return_confidence,
                backend=self.backend,
            )
        with torch.no_grad():
            logits = self._general(coarse, None, crop, 0, out_size)
        return argmax_reference(logits, out_dtype, return_confidence)

    def _general(self, coarse, skip, crop, skip_crop, out_size):
        """The unfused transposed convolution with the loaded (non-bilinear) weight."""
        crop = int_pair(crop, "crop", type(self).__name__)
        skip_crop = int_pair(skip_crop, "skip_crop", type(self).__name__)
        if out_size is None:
            full = [(n - 1) * self.stride + self.kernel_size for n in coarse.shape[2:]]
            out_size = (full[0] - crop[0], full[1] - crop[1])
        weight = self.weight.to(coarse.dtype)
        return transposed_conv_skip(
            coarse, skip, weight, self.stride, crop, skip_crop, tuple(out_size)
        )


def unwrap_state_dict(state_dict):
    """The model state of a plain state_dict or of a {"model_state_dict": ...} checkpoint."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    inner = state_dict.get("model_state_dict")
    return inner if isinstance(inner, Mapping) else state_dict


class FCNBase(nn.Module):
    """Base of the FCN models: backend selection, checkpoint loading, initialisation."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self._backend = check_backend(backend)

    @property
    def backend(self) -> str:
        return self._backend

    def set_backend(self, backend: str):
        """Select the upsample_skip kernel of every head ("auto", "reference", "cpu", ...)."""
        self._backend = check_backend(backend)
        for module in self.modules():
            if isinstance(module, BilinearUpscore):
                module.backend = backend
        return self

    def _make_upscore(self, channels, kernel_size, stride) -> BilinearUpscore:
        return BilinearUpscore(channels, kernel_size, stride, self._backend)

    def final_head(self, x):
        """(coarse scores, the final upsampling layer, its crop): everything but the last step.

        forward, loss and predict all end with that layer: forward upsamples the scores to
        the input's size, loss and predict fuse the upsampling with the loss or the argmax.
        """
        raise NotImplementedError

    def forward(self, x):
        """Class scores (N, n_class, H, W) aligned with the input (N, 3, H, W)."""
        scores, upscore, crop = self.final_head(x)
        return upscore(scores, crop=crop, out_size=x.shape[2:])

    def loss(
        self,
        x,
        target,
        weight=None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        """F.cross_entropy(self(x), target, ...) without materialising the full-size scores.

        target: (N, H, W) class indices (int64, int32 or uint8) for the input x (N, 3, H, W);
        the keyword arguments are F.cross_entropy's.
        """
        scores, upscore, crop = self.final_head(x)
        return upscore.cross_entropy(
            scores,
            target,
            crop=crop,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    def predict(self, x, *, out_dtype=torch.int64, return_confidence: bool = False):
        """self(x).argmax(1) (ties to the lowest class), without the full-size scores.

        out_dtype: torch.int64 or torch.uint8 (n_class <= 256). return_confidence=True also
        returns the winning class's softmax probability (float32), as (labels, confidence).
        """
        scores, upscore, crop = self.final_head(x)
        return upscore.argmax(
            scores,
            crop=crop,
            out_size=x.shape[2:],
            out_dtype=out_dtype,
            return_confidence=return_confidence,
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict that also accepts pytorch-fcn's training checkpoints,
        {"model_state_dict": state_dict, ...}, as well as plain state_dicts."""
        return super().load_state_dict(unwrap_state_dict(state_dict), strict=strict, assign=assign)

    def init_weights(self, score_layers=()):
        """He-normal trunk convolutions, zero biases, zero-initialised score layers (as in the
        FCN paper), bilinear upsampling. pytorch-fcn instead zeroes every convolution and
        relies on copy_params_from_vgg16; zero trunks do not train from scratch."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if name in score_layers:
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def copy_params_from(self, source: nn.Module) -> None:
        """Copy every layer of `source` that this model has under the same name (pytorch-fcn's
        copy_params_from_fcn32s / _fcn16s). Shapes must match."""
        with torch.no_grad():
            for name, child in source.named_children():
                target = getattr(self, name, None)
                tensors = child.state_dict()
                if isinstance(target, nn.Module) and tensors:
                    target.load_state_dict(tensors)


def load_checkpoint(model: nn.Module, path, strict: bool = True):
    """Load a state_dict file, plain or {"model_state_dict": ...}, with weights_only=True."""
    if not isinstance(path, (str, os.PathLike)) and not hasattr(path, "read"):
        raise TypeError(f"path must be a file path or a file object, got {type(path).__name__}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return nn.Module.load_state_dict(model, unwrap_state_dict(state), strict=strict)


def fcn_param_groups(model: nn.Module, lr: float, weight_decay: float = 5e-4) -> list[dict]:
    """Optimizer parameter groups of the FCN recipe: weights at `lr` with `weight_decay`,
    biases at 2 * lr without weight decay; the fixed upsampling layers are left out.

        optimizer = torch.optim.SGD(fcn_param_groups(model, lr=1e-4), lr=1e-4, momentum=0.9)
    """
    weights, biases = [], []
    for module in model.modules():
        if isinstance(module, (BilinearUpscore, nn.ConvTranspose2d)):
            continue  # fixed bilinear upsampling (also in plain-PyTorch FCNs)
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (biases if name == "bias" else weights).append(param)
    return [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": biases, "lr": 2 * lr, "weight_decay": 0.0},
    ]

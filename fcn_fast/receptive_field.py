"""Exact receptive fields, strides and depths of the FCN models, read from their layer graphs.

`analyze(model)` traces `model.final_head` with torch.fx up to the coarse scores (the
input of the final fixed upsampling layer) and walks the graph once, carrying for every
node a `Geometry`: which input rows each of its output rows reads. Convolutions and
pools compose it, transposed convolutions (the fixed bilinear upsampling layers of the
FCN-16s / FCN-8s heads) spread it, concatenations and additions (GoogLeNet's inception
branches, the skip sums) take the hull of their inputs. Nothing is typed in: the numbers
come from the layers' own kernel sizes, strides, paddings and crops. All kernels here are
square, so one axis describes both.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from fractions import Fraction

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fcn_fast.models import BilinearUpscore

# Layers that do not mix spatial positions: they keep their input's geometry.
_POINTWISE_MODULES = (
    nn.ReLU,
    nn.Dropout,
    nn.Dropout2d,
    nn.LocalResponseNorm,  # mixes channels only
    nn.BatchNorm2d,
    nn.Identity,
)
_POINTWISE_FUNCTIONS = (F.relu, torch.relu, F.dropout, F.dropout2d)
_POINTWISE_METHODS = ("relu", "relu_", "contiguous")
# Elementwise on tensors of the same size (or a tensor and a number): the hull of the inputs.
_ELEMENTWISE_FUNCTIONS = (operator.add, operator.mul, torch.add, torch.mul)
_ELEMENTWISE_METHODS = ("add", "add_", "mul", "mul_")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Which input rows each output row of a layer reads (its receptive field, per position).

    Output row o = q * period + r reads input rows lo[r] + q * shift ... hi[r] + q * shift
    (inclusive; row 0 is the image's first row, negative rows are padding). The period is 1
    for convolutions and pools; a transposed convolution of stride s makes it s, because
    its output rows read one or two input rows depending on o mod s. `depth` counts the
    learned convolutions on the longest path from the image (the paper's "conv. layers").
    """

    period: int = 1
    shift: int = 1
    lo: tuple[int, ...] = (0,)
    hi: tuple[int, ...] = (0,)
    depth: int = 0

    def support(self, o: int) -> tuple[int, int]:
        """(first, last) input row that output row `o` reads."""
        q, r = divmod(o, self.period)
        return self.lo[r] + q * self.shift, self.hi[r] + q * self.shift

    @property
    def size(self) -> int:
        """The receptive field: the most input rows one output row reads."""
        return max(h - lo + 1 for lo, h in zip(self.lo, self.hi))

    @property
    def stride(self) -> Fraction:
        """Input rows per output row."""
        return Fraction(self.shift, self.period)

    def window(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> Geometry:
        """After a convolution or pool: output row o reads rows o*stride - padding + [0, span]."""
        span = dilation * (kernel - 1)
        period = self.period // math.gcd(stride, self.period)
        rows = [r * stride - padding for r in range(period)]
        return Geometry(
            period=period,
            shift=self.shift * period * stride // self.period,
            lo=tuple(self.support(x)[0] for x in rows),
            hi=tuple(self.support(x + span)[1] for x in rows),
            depth=self.depth,
        )

    def upsample(self, kernel: int, stride: int, crop: int) -> Geometry:
        """After a transposed convolution whose output is cropped at `crop`: output row o is
        row u = o + crop of the full result, which sums input rows i with 0 <= u - i*stride
        < kernel, i.e. i from ceil((u - kernel + 1) / stride) to floor(u / stride)."""
        if kernel < stride:
            raise ValueError(f"a transposed convolution with kernel {kernel} < stride {stride}")
        period = self.period * stride
        firsts = [-((kernel - 1 - u) // stride) for u in range(crop, crop + period)]
        lasts = [u // stride for u in range(crop, crop + period)]
        return Geometry(
            period=period,
            shift=self.shift,
            lo=tuple(self.support(i)[0] for i in firsts),
            hi=tuple(self.support(i)[1] for i in lasts),
            depth=self.depth,
        )

    def union(self, other: Geometry) -> Geometry:
        """Elementwise combination (sum, product, channel concatenation) of two maps on the
        same grid: every output row reads what either input reads."""
        if self.stride != other.stride:
            raise ValueError(
                f"cannot combine maps of strides {self.stride} and {other.stride} elementwise"
            )
        period = math.lcm(self.period, other.period)
        pairs = [(self.support(r), other.support(r)) for r in range(period)]
        return Geometry(
            period=period,
            shift=self.shift * period // self.period,
            lo=tuple(min(a[0], b[0]) for a, b in pairs),
            hi=tuple(max(a[1], b[1]) for a, b in pairs),
            depth=max(self.depth, other.depth),
        )


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What the layer graph of a model says about its coarse scores."""

    geometry: Geometry  # of the coarse scores (the final upsampling layer's input)
    max_stride: Fraction  # coarsest grid of any layer on the way, in input pixels
    conv_modules: int  # learned Conv2d modules the scores depend on, all branches

    @property
    def receptive_field(self) -> int:
        return self.geometry.size

    @property
    def conv_layers(self) -> int:
        return self.geometry.depth

    @property
    def output_stride(self) -> Fraction:
        return self.geometry.stride


class _Tracer(fx.Tracer):
    # The fixed upsampling layer stays one node: its geometry is read from its attributes.
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, BilinearUpscore) or super().is_leaf_module(module, qualified_name)


class _CoarseScores(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.final_head(x)[0]


def trace_coarse_scores(model: nn.Module) -> fx.GraphModule:
    """The fx graph from the image to the coarse scores of `model.final_head`."""
    if not callable(getattr(model, "final_head", None)):
        raise TypeError(
            f"receptive field: {type(model).__name__} has no final_head(x) -> (scores, "
            "upscore, crop); pass an fcn_fast FCN model"
        )
    root = _CoarseScores(model)
    return fx.GraphModule(root, _Tracer().trace(root))


def analyze(model: nn.Module) -> Analysis:
    """Receptive field, strides and conv depth of `model`'s coarse scores, from its layers.

    Works on any device, the meta device included (nothing is computed on tensors).
    Raises ValueError naming the node for a layer whose spatial geometry it does not know.
    """
    graph = trace_coarse_scores(model)
    modules = dict(graph.named_modules())
    geometry: dict[fx.Node, Geometry] = {}
    # Learned convolutions upstream of each node, for the count over all branches.
    convs: dict[fx.Node, frozenset[str]] = {}
    result, conv_modules = None, 0
    for node in graph.graph.nodes:
        inputs = [a for a in node.all_input_nodes if a in geometry]
        convs[node] = frozenset().union(*(convs[a] for a in inputs))
        if node.op == "placeholder":
            geometry[node] = Geometry()
        elif node.op == "output":
            result = geometry[node.args[0]]
            conv_modules = len(convs[node.args[0]])
        elif node.op == "call_module":
            module = modules[node.target]
            geometry[node] = _module_geometry(node, module, geometry)
            if isinstance(module, nn.Conv2d):
                convs[node] |= {node.target}
        elif node.op == "call_function" or node.op == "call_method":
            geometry[node] = _function_geometry(node, inputs, geometry)
        else:
            raise _unknown(node)
    max_stride = max(g.stride for g in geometry.values())
    return Analysis(geometry=result, max_stride=max_stride, conv_modules=conv_modules)


def _module_geometry(node: fx.Node, module: nn.Module, geometry) -> Geometry:
    if isinstance(module, _POINTWISE_MODULES):
        return geometry[node.args[0]]
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        source = geometry[node.args[0]]
        kernel, stride, padding = (
            _square(node, name, getattr(module, name))
            for name in ("kernel_size", "stride", "padding")
        )
        dilation = _square(node, "dilation", getattr(module, "dilation", 1))
        out = source.window(kernel, stride or kernel, padding, dilation)
        if isinstance(module, nn.Conv2d):
            out = dataclasses.replace(out, depth=source.depth + 1)
        return out
    if isinstance(module, BilinearUpscore):
        crop = _square(node, "crop", node.kwargs.get("crop", 0))
        out = geometry[node.args[0]].upsample(module.kernel_size, module.stride, crop)
        skip = node.args[1] if len(node.args) > 1 else node.kwargs.get("skip")
        if skip is not None:
            # The skip is read at rows o + skip_crop: a 1-row window padded by -skip_crop.
            skip_crop = _square(node, "skip_crop", node.kwargs.get("skip_crop", 0))
            out = out.union(geometry[skip].window(1, 1, -skip_crop))
        return out
    raise _unknown(node, type(module).__name__)


def _function_geometry(node: fx.Node, inputs: list[fx.Node], geometry) -> Geometry:
    pointwise = (node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS) or (
        node.op == "call_method" and node.target in _POINTWISE_METHODS
    )
    elementwise = (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ELEMENTWISE_METHODS
    )
    if node.target is torch.cat:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (1, -3):
            raise ValueError(
                f"receptive field: node {node.name} concatenates along dim {dim}, "
                "not the channels (dim 1)"
            )
        elementwise = True
    if (pointwise or elementwise) and inputs:
        out = geometry[inputs[0]]
        for other in inputs[1:]:
            out = out.union(geometry[other])
        return out
    raise _unknown(node)


def _square(node: fx.Node, name: str, value) -> int:
    if isinstance(value, str):
        raise ValueError(f"receptive field: node {node.name} has {name}={value!r}; give numbers")
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(
                f"receptive field: node {node.name} has {name}={tuple(value)}; "
                "only square (equal in both axes) layers are supported"
            )
        value = value[0]
    return value


def _unknown(node: fx.Node, what: str | None = None) -> ValueError:
    what = what or getattr(node.target, "__name__", str(node.target))
    return ValueError(
        f"receptive field: no geometry rule for node {node.name} ({node.op} {what}); "
        "supported: Conv2d, MaxPool2d, AvgPool2d, BilinearUpscore, pointwise layers, "
        "additions, products and channel concatenations"
    )

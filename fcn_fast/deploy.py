"""Deploy a trained FCN: export it to ONNX, run it in onnxruntime (README "Deploy").

`torch.onnx.export(model, (x,), dynamo=True)` works on every fcn_fast model and op as it is
(fcn_fast/_decompositions.py gives the exporter their standard-op forms). This module adds
what a deployment wants around that:

    export_onnx(model, path, example)   logits, or with labels=True model.predict's labels,
                                        with dynamic batch, height and width axes
    ImageSegmenter(model, input_norm)   uint8 RGB images in, the trunk's input normalisation
                                        inside the graph (what `fcn-fast export` writes)
    OnnxSegmenter(path)                 the exported graph in onnxruntime, labels out

onnx, onnxscript and onnxruntime are imported on first use (pip install onnx onnxscript
onnxruntime).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

# ONNX metadata keys: what the graph outputs, so that a reader needs no other file.
OUTPUT_KEY = "fcn_fast.output"  # "labels" or "logits"


class Predict(nn.Module):
    """model.predict(x, out_dtype=...) as a module's forward, so that it can be exported."""

    def __init__(self, model: nn.Module, out_dtype=torch.uint8, return_confidence=False):
        super().__init__()
        self.model, self.out_dtype, self.return_confidence = model, out_dtype, return_confidence

    def forward(self, x):
        return self.model.predict(
            x, out_dtype=self.out_dtype, return_confidence=self.return_confidence
        )


class ImageSegmenter(nn.Module):
    """uint8 RGB images (N, 3, H, W) in; labels (N, H, W) uint8, or the logits, out.

    `normalization` is the trunk's input convention (fcn_fast.train.data.NORMALIZATIONS:
    RGB or BGR, mean, std), applied inside the graph as the training run applied it.
    """

    def __init__(self, model: nn.Module, normalization: dict, labels: bool = True):
        super().__init__()
        self.model, self.labels, self.bgr = model, labels, bool(normalization["bgr"])
        self.register_buffer("mean", torch.tensor(normalization["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalization["std"]).view(1, 3, 1, 1))

    def forward(self, images):
        x = images.float()
        if self.bgr:
            x = x.flip(1)
        x = (x - self.mean) / self.std
        return self.model.predict(x, out_dtype=torch.uint8) if self.labels else self.model(x)


def export_onnx(
    model: nn.Module,
    path,
    example: torch.Tensor,
    *,
    labels: bool = False,
    dynamic: bool = True,
    opset: int = 18,
):
    """Export `model` (in eval mode) to the ONNX file `path`, traced on `example`.

    labels=True exports model.predict's uint8 labels (an FCN model) instead of the logits;
    a module that already returns labels (ImageSegmenter) is exported as it is. dynamic:
    the batch, height and width axes of the input (and outputs) are dynamic; otherwise the
    graph takes `example`'s shape only. Returns the torch.onnx.ONNXProgram.
    """
    if labels and not isinstance(model, ImageSegmenter):
        model = Predict(model)
    model = model.eval()
    dims = torch.export.Dim.DYNAMIC
    dynamic_shapes = ({0: dims, 2: dims, 3: dims},) if dynamic else None
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        input_names=["images"],
        output_names=["labels" if _outputs_labels(model) else "logits"],
        verbose=False,
    )
    program.model.metadata_props[OUTPUT_KEY] = "labels" if _outputs_labels(model) else "logits"
    program.save(str(path))
    return program


def _outputs_labels(model) -> bool:
    return isinstance(model, Predict) or (isinstance(model, ImageSegmenter) and model.labels)


class OnnxSegmenter:
    """An exported fcn_fast graph in onnxruntime (CPU unless `providers` says otherwise).

    segmenter(images) takes what the graph takes (uint8 (N, 3, H, W) images for
    `fcn-fast export`'s graphs) and returns uint8 labels (N, H, W): the graph's own, or the
    argmax of its logits (ties to the lowest class, as torch.argmax).
    """

    def __init__(self, path, providers=("CPUExecutionProvider",)):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.output = meta.get(OUTPUT_KEY, "logits")
        self.input = self.session.get_inputs()[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        shape = self.input.shape  # dims are ints (static) or names (dynamic)
        fixed = [(i, n) for i, n in enumerate(shape) if isinstance(n, int)]
        if any(images.shape[i] != n for i, n in fixed):
            raise ValueError(
                f"this ONNX graph takes inputs of shape {shape}, got {images.shape}; "
                "export it with dynamic axes (fcn-fast export --dynamic) for other sizes"
            )
        (out,) = self.session.run(None, {self.input.name: images})
        if self.output == "labels":
            return out.astype(np.uint8, copy=False)
        return out.argmax(1).astype(np.uint8)

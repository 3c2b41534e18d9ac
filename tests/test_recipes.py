"""The README's framework recipes (issue 26), run as written: each snippet trains the
framework's real model (built from a config, random weights, nothing downloaded) with
fcn_fast's fused loss on its low-resolution logits; the loss and every parameter's gradient
must equal the framework's own loss through its own upsampling.

transformers runs everywhere (the `test` extra installs it). segmentation_models_pytorch and
torchvision need a torchvision that imports beside the installed torch: PyPI's torchvision for
torch 2.13 is a CUDA build that does not import beside the CPU torch, so there they skip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(name: str) -> str:
    """The ```python block after `<!-- recipe: name -->` in the README."""
    match = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no recipe {name!r}"
    return match.group(1)


def run_snippet(name, images, labels, model_class):
    """exec the snippet with `images` and `labels`; its namespace. Every forward of the
    model_class (the snippet's and the reference's) starts from one seed: dropout and
    drop-path draw the same masks in both."""

    def seed(module, args):  # returns None: a pre-hook's return value would replace args
        if type(module).__name__ == model_class:
            torch.manual_seed(0)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(seed)
    namespace = {"images": images, "labels": labels}
    try:
        exec(compile(snippet(name), f"README.md recipe {name}", "exec"), namespace)
    finally:
        handle.remove()
    namespace["_seed_hook"] = seed
    return namespace


def assert_same_loss_and_gradients(namespace, want_loss_fn):
    model, loss = namespace["model"], namespace["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad.clone() for p in params]  # the snippet's loss.backward()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(namespace["_seed_hook"])
    try:
        want = want_loss_fn(model)
    finally:
        handle.remove()
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)
    assert any(g.abs().max() > 0 for g in grads)


def _inputs(n_class, size=64):
    images = torch.randn(2, 3, size, size)
    labels = torch.randint(0, n_class, (2, size, size))
    labels[:, :5] = 255  # ignored rows
    return images, labels


def test_transformers_segformer_recipe():
    pytest.importorskip("transformers", reason="the test extra installs transformers")
    images, labels = _inputs(150)
    namespace = run_snippet(
        "transformers-segformer", images, labels, "SegformerForSemanticSegmentation"
    )
    assert namespace["logits"].shape == (2, 150, 16, 16)  # the loss read 1/4-resolution logits
    assert_same_loss_and_gradients(
        namespace, lambda model: model(pixel_values=images, labels=labels).loss
    )


def test_segmentation_models_pytorch_recipe():
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as error:  # absent, or its torchvision cannot load ("torchvision::nms")
        pytest.skip(f"segmentation_models_pytorch is not usable here: {error}")
    images, labels = _inputs(21)
    # Training mode in both passes: batch-norm uses the batch's statistics, dropout the same seed.
    namespace = run_snippet("segmentation-models-pytorch", images, labels, "FPN")
    assert namespace["low_res"]["logits"].shape == (2, 21, 16, 16)
    assert_same_loss_and_gradients(
        namespace,
        lambda model: F.cross_entropy(model(images), labels, ignore_index=255),
    )

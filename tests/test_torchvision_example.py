"""The README's example: torchvision's deeplabv3_resnet50 trained with InterpolateCrossEntropyLoss
on its low-resolution logits (its backbone + classifier, skipping its own F.interpolate).

torchvision is an optional test dependency: without a working one the test is skipped.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fcn_fast

try:
    from torchvision.models.segmentation import deeplabv3_resnet50
except Exception as error:  # absent, or built for another torch ("torchvision::nms ...")
    pytest.skip(f"torchvision is not usable here: {error}", allow_module_level=True)


def low_res_logits(model, images):
    """What DeepLabV3.forward computes before its final F.interpolate: stride-8 logits."""
    return model.classifier(model.backbone(images)["out"])


def test_interpolate_cross_entropy_trains_deeplabv3_like_its_own_forward():
    torch.manual_seed(0)
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    model.eval()  # fixed batch-norm statistics: both losses see the same network
    images = torch.randn(2, 3, 65, 71)
    labels = torch.randint(0, 5, (2, 65, 71))
    labels[:, :4] = 255
    criterion = fcn_fast.nn.InterpolateCrossEntropyLoss(ignore_index=255)

    loss = criterion(low_res_logits(model, images), labels)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    want = F.cross_entropy(model(images)["out"], labels, ignore_index=255)
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)

    # One SGD step on the fused loss lowers it.
    optimizer = torch.optim.SGD(params, lr=1e-3)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    with torch.no_grad():
        assert criterion(low_res_logits(model, images), labels) < loss

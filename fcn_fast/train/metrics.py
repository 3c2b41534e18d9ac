"""The four FCN metrics from one confusion matrix, defined as the FCN authors' evaluation
code (fcn.berkeleyvision.org score.py: fast_hist / compute_hist; pytorch-fcn's
label_accuracy_score):

    hist[i, j]   pixels of true class i predicted as j; labels outside [0, n) are ignored
    pixel acc    diag(hist).sum() / hist.sum()
    mean acc     nanmean(diag(hist) / hist.sum(1))             classes with ground truth
    mean IU      nanmean(diag(hist) / (hist.sum(1) + hist.sum(0) - diag(hist)))
                 classes that appear in the ground truth or the prediction
    fw IU        sum over freq > 0 of freq * IU, freq = hist.sum(1) / hist.sum()

The matrix is accumulated on the device with torch.bincount (int64, exact) and, under
DistributedDataParallel, summed over the processes.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist


class ConfusionMatrix:
    def __init__(self, n_class: int, device="cpu"):
        self.n_class = n_class
        self.hist = torch.zeros(n_class, n_class, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: predicted and true class maps of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} differs from target shape "
                f"{tuple(target.shape)}"
            )
        n = self.n_class
        target, prediction = target.reshape(-1).long(), prediction.reshape(-1).long()
        keep = (target >= 0) & (target < n)
        index = n * target[keep] + prediction[keep]
        self.hist += torch.bincount(index, minlength=n * n).view(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over the processes of the default group (no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.hist)

    def scores(self) -> dict:
        return scores(self.hist.cpu().numpy())


def scores(hist) -> dict:
    """pixel_acc, mean_acc, mean_iu, fw_iu and the per-class IU (None where undefined)."""
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        pixel_acc = diag.sum() / hist.sum()
        mean_acc = np.nanmean(diag / hist.sum(1))
        iu = diag / (hist.sum(1) + hist.sum(0) - diag)
        mean_iu = np.nanmean(iu)
        freq = hist.sum(1) / hist.sum()
        fw_iu = (freq[freq > 0] * iu[freq > 0]).sum()
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": float(mean_acc),
        "mean_iu": float(mean_iu),
        "fw_iu": float(fw_iu),
        "class_iu": [None if np.isnan(v) else float(v) for v in iu],
    }

"""The four FCN metrics (issue 10): a hand-computed example, per-image recomputation with
the FCN authors' numpy definitions, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcn_fast.train.metrics import ConfusionMatrix, scores


def test_hand_computed_example():
    # 3 classes; class 2 never appears in the ground truth but is predicted once.
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 255, 0]])
    prediction = torch.tensor([[0, 0, 1, 1], [1, 2, 0, 0]])
    hist = ConfusionMatrix(3)
    hist.update(prediction, target)
    # rows = truth, columns = prediction; the 255 pixel is not counted
    assert hist.hist.tolist() == [[3, 1, 0], [0, 2, 1], [0, 0, 0]]
    got = hist.scores()
    assert got["pixel_acc"] == pytest.approx(5 / 7)
    # class accuracies 3/4, 2/3; class 2 has no ground truth: NaN, left out of the mean
    assert got["mean_acc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # IU: class 0 3/(4+3-3)=3/4, class 1 2/(3+3-2)=1/2, class 2 0/(0+1-0)=0 (it counts)
    assert got["class_iu"] == pytest.approx([3 / 4, 1 / 2, 0.0])
    assert got["mean_iu"] == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    # frequency weighted: (4/7) * 3/4 + (3/7) * 1/2
    assert got["fw_iu"] == pytest.approx(4 / 7 * 3 / 4 + 3 / 7 * 1 / 2)


def test_class_absent_everywhere_is_left_out():
    got = scores(np.array([[2, 0, 1], [0, 0, 0], [1, 0, 0]]))
    # class 1: no truth, no prediction: NaN IU, excluded from the mean
    # class 0: 2 / (3 + 3 - 2); class 2: 0 / (1 + 1 - 0)
    assert got["class_iu"][1] is None
    assert got["mean_iu"] == pytest.approx((0.5 + 0.0) / 2)


def fcn_fast_hist(a, b, n):
    """fcn.berkeleyvision.org score.py fast_hist, as published (a: truth, b: prediction)."""
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def fcn_scores(hist):
    """score.py compute_hist's printouts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
        return acc, acc_cls, np.nanmean(iu), (freq[freq > 0] * iu[freq > 0]).sum()


def test_equals_per_image_recomputation():
    rng = np.random.default_rng(0)
    n = 6
    matrix = ConfusionMatrix(n)
    reference = np.zeros((n, n), np.int64)
    for _ in range(7):
        h, w = rng.integers(5, 30, 2)
        target = rng.integers(0, n - 1, (h, w))  # class n-1 never true
        target[rng.random((h, w)) < 0.1] = 255
        prediction = np.where(rng.random((h, w)) < 0.6, target % n, rng.integers(0, n, (h, w)))
        matrix.update(torch.from_numpy(prediction), torch.from_numpy(target))
        reference += fcn_fast_hist(target.ravel(), prediction.ravel(), n)
    assert matrix.hist.numpy().tolist() == reference.tolist()
    got = matrix.scores()
    expected = fcn_scores(reference)
    for key, value in zip(("pixel_acc", "mean_acc", "mean_iu", "fw_iu"), expected):
        assert math.isclose(got[key], value, rel_tol=1e-12), key


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="prediction shape"):
        ConfusionMatrix(3).update(torch.zeros(2, 3), torch.zeros(3, 2))

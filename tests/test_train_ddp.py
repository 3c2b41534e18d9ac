"""DistributedDataParallel through torchrun on CPU (gloo), issue 10: two processes with half
the batch each compute the first-iteration gradient and the metrics of one process with
the whole batch; only rank 0 writes the run directory.

The gradients are read from plain SGD steps (momentum 0, weight decay 0, fixed lr):
w1 = w0 - lr * g0 (2 lr for biases), and both runs start from the same w0 (the seed).
The score layers start at zero (as in the paper), so the first gradient reaches only
them; the second step's reaches every layer, so the runs are compared after two steps:
w0 - w2 = lr * (g0 + g1). Dropout is off: its masks are drawn per process and would
differ between the two runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from train_helpers import TINY_DATA, read_rows, tiny_train_args

import fcn_fast
from fcn_fast.train import checkpoint
from fcn_fast.train.synthetic import make_synthetic

pytest.importorskip("PIL", reason="Pillow reads and writes the dataset images")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)


def run(command, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # both runs: torchrun's default for its workers
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_gloo_processes_equal_one_with_the_same_global_batch(tmp_path):
    data = make_synthetic(tmp_path / "data", **TINY_DATA)
    sgd = ("--iters", "2", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0")
    sgd += ("--weight-decay", "0", "--schedule", "fixed", "--no-dropout", "--workers", "1")
    python = [sys.executable, "-m"]
    torchrun = [*python, "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    one, two = tmp_path / "one", tmp_path / "two"
    run([*python, "fcn_fast", "train", *tiny_train_args(data, one, *sgd)], tmp_path)
    run([*torchrun, "fcn_fast", "train", *tiny_train_args(data, two, *sgd)], tmp_path)

    a, b = checkpoint.load(one / "checkpoint.pt"), checkpoint.load(two / "checkpoint.pt")
    assert a["config"]["batch_size"] == b["config"]["batch_size"] == 4
    assert len(b["rng"]) == 2  # both processes' RNG states, gathered on rank 0
    torch.manual_seed(a["config"]["seed"])  # the initial weights of both runs
    initial = fcn_fast.FCN8s(TINY_DATA["classes"], width=1 / 16).state_dict()
    for name, w0 in initial.items():
        if "upscore" in name:
            assert torch.equal(a["model"][name], w0) and torch.equal(b["model"][name], w0)
            continue  # the fixed bilinear layers
        step_a, step_b = w0 - a["model"][name], w0 - b["model"][name]
        assert step_a.abs().max() > 0, name
        tol = 1e-5 * float(step_a.abs().max()) + 1e-7
        torch.testing.assert_close(step_b, step_a, rtol=1e-3, atol=tol, msg=name)

    loss_a, loss_b = read_rows(one, "train"), read_rows(two, "train")
    assert [r["iteration"] for r in loss_b] == [1, 2]  # rank 0 alone writes the log
    for row_a, row_b in zip(loss_a, loss_b):
        assert row_b["loss"] == pytest.approx(row_a["loss"], rel=1e-5)
    val_a, val_b = read_rows(one, "val")[-1], read_rows(two, "val")[-1]
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert val_b[key] == pytest.approx(val_a[key], abs=2e-3), key

"""Helpers of the fcn-fast train tests: tiny datasets on disk and tiny run options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fcn_fast.train.data import voc_palette

# A run small enough for a test: FCN-8s at 1/16 width on 32x32 images.
TINY_DATA = {"classes": 4, "train": 8, "val": 4, "size": 32, "seed": 0}


def tiny_train_args(data, out, *extra) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), "--width", "0.0625", "--batch-size", "4",
        "--workers", "0", "--log-every", "1", "--eval-every", "0", *extra,
    ]  # fmt: skip


def write_voc(root, samples: dict, split="train", label_mode="P") -> Path:
    """A VOC-layout dataset: samples maps id -> (image (H, W, 3) uint8, label (H, W))."""
    from PIL import Image

    root = Path(root)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, (image, label) in samples.items():
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        if label is None:
            continue
        if label_mode == "P":
            png = Image.fromarray(np.asarray(label, np.uint8))
            png.putpalette(voc_palette())
        else:
            png = Image.fromarray(np.asarray(label, np.uint8)).convert(label_mode)
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
        "".join(f"{name}\n" for name in samples)
    )
    return root


def random_sample(rng, h=24, w=20, n_class=3):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, n_class, (h, w)).astype(np.uint8)
    label[0] = 255
    return image, label


def read_rows(run_dir, kind):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["type"] == kind]


def one_thread():
    """Run a test's training steps on one intra-op thread. The tiny models' steps are
    many short parallel regions: on a shared 2-core machine two threads mostly wait for
    each other (measured 4x slower under load), and one is as fast when it is idle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

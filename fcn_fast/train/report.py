"""What a run shows and leaves behind: the progress bar, RUN_DIR/metrics.jsonl,
config.json, curves.png, validation overlays; class names and colour overlays."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fcn_fast.train.data import IGNORE, voc_palette

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def class_names(n_class: int, data=None) -> list[str]:
    meta = Path(data) / "synthetic.json" if data else None
    if meta is not None and meta.is_file():
        names = json.loads(meta.read_text()).get("class_names", [])
        if len(names) == n_class:
            return names
    if n_class == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class {i}" for i in range(n_class)]


def colorize(label) -> np.ndarray:
    """(H, W) class indices to (H, W, 3) uint8 VOC colours."""
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    return palette[np.asarray(label, np.int64).clip(0, 255)]


def overlay(image, label, alpha=0.5) -> np.ndarray:
    """Image (H, W, 3) or (3, H, W) uint8 blended with the label colours; background
    (0) and ignore (255) pixels keep the image."""
    image = np.asarray(image)
    if image.shape[0] == 3 and image.ndim == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    label = np.asarray(label)
    colours = colorize(label).astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = (label == 0) | (label == IGNORE)
    blend[keep] = image[keep]
    return blend.round().astype(np.uint8)


def git_commit():
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def versions() -> dict:
    import fcn_fast

    found = {"python": platform.python_version(), "fcn_fast": fcn_fast.__version__}
    found["torch"] = torch.__version__
    found["numpy"] = np.__version__
    for name, module in (("pillow", "PIL"), ("scipy", "scipy"), ("triton", "triton")):
        try:
            found[name] = __import__(module).__version__
        except ImportError:
            found[name] = None
    return found


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


class RunWriter:
    """Rank 0 writes RUN_DIR; every rank takes part in the reductions of the logging."""

    def __init__(self, config: dict, rank: int, resumed_at=None):
        self.config, self.rank = config, rank
        self.out = Path(config["out"])
        self.bar = None
        self.rows = []
        self.started = time.perf_counter()
        if rank != 0:
            return
        if resumed_at is None and (self.out / "checkpoint.pt").exists():
            raise FileExistsError(
                f"--out {self.out} already holds a run (checkpoint.pt): continue it with "
                "--resume, or choose another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = self.out / "metrics.jsonl"
        if resumed_at is not None and self.metrics.exists():
            # rows past the checkpoint belong to work that is about to be redone
            for line in self.metrics.read_text().splitlines():
                row = json.loads(line)
                if row["iteration"] <= resumed_at:
                    self.rows.append(row)
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        world = dist.get_world_size() if dist.is_initialized() else 1
        _write_json(
            self.out / "config.json",
            {
                "config": config,
                "command": sys.argv,
                "git_commit": git_commit(),
                "versions": versions(),
                "world_size": world,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "loadavg": list(os.getloadavg()),
            },
        )

    def start(self, iteration: int, total: int, batch_size: int):
        self.batch_size = batch_size
        self.loss_sum = self.count = None
        self.since, self.mark = 0, time.perf_counter()
        if self.rank != 0:
            return
        self._log = self.metrics.open("a")
        try:
            from tqdm import tqdm
        except ImportError:
            print("fcn-fast train: tqdm is not installed: progress is printed as lines")
            return
        self.bar = tqdm(
            total=total, initial=iteration, unit="it", dynamic_ncols=True, mininterval=1.0
        )

    def after_step(self, trainer, loss_sum, count):
        """Per iteration: cheap. Every log_every iterations: one reduction and a row."""
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        self.count = count if self.count is None else self.count + count
        self.since += 1
        if self.bar is not None:
            self.bar.update(1)
        iteration = trainer.iteration
        if iteration % self.config["log_every"] and iteration != self.config["iters"]:
            return
        totals = torch.stack([self.loss_sum.float(), self.count.float()])
        if trainer.world > 1:
            dist.all_reduce(totals)
        loss_sum, count = totals.tolist()
        now = time.perf_counter()
        row = {
            "type": "train",
            "iteration": iteration,
            "epoch": iteration * self.batch_size / len(trainer.train_set),
            "loss": loss_sum / max(count, 1),  # per valid pixel, whatever the recipe sums
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "images_per_s": self.since * self.batch_size / (now - self.mark),
            "elapsed_s": now - self.started,
        }
        self.loss_sum = self.count = None
        self.since, self.mark = 0, now
        if self.rank != 0:
            return
        self._append(row)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}")
        else:
            print(
                f"iter {iteration}/{self.config['iters']}  loss {row['loss']:.4f}  "
                f"{row['images_per_s']:.1f} img/s",
                flush=True,
            )

    def _append(self, row):
        self.rows.append(row)
        self._log.write(json.dumps(row) + "\n")
        self._log.flush()

    def validation(self, iteration: int, scores: dict, overlays, history: list):
        history.append({"iteration": iteration, **scores})
        if self.rank != 0:
            return
        elapsed = time.perf_counter() - self.started
        self._append({"type": "val", "iteration": iteration, **scores, "elapsed_s": elapsed})
        message = (
            f"iter {iteration}: mean IU {scores['mean_iu']:.4f}  pixel acc "
            f"{scores['pixel_acc']:.4f}  mean acc {scores['mean_acc']:.4f}  "
            f"fw IU {scores['fw_iu']:.4f}"
        )
        (self.bar.write if self.bar is not None else print)(message)
        self._overlays(overlays)
        self.plot()

    def _overlays(self, overlays):
        from PIL import Image

        folder = self.out / "overlays"
        folder.mkdir(exist_ok=True)
        for name, image, label, prediction in overlays:
            image = image.numpy().transpose(1, 2, 0)
            row = np.concatenate(
                [image, overlay(image, label.numpy()), overlay(image, prediction.numpy())], 1
            )
            Image.fromarray(row).save(folder / f"{name}.png")

    def plot(self):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if not getattr(self, "_said_no_matplotlib", False):
                print("fcn-fast train: matplotlib is not installed: curves.png is skipped")
                self._said_no_matplotlib = True
            return
        train = [r for r in self.rows if r["type"] == "train"]
        val = [r for r in self.rows if r["type"] == "val"]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot([r["iteration"] for r in train], [r["loss"] for r in train])
        left.set(xlabel="iteration", ylabel="training loss (per pixel)", yscale="log")
        right.plot([r["iteration"] for r in val], [r["mean_iu"] for r in val], marker="o")
        right.set(xlabel="iteration", ylabel=f"mean IU ({self.config['val_split']})", ylim=(0, 1))
        for axis in (left, right):
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(self.out / "curves.png", dpi=80)
        plt.close(figure)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.rank == 0 and hasattr(self, "_log"):
            self._log.close()

"""Training recipes as named presets, and the resolution of a run's configuration:
an option given on the command line wins over the recipe, which wins over the defaults.

All three recipes give biases 2x the learning rate and no weight decay
(fcn_param_groups), and never train the fixed bilinear upsampling layers (buffers).

    heavy   the released nets' and pytorch-fcn's recipe: batch 1, whole images, the loss
            summed over pixels (unnormalized), SGD momentum 0.99, fixed lr 1e-10 / 1e-12 /
            1e-14 for FCN-32s / 16s / 8s (1e-10 for 8s at-once), weight decay 5e-4.
    paper   the paper's fixed-lr recipe: batch 20 whole images (padded with ignore),
            mean loss, SGD momentum 0.9, lr 1e-3 / 1e-4 / 5e-5 for the AlexNet / VGG16 /
            GoogLeNet trunks, weight decay 5e-4.
    modern  mean loss, AdamW with a linear warm-up and a poly schedule, random scale /
            crop / flip: for training from scratch and short runs. The default; on a
            make-synthetic dataset its length is set for the 10-minute 2-core CPU target
            (SYNTHETIC_MODERN).
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS = {
    "fcn32s": "FCN32s",
    "fcn16s": "FCN16s",
    "fcn8s": "FCN8s",
    "fcn8s-atonce": "FCN8sAtOnce",
    "fcn-alexnet": "FCNAlexNet",
    "fcn-googlenet": "FCNGoogLeNet",
}

HEAVY_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}
PAPER_LR = {"fcn-alexnet": 1e-3, "fcn-googlenet": 5e-5}  # VGG16 nets: 1e-4

RECIPES = {
    "heavy": {
        "batch_size": 1,
        "crop_size": None,
        "scale_range": [1.0, 1.0],
        "flip": False,
        "loss": "sum",
        "optimizer": "sgd",
        "momentum": 0.99,
        "weight_decay": 5e-4,
        "schedule": "fixed",
        "iters": 100_000,
        "eval_every": 4000,
    },
    "paper": {
        "batch_size": 20,
        "crop_size": None,
        "scale_range": [1.0, 1.0],
        "flip": False,
        "loss": "mean",
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "fixed",
        "iters": 20_000,
        "eval_every": 1000,
    },
    "modern": {
        "batch_size": 8,
        "crop_size": 320,
        "scale_range": [0.5, 2.0],
        "flip": True,
        "loss": "mean",
        "optimizer": "adamw",
        "lr": 1e-3,
        "momentum": 0.9,  # AdamW's beta1
        "weight_decay": 1e-4,
        "schedule": "poly",
        "warmup": 200,
        "iters": 20_000,
        "eval_every": 1000,
    },
}

# modern on a make-synthetic dataset (its synthetic.json): crops of the image size, mild
# scale jitter (upscaling only: no compute spent on padding), no fc6/fc7 dropout (it
# slows a short from-scratch run), and a length meant to fit the 10-minute 2-core CPU
# target (FCN-8s width 0.25; its padding of 100 makes a 128^2 image cost a 326^2 one).
# Batch 4 rather than 8: from scratch, more updates beat larger batches for the same
# images (measured on the quiet 2-core machine, seed 0: batch 8 x 200 steps, 7.9 min, 0.70
# mean IU; batch 4 x 440 steps, 8.7 min, 0.89), at about 1.1 s a step.
SYNTHETIC_MODERN = {
    "batch_size": 4,
    "scale_range": [1.0, 1.25],
    "warmup": 20,
    "iters": 400,
    "eval_every": 200,
    "dropout": False,
}

DEFAULTS = {
    "model": "fcn8s",
    "width": 1.0,
    "n_class": None,  # synthetic.json's classes, else 21 (PASCAL VOC)
    "init": None,
    "input_norm": None,  # from --init's convention, else torchvision
    "train_split": "train",
    "val_split": "val",
    "epochs": None,
    "amp": "off",
    "channels_last": False,
    "compile": False,
    "workers": None,
    "log_every": 10,
    "seed": 0,
    "backend": "auto",
    "device": None,
    "poly_power": 0.9,
    "warmup": 0,
    "dropout": True,
    "overlays": 4,
}

# what a resumed run may change without breaking its continuation
RESUME_OVERRIDABLE = (
    "data", "iters", "epochs", "workers", "eval_every", "log_every", "out", "device"
)  # fmt: skip


def recipe_lr(recipe: str, model: str) -> float:
    if recipe == "heavy":
        if model not in HEAVY_LR:
            raise ValueError(
                f"--recipe heavy is the VGG16 FCNs' recipe (fcn32s, fcn16s, fcn8s, "
                f"fcn8s-atonce); for --model {model} give --lr or use --recipe paper/modern"
            )
        return HEAVY_LR[model]
    if recipe == "paper":
        return PAPER_LR.get(model, 1e-4)
    return RECIPES[recipe]["lr"]


def synthetic_meta(data) -> dict | None:
    path = Path(data) / "synthetic.json"
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_config(options: dict) -> dict:
    """The full configuration of a run from the options given (None = not given)."""
    given = {k: v for k, v in options.items() if v is not None}
    recipe = given.get("recipe", "modern")
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    model = given.get("model", DEFAULTS["model"])
    if model not in MODELS:
        raise ValueError(f"--model must be one of {list(MODELS)}, got {model!r}")
    config = {**DEFAULTS, **RECIPES[recipe], "recipe": recipe}
    meta = synthetic_meta(given["data"]) if "data" in given else None
    if meta is not None:
        config["n_class"] = meta["classes"]
        if recipe == "modern":
            config.update(SYNTHETIC_MODERN)
            config["crop_size"] = meta["size"]
    config.update(given)
    config["lr"] = given["lr"] if "lr" in given else recipe_lr(recipe, model)
    if config["n_class"] is None:
        config["n_class"] = 21
    if config["amp"] not in ("off", "bf16", "fp16"):
        raise ValueError(f"--amp must be bf16, fp16 or off, got {config['amp']!r}")
    if config["loss"] not in ("mean", "sum"):
        raise ValueError(f"loss must be 'mean' or 'sum', got {config['loss']!r}")
    for key in ("batch_size", "log_every"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer")
    if config["eval_every"] is not None and config["eval_every"] < 0:
        raise ValueError("--eval-every must be >= 0 (0: only at the end)")
    low, high = config["scale_range"]
    if not 0 < low <= high:
        raise ValueError(f"--scale-range must be 0 < MIN <= MAX, got {low} {high}")
    crop = config["crop_size"]
    if crop is not None:
        crop = [crop, crop] if isinstance(crop, int) else list(crop)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"--crop-size must be positive, got {config['crop_size']!r}")
        config["crop_size"] = crop
    if config["lr"] <= 0:
        raise ValueError(f"--lr must be positive, got {config['lr']}")
    return config

"""The training loop: model and optimizer set-up, the step on the model's fused loss,
evaluation, checkpoints, the run directory, and DistributedDataParallel under torchrun.

One process, or K under `torchrun --nproc_per_node=K -m fcn_fast train ...`: the global
batch (--batch-size) is split over the processes, every process sees the samples and
augmentations that one process with the whole batch would (data.TrainSampler), and the
loss is normalised by the valid pixels of the global batch, so K processes compute the
gradient of one. Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from fcn_fast.train import checkpoint as ckpt
from fcn_fast.train.data import (
    IGNORE,
    NORMALIZATIONS,
    SegmentationDataset,
    TrainSampler,
    TrainTransform,
    loader_workers,
    normalize,
    pad_collate,
    shard,
)
from fcn_fast.train.metrics import ConfusionMatrix
from fcn_fast.train.recipes import MODELS
from fcn_fast.train.report import RunWriter


def build_model(config: dict) -> nn.Module:
    import fcn_fast.models

    cls = getattr(fcn_fast.models, MODELS[config["model"]])
    model = cls(config["n_class"], backend=config["backend"], width=config["width"])
    if not config.get("dropout", True):
        for module in model.modules():
            if isinstance(module, nn.Dropout2d):
                module.p = 0.0
    return model


def apply_init(model: nn.Module, path) -> str:
    """Warm-start from --init; returns the input convention of those weights.

    A torchvision VGG16 state_dict goes on the trunk (torchvision RGB normalisation);
    an fcn-fast checkpoint gives every tensor whose name and shape match (and its own
    convention); any other state_dict is taken for a pytorch-fcn / converted Caffe FCN
    (Caffe BGR means) and gives its matching tensors.
    """
    from fcn_fast.models import load_vgg16_backbone, unwrap_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"--init {path}: holds a {type(state).__name__}, not a state_dict")
    if ckpt.is_checkpoint(state):
        source, convention = state["model"], state["config"]["input_norm"]
    elif "features.0.weight" in state:
        load_vgg16_backbone(model, path)
        return "torchvision"
    else:
        source, convention = unwrap_state_dict(state), "caffe"
    own = model.state_dict()
    matching = {
        k: v for k, v in source.items() if k in own and getattr(v, "shape", None) == own[k].shape
    }
    if not matching:
        raise ValueError(
            f"--init {path}: no tensor matches the model's names and shapes "
            f"(expected an fcn-fast checkpoint, a pytorch-fcn FCN or a torchvision VGG16)"
        )
    model.load_state_dict(matching, strict=False)
    return convention


class _Loss(nn.Module):
    """forward = the model's fused loss, so DistributedDataParallel and torch.compile
    wrap the training computation (DDP only syncs gradients of its own forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, target):
        return self.model.loss(x, target, ignore_index=IGNORE, reduction="sum")


class _Stop:
    """Ctrl-C / SIGTERM: finish the iteration, save a checkpoint, stop. A second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nfcn-fast train: stopping after this iteration and saving a checkpoint "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _distributed(config):
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.get("device"):
        device = torch.device(config["device"])
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _autocast(device, amp):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def _to_input(images, config, device):
    x = normalize(images.to(device, non_blocking=True), NORMALIZATIONS[config["input_norm"]])
    if config["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(model, dataset, config, device, n_overlays=0):
    """(confusion matrix summed over the processes, overlays of rank 0's first images).

    Whole images, one at a time, no augmentation: the preprocessing of `fcn-fast eval`.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    was_training = model.training
    model.eval()
    hist = ConfusionMatrix(config["n_class"], device)
    overlays = []
    for index in shard(len(dataset), rank, world):
        image, label = dataset[index]
        with _autocast(device, config["amp"]):
            prediction = model.predict(_to_input(image[None], config, device))[0]
        hist.update(prediction, label.to(device))
        if len(overlays) < n_overlays:
            overlays.append((dataset.ids[index], image, label, prediction.cpu()))
    hist.all_reduce()
    model.train(was_training)
    return hist, overlays


def make_optimizer(model, config):
    from fcn_fast.models import fcn_param_groups

    groups = fcn_param_groups(model, config["lr"], config["weight_decay"])
    for group in groups:
        group["initial_lr"] = group["lr"]
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(
            groups, lr=config["lr"], betas=(config["momentum"], 0.999), fused=True
        )
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"])
    raise ValueError(f"--optimizer must be adamw or sgd, got {config['optimizer']!r}")


def set_lr(optimizer, config, iteration):
    """Fixed, or poly: lr * (1 - iteration / iters) ** power; after a linear warm-up over
    the first `warmup` iterations (Adam's first steps are lr-sized whatever the gradient,
    and from scratch they blow up a net without normalisation layers)."""
    factor = 1.0
    if config["schedule"] == "poly":
        factor = (1 - iteration / config["iters"]) ** config["poly_power"]
    if iteration < config.get("warmup", 0):
        factor *= (iteration + 1) / config["warmup"]
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return config["lr"] * factor


class Trainer:
    """Everything a run holds; `train()` drives it."""

    def __init__(self, config: dict, resume=None):
        self.rank, self.world, self.device = _distributed(config)
        if resume is not None:
            state = ckpt.load(resume)
            changed = {k: v for k, v in config.items() if k in _overrides() and v is not None}
            config = {**state["config"], **changed}
            if "iters" in changed and "epochs" not in changed:
                config["epochs"] = None
            config["resume_from"] = str(resume)
        else:
            state = None
        self.config = config
        if config["batch_size"] % self.world:
            raise ValueError(
                f"--batch-size {config['batch_size']} (the global batch) must be divisible "
                f"by the number of processes ({self.world})"
            )
        self.batch = config["batch_size"] // self.world
        crop = config["crop_size"]
        transform = TrainTransform(
            crop, config["scale_range"], config["flip"], _pad_value(config.get("input_norm"))
        )
        self.train_set = SegmentationDataset(
            config["data"], config["train_split"], config["n_class"], transform
        )
        self.val_set = SegmentationDataset(config["data"], config["val_split"], config["n_class"])
        per_epoch = len(self.train_set) // config["batch_size"]
        if config.get("epochs"):
            config["iters"] = config["epochs"] * per_epoch
        if not isinstance(config["iters"], int) or config["iters"] < 1:
            raise ValueError(f"--iters must be a positive integer, got {config['iters']!r}")

        random.seed(config["seed"])
        np.random.seed(config["seed"])
        torch.manual_seed(config["seed"])  # the same initial weights on every process
        self.model = build_model(config)
        if state is None and config["init"]:
            convention = apply_init(self.model, config["init"])
            config["input_norm"] = config["input_norm"] or convention
        config["input_norm"] = config["input_norm"] or "torchvision"
        if config["input_norm"] not in NORMALIZATIONS:
            raise ValueError(
                f"--input-norm must be one of {list(NORMALIZATIONS)}, got {config['input_norm']!r}"
            )
        transform.pad_value = np.asarray(_pad_value(config["input_norm"]), np.uint8)
        self.model.to(self.device)
        if config["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config["amp"] == "fp16")
        self.iteration = 0
        self.history = []
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration = state["iteration"]
            ckpt.set_rng_state(state["rng"], self.rank, self.world, config["seed"], self.iteration)
        else:
            # the training stream (dropout) of each process; rank 0 continues the seed
            torch.manual_seed(config["seed"] + 1_000_003 * self.rank)
        loss = _Loss(self.model)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            loss = nn.parallel.DistributedDataParallel(
                loss, device_ids=ids, broadcast_buffers=False
            )
        self.loss = torch.compile(loss) if config["compile"] else loss
        self.workers = loader_workers(config["workers"])
        self.writer = RunWriter(config, self.rank, resumed_at=self.iteration if state else None)

    def batches(self):
        """Endless (images, labels) uint8 batches from self.iteration on."""
        sampler = TrainSampler(
            len(self.train_set),
            self.batch,
            self.config["seed"],
            self.rank,
            self.world,
            self.iteration,
        )
        loader = DataLoader(
            self.train_set,
            batch_size=self.batch,
            sampler=sampler,
            num_workers=self.workers,
            collate_fn=pad_collate,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating the iterator must not draw from the global RNG
            generator=torch.Generator(),
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
        )
        return iter(loader)

    def step(self, images, labels):
        """One optimizer step; returns (summed loss, valid pixels) of this process's batch."""
        set_lr(self.optimizer, self.config, self.iteration)
        x = _to_input(images, self.config, self.device)
        # uint8 from disk to the loss kernels, which read it as it is (1 byte a pixel; int64
        # would move 8 to the device and through the loss).
        target = labels.to(self.device, non_blocking=True)
        with _autocast(self.device, self.config["amp"]):
            loss_sum = self.loss(x, target)
        count = (target != IGNORE).sum()
        scale = float(self.world)  # DDP averages gradients: undo it, to get the global sum
        if self.config["loss"] == "mean":
            total = count.clone()
            if self.world > 1:
                dist.all_reduce(total)
            loss = loss_sum * scale / total.clamp(min=1)
        else:
            loss = loss_sum * scale
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return loss_sum.detach(), count

    def validate(self):
        hist, overlays = evaluate(
            self.model, self.val_set, self.config, self.device, self.config["overlays"]
        )
        result = hist.scores()
        self.writer.validation(self.iteration, result, overlays, self.history)
        return result

    def save(self):
        rng = ckpt.rng_state()
        if self.world > 1:
            states = [None] * self.world
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.rank == 0:
            ckpt.save(
                self.writer.out / "checkpoint.pt",
                {
                    "format": ckpt.FORMAT,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "iteration": self.iteration,
                    "rng": states,
                    "config": self.config,
                    "metrics": self.history[-1] if self.history else None,
                },
            )

    def stop_requested(self, stop):
        """Whether any process was asked to stop. Under DDP the processes agree on it at
        the logging iterations only: a per-iteration reduction would sync every step."""
        if self.world == 1:
            return stop.requested
        if self.iteration % self.config["log_every"]:
            return False
        flag = torch.tensor([int(stop.requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _overrides():
    from fcn_fast.train.recipes import RESUME_OVERRIDABLE

    return RESUME_OVERRIDABLE


def _pad_value(convention):
    """Padding colour of crops: the mean colour, which normalises to zero."""
    norm = NORMALIZATIONS.get(convention or "torchvision")
    mean = norm["mean"][::-1] if norm["bgr"] else norm["mean"]
    return [round(v) for v in mean]


def train(config: dict, *, resume=None, on_step=None) -> dict:
    """Run (or resume) training. on_step(trainer, loss_sum, count) is called after
    each iteration. Returns {"status": "done" | "interrupted", "iteration", "metrics"}."""
    trainer = Trainer(config, resume)
    config, writer = trainer.config, trainer.writer
    result = {"status": "done", "metrics": trainer.history[-1] if trainer.history else None}
    with _Stop() as stop:
        batches = trainer.batches()
        writer.start(trainer.iteration, config["iters"], config["batch_size"])
        try:
            while trainer.iteration < config["iters"]:
                images, labels = next(batches)
                loss_sum, count = trainer.step(images, labels)
                writer.after_step(trainer, loss_sum, count)
                if on_step is not None:
                    on_step(trainer, loss_sum, count)
                every = config["eval_every"]
                last = trainer.iteration == config["iters"]
                if last or (every and trainer.iteration % every == 0):
                    result["metrics"] = trainer.validate()
                    trainer.save()
                if not last and trainer.stop_requested(stop):
                    trainer.save()
                    result["status"] = "interrupted"
                    break
        finally:
            del batches  # ends the loader's workers
            writer.close()
    result["iteration"] = trainer.iteration
    if trainer.rank == 0 and result["metrics"] is not None:
        print(
            f"fcn-fast train: iteration {trainer.iteration}, {config['val_split']} mean IU "
            f"{result['metrics']['mean_iu']:.4f}; checkpoint {writer.out / 'checkpoint.pt'}"
        )
    if trainer.world > 1:
        dist.barrier()
    return result


def profile_overhead(config: dict, steps: int = 20, rounds: int = 2) -> dict:
    """The training loop's own cost (data pipeline + logging) as a share of the step time.

    Times `steps` iterations of the real loop (loader, step, progress and metrics.jsonl
    logging) and the same number of steps over batches loaded into memory beforehand,
    alternately `rounds` times after 3 warm-up steps; nothing is written to config's
    run directory (the log goes to a temporary one). Also reports the time the real loop
    waited for data and spent logging, and the CPU time one batch costs the pipeline
    (decode + augmentation + collation, in this process): what it would add per step
    without workers, an upper bound that does not depend on the machine's load.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = {**config, "out": tmp, "eval_every": 0}
        trainer = Trainer(config)
        batches = trainer.batches()
        trainer.writer.start(0, steps * rounds, config["batch_size"])  # timed real steps
        for _ in range(3):
            trainer.step(*next(batches))
        real, preloaded, waiting, logging = [], [], 0.0, 0.0
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(steps):
                mark = time.perf_counter()
                images, labels = next(batches)
                waited = time.perf_counter()
                loss_sum, count = trainer.step(images, labels)
                stepped = time.perf_counter()
                trainer.writer.after_step(trainer, loss_sum, count)
                waiting += waited - mark
                logging += time.perf_counter() - stepped
            _sync(trainer.device)
            real.append(time.perf_counter() - start)
            held = [next(batches) for _ in range(steps)]
            if trainer.device.type == "cuda":
                held = [(a.pin_memory(), b.pin_memory()) for a, b in held]
            start = time.perf_counter()
            for images, labels in held:
                trainer.step(images, labels)
            _sync(trainer.device)
            preloaded.append(time.perf_counter() - start)
        trainer.writer.close()
        del batches
        # the CPU time the pipeline costs per batch, however many workers hide it
        cpu = time.process_time()
        for index in range(steps):
            pad_collate([trainer.train_set[(index, [0, 0, index])] for _ in range(trainer.batch)])
        pipeline_cpu = (time.process_time() - cpu) / steps
    real_s, pre_s, n = sum(real), sum(preloaded), steps * rounds
    return {
        "steps": n,
        "real_loop_s_per_step": real_s / n,
        "preloaded_s_per_step": pre_s / n,
        "overhead_percent": 100 * (real_s - pre_s) / pre_s,
        "waiting_for_data_s_per_step": waiting / n,
        "logging_s_per_step": logging / n,
        "pipeline_cpu_s_per_batch": pipeline_cpu,
        "rounds_real_s": real,
        "rounds_preloaded_s": preloaded,
        "images_per_s": config["batch_size"] * steps * rounds / real_s,
        "loadavg": list(os.getloadavg()),
        "workers": trainer.workers,
    }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["Trainer", "build_model", "evaluate", "profile_overhead", "train"]

"""fcn-fast train / eval / predict end to end on tiny synthetic data (issue 10): the three
README commands, the run directory, exact resume after Ctrl-C, atomic checkpoints,
eval reproducing the run's final mean IU, predict's outputs, the recipes."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from train_helpers import TINY_DATA, one_thread, read_rows, tiny_train_args

from fcn_fast.__main__ import main as fcn_fast_main
from fcn_fast.train import checkpoint
from fcn_fast.train.cli import train_main
from fcn_fast.train.recipes import RECIPES, resolve_config
from fcn_fast.train.synthetic import make_synthetic

pytest.importorskip("PIL", reason="Pillow reads and writes the dataset images")


_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", **TINY_DATA)


def test_the_three_commands_end_to_end(data, tmp_path, capsys):
    """The README's make-synthetic / train / eval, tiny, through the `fcn-fast` entry point."""
    fresh = tmp_path / "fresh"
    assert fcn_fast_main(["make-synthetic", str(fresh), "--train", "8", "--val", "2"]) == 0
    assert (fresh / "ImageSets/Segmentation/val.txt").read_text().split() == [
        "val_00000",
        "val_00001",
    ]
    run = tmp_path / "run"
    args = tiny_train_args(data, run, "--iters", "4", "--eval-every", "2", "--workers", "1")
    assert fcn_fast_main(["train", *args]) == 0
    for name in ("metrics.jsonl", "config.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    overlays = sorted((run / "overlays").glob("*.png"))
    assert 1 <= len(overlays) <= 4
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["iters"] == 4 and config["config"]["model"] == "fcn8s"
    assert {"torch", "python", "fcn_fast", "numpy"} <= set(config["versions"])
    assert "git_commit" in config and len(config["loadavg"]) == 3
    train_rows, val_rows = read_rows(run, "train"), read_rows(run, "val")
    assert [r["iteration"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in train_rows)
    assert [r["iteration"] for r in val_rows] == [2, 4]
    try:
        import matplotlib  # noqa: F401

        assert (run / "curves.png").stat().st_size > 0
    except ImportError:
        pass

    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    eval_args = ["--data", str(data), "--checkpoint", str(run / "checkpoint.pt")]
    assert fcn_fast_main(["eval", *eval_args, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "mean IU" in printed and "frequency-weighted IU" in printed
    assert "background" in printed  # the per-class table names the classes
    result = json.loads(out_json.read_text())
    # eval reproduces the run's final validation exactly: same weights, same preprocessing
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "class_iu"):
        assert result[key] == val_rows[-1][key], key
    assert result["images"] == TINY_DATA["val"]
    assert np.asarray(result["confusion_matrix"]).sum() > 0


def test_predict_writes_palette_labels_and_overlays(data, tmp_path, monkeypatch):
    from PIL import Image

    from fcn_fast.train.data import voc_palette

    monkeypatch.chdir(tmp_path)  # without --out, the run goes to runs/<model>-<time>
    args = tiny_train_args(data, "unused", "--iters", "1")
    assert train_main(args[:2] + args[4:]) == 0
    (run,) = (tmp_path / "runs").glob("fcn8s-*")
    images = [data / "JPEGImages" / "val_00000.jpg", data / "JPEGImages" / "val_00001.jpg"]
    out = tmp_path / "pred"
    args = [*map(str, images), "--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]
    assert fcn_fast_main(["predict", *args]) == 0
    for image in images:
        with Image.open(out / f"{image.stem}.png") as png:
            assert png.mode == "P" and png.getpalette()[:768] == voc_palette()
            assert png.size == (TINY_DATA["size"], TINY_DATA["size"])
            assert np.asarray(png).max() < TINY_DATA["classes"]
        with Image.open(out / f"{image.stem}_overlay.png") as over:
            assert over.mode == "RGB" and over.size == png.size
    missing = tmp_path / "nope.jpg"
    code = fcn_fast_main(["predict", str(missing), *args[2:]])
    assert code == 1


def losses(run):
    return [row["loss"] for row in read_rows(run, "train")]


def test_ctrl_c_saves_and_resume_continues_exactly(data, tmp_path):
    """The loss sequence after an interrupt + --resume equals the uninterrupted run's
    (data order, augmentation, dropout and optimizer state all restored)."""
    common = ("--iters", "6", "--workers", "1", "--scale-range", "0.7", "1.3")
    whole = tmp_path / "whole"
    assert train_main(tiny_train_args(data, whole, *common)) == 0
    expected = losses(whole)
    assert len(expected) == 6 and len(set(expected)) == 6

    def interrupt(trainer, loss_sum, count):
        if trainer.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    split = tmp_path / "split"
    assert train_main(tiny_train_args(data, split, *common), on_step=interrupt) == 130
    saved = checkpoint.load(split / "checkpoint.pt")
    assert saved["iteration"] == 3
    assert {"model", "optimizer", "scaler", "rng", "config"} <= set(saved)
    assert {"python", "numpy", "torch"} <= set(saved["rng"][0])
    assert losses(split) == expected[:3]
    assert train_main(["--out", str(split), "--resume", "--data", str(data)]) == 0
    assert losses(split) == expected  # bit-exact continuation
    final = checkpoint.load(split / "checkpoint.pt")
    reference = checkpoint.load(whole / "checkpoint.pt")
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_out_dir_holding_a_run_is_not_overwritten(data, tmp_path):
    run = tmp_path / "run"
    assert train_main(tiny_train_args(data, run, "--iters", "1")) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert fcn_fast_main(["train", *tiny_train_args(data, run, "--iters", "1")]) == 1
    assert (run / "checkpoint.pt").read_bytes() == before


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"format": checkpoint.FORMAT, "iteration": 1})

    def torn_save(state, f):
        f.write(b"half a checkpoint")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="no space"):
        checkpoint.save(path, {"format": checkpoint.FORMAT, "iteration": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_load_rejects_a_plain_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an fcn-fast training checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")


def test_bad_dataset_fails_before_anything_is_written(tmp_path):
    (tmp_path / "data/JPEGImages").mkdir(parents=True)
    (tmp_path / "data/SegmentationClass").mkdir()
    run = tmp_path / "run"
    assert fcn_fast_main(["train", *tiny_train_args(tmp_path / "data", run)]) == 1
    assert not run.exists()


# --- recipes


@pytest.mark.parametrize(
    ("model", "lr"),
    [("fcn32s", 1e-10), ("fcn16s", 1e-12), ("fcn8s", 1e-14), ("fcn8s-atonce", 1e-10)],
)
def test_heavy_recipe(model, lr):
    config = resolve_config({"data": "/nonexistent", "recipe": "heavy", "model": model})
    assert config["lr"] == lr
    assert (config["batch_size"], config["loss"], config["momentum"]) == (1, "sum", 0.99)
    assert (config["optimizer"], config["weight_decay"], config["schedule"]) == (
        "sgd",
        5e-4,
        "fixed",
    )


@pytest.mark.parametrize(
    ("model", "lr"),
    [("fcn-alexnet", 1e-3), ("fcn8s", 1e-4), ("fcn32s", 1e-4), ("fcn-googlenet", 5e-5)],
)
def test_paper_recipe(model, lr):
    config = resolve_config({"data": "/nonexistent", "recipe": "paper", "model": model})
    assert config["lr"] == lr
    assert (config["batch_size"], config["loss"], config["momentum"]) == (20, "mean", 0.9)


def test_modern_is_the_default_and_options_win(data):
    config = resolve_config({"data": str(data)})
    assert config["recipe"] == "modern" and config["optimizer"] == "adamw"
    assert config["n_class"] == TINY_DATA["classes"]  # from synthetic.json
    assert config["crop_size"] == [TINY_DATA["size"]] * 2
    config = resolve_config({"data": str(data), "lr": 0.5, "batch_size": 3, "recipe": "paper"})
    assert (config["lr"], config["batch_size"]) == (0.5, 3)
    with pytest.raises(ValueError, match="--recipe heavy is the VGG16"):
        resolve_config({"data": "/x", "recipe": "heavy", "model": "fcn-alexnet"})


def test_every_recipe_doubles_bias_lr_and_freezes_bilinear_layers():
    from fcn_fast.train.loop import build_model, make_optimizer

    for recipe in RECIPES:
        config = resolve_config(
            {"data": "/x", "recipe": recipe, "model": "fcn8s", "width": 1 / 16, "n_class": 3}
        )
        model = build_model(config)
        optimizer = make_optimizer(model, config)
        weights, biases = optimizer.param_groups
        assert biases["lr"] == 2 * weights["lr"] and biases["weight_decay"] == 0
        assert weights["weight_decay"] == config["weight_decay"]
        optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert optimized == {id(p) for p in model.parameters()}
        # the fixed upsampling filters are buffers: never handed to the optimizer
        assert "upscore8.weight" in dict(model.named_buffers())


def test_profile_overhead_reports_both_loops(data, capsys):
    args = tiny_train_args(data, "/nonexistent-run-dir", "--profile-overhead", "2")
    assert train_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 4 and report["preloaded_s_per_step"] > 0
    assert report["real_loop_s_per_step"] > 0 and "overhead_percent" in report
    assert not os.path.exists("/nonexistent-run-dir")  # profiling writes no run


def test_usage_lists_the_commands(capsys):
    assert fcn_fast_main(["--help"]) == 0
    usage = capsys.readouterr().out
    for command in ("train", "eval", "predict", "make-synthetic"):
        assert f"  {command} " in usage


# --- warm starts and the input convention they bring


def torchvision_vgg16_state(model):
    """The torchvision VGG16 state_dict that load_vgg16_backbone maps onto `model`."""
    from fcn_fast.models.vgg import _torchvision_keys

    state = {}
    for key, layer, attr in _torchvision_keys():
        tensor = getattr(getattr(model, layer), attr).detach().clone()
        state[key] = (
            tensor.flatten(1) if key.startswith("classifier") and attr == "weight" else tensor
        )
    return state


@pytest.mark.parametrize("source", ["torchvision-vgg16", "pytorch-fcn", "fcn-fast"])
def test_init_loads_weights_and_their_input_convention(data, tmp_path, source):
    from fcn_fast.train.loop import Trainer

    torch.manual_seed(123)  # weights unlike the run's seed-0 initialisation
    donor = fcn_fast_model()
    for module in donor.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight)
    path = tmp_path / "init.pt"
    if source == "torchvision-vgg16":
        torch.save(torchvision_vgg16_state(donor), path)
        expected = "torchvision"
    elif source == "pytorch-fcn":
        torch.save({"model_state_dict": donor.state_dict(), "epoch": 3}, path)
        expected = "caffe"  # converted Caffe weights: BGR, Caffe means
    else:
        config = {"config": {"input_norm": "caffe"}, "model": donor.state_dict()}
        torch.save({"format": checkpoint.FORMAT, **config}, path)
        expected = "caffe"  # whatever the checkpoint's run used
    options = {"data": str(data), "width": 1 / 16, "init": str(path), "out": str(tmp_path / "r")}
    trainer = Trainer(resolve_config(options))
    assert trainer.config["input_norm"] == expected
    assert torch.equal(trainer.model.conv3_2.weight, donor.conv3_2.weight)
    assert torch.equal(trainer.model.fc6.weight, donor.fc6.weight)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["input_norm"] == expected


def fcn_fast_model():
    from fcn_fast.models import FCN8s

    return FCN8s(TINY_DATA["classes"], width=1 / 16)


def test_init_that_matches_nothing_is_an_error(data, tmp_path):
    from fcn_fast.train.loop import Trainer

    torch.save({"something.else": torch.zeros(2)}, tmp_path / "other.pt")
    options = {"data": str(data), "width": 1 / 16, "init": str(tmp_path / "other.pt")}
    with pytest.raises(ValueError, match="no tensor matches"):
        Trainer(resolve_config({**options, "out": str(tmp_path / "r")}))


def test_bf16_channels_last_run_and_eval_use_the_same_settings(data, tmp_path):
    run = tmp_path / "run"
    extra = ("--iters", "1", "--amp", "bf16", "--channels-last")
    assert train_main(tiny_train_args(data, run, *extra)) == 0
    config = checkpoint.load(run / "checkpoint.pt")["config"]
    assert config["amp"] == "bf16" and config["channels_last"] is True
    out = tmp_path / "eval.json"
    eval_args = ["--data", str(data), "--checkpoint", str(run / "checkpoint.pt")]
    assert fcn_fast_main(["eval", *eval_args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mean_iu"] == read_rows(run, "val")[-1]["mean_iu"]
    assert all(np.isfinite(row["loss"]) for row in read_rows(run, "train"))


def test_learning_rate_schedule():
    from fcn_fast.train.loop import set_lr

    class Groups:
        param_groups = [{"initial_lr": 1e-3}, {"initial_lr": 2e-3}]

    config = {"lr": 1e-3, "schedule": "poly", "iters": 100, "poly_power": 0.9, "warmup": 10}
    assert set_lr(Groups, config, 0) == pytest.approx(1e-3 * 0.1)  # warm-up: 1/10
    assert set_lr(Groups, config, 50) == pytest.approx(1e-3 * 0.5**0.9)
    assert Groups.param_groups[1]["lr"] == pytest.approx(2e-3 * 0.5**0.9)  # biases: 2x
    fixed = {**config, "schedule": "fixed", "warmup": 0}
    assert set_lr(Groups, fixed, 99) == 1e-3


def test_epochs_become_iterations(data, tmp_path):
    from fcn_fast.train.loop import Trainer

    options = {"data": str(data), "width": 1 / 16, "epochs": 3, "batch_size": 4}
    trainer = Trainer(resolve_config({**options, "out": str(tmp_path / "r")}))
    # 8 training images, global batch 4: 2 iterations an epoch
    assert trainer.config["iters"] == 3 * TINY_DATA["train"] // 4


def test_labels_stay_uint8_from_the_dataset_to_the_loss(data, tmp_path, monkeypatch):
    """The training step hands the loss the loader's uint8 labels, not an int64 copy."""
    from fcn_fast.train.loop import Trainer

    options = {"data": str(data), "width": 1 / 16, "iters": 1, "batch_size": 4}
    trainer = Trainer(resolve_config({**options, "out": str(tmp_path / "r")}))
    seen = []
    loss = trainer.model.loss

    def recording_loss(x, target, **kwargs):
        seen.append(target.dtype)
        return loss(x, target, **kwargs)

    monkeypatch.setattr(trainer.model, "loss", recording_loss)
    images, labels = next(trainer.batches())
    assert labels.dtype == torch.uint8
    loss_sum, count = trainer.step(images, labels)
    assert seen == [torch.uint8] and torch.isfinite(loss_sum) and count > 0

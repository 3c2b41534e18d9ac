"""Command lines of `fcn-fast train`, `eval`, `predict`, `export` and `make-synthetic`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from fcn_fast.train.recipes import MODELS, RECIPES, RESUME_OVERRIDABLE


def _parser_train(prog):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train an FCN. Options left out come from --recipe (default modern; on "
        "a make-synthetic dataset tuned to reach 0.80 mean IU in 10 CPU minutes). "
        "Under torchrun every process runs this; --batch-size is the global batch.",
    )
    a = p.add_argument
    a("--data", required=True, help="dataset directory: PASCAL VOC 2012 or SBD layout")
    a("--model", choices=list(MODELS), help="network (default fcn8s)")
    a("--width", type=float, help="trunk channel multiplier (default 1.0 = the published net)")
    a("--classes", type=int, dest="n_class", help="classes (default: the dataset's, else 21)")
    a("--init", help="warm start: torchvision VGG16 state_dict, pytorch-fcn or fcn-fast checkpoint")
    a("--input-norm", choices=["torchvision", "caffe"], help="override --init's input convention")
    a("--recipe", choices=list(RECIPES), help="heavy | paper | modern (default modern)")
    a("--iters", type=int, help="training iterations")
    a("--epochs", type=int, help="training epochs (instead of --iters)")
    a("--batch-size", type=int, help="global batch size, split over the processes")
    a("--crop-size", type=int, help="square random crop (padded with ignore); whole images if 0")
    a("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="random scale range")
    a("--no-flip", dest="flip", action="store_const", const=False, help="no random mirroring")
    a("--optimizer", choices=["adamw", "sgd"])
    a("--lr", type=float, help="learning rate of the weights (biases get 2x)")
    a("--momentum", type=float, help="SGD momentum, or AdamW's beta1")
    a("--weight-decay", type=float, help="weight decay of the weights (biases: none)")
    a("--schedule", choices=["poly", "fixed"], help="learning-rate schedule")
    a("--warmup", type=int, help="iterations of linear learning-rate warm-up")
    a("--no-dropout", dest="dropout", action="store_const", const=False, help="fc6/fc7 dropout off")
    a("--amp", choices=["bf16", "fp16", "off"], help="autocast dtype (default off)")
    a("--channels-last", action="store_const", const=True, help="channels_last model and input")
    a("--compile", action="store_const", const=True, help="torch.compile the training step")
    a("--workers", type=int, help="DataLoader worker processes per training process")
    a("--eval-every", type=int, help="validate and checkpoint every N iterations (0: at the end)")
    a("--log-every", type=int, help="log the loss every N iterations (default 10)")
    a("--train-split", help="training split list name or file (default train)")
    a("--val-split", help="validation split list name or file (default val)")
    a("--out", help="run directory (default runs/<model>-<date>-<time>)")
    a(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from a checkpoint (default: RUN_DIR/checkpoint.pt of --out)",
    )
    a("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    a("--backend", help="fcn_fast kernels: auto, reference, cpu, cuda, triton (default auto)")
    a("--device", help="torch device (default: cuda if available, else cpu)")
    a(
        "--profile-overhead",
        type=int,
        metavar="STEPS",
        help="instead of training, measure the loop's overhead (data + logging) over STEPS steps",
    )
    return p


def train_main(argv, prog="fcn-fast train", on_step=None) -> int:
    from fcn_fast.train.loop import profile_overhead, train
    from fcn_fast.train.recipes import resolve_config

    args = _parser_train(prog).parse_args(argv)
    options = vars(args)
    profile, resume = options.pop("profile_overhead"), options.pop("resume")
    if options["crop_size"] == 0:
        options["crop_size"] = None  # whole images; None means "not given" below
        whole = True
    else:
        whole = False
    if resume is not None:
        if resume == "auto":
            if options["out"] is None:
                raise SystemExit(f"{prog}: --resume without a path needs --out RUN_DIR")
            resume = str(Path(options["out"]) / "checkpoint.pt")
        ignored = [k for k, v in options.items() if v is not None and k not in RESUME_OVERRIDABLE]
        if ignored:
            print(f"{prog}: resuming: the checkpoint's settings are kept; ignored: {ignored}")
        result = train(options, resume=resume, on_step=on_step)
    else:
        config = resolve_config(options)
        if whole:
            config["crop_size"] = None
        if config.get("out") is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            config["out"] = str(Path("runs") / f"{config['model']}-{stamp}")
        if profile:
            print(json.dumps(profile_overhead(config, profile), indent=1))
            return 0
        result = train(config, on_step=on_step)
    if result["status"] == "interrupted":
        print(f"{prog}: interrupted at iteration {result['iteration']}; checkpoint saved")
        return 130
    return 0


def _checkpoint_model(path, backend, device):
    import torch

    from fcn_fast.train import checkpoint
    from fcn_fast.train.loop import build_model

    state = checkpoint.load(path)
    config = dict(state["config"])
    if backend:
        config["backend"] = backend
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.to(device)
    if config["channels_last"]:
        model.to(memory_format=torch.channels_last)
    return model.eval(), config, device, state


def eval_main(argv, prog="fcn-fast eval") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a checkpoint: pixel accuracy, mean accuracy, mean IU, "
        "frequency-weighted IU and the per-class IU, on whole images with the training "
        "run's preprocessing.",
    )
    p.add_argument("--data", help="dataset directory (default: the training run's)")
    p.add_argument("--split", default="val", help="split list name or file (default val)")
    p.add_argument("--checkpoint", required=True, help="fcn-fast training checkpoint")
    p.add_argument("--json", help="write the metrics here (default CHECKPOINT_DIR/eval-SPLIT.json)")
    p.add_argument("--backend", help="override the run's kernel backend")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    args = p.parse_args(argv)

    from fcn_fast.train.data import SegmentationDataset
    from fcn_fast.train.loop import evaluate
    from fcn_fast.train.report import class_names

    model, config, device, _ = _checkpoint_model(args.checkpoint, args.backend, args.device)
    data = args.data or config["data"]
    dataset = SegmentationDataset(data, args.split, config["n_class"])
    hist, _ = evaluate(model, dataset, config, device)
    scores = hist.scores()
    names = class_names(config["n_class"], data)
    print(f"{args.checkpoint} on {data} {args.split} ({len(dataset)} images)")
    for key, title in (
        ("pixel_acc", "pixel accuracy"),
        ("mean_acc", "mean accuracy"),
        ("mean_iu", "mean IU"),
        ("fw_iu", "frequency-weighted IU"),
    ):
        print(f"  {title:22} {scores[key]:.4f}")
    print("\n  class                  IU")
    for name, iu in zip(names, scores["class_iu"]):
        print(f"  {name:20} {'   n/a' if iu is None else f'{iu:6.4f}'}")
    out = Path(args.json) if args.json else Path(args.checkpoint).parent / f"eval-{args.split}.json"
    result = {
        "checkpoint": str(args.checkpoint),
        "data": str(data),
        "split": args.split,
        "images": len(dataset),
        **scores,
        "class_names": names,
        "confusion_matrix": hist.hist.cpu().tolist(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {out}")
    return 0


def predict_main(argv, prog="fcn-fast predict") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Segment images: OUT/<name>.png (class indices, VOC palette) and "
        "OUT/<name>_overlay.png (the colours over the image), with a checkpoint in PyTorch "
        "or with an exported ONNX graph (fcn-fast export) in onnxruntime.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="fcn-fast training checkpoint")
    source.add_argument("--onnx", help="ONNX graph written by fcn-fast export (onnxruntime, CPU)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--backend", help="override the run's kernel backend (--checkpoint)")
    p.add_argument("--device", help="torch device (--checkpoint; default cuda if available)")
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    from fcn_fast.train.data import read_image, voc_palette
    from fcn_fast.train.loop import _autocast, _to_input
    from fcn_fast.train.report import overlay

    paths = [Path(i) for i in args.images]
    for path in [*paths, *([Path(args.onnx)] if args.onnx else [])]:
        if not path.is_file():
            raise FileNotFoundError(f"{prog}: {path}: no such file")
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"{prog}: two images share a name, their outputs would collide")
    if args.onnx:
        from fcn_fast.deploy import OnnxSegmenter

        segmenter = OnnxSegmenter(args.onnx)

        def predict(image):  # the graph holds the input normalisation (fcn-fast export)
            return segmenter(image.transpose(2, 0, 1)[None].copy())[0]

    else:
        model, config, device, _ = _checkpoint_model(args.checkpoint, args.backend, args.device)

        def predict(image):
            x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
            with torch.no_grad(), _autocast(device, config["amp"]):
                labels = model.predict(_to_input(x, config, device), out_dtype=torch.uint8)
            return labels[0].cpu().numpy()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for path in paths:
        image = read_image(path)
        labels = predict(image)
        png = Image.fromarray(labels)
        png.putpalette(palette)
        png.save(out / f"{path.stem}.png")
        Image.fromarray(overlay(image, labels)).save(out / f"{path.stem}_overlay.png")
        print(f"{path} -> {out / path.stem}.png, {path.stem}_overlay.png")
    return 0


def export_main(argv, prog="fcn-fast export") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Export a checkpoint to ONNX (standard ops, opset 18 by default): uint8 "
        "RGB images (N, 3, H, W) in, with the run's input normalisation inside the graph; "
        "float32 logits (N, C, H, W) out, or uint8 labels (N, H, W) with --labels. "
        "fcn-fast predict --onnx runs it in onnxruntime.",
    )
    p.add_argument("--checkpoint", required=True, help="fcn-fast training checkpoint")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--labels", action="store_true", help="output the argmax labels (uint8)")
    p.add_argument(
        "--dynamic", action="store_true", help="dynamic batch, height and width (else --size)"
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(500, 500),
        metavar=("H", "W"),
        help="the input size a static graph takes, and the traced example's (default 500 500)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or 18; default 18)")
    args = p.parse_args(argv)

    import torch

    from fcn_fast.deploy import ImageSegmenter, export_onnx
    from fcn_fast.train.data import NORMALIZATIONS

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{prog}: {args.checkpoint}: no such file")
    # Exported in fp32 on the CPU: the ONNX graph holds standard ops, whatever kernel ran.
    model, config, _, _ = _checkpoint_model(args.checkpoint, "auto", "cpu")
    model = model.to(memory_format=torch.contiguous_format)
    segmenter = ImageSegmenter(model, NORMALIZATIONS[config["input_norm"]], labels=args.labels)
    example = torch.randint(0, 256, (1, 3, *args.size), dtype=torch.uint8)
    export_onnx(segmenter, args.out, example, dynamic=args.dynamic, opset=args.opset)
    kind = "labels (N, H, W) uint8" if args.labels else f"logits (N, {config['n_class']}, H, W)"
    shape = "N, 3, H, W" if args.dynamic else f"N = 1, 3, {args.size[0]}, {args.size[1]}"
    print(f"{args.out}: uint8 RGB images ({shape}) -> {kind}, opset {args.opset}")
    return 0


def make_synthetic_main(argv, prog="fcn-fast make-synthetic") -> int:
    from fcn_fast.train.synthetic import MAX_CLASSES, make_synthetic

    p = argparse.ArgumentParser(
        prog=prog,
        description="Write a procedurally drawn segmentation dataset (shapes and textures, "
        "255-ignore borders) in the PASCAL VOC layout.",
    )
    p.add_argument("dir", help="output directory (must not exist, or be empty)")
    p.add_argument("--classes", type=int, default=21, help=f"2..{MAX_CLASSES} (default 21)")
    p.add_argument("--train", type=int, default=400, help="training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = make_synthetic(args.dir, args.classes, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} train + {args.val} val images ({args.classes} classes) to {out}")
    return 0


COMMANDS = {
    "train": train_main,
    "eval": eval_main,
    "predict": predict_main,
    "export": export_main,
    "make-synthetic": make_synthetic_main,
}


def main(command: str, argv) -> int:
    try:
        return COMMANDS[command](argv, prog=f"fcn-fast {command}")
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"fcn-fast {command}: error: {error}", file=sys.stderr)
        return 1

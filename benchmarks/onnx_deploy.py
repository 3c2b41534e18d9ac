"""ONNX deployment figures (issue 26): for each model, the ONNX ops of its exported graph and
the largest difference from PyTorch in onnxruntime; then FCN-8s (full width) at 500x500,
onnxruntime against PyTorch CPU inference time.

    python benchmarks/onnx_deploy.py [--threads 2] [--rounds 10] [--json out.json]

Weights are random (no download); times are medians of `--rounds` runs after 2 warm-ups,
batch 1, fp32, both runtimes limited to `--threads` intra-op threads.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

import fcn_fast
from fcn_fast.deploy import Predict

MODELS = ("FCN32s", "FCN16s", "FCN8s", "FCN8sAtOnce", "FCNAlexNet", "FCNGoogLeNet")


def random_model(name, width):
    model = getattr(fcn_fast, name)(21, width=width)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, math.sqrt(2 / module.weight[0].numel()))
                module.bias.normal_(0, 0.1)
    return model.eval()


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(fn, rounds):
    fn(), fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--width", type=float, default=1 / 16, help="width of the per-model checks")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = torch.export.Dim.DYNAMIC
    result = {"torch": torch.__version__, "onnxruntime": ort.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = random_model(name, args.width)
            x, other = torch.randn(2, 3, 97, 131), torch.randn(1, 3, 61, 83)
            row = {}
            for kind, module in (("logits", model), ("labels", Predict(model))):
                path = Path(tmp) / f"{name}-{kind}.onnx"
                program = torch.onnx.export(
                    module, (x,), dynamo=True, dynamic_shapes=({0: dims, 2: dims, 3: dims},)
                )
                program.save(str(path))
                ops = collections.Counter(n.op_type for n in program.model_proto.graph.node)
                sess = session(path, args.threads)
                errors = []
                for inp in (x, other):
                    (got,) = sess.run(None, {sess.get_inputs()[0].name: inp.numpy()})
                    with torch.no_grad():
                        want = module(inp).numpy()
                    if kind == "logits":
                        errors.append(float(np.abs(got - want).max() / np.abs(want).max()))
                    else:
                        errors.append(float((got != want).mean()))
                row[kind] = {"ops": dict(sorted(ops.items())), "error": max(errors)}
            result["models"][name] = row
            print(
                f"{name}: logits ops {row['logits']['ops']}\n"
                f"  max |onnx - torch| / max |torch| = {row['logits']['error']:.2e}; "
                f"labels ops add {sorted(set(row['labels']['ops']) - set(row['logits']['ops']))}, "
                f"differing labels {row['labels']['error']:.2e}",
                flush=True,
            )

        # FCN-8s, full width, 500x500, batch 1: inference time.
        model = random_model("FCN8s", 1.0)
        x = torch.randn(1, 3, 500, 500)
        timing = {}
        for kind, module in (("logits", model), ("labels", Predict(model))):
            path = Path(tmp) / f"fcn8s-500-{kind}.onnx"
            torch.onnx.export(module, (x,), dynamo=True).save(str(path))
            sess = session(path, args.threads)
            feed = {sess.get_inputs()[0].name: x.numpy()}
            with torch.no_grad():
                want = module(x).numpy()
                torch_ms = median_ms(lambda m=module: m(x), args.rounds)
            (got,) = sess.run(None, feed)
            error = (
                float(np.abs(got - want).max() / np.abs(want).max())
                if kind == "logits"
                else float((got != want).mean())
            )
            onnx_ms = median_ms(lambda s=sess, f=feed: s.run(None, f), args.rounds)
            timing[kind] = {"torch_ms": torch_ms, "onnxruntime_ms": onnx_ms, "error": error}
            print(
                f"FCN-8s 1x3x500x500 {kind}: PyTorch (fcn_fast cpu kernels) {torch_ms:.0f} ms, "
                f"onnxruntime {onnx_ms:.0f} ms (median of {args.rounds}, {args.threads} threads);"
                f" error {error:.2e}",
                flush=True,
            )
        result["fcn8s_500"] = timing
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

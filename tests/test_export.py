"""Deployment (issue 26): every model and op through torch.onnx.export (dynamo) to standard ONNX
ops, run in onnxruntime against PyTorch; torch.export save / load round trips; torch.compile
with dynamic shapes; `fcn-fast export` and `fcn-fast predict --onnx`.

Inputs are random and odd-sized (2x3x97x131, then 1x3x61x83 through the same dynamic
graph). fp32 logits must agree within 1e-4 of their largest magnitude; labels must be equal
except where the two best classes tie to rounding.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import fcn_fast
from fcn_fast import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, FCNAlexNet, FCNGoogLeNet

pytest.importorskip("onnx", reason="the onnx test extra: pip install -e '.[test]'")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
ort = pytest.importorskip("onnxruntime", reason="the onnx test extra: pip install -e '.[test]'")

ALL_MODELS = (FCN32s, FCN16s, FCN8s, FCN8sAtOnce, FCNAlexNet, FCNGoogLeNet)
DYN = torch.export.Dim.DYNAMIC
NHW = {0: DYN, 2: DYN, 3: DYN}


def tiny(cls, n_class=5):
    """A 1/16-width model with random weights everywhere (score layers start at zero)."""
    model = cls(n_class, width=1 / 16)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, math.sqrt(2 / module.weight[0].numel()))
                module.bias.normal_(0, 0.1)
    return model.eval()


def onnx_export(module, args=(), dynamic_shapes=None, opset=18):
    program = torch.onnx.export(
        module, args, dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=opset
    )
    proto = program.model_proto
    # Standard ONNX only: no fcn_fast (or any custom) domain, no leftover local functions.
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert not proto.functions
    return program


def op_types(program) -> set[str]:
    return {node.op_type for node in program.model_proto.graph.node}


def run_onnx(program, *inputs) -> list[np.ndarray]:
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def assert_close_relative(got, want, rel=1e-4):
    """|got - want| <= rel * max |want| everywhere (fp32 logits through different op orders)."""
    want = want.detach().double().numpy()
    scale = max(float(np.abs(want).max()), 1e-30)
    error = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert got.shape == want.shape and error <= rel * scale, (error, scale)
    return error / scale


def assert_labels_equal_except_ties(got, want, logits, rel=1e-5):
    """Labels equal, except at pixels whose chosen classes' logits tie to rounding."""
    got = torch.from_numpy(np.asarray(got)).long()
    want = want.long()
    assert got.shape == want.shape
    differ = got != want
    if differ.any():
        picked = logits.gather(1, got[:, None]) - logits.gather(1, want[:, None])
        scale = logits.abs().amax()
        assert (picked[:, 0][differ].abs() <= rel * scale).all(), "labels differ beyond a tie"
        assert differ.float().mean() < 1e-3


# --- Every model: torch.export (kept ops, save / load), then ONNX from that program.


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_model_exports_round_trips_and_runs_in_onnxruntime(cls):
    model = tiny(cls)
    # torch.export specialises a dynamic axis traced at size 1 (its 0/1 rule): batch 2 first.
    x = torch.randn(2, 3, 97, 131)
    other = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        want, want_other = model(x), model(other)

    ep = torch.export.export(model, (x,), dynamic_shapes=(NHW,))
    targets = {node.target for node in ep.graph.nodes}
    assert torch.ops.fcn_fast.resample_skip.default in targets  # the fused op is kept
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
        torch.testing.assert_close(loaded(other), want_other, rtol=0, atol=0)

    program = onnx_export(ep)  # the ExportedProgram, fcn_fast ops and all
    assert {"ConvTranspose", "Slice"} <= op_types(program)
    (got,) = run_onnx(program, x)
    assert_close_relative(got, want)
    (got,) = run_onnx(program, other)  # dynamic batch, height and width
    assert_close_relative(got, want_other)


class Predict(nn.Module):
    def __init__(self, model, **kwargs):
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def forward(self, x):
        return self.model.predict(x, **self.kwargs)


@pytest.mark.parametrize(
    "cls, out_dtype, confidence",
    [(FCN8s, torch.uint8, True), (FCNAlexNet, torch.int64, False)],
    ids=["FCN8s-uint8-confidence", "FCNAlexNet-int64"],
)
def test_predict_exports_labels(cls, out_dtype, confidence):
    """model.predict straight to torch.onnx.export: labels (and confidence) out."""
    model = tiny(cls)
    module = Predict(model, out_dtype=out_dtype, return_confidence=confidence)
    program = onnx_export(module, (torch.randn(1, 3, 97, 131),), dynamic_shapes=(NHW,))
    assert "ArgMax" in op_types(program)
    if confidence:
        assert {"Softmax", "ReduceMax"} <= op_types(program)
    for x in (torch.randn(1, 3, 97, 131), torch.randn(2, 3, 61, 83)):
        outputs = run_onnx(program, x)
        with torch.no_grad():
            want = module(x)
            logits = model(x)
        want = want if confidence else (want,)
        assert outputs[0].dtype == {torch.uint8: np.uint8, torch.int64: np.int64}[out_dtype]
        assert_labels_equal_except_ties(outputs[0], want[0], logits)
        if confidence:
            assert_close_relative(outputs[1], want[1], rel=1e-5)


def test_opset_17_and_18():
    model = tiny(FCN16s)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        want = model(x)
    for opset in (17, 18):
        program = onnx_export(model, (x,), opset=opset)
        versions = {o.domain: o.version for o in program.model_proto.opset_import}
        assert versions[""] == opset
        assert_close_relative(run_onnx(program, x)[0], want)


# --- Every op, as a module around the public function.


class Op(nn.Module):
    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x, other=None):  # explicit arguments: dynamic_shapes follow them
        return self.fn(x, **self.kwargs) if other is None else self.fn(x, other, **self.kwargs)


def _target(n, h, w, classes=5):
    t = torch.randint(0, classes, (n, h, w))
    t[:, :3] = 255
    return t


def _op_cases():
    """(id, module, inputs, dynamic_shapes, inputs at another size or None)."""
    f = fcn_fast
    weight = torch.rand(5) + 0.5
    nhw, n = NHW, {0: DYN}
    thw = {0: DYN, 1: DYN, 2: DYN}
    return [
        # FCN-8s's pool4 step: x2, skip window at 5 (zero-boundary deconvolution, Slice, Add).
        ("upsample_skip-skip", Op(f.upsample_skip, factor=2, skip_crop=5),
         (torch.randn(2, 5, 13, 17), torch.randn(2, 5, 40, 44)), (n, n),
         (torch.randn(1, 5, 13, 17), torch.randn(1, 5, 40, 44))),
        ("upsample_skip-x8-crop31", Op(f.upsample_skip, factor=8, crop=31),
         (torch.randn(2, 5, 11, 15),), (nhw,), (torch.randn(1, 5, 7, 6),)),
        # FCN-AlexNet / FCN-GoogLeNet's odd kernel 63 at stride 32.
        ("upsample_skip-k63", Op(f.upsample_skip, factor=32, kernel_size=63, crop=16),
         (torch.randn(2, 3, 4, 5),), (nhw,), (torch.randn(1, 3, 3, 2),)),
        ("interpolate_add-x2", Op(f.interpolate_add, scale_factor=2),
         (torch.randn(2, 5, 13, 17), torch.randn(2, 5, 26, 34)), (n, n),
         (torch.randn(1, 5, 13, 17), torch.randn(1, 5, 26, 34))),
        ("interpolate_add-size-align", Op(f.interpolate_add, size=(61, 83), align_corners=True),
         (torch.randn(2, 5, 13, 17),), (n,), (torch.randn(1, 5, 13, 17),)),
        # A factor that is not the size ratio: PyTorch maps indices by 1/1.5, not 13/19.
        ("interpolate_add-x1.5", Op(f.interpolate_add, scale_factor=1.5),
         (torch.randn(2, 5, 13, 17),), (n,), (torch.randn(1, 5, 13, 17),)),
        ("upsample_argmax-uint8-confidence",
         Op(f.upsample_argmax, factor=8, crop=31, out_dtype=torch.uint8, return_confidence=True),
         (torch.randn(2, 5, 11, 15),), (nhw,), (torch.randn(1, 5, 7, 6),)),
        ("interpolate_argmax-int64", Op(f.interpolate_argmax, size=(61, 83)),
         (torch.randn(2, 5, 13, 17),), (n,), (torch.randn(1, 5, 13, 17),)),
        ("pixel_cross_entropy-mean",
         Op(f.pixel_cross_entropy, weight=weight, ignore_index=255, label_smoothing=0.1),
         (torch.randn(2, 5, 97, 131), _target(2, 97, 131)), (nhw, thw),
         (torch.randn(1, 5, 61, 83), _target(1, 61, 83))),
        ("pixel_cross_entropy-none", Op(f.pixel_cross_entropy, reduction="none", ignore_index=255),
         (torch.randn(2, 5, 97, 131), _target(2, 97, 131)), (nhw, thw),
         (torch.randn(1, 5, 61, 83), _target(1, 61, 83))),
        ("upsample_cross_entropy-sum",
         Op(f.upsample_cross_entropy, factor=8, crop=31, reduction="sum", ignore_index=255),
         (torch.randn(2, 5, 16, 20), _target(2, 97, 131)), (n, {0: DYN}),
         (torch.randn(1, 5, 16, 20), _target(1, 97, 131))),
        ("interpolate_cross_entropy-mean",
         Op(f.interpolate_cross_entropy, weight=weight, ignore_index=255, label_smoothing=0.05),
         (torch.randn(2, 5, 13, 17), _target(2, 97, 131)), (n, {0: DYN}),
         (torch.randn(1, 5, 13, 17), _target(1, 97, 131))),
        ("interpolate_cross_entropy-align",
         Op(f.interpolate_cross_entropy, align_corners=True, ignore_index=255),
         (torch.randn(2, 5, 13, 17), _target(2, 97, 131)), (n, {0: DYN}),
         (torch.randn(1, 5, 13, 17), _target(1, 97, 131))),
    ]  # fmt: skip


OP_CASES = _op_cases()


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_op_exports_round_trips_and_runs_in_onnxruntime(case):
    name, module, args, dynamic_shapes, other = case
    ep = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    program = onnx_export(module, args, dynamic_shapes=dynamic_shapes)  # the op as it is
    for inputs in (args, other):
        with torch.no_grad():
            want = module(*inputs)
            for got, expected in zip(_tuple(loaded(*inputs)), _tuple(want), strict=True):
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
        got = run_onnx(program, *inputs)
        want = _tuple(want)
        assert len(got) == len(want)
        if "argmax" in name:
            x = inputs[0]
            logits = _argmax_logits(module, x)
            assert_labels_equal_except_ties(got[0], want[0], logits)
            assert got[0].dtype == want[0].numpy().dtype
            if len(want) == 2:
                assert_close_relative(got[1], want[1], rel=1e-5)
        else:
            assert_close_relative(got[0], want[0])


class InterpolateToSkip(nn.Module):
    """An FPN step whose output size is the skip's: the scale is a function of two dynamic
    sizes (torch.export would bake the traced value into the op's float arguments)."""

    def forward(self, x, skip):
        return fcn_fast.interpolate_add(x, skip, size=skip.shape[-2:])


def test_interpolate_with_sizes_of_dynamic_inputs_stays_exact_at_every_size():
    module = InterpolateToSkip()
    args = (torch.randn(2, 3, 5, 6), torch.randn(2, 3, 11, 13))
    program = onnx_export(module, args, dynamic_shapes=(NHW, NHW))
    assert "Resize" in op_types(program)
    for inputs in (args, (torch.randn(1, 3, 7, 4), torch.randn(1, 3, 19, 9))):
        assert_close_relative(run_onnx(program, *inputs)[0], module(*inputs), rel=1e-6)


def _tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _argmax_logits(module, x):
    """The logits the argmax op reads: its own upsampling, unfused."""
    kwargs = {k: v for k, v in module.kwargs.items() if k not in ("out_dtype", "return_confidence")}
    if module.fn is fcn_fast.upsample_argmax:
        return fcn_fast.upsample_skip(x, **kwargs)
    return fcn_fast.interpolate_add(x, **kwargs)


def test_zero_boundary_is_exact_at_every_border():
    """The ConvTranspose form keeps the deconvolution's zero boundary (not Resize's clamp): a
    constant input gives the darkened border band in onnxruntime too."""
    module = Op(fcn_fast.upsample_skip, factor=4)
    x = torch.ones(1, 2, 5, 7)
    (got,) = run_onnx(onnx_export(module, (x,)), x)
    want = module(x)
    assert_close_relative(got, want, rel=1e-6)
    assert want[0, 0, 0, 0] < 0.2 and want[0, 0, 10, 12] == 1  # border band vs interior


# --- torch.compile with dynamic shapes: the SymInt sizes, and the fake kernels' strides.


def test_torch_compile_dynamic_fullgraph():
    model = tiny(FCN8s)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for shape in ((1, 3, 45, 37), (2, 3, 61, 83)):
        x = torch.randn(shape, requires_grad=True)
        out = compiled(x)
        want = model(x)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        (want_grad,) = torch.autograd.grad(want.square().sum(), x)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5)
    labels = torch.compile(lambda x: model.predict(x), fullgraph=True, dynamic=True)
    x = torch.randn(2, 3, 61, 83)
    torch.testing.assert_close(labels(x), model.predict(x), rtol=0, atol=0)


def test_compiled_outputs_keep_the_kernels_strides_with_dynamic_shapes():
    """With symbolic sizes FakeTensorMode reads the decomposition table before the op's fake
    kernel; the decompositions then return the fake kernel's result (channels_last here)."""
    module = Op(fcn_fast.upsample_skip, factor=2, skip_crop=1)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=True)
    for h, w in ((7, 9), (10, 5)):
        x = torch.randn(2, 3, h, w).to(memory_format=torch.channels_last)
        skip = torch.randn(2, 3, 2 * h + 4, 2 * w + 4).to(memory_format=torch.channels_last)
        got, want = compiled(x, skip), module(x, skip)
        assert got.stride() == want.stride()
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_replays_the_forward_and_predict(backend):
    """Inference under a captured CUDA graph (static shapes, as a server replays it): the
    replay on new inputs equals eager; predict's labels too. (A loss is not captured: its
    out-of-range check reads a device flag on the host.)"""
    if backend not in fcn_fast.available_backends():
        pytest.skip(f"backend {backend!r} unavailable here")
    model = tiny(FCN8s).cuda().set_backend(backend)
    static_x = torch.randn(2, 3, 97, 131, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):  # warm-up: Triton compiles, the tap tables are allocated
            model(static_x), model.predict(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_logits = model(static_x)
        static_labels = model.predict(static_x)
    for _ in range(2):
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        with torch.no_grad():
            torch.testing.assert_close(static_logits, model(static_x), rtol=0, atol=0)
            assert torch.equal(static_labels, model.predict(static_x))


# --- fcn-fast export / fcn-fast predict --onnx, from a training checkpoint.


def test_cli_export_and_predict_onnx_write_the_pytorch_pngs(tmp_path):
    pytest.importorskip("PIL", reason="Pillow reads and writes the images")
    from PIL import Image
    from train_helpers import TINY_DATA, tiny_train_args

    from fcn_fast.__main__ import main as fcn_fast_main
    from fcn_fast.train import checkpoint as train_checkpoint
    from fcn_fast.train.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "data", **{**TINY_DATA, "size": 37})
    run = tmp_path / "run"
    assert fcn_fast_main(["train", *tiny_train_args(data, run, "--iters", "2")]) == 0
    checkpoint = str(run / "checkpoint.pt")
    # Random score layers (two steps leave them near their zero start): many classes to label.
    state = train_checkpoint.load(checkpoint)
    for key, value in state["model"].items():
        if key.startswith("score"):
            value.normal_(0, 0.5)
    train_checkpoint.save(checkpoint, state)
    images = [str(data / "JPEGImages" / f"val_0000{i}.jpg") for i in range(2)]
    assert (
        fcn_fast_main(
            ["predict", *images, "--checkpoint", checkpoint, "--out", str(tmp_path / "pt")]
        )
        == 0
    )

    def pngs(folder):
        return [
            np.asarray(Image.open(tmp_path / folder / f"val_0000{i}{suffix}.png"))
            for i in range(2)
            for suffix in ("", "_overlay")
        ]

    want = pngs("pt")
    assert len(np.unique(want[0])) > 1  # a trained net: more than one class in the picture
    for name, flags in (("labels", ["--labels", "--dynamic"]), ("logits", ["--size", "37", "37"])):
        onnx_path = tmp_path / f"{name}.onnx"
        assert (
            fcn_fast_main(["export", "--checkpoint", checkpoint, "--out", str(onnx_path), *flags])
            == 0
        )
        out = tmp_path / name
        assert fcn_fast_main(["predict", *images, "--onnx", str(onnx_path), "--out", str(out)]) == 0
        for got, expected in zip(pngs(name), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    # A static graph refuses another size with a message that says how to export one that takes it.
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((40, 37, 3), np.uint8)).save(other)
    code = fcn_fast_main(
        [
            "predict",
            str(other),
            "--onnx",
            str(tmp_path / "logits.onnx"),
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 1


def test_deploy_api_exports_predict_labels_for_onnxruntime(tmp_path):
    """README Deploy's Python lines: export_onnx(labels=True), then OnnxSegmenter."""
    from fcn_fast.deploy import OnnxSegmenter, export_onnx

    model = tiny(FCN8s)
    export_onnx(model, tmp_path / "fcn8s.onnx", torch.randn(2, 3, 64, 64), labels=True)
    images = torch.randn(1, 3, 61, 83)
    labels = OnnxSegmenter(tmp_path / "fcn8s.onnx")(images.numpy())
    assert labels.dtype == np.uint8
    with torch.no_grad():
        assert_labels_equal_except_ties(labels, model.predict(images), model(images))

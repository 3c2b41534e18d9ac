"""`fcn-fast table1`: exact receptive fields (checked against gradient support), the counts
against the paper's Table 1, the CLI's outputs and errors, and the README section."""

import copy
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fcn_fast
from fcn_fast import table1
from fcn_fast.__main__ import main as fcn_fast_main
from fcn_fast.receptive_field import analyze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIVE_NETS = (
    fcn_fast.FCNAlexNet,
    fcn_fast.FCN32s,
    fcn_fast.FCNGoogLeNet,
    fcn_fast.FCN16s,
    fcn_fast.FCN8s,
)
# The paper's Table 1 (Long, Shelhamer, Darrell 2015): conv layers, parameters (M), rf, stride.
PAPER = {
    fcn_fast.FCNAlexNet: (8, 57, 355, 32),
    fcn_fast.FCN32s: (16, 134, 404, 32),
    fcn_fast.FCNGoogLeNet: (22, 6, 907, 32),
}
PROBE_ROWS = 1024  # tall enough that no probed receptive field reaches the image border


def gradient_probe(model: nn.Module) -> nn.Module:
    """A copy whose input gradients are non-zero exactly where paths reach.

    Max pools become average pools (a max passes gradient to one input only); every
    convolution gets constant positive weights 1 / fan_in and zero bias, so with a
    positive image every activation is positive (no ReLU dead zone) and bounded. The
    smallest gradient at a receptive field's edge is about 1e-11 (an image row's sum),
    far above float32's underflow, so float32 suffices (float64 convolutions are 3x slower).
    """
    probe = copy.deepcopy(model).eval()
    for module in list(probe.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                assert child.dilation == 1
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(module, name, pool)
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()
    return probe


def gradient_support(probe, rows: int, cols: int, positions) -> list[tuple[int, int]]:
    """(first, last) image row with a non-zero gradient of coarse score (row o, centre column)."""
    image = torch.ones(1, 3, rows, cols, requires_grad=True)
    scores = probe.final_head(image)[0]
    centre = scores.shape[3] // 2
    found = []
    for o in positions:
        (grad,) = torch.autograd.grad(scores[0, 0, o, centre], image, retain_graph=True)
        nonzero = (grad.abs().sum((0, 1, 3)) > 0).nonzero().flatten().tolist()
        found.append((nonzero[0], nonzero[-1]))
    return found


@pytest.mark.parametrize("model_class", FIVE_NETS, ids=lambda c: c.__name__)
def test_receptive_field_equals_gradient_support(model_class):
    model = model_class(width=1 / 16)
    geometry = analyze(model).geometry
    probe = gradient_probe(model)
    with torch.no_grad():
        coarse_rows = probe.final_head(torch.ones(1, 3, PROBE_ROWS, 8))[0]
    # One period of output rows around the centre: FCN-16s / FCN-8s rows differ by parity.
    first = coarse_rows.shape[2] // 2 // geometry.period * geometry.period
    positions = range(first, first + geometry.period)
    expected = [geometry.support(o) for o in positions]
    assert all(lo > 0 and hi < PROBE_ROWS - 1 for lo, hi in expected), "probe image too small"
    found = gradient_support(probe, PROBE_ROWS, 16, positions)
    assert found == expected
    assert max(hi - lo + 1 for lo, hi in found) == analyze(model).receptive_field


def test_receptive_fields_of_the_paper():
    def rf(model_class):
        with torch.device("meta"):
            return analyze(model_class()).receptive_field

    assert rf(fcn_fast.FCN32s) == PAPER[fcn_fast.FCN32s][2]
    assert rf(fcn_fast.FCNAlexNet) == PAPER[fcn_fast.FCNAlexNet][2]
    # The paper's GoogLeNet figure includes the final 7x7 average pool our trunk discards:
    # adding it back (stride 32) gives the paper's number, and ours is 6 strides less.
    googlenet = table1.architecture(fcn_fast.FCNGoogLeNet)
    assert googlenet["receptive_field_with_final_pool"] == PAPER[fcn_fast.FCNGoogLeNet][2]
    assert googlenet["receptive_field"] == googlenet["receptive_field_with_final_pool"] - 6 * 32


@pytest.mark.parametrize("model_class", list(PAPER), ids=lambda c: c.__name__)
def test_counts_match_the_paper(model_class):
    facts = table1.architecture(model_class)  # width 1 on the meta device
    conv_layers, parameters_m, _, max_stride = PAPER[model_class]
    assert facts["conv_layers"] == conv_layers
    assert round(facts["parameters"] / 1e6) == parameters_m
    assert facts["max_stride"] == max_stride
    assert facts["output_stride"] == 32


@pytest.mark.parametrize(
    ("model_class", "output_stride"), [(fcn_fast.FCN16s, 16), (fcn_fast.FCN8s, 8)]
)
def test_skip_nets_keep_the_vgg16_trunk(model_class, output_stride):
    facts = table1.architecture(model_class)
    vgg16 = table1.architecture(fcn_fast.FCN32s)
    assert facts["conv_layers"] == vgg16["conv_layers"]  # score_pool layers sit beside
    assert facts["max_stride"] == 32
    assert facts["output_stride"] == output_stride
    # The x2 upsampling layers add one coarser stride to what the fused scores read.
    assert facts["receptive_field"] > vgg16["receptive_field"]


def test_unknown_layer_is_named():
    class Resized(fcn_fast.FCN32s):
        def final_head(self, x):
            scores, upscore, crop = super().final_head(x)
            return F.interpolate(scores, scale_factor=2), upscore, crop

    with torch.device("meta"), pytest.raises(ValueError, match="no geometry rule.*interpolate"):
        analyze(Resized())
    with pytest.raises(TypeError, match="final_head"):
        analyze(nn.Conv2d(3, 3, 3))


def test_cli_writes_every_row(tmp_path, capsys):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    argv = ["table1", "--size", "32", "--trials", "1", "--width", "0.0625"]
    assert fcn_fast_main([*argv, "--json", str(out_json), "--markdown", str(out_md)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    names = [name for name, _, _ in table1.NETS]
    assert [row["net"] for row in doc["rows"]] == names
    for row in doc["rows"]:
        for variant in ("fused", "reference"):
            timing = row["forward"][variant]
            assert len(timing["samples_ms"]) == 1 and timing["mean_ms"] > 0
    meta = doc["meta"]
    for key in ("device_name", "torch", "date", "git_commit", "loadavg", "command"):
        assert meta[key], key
    assert meta["command"].startswith("fcn-fast table1 --size 32")
    markdown = out_md.read_text()
    googlenet = next(r for r in doc["rows"] if r["model"] == "FCNGoogLeNet")
    for text in (printed, markdown):
        assert all(name in text for name in names)
        assert "paper, not measured here" in text
        assert f"{googlenet['receptive_field']}¹ (paper 907)" in text
        assert "Timed at width 0.0625" in text
    assert table1.markdown_report(table1.load(str(out_json))) == markdown


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--dtype", "fp8"], "invalid choice: 'fp8'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--size", "0"], "--size: must be positive"),
        (["--trials", "-3"], "--trials: must be positive"),
        (["--trials", "two"], "expected a positive int"),
        (["--width", "0"], "--width: must be positive"),
    ],
)
def test_cli_bad_options(option, message, capsys):
    with pytest.raises(SystemExit) as exit:
        table1.main(option)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_without_gpu(capsys):
    with pytest.raises(SystemExit):
        table1.main(["--device", "cuda"])
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_readme_section_is_generated_from_committed_results():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    start = readme.index(table1.README_BEGIN)
    end = readme.index(table1.README_END) + len(table1.README_END)
    results = os.path.join(ROOT, "benchmarks", "results")
    assert table1.newest_results(results), "no committed table1 results"
    assert readme[start:end] == table1.readme_section(results, ROOT), (
        "README's Table 1 section is stale: run `fcn-fast table1 readme --update README.md`"
    )


def test_readme_without_results(tmp_path, capsys):
    assert table1.main(["readme", "--results", str(tmp_path)]) == 0
    assert "No table1 results have been committed yet" in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit):
        table1.main(["readme", "--results", str(tmp_path), "--update", str(readme)])

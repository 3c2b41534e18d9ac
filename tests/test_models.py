"""The FCN model family (issue 4): shapes, alignment, fused vs reference heads, drop-in
compatibility with pytorch-fcn checkpoints, warm starts, training, autocast, compile.

Most tests use reduced-width models (width=1/16: same layers, crops and output sizes,
~1/256 of the parameters) so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from backends import backend_device

import fcn_fast
from fcn_fast.models import (
    FCN8s,
    FCN8sAtOnce,
    FCN16s,
    FCN32s,
    FCNAlexNet,
    FCNGoogLeNet,
    NonBilinearUpscoreWarning,
    fcn_param_groups,
    load_checkpoint,
    load_vgg16_backbone,
)
from fcn_fast.models import googlenet as googlenet_module

TINY = 1 / 16
ALL_MODELS = (FCN32s, FCN16s, FCN8s, FCN8sAtOnce, FCNAlexNet, FCNGoogLeNet)
VGG_MODELS = (FCN32s, FCN16s, FCN8s, FCN8sAtOnce)


def randomize(model: nn.Module) -> nn.Module:
    """Random weights everywhere, score layers included (they start at zero)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, math.sqrt(2 / fan_in))
                module.bias.normal_(0, 0.1)
    return model


def tiny(cls, n_class=5, **kwargs):
    return randomize(cls(n_class, width=TINY, **kwargs))


# --- An independent plain-PyTorch FCN, written from the paper / pytorch-fcn description:
# nn.ConvTranspose2d with the bilinear filler, then slicing. Module names are those of
# torchfcn.models, so its state_dict is what a pytorch-fcn checkpoint holds.


def caffe_bilinear(channels, kernel_size):
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = [1 - abs(i - center) / factor for i in range(kernel_size)]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for c in range(channels):
        for i in range(kernel_size):
            for j in range(kernel_size):
                weight[c, c, i, j] = taps[i] * taps[j]
    return weight


class PlainFCN(nn.Module):
    """variant: "32s", "16s", "8s" or "8s-atonce"."""

    def __init__(self, variant, n_class=21, width=1.0):
        super().__init__()
        self.variant = variant
        ch = [max(1, round(c * width)) for c in (64, 128, 256, 512, 512)]
        fc = max(1, round(4096 * width))
        self.conv1_1 = nn.Conv2d(3, ch[0], 3, padding=100)
        self.conv1_2 = nn.Conv2d(ch[0], ch[0], 3, padding=1)
        self.conv2_1 = nn.Conv2d(ch[0], ch[1], 3, padding=1)
        self.conv2_2 = nn.Conv2d(ch[1], ch[1], 3, padding=1)
        self.conv3_1 = nn.Conv2d(ch[1], ch[2], 3, padding=1)
        self.conv3_2 = nn.Conv2d(ch[2], ch[2], 3, padding=1)
        self.conv3_3 = nn.Conv2d(ch[2], ch[2], 3, padding=1)
        self.conv4_1 = nn.Conv2d(ch[2], ch[3], 3, padding=1)
        self.conv4_2 = nn.Conv2d(ch[3], ch[3], 3, padding=1)
        self.conv4_3 = nn.Conv2d(ch[3], ch[3], 3, padding=1)
        self.conv5_1 = nn.Conv2d(ch[3], ch[4], 3, padding=1)
        self.conv5_2 = nn.Conv2d(ch[4], ch[4], 3, padding=1)
        self.conv5_3 = nn.Conv2d(ch[4], ch[4], 3, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.fc6 = nn.Conv2d(ch[4], fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout2d()
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        if variant == "32s":
            self.upscore = nn.ConvTranspose2d(n_class, n_class, 64, stride=32, bias=False)
        else:
            self.score_pool4 = nn.Conv2d(ch[3], n_class, 1)
            self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        if variant == "16s":
            self.upscore16 = nn.ConvTranspose2d(n_class, n_class, 32, stride=16, bias=False)
        if variant.startswith("8s"):
            self.score_pool3 = nn.Conv2d(ch[2], n_class, 1)
            self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
            self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(caffe_bilinear(n_class, m.kernel_size[0]))

    def forward(self, x):
        r = F.relu
        h = self.pool(r(self.conv1_2(r(self.conv1_1(x)))))
        h = self.pool(r(self.conv2_2(r(self.conv2_1(h)))))
        pool3 = h = self.pool(r(self.conv3_3(r(self.conv3_2(r(self.conv3_1(h)))))))
        pool4 = h = self.pool(r(self.conv4_3(r(self.conv4_2(r(self.conv4_1(h)))))))
        h = self.pool(r(self.conv5_3(r(self.conv5_2(r(self.conv5_1(h)))))))
        h = self.drop(r(self.fc7(self.drop(r(self.fc6(h))))))
        h = self.score_fr(h)
        H, W = x.shape[2:]
        if self.variant == "32s":
            return self.upscore(h)[:, :, 19 : 19 + H, 19 : 19 + W]
        if self.variant == "8s-atonce":
            pool4, pool3 = pool4 * 0.01, pool3 * 0.0001
        h = self.upscore2(h)
        h = h + self.score_pool4(pool4)[:, :, 5 : 5 + h.shape[2], 5 : 5 + h.shape[3]]
        if self.variant == "16s":
            return self.upscore16(h)[:, :, 27 : 27 + H, 27 : 27 + W]
        h = self.upscore_pool4(h)
        h = h + self.score_pool3(pool3)[:, :, 9 : 9 + h.shape[2], 9 : 9 + h.shape[3]]
        return self.upscore8(h)[:, :, 31 : 31 + H, 31 : 31 + W]


VARIANTS = {FCN32s: "32s", FCN16s: "16s", FCN8s: "8s", FCN8sAtOnce: "8s-atonce"}


def forward_backward(model, x, grad_out):
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(grad_out)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def assert_close_scaled(a, b, rel, name=""):
    """max |a - b| <= rel * max |b|: sums over many pixels (weight gradients) are
    compared relative to their magnitude, not elementwise."""
    assert a.shape == b.shape, name
    error, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert error <= rel * scale, f"{name}: max error {error:.3g} vs scale {scale:.3g}"


def assert_same_results(a, b, rel):
    (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = a, b
    assert_close_scaled(out_a, out_b, rel, "output")
    assert_close_scaled(gx_a, gx_b, rel, "input gradient")
    assert gp_a.keys() == gp_b.keys() and gp_a
    for name in gp_a:
        assert_close_scaled(gp_a[name], gp_b[name], rel, name)


# ---------------------------------------------------------------- sizes and parameters

# (published parameter count, relative tolerance: the paper rounds to 2-3 digits)
PAPER_PARAMS = {
    FCNAlexNet: (57e6, 0.01),
    FCN32s: (134e6, 0.01),
    FCN16s: (134e6, 0.01),
    FCN8s: (134e6, 0.01),
    FCNGoogLeNet: (6e6, 0.01),
}


@pytest.mark.parametrize("cls", list(PAPER_PARAMS), ids=lambda c: c.__name__)
def test_parameter_count_matches_paper(cls):
    with torch.device("meta"):  # shapes only: no memory for 134M parameters
        model = cls(21)
    count = sum(p.numel() for p in model.parameters())
    paper, tolerance = PAPER_PARAMS[cls]
    print(f"{cls.__name__}: {count / 1e6:.2f}M parameters (paper: {paper / 1e6:.0f}M)")
    assert abs(count - paper) <= tolerance * paper
    # The fixed upsampling weights are state (buffers), not parameters.
    buffers = dict(model.named_buffers())
    assert buffers and all(name.startswith("upscore") for name in buffers)


@pytest.mark.parametrize("cls", VGG_MODELS, ids=lambda c: c.__name__)
def test_state_dict_keys_and_shapes_match_pytorch_fcn(cls):
    with torch.device("meta"):
        ours = cls(21).state_dict()
        theirs = PlainFCN(VARIANTS[cls], 21).state_dict()
    assert set(ours) == set(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


SIZES = [(1, 1), (1, 2), (2, 1), (3, 5), (31, 32), (33, 64), (64, 65), (97, 200), (1, 600)]
SIZES += [(600, 1), (255, 256), (600, 599)]


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_output_shape_every_input_size(cls):
    model = tiny(cls, n_class=3).eval()
    with torch.no_grad():
        for h, w in SIZES:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 3, h, w), (h, w)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", (FCN8s, FCNAlexNet, FCNGoogLeNet), ids=lambda c: c.__name__)
def test_output_shape_all_small_sizes(cls):
    # H and W through 1..64, every phase of the stride-32 grid, for FCN-GoogLeNet, whose
    # conv1 padding is the least that works; spot checks for the padding-100 nets.
    model = tiny(cls, n_class=2).eval()
    step = 1 if cls is FCNGoogLeNet else 9
    with torch.no_grad():
        for h in range(1, 65, step):
            assert model(torch.randn(1, 3, h, 65 - h)).shape == (1, 2, h, 65 - h)


@pytest.mark.parametrize("cls", (FCN8s, FCNAlexNet, FCNGoogLeNet), ids=lambda c: c.__name__)
def test_full_width_forward(cls):
    model = cls(21).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 45, 61))
    assert out.shape == (1, 21, 45, 61)


# ---------------------------------------------------------------- alignment


def linearized(model):
    """The model as a positive linear map with the same geometry: uniform conv weights,
    zero biases, average instead of max pooling, no LRN. The input gradient of one output
    pixel then is its receptive field weighting, symmetric about the point it sees."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()
    for name, module in list(model.named_modules()):
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        child = name.rpartition(".")[2]
        if isinstance(module, nn.MaxPool2d):
            pool = nn.AvgPool2d(
                module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode
            )
            setattr(parent, child, pool)
        elif isinstance(module, nn.LocalResponseNorm):
            setattr(parent, child, nn.Identity())
    return model.double().eval()


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_output_pixel_is_centred_on_its_input_pixel(cls):
    # Checks the crops (19, 27, 31, pool4 5, pool3 9, AlexNet 18) and the derived
    # GoogLeNet crop empirically: the centroid of output pixel y's receptive field
    # (weighted by d out[y] / d input) must be input pixel y, at every phase of the
    # stride-32 grid. An off-by-one crop moves it by about a pixel.
    model = linearized(cls(2, width=1 / 32))
    # Larger than the receptive field (VGG16 fc7: 404, GoogLeNet: 907) plus 2 x 32.
    big = 1040 if cls is FCNGoogLeNet else 560
    mid = big // 2
    ys = [mid, mid + 7, mid + 21]
    for axis in (2, 3):
        shape = [len(ys), 3, 24, 24]
        shape[axis] = big
        x = torch.ones(shape, dtype=torch.float64, requires_grad=True)
        out = model(x)
        picked = [out[i, 0, y, 12] if axis == 2 else out[i, 0, 12, y] for i, y in enumerate(ys)]
        torch.stack(picked).sum().backward()
        profile = x.grad.sum(dim=(1, 5 - axis))  # (len(ys), big): weights along `axis`
        assert (profile >= 0).all()
        position = torch.arange(big, dtype=torch.float64)
        centroid = (profile * position).sum(1) / profile.sum(1)
        torch.testing.assert_close(
            centroid, torch.tensor(ys, dtype=torch.float64), atol=1e-6, rtol=0
        )


def test_googlenet_crop_derivation():
    assert googlenet_module.CROP == googlenet_module.CONV1_PADDING - 2
    # The least padding that works for every input size: one less fails on tiny inputs.
    model = FCNGoogLeNet(2, width=TINY).eval()
    model.conv1.padding = (googlenet_module.CONV1_PADDING - 1,) * 2
    with pytest.raises(RuntimeError), torch.no_grad():
        for size in range(1, 70):
            model(torch.randn(1, 3, size, size))


# ---------------------------------------------------------------- fused vs reference heads


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_fused_heads_match_reference_heads(cls, backend):
    device = backend_device(backend)
    if backend == "triton":
        pytest.importorskip("fcn_fast.triton.resample_skip")
    model = tiny(cls).double().to(device).eval()
    x = torch.randn(2, 3, 37, 50, dtype=torch.float64, device=device)
    grad_out = torch.randn(2, 5, 37, 50, dtype=torch.float64, device=device)
    fused = forward_backward(model.set_backend(backend), x, grad_out)
    reference = forward_backward(model.set_backend("reference"), x, grad_out)
    assert_same_results(fused, reference, rel=1e-9)


def test_set_backend_and_argument_checks():
    model = FCN8s(3, width=TINY, backend="reference")
    heads = [m for m in model.modules() if isinstance(m, fcn_fast.models.BilinearUpscore)]
    assert len(heads) == 3 and all(h.backend == "reference" for h in heads)
    assert model.set_backend("cpu") is model and model.backend == "cpu"
    assert all(h.backend == "cpu" for h in heads)
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("gpu")
    with pytest.raises(ValueError, match="backend"):
        FCN32s(backend="fast")
    with pytest.raises(TypeError, match="n_class"):
        FCN32s(2.0)
    with pytest.raises(ValueError, match="n_class"):
        FCNAlexNet(0)
    with pytest.raises(ValueError, match="width"):
        FCNGoogLeNet(width=0)


# ---------------------------------------------------------------- drop-in compatibility


@pytest.mark.parametrize("cls", VGG_MODELS, ids=lambda c: c.__name__)
def test_matches_independent_plain_pytorch_fcn(cls, tmp_path):
    ours = tiny(cls).double().eval()
    plain = PlainFCN(VARIANTS[cls], 5, TINY).double().eval()
    plain.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 41, 34, dtype=torch.float64)
    grad_out = torch.randn(2, 5, 41, 34, dtype=torch.float64)
    expected = forward_backward(plain, x, grad_out)
    expected[2].pop("upscore.weight", None)  # a parameter in plain PyTorch, fixed in ours
    for name in ("upscore2.weight", "upscore16.weight", "upscore_pool4.weight", "upscore8.weight"):
        expected[2].pop(name, None)
    assert_same_results(forward_backward(ours, x, grad_out), expected, rel=1e-9)

    # A pytorch-fcn checkpoint into a fresh model, strict: plain, and wrapped as its
    # trainer saves it, from a file read with weights_only=True.
    fresh = cls(5, width=TINY).double().eval()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert_close_scaled(fresh(x), expected[0], 1e-9)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "arch": "FCN", "model_state_dict": plain.float().state_dict()}, path)
    fresh = cls(5, width=TINY).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    again = cls(5, width=TINY).eval()
    load_checkpoint(again, path)
    with torch.no_grad():
        assert_close_scaled(fresh(x.float()), plain(x.float()), 1e-5)
        assert_close_scaled(again(x.float()), plain(x.float()), 1e-5)
    assert all(m.is_bilinear for m in fresh.modules() if hasattr(m, "is_bilinear"))


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_state_dict_round_trip(cls):
    a, b = tiny(cls).eval(), cls(5, width=TINY).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 3, 29, 40)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "score_fr.bias"})


def test_non_bilinear_upscore_falls_back_with_one_warning():
    ours = tiny(FCN8s).double().eval()
    plain = PlainFCN("8s", 5, TINY).double().eval()
    state = ours.state_dict()
    state["upscore8.weight"] = torch.randn_like(state["upscore8.weight"]) * 0.1  # "learned"
    plain.load_state_dict(state)
    with pytest.warns(NonBilinearUpscoreWarning, match="upscore8") as caught:
        ours.load_state_dict(state)
    assert len(caught) == 1
    assert not ours.upscore8.is_bilinear
    assert ours.upscore2.is_bilinear and ours.upscore_pool4.is_bilinear
    x = torch.randn(2, 3, 35, 42, dtype=torch.float64)
    grad_out = torch.randn(2, 5, 35, 42, dtype=torch.float64)
    expected = forward_backward(plain, x, grad_out)
    for name in ("upscore2.weight", "upscore_pool4.weight", "upscore8.weight"):
        expected[2].pop(name)
    for backend in ("cpu", "reference"):
        got = forward_backward(ours.set_backend(backend), x, grad_out)
        assert_same_results(got, expected, rel=1e-9)

    # The bilinear filter again (even saved in bfloat16) turns the fused path back on.
    state["upscore8.weight"] = fcn_fast.reference.bilinear_weight(5, 16).bfloat16()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.load_state_dict(state)
    assert ours.upscore8.is_bilinear


# ---------------------------------------------------------------- warm starts


def fake_torchvision_vgg16(width=TINY):
    """A module with torchvision's VGG16 layout: features (conv/ReLU/pool), classifier."""
    ch = [max(1, round(c * width)) for c in (64, 128, 256, 512, 512)]
    layers, channels = [], 3
    for out, convs in zip(ch, (2, 2, 3, 3, 3), strict=True):
        for _ in range(convs):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.MaxPool2d(2, 2))
    fc = max(1, round(4096 * width))
    vgg = nn.Module()
    vgg.features = nn.Sequential(*layers)
    vgg.classifier = nn.Sequential(
        nn.Linear(channels * 49, fc),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(fc, fc),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(fc, 1000),
    )
    for p in vgg.parameters():
        nn.init.normal_(p, std=0.1)
    return vgg


def check_trunk_is_vgg(model, vgg):
    convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    names = [n for n, _ in model.named_children() if n.startswith("conv")]
    assert len(names) == len(convs) == 13
    for name, conv in zip(names, convs, strict=True):
        assert torch.equal(getattr(model, name).weight, conv.weight)
        assert torch.equal(getattr(model, name).bias, conv.bias)
    # fc6 as a 7x7 convolution equals classifier.0 on a flattened 7x7 pool5.
    pool5 = torch.randn(2, model.conv5_3.out_channels, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(
            model.fc6(pool5).flatten(1), vgg.classifier[0](pool5.flatten(1)), rtol=1e-5, atol=1e-5
        )
        h = torch.randn(2, vgg.classifier[3].in_features)
        torch.testing.assert_close(
            model.fc7(h[:, :, None, None]).flatten(1), vgg.classifier[3](h), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("cls", VGG_MODELS, ids=lambda c: c.__name__)
def test_load_vgg16_backbone(cls, tmp_path):
    vgg = fake_torchvision_vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model = cls(5, width=TINY)
    score = model.score_fr.weight.clone()
    assert load_vgg16_backbone(model, path) is model
    check_trunk_is_vgg(model, vgg)
    assert torch.equal(model.score_fr.weight, score)  # heads untouched

    other = cls(5, width=TINY)
    other.copy_params_from_vgg16(vgg)  # pytorch-fcn's helper, from a module
    check_trunk_is_vgg(other, vgg)


def test_load_vgg16_backbone_errors(tmp_path):
    model = FCN8s(5, width=TINY)
    state = fake_torchvision_vgg16().state_dict()
    truncated = tmp_path / "truncated.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("features.28")}, truncated)
    with pytest.raises(ValueError, match=r"missing keys: features\.28\.weight, features\.28\.bias"):
        load_vgg16_backbone(model, truncated)
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(4, 3, 7, 7)}, resnet)
    with pytest.raises(ValueError, match="features.0.weight"):
        load_vgg16_backbone(model, resnet)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.randn(3), not_a_dict)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_vgg16_backbone(model, not_a_dict)
    full_width = tmp_path / "full.pth"
    torch.save(fake_torchvision_vgg16(width=1 / 8).state_dict(), full_width)
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape"):
        load_vgg16_backbone(model, full_width)
    with pytest.raises(TypeError, match="VGG16 FCN"):
        load_vgg16_backbone(FCNAlexNet(5, width=TINY), truncated)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017  (torch.load's own error)
        load_vgg16_backbone(model, tmp_path / "garbage.pth")


def test_copy_params_from_fcn32s_and_fcn16s():
    fcn32s = tiny(FCN32s)
    fcn16s = FCN16s(5, width=TINY)
    fcn16s.copy_params_from_fcn32s(fcn32s)
    for name in ("conv1_1", "conv5_3", "fc6", "fc7", "score_fr"):
        assert torch.equal(getattr(fcn16s, name).weight, getattr(fcn32s, name).weight)
    fcn16s = randomize(fcn16s)
    fcn8s = FCN8s(5, width=TINY)
    fcn8s.copy_params_from_fcn16s(fcn16s)
    for name in ("conv3_1", "fc7", "score_fr", "score_pool4"):
        assert torch.equal(getattr(fcn8s, name).bias, getattr(fcn16s, name).bias)
    assert not fcn8s.score_pool3.weight.any()  # FCN-8s' own new layer stays zero
    # ... also from pytorch-fcn's own (plain) modules.
    plain = PlainFCN("16s", 5, TINY)
    FCN8s(5, width=TINY).copy_params_from_fcn16s(plain)


# ---------------------------------------------------------------- training


def test_param_groups_follow_the_fcn_recipe():
    model = FCN8s(5, width=TINY)
    weights, biases = fcn_param_groups(model, lr=1e-3, weight_decay=5e-4)
    assert weights["lr"] == 1e-3 and weights["weight_decay"] == 5e-4
    assert biases["lr"] == 2e-3 and biases["weight_decay"] == 0
    named = {id(p): n for n, p in model.named_parameters()}
    assert all(named[id(p)].endswith("weight") for p in weights["params"])
    assert all(named[id(p)].endswith("bias") for p in biases["params"])
    assert len(weights["params"]) + len(biases["params"]) == len(named)
    plain = PlainFCN("8s", 5, TINY)  # upscore parameters of a plain FCN are left out too
    groups = fcn_param_groups(plain, lr=1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(plain.parameters())) - 3


def test_sgd_steps_lower_the_loss():
    torch.manual_seed(1)
    model = FCN8s(3, width=TINY)
    x = torch.randn(2, 3, 40, 36)
    # Synthetic labels a small FCN can learn: thresholds of a local mean of channel 0.
    smooth = F.avg_pool2d(x[:, :1], 5, stride=1, padding=2)[:, 0]
    target = (smooth > 0.15).long() + (smooth > -0.15).long()
    optimizer = torch.optim.SGD(fcn_param_groups(model, lr=1e-2), lr=1e-2, momentum=0.9)

    def loss_now():
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x), target).item()

    before = loss_now()
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    after = loss_now()
    assert after < before - 0.05, (before, after)
    assert all(m.is_bilinear for m in model.modules() if hasattr(m, "is_bilinear"))
    torch.testing.assert_close(model.upscore8.weight, fcn_fast.reference.bilinear_weight(3, 16))


# ---------------------------------------------------------------- autocast, layout, compile


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("cls", (FCN8s, FCNAlexNet, FCNGoogLeNet), ids=lambda c: c.__name__)
def test_autocast(cls, dtype):
    model = tiny(cls).eval()
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        expected = model(x)
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = model(xg)
    assert out.dtype == dtype and out.shape == expected.shape
    # Errors of a dozen-odd low-precision layers, relative to the output's scale.
    assert_close_scaled(out.float(), expected, 0.05 if dtype == torch.bfloat16 else 0.01)
    out.float().sum().backward()
    assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("cls", (FCN8s, FCNGoogLeNet), ids=lambda c: c.__name__)
def test_channels_last(cls):
    # float64, so that the different conv algorithms of the two layouts agree tightly.
    model = tiny(cls).double().eval()
    x = torch.randn(2, 3, 45, 38, dtype=torch.float64)
    grad_out = torch.randn(2, 5, 45, 38, dtype=torch.float64)
    expected = forward_backward(model, x, grad_out)
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    got = forward_backward(model, x, grad_out.to(memory_format=torch.channels_last))
    assert_same_results(got, expected, rel=1e-9)


def test_torch_compile_fullgraph():
    # fullgraph=True fails on any graph break. On CPU the aot_eager backend checks the
    # whole trace (dynamo, fake tensors through the custom op, AOT autograd) in seconds;
    # inductor's C++ code generation for a 16-conv net takes minutes on 2 cores.
    model = tiny(FCN8s, backend="cpu").eval()
    x = torch.randn(1, 3, 45, 37, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor compile is minutes on CPU")
def test_torch_compile_fullgraph_inductor_cuda():
    model = tiny(FCN8s).cuda().eval()
    x = torch.randn(1, 3, 45, 37, device="cuda")
    # fp32 convolutions in fp32: cuDNN's default TF32 puts eager and compiled 1e-3 apart.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)

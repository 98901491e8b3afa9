"""VGG19: layer names, the caffe weights loader, preprocessing, torchvision layout, slicing and hooks."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import nst_utils
from nst_utils import (
    VGG19_LAYERS,
    CaffePreprocess,
    ParameterError,
    TorchvisionPreprocess,
    layer_index,
)

# (block, number of convs, output channels) of VGG19's convolutional part
BLOCKS = [(1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)]


def _expected_conv_shapes():
    shapes, in_ch = {}, 3
    for block, n, out_ch in BLOCKS:
        for k in range(1, n + 1):
            shapes[f"conv{block}_{k}"] = (out_ch, in_ch, 3, 3)
            in_ch = out_ch
    return shapes


@pytest.fixture(scope="module")
def tv_random() -> nn.Sequential:
    """torchvision's VGG19 architecture with random weights (no download) and average pooling,
    built once (~2-3 s)."""
    return nst_utils.vgg19_torchvision(pretrained=False, pooling="avg")


# --------------------------------------------------------------------------- names


def test_vgg19_layers_names():
    assert len(VGG19_LAYERS) == 37  # 16 conv + 16 relu + 5 pool
    assert len(set(VGG19_LAYERS)) == 37
    assert sum(n.startswith("conv") for n in VGG19_LAYERS) == 16
    assert sum(n.startswith("relu") for n in VGG19_LAYERS) == 16
    assert [n for n in VGG19_LAYERS if n.startswith("pool")] == [f"pool{i}" for i in range(1, 6)]
    # every conv is directly followed by the relu of the same name
    for i, name in enumerate(VGG19_LAYERS):
        if name.startswith("conv"):
            assert VGG19_LAYERS[i + 1] == name.replace("conv", "relu")
    assert VGG19_LAYERS[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert VGG19_LAYERS[-3:] == ("conv5_4", "relu5_4", "pool5")
    assert [n for n in VGG19_LAYERS if n.startswith("conv")] == list(_expected_conv_shapes())


# --------------------------------------------------------------------------- caffe weights


def test_caffe_structure(caffe_vgg):
    names = list(caffe_vgg._modules)
    assert names == ["preprocess", *VGG19_LAYERS]
    assert isinstance(caffe_vgg.preprocess, CaffePreprocess)
    convs = {n: m for n, m in caffe_vgg.named_children() if isinstance(m, nn.Conv2d)}
    assert {n: tuple(m.weight.shape) for n, m in convs.items()} == _expected_conv_shapes()
    for m in convs.values():
        assert m.padding == (1, 1) and m.stride == (1, 1) and m.bias is not None
    for name in VGG19_LAYERS:
        child = caffe_vgg.get_submodule(name)
        if name.startswith("relu"):
            assert isinstance(child, nn.ReLU) and not child.inplace
        elif name.startswith("pool"):
            assert isinstance(child, nn.MaxPool2d)


def test_caffe_frozen_eval(caffe_vgg):
    params = list(caffe_vgg.parameters())
    assert len(params) == 32  # weight + bias of 16 convs
    assert not any(p.requires_grad for p in params)
    assert not caffe_vgg.training
    assert not any(m.training for m in caffe_vgg.modules())


def test_caffe_weights_match_file(caffe_vgg, caffe_state):
    """Dequantise every kernel ourselves (table[q]) and compare with the module's weights."""
    for block, n, _ in BLOCKS:
        for k in range(1, n + 1):
            key = f"block{block}_conv{k}"
            table, q, bias = caffe_state[f"{key}_W_table"], caffe_state[f"{key}_W_q"], caffe_state[f"{key}_b"]
            assert q.dtype == torch.uint8 and table.numel() == 256
            expected = table.float()[q.long()]
            conv = caffe_vgg.get_submodule(f"conv{block}_{k}")
            assert torch.equal(conv.weight, expected), key
            assert torch.equal(conv.bias, bias.float()), key


def test_caffe_conv1_1_statistics(caffe_vgg, caffe_state):
    w = caffe_vgg.conv1_1.weight
    # independent statistic straight from the file
    table, q = caffe_state["block1_conv1_W_table"], caffe_state["block1_conv1_W_q"]
    mean_from_file = table.double()[q.long()].mean()
    assert float(w.double().mean()) == pytest.approx(float(mean_from_file), abs=1e-9)
    # trained first-layer kernels for 0..255 inputs: centred near zero with a spread of order 0.1;
    # unlike a fresh initialisation, the trained biases are not all zero
    assert abs(float(w.mean())) < 0.05
    assert 0.05 < float(w.std()) < 0.5
    assert float(caffe_vgg.conv1_1.bias.abs().sum()) > 0
    # deeper layers have many more inputs per unit, so much smaller weights
    assert float(caffe_vgg.conv5_1.weight.std()) < float(w.std()) / 5


def test_caffe_weights_path_points_to_file():
    path = nst_utils.caffe_weights_path()
    assert path.is_file() and path.stat().st_size > 10_000_000


def test_vgg19_caffe_rejects_wrong_file(tmp_path):
    bad = tmp_path / "not_weights.bin"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(nst_utils.NSTError, match="not_weights.bin"):
        nst_utils.vgg19_caffe(bad)
    wrong = tmp_path / "wrong.pt"
    torch.save({"something": torch.zeros(1)}, wrong)
    with pytest.raises(nst_utils.NSTError, match="missing"):
        nst_utils.vgg19_caffe(wrong)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("cls", [CaffePreprocess, TorchvisionPreprocess])
def test_preprocess_round_trip(cls):
    pre = cls()
    x = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(pre.inverse(pre(x)), x, atol=1e-6, rtol=0)
    y = torch.randn(2, 3, 5, 7) * 50
    torch.testing.assert_close(pre(pre.inverse(y)), y, atol=1e-4, rtol=1e-6)


def test_caffe_preprocess_pure_red():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    out = CaffePreprocess()(red).flatten()
    # RGB (1, 0, 0) -> BGR (0, 0, 255) minus the BGR ImageNet mean
    torch.testing.assert_close(out, torch.tensor([0 - 103.939, 0 - 116.779, 255 - 123.68]))


def test_torchvision_preprocess_values():
    grey = torch.full((1, 3, 1, 1), 0.5)
    out = TorchvisionPreprocess()(grey).flatten()
    expected = torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225])
    torch.testing.assert_close(out, expected)


def test_first_layer_sees_preprocessed_input(caffe_vgg):
    x = torch.rand(1, 3, 10, 12)
    expected = caffe_vgg.conv1_1(caffe_vgg.preprocess(x))
    torch.testing.assert_close(caffe_vgg[:2](x), expected)


def test_gradient_flows_to_image_through_frozen_net(caffe_vgg):
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    caffe_vgg[: layer_index(caffe_vgg, "relu2_1") + 1](x).pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in caffe_vgg.parameters())


# --------------------------------------------------------------------------- torchvision layout


def test_torchvision_layout_matches_caffe(tv_random, caffe_vgg):
    assert list(tv_random._modules) == list(caffe_vgg._modules)
    assert isinstance(tv_random.preprocess, TorchvisionPreprocess)
    for (n1, m1), (n2, m2) in list(zip(tv_random.named_children(), caffe_vgg.named_children()))[1:]:
        assert n1 == n2
        if n1.startswith("pool"):  # pooling="avg" swaps the pools, nothing else
            assert isinstance(m1, nn.AvgPool2d) and isinstance(m2, nn.MaxPool2d)
            assert (m1.kernel_size, m1.stride) == (2, 2)
        else:
            assert type(m1) is type(m2)
        if isinstance(m1, nn.Conv2d):
            assert m1.weight.shape == m2.weight.shape and m1.padding == m2.padding
    relus = [m for m in tv_random.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 16 and not any(r.inplace for r in relus)
    assert not any(p.requires_grad for p in tv_random.parameters())
    assert not tv_random.training


def test_avg_pooling():
    net = nst_utils.load_vgg19("caffe", pooling="avg", device="cpu", verbose=False)
    pools = [net.get_submodule(f"pool{i}") for i in range(1, 6)]
    assert all(isinstance(p, nn.AvgPool2d) for p in pools)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_load_vgg19_rejects_unknown_weights():
    with pytest.raises(ParameterError, match="imagenet"):
        nst_utils.load_vgg19("imagenet")


def test_load_vgg19_checks_pooling_before_loading(monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded before checking pooling")

    monkeypatch.setattr(nst_utils, "vgg19_caffe", must_not_load)
    monkeypatch.setattr(nst_utils, "vgg19_torchvision", must_not_load)
    for weights in ("caffe", "torchvision", "auto"):
        with pytest.raises(ParameterError, match="median"):
            nst_utils.load_vgg19(weights, pooling="median")


# --------------------------------------------------------------------------- slicing and hooks


def test_layer_index_and_slicing(caffe_vgg):
    assert layer_index(caffe_vgg, "preprocess") == 0
    assert layer_index(caffe_vgg, "conv1_1") == 1
    i = layer_index(caffe_vgg, "relu5_1")
    assert i == VGG19_LAYERS.index("relu5_1") + 1
    sub = caffe_vgg[: i + 1]
    assert isinstance(sub, nn.Sequential)
    names = list(sub._modules)
    assert names[0] == "preprocess" and names[-1] == "relu5_1"
    assert names[1:] == list(VGG19_LAYERS[: VGG19_LAYERS.index("relu5_1") + 1])
    assert sub.conv3_1 is caffe_vgg.conv3_1  # a view of the same modules, not a copy


def test_unknown_layer_lists_valid_names(caffe_vgg):
    with pytest.raises(ParameterError) as info:
        layer_index(caffe_vgg, "relu6_1")
    msg = str(info.value)
    assert "relu6_1" in msg
    assert all(name in msg for name in ("conv1_1", "relu4_2", "relu5_1", "pool5"))
    assert "preprocess" not in msg


def test_hooks_capture_activation_shapes(caffe_vgg):
    expected = {
        "relu1_1": (1, 64, 64, 48),
        "relu2_1": (1, 128, 32, 24),
        "relu3_1": (1, 256, 16, 12),
        "relu4_1": (1, 512, 8, 6),
        "relu4_2": (1, 512, 8, 6),
        "relu5_1": (1, 512, 4, 3),  # halved four times: 64x48 -> 4x3
    }
    net = caffe_vgg[: layer_index(caffe_vgg, "relu5_1") + 1]
    captured = {}
    handles = [
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name in expected
    ]
    try:
        with torch.no_grad():
            out = net(torch.rand(1, 3, 64, 48))
    finally:
        for h in handles:
            h.remove()
    assert {k: tuple(v.shape) for k, v in captured.items()} == expected
    assert torch.equal(out, captured["relu5_1"])
    for v in captured.values():
        assert float(v.min()) >= 0 and torch.isfinite(v).all()  # after a ReLU
    assert not caffe_vgg.relu5_1._forward_hooks  # hooks removed again


# --------------------------------------------------------------------------- real weights sanity


def _stripes(h, w):
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    r = 0.5 + 0.5 * torch.sin(x / 2.0)
    g = 0.5 + 0.5 * torch.cos((x + y) / 3.0)
    b = (y / h).clamp(0, 1)
    return torch.stack([r, g, b]).unsqueeze(0)


def _smooth(h, w):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([x, 1 - y, 0.3 + 0.4 * x * y]).unsqueeze(0)


def test_real_weights_features_are_stable_and_discriminative(caffe_vgg, activations):
    """A slightly noised copy of an image must stay much closer in feature space than another image."""
    torch.manual_seed(0)
    a = _smooth(48, 48)
    a_noisy = (a + 0.02 * torch.randn_like(a)).clamp(0, 1)
    b = _stripes(48, 48)
    layers = ("relu2_1", "relu3_1", "relu4_1")
    with torch.no_grad():
        fa, fn, fb = (activations(caffe_vgg, x, layers) for x in (a, a_noisy, b))
    for layer in layers:
        near = float((fa[layer] - fn[layer]).norm() / fa[layer].norm())
        far = float((fa[layer] - fb[layer]).norm() / fa[layer].norm())
        assert near < far / 2, (layer, near, far)
        # the same holds for the Gram matrices the style loss compares
        ga = nst_utils.gram_matrix(fa[layer])
        assert float(nst_utils.style_loss(fn[layer], ga)) < float(nst_utils.style_loss(fb[layer], ga)), layer


def test_pick_device_auto_returns_usable_device():
    dev = nst_utils.pick_device()
    assert isinstance(dev, torch.device)
    assert torch.zeros(1, device=dev).device.type == dev.type
    assert nst_utils.pick_device("cpu") == torch.device("cpu")


def test_layer_names_are_python_identifiers():
    """Named children can be reached as attributes (net.relu4_2)."""
    assert all(re.fullmatch(r"[a-z]+\d(_\d)?", n) for n in VGG19_LAYERS)


def test_auto_weights_fall_back_to_the_original_ones_offline(monkeypatch, capsys):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(nst_utils, "vgg19_torchvision", offline)
    net = nst_utils.load_vgg19("auto")
    assert isinstance(net.preprocess, nst_utils.CaffePreprocess)
    assert "using the caffe VGG19 weights" in capsys.readouterr().out


def test_auto_weights_prefer_torchvision_when_available(monkeypatch, capsys):
    monkeypatch.setattr(nst_utils, "vgg19_torchvision",
                        lambda pretrained=True, pooling="max": nst_utils._named_vgg19(
                            nst_utils.TorchvisionPreprocess(),
                            [torch.nn.Conv2d(i, o, 3, padding=1) for i, o in _CONV_SHAPES], pooling))
    net = nst_utils.load_vgg19("auto")
    assert isinstance(net.preprocess, nst_utils.TorchvisionPreprocess)
    assert "using the torchvision VGG19 weights" in capsys.readouterr().out


_CONV_SHAPES = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 3 + \
    [(256, 512)] + [(512, 512)] * 7

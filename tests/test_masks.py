"""Spatial control: the notebook's masked_gram and masked_style_loss (a style only where a mask
says so)."""

from __future__ import annotations

import pytest
import torch

import nst_utils
from nst_utils import ParameterError, gram_matrix, style_loss


def feats(device, c=6, h=8, w=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, c, h, w, generator=g, dtype=dtype).to(device)


def target(device, c=6, seed=99):
    return gram_matrix(feats(device, c=c, h=5, w=7, seed=seed))


def block_upsample(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Each mask value repeated on a k x k block: the same mask at k times the resolution."""
    return mask.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)


# --------------------------------------------------------------------------- full and empty masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "factor", [1, 4]
)  # mask at the layer's resolution, or at 4x it (the image's)
def test_mask_of_ones_is_the_unmasked_gram_and_loss(nb, device, dtype, factor):
    f = feats(device, dtype=dtype, seed=1)
    a = target(device).to(dtype)
    ones = torch.ones(1, 1, 8 * factor, 12 * factor, device=device, dtype=dtype)
    torch.testing.assert_close(nb["masked_gram"](f, ones), gram_matrix(f), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        nb["masked_style_loss"](f, a, ones), style_loss(f, a), rtol=1e-6, atol=0
    )


def test_empty_mask_gives_zero_gram_and_zero_loss_without_nan(nb, device):
    f = feats(device, seed=2).requires_grad_(True)
    zeros = torch.zeros(1, 1, 32, 48, device=device)
    g = nb["masked_gram"](f, zeros)
    assert torch.equal(g, torch.zeros_like(g))
    loss = nb["masked_style_loss"](f, target(device), zeros)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(f.grad).all() and float(f.grad.abs().max()) == 0.0


# ----------------------------------------------------------------- the masked Gram computed by hand


def test_binary_mask_gives_the_gram_of_the_positions_inside(nb, device):
    f = feats(device, seed=3)
    inside = torch.rand(8, 12, generator=torch.Generator().manual_seed(4)) > 0.6
    selected = f[0][:, inside.to(device)]  # [C, n]: the feature vectors of the positions inside
    expected = selected @ selected.T / selected.shape[1]
    mask = inside.double().view(1, 1, 8, 12).to(device)
    torch.testing.assert_close(nb["masked_gram"](f, mask)[0], expected, rtol=1e-12, atol=0)
    # the same mask drawn at 4x the resolution (an image-size mask) covers the same positions
    torch.testing.assert_close(
        nb["masked_gram"](f, block_upsample(mask, 4))[0], expected, rtol=1e-12, atol=0
    )


def test_soft_mask_weights_each_position(nb, device):
    f = feats(device, seed=5)
    m = torch.rand(1, 1, 8, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(
        device
    )
    flat, w = f[0].reshape(6, -1), m.reshape(-1)
    expected = torch.einsum("k,ik,jk->ij", w, flat, flat) / w.sum()
    torch.testing.assert_close(nb["masked_gram"](f, m)[0], expected, rtol=1e-12, atol=0)
    # the loss is that Gram's relative error, weighted by the share of the picture the mask covers
    a = target(device)
    expected_loss = m.mean() * (expected - a[0]).pow(2).sum() / a.pow(2).sum()
    torch.testing.assert_close(nb["masked_style_loss"](f, a, m), expected_loss, rtol=1e-12, atol=0)


def test_image_size_mask_is_area_averaged_to_the_layer(nb, device):
    """A soft mask at 4x the layer's resolution acts like its 4x4 block means at the layer's
    resolution."""
    f = feats(device, seed=7)
    big = torch.rand(
        1, 1, 32, 48, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    ).to(device)
    small = big.reshape(1, 1, 8, 4, 12, 4).mean(dim=(3, 5))
    torch.testing.assert_close(
        nb["masked_gram"](f, big), nb["masked_gram"](f, small), rtol=1e-10, atol=0
    )
    a = target(device)
    loss = nb["masked_style_loss"]
    torch.testing.assert_close(loss(f, a, big), loss(f, a, small), rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "mask_hw", [(32, 48), (37, 53), (5, 7)]
)  # image size, an odd size, smaller than the layer
def test_complementary_masks_share_the_loss(nb, device, mask_hw):
    """Two regions m and 1 - m with the same statistics: their losses add up to the unmasked one,
    each
    weighted by its share of the picture (the shares sum to 1)."""
    vector = torch.rand(6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    f = vector.view(1, 6, 1, 1).expand(1, 6, 8, 12).contiguous().to(device)  # every position alike
    m = torch.rand(
        1, 1, *mask_hw, generator=torch.Generator().manual_seed(10), dtype=torch.float64
    ).to(device)
    a = target(device)
    inside, outside, whole = (
        nb["masked_style_loss"](f, a, m),
        nb["masked_style_loss"](f, a, 1 - m),
        style_loss(f, a),
    )
    assert 0 < float(inside) < float(whole) and 0 < float(outside) < float(whole)
    torch.testing.assert_close(inside + outside, whole, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------- with the real network


def test_gradient_reaches_only_the_pixels_the_mask_sees(nb, caffe_vgg, device):
    """relu1_1 looks at 3x3 pixels: with the left half masked in, columns right of it get no
    gradient."""
    image = (
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
        .to(device)
        .requires_grad_(True)
    )
    style = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(13)).to(device)
    left = torch.zeros(1, 1, 32, 32, device=device)
    left[..., :16] = 1
    a = gram_matrix(nst_utils.features(caffe_vgg[:3], style, ["relu1_1"])["relu1_1"])
    loss = nb["masked_style_loss"](
        nst_utils.features(caffe_vgg[:3], image, ["relu1_1"])["relu1_1"], a, left
    )
    loss.backward()
    grad = image.grad.abs().sum(dim=(0, 1, 2))  # per column
    assert torch.isfinite(image.grad).all()
    assert bool((grad[:16] > 0).all()) and float(grad[17:].max()) == 0.0


def test_a_misspelt_layer_in_a_region_stops_before_the_forward_pass(caffe_vgg, device):
    regions = [
        (
            {
                "relu1_1": torch.eye(64, device=device)[None],
                "relu2_l": torch.eye(128, device=device)[None],
            },
            torch.ones(1, 1, 32, 32, device=device),
        )
    ]
    layers = [name for targets, _ in regions for name in targets]
    with pytest.raises(ParameterError, match=r"unknown layer\(s\) \['relu2_l'\].*relu2_1"):
        # a 4-channel image would make the forward pass fail: the name is checked before it runs
        nst_utils.features(caffe_vgg, torch.rand(1, 4, 32, 32, device=device), layers)
    assert not any(m._forward_hooks for m in caffe_vgg.modules())

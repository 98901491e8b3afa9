"""The losses: gram_matrix, content_loss, style_loss, total_variation."""

from __future__ import annotations

import pytest
import torch

import nst_utils
from nst_utils import ParameterError, content_loss, gram_matrix, style_loss, total_variation


def _features(b=1, c=4, h=5, w=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype)


# --------------------------------------------------------------------------- gram_matrix


def test_gram_shape_symmetric_psd():
    f = _features(b=2, c=5, seed=1)
    g = gram_matrix(f)
    assert g.shape == (2, 5, 5)
    torch.testing.assert_close(g, g.transpose(1, 2))
    eig = torch.linalg.eigvalsh(g)
    assert float(eig.min()) >= -1e-6


def test_gram_hand_computed():
    # C = 2 channels, H = 1, W = 2: F = [[1, 2], [3, 4]], N = 2 positions
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    # G = F F^T / N = [[1+4, 3+8], [3+8, 9+16]] / 2
    expected = torch.tensor([[[2.5, 5.5], [5.5, 12.5]]])
    torch.testing.assert_close(gram_matrix(f), expected)


def test_gram_invariant_under_spatial_tiling():
    f = _features(c=3, h=4, w=5, seed=2)
    tiled_w = torch.cat([f, f], dim=3)
    tiled_hw = torch.cat([tiled_w, tiled_w, tiled_w], dim=2)
    torch.testing.assert_close(gram_matrix(tiled_w), gram_matrix(f))
    torch.testing.assert_close(gram_matrix(tiled_hw), gram_matrix(f))


@pytest.mark.parametrize("s", [255.0, 1 / 255, -3.0])
def test_gram_scales_quadratically(s):
    f = _features(seed=3)
    torch.testing.assert_close(gram_matrix(s * f), s**2 * gram_matrix(f))


def test_gram_batched_equals_per_sample():
    f = _features(b=3, seed=4)
    g = gram_matrix(f)
    for i in range(3):
        torch.testing.assert_close(g[i : i + 1], gram_matrix(f[i : i + 1]))


@pytest.mark.parametrize("shape", [(4, 5, 6), (4, 30), (1, 2, 3, 4, 5)])
def test_gram_bad_shape(shape):
    with pytest.raises(ParameterError):
        gram_matrix(torch.rand(shape))


# --------------------------------------------------------------------------- content / style loss


def test_content_loss_zero_at_target_positive_otherwise():
    p = _features(seed=5)
    assert float(content_loss(p.clone(), p)) == 0.0
    x = p + 0.01 * _features(seed=6)
    assert float(content_loss(x, p)) > 0.0
    # the relative error of the doubled map is ||P||^2 / ||P||^2 = 1
    torch.testing.assert_close(content_loss(2 * p, p), torch.tensor(1.0, dtype=p.dtype))


def test_style_loss_zero_at_target_positive_otherwise():
    f = _features(seed=7)
    a = gram_matrix(f)
    assert float(style_loss(f.clone(), a)) == 0.0
    # a spatially rearranged map has the same Gram matrix: still zero style loss
    assert float(style_loss(f.flip(2, 3), a)) == pytest.approx(0.0, abs=1e-12)
    assert float(style_loss(f + 0.01 * _features(seed=8), a)) > 0.0
    # doubling features quadruples the Gram: ||4A - A||^2 / ||A||^2 = 9
    torch.testing.assert_close(style_loss(2 * f, a), torch.tensor(9.0, dtype=f.dtype))


def test_style_loss_accepts_target_from_different_image_size():
    style = _features(c=4, h=9, w=3, seed=9)
    x = _features(c=4, h=5, w=6, seed=10)
    loss = style_loss(x, gram_matrix(style))
    assert loss.dim() == 0 and torch.isfinite(loss) and float(loss) > 0


@pytest.mark.parametrize("s", [255.0, 1 / 255])
def test_loss_weights_work_for_0_1_and_0_255_inputs_scale_invariance(s):
    """Rescaling both the image features and the targets by ``s`` leaves content and style
    losses unchanged, and the gradient w.r.t. the image-side features scales exactly by 1/s.

    Together this is why one set of content/style weights works whether the network sees
    0..1 or 0..255 pixel values: the loss landscape is the same up to the change of units.
    """
    f = _features(seed=11)
    p = _features(seed=12)  # content target features
    a = gram_matrix(_features(h=7, w=3, seed=13))  # style target

    def losses_and_grads(scale):
        x = (scale * f).requires_grad_(True)  # the image-side features, in the scaled units
        lc = content_loss(x, scale * p)
        (gc,) = torch.autograd.grad(lc, x)
        x = (scale * f).requires_grad_(True)
        ls = style_loss(x, scale**2 * a)  # Gram of features scaled by s scales by s^2
        (gs,) = torch.autograd.grad(ls, x)
        return lc.detach(), ls.detach(), gc, gs

    lc1, ls1, gc1, gs1 = losses_and_grads(1.0)
    lcs, lss, gcs, gss = losses_and_grads(s)
    assert float(lc1) > 0 and float(ls1) > 0
    torch.testing.assert_close(lcs, lc1, rtol=1e-12, atol=0)
    torch.testing.assert_close(lss, ls1, rtol=1e-12, atol=0)
    torch.testing.assert_close(gcs, gc1 / s, rtol=1e-10, atol=0)
    torch.testing.assert_close(gss, gs1 / s, rtol=1e-10, atol=0)


def test_style_target_scaled_like_features_is_the_gram_of_scaled_features():
    """The s^2 used above is exactly the Gram of the rescaled style features."""
    style = _features(h=7, w=3, seed=13)
    torch.testing.assert_close(gram_matrix(255 * style), 255**2 * gram_matrix(style))


def test_losses_are_differentiable_scalars():
    f = _features(dtype=torch.float32, seed=14).requires_grad_(True)
    p = _features(dtype=torch.float32, seed=15)
    loss = content_loss(f, p) + style_loss(f, gram_matrix(p))
    assert loss.dim() == 0
    loss.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and float(f.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- total variation


def test_total_variation_constant_image_is_zero():
    assert float(total_variation(torch.full((1, 3, 8, 9), 0.3))) == 0.0


def test_total_variation_horizontal_ramp():
    # x[h, w] = 0.1 * w: every horizontal difference is 0.1, every vertical one 0
    ramp = (0.1 * torch.arange(9, dtype=torch.float64)).view(1, 1, 1, 9).expand(1, 3, 8, 9)
    torch.testing.assert_close(total_variation(ramp), torch.tensor(0.01, dtype=torch.float64))


def test_total_variation_diagonal_ramp():
    # x[h, w] = a*w + b*h: horizontal differences a, vertical b -> a^2 + b^2
    a, b = 0.05, 0.02
    h, w = torch.meshgrid(torch.arange(6.0, dtype=torch.float64), torch.arange(7.0, dtype=torch.float64), indexing="ij")
    img = (a * w + b * h).expand(2, 3, 6, 7)
    torch.testing.assert_close(total_variation(img), torch.tensor(a**2 + b**2, dtype=torch.float64))


def test_total_variation_checkerboard():
    # alternating 0/1: every neighbour differs by 1 -> 1 + 1
    h, w = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    board = ((h + w) % 2).double().expand(1, 3, 6, 6)
    torch.testing.assert_close(total_variation(board), torch.tensor(2.0, dtype=torch.float64))


def test_module_exports_losses():
    for name in ("gram_matrix", "content_loss", "style_loss", "total_variation"):
        assert name in nst_utils.__all__

"""The "going further" helpers: colour preservation (luminance_transfer, match_color_histogram),
and style scale (scale_style_image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import nst_utils as nu
from nst_utils import ParameterError

# skimage.color.yiq_from_rgb, written out independently of nst_utils.
YIQ = torch.tensor([[0.299, 0.587, 0.114],
                    [0.59590059, -0.27455667, -0.32134392],
                    [0.21153661, -0.52273617, 0.31119955]], dtype=torch.float64)


def yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", YIQ.to(image.device), image.double())


def rand_image(device, h=24, w=32, b=1, seed=0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(device)


def mid_range_image(device, h, w, seed, centre=(0.5, 0.5, 0.5), spread=0.08) -> torch.Tensor:
    """Correlated colours well inside 0..1, so a colour transfer between two of them does not clip."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, 3, generator=g)
    img = torch.tensor(centre).view(1, 3, 1) + spread * (mix @ torch.randn(1, 3, h * w, generator=g)) / 3
    return img.reshape(1, 3, h, w).to(device)


def stats(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = image[0].reshape(3, -1).double().cpu().numpy()
    return x.mean(axis=1), np.cov(x, bias=True)


# --------------------------------------------------------------------------- luminance_transfer


def test_luminance_transfer_takes_luma_from_stylized_and_chroma_from_content(device):
    stylized = mid_range_image(device, 20, 30, seed=1, centre=(0.3, 0.5, 0.6))
    content = mid_range_image(device, 20, 30, seed=2, centre=(0.6, 0.45, 0.4))
    out = nu.luminance_transfer(stylized, content)
    assert out.shape == content.shape and out.device == stylized.device and out.dtype == stylized.dtype
    assert 0 < float(out.min()) and float(out.max()) < 1  # no clipping needed for these two
    torch.testing.assert_close(yiq(out)[:, 0], yiq(stylized)[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(yiq(out)[:, 1:], yiq(content)[:, 1:], atol=1e-5, rtol=0)


def test_luminance_transfer_identity_and_clipping(device):
    img = rand_image(device, seed=3)
    torch.testing.assert_close(nu.luminance_transfer(img, img), img, atol=1e-5, rtol=0)
    # white's luma with a saturated red's chroma leaves the RGB cube: the result is clipped into it
    red = torch.zeros(1, 3, 4, 4, device=device)
    red[:, 0] = 1
    out = nu.luminance_transfer(torch.ones(1, 3, 4, 4, device=device), red)
    assert float(out.min()) >= 0 and float(out.max()) == 1.0


@pytest.mark.parametrize("stylized, content, match", [
    ((1, 3, 24, 32), (1, 3, 24, 30), "same shape"),
    ((3, 24, 32), (3, 24, 32), r"stylized: expected a float image tensor \[B, 3, H, W\]"),
    ((1, 3, 24, 32), (1, 4, 24, 32), r"content: expected a float image tensor \[B, 3, H, W\]"),
])
def test_luminance_transfer_rejects_mismatched_or_non_image_tensors(device, stylized, content, match):
    with pytest.raises(ParameterError, match=match):
        nu.luminance_transfer(torch.rand(stylized, device=device), torch.rand(content, device=device))


# --------------------------------------------------------------------------- match_color_histogram


def test_match_color_histogram_matches_target_mean_and_covariance(device):
    source = mid_range_image(device, 32, 32, seed=6, centre=(0.3, 0.6, 0.5), spread=0.05)
    target = mid_range_image(device, 16, 24, seed=7, centre=(0.55, 0.45, 0.4), spread=0.06)  # another size
    out = nu.match_color_histogram(source, target, eps=1e-8)
    assert out.shape == source.shape and out.device == source.device and out.dtype == source.dtype
    assert 0 < float(out.min()) and float(out.max()) < 1  # nothing clipped, so the statistics match exactly
    (mean_o, cov_o), (mean_t, cov_t), (_, cov_s) = stats(out), stats(target), stats(source)
    np.testing.assert_allclose(mean_o, mean_t, atol=1e-5)
    np.testing.assert_allclose(cov_o, cov_t, atol=1e-6)
    assert np.abs(cov_s - cov_t).max() > 10 * 1e-6  # they did differ before


def test_match_color_histogram_of_an_image_with_itself_is_the_identity(device):
    img = rand_image(device, seed=11)
    for eps in (0, 1e-5):
        torch.testing.assert_close(nu.match_color_histogram(img, img, eps=eps), img, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["flat", "grey"])
@pytest.mark.parametrize("eps", [0, 1e-5])
def test_match_color_histogram_handles_sources_without_colour_spread(device, kind, eps):
    """A flat picture has no spread to stretch, a grey one none across colours: no NaN, and the mean moves."""
    ramp = torch.linspace(0.2, 0.6, 64, device=device).view(1, 1, 8, 8)
    source = torch.full((1, 3, 8, 8), 0.2, device=device) if kind == "flat" else ramp.expand(1, 3, 8, 8)
    target = mid_range_image(device, 12, 12, seed=8, centre=(0.6, 0.4, 0.3))
    out = nu.match_color_histogram(source, target, eps=eps)
    assert torch.isfinite(out).all() and 0 <= float(out.min()) and float(out.max()) <= 1
    np.testing.assert_allclose(stats(out)[0], stats(target)[0], atol=1e-5)


def test_match_color_histogram_clips_into_range(device):
    out = nu.match_color_histogram(rand_image(device, seed=9), rand_image(device, seed=10) * 3 - 1)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


@pytest.mark.parametrize("source, target, kwargs, match", [
    ((3, 3, 8, 8), (2, 3, 8, 8), {}, "batch of 2; use 1 or 3"),
    ((1, 3, 8, 8), (1, 3, 8, 8), dict(eps=-1), "eps=-1"),
    ((1, 3, 8, 8), (1, 3, 8, 8), dict(eps=math.nan), "eps=nan"),
    ((1, 1, 8, 8), (1, 3, 8, 8), {}, "source: expected"),
    ((1, 3, 8, 8), (3, 8, 8), {}, "target_colors: expected"),
])
def test_match_color_histogram_rejects_bad_arguments(device, source, target, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        nu.match_color_histogram(torch.rand(source, device=device), torch.rand(target, device=device), **kwargs)


# --------------------------------------------------------------------------- scale_style_image


def test_scale_style_image_sizes():
    style = Image.new("RGB", (300, 200), (10, 20, 30))
    assert nu.scale_style_image(style, (512, 384)).size == (512, 341)  # long side = content's long side
    assert nu.scale_style_image(style, (384, 512)).size == (512, 341)  # content portrait: still its long side
    assert nu.scale_style_image(style, (512, 384), scale=0.5).size == (256, 171)
    assert nu.scale_style_image(style, (100, 80), scale=2).size == (200, 133)
    same = nu.scale_style_image(style, (300, 120))
    assert same.size == (300, 200) and same is not style
    out = nu.scale_style_image(Image.new("L", (90, 180)), (400, 300), scale=1.5)
    assert out.size == (300, 600) and out.mode == "RGB"
    assert style.size == (300, 200)  # input untouched


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=0), "scale=0: must be a number > 0"),
    (dict(scale=-1.0), "scale=-1.0"),
    (dict(scale=math.inf), "scale=inf"),
    (dict(scale=math.nan), "scale=nan"),
    (dict(scale=0.05), r"scale=0\.05 makes the style image 26x17 px; its short side must be at least 32 px"),
    (dict(scale=0.05, name="style_scales"), r"style_scales=0\.05 makes"),  # the notebook's setting is named
    (dict(scale="big", name="style_scales"), "style_scales='big'"),
    (dict(content_size=(0, 100)), r"content_size=\(0, 100\)"),
    (dict(content_size=(512,)), r"content_size=\(512,\)"),
])
def test_scale_style_image_errors_name_the_setting(kwargs, match):
    kwargs.setdefault("content_size", (512, 384))
    with pytest.raises(ParameterError, match=match):
        nu.scale_style_image(Image.new("RGB", (300, 200)), **kwargs)

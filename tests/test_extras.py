"""Colour preservation in "Going further": the notebook's luminance_transfer and
match_color_histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# skimage.color.yiq_from_rgb, written out independently of the notebook.
YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.59590059, -0.27455667, -0.32134392],
        [0.21153661, -0.52273617, 0.31119955],
    ],
    dtype=torch.float64,
)


def yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", YIQ.to(image.device), image.double())


def rand_image(device, h=24, w=32, b=1, seed=0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(device)


def mid_range_image(device, h, w, seed, centre=(0.5, 0.5, 0.5), spread=0.08) -> torch.Tensor:
    """Correlated colours well inside 0..1, so a colour transfer between two of them does not
    clip."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, 3, generator=g)
    img = (
        torch.tensor(centre).view(1, 3, 1)
        + spread * (mix @ torch.randn(1, 3, h * w, generator=g)) / 3
    )
    return img.reshape(1, 3, h, w).to(device)


def stats(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = image[0].reshape(3, -1).double().cpu().numpy()
    return x.mean(axis=1), np.cov(x, bias=True)


# --------------------------------------------------------------------------- luminance_transfer


def test_luminance_transfer_takes_luma_from_stylized_and_chroma_from_content(nb, device):
    stylized = mid_range_image(device, 20, 30, seed=1, centre=(0.3, 0.5, 0.6))
    content = mid_range_image(device, 20, 30, seed=2, centre=(0.6, 0.45, 0.4))
    out = nb["luminance_transfer"](stylized, content)
    assert (
        out.shape == content.shape and out.device == stylized.device and out.dtype == stylized.dtype
    )
    assert 0 < float(out.min()) and float(out.max()) < 1  # no clipping needed for these two
    torch.testing.assert_close(yiq(out)[:, 0], yiq(stylized)[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(yiq(out)[:, 1:], yiq(content)[:, 1:], atol=1e-5, rtol=0)


def test_luminance_transfer_identity_and_clipping(nb, device):
    img = rand_image(device, seed=3)
    torch.testing.assert_close(nb["luminance_transfer"](img, img), img, atol=1e-5, rtol=0)
    # white's luma with a saturated red's chroma leaves the RGB cube: the result is clipped into it
    red = torch.zeros(1, 3, 4, 4, device=device)
    red[:, 0] = 1
    out = nb["luminance_transfer"](torch.ones(1, 3, 4, 4, device=device), red)
    assert float(out.min()) >= 0 and float(out.max()) == 1.0


# --------------------------------------------------------------------------- match_color_histogram


def test_match_color_histogram_matches_target_mean_and_covariance(nb, device):
    source = mid_range_image(device, 32, 32, seed=6, centre=(0.3, 0.6, 0.5), spread=0.05)
    target = mid_range_image(
        device, 16, 24, seed=7, centre=(0.55, 0.45, 0.4), spread=0.06
    )  # another size
    out = nb["match_color_histogram"](source, target, eps=1e-8)
    assert out.shape == source.shape and out.device == source.device and out.dtype == source.dtype
    assert (
        0 < float(out.min()) and float(out.max()) < 1
    )  # nothing clipped, so the statistics match exactly
    (mean_o, cov_o), (mean_t, cov_t), (_, cov_s) = stats(out), stats(target), stats(source)
    np.testing.assert_allclose(mean_o, mean_t, atol=1e-5)
    np.testing.assert_allclose(cov_o, cov_t, atol=1e-6)
    assert np.abs(cov_s - cov_t).max() > 10 * 1e-6  # they did differ before


def test_match_color_histogram_of_an_image_with_itself_is_the_identity(nb, device):
    img = rand_image(device, seed=11)
    for eps in (0, 1e-5):
        torch.testing.assert_close(
            nb["match_color_histogram"](img, img, eps=eps), img, atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("kind", ["flat", "grey"])
@pytest.mark.parametrize("eps", [0, 1e-5])
def test_match_color_histogram_handles_sources_without_colour_spread(nb, device, kind, eps):
    """A flat picture has no spread to stretch, a grey one none across colours: no NaN, and the
    mean moves."""
    ramp = torch.linspace(0.2, 0.6, 64, device=device).view(1, 1, 8, 8)
    source = (
        torch.full((1, 3, 8, 8), 0.2, device=device) if kind == "flat" else ramp.expand(1, 3, 8, 8)
    )
    target = mid_range_image(device, 12, 12, seed=8, centre=(0.6, 0.4, 0.3))
    out = nb["match_color_histogram"](source, target, eps=eps)
    assert torch.isfinite(out).all() and 0 <= float(out.min()) and float(out.max()) <= 1
    np.testing.assert_allclose(stats(out)[0], stats(target)[0], atol=1e-5)


def test_match_color_histogram_clips_into_range(nb, device):
    out = nb["match_color_histogram"](
        rand_image(device, seed=9), rand_image(device, seed=10) * 3 - 1
    )
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0

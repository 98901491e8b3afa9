"""Tests of the "going further" helpers in nst_utils: colour preservation, style blending,
style scale, coarse-to-fine sizes, comparison figures and the notebook check."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import nst_utils as nu
from nst_utils import ParameterError

# skimage.color.yiq_from_rgb, written out independently of nst_utils.
SKIMAGE_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.59590059, -0.27455667, -0.32134392],
                        [0.21153661, -0.52273617, 0.31119955]])


def rand_image(h: int = 24, w: int = 32, b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def mid_range_image(h: int, w: int, seed: int, centre=(0.5, 0.5, 0.5), spread: float = 0.08) -> torch.Tensor:
    """Correlated colours well inside 0..1, so a colour transfer between two of them does not clip."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, 3, generator=g)
    noise = torch.randn(1, 3, h * w, generator=g)
    img = torch.tensor(centre).view(1, 3, 1) + spread * (mix @ noise) / 3
    return img.reshape(1, 3, h, w).float()


def stats_np(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = image[0].reshape(3, -1).double().numpy()
    return x.mean(axis=1), np.cov(x, bias=True)


# --------------------------------------------------------------------------- YIQ


def test_rgb_to_yiq_matches_reference_matrix_and_round_trips():
    img = rand_image(b=2)
    yiq = nu.rgb_to_yiq(img)
    expected = np.einsum("ij,bjhw->bihw", SKIMAGE_YIQ, img.double().numpy())
    assert yiq.shape == img.shape and yiq.dtype == torch.float32
    np.testing.assert_allclose(yiq.numpy(), expected, atol=1e-6)
    torch.testing.assert_close(nu.yiq_to_rgb(yiq), img, atol=1e-6, rtol=0)


def test_yiq_of_grey_has_no_chroma_and_white_has_luma_one():
    grey = torch.full((1, 3, 4, 4), 0.4)
    yiq = nu.rgb_to_yiq(grey)
    torch.testing.assert_close(yiq[:, 0], torch.full((1, 4, 4), 0.4))
    assert yiq[:, 1:].abs().max() < 1e-6
    assert abs(float(nu.rgb_to_yiq(torch.ones(1, 3, 1, 1))[0, 0]) - 1.0) < 1e-6


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(1, 4, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
def test_yiq_rejects_non_image_tensors(bad):
    with pytest.raises(ParameterError):
        nu.rgb_to_yiq(bad)


# --------------------------------------------------------------------------- luminance transfer


def test_luminance_transfer_takes_luma_from_stylized_and_chroma_from_content():
    stylized = mid_range_image(20, 30, seed=1, centre=(0.3, 0.5, 0.6))
    content = mid_range_image(20, 30, seed=2, centre=(0.6, 0.45, 0.4))
    out = nu.luminance_transfer(stylized, content)
    assert out.shape == content.shape and 0 <= out.min() and out.max() <= 1
    unclipped = nu.yiq_to_rgb(torch.cat([nu.rgb_to_yiq(stylized)[:, :1], nu.rgb_to_yiq(content)[:, 1:]], 1))
    assert 0 < unclipped.min() and unclipped.max() < 1, "test images should not need clipping"
    out_yiq = nu.rgb_to_yiq(out)
    torch.testing.assert_close(out_yiq[:, 0], nu.rgb_to_yiq(stylized)[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_yiq[:, 1:], nu.rgb_to_yiq(content)[:, 1:], atol=1e-5, rtol=0)


def test_luminance_transfer_clips_and_keeps_identity():
    img = rand_image(seed=3)
    torch.testing.assert_close(nu.luminance_transfer(img, img), img, atol=1e-5, rtol=0)
    # white luma with a saturated red's chroma leaves the RGB cube: the result is clipped
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1
    out = nu.luminance_transfer(torch.ones(1, 3, 4, 4), red)
    assert out.min() >= 0 and out.max() <= 1


def test_luminance_transfer_rejects_size_mismatch():
    with pytest.raises(ParameterError, match="same shape"):
        nu.luminance_transfer(rand_image(24, 32), rand_image(24, 30))


# --------------------------------------------------------------------------- colour histogram matching


@pytest.mark.parametrize("method", ["sqrt", "cholesky"])
def test_color_transfer_matches_target_mean_and_covariance(method):
    source = rand_image(40, 50, seed=4) ** 2  # skewed distribution
    source[:, 1] = 0.5 * source[:, 0] + 0.5 * source[:, 1]  # correlate R and G
    target = mid_range_image(30, 20, seed=5, centre=(0.6, 0.4, 0.3))  # different size on purpose
    out = nu._color_transfer_unclipped(source, target, eps=1e-7, method=method)
    assert out.shape == source.shape
    mean_o, cov_o = stats_np(out)
    mean_t, cov_t = stats_np(target)
    np.testing.assert_allclose(mean_o, mean_t, atol=1e-3)
    np.testing.assert_allclose(cov_o, cov_t, atol=1e-3)
    assert np.abs(cov_o - cov_t).max() < 0.05 * np.abs(cov_t).max()


def test_match_color_histogram_public_result_in_range_and_matching_when_unclipped():
    source = mid_range_image(32, 32, seed=6, centre=(0.3, 0.6, 0.5), spread=0.05)
    target = mid_range_image(16, 24, seed=7, centre=(0.55, 0.45, 0.4), spread=0.06)
    out = nu.match_color_histogram(source, target, eps=1e-8)
    raw = nu._color_transfer_unclipped(source, target, eps=1e-8)
    assert 0 < raw.min() and raw.max() < 1
    torch.testing.assert_close(out, raw)
    mean_o, cov_o = stats_np(out)
    mean_t, cov_t = stats_np(target)
    np.testing.assert_allclose(mean_o, mean_t, atol=1e-4)
    np.testing.assert_allclose(cov_o, cov_t, atol=1e-4)


def test_match_color_histogram_clips_and_handles_flat_source():
    flat = torch.full((1, 3, 8, 8), 0.2)
    target = rand_image(seed=8)
    out = nu.match_color_histogram(flat, target)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # a flat image has no spread to stretch: it only moves to the target's mean colour
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), stats_np(target)[0], atol=1e-5)
    extreme = nu.match_color_histogram(rand_image(seed=9), rand_image(seed=10) * 3 - 1)
    assert extreme.min() >= 0 and extreme.max() <= 1


def test_match_color_histogram_self_is_identity_and_bad_args():
    img = rand_image(seed=11)
    torch.testing.assert_close(nu.match_color_histogram(img, img, eps=0), img, atol=1e-5, rtol=0)
    with pytest.raises(ParameterError):
        nu.match_color_histogram(img, img, method="lu")
    with pytest.raises(ParameterError):
        nu.match_color_histogram(img, img, eps=-1)
    with pytest.raises(ParameterError):
        nu.match_color_histogram(rand_image(b=3), rand_image(b=2))


# --------------------------------------------------------------------------- blend_grams


def grams_of(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"relu1_1": nu.gram_matrix(torch.rand(1, 4, 6, 6, generator=g)),
            "relu2_1": nu.gram_matrix(torch.rand(1, 8, 3, 3, generator=g))}


def test_blend_grams_one_zero_is_exactly_the_first_style():
    a, b = grams_of(1), grams_of(2)
    out = nu.blend_grams([a, b], [1, 0])
    assert list(out) == ["relu1_1", "relu2_1"]
    for k in a:
        assert torch.equal(out[k], a[k])
    # weights are normalised, and a NaN in an unused style does not leak in
    b_nan = {k: torch.full_like(v, float("nan")) for k, v in b.items()}
    out = nu.blend_grams([a, b_nan], [3.0, 0.0])
    for k in a:
        assert torch.equal(out[k], a[k])


def test_blend_grams_half_half_is_the_mean_and_weights_are_normalised():
    a, b, c = grams_of(1), grams_of(2), grams_of(3)
    out = nu.blend_grams([a, b], [0.5, 0.5])
    for k in a:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2)
    out = nu.blend_grams([a, b, c], [2, 1, 1])
    for k in a:
        torch.testing.assert_close(out[k], 0.5 * a[k] + 0.25 * b[k] + 0.25 * c[k])
    assert nu.blend_grams([a], [7])["relu1_1"].equal(a["relu1_1"])


@pytest.mark.parametrize("grams, weights, match", [
    ("ab", [1], "weights"),
    ("ab", [1, -0.5], ">= 0"),
    ("ab", [0, 0], "> 0"),
    ("ab", [1, math.nan], ">= 0"),
    ("", [], "at least one"),
    ("ax", [1, 1], "layers"),
    ("ay", [1, 1], "shape"),
])
def test_blend_grams_rejects_bad_input(grams, weights, match):
    pool = {"a": grams_of(1), "b": grams_of(2),
            "x": {"relu1_1": grams_of(3)["relu1_1"], "relu3_1": grams_of(3)["relu2_1"]},
            "y": {"relu1_1": grams_of(3)["relu1_1"], "relu2_1": torch.eye(5).unsqueeze(0)}}
    with pytest.raises(ParameterError, match=match):
        nu.blend_grams([pool[c] for c in grams], weights)


# --------------------------------------------------------------------------- scale_style_image


def test_scale_style_image_sizes():
    style = Image.new("RGB", (300, 200), (10, 20, 30))
    assert nu.scale_style_image(style, (512, 384)).size == (512, 341)  # long side = content's long side
    assert nu.scale_style_image(style, (384, 512)).size == (512, 341)  # content portrait: still its long side
    assert nu.scale_style_image(style, (512, 384), scale=0.5).size == (256, 171)
    assert nu.scale_style_image(style, (100, 80), scale=2).size == (200, 133)
    same = nu.scale_style_image(style, (300, 120))
    assert same.size == (300, 200) and same is not style
    portrait = Image.new("L", (90, 180))
    out = nu.scale_style_image(portrait, (400, 300), scale=1.5)
    assert out.size == (300, 600) and out.mode == "RGB"
    assert style.size == (300, 200)  # input untouched


def test_scale_style_image_errors():
    style = Image.new("RGB", (300, 200))
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ParameterError, match="scale"):
            nu.scale_style_image(style, (512, 384), scale=bad)
    with pytest.raises(ParameterError, match="32 px"):
        nu.scale_style_image(style, (512, 384), scale=0.05)  # 26x17 px
    with pytest.raises(ParameterError, match="16 px"):
        nu.scale_style_image(style, (100, 100), scale=0.1, min_size=16)
    assert nu.scale_style_image(style, (100, 100), scale=0.3, min_size=16).size == (30, 20)
    with pytest.raises(ParameterError, match="content_size"):
        nu.scale_style_image(style, (0, 100))


# --------------------------------------------------------------------------- resize_tensor, pyramid_sizes


def test_resize_tensor_shapes_range_and_device():
    img = rand_image(40, 60, seed=12)
    small = nu.resize_tensor(img, (20, 30))
    big = nu.resize_tensor(img, (80, 90))
    assert small.shape == (1, 3, 20, 30) and big.shape == (1, 3, 80, 90)
    for t in (small, big):
        assert t.min() >= 0 and t.max() <= 1 and t.device == img.device and t.dtype == img.dtype
    same = nu.resize_tensor(img, (40, 60))
    assert torch.equal(same, img) and same.data_ptr() != img.data_ptr()
    # antialiased 3x shrink of a checkerboard is nearly flat grey; plain bilinear would alias to 0s and 1s
    checker = ((torch.arange(48).view(-1, 1) + torch.arange(60)) % 2).float().expand(1, 3, 48, 60)
    shrunk = nu.resize_tensor(checker, (16, 20))
    assert (shrunk - 0.5).abs().max() < 0.02


def test_resize_tensor_is_differentiable_and_validates():
    img = rand_image(16, 16).requires_grad_()
    nu.resize_tensor(img, (8, 12)).sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    for bad in [(0, 10), (10,), (10.5, 10)]:
        with pytest.raises(ParameterError):
            nu.resize_tensor(rand_image(), bad)


def test_pyramid_sizes():
    assert nu.pyramid_sizes((512, 384), 1) == [(512, 384)]
    assert nu.pyramid_sizes((512, 384), 3) == [(128, 96), (256, 192), (512, 384)]
    assert nu.pyramid_sizes((500, 375), 2, factor=1.5) == [(333, 250), (500, 375)]
    # clamped at min_side (aspect kept), repeated sizes dropped
    assert nu.pyramid_sizes((256, 128), 4) == [(64, 32), (128, 64), (256, 128)]
    assert nu.pyramid_sizes((256, 128), 4, min_side=16) == [(32, 16), (64, 32), (128, 64), (256, 128)]
    assert nu.pyramid_sizes((32, 40), 3) == [(32, 40)]
    for hw, levels in [((1000, 700), 5), ((333, 517), 4), ((64, 999), 6)]:
        sizes = nu.pyramid_sizes(hw, levels)
        assert sizes[-1] == hw and len(sizes) <= levels
        assert all(min(s) >= 32 for s in sizes)
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


@pytest.mark.parametrize("kwargs", [dict(levels=0), dict(levels=-1), dict(levels=2.0), dict(levels=2, factor=1.0),
                                    dict(levels=2, full_hw=(20, 100))])
def test_pyramid_sizes_errors(kwargs):
    kwargs.setdefault("full_hw", (256, 256))
    with pytest.raises(ParameterError):
        nu.pyramid_sizes(**kwargs)


# --------------------------------------------------------------------------- figures


def test_save_figure_writes_png_and_never_overwrites(tmp_path):
    import matplotlib.pyplot as plt

    fig = nu.comparison_figure([rand_image(32, 48), Image.new("RGB", (40, 40), "red")], ["content", "style"],
                               suptitle="Compare", height=1.0)
    try:
        assert fig._suptitle.get_text() == "Compare"
        assert [ax.get_title() for ax in fig.axes] == ["content", "style"]
        first = nu.save_figure(fig, tmp_path / "out" / "compare.png", dpi=50)
        assert first == tmp_path / "out" / "compare.png"
        before = first.read_bytes()
        assert before.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(first) as im:
            assert im.format == "PNG" and im.width > 10
        second = nu.save_figure(fig, first, dpi=100)
        assert second == tmp_path / "out" / "compare-1.png" and second.is_file()
        assert first.read_bytes() == before  # untouched
        third = nu.save_figure(fig, tmp_path / "out" / "compare", overwrite=True)  # suffix added, overwritten
        assert third == first and first.read_bytes() != before
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare-1.png", "compare.png"]  # no temp files
        with pytest.raises(ParameterError, match="PNG"):
            nu.save_figure(fig, tmp_path / "x.jpg")
        with pytest.raises(ParameterError):
            nu.save_figure(fig, first, overwrite=True, protect=[first])
    finally:
        plt.close(fig)


def test_comparison_figure_requires_one_title_per_image():
    with pytest.raises(ParameterError, match="titles"):
        nu.comparison_figure([rand_image(), rand_image()], ["only one"])
    with pytest.raises(ParameterError):
        nu.comparison_figure([], [])


# --------------------------------------------------------------------------- in_notebook


def fake_ipython(monkeypatch, shell_class_name: str | None) -> None:
    module = types.ModuleType("IPython")
    shell = type(shell_class_name, (), {})() if shell_class_name else None
    module.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", module)


def test_in_notebook_false_under_pytest(monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    assert nu.in_notebook() is False


def test_in_notebook_detects_kernel_and_honours_nst_headless(monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    fake_ipython(monkeypatch, "ZMQInteractiveShell")
    assert nu.in_notebook() is True
    for value in ("0", "false", ""):
        monkeypatch.setenv("NST_HEADLESS", value)
        assert nu.in_notebook() is True
    monkeypatch.setenv("NST_HEADLESS", "1")
    assert nu.in_notebook() is False
    monkeypatch.delenv("NST_HEADLESS")
    fake_ipython(monkeypatch, "TerminalInteractiveShell")
    assert nu.in_notebook() is False
    fake_ipython(monkeypatch, None)  # IPython imported but no shell running
    assert nu.in_notebook() is False
    monkeypatch.delitem(sys.modules, "IPython")
    assert nu.in_notebook() is False

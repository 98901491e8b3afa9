"""Broken inputs and nonsense parameters through the public functions, and mismatched image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import nst_utils
from nst_utils import FrameRecorder, ImageError, Monitor, NSTError, ParameterError


def _load_error(path, **kwargs) -> str:
    """load_image must raise ImageError (an NSTError); return its message."""
    with pytest.raises(ImageError) as info:
        nst_utils.load_image(path, **kwargs)
    assert isinstance(info.value, NSTError) and isinstance(info.value, ValueError)
    return str(info.value)


@pytest.fixture(autouse=True)
def strict_pillow(monkeypatch):
    """Pillow's defaults, whatever another module may have changed."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS or 89_478_485)


# --------------------------------------------------------------------------- broken files


def test_missing_path(tmp_path):
    msg = _load_error(tmp_path / "no_such_picture.jpg")
    assert "no_such_picture.jpg" in msg and "Check the path" in msg


def test_directory(tmp_path):
    folder = tmp_path / "my_pictures"
    folder.mkdir()
    msg = _load_error(folder)
    assert "my_pictures" in msg and "directory" in msg and "Pass the path" in msg


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 20)
    msg = _load_error(path)
    assert "notes.jpg" in msg and "Use a JPEG, PNG or WebP" in msg


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    msg = _load_error(path)
    assert "empty.png" in msg and "Use a JPEG" in msg


@pytest.mark.parametrize("name", ["half.jpg", "half.png"])
def test_truncated_file(tmp_path, name):
    rng = np.random.default_rng(0)
    full = tmp_path / f"full_{name}"
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    msg = _load_error(path)
    assert name in msg and "truncated or corrupt" in msg and "Re-download or re-export" in msg
    # the full file is fine
    assert nst_utils.load_image(full).size == (200, 200)


def test_image_smaller_than_min_side(tmp_path):
    side = nst_utils.MIN_IMAGE_SIDE - 1
    path = tmp_path / "thumb.png"
    Image.new("RGB", (100, side), (10, 20, 30)).save(path)
    msg = _load_error(path)
    assert "thumb.png" in msg and f"100x{side}" in msg and "Use a larger image" in msg
    # exactly the minimum works
    Image.new("RGB", (100, nst_utils.MIN_IMAGE_SIDE)).save(path)
    assert nst_utils.load_image(path).size == (100, nst_utils.MIN_IMAGE_SIDE)


def test_decompression_bomb_own_limit(tmp_path, monkeypatch, make_image):
    path = make_image("huge.png", size=(64, 48))  # 3072 pixels
    monkeypatch.setattr(nst_utils, "MAX_IMAGE_PIXELS", 1000)
    msg = _load_error(path)
    assert "huge.png" in msg and "too large" in msg and "shrink it" in msg
    assert "nst_utils.MAX_IMAGE_PIXELS" in msg  # the limit that actually fired, so the advice works


@pytest.mark.parametrize("limit", [2000, 1000])  # 3072 px: Pillow warns above the limit, refuses above twice it
def test_decompression_bomb_pillow_limit(tmp_path, monkeypatch, make_image, limit):
    path = make_image("bomb.png", size=(64, 48))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    msg = _load_error(path)
    assert "bomb.png" in msg and "shrink it" in msg and "PIL.Image.MAX_IMAGE_PIXELS" in msg


def test_broken_file_does_not_leave_warning_filters_changed(tmp_path):
    """load_image turns Pillow's bomb warning into an error only inside itself."""
    import warnings

    before = list(warnings.filters)
    path = tmp_path / "x.jpg"
    path.write_text("nope")
    _load_error(path)
    assert list(warnings.filters) == before


# --------------------------------------------------------------------------- parameter nonsense


@pytest.mark.parametrize("max_size", [-5, 0, 10])
def test_load_image_bad_max_size(make_image, max_size):
    path = make_image("ok.png")
    with pytest.raises(ParameterError, match="max_size"):
        nst_utils.load_image(path, max_size=max_size)


def test_frame_recorder_zero_ok_negative_bad():
    assert FrameRecorder(0).every == 0
    with pytest.raises(ParameterError):
        FrameRecorder(-1)


def test_monitor_zero_evals():
    with pytest.raises(ParameterError):
        Monitor(num_evals=0)


def test_load_vgg19_unknown_weights():
    with pytest.raises(ParameterError) as info:
        nst_utils.load_vgg19("imagenet")
    assert "caffe" in str(info.value) and "torchvision" in str(info.value)


def test_pooling_median():
    with pytest.raises(ParameterError, match="pooling"):
        nst_utils.load_vgg19("caffe", pooling="median")
    with pytest.raises(ParameterError, match="pooling"):
        nst_utils.vgg19_caffe(pooling="median")


def test_pick_device_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParameterError, match="cuda"):
        nst_utils.pick_device("cuda")
    with pytest.raises(ParameterError):
        nst_utils.pick_device("cuda:0")
    assert nst_utils.pick_device("auto").type in ("cpu", "mps")


def test_pick_device_mps_without_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ParameterError, match="mps"):
        nst_utils.pick_device("mps")


@pytest.mark.parametrize("name", ["gpu", "nonsense", ""])
def test_pick_device_not_a_device(name):
    with pytest.raises(ParameterError, match="auto"):
        nst_utils.pick_device(name)


# --------------------------------------------------------------------------- different sizes


STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
USED_LAYERS = (*STYLE_LAYERS, CONTENT_LAYER)


def test_content_and_style_of_different_sizes_and_aspect_ratios(caffe_vgg, make_image, activations):
    """A landscape 64x40 content image and a portrait 50x90 style image: Gram matrices do not
    depend on the spatial size, so the style loss is defined and differentiable w.r.t. an image
    of the content's shape."""
    content = nst_utils.image_to_tensor(nst_utils.load_image(make_image("content.jpg", size=(64, 40), seed=1)))
    style = nst_utils.image_to_tensor(nst_utils.load_image(make_image("style.png", size=(50, 90), seed=2)))
    assert content.shape == (1, 3, 40, 64) and style.shape == (1, 3, 90, 50)

    with torch.no_grad():
        style_grams = {k: nst_utils.gram_matrix(v) for k, v in activations(caffe_vgg, style, USED_LAYERS).items() if k in STYLE_LAYERS}
        content_target = activations(caffe_vgg, content, USED_LAYERS)[CONTENT_LAYER]
    assert style_grams["relu5_1"].shape == (1, 512, 512)

    x = content.clone().requires_grad_(True)
    feats = activations(caffe_vgg, x, USED_LAYERS)
    assert feats["relu5_1"].shape == (1, 512, 2, 4)  # 40x64 halved four times
    s_loss = sum(nst_utils.style_loss(feats[k], style_grams[k]) for k in STYLE_LAYERS)
    c_loss = nst_utils.content_loss(feats[CONTENT_LAYER], content_target)
    assert torch.isfinite(s_loss) and float(s_loss.detach()) > 0
    assert float(c_loss.detach()) == pytest.approx(0.0, abs=1e-6)  # x starts as the content image
    s_loss.backward()
    assert x.grad is not None and x.grad.shape == content.shape
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


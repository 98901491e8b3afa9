"""Broken image files and nonsense load_image arguments: each gives an ImageError or ParameterError
that names the file or setting, the problem, and what to do."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

import nst_utils
from nst_utils import ImageError, NSTError, ParameterError


def _load_error(path, **kwargs) -> str:
    """load_image must raise ImageError (an NSTError and a ValueError); return its message."""
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
    assert "no_such_picture.jpg" in msg


def test_folder(tmp_path):
    (tmp_path / "my_pictures").mkdir()
    msg = _load_error(tmp_path / "my_pictures")
    assert "my_pictures" in msg


@pytest.mark.parametrize(
    "name, data",
    [
        ("notes.jpg", b"this is not a picture\n" * 20),  # a text file with an image's name
        ("empty.png", b""),  # zero bytes
    ],
)
def test_not_an_image(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    msg = _load_error(tmp_path / name)
    assert name in msg and "PNG" in msg  # the file, and what it may be


@pytest.mark.parametrize("name", ["half.jpg", "half.png"])
def test_truncated_file(tmp_path, name):
    full = tmp_path / f"full_{name}"
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(full)
    data = full.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    msg = _load_error(tmp_path / name)
    assert name in msg
    assert nst_utils.load_image(full).size == (200, 200)  # the whole file is fine


def test_image_smaller_than_min_side(tmp_path):
    side = nst_utils.MIN_IMAGE_SIDE - 1
    path = tmp_path / "thumb.png"
    Image.new("RGB", (100, side), (10, 20, 30)).save(path)
    msg = _load_error(path)
    assert "thumb.png" in msg and f"100x{side}" in msg
    Image.new("RGB", (100, nst_utils.MIN_IMAGE_SIDE)).save(path)  # exactly the minimum works
    assert nst_utils.load_image(path).size == (100, nst_utils.MIN_IMAGE_SIDE)


@pytest.mark.parametrize("limit", [2000, 1000])  # 3072 px: Pillow warns above, refuses above twice
def test_decompression_bomb_pillow_limit(monkeypatch, make_image, limit):
    path = make_image("bomb.png", size=(64, 48))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    msg = _load_error(path)
    assert "bomb.png" in msg and "PIL.Image.MAX_IMAGE_PIXELS" in msg  # the file, the knob


def test_broken_file_leaves_warning_filters_unchanged(tmp_path):
    """load_image turns Pillow's bomb warning into an error only inside itself."""
    before = list(warnings.filters)
    (tmp_path / "x.jpg").write_text("nope")
    _load_error(tmp_path / "x.jpg")
    assert list(warnings.filters) == before


# --------------------------------------------------------------------------- nonsense arguments


@pytest.mark.parametrize("max_size", [-5, 0, 10, 64.0, True, "256"])
def test_load_image_bad_max_size(make_image, max_size):
    with pytest.raises(ParameterError, match=f"max_size={max_size!r}"):
        nst_utils.load_image(make_image("ok.png"), max_size=max_size)

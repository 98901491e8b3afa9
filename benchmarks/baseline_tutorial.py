"""The official PyTorch neural-style tutorial's *algorithm*, re-implemented as a benchmark baseline.

The official tutorial (pytorch.org/tutorials/advanced/neural_style_tutorial) builds
its model by surgery: it deep-copies VGG19's convolutional part, walks its layers
into a fresh ``nn.Sequential`` and splices a loss module in right after every layer
it listens to, then cuts off everything after the last loss module. A loss module
stores its target when it is built and, in ``forward``, saves its loss as an
attribute and passes its input on unchanged. The image is optimised with
``torch.optim.LBFGS`` at its default settings (lr 1, 20 iterations per ``step``,
history 100, no line search), and the closure clamps the pixels to 0..1 before
every evaluation.

This file is our own code for that algorithm. To compare *algorithms* and nothing
else, it uses the notebook's pieces wherever the tutorial's choice would change
the problem being solved rather than the way it is solved:

* the network: ``nst_utils.load_vgg19("caffe")`` (its first child ``preprocess``
  is the input normalisation; the tutorial also puts its normalisation first);
* the losses: ``nst_utils.content_loss`` and ``nst_utils.style_loss`` with
  ``nst_utils.gram_matrix`` targets, combined as in the notebook's ``total_loss``:
  ``content_weight * mean(content losses) + style_weight * mean(style losses)``;
* the images: ``nst_utils.load_image(path, size)``, optimisation starting from the
  content image.

So both runs minimise the very same function of the image; their loss histories
can be compared number for number.

Use it from Python (:func:`run_baseline`) or from the command line::

    python benchmarks/baseline_tutorial.py --size 256 --evals 300 --json-out baseline.json
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nst_utils as nst  # noqa: E402
from benchmarks.measure import device_name, peak_memory_mb  # noqa: E402

__all__ = [
    "ContentLoss",
    "StyleLoss",
    "build_model",
    "run_baseline",
    "DEFAULT_CONTENT_LAYERS",
    "DEFAULT_STYLE_LAYERS",
]

#: The notebook's default layers (run_benchmark.py reads the notebook's own and passes them in).
DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class ContentLoss(nn.Module):
    """Transparent layer: keeps the content target; ``forward`` sets ``self.loss``, returns x."""

    def __init__(self, target: Tensor) -> None:
        super().__init__()
        self.target = target.detach()  # a constant, not part of any graph
        self.loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        # While the style targets are built, the style image flows through this module too. The
        # tutorial asserts equal image sizes, so it never meets a mismatch; our images may differ
        # in shape (the notebook allows it), so a style-shaped input just passes through.
        self.loss = nst.content_loss(x, self.target) if x.shape == self.target.shape else None
        return x


class StyleLoss(nn.Module):
    """Transparent layer: keeps the style image's Gram matrix; ``forward`` stores ``self.loss``."""

    def __init__(self, target_features: Tensor) -> None:
        super().__init__()
        self.target = nst.gram_matrix(target_features).detach()
        self.loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.loss = nst.style_loss(x, self.target)
        return x


def build_model(
    cnn: nn.Sequential,
    content: Tensor,
    style: Tensor,
    content_layers: Sequence[str] = DEFAULT_CONTENT_LAYERS,
    style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS,
) -> tuple[nn.Sequential, list[ContentLoss], list[StyleLoss]]:
    """The tutorial's model surgery on a deep copy of ``cnn`` (which is left untouched).

    Walks the copy's children (``preprocess``, ``conv1_1``, ``relu1_1``, ...) into a new
    ``nn.Sequential``; right after a layer named in ``content_layers`` it inserts a
    :class:`ContentLoss` called ``content_loss_<layer>``, after one in ``style_layers`` a
    :class:`StyleLoss` called ``style_loss_<layer>`` (both, content first, if a layer is in
    both lists). Each target comes from a forward pass of the partial model built so far.
    Everything after the last loss module is cut off.

    Returns:
        ``(model, content_losses, style_losses)``; the loss lists are in network order.
    """
    unknown = [n for n in (*content_layers, *style_layers) if n not in cnn._modules]
    if unknown or not content_layers or not style_layers:
        raise nst.ParameterError(
            f"need at least one content and one style layer among {list(cnn._modules)}; got "
            f"content_layers={list(content_layers)}, style_layers={list(style_layers)}"
        )
    cnn = copy.deepcopy(cnn)
    model = nn.Sequential()
    content_losses: list[ContentLoss] = []
    style_losses: list[StyleLoss] = []
    with torch.no_grad():
        for name, layer in cnn.named_children():
            model.add_module(name, layer)
            if name in content_layers:
                module = ContentLoss(model(content))
                model.add_module(f"content_loss_{name}", module)
                content_losses.append(module)
            if name in style_layers:
                module = StyleLoss(model(style))
                model.add_module(f"style_loss_{name}", module)
                style_losses.append(module)
    last = max(i for i, m in enumerate(model) if isinstance(m, (ContentLoss, StyleLoss)))
    model = model[: last + 1]  # slicing keeps the names
    model.requires_grad_(False)
    return model.eval(), content_losses, style_losses


class _BudgetSpent(Exception):
    """Raised in the closure after the last evaluation allowed: ends ``optimizer.step`` at once."""


def run_baseline(
    content_path: str | Path,
    style_path: str | Path,
    size: int,
    num_evals: int,
    content_weight: float = 1.0,
    style_weight: float = 5.0,
    content_layers: Sequence[str] = DEFAULT_CONTENT_LAYERS,
    style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS,
    device: str | torch.device = "auto",
    *,
    print_every: int = 0,
    image_out: str | Path | None = None,
) -> dict:
    """Run the tutorial's algorithm for exactly ``num_evals`` loss evaluations; return its numbers.

    Args:
        content_path, style_path: the images, both loaded with ``nst_utils.load_image(path, size)``.
        size: long side in pixels, as the notebook's ``image_size``.
        num_evals: closure calls (loss + gradient evaluations) to run; the run stops right
            after the last one, even in the middle of an ``optimizer.step``.
        content_weight, style_weight, content_layers, style_layers: as in the notebook.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (``nst_utils.pick_device``).
        print_every: print a progress line every this many evaluations (0: silent).
        image_out: if given, the final image (clamped to 0..1, as the tutorial ends) is saved there.

    Returns:
        A JSON-able dict shaped like the notebook's run JSON: ``device``, ``device_name``,
        ``weights``, ``image_hw``, ``evals``, ``seconds``, ``seconds_per_eval``,
        ``peak_memory_mb``, ``stop_reason``, ``history`` (one ``{eval, seconds, loss, content,
        style}`` per evaluation, ``seconds`` counted from the start of the optimisation,
        ``content``/``style`` the unweighted means over their layers), plus ``threads``,
        ``torch`` and ``algorithm``. Loading images and building the model are not timed.
    """
    if not isinstance(num_evals, int) or num_evals < 1:
        raise nst.ParameterError(f"num_evals must be a whole number >= 1, got {num_evals!r}")
    dev = nst.pick_device(str(device))
    content = nst.image_to_tensor(nst.load_image(content_path, size), dev)
    style = nst.image_to_tensor(nst.load_image(style_path, size), dev)
    cnn = nst.load_vgg19("caffe", device=dev)
    model, content_losses, style_losses = build_model(
        cnn, content, style, content_layers, style_layers
    )
    del cnn

    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image])  # the tutorial's settings: all defaults
    history: list[dict] = []
    stop_reason = "budget"

    def closure() -> Tensor:
        with torch.no_grad():
            image.clamp_(0, 1)  # the tutorial keeps the pixels in range here, behind L-BFGS's back
        optimizer.zero_grad()
        model(image)
        c = sum(m.loss for m in content_losses) / len(content_losses)
        s = sum(m.loss for m in style_losses) / len(style_losses)
        loss = content_weight * c + style_weight * s
        loss.backward()
        n = len(history) + 1
        history.append(
            {
                "eval": n,
                "seconds": time.perf_counter() - start,
                "loss": float(loss.detach()),
                "content": float(c.detach()),
                "style": float(s.detach()),
            }
        )
        if print_every and (n == 1 or n % print_every == 0):
            print(
                f"baseline eval {n:4d}/{num_evals}  loss {history[-1]['loss']:.4g}  "
                f"content {history[-1]['content']:.4g}  style {history[-1]['style']:.4g}  "
                f"({history[-1]['seconds']:.1f} s)",
                flush=True,
            )
        if n >= num_evals:
            raise _BudgetSpent
        return loss

    start = time.perf_counter()
    try:
        while True:
            optimizer.step(closure)
    except _BudgetSpent:
        pass
    seconds = time.perf_counter() - start
    with torch.no_grad():
        image.clamp_(0, 1)
    if not all(math.isfinite(h["loss"]) for h in history):
        stop_reason = "budget (non-finite losses seen)"
    if image_out is not None:
        out = nst.OutputDir(Path(image_out).parent, overwrite=True)
        out.save_image(image.detach(), Path(image_out).name)
    evals = len(history)
    return {
        "algorithm": "official PyTorch tutorial (Sequential surgery, LBFGS defaults, clamp in "
        "closure)",
        "device": str(dev),
        "device_name": device_name(dev),
        "weights": "caffe",
        "image_hw": list(content.shape[-2:]),
        "evals": evals,
        "seconds": seconds,
        "seconds_per_eval": seconds / evals,
        "peak_memory_mb": peak_memory_mb(dev),
        "stop_reason": stop_reason,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "history": history,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--content", default="assets/inputs/dog.jpg")
    parser.add_argument("--style", default="assets/inputs/starry_night.jpg")
    parser.add_argument("--size", type=int, default=256, help="long side in px (default 256)")
    parser.add_argument("--evals", type=int, default=300, help="loss evaluations (default 300)")
    parser.add_argument("--content-weight", type=float, default=1.0)
    parser.add_argument("--style-weight", type=float, default=5.0)
    parser.add_argument("--content-layers", nargs="+", default=list(DEFAULT_CONTENT_LAYERS))
    parser.add_argument("--style-layers", nargs="+", default=list(DEFAULT_STYLE_LAYERS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--print-every", type=int, default=50)
    parser.add_argument("--json-out", help="write the run's numbers here (JSON)")
    parser.add_argument("--image-out", help="save the final picture here (PNG)")
    args = parser.parse_args(argv)
    run = run_baseline(
        args.content,
        args.style,
        args.size,
        args.evals,
        args.content_weight,
        args.style_weight,
        args.content_layers,
        args.style_layers,
        args.device,
        print_every=args.print_every,
        image_out=args.image_out,
    )
    if args.json_out:
        out = nst.OutputDir(Path(args.json_out).parent, overwrite=True)
        out.save_json(run, Path(args.json_out).name)
    last = run["history"][-1]
    print(
        f"baseline: {run['evals']} evaluations in {run['seconds']:.1f} s "
        f"({run['seconds_per_eval']:.3f} s/eval), final loss {last['loss']:.4g}, "
        f"peak memory {run['peak_memory_mb']:.0f} MB on {run['device_name']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

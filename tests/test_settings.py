"""The notebook's settings: nst_utils.check_settings (the knobs of the parameters cell), pick_device, in_notebook.

Each case starts from the notebook's own defaults, read from the parameters cell of
style_transfer.ipynb (so the tests follow the notebook), and changes one knob. The promise under
test: a bad value fails at once, with a ParameterError that names the setting, before anything
is written.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import nst_utils as nst
from nst_utils import ParameterError

ROOT = Path(__file__).resolve().parents[1]
TOUR_INPUTS = ("content_path_2", "style_path_2", "mask_path", "mask_path_2")


def notebook_defaults() -> dict:
    """The assignments of the notebook's parameters cell (the one that sets content_path), as a dict."""
    nb = json.loads((ROOT / "style_transfer.ipynb").read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        assigned = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
        if "content_path" in assigned:
            return {name: ast.literal_eval(value) for name, value in assigned.items()}
    raise AssertionError("style_transfer.ipynb has no parameters cell")


DEFAULTS = notebook_defaults()


@pytest.fixture
def knobs(tmp_path) -> dict:
    """The notebook's defaults, input paths made absolute, output_dir in tmp_path (not created yet)."""
    values = {k: (str(ROOT / v) if k.endswith("_path") or k[:-2].endswith("_path") else v) for k, v in DEFAULTS.items()}
    values["output_dir"] = str(tmp_path / "out")
    return values


def refused(knobs: dict, *names: str) -> str:
    """check_settings(knobs) must raise ParameterError naming every one of ``names``; returns the message."""
    with pytest.raises(ParameterError) as info:
        nst.check_settings(knobs)
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not in: {message}"
    return message


def test_the_notebook_defaults_pass_and_resolve(knobs, tmp_path):
    assert {"content_path", "style_path", "output_dir", "device", "sections", "style_scales"} <= set(DEFAULTS)
    cfg = nst.check_settings({**knobs, "device": "cpu"})
    assert cfg.tour is True and cfg.sections == "all"
    assert cfg.device == torch.device("cpu")
    assert (cfg.image_size, cfg.extra_size, cfg.hires_size, cfg.layers_size) == (256, 192, 512, 128)
    assert cfg.overwrite is False and cfg.live is False  # live=None: not in an open notebook under pytest
    assert cfg.output_dir == tmp_path / "out" and isinstance(cfg.output_dir, Path) and cfg.output_dir.is_dir()
    assert list(cfg.output_dir.iterdir()) == [], "the write test leaves nothing behind"
    assert [Path(p) for p in cfg.inputs] == [Path(knobs[k]) for k in ("content_path", "style_path", *TOUR_INPUTS)]
    for name in ("num_evals", "seed", "content_layers", "style_layers", "style_scales", "gif_frame_ms"):
        assert getattr(cfg, name) == DEFAULTS[name]


def test_core_sections_use_and_check_only_the_two_main_pictures(knobs):
    bad_tour = {name: "/nonexistent/picture.png" for name in TOUR_INPUTS}
    cfg = nst.check_settings({**knobs, **bad_tour, "sections": "core", "style_scales": [0.001]})
    assert cfg.tour is False
    assert [Path(p) for p in cfg.inputs] == [Path(knobs["content_path"]), Path(knobs["style_path"])]


# --------------------------------------------------------------------------- booleans


@pytest.mark.parametrize("name", ["overwrite", "live"])
@pytest.mark.parametrize("value, expected", [
    ("false", False), ("no", False), ("0", False), (0, False), ("False", False), (False, False),
    ("true", True), ("yes", True), (1, True), (" True ", True),
])
def test_booleans_accept_what_a_command_line_passes(knobs, name, value, expected):
    assert getattr(nst.check_settings({**knobs, name: value}), name) is expected


@pytest.mark.parametrize("name, value", [
    ("overwrite", "maybe"), ("overwrite", 2), ("overwrite", None), ("overwrite", 1.0),
    ("live", "maybe"), ("live", 2), ("live", "None"),
])
def test_booleans_refuse_anything_else(knobs, name, value):
    message = refused({**knobs, name: value}, name, repr(value))
    assert "True or False" in message


# --------------------------------------------------------------------------- device


@pytest.mark.parametrize("value", ["xpu", "meta", "gpu", "cuda:7", "", "cpu:x"])
def test_device_refuses_what_cannot_run_the_notebook(knobs, value):
    message = refused({**knobs, "device": value}, f"device={value!r}")
    assert "'auto'" in message and "'cpu'" in message, "the message lists valid choices"


def test_device_cpu_and_auto(knobs):
    assert nst.check_settings({**knobs, "device": "cpu"}).device == torch.device("cpu")
    auto = nst.check_settings(knobs).device
    assert auto.type in ("cpu", "cuda", "mps")
    assert float((torch.ones(3, device=auto) * 2).sum()) == 6.0, "the device picked can compute"


def test_pick_device_without_cuda_or_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for value in ("cuda", "cuda:0"):
        with pytest.raises(ParameterError, match="sees 0 CUDA GPU") as info:
            nst.pick_device(value)
        assert "'cpu'" in str(info.value)
    with pytest.raises(ParameterError, match="and no MPS device"):
        nst.pick_device("mps")
    assert nst.pick_device("auto") == torch.device("cpu")


def test_pick_device_cuda_index_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParameterError, match=r"device='cuda:7', but PyTorch sees 1 CUDA GPU.*'auto', 'cpu'"):
        nst.pick_device("cuda:7")


@pytest.mark.parametrize("value", ["gpu", "tpu", "cuda:x", "", None, "xla"])
def test_pick_device_refuses_what_is_not_a_device(value):
    with pytest.raises(ParameterError, match="use 'auto', 'cpu'"):
        nst.pick_device(value)


# --------------------------------------------------------------------------- numbers: seed, sizes, evaluations, weights


@pytest.mark.parametrize("name, value", [
    ("seed", "abc"), ("seed", -1), ("seed", 1.5),
    *[(size, bad) for size in ("image_size", "extra_size", "hires_size", "layers_size") for bad in (31, 256.0, "256")],
    *[(evals, bad) for evals in ("num_evals", "extra_evals", "layers_evals") for bad in (0, -1, "10", 2.5, True)],
    ("frame_every", -1), ("print_every", -1), ("preview_every", -1), ("frame_every", "5"), ("gif_frame_ms", 0),
])
def test_whole_numbers_are_checked(knobs, name, value):
    refused({**knobs, name: value}, f"{name}={value!r}")


@pytest.mark.parametrize("name", ["content_weight", "style_weight", "tv_weight", "lr"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), 1e300, "5", True])
def test_weights_and_lr_are_finite_non_negative_and_fit_float32(knobs, name, value):
    refused({**knobs, name: value}, name)


def test_lr_zero_and_both_weights_zero_are_refused(knobs):
    refused({**knobs, "lr": 0}, "lr")
    message = refused({**knobs, "content_weight": 0, "style_weight": 0.0}, "content_weight", "style_weight")
    assert "not depend on the picture" in message
    cfg = nst.check_settings({**knobs, "content_weight": 0, "tv_weight": 2})
    assert (cfg.content_weight, cfg.style_weight, cfg.tv_weight) == (0.0, 5.0, 2.0)


# --------------------------------------------------------------------------- choices and layers


@pytest.mark.parametrize("name, value", [
    ("weights", "imagenet"), ("pooling", "median"), ("sections", "some"), ("sections", None),
    ("content_layers", ["relu9_9"]), ("content_layers", []), ("content_layers", "relu4_2"),
    ("style_layers", ["relu1_1", "conv6_1"]), ("style_layers", []), ("style_layers", "relu1_1"),
    ("style_scales", []), ("style_scales", "1.0"), ("style_scales", [1.0, -0.5]), ("style_scales", [100.0]),
])
def test_choices_and_layer_lists_are_checked(knobs, name, value):
    message = refused({**knobs, name: value}, name)
    if "layers" in name and value == ["relu9_9"]:
        assert "relu9_9" in message and "relu4_2" in message, "names the unknown layer and lists valid ones"


@pytest.mark.parametrize("name", ["content_path", "style_path", "output_dir"])
def test_a_knob_without_a_default_must_be_set(knobs, name):
    """A parameters cell that lost a line: the check names the knob instead of failing later with a KeyError."""
    refused({k: v for k, v in knobs.items() if k != name}, f"{name}=None")


# --------------------------------------------------------------------------- input pictures


@pytest.mark.parametrize("name", ["content_path", "style_path", *TOUR_INPUTS])
def test_a_missing_or_broken_picture_is_named(knobs, tmp_path, name):
    refused({**knobs, name: str(tmp_path / "nope.jpg")}, name, "nope.jpg", "no such file")
    (tmp_path / "notes.txt").write_text("not a picture")
    refused({**knobs, name: str(tmp_path / "notes.txt")}, name, "not an image")
    refused({**knobs, name: None}, name)
    if name in TOUR_INPUTS:
        assert "sections='core'" in refused({**knobs, name: str(tmp_path)}, name, "folder")


def test_a_tilde_path_is_expanded(knobs, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(knobs["content_path"], tmp_path / "photo.jpg")
    cfg = nst.check_settings({**knobs, "content_path": "~/photo.jpg"})
    assert Path(cfg.content_path) == tmp_path / "photo.jpg" and Path(cfg.inputs[0]) == tmp_path / "photo.jpg"


@pytest.mark.parametrize("name, value, sections", [
    ("image_size", 32, "core"),      # the 4:3 photo becomes 32x24 px
    ("extra_size", 32, "all"),
    ("layers_size", 40, "all"),
    ("hires_size", 160, "all"),      # coarse to fine starts at a quarter: 40x30 px
])
def test_a_size_that_leaves_a_picture_too_small_is_named(knobs, name, value, sections):
    message = refused({**knobs, name: value, "sections": sections}, f"{name}={value}", "content_path")
    assert "32 px" in message


def test_a_wide_tour_picture_too_small_at_extra_size(knobs, make_image):
    wide = make_image("wide.png", size=(600, 80))  # 192 px long side on a CPU: 192x26
    refused({**knobs, "device": "cpu", "style_path_2": str(wide)}, "style_path_2", "extra_size=192")
    assert nst.check_settings({**knobs, "device": "cpu", "style_path_2": str(wide), "sections": "core"}).tour is False


def test_a_style_scale_that_shrinks_the_style_too_far(knobs):
    message = refused({**knobs, "style_scales": [0.5, 0.01]}, "style_scales", "0.01")
    assert "32 px" in message


def test_the_style_scale_check_resizes_as_the_notebook_does(knobs, make_image):
    """The notebook gives the style a long side of scale x the photo's (192 px on a CPU): a 300x200 style at
    scale 0.25 becomes 48x32 px, just enough; at 0.24, 46x31 px, one pixel short."""
    style = str(make_image("style.png", size=(300, 200)))
    cfg = nst.check_settings({**knobs, "device": "cpu", "style_path": style, "style_scales": [0.25, 2.0]})
    assert cfg.extra_size == 192 and cfg.style_scales == [0.25, 2.0]
    message = refused({**knobs, "device": "cpu", "style_path": style, "style_scales": [0.24]}, "style_scales=0.24")
    assert "31 px" in message


# --------------------------------------------------------------------------- output_dir


def test_a_good_output_dir_is_created_and_returned(knobs, tmp_path):
    cfg = nst.check_settings({**knobs, "output_dir": str(tmp_path / "a" / "b")})
    assert cfg.output_dir == tmp_path / "a" / "b" and cfg.output_dir.is_dir()


@pytest.mark.parametrize("where", ["a file", "under /proc", "a read-only folder (/sys)", "under a file", ""])
def test_an_output_dir_that_cannot_be_written(knobs, tmp_path, where):
    (tmp_path / "results.txt").write_text("mine")
    value = {"a file": str(tmp_path / "results.txt"), "under /proc": "/proc/nst-test/out",
             "a read-only folder (/sys)": "/sys", "under a file": str(tmp_path / "results.txt" / "out"),
             "": ""}[where]
    before = sorted(tmp_path.rglob("*"))
    message = refused({**knobs, "output_dir": value}, "output_dir")
    assert sorted(tmp_path.rglob("*")) == before, "nothing was written"
    assert (tmp_path / "results.txt").read_text() == "mine"
    assert "results" in message, "the message gives an example that works"


@pytest.mark.parametrize("name, value", [
    ("style_weight", -1), ("content_path", "/nonexistent.jpg"), ("style_scales", [0.01]), ("mask_path_2", ""),
])
def test_output_dir_is_not_created_when_another_knob_is_bad(knobs, tmp_path, name, value):
    refused({**knobs, name: value}, name)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the namespace


def test_other_names_in_the_namespace_are_ignored(knobs):
    namespace = {**knobs, "np": np, "torch": torch, "In": ["x = 1"], "_": None, "plt": object(),
                 "my_note": "hello", "__builtins__": __builtins__}
    cfg = nst.check_settings(namespace)
    assert not {"np", "torch", "In", "plt", "my_note", "__builtins__"} & set(vars(cfg))
    assert cfg.num_evals == DEFAULTS["num_evals"]


# --------------------------------------------------------------------------- in_notebook


def fake_ipython(monkeypatch, shell) -> None:
    """Pretend IPython is imported and ``get_ipython()`` returns ``shell``."""
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", module)


def kernel_shell(allow_stdin: bool, class_name: str = "Shell"):
    """A shell like Colab's google.colab._shell.Shell: a subclass of a class named ZMQInteractiveShell."""
    zmq = type("ZMQInteractiveShell", (), {})
    shell = type(class_name, (zmq,), {})()
    shell.kernel = types.SimpleNamespace(_allow_stdin=allow_stdin)
    return shell


def test_in_notebook_is_false_under_pytest(monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    assert nst.in_notebook() is False


def test_in_notebook_detects_an_open_notebook_but_not_headless_runs(monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    fake_ipython(monkeypatch, kernel_shell(allow_stdin=True))
    assert nst.in_notebook() is True
    fake_ipython(monkeypatch, kernel_shell(allow_stdin=True, class_name="ZMQInteractiveShell"))
    assert nst.in_notebook() is True
    for value in ("", "0", "false", "no", "off", " Off "):
        monkeypatch.setenv("NST_HEADLESS", value)
        assert nst.in_notebook() is True
    monkeypatch.setenv("NST_HEADLESS", "1")
    assert nst.in_notebook() is False
    monkeypatch.delenv("NST_HEADLESS")
    fake_ipython(monkeypatch, kernel_shell(allow_stdin=False))  # papermill, nbclient, jupyter execute
    assert nst.in_notebook() is False
    fake_ipython(monkeypatch, type("TerminalInteractiveShell", (), {})())
    assert nst.in_notebook() is False
    fake_ipython(monkeypatch, None)  # IPython imported, no shell running
    assert nst.in_notebook() is False


def test_live_none_follows_in_notebook(knobs, monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    fake_ipython(monkeypatch, kernel_shell(allow_stdin=True))
    assert nst.check_settings({**knobs, "live": None}).live is True
    assert nst.check_settings({**knobs, "live": False}).live is False
    monkeypatch.setenv("NST_HEADLESS", "1")
    assert nst.check_settings({**knobs, "live": None}).live is False

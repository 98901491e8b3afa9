"""The settings: nst_utils' checkers, and the notebook's knobs checked by its own set-up cells.

`run_set_up` executes the notebook's parameters cell, its KNOBS cell and its check cell (the one
that calls nst.check_settings) in a fresh namespace, with some knobs changed as papermill's `-p`
would, so that the tests follow the notebook's table instead of a copy of it. The promise under
test: a bad value fails at once with a ParameterError that names the setting and the value, before
anything is written.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import nst_utils as nst
from nst_utils import ParameterError

ROOT = Path(__file__).resolve().parents[1]
CELLS = json.loads((ROOT / "style_transfer.ipynb").read_text(encoding="utf-8"))["cells"]
MISSING = object()  # run_set_up(name=MISSING): the parameters cell lost that line


def code_cell(wanted) -> str:
    """The one code cell for which ``wanted(source, tags)`` holds, its % magics left out."""
    found = [
        "".join(c["source"])
        for c in CELLS
        if c["cell_type"] == "code"
        and wanted("".join(c["source"]), c.get("metadata", {}).get("tags") or [])
    ]
    assert len(found) == 1, f"{len(found)} such cells in style_transfer.ipynb"
    return "\n".join(line for line in found[0].splitlines() if not line.lstrip().startswith("%"))


PARAMETERS = code_cell(lambda src, tags: "parameters" in tags)
KNOBS_CELL = code_cell(lambda src, tags: re.search(r"^KNOBS\s*=", src, re.M))
CHECK_CELL = code_cell(lambda src, tags: "check_settings(" in src)


def parameters() -> dict:
    namespace: dict = {}
    exec(PARAMETERS, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


DEFAULTS = parameters()


def run_set_up(out: Path, *, check: bool = True, **changes) -> dict:
    """The notebook's namespace after its parameters cell, ``changes``, its KNOBS cell and (if
    ``check``) its check cell; the default pictures made absolute, output_dir ``out``."""
    namespace = {"nst": nst, "torch": torch, "time": time, "Path": Path}
    exec(PARAMETERS, namespace)
    namespace.update(
        {
            k: str(ROOT / v)
            for k, v in namespace.items()
            if isinstance(v, str) and (ROOT / v).is_file()
        }
    )
    namespace.update({"output_dir": str(out), **changes})
    for name in [name for name, value in changes.items() if value is MISSING]:
        del namespace[name]
    exec(KNOBS_CELL, namespace)
    if check:
        exec(CHECK_CELL, namespace)
    return namespace


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A setting check never fetches a picture (it is read once, when it is loaded)."""
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", lambda *a, **k: pytest.fail("fetch"))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def set_up(out):
    """set_up(**changes) -> the notebook's ``cfg``."""
    return lambda **changes: run_set_up(out, **changes)["cfg"]


@pytest.fixture
def refused(out):
    """refused(*texts, **changes): the set-up cells raise a ParameterError naming each changed
    knob, its value (a list: its last element, the bad one) and ``texts``, before ``out`` exists."""

    def check(*texts: str, created: bool = False, **changes) -> str:
        with pytest.raises(ParameterError) as info:
            run_set_up(out, **changes)
        message = str(info.value)
        values = [v[-1] if isinstance(v, list) and v else v for v in changes.values()]
        for text in [*changes, *(repr(v) for v in values if v is not MISSING), *texts]:
            assert text in message, f"{text!r} not in: {message}"
        assert created or not out.exists(), "created before every knob had passed"
        return message

    return check


# --------------------------------------------------------------------------- the notebook's knobs


@pytest.mark.parametrize("kind", ["cpu", "cuda", "mps"])
def test_the_defaults_pass_and_sizes_left_at_none_follow_the_device(set_up, out, monkeypatch, kind):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: kind == "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: kind == "mps")
    cfg = set_up()
    assert set(DEFAULTS) == set(run_set_up(out, check=False)["KNOBS"]), "every knob is checked"
    assert cfg.device == torch.device(kind) and cfg.tour is True and cfg.live is False
    assert cfg.output_dir == out and out.is_dir() and list(out.iterdir()) == []
    for name, value in DEFAULTS.items():
        if value is not None and name not in ("output_dir", "device"):
            got = getattr(cfg, name)
            assert got == (ROOT / value if isinstance(got, Path) else value), name
    sizes = [getattr(cfg, k) for k in ("image_size", "extra_size", "hires_size", "layers_size")]
    gpu = kind != "cpu"  # the values the parameters cell's comments give
    assert sizes == ([512, 512, 1024, 256] if gpu else [256, 192, 512, 128])
    cfg = set_up(image_size=300, hires_size=640)
    assert (cfg.image_size, cfg.extra_size, cfg.hires_size) == (300, 300 if gpu else 192, 640)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        *[("overwrite", v, False) for v in ("false", "no", "0", 0, "False", False, " off ")],
        *[("live", v, True) for v in ("true", "yes", 1, " True ", "ON", True)],
        ("image_size", 32, 32),
        ("seed", 2**64 - 1, 2**64 - 1),
        ("gif_frame_ms", 655_350, 655_350),
        ("style_weight", 0, 0.0),
        ("lr", 1e-6, 1e-6),
        ("style_scales", (0.001, 4), [0.001, 4.0]),
        ("content_layers", ("relu1_1",), ["relu1_1"]),
        ("device", "cpu", torch.device("cpu")),
        ("sections", "core", "core"),
        ("content_path", "https://example.org/a b.jpg", "https://example.org/a%20b.jpg"),
        ("style_path", "http://127.0.0.1:8000/p.png", "http://127.0.0.1:8000/p.png"),
        ("style_path", "https://bücher.example/p", "https://xn--bcher-kva.example/p"),
    ],
)
def test_good_values_pass_as_the_notebook_uses_them(set_up, name, value, expected):
    got = getattr(set_up(**{name: value}), name)
    assert got == expected and type(got) is type(expected)


BAD = [
    ("seed", "abc"),
    ("seed", -1),
    ("seed", 1.5),
    ("seed", 2**64),
    *[
        (size, bad)
        for size in ("image_size", "extra_size", "hires_size", "layers_size", "gif_size")
        for bad in (31, 256.0, "256")
    ],
    *[
        (evals, bad)
        for evals in ("num_evals", "extra_evals", "layers_evals")
        for bad in (0, -1, "10", 2.5, True)
    ],
    ("frame_every", -1),
    ("print_every", -1),
    ("preview_every", -1),
    ("frame_every", "5"),
    ("gif_frame_ms", 0),
    ("gif_frame_ms", 655_351),
    *[
        (weight, bad)
        for weight in ("content_weight", "style_weight", "tv_weight", "lr")
        for bad in (-1.0, math.nan, math.inf, 1e300, "5", True)
    ],
    ("lr", 0),
    ("weights", "imagenet"),
    ("pooling", "median"),
    ("sections", "some"),
    ("sections", None),
    ("overwrite", "maybe"),
    ("overwrite", 2),
    ("overwrite", None),
    ("overwrite", 1.0),
    ("live", "maybe"),
    ("live", 2),
    ("live", "None"),
    ("device", "xpu"),
    ("device", "meta"),
    ("device", "gpu"),
    ("device", "cuda:7"),
    ("device", ""),
    ("device", "cpu:x"),
    ("content_layers", ["relu9_9"]),
    ("content_layers", []),
    ("content_layers", "relu4_2"),
    ("style_layers", ["relu1_1", "conv6_1"]),
    ("style_layers", []),
    ("style_layers", "relu1_1"),
    ("style_scales", []),
    ("style_scales", "1.0"),
    ("style_scales", [1.0, -0.5]),
    ("style_scales", [100.0]),
    ("content_path", None),
    ("style_path", ""),
    ("style_path", 5),
    ("content_path", "/nonexistent/photo.jpg"),
    ("content_path", "http://example.org/p.jpg"),
    ("style_path", "ftp://example.org/p.jpg"),
    ("style_path", "file:///etc/hostname"),
    ("content_path", "/dev/null"),
    ("style_path", "a\0b"),
    ("output_dir", ""),
    ("output_dir", None),
    ("output_dir", 5),
    ("output_dir", "~nobody_nst/x"),
    ("output_dir", "/proc/nst-test/out"),
    ("output_dir", "/sys"),
]


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_is_refused_naming_the_knob_and_the_value(refused, name, value):
    refused(**{name: value})


def test_refusals_show_a_valid_choice(refused):
    assert "'cpu'" in refused(device="gpu")
    message = refused(style_layers=["relu9_9"])
    assert any(repr(layer) in message for layer in nst.VGG19_LAYERS)


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_a_knob_the_parameters_cell_lost_is_named(refused, name):
    refused(**{name: MISSING})


def test_a_misspelt_knob_stops_the_run_and_other_names_do_not(refused, set_up):
    refused("style_weight", style_wieght=10)  # as the Parameters section says
    others = {
        "np": np,
        "torch": torch,
        "In": ["x = 1"],
        "_": None,
        "plt": object(),
        "my_note": "hello",
        "_num_evals": 3,
        "seeds": types,
    }
    cfg = set_up(**others)
    assert not set(others) & set(vars(cfg)) and cfg.num_evals == DEFAULTS["num_evals"]


def test_both_loss_weights_zero_are_refused(refused, set_up):
    refused(created=True, content_weight=0, style_weight=0)
    cfg = set_up(content_weight=0, tv_weight=2)
    assert (cfg.content_weight, cfg.style_weight, cfg.tv_weight) == (0.0, 5.0, 2.0)


def test_both_loss_weights_zero_create_nothing(refused):
    refused(content_weight=0, style_weight=0)


def test_only_the_tour_checks_the_tour_pictures(set_up, refused, out, tmp_path):
    core = run_set_up(out, check=False, sections="core")["KNOBS"]
    tour_only = [name for name, check in core.items() if check is nst.ignored]
    assert tour_only and not {"content_path", "style_path"} & set(tour_only)
    nope = str(tmp_path / "nope.png")
    for name in tour_only:
        refused("nope.png", **{name: nope})
        refused(**{name: str(tmp_path)})  # a folder
    assert set_up(sections="core", **dict.fromkeys(tour_only, nope)).tour is False
    cfg = set_up()
    assert all(getattr(cfg, name) == ROOT / DEFAULTS[name] for name in tour_only)


def test_paths_are_expanded_and_the_output_folder_made_absolute(set_up, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / DEFAULTS["content_path"], tmp_path / "photo.jpg")
    (tmp_path / "notes.txt").write_text("not a picture")  # decoded once, when it is loaded
    cfg = set_up(content_path="~/photo.jpg", style_path="notes.txt", output_dir="a/results")
    assert cfg.content_path == tmp_path / "photo.jpg" and cfg.style_path == Path("notes.txt")
    assert cfg.output_dir == tmp_path / "a" / "results" and cfg.output_dir.is_absolute()
    assert set_up(output_dir="~/a").output_dir == tmp_path / "a"  # exists already: fine
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert made == ["a", "a/results", "notes.txt", "photo.jpg"], "the write probe is removed"


@pytest.mark.parametrize("where", ["a file", "under a file", "a full disk"])
def test_an_output_folder_that_cannot_be_written_is_named(refused, tmp_path, monkeypatch, where):
    (tmp_path / "results.txt").write_text("mine")
    if where == "a full disk":  # the 64 KiB probe is synced: a full disk shows at once

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
    value = tmp_path / {"a file": "results.txt", "under a file": "results.txt/out"}.get(where, "")
    refused(output_dir=str(value))
    assert [p.name for p in tmp_path.iterdir()] == ["results.txt"], "nothing was left"
    assert (tmp_path / "results.txt").read_text() == "mine"


def test_the_set_up_cells_can_run_again(out):
    namespace = run_set_up(out)
    first = vars(namespace["cfg"]).copy()
    exec(KNOBS_CELL, namespace)  # `device` is a torch.device now, `cfg` a namespace
    exec(CHECK_CELL, namespace)
    assert vars(namespace["cfg"]) == first


# --------------------------------------------------------------------------- pick_device


@pytest.mark.parametrize(
    "value, gpus, mps",
    [
        ("cuda", 0, False),
        ("cuda:0", 0, False),
        ("mps", 0, False),
        ("cuda:7", 1, True),
        *[(value, 1, True) for value in ("gpu", "tpu", "cuda:x", "", None, "xla", "meta", "cpu:x")],
    ],
)
def test_pick_device_refuses_what_is_not_here(monkeypatch, value, gpus, mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    with pytest.raises(ParameterError) as info:
        nst.pick_device(value)
    assert repr(value) in str(info.value) and "'cpu'" in str(info.value)
    assert nst.pick_device("auto").type == ("cuda" if gpus else "mps" if mps else "cpu")
    assert nst.pick_device("cuda:0" if gpus else "cpu") == torch.device("cuda:0" if gpus else "cpu")


def test_the_device_picked_can_compute():
    auto = nst.pick_device("auto")
    assert nst.pick_device(torch.device("cpu")) == torch.device("cpu")
    assert float((torch.ones(3, device=auto) * 2).sum()) == 6.0


# --------------------------------------------------------------------------- in_notebook, live


def fake_ipython(monkeypatch, shell) -> None:
    """Pretend IPython is imported and ``get_ipython()`` returns ``shell``."""
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", module)


def kernel_shell(allow_stdin: bool, class_name: str = "Shell"):
    """A shell like Colab's: a subclass of a class named ZMQInteractiveShell."""
    shell = type(class_name, (type("ZMQInteractiveShell", (), {}),), {})()
    shell.kernel = types.SimpleNamespace(_allow_stdin=allow_stdin)
    return shell


def test_in_notebook_detects_an_open_notebook_but_not_headless_runs(monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    assert nst.in_notebook() is False  # under pytest
    for shell in (kernel_shell(True), kernel_shell(True, "ZMQInteractiveShell")):
        fake_ipython(monkeypatch, shell)
        assert nst.in_notebook() is True
    for value in ("", "0", "false", "no", "off", " Off "):
        monkeypatch.setenv("NST_HEADLESS", value)
        assert nst.in_notebook() is True
    monkeypatch.setenv("NST_HEADLESS", "1")
    assert nst.in_notebook() is False
    monkeypatch.delenv("NST_HEADLESS")
    for shell in (kernel_shell(False), type("TerminalInteractiveShell", (), {})(), None):
        fake_ipython(monkeypatch, shell)  # papermill or nbclient, a terminal, no shell running
        assert nst.in_notebook() is False


def test_live_none_follows_in_notebook(set_up, monkeypatch):
    monkeypatch.delenv("NST_HEADLESS", raising=False)
    fake_ipython(monkeypatch, kernel_shell(allow_stdin=True))
    assert set_up(live=None).live is True and set_up(live=False).live is False
    monkeypatch.setenv("NST_HEADLESS", "1")
    assert set_up(live=None).live is False

"""Run style_transfer.ipynb headless (papermill) at a tiny size and check what it produced.

One full run of every section (the core tutorial and the tour) with the original
VGG19 weights, plus runs that must fail fast on bad parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "style_transfer.ipynb"

TINY = dict(image_size=64, extra_size=96, hires_size=128, num_evals=40, extra_evals=8,
            frame_every=4, weights="caffe", device="cpu")


def run_notebook(tmp_path: Path, **parameters) -> Path:
    out_nb = tmp_path / "executed.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out_nb), parameters=parameters, kernel_name="python3",
                        cwd=str(ROOT), progress_bar=False, log_output=False)
    return out_nb


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    monkeypatch.setenv("NST_HEADLESS", "1")  # the kernel inherits it: no live widgets


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    out = tmp / "results"
    out.mkdir()
    earlier = out / "dog_starry_night.png"  # a result from an "earlier run" that must survive
    Image.new("RGB", (10, 10), (1, 2, 3)).save(earlier)
    mp = pytest.MonkeyPatch()
    mp.setenv("NST_HEADLESS", "1")
    try:
        executed = run_notebook(tmp, output_dir=str(out), sections="all", **TINY)
    finally:
        mp.undo()
    return out, executed, earlier


def test_notebook_has_one_parameters_cell_at_the_top():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [1], "one parameters cell, the first code cell after the Colab set-up"


def test_style_loss_falls_by_a_large_factor(full_run):
    out, _, _ = full_run
    run = json.loads((out / "dog_starry_night.json").read_text())
    history = run["history"]
    assert run["evals"] == TINY["num_evals"] == len(history)
    assert run["stop_reason"] == "budget"
    assert run["weights"] == "caffe" and run["device"] == "cpu"
    first, best = history[0]["style"], min(h["style"] for h in history)
    assert best < first / 5, f"style loss fell only from {first:.3g} to {best:.3g}"
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["seconds"] > 0 and run["seconds_per_eval"] > 0 and run["peak_memory_mb"] > 0


def test_no_evaluation_is_spent_on_the_point_just_evaluated(full_run):
    # Each LBFGS.step() call starts by evaluating the point it stands on, which the previous call
    # ended on; with one step() call for the whole budget (max_iter=num_evals) that never happens.
    # A repeated point shows up as two consecutive evaluations with exactly the same loss.
    out, _, _ = full_run
    history = json.loads((out / "dog_starry_night.json").read_text())["history"]
    repeats = [b["eval"] for a, b in zip(history, history[1:]) if b["loss"] == a["loss"]]
    assert not repeats, f"evaluations {repeats} re-evaluated the point before them"


def test_png_and_gif_written_without_touching_earlier_results(full_run):
    out, _, earlier = full_run
    assert Image.open(earlier).getpixel((0, 0)) == (1, 2, 3), "an earlier result was overwritten"
    png = out / "dog_starry_night-1.png"
    with Image.open(png) as img:
        assert max(img.size) == TINY["image_size"] and img.mode == "RGB"
        arr = np.asarray(img)
    assert arr.std() > 10, "the picture is flat (black or blank)"
    with Image.open(out / "dog_starry_night.gif") as gif:
        assert gif.n_frames == TINY["num_evals"] // TINY["frame_every"]
        assert max(gif.size) == TINY["image_size"]
    assert not list(out.glob(".*")), "temporary files were left behind"


def test_tour_sections_ran_and_saved_their_figures(full_run):
    out, executed, _ = full_run
    assert (out / "overview.png").is_file()
    assert (out / "comparison.png").is_file()
    hires = out / f"dog_starry_night_{TINY['hires_size']}px.png"
    with Image.open(hires) as img:
        assert max(img.size) == TINY["hires_size"]
    nb = json.loads(executed.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = sum(any(k.startswith("image/") for k in o.get("data", {})) for c in nb["cells"] if c["cell_type"] == "code"
                 for o in c.get("outputs", []))
    assert images >= 12, "every section shows its pictures"


def test_core_section_stops_after_the_main_picture(tmp_path):
    out = tmp_path / "core"
    run_notebook(tmp_path, output_dir=str(out), sections="core", **{**TINY, "num_evals": 5})
    assert (out / "dog_starry_night.png").is_file() and (out / "dog_starry_night.json").is_file()
    assert not (out / "comparison.png").exists()


@pytest.mark.parametrize("bad, message", [
    ({"image_size": -5}, "image_size=-5"),
    ({"style_layers": ["relu9_9"]}, "relu9_9"),
    ({"weights": "imagenet"}, "weights='imagenet'"),
    ({"frame_every": -1}, "frame_every=-1"),
    ({"content_path": "assets/inputs/no_such_photo.jpg"}, "no_such_photo.jpg: no such file"),
])
def test_bad_parameters_fail_fast_with_a_clear_error(tmp_path, bad, message):
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(tmp_path, output_dir=str(tmp_path / "out"), **{**TINY, **bad})
    assert message in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing was written before the error"

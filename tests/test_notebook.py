"""The notebook itself: its shape (short cells, no globals read inside its functions) and one
headless
run of every section at a tiny size, as papermill runs it (no NST_HEADLESS: the notebook must see on
its own that nobody is watching)."""

from __future__ import annotations

import builtins
import json
import symtable
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "style_transfer.ipynb"
NB = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
CODE = [c for c in NB["cells"] if c["cell_type"] == "code"]

TINY = dict(
    image_size=64,
    extra_size=96,
    hires_size=192,
    layers_size=64,
    num_evals=40,
    extra_evals=8,
    layers_evals=4,
    frame_every=4,
    weights="caffe",
    device="cpu",
)


def source(cell: dict) -> str:
    return "".join(cell["source"])


def run_notebook(tmp_path: Path, **parameters) -> dict:
    out_nb = tmp_path / "executed.ipynb"
    pm.execute_notebook(
        str(NOTEBOOK),
        str(out_nb),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
        log_output=False,
    )
    return json.loads(out_nb.read_text(encoding="utf-8"))


def outputs(nb: dict) -> list[dict]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    out = tmp / "results"
    out.mkdir()
    earlier = out / "dog_starry_night.png"  # a result from an "earlier run" that must survive
    Image.new("RGB", (10, 10), (1, 2, 3)).save(earlier)
    executed = run_notebook(tmp, output_dir=str(out), sections="all", overwrite="false", **TINY)
    return out, executed, earlier


# --------------------------------------------------------------------------- the notebook's shape


def test_one_parameters_cell_after_the_colab_cell_and_short_code_cells():
    tagged = [
        i for i, c in enumerate(CODE) if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    assert tagged == [1], "one parameters cell, the first code cell after the Colab set-up"
    long = {
        i: source(c).count("\n") + 1
        for i, c in enumerate(CODE)
        if i != 1 and source(c).count("\n") >= 25
    }
    assert not long, f"code cells over 25 lines (index: lines): {long}"


def test_no_function_of_the_notebook_reads_a_global_variable():
    # Functions may use modules, builtins and the notebook's other functions, never its variables.
    code = [
        "\n".join(line for line in source(c).splitlines() if not line.lstrip().startswith("%"))
        for c in CODE
    ]
    tables = [symtable.symtable(text, "cell", "exec") for text in code]
    functions = {
        t.get_name() for table in tables for t in table.get_children() if t.get_type() == "function"
    }
    allowed = {"torch", "F", "nst", "plt", "partial", "Path", "np"} | set(dir(builtins)) | functions
    offenders = {}

    def walk(table: symtable.SymbolTable, owner: str | None) -> None:
        for child in table.get_children():
            name = child.get_name()
            is_comprehension = name in ("genexpr", "listcomp", "setcomp", "dictcomp", "lambda")
            if child.get_type() == "function" and (owner or not is_comprehension):
                used = {
                    s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()
                }
                if used - allowed:
                    offenders[owner or name] = sorted(used - allowed)
                walk(child, owner or name)
            else:
                walk(child, owner)

    for table in tables:
        walk(table, None)
    assert functions >= {
        "features",
        "content_loss",
        "gram_matrix",
        "style_loss",
        "total_loss",
        "stylize",
    }
    assert not offenders, f"functions reading notebook globals: {offenders}"


def test_later_cells_never_overwrite_a_knob_of_the_parameters_cell():
    # Re-running the set-up cell must see the knobs as set, not a value some later cell stored
    # there.
    import ast

    knobs = {
        t.id
        for n in ast.parse(source(CODE[1])).body
        if isinstance(n, ast.Assign)
        for t in n.targets
    }
    allowed = {
        "content_path",
        "style_path",
        "device",
    }  # the upload cell's pictures; device = cfg.device (same)
    rebound = {}
    for i, cell in enumerate(CODE[2:], start=2):
        text = "\n".join(
            line for line in source(cell).splitlines() if not line.lstrip().startswith("%")
        )
        names = {
            n.id
            for n in ast.walk(ast.parse(text))
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        if names & knobs - allowed:
            rebound[i] = sorted(names & knobs - allowed)
    assert not rebound, f"code cells that overwrite knobs: {rebound}"


def test_opening_the_notebook_in_jupyterlab_changes_nothing():
    # JupyterLab rewrites a kernelspec whose display name differs from its own ("modified" at once).
    assert NB["metadata"]["kernelspec"] == {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }


def test_the_stored_notebook_holds_only_what_a_reader_needs():
    assert NOTEBOOK.stat().st_size < 3_000_000
    for o in outputs(NB):
        assert o["output_type"] != "error"
        assert not any(k.startswith("application/vnd.jupyter.widget") for k in o.get("data", {})), (
            "widget output"
        )
        assert "image/gif" not in o.get("data", {}), (
            "animations belong in assets/results, not in the notebook"
        )
    assert all(c.get("execution_count") is not None for c in CODE if c.get("outputs"))
    text = "".join("".join(o.get("text", "")) for o in outputs(NB))
    assert "assets/results" not in text, "stored outputs show where a reader's run writes: results/"


# ------------------------------------------------------------------- one headless run of everything


def test_style_loss_falls_by_a_large_factor(full_run):
    out, _, _ = full_run
    run = json.loads((out / "dog_starry_night-1.json").read_text())
    assert (
        run["picture"] == "dog_starry_night-1.png"
    )  # one stem per run; the JSON names its picture
    history = run["history"]
    assert run["evaluations"] == TINY["num_evals"] == len(history)
    assert run["stop_reason"] == "budget" and run["changed"] is True
    assert run["weights"] == "caffe" and run["device"] == "cpu"
    first, best = history[0]["style"], min(h["style"] for h in history)
    assert best < first / 5, f"style loss fell only from {first:.3g} to {best:.3g}"
    assert all(np.isfinite(h["loss"]) for h in history) and history[-1]["seconds"] > 0


def test_no_evaluation_is_spent_on_the_point_just_evaluated(full_run):
    # Each LBFGS.step() call starts by evaluating the point it stands on, which the previous call
    # ended on; with one step() call for the whole budget (max_iter=num_evals) that never happens.
    out, _, _ = full_run
    history = json.loads((out / "dog_starry_night-1.json").read_text())["history"]
    repeats = [
        b["eval"] for a, b in zip(history, history[1:], strict=False) if b["loss"] == a["loss"]
    ]
    assert not repeats, f"evaluations {repeats} re-evaluated the point before them"


def test_png_and_gif_written_without_touching_earlier_results(full_run):
    out, _, earlier = full_run
    assert Image.open(earlier).getpixel((0, 0)) == (1, 2, 3), "overwrite='false' must mean False"
    with Image.open(out / "dog_starry_night-1.png") as img:
        assert max(img.size) == TINY["image_size"] and img.mode == "RGB"
        assert np.asarray(img).std() > 10, "the picture is flat (black or blank)"
    with Image.open(out / "dog_starry_night-1.gif") as gif:
        assert gif.n_frames == TINY["num_evals"] // TINY["frame_every"]
        assert max(gif.size) == TINY["image_size"]
    assert not list(out.glob(".*")), "temporary files were left behind"


def test_every_section_ran_and_saved_its_pictures(full_run):
    out, executed, _ = full_run
    for name in (
        "dog_starry_night-1-overview.png",
        "comparison.png",
        "what_each_layer_sees.png",
        "spatial_control.png",
        "noise_dog.gif",
        "noise_horses.gif",
    ):
        assert (out / name).is_file(), name
    with Image.open(out / f"dog_starry_night-1_{TINY['hires_size']}px.png") as img:
        assert max(img.size) == TINY["hires_size"]
    assert not [o for o in outputs(executed) if o["output_type"] == "error"]
    images = [
        o for o in outputs(executed) if any(k.startswith("image/") for k in o.get("data", {}))
    ]
    assert len(images) >= 15, "every section shows its pictures"


def test_headless_runs_print_progress_and_show_no_live_preview(full_run):
    _, executed, _ = full_run
    text = "".join(
        "".join(o.get("text", "")) for o in outputs(executed) if o["output_type"] == "stream"
    )
    assert "eval    1/40" in text and "RunResult(40 evaluations" in text
    assert not any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs(executed)
    )


def test_core_section_stops_after_the_main_picture(tmp_path):
    out = tmp_path / "core"
    run_notebook(tmp_path, output_dir=str(out), sections="core", **{**TINY, "num_evals": 5})
    assert (out / "dog_starry_night.png").is_file() and (out / "dog_starry_night.json").is_file()
    assert not (out / "comparison.png").exists()


@pytest.mark.parametrize("knob, value", [("style_path_2", "no/such.jpg"), ("style_wieght", 10.0)])
def test_a_bad_parameter_stops_the_notebook_in_its_set_up_cell(tmp_path, knob, value):
    # Every check is unit-tested in test_settings.py; this proves the notebook calls the checker
    # first.
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(tmp_path, output_dir=str(tmp_path / "out"), **{**TINY, knob: value})
    assert f"{knob}={value!r}" in str(info.value)  # a typo (style_wieght) too
    assert "check_settings" in info.value.source, "failed late, after work was done"
    assert not (tmp_path / "out").exists(), "nothing was written before the error"

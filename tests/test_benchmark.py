"""The benchmark's baseline (the official tutorial's algorithm), the report's pure helpers, and
every script in benchmarks/ run end to end at tiny sizes (the GPU check's dry run).

The baseline runs once at 64 px for 12 evaluations (a few seconds); the helpers use tiny data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import nst_utils as nst
from benchmarks.baseline_tutorial import ContentLoss, StyleLoss, build_model, run_baseline
from benchmarks.run_benchmark import (
    ROOT,
    _run_quietly,
    markdown_section,
    notebook_defaults,
    per_eval_seconds,
    speedup,
    summarize,
    time_to_reach,
)

DEFAULTS = notebook_defaults()
CONTENT, STYLE = ROOT / DEFAULTS["content_path"], ROOT / DEFAULTS["style_path"]
C_LAYERS, S_LAYERS = DEFAULTS["content_layers"], DEFAULTS["style_layers"]
C_WEIGHT, S_WEIGHT = DEFAULTS["content_weight"], DEFAULTS["style_weight"]
SIZE, EVALS = 64, 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: at 64 px it is as fast as two, and far faster when another process
    keeps the cores busy (two spinning threads then wait on each other). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cpu_vgg() -> torch.nn.Sequential:
    """The baseline runs on the CPU; its reference numbers are computed there too (no TF32)."""
    return nst.load_vgg19("caffe", device="cpu")


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    return run_baseline(CONTENT, STYLE, SIZE, EVALS, C_WEIGHT, S_WEIGHT, C_LAYERS, S_LAYERS, "cpu")


def direct_loss(vgg: torch.nn.Sequential, image, content, style) -> tuple[float, float, float]:
    """The notebook's total_loss written out with nst_utils: (total, mean content, mean style)."""

    def acts(x):
        out = {}
        for name, layer in vgg.named_children():
            x = layer(x)
            out[name] = x
        return out

    with torch.no_grad():
        a, ac, as_ = acts(image), acts(content), acts(style)
        c = sum(nst.content_loss(a[n], ac[n]) for n in C_LAYERS) / len(C_LAYERS)
        s = sum(nst.style_loss(a[n], nst.gram_matrix(as_[n])) for n in S_LAYERS) / len(S_LAYERS)
    return float(C_WEIGHT * c + S_WEIGHT * s), float(c), float(s)


def load_pair():
    return tuple(nst.image_to_tensor(nst.load_image(path, SIZE)) for path in (CONTENT, STYLE))


# --------------------------------------------------------------------------- the baseline


def test_notebook_defaults_include_the_tuple_assigned_parameters():
    assert CONTENT.is_file() and STYLE.is_file()
    assert C_LAYERS and S_LAYERS and all(n in nst.VGG19_LAYERS for n in C_LAYERS + S_LAYERS)
    assert isinstance(C_WEIGHT, (int, float)) and isinstance(S_WEIGHT, (int, float))
    assert DEFAULTS["tv_weight"] == 0 and DEFAULTS["pooling"] == "max", "as the baseline"


def test_baseline_runs_exactly_the_budget_and_the_loss_falls(tiny_run):
    history = tiny_run["history"]
    assert tiny_run["evals"] == len(history) == EVALS
    assert [h["eval"] for h in history] == list(range(1, EVALS + 1))
    assert set(history[0]) == {"eval", "seconds", "loss", "content", "style"}
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "content", "style"))
    seconds = [h["seconds"] for h in history]
    assert 0 < seconds[0] and seconds == sorted(seconds) and tiny_run["seconds"] >= seconds[-1]
    assert min(h["loss"] for h in history) < history[0]["loss"]
    assert tiny_run["stop_reason"] == "budget" and tiny_run["peak_memory_mb"] > 0
    assert tiny_run["image_hw"] == list(load_pair()[0].shape[-2:])
    assert {
        "device",
        "device_name",
        "weights",
        "image_hw",
        "evals",
        "seconds",
        "seconds_per_eval",
        "peak_memory_mb",
        "stop_reason",
        "history",
    } <= set(tiny_run)
    json.dumps(tiny_run, allow_nan=False)


def test_loss_modules_sit_right_after_their_layers_and_the_model_ends_at_the_last(cpu_vgg):
    content, style = load_pair()
    names_before = list(cpu_vgg._modules)
    model, content_losses, style_losses = build_model(cpu_vgg, content, style, C_LAYERS, S_LAYERS)
    names = list(model._modules)
    modules = list(model.children())
    for layer in C_LAYERS:
        i = names.index(layer)
        assert names[i + 1] == f"content_loss_{layer}" and isinstance(modules[i + 1], ContentLoss)
    for layer in S_LAYERS:
        i = names.index(layer) + (1 if layer in C_LAYERS else 0)
        assert names[i + 1] == f"style_loss_{layer}" and isinstance(modules[i + 1], StyleLoss)
    assert isinstance(modules[-1], (ContentLoss, StyleLoss))
    deepest = max(C_LAYERS + S_LAYERS, key=nst.VGG19_LAYERS.index)
    after_deepest = names[names.index(deepest) + 1 :]
    assert names[-1].endswith(deepest), "cut right after the deepest layer's loss module"
    assert after_deepest
    assert all(n.startswith(("content_loss_", "style_loss_")) for n in after_deepest)
    assert len(content_losses) == len(C_LAYERS) and len(style_losses) == len(S_LAYERS)
    assert names[0] == "preprocess"
    # surgery on a deep copy: the shared network is untouched and shares no layer with the model
    assert list(cpu_vgg._modules) == names_before
    shared = [
        n for n, m in model.named_children() if n in names_before and m is cpu_vgg.get_submodule(n)
    ]
    assert not shared


def test_loss_modules_give_the_notebooks_loss(cpu_vgg):
    content, style = load_pair()
    model, content_losses, style_losses = build_model(cpu_vgg, content, style, C_LAYERS, S_LAYERS)
    image = torch.rand_like(content, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(image), model(image))  # transparent loss modules, deterministic
    c = sum(m.loss for m in content_losses) / len(content_losses)
    s = sum(m.loss for m in style_losses) / len(style_losses)
    total, c_ref, s_ref = direct_loss(cpu_vgg, image, content, style)
    assert float(c) == pytest.approx(c_ref, rel=1e-5) and c_ref > 0
    assert float(s) == pytest.approx(s_ref, rel=1e-5)
    assert float(C_WEIGHT * c + S_WEIGHT * s) == pytest.approx(total, rel=1e-5)


def test_first_evaluation_equals_the_notebook_loss_of_the_content_image(tiny_run, cpu_vgg):
    content, style = load_pair()
    total, c, s = direct_loss(cpu_vgg, content, content, style)
    first = tiny_run["history"][0]
    assert first["loss"] == pytest.approx(total, rel=1e-5)
    assert first["style"] == pytest.approx(s, rel=1e-5)
    assert first["content"] == pytest.approx(c, abs=1e-7) == 0.0


# --------------------------------------------------------------------------- pure helpers


def hist(pairs):
    """History from (seconds, loss) pairs."""
    return [
        {"eval": i, "seconds": t, "loss": loss, "content": 0.0, "style": 0.0}
        for i, (t, loss) in enumerate(pairs, 1)
    ]


BASE = hist([(1, 10.0), (2, 6.0), (3, 7.0), (4, 5.0), (5, 4.0)])  # the clamp makes it non-monotone
FAST = hist([(0.5, 9.0), (1.0, 4.5), (1.5, 3.0), (2.0, 2.0)])
SLOW = hist([(2, 9.0), (4, 8.0), (8, 6.5)])


def test_time_to_reach():
    # <= counts, and the first one wins
    assert time_to_reach(BASE, 6.0) == {"eval": 2, "seconds": 2.0, "loss": 6.0}
    assert time_to_reach(BASE, 4.0)["eval"] == 5
    assert time_to_reach(FAST, 4.0) == {"eval": 3, "seconds": 1.5, "loss": 3.0}
    assert time_to_reach(SLOW, 4.0) is None
    assert time_to_reach([], 4.0) is None
    assert time_to_reach(BASE, math.nan) is None and time_to_reach(BASE, None) is None
    assert time_to_reach(hist([(1, math.nan), (2, 3.0)]), 4.0)["eval"] == 2


def test_speedup_exact_upper_lower_and_not_available():
    exact = speedup(BASE, FAST, 4.0)
    assert exact["kind"] == "exact" and exact["ratio"] == pytest.approx(5.0 / 1.5)
    assert exact["text"] == "3.33×"
    upper = speedup(BASE, SLOW, 4.0)  # the notebook ran 8 s without getting there
    assert upper["kind"] == "upper" and upper["ratio"] == pytest.approx(5.0 / 8)
    assert upper["text"] == "< 0.62×"
    assert upper["notebook"] is None
    lower = speedup(BASE, FAST, 2.0)  # only the notebook got there, after 2 s; the baseline ran 5 s
    assert lower["kind"] == "lower" and lower["text"] == "> 2.50×"
    for target in (1.0, math.nan):
        none = speedup(BASE, SLOW, target)
        assert none["kind"] == "n/a" and none["ratio"] is None
    assert speedup(BASE, [], 4.0)["text"] == "n/a"


def test_per_eval_seconds_median_and_mean():
    times = per_eval_seconds(hist([(1.0, 1), (1.5, 1), (2.0, 1), (6.0, 1)]))  # deltas 1, .5, .5, 4
    assert times == {"median": pytest.approx(0.75), "mean": pytest.approx(1.5)}
    assert per_eval_seconds([]) == {"median": None, "mean": None}


def test_summary_and_table_when_the_notebook_never_gets_there():
    base = {
        "history": BASE,
        "seconds": 5.0,
        "peak_memory_mb": 100.0,
        "stop_reason": "budget",
        "device_name": "CPU",
        "image_hw": [48, 64],
    }
    nb = {
        "history": SLOW,
        "seconds": 8.0,
        "peak_memory_mb": 90.0,
        "stop_reason": "stalled",
        "device_name": "CPU",
        "image_hw": [48, 64],
    }
    summary = summarize(base, nb)
    assert summary["baseline"]["last_loss"] == 4.0 and summary["baseline"]["best_eval"] == 5
    assert summary["to_final_loss"]["text"].startswith("< ")
    meta = {"torch": torch.__version__, "threads": 2, "date": "2024-01-01"}
    table = markdown_section({"size": 64, "errors": {}, "summary": summary}, meta)
    assert "not reached" in table and "< 0.62×" in table and "64×48" in table
    assert table.count("\n|") >= 9
    failed = markdown_section({"size": 64, "errors": {"notebook": "boom"}}, meta)
    assert "notebook failed" in failed and "boom" in failed


def test_baseline_handles_content_and_style_of_different_shapes():
    # at 256 px the dog is 256x192 and the Starry Night 256x204: their relu4_2 maps differ in height
    run = run_baseline(CONTENT, STYLE, 256, 2, C_WEIGHT, S_WEIGHT, C_LAYERS, S_LAYERS, "cpu")
    assert run["evals"] == 2 and all(math.isfinite(h["loss"]) for h in run["history"])


def test_peak_memory_of_a_run_covers_its_whole_process_tree():
    # The notebook's kernel is papermill's child: its peak memory counts, not papermill's own.
    grandchild = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    child = (
        "import subprocess, sys; "
        f"subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    )
    lines = []
    peak = _run_quietly(
        [sys.executable, "-c", child + "; print('done')"], dict(os.environ), lines.append
    )
    assert lines == ["done\n"]
    if hasattr(os, "wait4"):
        assert 290 < peak < 2000, peak
    with pytest.raises(RuntimeError, match="exited with status 3"):
        _run_quietly(
            [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), lambda line: False
        )


# --------------------------------------------------------------------------- scripts, end to end


def test_gpu_check_dry_run_runs_every_script_end_to_end(tmp_path):
    """gpu_check.py's dry run (CPU, tiny sizes, from another folder) runs its steps: the probe, a
    test, the main job, and run_benchmark.py, which runs baseline_tutorial.py and the notebook."""
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", str(out)],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {"device", "tests", "main", "bench"} <= {p.stem for p in out.glob("*.log")}
    assert (out / "summary.md").stat().st_size > 0
    main_run = json.loads(next((out / "main").glob("*.json")).read_text(encoding="utf-8"))
    assert len(main_run["history"]) == 4
    report = json.loads(next((out / "bench").glob("benchmark_*.json")).read_text(encoding="utf-8"))
    (entry,) = report["results"]
    assert not entry["errors"]
    assert len(entry["baseline"]["history"]) == 3 == len(entry["notebook"]["history"])
    assert entry["baseline"]["peak_memory_mb"] > 0 and entry["notebook"]["peak_memory_mb"] > 0

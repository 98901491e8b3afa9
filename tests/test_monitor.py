"""The run: the notebook's own `stylize` (from the `nb` fixture), nst.Monitor (the record and the
stops) and nst.Progress (how it is shown). The problems are tiny ([1, 3, 8, 8] tensors on the
`device` fixture), so each run takes milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
import types
import warnings

import numpy as np
import pytest
import torch

import nst_utils as nst
from nst_utils import Monitor, NSTError, ParameterError, RunResult, StopRun

SHAPE = (1, 3, 8, 8)


@pytest.fixture(autouse=True)
def sigint():
    """Ctrl-C as each test found it: an interrupt ignores it for 2 s after."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def tensors(device, seed=0):
    """(start image, target) on ``device``; the target reaches outside 0..1: clipping matters."""
    g = torch.Generator().manual_seed(seed)
    start, target = torch.rand(SHAPE, generator=g), torch.rand(SHAPE, generator=g) * 1.6 - 0.3
    return start.to(device), target.to(device)


def smoothness(x):
    return x.diff(dim=-1).pow(2).mean() + x.diff(dim=-2).pow(2).mean()


def quadratic(target):
    """A quadratic whose curvature spans four decades: L-BFGS improves for many evaluations."""
    scale = torch.logspace(-2, 2, target.numel(), device=target.device).reshape(target.shape)

    def loss_fn(x, n=0):
        content, tv = (scale * (x - target).pow(2)).mean(), smoothness(x)
        return content + 0.01 * tv, {"content": content, "tv": tv}

    return loss_fn


def run(stylize, start, loss_fn, num_evals, **options):
    """``stylize(start, ...)`` with ``loss_fn(x, n)`` (n: the evaluation, from 1), logging into
    ``.lines``; ``.seen``: (iterate, loss) of each evaluation; ``.image``: the tensor optimised."""
    rec = types.SimpleNamespace(lines=[], seen=[], image=None)

    def recording(x):
        loss, parts = loss_fn(x, len(rec.seen) + 1)
        rec.seen.append((x.detach().clone(), float(loss.detach())))
        rec.image = x
        return loss, parts

    options = {"print_every": 0, "stall_patience": 10_000, "log": rec.lines.append, **options}
    try:
        with warnings.catch_warnings():  # a warning would show in the notebook's output
            warnings.simplefilter("error")
            rec.result = stylize(start, recording, num_evals, **options)
    except KeyboardInterrupt:  # caught so that a failure does not end the pytest session
        pytest.fail("a KeyboardInterrupt escaped stylize")
    return rec


def best_of(seen, upto=None):
    """The iterate with the lowest loss among the first ``upto`` evaluations, clipped."""
    seen = seen[:upto]
    return seen[int(np.argmin([loss for _, loss in seen]))][0].clamp(0, 1)


def words(lines) -> set[str]:
    return set(re.findall(r"[a-z_]+", " ".join(lines).lower()))


# --------------------------------------------------------------------------- budget, record, best


def test_a_run_stops_at_its_budget_with_one_record_per_evaluation(nb, device):
    start, target = tensors(device)
    r = run(nb["stylize"], start, quadratic(target), 30)
    res = r.result
    assert isinstance(res, RunResult) and res.stop_reason == "budget"
    assert len(r.seen) == res.evaluations == 30 and res.changed is True
    assert [h["eval"] for h in res.history] == list(range(1, 31))
    seconds = [h["seconds"] for h in res.history]
    assert 0 <= seconds[0] and seconds == sorted(seconds) and res.seconds >= seconds[-1]
    assert [h["loss"] for h in res.history] == pytest.approx([loss for _, loss in r.seen])
    assert all(isinstance(h["content"], float) and "tv" in h for h in res.history)
    assert res.history[-1]["loss"] < res.history[0]["loss"] / 10, "real progress"
    assert "30" in repr(res) and "budget" in repr(res)
    summary = res.summary()  # for the JSON file: everything but the pictures
    assert not {"image", "frames"} & set(summary) and "history" in summary
    assert json.loads(json.dumps(summary, allow_nan=False))["evaluations"] == 30


def test_the_picture_is_the_lowest_loss_iterate_and_a_copy(nb, device):
    start, target = tensors(device)

    def bumped(x, n):  # from evaluation 4 on the loss carries +100: the best is an early one
        loss, parts = quadratic(target)(x)
        return loss + 100.0 * (n >= 4), parts

    r = run(nb["stylize"], start, bumped, 12)
    res = r.result
    assert res.best_loss == pytest.approx(min(loss for _, loss in r.seen))
    torch.testing.assert_close(res.image, best_of(r.seen))
    assert not torch.equal(res.image, r.seen[-1][0].clamp(0, 1))
    assert res.image.device.type == device.type and not res.image.requires_grad
    assert 0 <= float(res.image.min()) and float(res.image.max()) <= 1
    kept = res.image.clone()
    with torch.no_grad():
        r.image.fill_(0.5)  # the optimised tensor changing later does not change the picture
    assert torch.equal(res.image, kept)


def test_frames_every_k_are_clipped_uint8_pictures_of_the_iterates(nb, device):
    start, target = tensors(device)
    r = run(nb["stylize"], start, quadratic(target), 10, frame_every=3)
    assert len(r.result.frames) == 3  # evaluations 3, 6 and 9
    for frame, n in zip(r.result.frames, (3, 6, 9), strict=True):
        assert frame.dtype == np.uint8 and frame.shape == (8, 8, 3)
        expected = (r.seen[n - 1][0][0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round()
        assert np.abs(frame.astype(int) - expected).max() <= 1
    assert any(
        not 0 <= float(r.seen[n - 1][0].min()) <= float(r.seen[n - 1][0].max()) <= 1
        for n in (3, 6, 9)
    ), "clipping was exercised"
    assert run(nb["stylize"], start, quadratic(target), 4).result.frames == [], "default: none"


def test_progress_is_printed_every_k_then_the_outcome(nb, device):
    start, target = tensors(device)
    lines = run(nb["stylize"], start, quadratic(target), 10, print_every=5).lines
    assert len(lines) == 4, lines  # evaluations 1, 5 and 10, then how it ended
    for line, n in zip(lines[:3], (1, 5, 10), strict=True):
        assert f"{n}/10" in line and {"loss", "content", "tv"} <= words([line])
    assert "budget" in lines[-1]


def test_progress_on_its_own():
    lines = []
    progress = nst.Progress(4, print_every=2, unit="step", log=lines.append)
    for n in range(1, 5):
        progress.show(n, {"loss": 1.0 / n})
    progress.close("done")
    assert len(lines) == 4 and all("step" in line for line in lines[:3]) and lines[3] == "done"
    assert "2/4" in lines[1] and "0.5" in lines[1]
    for name, value in [("print_every", -1), ("preview_every", 1.5), ("live", "maybe")]:
        with pytest.raises(ParameterError, match=name):
            nst.Progress(4, **{name: value})


# --------------------------------------------------------------------------- what stops a run


def test_a_non_finite_loss_stops_and_keeps_the_best(nb, device):
    start, target = tensors(device)

    def goes_nan(x, n):
        loss, parts = quadratic(target)(x)
        return loss * (math.nan if n >= 5 else 1.0), parts

    r = run(nb["stylize"], start, goes_nan, 50)
    assert len(r.seen) == 5 and r.result.evaluations == 4, "the NaN evaluation is not recorded"
    assert r.result.stop_reason == "non-finite" and math.isfinite(r.result.best_loss)
    torch.testing.assert_close(r.result.image, best_of(r.seen, 4))
    assert "5" in re.findall(r"\d+", " ".join(r.lines)) and "lr" in words(r.lines)


def test_the_message_names_the_part_that_became_non_finite(nb, device):
    start, target = tensors(device)

    def tv_breaks(x, n):
        content, tv = (x - target).pow(2).mean(), smoothness(x) * (math.nan if n >= 3 else 1.0)
        return content + 0.1 * tv, {"content": content, "style": content * 0 + 2.0, "tv": tv}

    r = run(nb["stylize"], start, tv_breaks, 20)
    assert r.result.stop_reason == "non-finite" and r.result.evaluations == 2
    assert "tv_weight" in words(r.lines)
    assert not {"style_weight", "content_weight", "lr"} & words(r.lines), r.lines


def test_a_diverging_image_blames_the_step_size(nb, device):
    start, _ = tensors(device)
    r = run(
        nb["stylize"],
        start,
        lambda x, n: (-x.pow(2).sum(), {"content": x.pow(2).mean()}),
        2000,
        lr=1e6,
    )
    assert r.result.stop_reason == "non-finite" and len(r.seen) < 2000
    assert "lr" in words(r.lines) and not {"style_weight", "content_weight"} & words(r.lines)


def test_a_non_finite_gradient_stops_and_keeps_the_best(nb, device):
    start, target = tensors(device)

    def nan_gradient(x, n):  # like sqrt at 0, or a broken custom layer
        y = x * 1.0
        if n >= 4:
            y.register_hook(lambda grad: grad * math.nan)
        return quadratic(target)(y)

    r = run(nb["stylize"], start, nan_gradient, 50)
    assert r.result.stop_reason == "non-finite" and len(r.seen) == 4 and r.result.evaluations == 3
    assert math.isfinite(r.seen[-1][1]) and "lr" in words(r.lines), "the loss stayed finite"
    torch.testing.assert_close(r.result.image, best_of(r.seen, 3))


def test_a_non_finite_first_evaluation_raises(nb, device):
    start, _ = tensors(device)
    with pytest.raises(NSTError) as info:
        nb["stylize"](start, lambda x: (x.sum() * math.inf, {}), 10, print_every=0)
    assert "lr" in words([str(info.value)])


def test_out_of_memory_names_the_size_to_lower(nb, device):
    def oom(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(NSTError, match="image_size"):
        nb["stylize"](tensors(device)[0], oom, 10, print_every=0)


@pytest.mark.parametrize(
    "loss_at, patience, reason, evaluations",
    [
        (lambda n: 1.0, 5, "stalled", 6),  # nothing after evaluation 1: the 5th idle stops
        (
            lambda n: 1.0 - 1e-7 * n,
            4,
            "stalled",
            5,
        ),  # improvements below stall_rtol=1e-5 do not count
        (
            lambda n: 1.0 - 4e-6 * n,
            4,
            "budget",
            20,
        ),  # each step is below rtol, but 3 of them are not
        (lambda n: 1.0 / n, 3, "budget", 20),  # real progress
    ],
    ids=["constant", "below-rtol", "slow-but-steady", "progress"],
)
def test_a_run_stalls_after_patience(nb, device, loss_at, patience, reason, evaluations):
    r = run(
        nb["stylize"],
        tensors(device)[0],
        lambda x, n: (x.sum() * 0 + loss_at(n), {}),
        20,
        stall_patience=patience,
        stall_rtol=1e-5,
    )
    assert r.result.stop_reason == reason and r.result.evaluations == evaluations == len(r.seen)
    assert r.result.best_loss == pytest.approx(min(loss for _, loss in r.seen), rel=0, abs=1e-9)
    assert ("lr" in words(r.lines)) == (reason == "stalled"), "a stall says what to change"


@pytest.mark.parametrize("case", ["loss-constant-in-the-image", "already-at-the-minimum"])
@pytest.mark.parametrize("num_evals", [8, 30])
def test_an_unchanged_picture_gets_a_note_fitting_the_budget(nb, device, case, num_evals):
    start, target = tensors(device)
    # already at the minimum: like the content image with style_weight=0 (gradient 0)
    weight = float(case == "already-at-the-minimum")
    r = run(
        nb["stylize"], start, lambda x, n: ((x - start).pow(2).mean() * weight + 3, {}), num_evals
    )
    changed = run(nb["stylize"], start, quadratic(target), num_evals)
    assert r.result.changed is False and changed.result.changed is True
    assert len(r.lines) == len(changed.lines) + 1, "one note, after the outcome"
    assert str(num_evals) in r.lines[-1]
    assert ("style_weight" in words(r.lines)) == (num_evals >= 20), "few evaluations: the budget"


# --------------------------------------------------------------------------- Interrupt


def pressed(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("at", [0, 1, 5])  # 0: while LBFGS is being built
def test_interrupt_at_any_moment_keeps_the_best_image_so_far(nb, device, monkeypatch, tmp_path, at):
    start, target = tensors(device)
    if at == 0:
        monkeypatch.setattr(torch.optim, "LBFGS", pressed)

    def loss_fn(x, n):
        return pressed() if n == at else quadratic(target)(x)

    r = run(nb["stylize"], start, loss_fn, 50)
    res = r.result
    assert res.stop_reason == "interrupted" and res.evaluations == len(r.seen) == max(at - 1, 0)
    torch.testing.assert_close(res.image, best_of(r.seen) if r.seen else start.clamp(0, 1))
    assert "interrupted" in " ".join(r.lines)
    if not r.seen:  # no advice that does not fit: the weights and lr had nothing to do with it
        assert not {"lr", "style_weight", "content_weight", "budget"} & words(r.lines), r.lines
        assert res.changed is False and repr(res)
        nst.OutputDir(tmp_path).save_json(res.summary(), "run.json")  # the notebook saves it


def press() -> bool:
    """Ctrl-C now, as the Interrupt button sends it; whether it was absorbed."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    except KeyboardInterrupt:
        return False
    return True


def test_a_second_interrupt_soon_after_is_absorbed_in_this_and_the_next_cells(
    nb, device, monkeypatch
):
    registered = []  # the kernel's pre_run_cell callbacks
    events = types.SimpleNamespace(
        register=lambda event, f: registered.append(f),
        unregister=lambda event, f: registered.remove(f),
    )
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: types.SimpleNamespace(events=events)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setattr(torch.optim, "LBFGS", pressed)
    pressed_at = time.monotonic()
    assert run(nb["stylize"], tensors(device)[0], quadratic(tensors(device)[1]), 10).result
    assert press(), "a second press in the same cell"
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the kernel, before the next cell
    for callback in list(registered):
        callback(None)
    assert press(), "a second press in the next cell"
    time.sleep(max(0.0, pressed_at + 2.05 - time.monotonic()))
    assert not press(), "after 2 s Ctrl-C interrupts again"
    for callback in list(registered):
        callback(None)
    assert registered == [], "and the next cells are left alone"


def test_a_monitor_after_its_stop(device):
    start, _ = tensors(device)
    lines = []
    monitor = Monitor(start, 3, print_every=0, log=lines.append)
    x = start.clone().requires_grad_(True)
    for _ in range(2):
        monitor.update(x, x.sum())
    monitor.interrupt()
    monitor.interrupt()  # a second press changes nothing
    assert monitor.done and monitor.stop_reason == "interrupted" and len(lines) == 2
    with pytest.raises(StopRun):
        monitor.update(x, x.sum())
    assert monitor.evaluations == 2 and monitor.result().evaluations == 2


# --------------------------------------------------------------------------- live mode


@pytest.fixture
def shown(monkeypatch):
    """What IPython's display showed: ("display" or "update", object, raw)."""
    import IPython.display

    calls = []

    class Handle:
        def update(self, obj, raw=False):
            calls.append(("update", obj, raw))

    def display(obj, raw=False, display_id=None):
        calls.append(("display", obj, raw))
        return Handle() if display_id else None

    monkeypatch.setattr(IPython.display, "display", display)
    return calls


def test_live_mode_updates_one_line_and_one_preview_in_place(nb, device, shown, capsys):
    start, target = tensors(device)
    r = run(nb["stylize"], start, quadratic(target), 6, live=True, preview_every=2, print_every=1)
    assert r.result.stop_reason == "budget" and r.lines == [], "live mode replaces the log lines"
    assert capsys.readouterr().err == "", "no progress bar"
    texts = [(kind, obj) for kind, obj, raw in shown if isinstance(obj, dict)]
    pictures = [(kind, obj) for kind, obj, raw in shown if not isinstance(obj, dict)]
    assert all(raw for _, obj, raw in shown if isinstance(obj, dict)), "plain text, no widget"
    assert [kind for kind, _ in texts] == ["display"] + ["update"] * (len(texts) - 1)
    assert "1/6" in texts[0][1]["text/plain"] and "6/6" in texts[-2][1]["text/plain"]
    assert "budget" in texts[-1][1]["text/plain"], "the line ends with the outcome"
    assert [kind for kind, _ in pictures] == ["display", "update", "update", "update"]  # 1, 2, 4, 6
    assert all(obj.mode == "RGB" and obj.size == (8, 8) for _, obj in pictures)


@pytest.mark.parametrize("ipython", ["installed, no shell", "missing"])
def test_live_mode_outside_a_notebook_prints_lines(nb, device, capsys, monkeypatch, ipython):
    if ipython == "missing":
        monkeypatch.setitem(sys.modules, "IPython", None)
        monkeypatch.setitem(sys.modules, "IPython.display", None)
    start, target = tensors(device)
    r = run(nb["stylize"], start, quadratic(target), 6, live=True, preview_every=1, print_every=2)
    assert r.result.evaluations == 6
    shown = {m[1] for line in r.lines for m in [re.search(r"(\d+)/6", line)] if m}
    assert {"2", "4", "6"} <= shown <= {"1", "2", "4", "6"}, r.lines  # every print_every
    assert capsys.readouterr().out.count("PIL.Image") <= 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_evals", 0),
        ("num_evals", -1),
        ("num_evals", 2.5),
        ("num_evals", True),
        ("num_evals", "10"),
        ("num_evals", None),
        ("frame_every", -1),
        ("frame_every", 1.5),
        ("print_every", -1),
        ("preview_every", -1),
        ("stall_patience", 0),
        ("stall_rtol", -1.0),
        ("stall_rtol", math.nan),
        ("live", "maybe"),
        ("live", None),
        ("live", 2),
    ],
)
def test_bad_arguments_are_refused(name, value):
    with pytest.raises(ParameterError) as info:
        Monitor(torch.rand(SHAPE), **{"num_evals": 10, name: value})
    assert name in str(info.value) and repr(value) in str(info.value)
    with pytest.raises(ParameterError, match="start"):
        Monitor(torch.rand(3, 8, 8), 10)

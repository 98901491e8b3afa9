"""The run monitor (nst_utils.Monitor, StopRun, RunResult), driven the way the notebook drives it.

`stylize_like_the_notebook` is a copy of the notebook's `stylize` loop: L-BFGS with
max_iter=num_evals, a strong-Wolfe line search and zero tolerances, a closure that calls
`monitor.update`, and `while not monitor.done: try: step except StopRun: break except
KeyboardInterrupt: monitor.interrupt()`. The problems are tiny ([1, 3, 8, 8] tensors on the
`device` fixture), so each run takes milliseconds.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
import torch

from nst_utils import Monitor, NSTError, ParameterError, RunResult, StopRun

SHAPE = (1, 3, 8, 8)


class Seen(list):
    image: torch.Tensor


def stylize_like_the_notebook(init, loss_fn, monitor, num_evals, lr=1.0):
    """The notebook's loop; returns (image iterate, loss) of every evaluation, recorded here independently,
    in a list whose ``image`` is the tensor that L-BFGS optimised."""
    image = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], lr=lr, max_iter=num_evals, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=0, tolerance_change=0)
    seen = Seen()
    seen.image = image

    def closure():
        optimizer.zero_grad()
        loss, parts = loss_fn(image)
        loss.backward()
        seen.append((image.detach().clone(), float(loss.detach())))
        monitor.update(image, loss, parts)
        return loss

    steps = 0
    while not monitor.done:
        steps += 1
        assert steps < 2000, "the loop never ended: the monitor did not stop the run"
        try:
            optimizer.step(closure)
        except StopRun:
            break
        except KeyboardInterrupt:
            monitor.interrupt()
    return seen


def quiet(num_evals, **kwargs):
    """A Monitor that logs into a list (no printing unless asked) and does not stall unless asked."""
    lines: list[str] = []
    kwargs.setdefault("print_every", 0)
    kwargs.setdefault("stall_patience", 10_000)
    return Monitor(num_evals, log=lines.append, **kwargs), lines


def tensors(device, seed=0):
    """(start image, target) on ``device``; the target reaches outside 0..1 so that clipping matters."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(SHAPE, generator=g)
    target = torch.rand(SHAPE, generator=g) * 1.6 - 0.3
    return start.to(device), target.to(device)


def smoothness(x):
    """Mean squared difference between neighbouring pixels (a total variation)."""
    return x.diff(dim=-1).pow(2).mean() + x.diff(dim=-2).pow(2).mean()


def ill_conditioned(target):
    """A quadratic whose curvature spans four decades: L-BFGS keeps improving for many evaluations."""
    scale = torch.logspace(-2, 2, target.numel(), device=target.device).reshape(target.shape)

    def loss_fn(x):
        content = (scale * (x - target).pow(2)).mean()
        smooth = smoothness(x)
        return content + 0.01 * smooth, {"content": content, "tv": smooth}

    return loss_fn


def counting(loss_fn):
    """Wraps ``loss_fn`` so that it also receives the 1-based number of the evaluation."""
    calls = [0]

    def wrapped(x):
        calls[0] += 1
        return loss_fn(x, calls[0])

    return wrapped


def best_of(seen, upto=None):
    """The iterate with the lowest loss among the first ``upto`` evaluations."""
    seen = seen[:upto]
    return seen[int(np.argmin([loss for _, loss in seen]))][0]


def words(message):
    return set(re.findall(r"[a-z_]+", message.lower()))


# --------------------------------------------------------------------------- budget, history, best image, frames


def test_stops_exactly_at_the_budget_with_one_history_entry_per_evaluation(device):
    start, target = tensors(device)
    monitor, _ = quiet(30)
    seen = stylize_like_the_notebook(start, ill_conditioned(target), monitor, 30)
    assert len(seen) == 30 and monitor.evaluations == 30 and monitor.done
    res = monitor.result()
    assert isinstance(res, RunResult) and res.stop_reason == "budget" and res.evaluations == 30
    history = res.history
    assert [h["eval"] for h in history] == list(range(1, 31))
    seconds = [h["seconds"] for h in history]
    assert seconds[0] >= 0 and all(b >= a for a, b in zip(seconds, seconds[1:]))
    assert res.seconds >= seconds[-1]
    assert [h["loss"] for h in history] == pytest.approx([loss for _, loss in seen])
    assert all({"content", "tv"} <= set(h) and isinstance(h["content"], float) for h in history)
    assert history[-1]["loss"] < history[0]["loss"] / 10, "a real optimisation made real progress"
    assert res.changed is True
    assert "30 evaluations" in repr(res) and "budget" in repr(res)


def test_best_image_is_the_lowest_loss_iterate_and_a_copy(device):
    start, target = tensors(device)
    quadratic = ill_conditioned(target)

    def bumped(x, n):  # from evaluation 4 on the loss carries +100, so the best is an early iterate
        loss, parts = quadratic(x)
        return (loss + 100.0 if n >= 4 else loss), parts

    monitor, _ = quiet(12)
    seen = stylize_like_the_notebook(start, counting(bumped), monitor, 12)
    res = monitor.result()
    assert res.best_loss == pytest.approx(min(loss for _, loss in seen))
    torch.testing.assert_close(res.image, best_of(seen).clamp(0, 1))
    assert not torch.equal(res.image, seen[-1][0].clamp(0, 1))
    assert res.image.device.type == device.type and not res.image.requires_grad
    assert float(res.image.min()) >= 0 and float(res.image.max()) <= 1
    kept = res.image.clone()
    with torch.no_grad():
        seen.image.fill_(0.5)  # the optimised tensor changing later does not change the kept picture
    assert torch.equal(monitor.result().image, kept)


def test_frames_every_k_are_clipped_uint8_pictures_of_the_iterates(device):
    start, target = tensors(device)
    monitor, _ = quiet(10, frame_every=3)
    seen = stylize_like_the_notebook(start, ill_conditioned(target), monitor, 10)
    frames = monitor.result().frames
    assert len(frames) == 3  # evaluations 3, 6 and 9
    for frame, n in zip(frames, (3, 6, 9)):
        assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.shape == (8, 8, 3)
        expected = (seen[n - 1][0][0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round()
        assert np.abs(frame.astype(int) - expected).max() <= 1
    assert any(seen[n - 1][0].max() > 1 or seen[n - 1][0].min() < 0 for n in (3, 6, 9)), "clipping was exercised"
    monitor, _ = quiet(4)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 4)
    assert monitor.result().frames == [], "frame_every=0 (the default) keeps no frames"


def test_progress_is_printed_every_k_through_log(device):
    start, target = tensors(device)
    monitor, lines = quiet(10, print_every=5)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 10)
    progress = [line for line in lines if line.startswith("eval")]
    assert len(progress) == 3 and lines == progress  # evaluations 1, 5, 10; nothing else for a budget stop
    for line, n in zip(progress, (1, 5, 10)):
        assert f"{n}/10" in line and "loss" in line and "content" in line and "tv" in line


# --------------------------------------------------------------------------- what stops a run, and what it says


def test_non_finite_loss_stops_and_keeps_the_best(device):
    start, target = tensors(device)
    quadratic = ill_conditioned(target)

    def goes_nan(x, n):
        loss, parts = quadratic(x)
        return (loss * float("nan") if n >= 5 else loss), parts

    monitor, lines = quiet(50)
    seen = stylize_like_the_notebook(start, counting(goes_nan), monitor, 50)
    assert len(seen) == 5 and monitor.evaluations == 4, "the non-finite evaluation is not recorded"
    res = monitor.result()
    assert res.stop_reason == "non-finite" and math.isfinite(res.best_loss)
    torch.testing.assert_close(res.image, best_of(seen, 4).clamp(0, 1))
    assert any("evaluation 5" in line and "NaN" in line for line in lines)


def test_the_message_names_the_part_that_became_non_finite(device):
    start, target = tensors(device)

    def tv_breaks(x, n):
        content = (x - target).pow(2).mean()
        tv = smoothness(x) * (float("nan") if n >= 3 else 1.0)
        return content + 0.1 * tv, {"content": content, "style": content * 0 + 2.0, "tv": tv}

    monitor, lines = quiet(20)
    stylize_like_the_notebook(start, counting(tv_breaks), monitor, 20)
    assert monitor.stop_reason == "non-finite" and monitor.evaluations == 2
    message = " ".join(lines)
    assert "tv" in words(message) and "tv_weight" in words(message)
    assert not {"style_weight", "content_weight", "lr"} & words(message), message


def test_a_diverging_image_blames_the_step_size(device):
    start, _ = tensors(device)
    monitor, lines = quiet(2000)
    seen = stylize_like_the_notebook(start, lambda x: (-x.pow(2).sum(), {"content": x.pow(2).mean()}), monitor,
                                     2000, lr=1e6)
    assert monitor.stop_reason == "non-finite" and len(seen) < 2000
    assert "lr" in words(" ".join(lines)) and "diverged" in " ".join(lines)


class _NaNGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient backward (like sqrt at 0 or a broken custom layer)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_gradient_stops_and_keeps_the_best(device):
    start, target = tensors(device)
    quadratic = ill_conditioned(target)

    def bad_gradient(x, n):
        return quadratic(_NaNGradient.apply(x) if n >= 4 else x)

    monitor, lines = quiet(50)
    seen = stylize_like_the_notebook(start, counting(bad_gradient), monitor, 50)
    assert monitor.stop_reason == "non-finite" and len(seen) == 4 and monitor.evaluations == 3
    assert math.isfinite(seen[-1][1]), "the loss itself stayed finite"
    assert any("gradient" in line for line in lines)
    torch.testing.assert_close(monitor.result().image, best_of(seen, 3).clamp(0, 1))


def test_a_non_finite_first_evaluation_leaves_no_result(device):
    start, _ = tensors(device)
    monitor, _ = quiet(10)
    stylize_like_the_notebook(start, lambda x: (x.sum() * float("inf"), {}), monitor, 10)
    assert monitor.stop_reason == "non-finite" and monitor.evaluations == 0
    with pytest.raises(NSTError, match="no finite evaluation"):
        monitor.result()


@pytest.mark.parametrize("loss_at, patience, reason, evaluations", [
    (lambda n: 1.0, 5, "stalled", 6),                   # nothing after evaluation 1: the 5th idle one stops
    (lambda n: 1.0 - 1e-7 * n, 4, "stalled", 5),        # improvements below stall_rtol=1e-5 do not count
    (lambda n: 1.0 - 4e-6 * n, 4, "budget", 20),        # each step is below rtol, but 3 of them are not
    (lambda n: 1.0 / n, 3, "budget", 20),               # real progress
], ids=["constant", "below-rtol", "slow-but-steady", "progress"])
def test_stall_after_patience(device, loss_at, patience, reason, evaluations):
    start, _ = tensors(device)
    monitor, lines = quiet(20, stall_patience=patience, stall_rtol=1e-5)
    seen = stylize_like_the_notebook(start, counting(lambda x, n: (x.sum() * 0 + loss_at(n), {})), monitor, 20)
    assert monitor.stop_reason == reason and monitor.evaluations == evaluations == len(seen)
    assert monitor.best_loss == pytest.approx(min(loss for _, loss in seen), rel=0, abs=1e-9)
    assert any("not improved" in line for line in lines) == (reason == "stalled")


def test_interrupt_keeps_the_best_image(device):
    start, target = tensors(device)
    quadratic = ill_conditioned(target)

    def pressed_at_5(x, n):
        if n == 5:
            raise KeyboardInterrupt
        return quadratic(x)

    monitor, lines = quiet(50)
    try:
        seen = stylize_like_the_notebook(start, counting(pressed_at_5), monitor, 50)
    except KeyboardInterrupt:  # caught so that a failure does not end the pytest session
        pytest.fail("the KeyboardInterrupt escaped the notebook's loop")
    assert len(seen) == 4 and monitor.evaluations == 4
    res = monitor.result()
    assert res.stop_reason == "interrupted"
    torch.testing.assert_close(res.image, best_of(seen).clamp(0, 1))
    assert any("interrupted" in line for line in lines)
    monitor.interrupt()  # a second press after the stop changes nothing
    assert monitor.stop_reason == "interrupted"


def test_update_after_the_run_ended_raises_stop_run(device):
    start, target = tensors(device)
    monitor, _ = quiet(3)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 3)
    x = start.clone().requires_grad_(True)
    with pytest.raises(StopRun) as info:
        monitor.update(x, x.sum())
    assert "already stopped (budget)" in str(info.value) and monitor.evaluations == 3


@pytest.mark.parametrize("case", ["loss-constant-in-the-image", "already-at-the-minimum"])
def test_an_unchanged_picture_is_reported(device, case):
    start, target = tensors(device)
    if case == "loss-constant-in-the-image":
        loss_fn = lambda x: (x.sum() * 0 + 3.0, {"content": 3.0})  # noqa: E731
    else:  # the content image with style_weight=0: gradient zero from the start
        target = start
        loss_fn = lambda x: ((x - target).pow(2).mean(), {"content": (x - target).pow(2).mean()})  # noqa: E731
    monitor, lines = quiet(8)
    stylize_like_the_notebook(start, loss_fn, monitor, 8)
    res = monitor.result()
    assert res.changed is False
    note = [line for line in lines if "did not change" in line]
    assert len(note) == 1 and "style_weight" in note[0] and "noise" in note[0]


def test_summary_has_no_pictures_and_is_json(device):
    start, target = tensors(device)
    monitor, _ = quiet(6, frame_every=2)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 6)
    res = monitor.result()
    summary = res.summary()
    assert "image" not in summary and "frames" not in summary and len(res.frames) == 3
    assert {"best_loss", "history", "stop_reason", "seconds", "evaluations", "changed"} <= set(summary)
    assert json.loads(json.dumps(summary, allow_nan=False))["evaluations"] == 6
    if device.type == "cuda":
        assert summary["peak_memory_mb"] > 0
    else:
        assert summary["peak_memory_mb"] is None


# --------------------------------------------------------------------------- live mode


def test_live_mode_shows_a_bar_and_one_preview_updated_in_place(device, capsys, monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle() if display_id else None

    monkeypatch.setattr(IPython.display, "display", fake_display)
    start, target = tensors(device)
    monitor, lines = quiet(6, live=True, preview_every=2, print_every=1)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 6)
    assert monitor.stop_reason == "budget" and lines == [], "live mode replaces the log lines"
    assert "6/6" in capsys.readouterr().err, "a tqdm bar counted the evaluations"
    assert [kind for kind, _ in shown] == ["display", "update", "update", "update"]  # evaluations 1, 2, 4, 6
    assert all(obj.mode == "RGB" and obj.size == (8, 8) for _, obj in shown)


def test_live_mode_outside_a_notebook_never_crashes(device, capsys, monkeypatch):
    start, target = tensors(device)
    # IPython installed but no shell: display() prints once and gives no handle to update
    monitor, _ = quiet(6, live=True, preview_every=1)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 6)
    assert monitor.result().evaluations == 6
    assert capsys.readouterr().out.count("PIL.Image") <= 1
    # no IPython at all: progress lines instead
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    monitor, lines = quiet(6, live=True, preview_every=1, print_every=2)
    stylize_like_the_notebook(start, ill_conditioned(target), monitor, 6)
    assert monitor.result().evaluations == 6 and len([line for line in lines if line.startswith("eval")]) == 4


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("name, value", [
    ("num_evals", 0), ("num_evals", -1), ("num_evals", 2.5), ("num_evals", True), ("num_evals", "10"),
    ("num_evals", None), ("frame_every", -1), ("print_every", -1), ("preview_every", -1), ("frame_every", 1.5),
    ("stall_patience", 0), ("stall_rtol", -1.0), ("stall_rtol", float("nan")), ("live", "maybe"), ("live", None),
    ("live", 2),
])
def test_bad_arguments_are_refused(name, value):
    kwargs = {"num_evals": 10, name: value}
    with pytest.raises(ParameterError, match=name):
        Monitor(**kwargs)


def test_result_before_any_evaluation():
    with pytest.raises(NSTError, match="not started"):
        Monitor(10).result()

"""The L-BFGS guard Monitor on a toy problem: minimise ||x - t||^2 for a [1, 3, 8, 8] tensor x."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nst_utils
from nst_utils import Monitor, NSTError, ParameterError, RunResult


class ToyRun:
    """Runs L-BFGS on ||x - t||^2 with a Monitor, remembering every evaluated iterate and loss.

    Knobs (all counted in closure evaluations, 1-based):
      bump_from:   from this evaluation on, add a constant 100 to the loss (same gradient), so the
                   best iterate is not the last one;
      nan_from:    from this evaluation on, the loss is NaN;
      bad_grad_from: from this evaluation on, one gradient entry is NaN (loss stays finite);
      raise_at:    raise ``exc`` inside the closure at this evaluation (before monitor.update);
      loss_fn:     replaces the loss: loss_fn(x, t, n) -> scalar tensor.
    """

    def __init__(self, monitor, *, bump_from=None, nan_from=None, bad_grad_from=None, raise_at=None,
                 exc=None, loss_fn=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.target = torch.rand(1, 3, 8, 8, generator=g)
        self.x = torch.rand(1, 3, 8, 8, generator=g).requires_grad_(True)
        self.monitor = monitor
        self.iterates: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.calls = 0
        self.kw = dict(bump_from=bump_from, nan_from=nan_from, bad_grad_from=bad_grad_from,
                       raise_at=raise_at, exc=exc, loss_fn=loss_fn)

    def run(self, max_steps=200):
        opt = torch.optim.LBFGS([self.x], lr=1, max_iter=20)
        kw, x, t = self.kw, self.x, self.target

        def closure():
            opt.zero_grad()
            self.calls += 1
            n = self.calls
            if kw["raise_at"] is not None and n == kw["raise_at"]:
                raise kw["exc"]
            loss = kw["loss_fn"](x, t, n) if kw["loss_fn"] else (x - t).pow(2).sum()
            if kw["bump_from"] is not None and n >= kw["bump_from"]:
                loss = loss + 100.0
            if kw["nan_from"] is not None and n >= kw["nan_from"]:
                loss = loss * float("nan")
            loss.backward()
            if kw["bad_grad_from"] is not None and n >= kw["bad_grad_from"]:
                x.grad[0, 0, 0, 0] = float("nan")
            self.iterates.append(x.detach().clone())
            self.losses.append(float(loss.detach()))
            self.monitor.update(x, loss, {"a": loss, "half": loss / 2})
            return loss

        with self.monitor:
            for _ in range(max_steps):  # a bounded "while True", so a broken Monitor cannot hang the suite
                opt.step(closure)
        return self.monitor


def _quiet(**kwargs):
    """A Monitor that logs into a list instead of printing."""
    lines: list[str] = []
    kwargs.setdefault("print_every", 0)
    kwargs.setdefault("stall_patience", 1000)
    return Monitor(log=lines.append, **kwargs), lines


# --------------------------------------------------------------------------- budget, history, best


def test_stops_exactly_at_budget():
    # 30 evaluations: more than one optimizer.step (max_iter=20), so the stop falls inside a step
    monitor, _ = _quiet(num_evals=30)
    toy = ToyRun(monitor)
    toy.run()
    assert monitor.stop_reason == "budget"
    assert monitor.done
    assert toy.calls == 30
    assert len(monitor.history) == 30
    res = monitor.result()
    assert isinstance(res, RunResult)
    assert res.evaluations == 30 and res.stop_reason == "budget"
    assert res.seconds >= 0 and "budget" in repr(res)


def test_history_has_one_entry_per_evaluation():
    monitor, _ = _quiet(num_evals=12)
    toy = ToyRun(monitor)
    toy.run()
    hist = monitor.history
    assert [h["eval"] for h in hist] == list(range(1, 13))
    assert all({"eval", "seconds", "loss", "a", "half"} <= set(h) for h in hist)
    secs = [h["seconds"] for h in hist]
    assert all(s >= 0 for s in secs) and secs == sorted(secs)
    assert [h["loss"] for h in hist] == pytest.approx(toy.losses)
    assert [h["a"] for h in hist] == pytest.approx(toy.losses)
    assert [h["half"] for h in hist] == pytest.approx([v / 2 for v in toy.losses])
    assert all(isinstance(h["loss"], float) and isinstance(h["a"], float) for h in hist)
    # L-BFGS on a quadratic makes real progress
    assert hist[-1]["loss"] < hist[0]["loss"] / 100


def test_best_image_is_lowest_loss_iterate():
    # from evaluation 3 on the loss carries +100 (more than the start loss, ~30), so the best
    # iterate is one of the first two, taken while x is still far from converged
    monitor, _ = _quiet(num_evals=15)
    toy = ToyRun(monitor, bump_from=3)
    toy.run()
    best = int(np.argmin(toy.losses))
    assert best < 2
    res = monitor.result()
    assert res.best_loss == pytest.approx(min(toy.losses))
    torch.testing.assert_close(res.image, toy.iterates[best].clamp(0, 1))
    assert not torch.equal(res.image, toy.iterates[-1].clamp(0, 1))
    assert not res.image.requires_grad
    assert float(res.image.min()) >= 0 and float(res.image.max()) <= 1


def test_best_image_is_a_copy():
    monitor, _ = _quiet(num_evals=5)
    toy = ToyRun(monitor)
    toy.run()
    kept = monitor.result().image.clone()
    with torch.no_grad():
        toy.x.fill_(0.5)  # the optimiser's tensor changing later must not change the kept image
    assert torch.equal(monitor.result().image, kept)


def test_frames_recorded_every_k():
    monitor, _ = _quiet(num_evals=10, frame_every=3)
    toy = ToyRun(monitor)
    toy.run()
    res = monitor.result()
    assert monitor.recorder.steps == [3, 6, 9]
    assert len(res.frames) == 3
    for frame, i in zip(res.frames, [3, 6, 9]):
        assert frame.dtype == np.uint8 and frame.shape == (8, 8, 3)
        np.testing.assert_array_equal(frame, nst_utils.to_uint8_frame(toy.iterates[i - 1]))


def test_no_frames_by_default():
    monitor, _ = _quiet(num_evals=6)
    ToyRun(monitor).run()
    assert monitor.result().frames == []


def test_progress_printed_every_k():
    monitor, lines = _quiet(num_evals=10, print_every=5)
    ToyRun(monitor).run()
    progress = [line for line in lines if line.startswith("eval")]
    assert len(progress) == 3  # evaluations 1, 5 and 10
    assert "1/10" in progress[0] and "5/10" in progress[1] and "10/10" in progress[2]
    assert "a " in progress[0] and "half " in progress[0]


# --------------------------------------------------------------------------- stops


def test_non_finite_loss_stops_and_keeps_best(capsys):
    monitor = Monitor(num_evals=50, print_every=0, stall_patience=1000)  # default log=print
    toy = ToyRun(monitor, nan_from=5)
    toy.run()
    assert monitor.stop_reason == "non-finite"
    assert toy.calls == 5
    assert len(monitor.history) == 4  # only the finite evaluations
    out = capsys.readouterr().out
    assert "evaluation 5" in out and "loss" in out
    assert "style_weight" in out and "learning rate" in out
    res = monitor.result()
    assert res.stop_reason == "non-finite"
    assert torch.isfinite(res.image).all()
    best = int(np.argmin(toy.losses[:4]))
    torch.testing.assert_close(res.image, toy.iterates[best].clamp(0, 1))
    assert math.isfinite(res.best_loss)


def test_non_finite_gradient_stops_and_keeps_best(capsys):
    monitor = Monitor(num_evals=50, print_every=0, stall_patience=1000)
    toy = ToyRun(monitor, bad_grad_from=4)
    toy.run()
    assert monitor.stop_reason == "non-finite"
    assert toy.calls == 4 and len(monitor.history) == 3
    out = capsys.readouterr().out
    assert "gradient" in out and "style_weight" in out
    res = monitor.result()
    assert torch.isfinite(res.image).all()
    torch.testing.assert_close(res.image, toy.iterates[int(np.argmin(toy.losses[:3]))].clamp(0, 1))


def test_first_evaluation_non_finite_gives_no_result():
    monitor, _ = _quiet(num_evals=10)
    ToyRun(monitor, nan_from=1).run()
    assert monitor.stop_reason == "non-finite"
    with pytest.raises(NSTError):
        monitor.result()


def test_constant_loss_stalls_after_patience():
    monitor, lines = _quiet(num_evals=100, stall_patience=5)
    toy = ToyRun(monitor, loss_fn=lambda x, t, n: x.sum() * 0 + 1.0)
    toy.run()
    assert monitor.stop_reason == "stalled"
    # evaluation 1 sets the best; evaluations 2..6 bring nothing; the 5th of them stops the run
    assert toy.calls == 6 and len(monitor.history) == 6
    assert any("stalled" in line for line in lines)
    assert monitor.result().stop_reason == "stalled"


def test_improvements_below_rtol_count_as_stall():
    # relative improvement 1e-7 per evaluation is below stall_rtol=1e-5
    monitor, _ = _quiet(num_evals=100, stall_patience=4, stall_rtol=1e-5)
    toy = ToyRun(monitor, loss_fn=lambda x, t, n: x.sum() * 0 + (1.0 - 1e-7 * n))
    toy.run()
    assert monitor.stop_reason == "stalled" and toy.calls == 5
    # the (slightly) lowest loss is still the one kept
    assert monitor.best_loss == pytest.approx(min(toy.losses))
    torch.testing.assert_close(monitor.result().image, toy.iterates[-1].clamp(0, 1))


def test_real_progress_does_not_stall():
    monitor, _ = _quiet(num_evals=20, stall_patience=3)
    toy = ToyRun(monitor, loss_fn=lambda x, t, n: x.sum() * 0 + 1.0 / n)  # halves, thirds, ...
    toy.run()
    assert monitor.stop_reason == "budget" and toy.calls == 20


def test_keyboard_interrupt_is_absorbed():
    monitor, lines = _quiet(num_evals=50)
    toy = ToyRun(monitor, raise_at=5, exc=KeyboardInterrupt())
    try:
        toy.run()  # must not raise
    except KeyboardInterrupt:  # (caught here so that a failure does not abort the whole pytest session)
        pytest.fail("KeyboardInterrupt escaped from `with monitor:`")
    assert monitor.stop_reason == "interrupted"
    assert len(monitor.history) == 4
    assert any("Interrupted" in line for line in lines)
    res = monitor.result()
    assert res.stop_reason == "interrupted"
    torch.testing.assert_close(res.image, toy.iterates[int(np.argmin(toy.losses))].clamp(0, 1))


def test_out_of_memory_becomes_nst_error():
    monitor, _ = _quiet(num_evals=50)
    toy = ToyRun(monitor, raise_at=3, exc=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(NSTError) as info:
        toy.run()
    msg = str(info.value)
    assert "memory" in msg and "smaller image_size" in msg
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_other_exceptions_propagate():
    monitor, _ = _quiet(num_evals=50)
    toy = ToyRun(monitor, raise_at=3, exc=RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom") as info:
        toy.run()
    assert not isinstance(info.value, NSTError)
    assert monitor.stop_reason == ""
    # what was seen so far is still available
    assert monitor.result().evaluations == 2


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("bad", [0, -1, 2.5, "10", None])
def test_bad_num_evals(bad):
    with pytest.raises(ParameterError):
        Monitor(num_evals=bad)


@pytest.mark.parametrize("kwargs", [{"stall_patience": 0}, {"print_every": -1}, {"frame_every": -2}, {"frame_every": 1.5}])
def test_bad_monitor_options(kwargs):
    with pytest.raises(ParameterError):
        Monitor(num_evals=10, **kwargs)


def test_result_before_any_evaluation():
    with pytest.raises(NSTError, match="not started"):
        Monitor(num_evals=10).result()


def test_update_outside_with_block_raises_stop():
    """Used without ``with``, the stop is a StopOptimization exception the caller sees."""
    monitor, _ = _quiet(num_evals=1)
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(nst_utils.StopOptimization):
        monitor.update(x, x.sum())
    assert monitor.stop_reason == "budget" and len(monitor.history) == 1


def test_live_mode_shows_a_progress_bar_and_an_in_place_preview(capsys, monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle()

    import IPython.display
    monkeypatch.setattr(IPython.display, "display", fake_display)
    lines: list[str] = []
    monitor = Monitor(6, live=True, preview_every=2, print_every=1, log=lines.append)
    ToyRun(monitor).run()
    assert monitor.stop_reason == "budget" and len(monitor.history) == 6
    assert lines == [], "live mode replaces the log lines"
    assert "6/6" in capsys.readouterr().err, "a tqdm bar counted the evaluations"
    kinds = [k for k, _ in shown]
    assert kinds == ["display", "update", "update", "update"], "one preview, updated in place (evals 1, 2, 4, 6)"
    assert all(obj.mode == "RGB" and obj.size == (8, 8) for _, obj in shown)


def test_live_preview_off_without_live():
    monitor = Monitor(3, live=False, preview_every=1, print_every=0)
    ToyRun(monitor).run()
    assert monitor.preview_every == 0 and monitor._bar is None

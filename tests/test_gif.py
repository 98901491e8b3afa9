"""Animated GIFs: FrameRecorder, save_gif, optimize_gif."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nst_utils
from nst_utils import FrameRecorder, ParameterError

HAS_GIFSICLE = shutil.which("gifsicle") is not None


def _frames(n=5, h=40, w=48, seed=0) -> list[np.ndarray]:
    """Distinct frames (identical consecutive frames would be merged by the GIF writer)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, w)[None, :, None] + np.zeros((h, w, 3))
    return [np.clip(base + 10 * i + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for i in range(n)]


def _read_gif(path):
    with Image.open(path) as im:
        n = im.n_frames
        size = im.size
        loop = im.info.get("loop")
        durations, pixels = [], []
        for i in range(n):
            im.seek(i)
            durations.append(im.info["duration"])
            pixels.append(np.asarray(im.convert("RGB")))
    return n, size, loop, durations, pixels


# --------------------------------------------------------------------------- FrameRecorder


def test_frame_recorder_keeps_every_kth():
    rec = FrameRecorder(every=3)
    images = {}
    for step in range(1, 11):
        images[step] = torch.rand(1, 3, 6, 5)
        kept = rec.record(step, images[step])
        assert kept == (step % 3 == 0)
    assert rec.steps == [3, 6, 9]
    assert len(rec.frames) == 3
    for step, frame in zip(rec.steps, rec.frames):
        assert frame.dtype == np.uint8 and frame.shape == (6, 5, 3)
        expected = (images[step][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(frame, expected)


def test_frame_recorder_every_1_keeps_all_and_copies():
    rec = FrameRecorder(1)
    img = torch.zeros(1, 3, 4, 4)
    rec.record(1, img)
    img += 1  # modifying the image afterwards must not change the stored frame
    rec.record(2, img)
    assert rec.steps == [1, 2]
    assert rec.frames[0].max() == 0 and rec.frames[1].min() == 255


def test_frame_recorder_zero_keeps_none():
    rec = FrameRecorder(0)
    assert not any(rec.record(step, torch.rand(1, 3, 4, 4)) for step in range(1, 20))
    assert rec.frames == [] and rec.steps == []


@pytest.mark.parametrize("bad", [-1, -5, 2.5, 1.0, "3", None])
def test_frame_recorder_rejects_bad_interval(bad):
    with pytest.raises(ParameterError):
        FrameRecorder(bad)


def test_frame_recorder_skips_non_finite():
    rec = FrameRecorder(1)
    bad = torch.rand(1, 3, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    assert rec.record(1, bad) is False
    inf = torch.rand(1, 3, 4, 4)
    inf[0, 2, 1, 1] = float("inf")
    assert rec.record(2, inf) is False
    assert rec.record(3, torch.rand(1, 3, 4, 4)) is True
    assert rec.steps == [3]


def test_frame_recorder_clips():
    rec = FrameRecorder(1)
    rec.record(1, torch.tensor([-1.0, 0.5, 2.0]).view(1, 3, 1, 1))
    np.testing.assert_array_equal(rec.frames[0].reshape(3), [0, 128, 255])


# --------------------------------------------------------------------------- save_gif


def test_save_gif_frames_size_durations_loop(tmp_path):
    frames = _frames(5)
    out = nst_utils.save_gif(frames, tmp_path / "anim.gif", duration_ms=80, last_frame_ms=1500)
    assert out == tmp_path / "anim.gif"
    n, size, loop, durations, pixels = _read_gif(out)
    assert n == 5
    assert size == (48, 40)
    assert durations == [80, 80, 80, 80, 1500]
    assert loop == 0  # loop forever
    # GIF quantises colours; the picture must still be close to the frame
    for got, want in zip(pixels, frames):
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 8


def test_save_gif_last_frame_like_others_and_pil_input(tmp_path):
    frames = [Image.fromarray(f) for f in _frames(3)]
    out = nst_utils.save_gif(frames, tmp_path / "a.gif", duration_ms=120, last_frame_ms=None)
    n, size, loop, durations, _ = _read_gif(out)
    assert n == 3 and size == (48, 40)
    assert durations == [120, 120, 120]


def test_save_gif_loop_count_is_stored(tmp_path):
    out = nst_utils.save_gif(_frames(3), tmp_path / "a.gif", loop=3)
    assert _read_gif(out)[2] == 3


def test_save_gif_single_frame(tmp_path):
    """A short run with a large frame interval records one frame; that must still make a GIF."""
    frames = _frames(1)
    out = nst_utils.save_gif(frames, tmp_path / "one.gif", duration_ms=80, last_frame_ms=1500)
    n, size, _, durations, pixels = _read_gif(out)
    assert n == 1 and size == (48, 40)
    assert durations == [1500]  # the only frame is also the last one
    assert np.abs(pixels[0].astype(int) - frames[0].astype(int)).mean() < 8


def test_save_gif_no_overwrite_without_flag(tmp_path):
    first = nst_utils.save_gif(_frames(3, seed=1), tmp_path / "anim.gif")
    before = first.read_bytes()
    second = nst_utils.save_gif(_frames(4, seed=2), tmp_path / "anim.gif")
    assert second == tmp_path / "anim-1.gif"
    assert first.read_bytes() == before
    third = nst_utils.save_gif(_frames(2, seed=3), tmp_path / "anim.gif", overwrite=True)
    assert third == first and _read_gif(first)[0] == 2
    assert sorted(os.listdir(tmp_path)) == ["anim-1.gif", "anim.gif"]  # no temp files


def test_save_gif_protect(tmp_path):
    src = nst_utils.save_gif(_frames(2), tmp_path / "input.gif")
    before = src.read_bytes()
    with pytest.raises(ParameterError):
        nst_utils.save_gif(_frames(3), src, overwrite=True, protect=[src])
    assert src.read_bytes() == before


def test_save_gif_empty_frames():
    with pytest.raises(ParameterError):
        nst_utils.save_gif([], "never_written.gif")
    assert not os.path.exists("never_written.gif")


def test_save_gif_mismatched_sizes(tmp_path):
    frames = _frames(2) + _frames(1, h=41)
    with pytest.raises(ParameterError):
        nst_utils.save_gif(frames, tmp_path / "bad.gif")
    assert os.listdir(tmp_path) == []


def test_save_gif_from_recorder(tmp_path):
    rec = FrameRecorder(2)
    for step in range(1, 9):
        rec.record(step, torch.full((1, 3, 32, 36), step / 10))
    out = nst_utils.save_gif(rec.frames, tmp_path / "rec.gif")
    n, size, *_ = _read_gif(out)
    assert n == 4 and size == (36, 32)


# --------------------------------------------------------------------------- optimize_gif


@pytest.mark.skipif(not HAS_GIFSICLE and not os.environ.get("CI"),
                    reason="the gifsicle binary is not installed (optional tool; CI installs it)")
def test_optimize_gif_with_gifsicle(tmp_path):
    path = nst_utils.save_gif(_frames(6), tmp_path / "anim.gif")
    n0, size0, loop0, durations0, _ = _read_gif(path)
    bytes0 = path.stat().st_size
    assert nst_utils.optimize_gif(path) is True
    n, size, loop, durations, _ = _read_gif(path)  # still a readable GIF
    assert (n, size, loop, durations) == (n0, size0, loop0, durations0)
    assert path.stat().st_size <= bytes0
    assert os.listdir(tmp_path) == ["anim.gif"]


@pytest.mark.skipif(not HAS_GIFSICLE and not os.environ.get("CI"),
                    reason="the gifsicle binary is not installed (optional tool; CI installs it)")
def test_optimize_gif_colors_none_is_lossless(tmp_path):
    """colors=None means: no colour reduction; -O3 alone must not change a single pixel."""
    path = nst_utils.save_gif(_frames(4), tmp_path / "anim.gif")
    n0, size0, _, durations0, pixels0 = _read_gif(path)
    before = path.read_bytes()
    assert nst_utils.optimize_gif(path, colors=None) is True
    assert path.read_bytes() != before  # gifsicle really rewrote the file (it re-encodes every frame)
    n, size, _, durations, pixels = _read_gif(path)
    assert (n, size, durations) == (n0, size0, durations0)
    for a, b in zip(pixels0, pixels):
        np.testing.assert_array_equal(a, b)
    # (no size check here: with 256-colour local palettes -O3 may even add a few bytes)


def test_optimize_gif_without_gifsicle(tmp_path, monkeypatch):
    path = nst_utils.save_gif(_frames(3), tmp_path / "anim.gif")
    before = path.read_bytes()
    monkeypatch.setattr(nst_utils.shutil, "which", lambda *args, **kwargs: None)
    with pytest.warns(UserWarning, match="gifsicle is not installed.*install"):
        assert nst_utils.optimize_gif(path) is False
    assert path.read_bytes() == before


@pytest.mark.skipif(not HAS_GIFSICLE and not os.environ.get("CI"),
                    reason="the gifsicle binary is not installed (optional tool; CI installs it)")
def test_optimize_gif_lossy_makes_noisy_gifs_much_smaller(tmp_path):
    rng = np.random.default_rng(0)
    photo = Path(__file__).resolve().parents[1] / "assets" / "inputs" / "dog.jpg"
    base = np.asarray(nst_utils.load_image(photo, 64), dtype=int)  # 64x48, like a picture being optimised
    frames = [np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8) for _ in range(6)]
    plain = nst_utils.save_gif(frames, tmp_path / "plain.gif")
    lossy = nst_utils.save_gif(frames, tmp_path / "lossy.gif")
    assert nst_utils.optimize_gif(plain) and nst_utils.optimize_gif(lossy, lossy=80)
    assert lossy.stat().st_size < 0.8 * plain.stat().st_size
    with Image.open(lossy) as gif:
        assert gif.n_frames == 6 and gif.size == (64, 48)

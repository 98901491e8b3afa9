"""Animated GIFs: save_gif (frames, timing, loop, colours, refusal of broken frames, gifsicle).

The rules shared with the other kinds of file (no overwrite, protection, temporaries) are in
test_saving.py.
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import nst_utils
from nst_utils import ParameterError

needs_gifsicle = pytest.mark.skipif(
    shutil.which("gifsicle") is None and not os.environ.get("CI"),
    reason="the gifsicle program is not installed (optional; CI installs it)",
)

H, W = 24, 32
PALETTE = np.array(
    [[230, 20, 20], [20, 200, 40], [30, 40, 220], [250, 250, 250], [0, 0, 0], [128, 64, 200]]
)


def _frames(n: int) -> list[np.ndarray]:
    """Distinct frames of four flat stripes each: few colours, so the GIF stores them exactly."""
    frames = []
    for i in range(n):
        stripes = PALETTE[(np.arange(4) + i) % len(PALETTE)]
        frames.append(np.repeat(stripes, W // 4, axis=0)[None].repeat(H, axis=0).astype(np.uint8))
    return frames


def _noisy_frames(n: int, gradient) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.asarray(gradient(64, 48), dtype=int)
    return [
        np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8) for _ in range(n)
    ]


def _read_gif(path):
    """(frames as uint8 [H, W, 3] arrays, durations in ms, loop)."""
    with Image.open(path) as im:
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
            frames.append(np.asarray(im.convert("RGB")))
        return frames, durations, im.info.get("loop")


# --------------------------------------------------------------------------- save_gif


@pytest.mark.parametrize(
    "n, loop, last_frame_ms, durations",
    [
        (5, 0, 1500, [80, 80, 80, 80, 1500]),
        (3, 3, None, [80, 80, 80]),
        (
            1,
            0,
            1500,
            [1500],
        ),  # a short run records one frame: still a GIF, and that frame is the last one
    ],
)
def test_save_gif_stores_frames_durations_and_loop(tmp_path, n, loop, last_frame_ms, durations):
    frames = _frames(n)
    out = nst_utils.OutputDir(tmp_path).save_gif(
        frames, "anim.gif", duration_ms=80, last_frame_ms=last_frame_ms, loop=loop
    )
    assert out == tmp_path / "anim.gif"
    got, got_durations, got_loop = _read_gif(out)
    assert len(got) == n and got[0].shape == (H, W, 3)
    assert got_durations == durations and got_loop == loop
    for a, b in zip(got, frames, strict=False):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", ["PIL", "float64 array", "float32 array", "tensor"])
def test_save_gif_takes_every_frame_form_with_the_right_colours(tmp_path, device, form):
    frames = _frames(3)
    convert = {
        "PIL": Image.fromarray,
        "float64 array": lambda f: f / 255.0,
        "float32 array": lambda f: (f / 255.0).astype(np.float32),
        "tensor": lambda f: torch.from_numpy(f / 255.0).float().permute(2, 0, 1)[None].to(device),
    }[form]
    got, _, _ = _read_gif(
        nst_utils.OutputDir(tmp_path).save_gif([convert(f) for f in frames], "anim.gif")
    )
    for a, b in zip(got, frames, strict=False):  # not black, not white: the colours that were given
        np.testing.assert_array_equal(a, b)


def _nan_tensor(device):
    t = torch.rand(1, 3, H, W, device=device)
    t[0, 1, 2, 3] = float("nan")
    return t


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: [_frames(1)[0] / 255.0, np.full((H, W, 3), np.nan)], "frames\\[1\\].*NaN"),
        (lambda d: [_nan_tensor(d)], "frames\\[0\\].*NaN"),
        (lambda d: [np.full((H, W, 3), np.inf, np.float32)], "infinite"),
        (lambda d: [f.astype(np.float32) for f in _frames(2)], "0..1"),  # 0..255 data as floats
        (lambda d: [torch.rand(1, 3, H, W, device=d) * 255], "0..1"),
        (
            lambda d: _frames(2) + [np.zeros((H + 1, W, 3), np.uint8)],
            r"anim.gif: .*\(24, 32\), \(25, 32\)",
        ),
        (lambda d: [np.zeros((H, W), np.uint8)], "shape"),
        (lambda d: [], "anim.gif: .*at least one frame"),
    ],
)
def test_save_gif_refuses_broken_frames_and_writes_nothing(tmp_path, device, make, words):
    with pytest.raises(ParameterError, match=words):
        nst_utils.OutputDir(tmp_path / "out").save_gif(make(device), "anim.gif")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- lossy: gifsicle


@needs_gifsicle
def test_lossy_0_shrinks_with_gifsicle_and_keeps_every_pixel(tmp_path, gradient):
    frames = _noisy_frames(4, gradient)
    plain = nst_utils.OutputDir(tmp_path).save_gif(frames, "plain.gif", loop=2)
    optimized = nst_utils.OutputDir(tmp_path).save_gif(frames, "optimized.gif", loop=2, lossy=0)
    assert optimized.read_bytes() != plain.read_bytes()  # gifsicle really rewrote it
    before, after = _read_gif(plain), _read_gif(optimized)
    assert after[1:] == before[1:] and len(after[0]) == len(
        before[0]
    )  # durations, loop, frame count
    for a, b in zip(after[0], before[0], strict=False):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["optimized.gif", "plain.gif"]  # no temporary left


@needs_gifsicle
def test_lossy_makes_noisy_gifs_much_smaller(tmp_path, gradient):
    frames = _noisy_frames(6, gradient)
    plain = nst_utils.OutputDir(tmp_path).save_gif(frames, "plain.gif", lossy=0)
    lossy = nst_utils.OutputDir(tmp_path).save_gif(frames, "lossy.gif", lossy=80)
    assert lossy.stat().st_size < 0.8 * plain.stat().st_size
    got, _, _ = _read_gif(lossy)
    assert len(got) == 6 and got[0].shape == (48, 64, 3)
    assert (
        np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(got, frames, strict=False)]) < 12
    )  # a little noise only


def _gifsicle_on_path(tmp_path, monkeypatch, script: str | None) -> None:
    """PATH holds only a folder with a ``gifsicle`` that runs ``script``, or no gifsicle at all
    (None)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if script is not None:
        (folder / "gifsicle").write_text(f"#!/bin/sh\n{script}\n")
        (folder / "gifsicle").chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))


@pytest.mark.parametrize(
    "script, words",
    [
        (None, ["anim.gif: gifsicle is not installed", "install gifsicle"]),
        (
            "echo 'gifsicle: out of luck' >&2; exit 1",
            ["anim.gif: gifsicle failed (gifsicle: out of luck)"],
        ),
    ],
)
def test_without_a_working_gifsicle_the_gif_is_written_as_pillow_made_it(
    tmp_path, monkeypatch, script, words
):
    frames = _frames(3)
    plain = nst_utils.OutputDir(tmp_path).save_gif(frames, "plain.gif").read_bytes()
    _gifsicle_on_path(tmp_path, monkeypatch, script)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = nst_utils.OutputDir(tmp_path / "out").save_gif(frames, "anim.gif", lossy=40)
    assert len(caught) == 1 and all(w in str(caught[0].message) for w in words)
    assert path.read_bytes() == plain and os.listdir(tmp_path / "out") == ["anim.gif"]


def test_lossy_is_checked_before_anything_is_written(tmp_path):
    for bad in (-1, 2.5, "40"):
        with pytest.raises(ParameterError, match="lossy="):
            nst_utils.OutputDir(tmp_path).save_gif(_frames(2), "anim.gif", lossy=bad)
    assert os.listdir(tmp_path) == []

"""Saving that never overwrites or loses a file: OutputDir.save_image, save_gif, save_figure,
save_json.

The rules, for every kind of file: an existing file is kept and the new one goes to the next free
name (``name-1.ext``); ``overwrite=True`` replaces it, except a protected input (also reached
through
a symlink or hard link); parallel saves to one name never clobber each other; an unwritable folder
is a ParameterError; no temporary or partial file is left behind, even by a killed save.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from nst_utils import OutputDir, ParameterError

PRECIOUS = b"the user's own file, not to be lost"


def _colour(i: int) -> tuple[int, int, int]:
    return (40 * i % 256, 255 - 30 * i % 256, 100 + 20 * i % 156)


def _figure(i: int) -> Figure:
    fig = Figure(figsize=(0.5, 0.5), dpi=40)  # no pyplot: nothing to close
    fig.patch.set_facecolor(np.array(_colour(i)) / 255)
    return fig


# kind -> (suffix, save(out, name, i) with the OutputDir method of that kind, read(path) -> i)
def _read_colour(path: Path) -> int:
    with Image.open(path) as im:
        rgb = im.convert("RGB").getpixel((im.width // 2, im.height // 2))
    return next(i for i in range(8) if np.abs(np.subtract(rgb, _colour(i))).max() <= 2)


KINDS = {
    "image": (
        ".png",
        lambda out, name, i: out.save_image(Image.new("RGB", (32, 32), _colour(i)), name),
        _read_colour,
    ),
    "gif": (
        ".gif",
        lambda out, name, i: out.save_gif([np.full((32, 32, 3), _colour(i), np.uint8)] * 2, name),
        _read_colour,
    ),
    "figure": (".png", lambda out, name, i: out.save_figure(_figure(i), name), _read_colour),
    "json": (
        ".json",
        lambda out, name, i: out.save_json({"i": i}, name),
        lambda path: json.loads(path.read_text())["i"],
    ),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# -------------------------------------------------------------------- never overwrite, unless asked


def test_existing_file_is_kept_and_next_free_name_used_unless_overwrite(tmp_path, kind):
    suffix, save, read = KINDS[kind]
    user = tmp_path / f"name{suffix}"
    user.write_bytes(PRECIOUS)
    first = save(OutputDir(tmp_path), user.name, 1)
    second = save(OutputDir(str(tmp_path)), user.name, 2)
    assert (first, second) == (tmp_path / f"name-1{suffix}", tmp_path / f"name-2{suffix}")
    assert user.read_bytes() == PRECIOUS
    assert (read(first), read(second)) == (1, 2)
    assert (
        save(OutputDir(tmp_path, overwrite=True), first.name, 3) == first
    )  # asked for: replaced in place
    assert read(first) == 3 and read(second) == 2
    assert _listing(tmp_path) == sorted(
        p.name for p in (user, first, second)
    )  # no temporaries either


@pytest.mark.parametrize(
    "link", ["itself", "other spelling", "symlink", "hard link", "protect is a symlink"]
)
def test_protected_input_is_never_replaced_even_with_overwrite(tmp_path, kind, link):
    suffix, save, read = KINDS[kind]
    src = tmp_path / f"input{suffix}"
    src.write_bytes(PRECIOUS)
    target, protect = src, src
    if link == "other spelling":
        target, protect = tmp_path / "." / src.name, str(src)
    elif link == "symlink":
        target = tmp_path / f"out{suffix}"
        target.symlink_to(src)
    elif link == "hard link":
        target = tmp_path / f"out{suffix}"
        os.link(src, target)
    elif link == "protect is a symlink":
        protect = tmp_path / "alias"
        protect.symlink_to(src)
    out = save(
        OutputDir(Path(target).parent, overwrite=True, protect=[protect, None]),
        Path(target).name,
        5,
    )
    assert src.read_bytes() == PRECIOUS and target.read_bytes() == PRECIOUS
    assert out.name == f"{Path(target).stem}-1{suffix}" and read(out) == 5


def test_protecting_one_file_does_not_block_overwriting_another(tmp_path):
    src = tmp_path / "input.png"
    src.write_bytes(PRECIOUS)
    link = tmp_path / "out.png"
    link.symlink_to(
        src
    )  # not protected: the link is replaced, the file it pointed to is still kept
    out = OutputDir(tmp_path, overwrite=True, protect=["elsewhere.png"])
    assert out.save_image(Image.new("RGB", (32, 32), _colour(1)), "out.png") == link
    assert not link.is_symlink() and _read_colour(link) == 1
    assert src.read_bytes() == PRECIOUS


@pytest.mark.parametrize("bad", ["maybe", 2, None])
def test_output_dir_overwrite_must_be_a_boolean(tmp_path, bad):
    with pytest.raises(ParameterError, match="overwrite"):
        OutputDir(tmp_path, overwrite=bad)


# --------------------------------------------------------------------------- parallel saves


def _race_save(barrier, results, index: int, folder: str, saves: int) -> None:
    pictures = [Image.new("RGB", (8, 8), (40 * index, 6 * k, 77)) for k in range(saves)]
    barrier.wait(timeout=30)
    paths = [str(OutputDir(folder).save_image(picture, "name.png")) for picture in pictures]
    results.put((index, paths))


@pytest.fixture(scope="module")
def mp():
    """Separate processes that start at once: forked where possible (the children only use PIL and
    files, never torch), else spawned (each then imports torch: slower, but the same race)."""
    return multiprocessing.get_context("fork" if os.name == "posix" else "spawn")


def test_parallel_saves_to_one_name_never_overwrite_each_other(tmp_path, mp):
    n, saves = 6, 40
    barrier, results = mp.Barrier(n), mp.Queue()
    procs = [
        mp.Process(target=_race_save, args=(barrier, results, i, str(tmp_path), saves))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    reported = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    paths = [path for index in range(n) for path in reported[index]]
    assert len(set(paths)) == n * saves  # each save got its own file ...
    assert _listing(tmp_path) == sorted(
        ["name.png"] + [f"name-{k}.png" for k in range(1, n * saves)]
    )
    for index in range(n):  # ... and each picture is intact where its process said
        for k, path in enumerate(reported[index]):
            with Image.open(path) as im:
                assert np.all(np.asarray(im.convert("RGB")) == (40 * index, 6 * k, 77))


GIF_FRAMES = 400


def _slow_gif(folder: str, started) -> None:
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, (384, 384, 3), dtype=np.uint8) for _ in range(GIF_FRAMES)
    ]  # ~1.5 s to encode
    started.set()
    OutputDir(folder).save_gif(frames, "big.gif")


@pytest.mark.skipif(
    os.name != "posix", reason="SIGKILL and the sweep of stale temporaries are POSIX only"
)
def test_killed_save_leaves_nothing_but_complete_files(tmp_path, mp):
    started = mp.Event()
    proc = mp.Process(target=_slow_gif, args=(str(tmp_path), started))
    proc.start()
    assert started.wait(timeout=60)
    time.sleep(0.3)
    proc.kill()
    proc.join(timeout=10)
    assert proc.exitcode == -signal.SIGKILL  # really killed in the middle of the save
    for name in os.listdir(tmp_path):  # a complete GIF, or a hidden temporary of the dead process
        if name.startswith("."):
            assert (
                name.startswith(".big.gif.")
                and f"-{proc.pid}-" in name
                and name.endswith(".nst-tmp")
            )
        else:
            with Image.open(tmp_path / name) as im:
                assert im.n_frames == GIF_FRAMES
    OutputDir(tmp_path).save_image(
        Image.new("RGB", (32, 32)), "next.png"
    )  # the next save cleans up
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_temporaries_of_other_saves_are_left_alone_and_never_block_a_save(tmp_path):
    """Another process's temporary (a save in progress, in another container, or planted with an
    odd name) is neither removed nor in the way."""
    others = [
        tmp_path / ".result.png.0123abcd-99999999999999999999-ff.nst-tmp",
        tmp_path / ".result.png.abc.nst-tmp",
        tmp_path / ".result.png.notes",
    ]
    for p in others:
        p.write_bytes(b"partial")
    OutputDir(tmp_path).save_image(Image.new("RGB", (32, 32)), "result.png")
    assert _listing(tmp_path) == sorted([p.name for p in others] + ["result.png"])


# ------------------------------------------------------ failures: clear errors, nothing left behind


@pytest.mark.parametrize("where", ["parent is a file", "read-only folder"])
def test_unwritable_folder_is_a_parameter_error_naming_the_path(tmp_path, kind, where):
    suffix, save, _ = KINDS[kind]
    if where == "parent is a file":
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        target = tmp_path / "notes.txt" / "sub" / f"out{suffix}"
    elif (
        os.name == "posix" and os.geteuid() == 0
    ):  # root ignores permission bits: use a folder no one can write
        target = Path(f"/proc/nst-test-{os.getpid()}/out{suffix}")
    else:
        target = tmp_path / "locked" / f"out{suffix}"
        target.parent.mkdir(mode=0o500)
    try:
        with pytest.raises(ParameterError) as info:
            save(OutputDir(target.parent), target.name, 1)
    finally:
        if target.parent.name == "locked":
            target.parent.chmod(0o700)
    assert str(target.parent) in str(info.value) and not isinstance(info.value, OSError)


def test_broken_data_raises_before_anything_is_written(tmp_path, device):
    nan = torch.full((1, 3, 32, 32), float("nan"), device=device)
    folder = tmp_path / "never"
    out = OutputDir(folder)
    with pytest.raises(ParameterError, match="NaN"):
        out.save_image(nan, "r.png")
    with pytest.raises(ParameterError, match="NaN"):
        out.save_gif([torch.rand(1, 3, 32, 32, device=device), nan], "r.gif")
    with pytest.raises(TypeError):
        out.save_json({"model": object()}, "r.json")
    with pytest.raises(ParameterError, match="RGBA"):
        out.save_image(Image.new("RGBA", (32, 32)), "r.jpg")
    assert not folder.exists()


# --------------------------------------------------------------------------- save_image


def test_save_image_tensor_round_trip_is_exact(tmp_path, device):
    levels = torch.randint(0, 256, (1, 3, 24, 40), generator=torch.Generator().manual_seed(0))
    out = OutputDir(tmp_path).save_image((levels / 255).to(device), "r.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (40, 24)
        np.testing.assert_array_equal(
            np.asarray(im.convert("RGB")), levels[0].permute(1, 2, 0).numpy()
        )


@pytest.mark.parametrize("name, fmt", [("r.png", "PNG"), ("r.jpg", "JPEG"), ("r.JPEG", "JPEG")])
def test_save_image_format_follows_the_suffix(tmp_path, gradient, name, fmt):
    src = gradient(40, 32)
    out = OutputDir(tmp_path).save_image(src, name)
    with Image.open(out) as im:
        assert im.format == fmt and im.size == src.size
        assert (
            np.abs(np.asarray(im.convert("RGB"), dtype=int) - np.asarray(src, dtype=int)).mean() < 3
        )


@pytest.mark.parametrize(
    "name, words",
    [("result.xyz", "result.xyz"), ("result", "result"), ("folder.png", "folder.png")],
)
def test_save_image_refuses_bad_paths(tmp_path, name, words):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ParameterError, match=words) as info:
        OutputDir(tmp_path, overwrite=True).save_image(Image.new("RGB", (32, 32)), name)
    assert name in str(info.value)
    assert _listing(tmp_path) == ["folder.png"] and not os.listdir(tmp_path / "folder.png")


def test_save_image_creates_folders_and_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    out = OutputDir("~/a").save_image(Image.new("RGB", (32, 32), _colour(2)), "b/r.png")
    assert out == tmp_path / "a" / "b" / "r.png" and _read_colour(out) == 2


# --------------------------------------------------------------------------- save_figure, save_json


@pytest.mark.parametrize(
    "suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml"), (".pdf", b"%PDF")]
)
def test_save_figure_format_follows_the_suffix(tmp_path, suffix, magic):
    out = OutputDir(tmp_path).save_figure(_figure(1), f"fig{suffix}")
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["fig.xyz", "fig"])
def test_save_figure_refuses_unknown_types(tmp_path, name):
    with pytest.raises(ParameterError, match="unknown figure file type"):
        OutputDir(tmp_path).save_figure(_figure(1), name)
    assert _listing(tmp_path) == []


def test_save_json_round_trips_and_writes_nan_as_null(tmp_path):
    data = {
        "loss": [1.5, 0.25],
        "name": "dog",
        "nested": {"n": 3, "ok": True, "none": None},
        "pair": [1, "a"],
    }
    assert json.loads(OutputDir(tmp_path).save_json(data, "r.json").read_text()) == data
    odd = {
        "nan": math.nan,
        "inf": [math.inf],
        "np": np.float32(0.5),
        "t": torch.tensor(2.0),
        "tuple": (1, 2),
    }
    assert json.loads(OutputDir(tmp_path).save_json(odd, "odd.json").read_text()) == {
        "nan": None,
        "inf": [None],
        "np": 0.5,
        "t": 2.0,
        "tuple": [1, 2],
    }

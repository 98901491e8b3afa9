"""fast_style_transfer.ipynb: its network, training, checkpoints, video and shipped models, taken
from the notebook's own cells; one headless run of the whole notebook at tiny sizes (training a
few steps on a folder of two photos); the training, photo-fetching and benchmark scripts."""

from __future__ import annotations

import ast
import builtins
import json
import symtable
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from PIL import Image

import nst_utils as nst
from scripts import fetch_photos, train_fast_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "fast_style_transfer.ipynb"
NB = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
CODE = ["".join(c["source"]) for c in NB["cells"] if c["cell_type"] == "code"]
MODELS = sorted((ROOT / "assets" / "models").glob("*.pt"))
KIND = "fast-style-transfer"


@pytest.fixture(scope="module")
def fast():
    """The notebook's functions and classes (its def/class statements only) and its parameters."""
    params, namespace = train_fast_model.notebook_code(NOTEBOOK)
    namespace["params"] = params
    return namespace


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory) -> Path:
    """A folder of two small photos (any folder of photos must do for training)."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("dog", "horses"):
        nst.load_image(ROOT / "assets" / "inputs" / f"{name}.jpg", 96).save(folder / f"{name}.jpg")
    return folder


@pytest.fixture
def one_thread():
    """One torch thread: tiny tensors run no faster on two, and far slower on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(name: str, size: int = 64) -> torch.Tensor:
    return nst.image_to_tensor(nst.load_image(ROOT / "assets" / "inputs" / name, size))


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("shape", [(1, 3, 33, 47), (2, 3, 37, 64), (1, 3, 64, 31)])
def test_the_network_keeps_the_size_of_any_input(fast, shape):
    net = fast["TransformNet"](4, 1).eval()
    with torch.no_grad():
        y = net(torch.rand(shape))
    assert y.shape == shape
    assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_a_few_training_steps_lower_the_loss(fast, caffe_vgg, one_thread):
    torch.manual_seed(0)
    net = fast["TransformNet"](8, 1)
    p = fast["params"]
    style = fast["style_targets_of"](caffe_vgg, small("starry_night.jpg", 64), p["style_layers"])
    photos = [small("dog.jpg", 48)[0, :, :, :48]]  # one 36 x 48 photo: crops of one scene
    history = fast["train_network"](
        net,
        caffe_vgg,
        photos,
        style,
        12,
        crop=36,
        batch=2,
        lr=1e-3,
        content_layers=p["content_layers"],
        weights=dict(content_weight=1.0, style_weight=5.0),
    )
    losses = [h["loss"] for h in history]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert max(losses) < 1.2 * losses[0], losses


def test_random_crops_have_the_asked_shape_and_come_from_the_photos(fast):
    photos = [torch.rand(3, 40, 50), torch.rand(3, 33, 33)]
    crops = fast["random_crops"](photos, 32, 5, torch.Generator().manual_seed(1))
    assert crops.shape == (5, 3, 32, 32)
    for crop in crops:
        found = [
            any(
                torch.equal(c, ph[:, t : t + 32, s : s + 32])
                for t in range(ph.shape[1] - 31)
                for s in range(ph.shape[2] - 31)
            )
            for ph in photos
            for c in (crop, crop.flip(-1))
        ]
        assert any(found)


# --------------------------------------------------------------------------- checkpoints


def save(tmp_path: Path, checkpoint: dict, name: str = "model.pt") -> Path:
    return nst.OutputDir(tmp_path).save_bytes(nst.checkpoint_bytes(checkpoint), name)


def test_a_checkpoint_round_trips_in_half_precision(fast, tmp_path):
    net = fast["TransformNet"](4, 2).eval()
    path = save(tmp_path, fast["make_checkpoint"](net, {"steps": 7}))
    again, info = fast["load_model"](path, "cpu")
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(net(x), again(x), atol=2e-2)
    assert info["steps"] == 7
    assert save(tmp_path, fast["make_checkpoint"](net, {})) != path, "never overwrites"


def test_bad_checkpoints_are_refused_with_an_error_naming_the_file(fast, tmp_path):
    net = fast["TransformNet"](4, 1)
    good = save(tmp_path, fast["make_checkpoint"](net, {}), "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("not a checkpoint")
    other_kind = save(tmp_path, {"kind": "something else", "state_dict": {}}, "other_kind.pt")
    checkpoint = fast["make_checkpoint"](net, {})
    wider = save(tmp_path, {**checkpoint, "config": {"width": 8, "blocks": 1}}, "wider.pt")
    partial = {**checkpoint, "state_dict": dict(list(checkpoint["state_dict"].items())[1:])}
    missing_key = save(tmp_path, partial, "missing_key.pt")
    for bad in (truncated, foreign, other_kind, wider, missing_key, tmp_path / "absent.pt"):
        with pytest.raises(nst.CheckpointError) as info:
            fast["load_model"](bad, "cpu")
        assert str(bad) in str(info.value)


@pytest.mark.skipif(not MODELS, reason="no shipped model")
@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_a_shipped_model_loads_and_paints(fast, path):
    assert path.stat().st_size < 5_000_000
    net, info = fast["load_model"](path, "cpu")
    photo = small("dog.jpg", 80)
    painted = fast["paint"](net, photo)
    assert painted.shape == photo.shape
    assert float((painted - photo).abs().mean()) > 0.05, "the painting is the photo"
    assert float(painted.std(dim=(2, 3)).mean()) > 0.05, "the painting is flat"
    assert info["steps"] > 0


def test_the_starry_night_model_ships():
    assert (ROOT / "assets" / "models" / "starry_night.pt").is_file()


# --------------------------------------------------------------------------- photos and video


def test_a_folder_without_a_readable_photo_is_named_in_the_error(tmp_path):
    with pytest.raises(nst.ImageError) as info:
        nst.load_photos(tmp_path, 64)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(nst.ImageError) as info, pytest.warns(UserWarning):
        nst.load_photos(tmp_path, 64)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(nst.ImageError):
        nst.load_photos(tmp_path / "absent", 64)


def test_the_video_writer_writes_every_frame(tmp_path):
    import imageio.v3 as iio

    frames = [torch.full((1, 3, 33, 50), i / 6) for i in range(6)]
    path = nst.OutputDir(tmp_path).save_bytes(nst.video_bytes(frames, fps=12), "clip.mp4")
    back = iio.imread(path, plugin="pyav")
    assert back.shape[0] == 6 and back.shape[1:3] == (32, 50)
    assert back[0].mean() < back[-1].mean()


def test_the_pan_and_zoom_clip_moves_smoothly(fast):
    clip = fast["pan_and_zoom"](small("dog.jpg", 128), 5, 64)
    assert len(clip) == 5 and all(c.shape == clip[0].shape for c in clip)
    assert max(clip[0].shape[-2:]) == 64
    changes = [float((b - a).abs().mean()) for a, b in zip(clip, clip[1:], strict=False)]
    assert all(0 < c < 0.2 for c in changes)
    assert fast["flicker"](clip) == pytest.approx(255 * np.mean(changes), rel=1e-5)


# --------------------------------------------------------------------------- the notebook


def test_the_notebook_has_one_parameters_cell_and_short_lines_and_cells():
    tagged = [
        i
        for i, c in enumerate(c for c in NB["cells"] if c["cell_type"] == "code")
        if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1
    long_cells = [i for i, src in enumerate(CODE) if i != tagged[0] and src.count("\n") >= 25]
    assert not long_cells
    long_lines = [line for src in CODE for line in src.splitlines() if len(line) > 100]
    assert not long_lines


def test_no_function_of_the_notebook_reads_a_global_variable():
    code = [
        "\n".join(x for x in src.splitlines() if not x.lstrip().startswith("%")) for src in CODE
    ]
    tables = [symtable.symtable(text, "cell", "exec") for text in code]
    defined = {t.get_name() for table in tables for t in table.get_children()}
    modules = {  # names bound by the notebook's import statements
        (alias.asname or alias.name).split(".")[0]
        for text in code
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    allowed = modules | set(dir(builtins)) | defined
    offenders = {}

    def walk(table, owner):
        for child in table.get_children():
            top_comprehension = owner is None and child.get_name() in (
                "genexpr",
                "listcomp",
                "setcomp",
                "dictcomp",
                "lambda",
            )
            if top_comprehension:  # code of the cell itself, which may read its variables
                walk(child, None)
                continue
            name = owner or child.get_name()
            used = {
                s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()
            }
            if used - allowed:
                offenders[name] = sorted(used - allowed)
            walk(child, name)

    for table in tables:
        walk(table, None)
    assert not offenders


def test_the_stored_notebook_is_small_and_clean():
    assert NOTEBOOK.stat().st_size < 2_000_000
    for cell in NB["cells"]:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error"
            data = output.get("data", {})
            assert not any(k.startswith("application/vnd.jupyter.widget") for k in data)
            assert "image/gif" not in output.get("data", {})


def test_the_notebook_trains_and_runs_headless_at_tiny_sizes(tmp_path, tiny_photos):
    out = tmp_path / "out"
    pm.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
        log_output=False,
        parameters=dict(
            train=True,
            model_path=str(tmp_path / "absent.pt"),
            photo_dir=str(tiny_photos),
            output_dir=str(out),
            device="cpu",
            image_size=64,
            big_size=80,
            width=4,
            blocks=1,
            steps=3,
            crop=40,
            batch=2,
            print_every=1,
            checkpoint_every=2,
            lbfgs_evals=3,
            quality_evals=3,
            video_frames=4,
            video_size=48,
            video_lbfgs_frames=2,
            video_lbfgs_evals=2,
        ),
    )
    executed = json.loads((tmp_path / "executed.ipynb").read_text(encoding="utf-8"))
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    for step in (2, 3):
        assert (out / f"model_step{step}.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained_steps_here"] == 3 and summary["video_frames"] == 4
    assert summary["network_loss"] > 0 and summary["lbfgs_evals"] == 3
    with Image.open(out / "video_starry_night.gif") as gif:
        assert gif.n_frames == 4
    import imageio.v3 as iio

    assert iio.imread(out / "video_starry_night.mp4", plugin="pyav").shape[0] == 4
    for name in ("overview.jpg", "quality.png", "training.png"):
        assert (out / name).is_file()


# --------------------------------------------------------------------------- the scripts


def test_the_training_script_reproduces_a_model(tmp_path, tiny_photos, one_thread):
    ship = tmp_path / "models" / "tiny.pt"
    info = train_fast_model.main(
        [
            "--steps",
            "2",
            "--crop",
            "40",
            "--image-size",
            "64",
            "--width",
            "4",
            "--blocks",
            "1",
            "--photo-dir",
            str(tiny_photos),
            "--out",
            str(tmp_path / "run"),
            "--ship",
            str(ship),
            "--checkpoint-every",
            "1",
            "--print-every",
            "1",
        ]
    )
    assert info["steps"] == 2 and np.isfinite(info["final_loss"])
    ckpt = nst.load_checkpoint(ship, KIND)
    assert ckpt["info"]["steps"] == 2 and ckpt["config"] == {"width": 4, "blocks": 1}
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float16 for v in weights)
    assert len(list((tmp_path / "run").glob("model_step*.pt"))) == 2


def test_the_photo_script_keeps_the_listed_photos_resized(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    for package, (pattern, names) in fetch_photos.TRAIN.items():
        for name in names:
            path = tree / pattern.format(name)
            if package == "plasma-workspace-wallpapers":  # a folder of sizes: the largest is kept
                path.mkdir(parents=True)
                Image.new("RGB", (64, 40), "red").save(path / "64x40.png")
                path = path / "900x600.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (900, 600), "green").save(path)
    monkeypatch.setattr(fetch_photos, "download", lambda packages, folder: tree)
    monkeypatch.setattr(
        "sys.argv", ["fetch_photos.py", "--out", str(tmp_path / "photos"), "--size", "128"]
    )
    fetch_photos.main()
    photos = nst.list_photos(tmp_path / "photos")
    assert len(photos) == sum(len(names) for _, names in fetch_photos.TRAIN.values())
    with Image.open(photos[0]) as img:
        assert max(img.size) == 128
    assert not any("dog" in p.name or "horses" in p.name or "person" in p.name for p in photos)


@pytest.mark.skipif(not (ROOT / "assets/models/starry_night.pt").is_file(), reason="no model")
def test_the_benchmark_dry_run(one_thread):
    from benchmarks import fast_benchmark

    result = fast_benchmark.main(["--dry-run"])
    assert result["network_s"] > 0 and result["lbfgs_s"] > 0 and result["train_step_s"] > 0

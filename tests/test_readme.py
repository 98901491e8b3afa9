"""The README's promises: its example code runs, and the commands it gives are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    section = README.split("## Using `nst_utils` from your own notebook", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[-1]
    inputs = ROOT / "assets" / "inputs"
    code = (
        code.replace('"photo.jpg", 384', f'"{inputs / "dog.jpg"}", 64')
        .replace('"painting.jpg", 384', f'"{inputs / "starry_night.jpg"}", 64')
        .replace("max_iter=200", "max_iter=10")
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "out" / "result.png")  # an earlier result
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    assert str(Path("out") / "result-1.png") in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "result-1.png") as img:
        assert max(img.size) == 64 and np.asarray(img).std() > 10
    assert Image.open(tmp_path / "out" / "result.png").getpixel((0, 0)) == (1, 2, 3)
    loss0 = namespace["closure"]().item()
    assert loss0 < 5.0, "the optimisation lowered the loss from the content image's (about 5)"


def test_the_quick_start_commands_are_the_ones_ci_runs():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    main_job, tests = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("python3 ", "python ")
    setup, command = (step.strip() for step in tests.split("&&"))
    assert "-r requirements.txt" in setup and "-r requirements.txt" in ci
    assert command in ci  # the same test command
    assert "papermill style_transfer.ipynb" in main_job and "requirements.txt" in main_job

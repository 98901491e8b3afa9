"""nst_utils installs like any package (pip install ., pip install git+...) and imports from
anywhere;
requirements.txt and pyproject.toml ask for the same packages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(lines) -> dict[str, str]:
    """{normalised name: full requirement} of requirement strings (comments and blanks skipped)."""
    reqs = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            reqs[re.split(r"[<>=!~; \[]", line, maxsplit=1)[0].lower().replace("_", "-")] = (
                line.replace(" ", "")
            )
    return reqs


def test_requirements_and_pyproject_ask_for_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.update(requirement_names(extra))
    wanted = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert wanted == declared
    assert "pygifsicle" not in wanted, (
        "its set-up runs `brew install` on macOS and fails without Homebrew"
    )
    assert wanted["torch"].startswith("torch>=2.5"), (
        "the code catches torch.OutOfMemoryError (torch 2.5+)"
    )


def install_and_import(source: str, tmp_path: Path) -> str:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            source,
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import nst_utils as nst; print(nst.__file__); "
            "print(nst.gram_matrix.__doc__.splitlines()[0])",
        ],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def test_pip_install_of_the_folder_imports_from_another_folder(tmp_path):
    checkout = (
        tmp_path / "checkout"
    )  # a copy: building in place would leave build/ and *.egg-info behind
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md", "nst_utils.py"):
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    out = install_and_import(str(checkout), tmp_path)
    assert str(tmp_path / "site") in out and "Gram matrix" in out


def test_pip_install_from_git_imports_from_another_folder(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.fail("tests run from a git checkout (CI clones the repository)")
    out = install_and_import(f"git+file://{ROOT}", tmp_path)
    assert str(tmp_path / "site") in out

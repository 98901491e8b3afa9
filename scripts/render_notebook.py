"""Re-run style_transfer.ipynb headless and store it with its outputs, refreshing assets/results/.

    python scripts/render_notebook.py [-p NAME VALUE ...]

The notebook runs in a temporary copy of the repository with its default ``output_dir``
(``results``), so that its stored outputs say what a reader's run says; then its pictures replace
those in assets/results/ (that is the point of this script), and the executed notebook replaces
style_transfer.ipynb, cleaned of papermill's bookkeeping so that its diff shows only sources and
outputs. Nothing is replaced unless every cell ran without error.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "style_transfer.ipynb"


def clean(nb: dict) -> dict:
    """Drop papermill's injected-parameters cell and its per-cell/notebook metadata."""
    nb["cells"] = [
        c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])
    ]
    for cell in nb["cells"]:
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
    nb["metadata"].pop("papermill", None)
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-p",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a notebook parameter (Python literal or string)",
    )
    args = parser.parse_args()
    params = {}
    for name, value in args.p:
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        copy.mkdir()
        for name in ("nst_utils.py", "assets"):
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, copy / name)
        executed = Path(tmp) / "executed.ipynb"
        pm.execute_notebook(
            str(NOTEBOOK),
            str(executed),
            parameters=params,
            kernel_name="python3",
            cwd=str(copy),
            log_output=True,
        )
        nb = clean(json.loads(executed.read_text(encoding="utf-8")))
        results = ROOT / "assets" / "results"  # its files, not its subfolders (other notebooks')
        for old in results.iterdir():
            if old.is_file():
                old.unlink()
        for new in (copy / "results").iterdir():
            if new.is_file():
                shutil.copy2(new, results / new.name)
    tmp_out = NOTEBOOK.with_suffix(".ipynb.tmp")
    tmp_out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_out, NOTEBOOK)
    size = NOTEBOOK.stat().st_size / 1024
    print(f"wrote {NOTEBOOK.relative_to(ROOT)} ({size:.0f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Re-run a notebook headless and store it with its outputs, refreshing its pictures in assets/.

    python scripts/render_notebook.py [-p NAME VALUE ...]          # style_transfer.ipynb
    python scripts/render_notebook.py fast_style_transfer.ipynb    # the second notebook

The notebook runs in a temporary copy of the repository with its default ``output_dir``
(``results``, or ``results/fast``), so that its stored outputs say what a reader's run says;
then the files it wrote replace those in ``assets/`` + that folder (assets/results/ or
assets/results/fast/; that is the point of this script), and the executed notebook replaces
the notebook, cleaned of papermill's bookkeeping so that its diff shows only sources and
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
#: notebook -> its default output_dir, whose files replace those of assets/<output_dir>/
RESULTS = {"style_transfer.ipynb": "results", "fast_style_transfer.ipynb": "results/fast"}


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
    parser.add_argument("notebook", nargs="?", default="style_transfer.ipynb", choices=RESULTS)
    parser.add_argument(
        "-p",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a notebook parameter (Python literal or string)",
    )
    args = parser.parse_args()
    notebook, folder, params = ROOT / args.notebook, RESULTS[args.notebook], {}
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
            str(notebook),
            str(executed),
            parameters=params,
            kernel_name="python3",
            cwd=str(copy),
            log_output=True,
        )
        nb = clean(json.loads(executed.read_text(encoding="utf-8")))
        results = ROOT / "assets" / folder  # its files, not its subfolders (other notebooks')
        for old in results.iterdir():
            if old.is_file():
                old.unlink()
        for new in (copy / folder).iterdir():
            if new.is_file():
                shutil.copy2(new, results / new.name)
    tmp_out = notebook.with_suffix(".ipynb.tmp")
    tmp_out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_out, notebook)
    size = notebook.stat().st_size / 1024
    print(f"wrote {notebook.relative_to(ROOT)} ({size:.0f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Train a model of fast_style_transfer.ipynb headless, with the notebook's own code and defaults.

    python scripts/fetch_photos.py      # once: data/photos/
    python scripts/train_fast_model.py --style assets/inputs/starry_night.jpg \\
        --ship assets/models/starry_night.pt            # what made the shipped model

The network, the loss, the crops, the training loop and the checkpoint format are taken from the
notebook's cells (their ``def`` and ``class`` statements, nothing else), and the defaults from its
``parameters`` cell, so there is one home for each; options override the defaults. Prints a line
every ``--print-every`` steps, saves a checkpoint every ``--checkpoint-every`` steps into
``--out`` (never overwriting), then the final model to ``--ship`` (half precision) and the loss
history beside the checkpoints. Ctrl-C stops early and still saves what was trained.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # on shared cores, idle threads sleep
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "fast_style_transfer.ipynb"
sys.path.insert(0, str(ROOT))

import nst_utils as nst  # noqa: E402


def notebook_code(path: Path = NOTEBOOK) -> tuple[dict, dict]:
    """(the parameters cell's values, the namespace of the notebook's functions and classes)."""
    cells = [
        c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"
    ]
    params: dict = {}
    namespace: dict = {"__name__": "fast_style_transfer"}
    for cell in cells:
        src = "".join(cell["source"])
        text = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("%"))
        tree = ast.parse(text)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            exec(compile(tree, f"{path.name}:parameters", "exec"), params)
            continue
        keep = (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
        tree.body = [node for node in tree.body if isinstance(node, keep)]
        exec(compile(tree, path.name, "exec"), namespace)
    return {k: v for k, v in params.items() if not k.startswith("__")}, namespace


def main(argv: list[str] | None = None) -> dict:
    params, nb = notebook_code()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in (
        "style_path",
        "photo_dir",
        "image_size",
        "crop",
        "batch",
        "lr",
        "steps",
        "seed",
        "width",
        "blocks",
        "content_weight",
        "style_weight",
        "print_every",
        "checkpoint_every",
        "device",
    ):
        value = params[name]
        parser.add_argument(
            "--" + name.replace("_", "-").replace("-path", ""),
            dest=name,
            type=type(value),
            default=value,
            help=f"default {value!r}",
        )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fast_training")
    parser.add_argument("--ship", type=Path, default=None, help="where the final model goes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = nst.pick_device(args.device)
    out = nst.OutputDir(args.out)
    vgg = nst.load_vgg19("caffe", device=device)
    style = nst.image_to_tensor(nst.load_image(args.style_path, args.image_size), device)
    style_targets = nb["style_targets_of"](vgg, style, params["style_layers"])
    photos = [
        nst.image_to_tensor(p, device)[0]
        for p in nst.load_photos(args.photo_dir, args.image_size, min_size=args.crop)
    ]
    info = dict(
        style=Path(args.style_path).name,
        image_size=args.image_size,
        crop=args.crop,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        content_weight=args.content_weight,
        style_weight=args.style_weight,
        photos=len(photos),
        device=str(device),
        threads=torch.get_num_threads(),
    )
    print(f"training on {len(photos)} photos from {args.photo_dir}: {info}", flush=True)
    net = nb["TransformNet"](args.width, args.blocks).to(device)
    save = partial(nb["save_checkpoint"], out=out, info=info)
    start = time.perf_counter()
    history = nb["train_network"](
        net,
        vgg,
        photos,
        style_targets,
        args.steps,
        crop=args.crop,
        batch=args.batch,
        lr=args.lr,
        content_layers=params["content_layers"],
        seed=args.seed,
        weights=dict(content_weight=args.content_weight, style_weight=args.style_weight),
        on_step=partial(
            nb["on_step"],
            steps=args.steps,
            every=args.print_every,
            preview=None,
            handle=None,
            save_every=args.checkpoint_every,
            save=save,
        ),
    )
    seconds = time.perf_counter() - start
    info.update(
        steps=len(history),
        seconds=round(seconds, 1),
        final_loss=history[-1]["loss"] if history else None,
    )
    out.save_json(history, "history.json")
    if args.ship is not None and history:
        checkpoint = nb["make_checkpoint"](net.eval(), info)
        path = nst.OutputDir(args.ship.parent).save_bytes(
            nst.checkpoint_bytes(checkpoint), args.ship.name
        )
        print(f"model: {path}")
    print(f"done: {json.dumps(info)}", flush=True)
    return info


if __name__ == "__main__":
    main()

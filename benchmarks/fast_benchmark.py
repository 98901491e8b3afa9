"""The fast (feed-forward) network against the main notebook's L-BFGS, on this machine, in one run.

    python benchmarks/fast_benchmark.py                  # the shipped Starry Night model
    python benchmarks/fast_benchmark.py --model assets/models/scream.pt \
        --style assets/inputs/scream.jpg
    python benchmarks/fast_benchmark.py --dry-run        # tiny sizes, seconds (a test runs it)

For the same held-out photos (never trained on; the notebook's ``heldout``) it prints:

* seconds per ``--size`` px picture (long side; 512 by default): the network (fastest of
  ``--repeat`` runs after a warm-up, averaged over the photos) against the main notebook's
  ``--budget`` (300) L-BFGS evaluations. 300 evaluations at 512 px take ~15 min on a 2-core CPU,
  so the L-BFGS time is *measured over ``--evals`` evaluations and multiplied* up to the budget
  (``--evals 300`` measures it whole);
* the speed-up;
* the quality figure of Johnson et al. (Fig. 5): how many L-BFGS evaluations reach the loss of the
  network's picture, per photo, at the notebook's ``image_size`` (the size the model was trained
  for: the style targets, and so the loss, are defined at that scale);
* training seconds per Adam step (the notebook's crop and batch, ``--train-steps`` steps).

The network, the loss and the L-BFGS loop are the notebook's own (taken from its cells by
``scripts/train_fast_model.py``), with the defaults of its parameters cell. Writes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # on shared cores, idle threads sleep
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nst_utils as nst  # noqa: E402
from scripts.train_fast_model import notebook_code  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    params, nb = notebook_code()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=params["model_path"])
    parser.add_argument("--style", default=params["style_path"])
    parser.add_argument("--size", type=int, default=512, help="long side of the timed pictures")
    parser.add_argument(
        "--image-size",
        type=int,
        default=params["image_size"],
        help="size of the quality figure (the model's training size)",
    )
    parser.add_argument("--budget", type=int, default=300, help="the main notebook's evaluations")
    parser.add_argument("--evals", type=int, default=10, help="L-BFGS evaluations timed at --size")
    parser.add_argument("--quality-evals", type=int, default=params["quality_evals"])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--photos", type=int, default=len(params["heldout"]))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.size, args.image_size, args.budget, args.evals = 64, 64, 6, 2
        args.quality_evals, args.train_steps, args.repeat, args.photos = 3, 1, 1, 1
    device = nst.pick_device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions on a GPU, as the notebook
    weights = dict(content_weight=params["content_weight"], style_weight=params["style_weight"])
    c_layers, s_layers = params["content_layers"], params["style_layers"]
    vgg = nst.load_vgg19("caffe", device=device)
    net, info = nb["load_model"](ROOT / args.model, device)
    heldout = [ROOT / p for p in params["heldout"][: args.photos]]

    def tensor(path, size, enlarge=False):
        """The photo at long side ``size`` px: shrunk, or (``enlarge``) also enlarged to it."""
        image = nst.load_image(path, size)
        if enlarge and max(image.size) < size:
            scale = size / max(image.size)
            image = image.resize([round(scale * s) for s in image.size], Image.Resampling.LANCZOS)
        return nst.image_to_tensor(image, device)

    # seconds per picture at --size: network vs. L-BFGS (per evaluation, times the budget)
    style_big = nb["style_targets_of"](vgg, tensor(ROOT / args.style, args.size), s_layers)
    net_s, eval_s, peak = [], [], 0
    for path in heldout:
        photo = tensor(path, args.size, enlarge=True)  # the photos are 640 to 773 px wide
        if device.type == "cuda":  # the painting's own memory: beyond what is loaded already
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        net_s.append(nb["fastest"](nb["paint"], net, photo, repeat=args.repeat)[1])
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated() - before)
        loss_fn = nb["loss_for"](photo, vgg, style_big, c_layers, weights)
        nb["lbfgs"](photo, loss_fn, 2)  # warm-up: the first passes at a size pick the kernels
        start = time.perf_counter()
        done = len(nb["lbfgs"](photo, loss_fn, args.evals)[1])
        eval_s.append((time.perf_counter() - start) / done)
    net_pic, lbfgs_pic = statistics.mean(net_s), statistics.mean(eval_s) * args.budget

    # the quality figure at the training size
    style_small = nb["style_targets_of"](vgg, tensor(ROOT / args.style, args.image_size), s_layers)
    quality = {}
    for path in heldout:
        target, losses, n = nb["matching_evaluations"](
            tensor(path, args.image_size),
            net,
            vgg,
            style_small,
            c_layers,
            weights,
            args.quality_evals,
        )
        quality[path.stem] = n if n else f"> {len(losses)}"

    # training seconds per Adam step (the notebook's crop and batch)
    photo_dir = ROOT / params["photo_dir"]
    try:
        images = nst.load_photos(photo_dir, params["image_size"], min_size=params["crop"])
        source = str(photo_dir.relative_to(ROOT))
    except nst.ImageError:  # no training photos fetched: time it on the held-out photos
        images, source = [nst.load_image(p, params["image_size"]) for p in heldout], "held-out"
    crop = min(params["crop"], args.image_size) if args.dry_run else params["crop"]
    photos = [nst.image_to_tensor(p, device)[0] for p in images]
    trainee = nb["TransformNet"](params["width"], params["blocks"]).to(device)
    start = time.perf_counter()
    steps = len(
        nb["train_network"](
            trainee,
            vgg,
            photos,
            style_small,
            args.train_steps,
            crop=crop,
            batch=params["batch"],
            lr=params["lr"],
            content_layers=c_layers,
            weights=weights,
        )
    )
    step_s = (time.perf_counter() - start) / max(steps, 1)

    rows = [
        (
            "device",
            f"{device} ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)",
        ),
        ("model", f"{args.model} ({info.get('steps')} steps)"),
        (
            f"network, s per {args.size} px picture",
            f"{net_pic:.3f} (fastest of {args.repeat}, mean over {len(heldout)} photos)",
        ),
        (
            f"L-BFGS, s per {args.size} px picture",
            f"{lbfgs_pic:.1f} ({args.budget} evaluations x {statistics.mean(eval_s):.3f} s, "
            f"measured over {args.evals} and multiplied)",
        ),
        ("speed-up", f"{lbfgs_pic / net_pic:.0f}x"),
        *(
            [("network, GPU memory of one picture (MiB, peak)", f"{peak / 2**20:.0f}")]
            if device.type == "cuda"
            else []
        ),
        (
            f"quality: L-BFGS evaluations to match the network at {args.image_size} px",
            ", ".join(f"{k} {v}" for k, v in quality.items()),
        ),
        (
            f"training, s per Adam step ({params['batch']} x {crop} px crops, {source})",
            f"{step_s:.2f}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return {
        "network_s": net_pic,
        "lbfgs_s": lbfgs_pic,
        "speed_up": lbfgs_pic / net_pic,
        "quality": quality,
        "train_step_s": step_s,
        "peak_bytes": peak,
    }


if __name__ == "__main__":
    main()

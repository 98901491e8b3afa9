#!/usr/bin/env python3
"""GPU speed and precision check of the notebook's optimisation (dog x Starry Night).

Self-contained: it uses only the stable parts of ``nst_utils`` (``load_image``,
``image_to_tensor``, ``load_vgg19``, ``layer_index``, ``gram_matrix``, ``content_loss``,
``style_loss``, ``features``) and resizes with its own ``resize`` (plain ``F.interpolate``).
The problem is the notebook's: content ``relu4_2``, style
``relu1_1 .. relu5_1``, loss = 1.0 * content + 5.0 * mean(style losses), L-BFGS exactly as
the notebook builds it (``lr=1, history_size=50, line_search_fn="strong_wolfe",
max_iter=N, tolerance_grad=0, tolerance_change=0``) in ONE ``step()`` call, the closure
stopping the run after exactly N evaluations. Start: the content image.

What it measures (run order: 0, 1 at the smallest size, 2, 3, then 1 at the other sizes; a part
not started when ``--time-budget`` is spent is skipped with a note, fp32_repeat first):

0. the two ceilings: device-to-device copy bandwidth, and 8192^3 matrix products in fp32,
   tf32 and bf16; and the arithmetic floor of one evaluation (VGG19 conv FLOPs up to relu5_1).
1. for each size (long side) and each variant: seconds per evaluation (median of the
   in-optimiser intervals, and the median of device-event-timed bare evaluations), total
   time for N evaluations, peak memory; loss at evaluations 50/100/N relative to fp32 and
   the mean absolute pixel difference of the final clipped image to fp32's (1/255 units).
   A variant is "kept" if |loss difference| <= 1 % at every checkpoint and pixels <= 2/255.
   Variants: fp32 (TF32 off everywhere: the reference), default (PyTorch's defaults, which
   the notebook runs with: cuDNN TF32 on, matmul TF32 off), tf32 (both on), channels_last
   (fp32, network channels-last; the optimised image stays NCHW because L-BFGS flattens its
   gradient with view(-1), and the network gets a channels-last copy of it), bf16 (autocast
   bf16 around the network's forward; features cast to float32, Gram matrices and losses in
   float32 outside autocast, backward outside autocast, TF32 off), bf16_cl (bf16 +
   channels-last), fp32_repeat (fp32 again: the run-to-run noise floor).
2. the out-of-memory path: memory capped at ~2 GiB with
   ``torch.cuda.set_per_process_memory_fraction``, one evaluation at the big size; the
   exception type is recorded, the cap removed, and a small evaluation run again.
3. the big size (2048 px), in PyTorch's default numerics: a direct run (300 evaluations or as
   many as fit in ``--big-cap-s``, 30 s; the table says how many ran) and a coarse-to-fine run
   (pyramid 512 -> 1024 -> 2048, evaluations 300/150/75 like the notebook's halving per level),
   time and peak memory of each, and the direct run's loss after the same time.

The images are about 768 px wide and ``load_image`` never enlarges, so for a long side
larger than the file's, the image is loaded at full size and upsampled with
``resize`` (recorded as ``upsampled_from`` in the JSON and said in the tables).

    python benchmarks/gpu_precision.py --device cuda --out results/gpu_precision.json
    python benchmarks/gpu_precision.py --device cpu --quick        # a CPU dry run, ~1-2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nst_utils as nst  # noqa: E402

CONTENT = ROOT / "assets" / "inputs" / "dog.jpg"
STYLE = ROOT / "assets" / "inputs" / "starry_night.jpg"
CONTENT_LAYERS = ["relu4_2"]
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
DEEPEST = "relu5_1"
CONTENT_WEIGHT, STYLE_WEIGHT = 1.0, 5.0
LOSS_TOL, PIXEL_TOL = 0.01, 2.0  # |relative loss difference|, mean |pixel difference| in 1/255
ALL_VARIANTS = ("fp32", "default", "tf32", "channels_last", "bf16", "bf16_cl", "fp32_repeat")

T_START = time.perf_counter()


def log(msg: str = "") -> None:
    print(f"[{time.perf_counter() - T_START:6.1f}s] {msg}" if msg else "", flush=True)


# --------------------------------------------------------------------------- device helpers


class Clock:
    """Synchronising wall clock and device-event timing for one device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def time_ms(self, fn, reps: int, warmup: int = 2) -> list[float]:
        """Per-call milliseconds of ``fn()``: CUDA events on a GPU, a synchronised host clock elsewhere."""
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(reps):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                out.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None


def set_tf32(cudnn: bool, matmul: bool) -> None:
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.backends.cuda.matmul.allow_tf32 = matmul


DEFAULT_TF32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


# --------------------------------------------------------------------------- ceilings and floor


def measure_ceilings(clock: Clock, quick: bool) -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and n^3 matmul rates in fp32/tf32/bf16."""
    dev = clock.device
    res: dict = {}
    n_bytes = (64 if quick else 2048) * 2**20
    src = torch.rand(n_bytes // 4, device=dev)
    dst = torch.empty_like(src)
    ms = clock.time_ms(lambda: dst.copy_(src), reps=5 if quick else 20, warmup=2 if quick else 5)
    med = statistics.median(ms)
    res["copy"] = {"bytes_each_way": n_bytes, "median_ms": med, "GBps_read_plus_write": 2 * n_bytes / (med / 1e3) / 1e9}
    src = dst = None  # free them
    n = 512 if quick else 8192
    res["gemm_size"] = n
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        if dtype == torch.bfloat16 and dev.type == "cpu" and not quick:
            continue
        set_tf32(tf32, tf32)
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        reps = 3 if quick else (5 if name == "fp32" else 10)
        ms = clock.time_ms(lambda: a @ b, reps=reps, warmup=1 if quick else 3)
        med = statistics.median(ms)
        res[f"matmul_{name}"] = {"median_ms": med, "TFLOPs": 2 * n**3 / (med / 1e3) / 1e12}
        a = b = None  # free them
    set_tf32(*DEFAULT_TF32)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def conv_flops(net: torch.nn.Sequential, hw: tuple[int, int]) -> float:
    """Forward FLOPs of the convolutions in ``net`` for an input of ``hw``: sum of 2*Cin*Cout*k*k*H*W."""
    h, w = hw
    total = 0.0
    for module in net.children():
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2.0 * module.in_channels * module.out_channels * kh * kw * h * w
        elif isinstance(module, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            h, w = h // 2, w // 2
    return total


# --------------------------------------------------------------------------- the problem


class Features:
    """``self(x)`` is ``nst_utils.features(net, x, layers)``: the notebook's hook-based extractor."""

    def __init__(self, net: torch.nn.Sequential, layers):
        self.net, self.layers = net, list(dict.fromkeys(layers))

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return nst.features(self.net, image, self.layers)


class Variant:
    """A numeric setting: TF32 flags, memory format and autocast dtype."""

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.device = device
        base = name.replace("_repeat", "")
        self.channels_last = base in ("channels_last", "bf16_cl")
        self.autocast = torch.bfloat16 if base in ("bf16", "bf16_cl") else None
        self.tf32 = {"default": DEFAULT_TF32, "tf32": (True, True)}.get(base, (False, False))

    def enter(self) -> None:
        set_tf32(*self.tf32)

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def ctx(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def describe(self) -> str:
        parts = [f"cudnn.allow_tf32={self.tf32[0]}", f"matmul.allow_tf32={self.tf32[1]}"]
        if self.channels_last:
            parts.append("channels_last")
        if self.autocast is not None:
            parts.append("autocast bf16 (Gram/losses fp32)")
        return ", ".join(parts)


class Problem:
    """Targets and the loss for one (content, style, variant) on one network."""

    def __init__(self, feats: Features, variant: Variant, content: torch.Tensor, style: torch.Tensor):
        self.feats, self.variant = feats, variant
        with torch.inference_mode(), variant.ctx():
            c_acts = feats(variant.fmt(content))
            s_acts = feats(variant.fmt(style))
        # targets leave inference mode as ordinary float32 tensors
        self.content_targets = {n: c_acts[n].float().clone() for n in CONTENT_LAYERS}
        self.style_targets = {n: nst.gram_matrix(s_acts[n].float()).clone() for n in STYLE_LAYERS}

    def loss(self, image: torch.Tensor):
        with self.variant.ctx():
            # the optimised tensor stays NCHW-contiguous (L-BFGS flattens its gradient with view(-1));
            # for channels-last variants the network sees a channels-last copy (3 channels: negligible)
            acts = self.feats(self.variant.fmt(image))
        c = sum(nst.content_loss(acts[n].float(), t) for n, t in self.content_targets.items()) / len(self.content_targets)
        s = sum(nst.style_loss(acts[n].float(), g) for n, g in self.style_targets.items()) / len(self.style_targets)
        return CONTENT_WEIGHT * c + STYLE_WEIGHT * s, c, s


class _Budget(Exception):
    """Raised by the closure after its last allowed evaluation."""


def run_lbfgs(problem: Problem, init: torch.Tensor, n_evals: int, clock: Clock, deadline_s: float | None = None) -> dict:
    """Optimise a copy of ``init`` for exactly ``n_evals`` closure calls (fewer only if ``deadline_s`` passes)."""
    image = init.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([image], lr=1, history_size=50, line_search_fn="strong_wolfe", max_iter=n_evals,
                            tolerance_grad=0, tolerance_change=0)
    history: list[dict] = []
    stamps: list[float] = []
    state = {"stop": "budget"}
    t0 = clock.now()

    def closure():
        opt.zero_grad()
        loss, c, s = problem.loss(image)
        loss.backward()
        lv = loss.item()  # synchronises: the stamp below is the end of this evaluation on the device
        stamps.append(time.perf_counter())
        history.append({"eval": len(history) + 1, "seconds": stamps[-1] - t0, "loss": lv, "content": c.item(),
                        "style": s.item()})
        if len(history) >= n_evals:
            raise _Budget
        if deadline_s is not None and stamps[-1] - t0 > deadline_s:
            state["stop"] = f"time cap {deadline_s:.0f} s"
            raise _Budget
        if not math.isfinite(lv):
            state["stop"] = "non-finite loss"
            raise _Budget
        return loss

    try:
        opt.step(closure)
        state["stop"] = "optimizer returned early"
    except _Budget:
        pass
    total = clock.now() - t0
    deltas = [b - a for a, b in zip([t0] + stamps, stamps)]
    return {"image": image.detach(), "history": history, "seconds": total, "evals": len(history),
            "stop": state["stop"], "per_eval_median_s": statistics.median(deltas[1:]) if len(deltas) > 1 else total,
            "per_eval_mean_s": total / max(1, len(history))}


def bare_eval_ms(problem: Problem, init: torch.Tensor, clock: Clock, reps: int) -> list[float]:
    """Device time of one evaluation (forward, loss, backward) without the optimiser, after warm-up."""
    image = init.detach().clone().requires_grad_(True)

    def once():
        image.grad = None
        loss, _, _ = problem.loss(image)
        loss.backward()

    return clock.time_ms(once, reps=reps, warmup=2)


# --------------------------------------------------------------------------- images


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size = (height, width)``, antialiased when shrinking (as the notebook's uses)."""
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def pyramid_sizes(full_hw: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Coarse-to-fine sizes, smallest first, each half the next; levels under 32 px on a side are left out."""
    sizes = [(round(full_hw[0] / 2**k), round(full_hw[1] / 2**k)) for k in range(levels - 1, 0, -1)]
    return [hw for hw in sizes if min(hw) >= 32] + [tuple(full_hw)]


def load_pair(size: int, device: torch.device) -> dict:
    """Content and style with long side ``size`` (upsampled with resize if the file is smaller)."""
    out = {}
    for key, path in (("content", CONTENT), ("style", STYLE)):
        full = nst.load_image(path)
        native = max(full.size)
        if size <= native:
            t = nst.image_to_tensor(nst.load_image(path, size), device)
            up = None
        else:
            t = nst.image_to_tensor(full, device)
            s = size / native
            t = resize(t, (round(t.shape[-2] * s), round(t.shape[-1] * s)))
            up = [full.height, full.width]
        out[key], out[f"{key}_upsampled_from"] = t, up
    return out


def clip_diff_255(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two clipped 0..1 images, in units of 1/255."""
    return float((a.float().clamp(0, 1) - b.float().clamp(0, 1)).abs().mean()) * 255.0


def loss_at(history: list[dict], e: int) -> float | None:
    return history[e - 1]["loss"] if 0 < e <= len(history) else None


def loss_after_seconds(history: list[dict], t: float) -> dict | None:
    """The last evaluation finished within ``t`` seconds of the run's start."""
    done = [h for h in history if h["seconds"] <= t]
    return done[-1] if done else None


# --------------------------------------------------------------------------- main parts


def part_sizes(size: int, variants: list[str], n_evals: int, checkpoints: list[int], net, device, clock: Clock,
               bare_reps: int, flops_fwd_512: float | None, deadline: float) -> dict:
    pair = load_pair(size, device)
    content, style = pair["content"], pair["style"]
    hw = tuple(content.shape[-2:])
    res: dict = {"size": size, "hw": list(hw), "style_hw": list(style.shape[-2:]), "evals": n_evals,
                 "content_upsampled_from": pair["content_upsampled_from"],
                 "style_upsampled_from": pair["style_upsampled_from"], "checkpoints": checkpoints,
                 "fwd_conv_gflop": conv_flops(net, hw) / 1e9, "variants": {}}
    nets = {False: net}
    for name in variants:
        if time.perf_counter() - T_START > deadline:
            res["variants"][name] = {"skipped": "time budget spent"}
            log(f"{size}px {name}: skipped (time budget spent)")
            continue
        v = Variant(name, device)
        try:
            v.enter()
            if v.channels_last not in nets:
                nets[True] = copy.deepcopy(net).to(memory_format=torch.channels_last)
            feats = Features(nets[v.channels_last], CONTENT_LAYERS + STYLE_LAYERS)
            problem = Problem(feats, v, content, style)
            init = content
            bare = bare_eval_ms(problem, init, clock, bare_reps)  # also the warm-up of this variant
            clock.reset_peak()
            run = run_lbfgs(problem, init, n_evals, clock)
            peak = clock.peak_mib()
            entry = {"settings": v.describe(), "bare_eval_ms_median": statistics.median(bare),
                     "bare_eval_ms_all": bare, "per_eval_median_s": run["per_eval_median_s"],
                     "per_eval_mean_s": run["per_eval_mean_s"], "total_s": run["seconds"], "evals_run": run["evals"],
                     "stop": run["stop"], "peak_mib": peak, "history": run["history"],
                     "final_loss": run["history"][-1]["loss"] if run["history"] else None}
            entry["_image"] = run["image"].contiguous()
            res["variants"][name] = entry
            log(f"{size}px {name:13s} bare eval {entry['bare_eval_ms_median']:8.2f} ms | in L-BFGS "
                f"{entry['per_eval_median_s'] * 1e3:8.2f} ms/eval median, {run['seconds']:6.2f} s for {run['evals']} | "
                f"loss {entry['final_loss']:.5g} | peak {peak if peak is None else round(peak)} MiB")
            del problem, run, init  # nothing of this variant stays allocated while the next one is measured
        except Exception as exc:  # noqa: BLE001 - record and go on with the next variant
            res["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"{size}px {name}: FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            set_tf32(*DEFAULT_TF32)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del nets
    # comparisons with fp32
    ref = res["variants"].get("fp32", {})
    for name, entry in res["variants"].items():
        if "_image" not in entry or "_image" not in ref:
            continue
        diffs = {}
        for e in checkpoints:
            a, b = loss_at(entry["history"], e), loss_at(ref["history"], e)
            diffs[str(e)] = None if a is None or b is None or b == 0 else (a - b) / b
        entry["loss_rel_diff_vs_fp32"] = diffs
        entry["pixel_diff_255_vs_fp32"] = clip_diff_255(entry["_image"], ref["_image"])
        entry["speedup_vs_fp32"] = ref["per_eval_median_s"] / entry["per_eval_median_s"]
        ok = all(d is not None and abs(d) <= LOSS_TOL for d in diffs.values()) and entry["pixel_diff_255_vs_fp32"] <= PIXEL_TOL
        entry["kept"] = bool(ok) if name != "fp32" else None
    for entry in res["variants"].values():
        entry.pop("_image", None)
    return res


def _one_evaluation(feats: Features, v: Variant, size: int, device, clock: Clock, stage: dict | None = None) -> float:
    """Targets and one evaluation (forward, loss, backward) at ``size``; every tensor is freed on return."""
    stage = {} if stage is None else stage
    stage["stage"] = "loading the images"
    pair = load_pair(size, device)
    stage["stage"] = "computing the targets (inference mode)"
    problem = Problem(feats, v, pair["content"], pair["style"])
    stage["stage"] = "the evaluation (forward, loss, backward)"
    image = pair["content"].clone().requires_grad_(True)
    loss, _, _ = problem.loss(image)
    loss.backward()
    clock.sync()
    return loss.item()


def part_oom(net, device, clock: Clock, big: int, cap_gib: float) -> dict:
    """Cap the process at ~cap_gib, run one evaluation at ``big`` px, record what is raised; then recover."""
    if device.type != "cuda":
        return {"skipped": "needs CUDA (torch.cuda.set_per_process_memory_fraction)"}
    import gc

    res: dict = {"size": big, "cap_gib": cap_gib}
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    frac = min(1.0, cap_gib * 2**30 / total)
    res.update(fraction=frac, total_gib=total / 2**30, allocated_before_mib=torch.cuda.memory_allocated(device) / 2**20)
    feats = Features(net, CONTENT_LAYERS + STYLE_LAYERS)
    v = Variant("default", device)
    try:
        torch.cuda.set_per_process_memory_fraction(frac, device.index or 0)
        t0 = time.perf_counter()
        stage: dict = {}
        try:
            _one_evaluation(feats, v, big, device, clock, stage)
            res.update(raised=False, note="one evaluation fitted under the cap")
        except torch.OutOfMemoryError as exc:
            res.update(raised=True, exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                       is_torch_OutOfMemoryError=True, message_head=str(exc).splitlines()[0][:300])
        except Exception as exc:  # noqa: BLE001 - another error under memory pressure is worth knowing too
            res.update(raised=True, exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                       is_torch_OutOfMemoryError=False, message_head=(str(exc).splitlines() or [""])[0][:300])
        res["seconds_to_raise"] = time.perf_counter() - t0
        res["stage"] = stage.get("stage")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)
        gc.collect()
        torch.cuda.empty_cache()
    try:  # does the process recover once the cap is lifted?
        res["recovered"] = math.isfinite(_one_evaluation(feats, v, 256, device, clock))
    except Exception as exc:  # noqa: BLE001
        res["recovered"] = f"no: {type(exc).__name__}: {exc}"[:300]
    log(f"OOM check at {big}px under {cap_gib} GiB: {res}")
    return res


def notebook_functions() -> dict:
    """The notebook's own functions (every top-level ``def`` of its code cells), defined with torch and nst."""
    import ast
    import functools

    nb = json.loads((ROOT / "style_transfer.ipynb").read_text(encoding="utf-8"))
    ns = {"torch": torch, "nst": nst, "partial": functools.partial, "plt": None, "Path": Path}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith("%"))
        defs = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]
        exec(compile(ast.Module(body=defs, type_ignores=[]), "notebook", "exec"), ns)
    return ns


def part_notebook_oom(net, device, big: int, margin_mib: float = 256.0) -> dict:
    """The notebook's own ``stylize`` when an evaluation does not fit: targets computed first, then the GPU
    capped at what is allocated plus ``margin_mib``; records the error the reader sees."""
    if device.type != "cuda":
        return {"skipped": "needs CUDA"}
    import functools
    import gc

    ns = notebook_functions()
    pair = load_pair(big, device)
    P = ns["content_targets_of"](net, pair["content"], CONTENT_LAYERS)
    A = ns["style_targets_of"](net, pair["style"], STYLE_LAYERS)
    loss = functools.partial(ns["total_loss"], net=net, content_targets=P, style_targets=A,
                             content_weight=CONTENT_WEIGHT, style_weight=STYLE_WEIGHT)
    total = torch.cuda.get_device_properties(device).total_memory
    cap = torch.cuda.memory_allocated(device) + margin_mib * 2**20
    res: dict = {"size": big, "image_hw": list(pair["content"].shape[-2:]), "cap_mib": cap / 2**20}
    try:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device.index or 0)
        try:
            run = ns["stylize"](pair["content"], loss, 5, print_every=0)
            res.update(raised=False, note=f"fitted: {run}")
        except nst.NSTError as exc:
            res.update(raised=True, exception_type="nst_utils.NSTError", message=str(exc),
                       says_smaller_image_size="smaller image_size" in str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else is a finding
            res.update(raised=True, exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                       message=str(exc)[:300], says_smaller_image_size=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)
        del P, A, loss, pair
        gc.collect()
        torch.cuda.empty_cache()
    log(f"notebook stylize at {big}px under a {res['cap_mib']:.0f} MiB cap: {res}")
    return res


def part_big(net, device, clock: Clock, big: int, direct_evals: int, direct_cap_s: float, pyramid_evals: list[int],
             variant_name: str) -> dict:
    res: dict = {"size": big, "variant": variant_name}
    v = Variant(variant_name, device)
    v.enter()
    res["settings"] = v.describe()
    feats = Features(net, CONTENT_LAYERS + STYLE_LAYERS)
    try:
        pair = load_pair(big, device)
        content, style = pair["content"], pair["style"]
        full_c = nst.image_to_tensor(nst.load_image(CONTENT), device)
        full_s = nst.image_to_tensor(nst.load_image(STYLE), device)
        hw = tuple(content.shape[-2:])
        res.update(hw=list(hw), content_upsampled_from=pair["content_upsampled_from"],
                   style_upsampled_from=pair["style_upsampled_from"], fwd_conv_gflop=conv_flops(net, hw) / 1e9)
        # direct run
        try:
            problem = Problem(feats, v, content, style)
            bare = bare_eval_ms(problem, content, clock, reps=3)
            clock.reset_peak()
            run = run_lbfgs(problem, content, direct_evals, clock, deadline_s=direct_cap_s)
            res["direct"] = {"evals_asked": direct_evals, "time_cap_s": direct_cap_s, "evals_run": run["evals"],
                             "stop": run["stop"], "total_s": run["seconds"], "per_eval_median_s": run["per_eval_median_s"],
                             "bare_eval_ms_median": statistics.median(bare), "peak_mib": clock.peak_mib(),
                             "final_loss": run["history"][-1]["loss"], "history": run["history"]}
            log(f"{big}px direct: {run['evals']} evals in {run['seconds']:.1f} s "
                f"({run['per_eval_median_s'] * 1e3:.1f} ms/eval median; stop: {run['stop']}), loss {run['history'][-1]['loss']:.5g}, "
                f"peak {res['direct']['peak_mib']} MiB")
            del problem, run
        except Exception as exc:  # noqa: BLE001
            res["direct"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"{big}px direct FAILED: {exc}")
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # coarse to fine
        try:
            sizes = pyramid_sizes(hw, levels=len(pyramid_evals))
            evals = pyramid_evals[: len(sizes)]  # the coarsest level gets the first budget, as in the notebook
            levels = []
            clock.reset_peak()
            t0 = clock.now()
            image = None
            for (h, w), n in zip(sizes, evals):
                c_lvl = resize(full_c, (h, w))
                s = max(h, w) / max(full_s.shape[-2:])
                s_lvl = resize(full_s, (round(full_s.shape[-2] * s), round(full_s.shape[-1] * s)))
                start = c_lvl if image is None else resize(image, (h, w))
                problem = Problem(feats, v, c_lvl, s_lvl)
                run = run_lbfgs(problem, start, n, clock)
                image = run["image"]
                levels.append({"hw": [h, w], "evals": run["evals"], "seconds": run["seconds"],
                               "per_eval_median_s": run["per_eval_median_s"], "final_loss": run["history"][-1]["loss"]})
                log(f"  coarse-to-fine level {w}x{h}: {run['evals']} evals in {run['seconds']:.2f} s, "
                    f"loss {run['history'][-1]['loss']:.5g}")
            total = clock.now() - t0
            res["coarse_to_fine"] = {"levels": levels, "total_s": total, "peak_mib": clock.peak_mib(),
                                     "final_loss": levels[-1]["final_loss"],
                                     "includes": "targets of each level and the upsampling (not the model load)"}
            d = res.get("direct", {})
            if "history" in d:
                same_t = loss_after_seconds(d["history"], total)
                res["coarse_to_fine"]["direct_loss_after_same_seconds"] = same_t
                res["coarse_to_fine"]["direct_loss_at_same_final_evals"] = loss_at(d["history"], evals[-1])
            log(f"{big}px coarse-to-fine {'/'.join(map(str, evals))}: {total:.1f} s, final loss "
                f"{levels[-1]['final_loss']:.5g}, peak {res['coarse_to_fine']['peak_mib']} MiB")
        except Exception as exc:  # noqa: BLE001
            res["coarse_to_fine"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"{big}px coarse-to-fine FAILED: {exc}")
            traceback.print_exc()
    finally:
        set_tf32(*DEFAULT_TF32)
    return res


# --------------------------------------------------------------------------- report


def _f(x, fmt: str, none: str = "n/a") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, fmt)


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"## gpu_precision: {m['device_name']} ({m['device']}), PyTorch {m['torch']}, {m['date']}", "",
             f"Problem: dog x Starry Night, content relu4_2, style relu1_1..relu5_1, loss = {CONTENT_WEIGHT:g} x content + "
             f"{STYLE_WEIGHT:g} x mean(style); L-BFGS(lr=1, history 50, strong Wolfe, max_iter=N, tolerances 0), one step() "
             "call, start = content. Per-eval time: median interval between evaluations inside L-BFGS (each ends with "
             "loss.item(), a sync); 'bare' = device-event time of forward+loss+backward alone, median. Warm-up excluded. "
             f"PyTorch defaults here: cudnn.allow_tf32={DEFAULT_TF32[0]}, matmul.allow_tf32={DEFAULT_TF32[1]}."]
    c = report.get("ceilings")
    if c and "copy" in c:
        rates = ", ".join(f"{k[7:]} {_f(v['TFLOPs'], '.1f')}" for k, v in c.items() if k.startswith("matmul_"))
        lines += ["", f"**Ceilings:** copy {_f(c['copy']['GBps_read_plus_write'], '.0f')} GB/s (read+write, "
                      f"{c['copy']['bytes_each_way'] / 2**20:.0f} MiB); {c['gemm_size']}^3 matmul TFLOP/s: {rates}."]
    fl = report.get("flops")
    if fl:
        floors = ", ".join(f"{k} {_f(v * 1e3, '.2f')} ms" for k, v in fl["floor_s_per_eval"].items())
        lines += [f"**FLOPs** at {fl['hw'][1]}x{fl['hw'][0]}: forward convs {fl['fwd_gflop']:.1f} GFLOP, evaluation "
                  f"~3x = {fl['eval_gflop']:.0f} GFLOP (input gradients only: weights frozen); arithmetic floor per "
                  f"evaluation at the measured matmul rates: {floors}."]
    for s in report.get("sizes", []):
        up = " (upsampled from the " + "x".join(map(str, s["content_upsampled_from"][::-1])) + " file)" if s["content_upsampled_from"] else ""
        lines += ["", f"### {s['size']} px: {s['hw'][1]}x{s['hw'][0]}{up}, N = {s['evals']}, "
                      f"forward {s['fwd_conv_gflop']:.0f} GFLOP", "",
                  "| variant | ms/eval median (bare) | total s | x vs fp32 | peak MiB | "
                  + " | ".join(f"loss Δ@{e}" for e in s["checkpoints"]) + " | pixel Δ (1/255) | kept |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(s["checkpoints"]) + "---:|:---:|"]
        for name, e in s["variants"].items():
            if "skipped" in e or "error" in e:
                lines.append(f"| {name} | {e.get('skipped') or e.get('error')} |")
                continue
            diffs = e.get("loss_rel_diff_vs_fp32", {})
            kept = {None: "ref", True: "yes", False: "no"}.get(e.get("kept"), "n/a") if "kept" in e else "n/a"
            lines.append(
                f"| {name} | {_f(e['per_eval_median_s'] * 1e3, '.2f')} ({_f(e['bare_eval_ms_median'], '.2f')}) | "
                f"{_f(e['total_s'], '.2f')}{'' if e['evals_run'] == s['evals'] else ' (' + str(e['evals_run']) + ' evals)'} | "
                f"{_f(e.get('speedup_vs_fp32'), '.2f')} | {_f(e['peak_mib'], '.0f')} | "
                + " | ".join(_f(diffs.get(str(k)) * 100 if diffs.get(str(k)) is not None else None, '+.3f') + "%"
                             for k in s["checkpoints"])
                + f" | {_f(e.get('pixel_diff_255_vs_fp32'), '.2f')} | {kept} |")
    o = report.get("oom")
    if o:
        lines += ["", "### Out of memory", ""]
        if "skipped" in o:
            lines.append(f"skipped: {o['skipped']}")
        else:
            lines.append(f"Cap {o.get('cap_gib')} GiB (fraction {_f(o.get('fraction'), '.4f')}), one evaluation at "
                         f"{o.get('size')} px: raised={o.get('raised')}, type `{o.get('exception_type')}`, "
                         f"torch.OutOfMemoryError: {o.get('is_torch_OutOfMemoryError')}, while {o.get('stage')}; after lifting the cap a "
                         f"256 px evaluation ran: {o.get('recovered')}. Message: `{o.get('message_head', '')[:160]}`")
    b = report.get("big")
    if b:
        lines += ["", f"### {b.get('size')} px ({b.get('settings', '')})", ""]
        if "skipped" in b:
            lines.append(f"skipped: {b['skipped']}")
        else:
            up = " (upsampled from the 768 px file)" if b.get("content_upsampled_from") else ""
            lines.append(f"{b['hw'][1]}x{b['hw'][0]}{up}, forward {b['fwd_conv_gflop']:.0f} GFLOP.")
            lines += ["", "| run | evaluations | total s | ms/eval median | peak MiB | final loss |", "|---|---|---:|---:|---:|---:|"]
            d = b.get("direct", {})
            if "error" in d:
                lines.append(f"| direct | {d['error']} |")
            elif d:
                lines.append(f"| direct | {d['evals_run']} of {d['evals_asked']} asked ({d['stop']}) | {_f(d['total_s'], '.1f')} | "
                             f"{_f(d['per_eval_median_s'] * 1e3, '.1f')} (bare {_f(d['bare_eval_ms_median'], '.1f')}) | "
                             f"{_f(d['peak_mib'], '.0f')} | {_f(d['final_loss'], '.5g')} |")
            ctf = b.get("coarse_to_fine", {})
            if "error" in ctf:
                lines.append(f"| coarse-to-fine | {ctf['error']} |")
            elif ctf:
                lv = ctf["levels"]
                lines.append("| coarse-to-fine | " + " + ".join(f"{x['evals']}@{max(x['hw'])}" for x in lv)
                             + f" | {_f(ctf['total_s'], '.1f')} | "
                             + " / ".join(_f(x['per_eval_median_s'] * 1e3, '.1f') for x in lv)
                             + f" | {_f(ctf['peak_mib'], '.0f')} | {_f(ctf['final_loss'], '.5g')} |")
                same = ctf.get("direct_loss_after_same_seconds")
                if same:
                    lines.append("")
                    lines.append(f"Direct run after the same {ctf['total_s']:.1f} s: eval {same['eval']}, loss {same['loss']:.5g}; "
                                 f"after {lv[-1]['evals']} full-size evals: {_f(ctf.get('direct_loss_at_same_final_evals'), '.5g')}.")
    nb_oom = report.get("notebook_oom")
    if nb_oom:
        lines += ["", f"**The notebook's stylize when a picture does not fit** ({nb_oom.get('size')} px, GPU capped at "
                  f"{_f(nb_oom.get('cap_mib'), '.0f')} MiB): {nb_oom.get('exception_type', nb_oom)}: "
                  f"{str(nb_oom.get('message', nb_oom.get('note', '')))[:200]}"]
    if report.get("notes"):
        lines += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _device_name(device: torch.device) -> str:
    from benchmarks.measure import device_name

    return device_name(device)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="long sides (default 512 1024; quick: 64 96)")
    p.add_argument("--evals", type=int, default=None, help="evaluations per run (default 300; quick: 12)")
    p.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), choices=ALL_VARIANTS)
    p.add_argument("--big-size", type=int, default=None, help="default 2048 (quick: 128)")
    p.add_argument("--big-evals", type=int, default=None, help="direct run at the big size (default 300; quick: 12)")
    p.add_argument("--big-cap-s", type=float, default=30.0, help="time cap of the direct big run (default 30 s)")
    p.add_argument("--big-variant", default="default", choices=ALL_VARIANTS,
                   help="numeric setting of the big-size runs (default: PyTorch's defaults, as the notebook runs)")
    p.add_argument("--pyramid-evals", type=int, nargs="+", default=None, help="default 300 150 75 (quick: 12 6 3)")
    p.add_argument("--bare-reps", type=int, default=None, help="bare evaluations timed per variant (default 10; quick 2)")
    p.add_argument("--skip-2048", action="store_true", help="skip the big-size runs")
    p.add_argument("--skip-oom", action="store_true")
    p.add_argument("--skip-ceilings", action="store_true")
    p.add_argument("--oom-cap-gib", type=float, default=2.0)
    p.add_argument("--time-budget", type=float, default=150.0,
                   help="soft limit in seconds: parts not started by then are skipped (default 150)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few evaluations (a CPU dry run)")
    p.add_argument("--out", default=None, help="JSON with all numbers (the .md beside it)")
    a = p.parse_args(argv)
    q = a.quick
    sizes = a.sizes or ([64, 96] if q else [512, 1024])
    n_evals = a.evals or (12 if q else 300)
    big = a.big_size or (128 if q else 2048)
    big_evals = a.big_evals or (12 if q else 300)
    pyr = a.pyramid_evals or ([12, 6, 3] if q else [300, 150, 75])
    bare_reps = a.bare_reps or (2 if q else 10)
    checkpoints = sorted({e for e in ((4, 8) if q else (50, 100)) if e < n_evals} | {n_evals})

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    clock = Clock(device)
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "device_name": _device_name(device),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "default_tf32": DEFAULT_TF32,
            "threads": torch.get_num_threads(), "argv": sys.argv[1:] if argv is None else argv, "quick": q,
            "sizes": sizes, "evals": n_evals, "variants": a.variants, "big": big, "big_evals": big_evals,
            "big_cap_s": a.big_cap_s, "pyramid_evals": pyr}
    report: dict = {"meta": meta, "notes": []}
    out = Path(a.out) if a.out else None

    def save():
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_json_safe(report), indent=1), encoding="utf-8")
            out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")

    log(f"gpu_precision on {meta['device_name']} ({device}), PyTorch {torch.__version__}, cuDNN {meta['cudnn']}; "
        f"sizes {sizes}, N={n_evals}, variants {a.variants}; big {big} px ({big_evals} evals, cap {a.big_cap_s:.0f} s; "
        f"pyramid {pyr}); time budget {a.time_budget:.0f} s")
    torch.manual_seed(0)
    if not a.skip_ceilings:
        try:
            report["ceilings"] = measure_ceilings(clock, q)
            log(f"ceilings: {json.dumps(report['ceilings'])}")
        except Exception as exc:  # noqa: BLE001
            report["ceilings"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"ceilings FAILED: {exc}")
    net = nst.load_vgg19("caffe", device=device, pooling="max")
    net = net[: nst.layer_index(net, DEEPEST) + 1]
    net.requires_grad_(False).eval()

    # FLOPs of one evaluation at 512 px (the notebook's GPU size)
    hw512 = tuple(nst.image_to_tensor(nst.load_image(CONTENT, 512)).shape[-2:])
    fwd = conv_flops(net, hw512)
    rates = {k[7:]: v["TFLOPs"] for k, v in report.get("ceilings", {}).items() if k.startswith("matmul_")}
    report["flops"] = {"hw": list(hw512), "fwd_gflop": fwd / 1e9, "eval_gflop": 3 * fwd / 1e9,
                       "floor_s_per_eval": {k: 3 * fwd / (r * 1e12) for k, r in rates.items() if r}}
    log(f"VGG19 convs to {DEEPEST} at {hw512[1]}x{hw512[0]}: {fwd / 1e9:.1f} GFLOP forward, ~{3 * fwd / 1e9:.0f} per "
        f"evaluation; floors {report['flops']['floor_s_per_eval']}")
    save()

    deadline = a.time_budget
    report["sizes"] = []
    # smallest size first, then the OOM check and the big runs, then the other sizes
    order = sorted(sizes)
    for i, size in enumerate(order):
        if time.perf_counter() - T_START > deadline:
            report["notes"].append(f"{size} px skipped: time budget spent")
            continue
        report["sizes"].append(part_sizes(size, a.variants, n_evals, checkpoints, net, device, clock, bare_reps,
                                          fwd, deadline))
        report["sizes"].sort(key=lambda s: s["size"])
        save()
        if i == 0:
            if not a.skip_oom:
                try:
                    report["oom"] = part_oom(net, device, clock, big, a.oom_cap_gib)
                except Exception as exc:  # noqa: BLE001
                    report["oom"] = {"error": f"{type(exc).__name__}: {exc}"}
                    traceback.print_exc()
                    if device.type == "cuda":
                        torch.cuda.set_per_process_memory_fraction(1.0)
                try:
                    report["notebook_oom"] = part_notebook_oom(net, device, big)
                except Exception as exc:  # noqa: BLE001
                    report["notebook_oom"] = {"error": f"{type(exc).__name__}: {exc}"}
                    traceback.print_exc()
                    if device.type == "cuda":
                        torch.cuda.set_per_process_memory_fraction(1.0)
                save()
            if not a.skip_2048:
                if time.perf_counter() - T_START > deadline:
                    report["big"] = {"size": big, "skipped": "time budget spent"}
                else:
                    report["big"] = part_big(net, device, clock, big, big_evals, a.big_cap_s, pyr, a.big_variant)
                save()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["meta"]["seconds"] = time.perf_counter() - T_START
    save()
    print("\n" + markdown(report), flush=True)
    if out:
        log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

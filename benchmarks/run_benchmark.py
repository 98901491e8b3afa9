"""Side-by-side benchmark: the official PyTorch tutorial's algorithm against this notebook.

For each image size it runs, each in a fresh process so that peak memory is per run:

(a) ``benchmarks/baseline_tutorial.py`` (the tutorial's algorithm: Sequential surgery,
    LBFGS defaults, clamping inside the closure) for ``--evals`` loss evaluations;
(b) ``style_transfer.ipynb`` itself, headless with papermill in a fresh kernel
    (``sections="core"``), for ``--notebook-evals`` evaluations (default: the same).

Both use the notebook's default images, layers and loss weights, read from its
parameters cell, and the same loss definitions, so they minimise the same function.
The table compares seconds per evaluation, peak memory, and the time each needs to
first reach the loss the baseline has after its last evaluation (and its best loss).

    python benchmarks/run_benchmark.py --sizes 256 512 --evals 300 [--device auto] [--out DIR]

Writes ``<out>/benchmark_<date>.json`` (both histories and the summary) and
``<out>/benchmark_<date>.md`` (the tables, ready to paste into a README).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nst_utils as nst  # noqa: E402
from benchmarks.measure import device_name, rss_to_mb  # noqa: E402

NOTEBOOK = ROOT / "style_transfer.ipynb"
BASELINE = ROOT / "benchmarks" / "baseline_tutorial.py"

#: Notebook parameters that define the problem; both runs get the notebook's defaults of these.
PROBLEM_PARAMETERS = (
    "content_path",
    "style_path",
    "content_layers",
    "style_layers",
    "content_weight",
    "style_weight",
)
#: Fixed settings of the notebook run (the baseline has no total-variation term and uses max
#: pooling, as the tutorial does; both are also the notebook's defaults).
NOTEBOOK_FIXED = {
    "sections": "core",
    "frame_every": 5,
    "weights": "caffe",
    "tv_weight": 0.0,
    "pooling": "max",
    "overwrite": True,
    "live": False,
}


# --------------------------------------------------------------------------- notebook defaults


def notebook_defaults(notebook: str | os.PathLike = NOTEBOOK) -> dict:
    """The values assigned in the notebook's cell tagged ``parameters``, as Python objects.

    Parsed with :mod:`ast` (literals only, nothing is executed). Unlike
    ``papermill.inspect_notebook`` this also understands tuple assignments such as
    ``content_weight, style_weight, tv_weight = 1.0, 5.0, 0.0``.
    """
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = [
        c
        for c in nb["cells"]
        if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    source = "".join(cells[0]["source"])
    values: dict = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                values[target.id] = ast.literal_eval(node.value)
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                if len(target.elts) != len(node.value.elts):
                    raise ValueError(f"{notebook}: cannot unpack {ast.unparse(node)}")
                for name, value in zip(target.elts, node.value.elts, strict=True):
                    values[name.id] = ast.literal_eval(value)
    return values


# --------------------------------------------------------------------------- pure helpers (tested)


def per_eval_seconds(history: Sequence[Mapping]) -> dict:
    """Median and mean of the time between evaluations (the first one counts from the start).

    The median is robust to the odd slow evaluation (another process, a GC pause, a GIF frame).
    Returns ``{"median": None, "mean": None}`` for an empty history.
    """
    if not history:
        return {"median": None, "mean": None}
    times = [0.0] + [float(h["seconds"]) for h in history]
    deltas = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"median": statistics.median(deltas), "mean": times[-1] / len(deltas)}


def time_to_reach(history: Sequence[Mapping], target: float) -> dict | None:
    """First evaluation whose loss is ``<= target``: ``{"eval", "seconds", "loss"}``; else ``None``.

    ``None`` also for a non-finite target; NaN losses never count as reaching it.
    """
    if target is None or not math.isfinite(target):
        return None
    for h in history:
        loss = float(h["loss"])
        if math.isfinite(loss) and loss <= target:
            return {"eval": int(h["eval"]), "seconds": float(h["seconds"]), "loss": loss}
    return None


def speedup(
    baseline_history: Sequence[Mapping], notebook_history: Sequence[Mapping], target: float
) -> dict:
    """How much sooner the notebook reaches ``target`` than the baseline.

    Returns ``{"target", "baseline", "notebook", "ratio", "kind", "text"}`` where ``baseline`` and
    ``notebook`` are :func:`time_to_reach` results and ``ratio`` is baseline seconds / notebook
    seconds. ``kind`` says how to read it:

    * ``"exact"``: both reached the target;
    * ``"upper"``: only the baseline did; the notebook ran ``T`` seconds without reaching it, so
      its time is more than ``T`` and the ratio is below ``baseline / T`` (text ``"< x"``);
    * ``"lower"``: only the notebook did; the ratio is above ``T_baseline / notebook`` (``"> x"``);
    * ``"n/a"``: neither reached it, the target is not finite, or a history is empty.
    """
    base, nb = time_to_reach(baseline_history, target), time_to_reach(notebook_history, target)
    out = {
        "target": target,
        "baseline": base,
        "notebook": nb,
        "ratio": None,
        "kind": "n/a",
        "text": "n/a",
    }

    def total(history: Sequence[Mapping]) -> float:
        return float(history[-1]["seconds"]) if history else 0.0

    if base and nb and nb["seconds"] > 0:
        out.update(ratio=base["seconds"] / nb["seconds"], kind="exact")
        out["text"] = f"{out['ratio']:.2f}×"
    elif base and not nb and total(notebook_history) > 0:
        out.update(ratio=base["seconds"] / total(notebook_history), kind="upper")
        out["text"] = f"< {out['ratio']:.2f}×"
    elif nb and not base and nb["seconds"] > 0 and baseline_history:
        out.update(ratio=total(baseline_history) / nb["seconds"], kind="lower")
        out["text"] = f"> {out['ratio']:.2f}×"
    return out


def summarize(baseline: Mapping | None, notebook: Mapping | None) -> dict:
    """The comparison of two runs (dicts shaped like the notebook's run JSON; None: it failed)."""
    baseline, notebook = baseline or {"history": []}, notebook or {"history": []}
    bh, nh = baseline["history"], notebook["history"]
    final = float(bh[-1]["loss"]) if bh else math.nan
    finite = [float(h["loss"]) for h in bh if math.isfinite(float(h["loss"]))]
    best = min(finite) if finite else math.nan

    def side(run: Mapping) -> dict:
        h = run["history"]
        losses = [(float(e["loss"]), int(e["eval"])) for e in h if math.isfinite(float(e["loss"]))]
        best_loss, best_eval = min(losses) if losses else (math.nan, None)
        return {
            "evals": len(h),
            "stop_reason": run.get("stop_reason"),
            "seconds": run.get("seconds"),
            "seconds_per_eval": per_eval_seconds(h),
            "peak_memory_mb": run.get("peak_memory_mb"),
            "last_loss": float(h[-1]["loss"]) if h else math.nan,
            "best_loss": best_loss,
            "best_eval": best_eval,
            "device_name": run.get("device_name"),
            "image_hw": run.get("image_hw"),
            "threads": run.get("threads"),
        }

    return {
        "baseline": side(baseline),
        "notebook": side(notebook),
        "to_final_loss": speedup(bh, nh, final),
        "to_best_loss": speedup(bh, nh, best),
    }


# --------------------------------------------------------------------------- formatting


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _reach(r: dict | None) -> str:
    return "not reached" if r is None else f"{r['seconds']:.1f} s (eval {r['eval']})"


def markdown_section(entry: Mapping, meta: Mapping) -> str:
    """One size's table (GitHub markdown), headed by the device, PyTorch, threads and date."""
    size = entry["size"]
    lines = [f"### {size} px"]
    if entry.get("errors"):
        lines += [""] + [f"**{side} failed:** {msg}" for side, msg in entry["errors"].items()]
    summary = entry.get("summary")
    if summary is None:
        return "\n".join(lines) + "\n"
    b, n = summary["baseline"], summary["notebook"]
    hw = b["image_hw"] or n["image_hw"]  # None where a run failed
    names = {b["device_name"], n["device_name"]} - {None}
    lines[0] += f" ({hw[1]}×{hw[0]} image)" if hw else ""

    def row(label: str, cell) -> str:
        """A table row; ``cell(side)`` formats one run; "failed" for a run without numbers."""
        cells = (cell(x) if x["evals"] else "failed" for x in (b, n))
        return f"| {label} | " + " | ".join(cells) + " |"

    def per_eval(x: Mapping) -> str:
        times = x["seconds_per_eval"]
        return f"{_num(times['median'], '.3f')} ({_num(times['mean'], '.3f')})"

    threads = b.get("threads") or meta["threads"]
    lines += [
        "",
        f"{' / '.join(sorted(names))}; PyTorch {meta['torch']}; torch threads: "
        f"{threads}; {meta['date']}",
        "",
        "| | official tutorial's algorithm | this notebook |",
        "|---|---:|---:|",
        row("evaluations run (stop)", lambda x: f"{x['evals']} ({x['stop_reason']})"),
        row("seconds per evaluation, median (mean)", per_eval),
        row("peak memory (MB)", lambda x: _num(x["peak_memory_mb"], ".0f")),
        row(
            "loss at its last evaluation",
            lambda x: f"{_num(x['last_loss'], '.4g')} (eval {x['evals']})",
        ),
        row("best loss", lambda x: f"{_num(x['best_loss'], '.4g')} (eval {x['best_eval']})"),
    ]
    for key, label in (
        ("to_final_loss", f"the baseline's loss at eval {b['evals']}"),
        ("to_best_loss", "the baseline's best loss"),
    ):
        s = summary[key]
        lines.append(
            f"| time to first reach {label} ({_num(s['target'], '.4g')}) | "
            f"{_reach(s['baseline'])} | {_reach(s['notebook'])} |"
        )
        lines.append(
            f"| **speed-up** to {label} (baseline time / notebook time) | 1× | **{s['text']}** |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(entries: Iterable[Mapping], meta: Mapping) -> str:
    head = (
        f"## Benchmark: official tutorial's algorithm vs this notebook ({meta['date']})\n\n"
        f"Same images, layers, loss definitions and weights; {meta['evals']} evaluations for "
        f"the baseline, {meta['notebook_evals']} for the notebook. Seconds per evaluation: "
        "median of the per-evaluation times (mean in brackets). Peak memory: process peak RSS "
        "on a CPU, `torch.cuda.max_memory_allocated` on CUDA. Produced by "
        f"`python benchmarks/run_benchmark.py {meta['command']}`.\n"
    )
    return "\n".join([head] + [markdown_section(e, meta) for e in entries])


# --------------------------------------------------------------------------- running


def _child_env(threads: int | None) -> dict:
    env = dict(os.environ, NST_HEADLESS="1", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


#: Lines of the notebook's output worth showing while it runs (papermill logs every cell otherwise).
NOTEBOOK_PROGRESS = ("eval ", "Stopped", "device:", "RunResult", "main picture done", "wrote ")


def _run_quietly(cmd: Sequence[str], env: dict, show) -> float | None:
    """Run ``cmd`` in ROOT; echo the output lines that ``show`` accepts (a predicate, or prefixes).

    Returns the peak resident memory (MiB) of the largest process of its tree (the notebook's
    kernel, for papermill), from ``os.wait4``; None where the OS does not say. On failure the
    last 60 lines are printed and :class:`RuntimeError` is raised.
    """
    if isinstance(show, tuple):
        prefixes = show
        show = lambda line: line.lstrip().startswith(prefixes)  # noqa: E731
    tail: list[str] = []
    peak = None
    with subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-60:]
            if show(line):
                print("   ", line.rstrip(), flush=True)
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode, peak = os.waitstatus_to_exitcode(status), rss_to_mb(usage.ru_maxrss)
    if proc.returncode:
        print("".join(tail), file=sys.stderr, flush=True)
        last = next((line.strip() for line in reversed(tail) if line.strip()), "")
        name = Path(cmd[1]).name if cmd[1] != "-m" else cmd[2]
        raise RuntimeError(f"{name} exited with status {proc.returncode}: {last[:300]}")
    return peak


def run_baseline_process(
    size: int, evals: int, problem: Mapping, device: str, out: Path, env: dict
) -> dict:
    """Run baseline_tutorial.py in a fresh Python process; return its run JSON."""
    json_out = out / f"baseline_{size}.json"
    json_out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(BASELINE),
        "--size",
        str(size),
        "--evals",
        str(evals),
        "--device",
        device,
        "--content",
        problem["content_path"],
        "--style",
        problem["style_path"],
        "--content-weight",
        repr(float(problem["content_weight"])),
        "--style-weight",
        repr(float(problem["style_weight"])),
        "--content-layers",
        *problem["content_layers"],
        "--style-layers",
        *problem["style_layers"],
        "--json-out",
        str(json_out),
        "--image-out",
        str(out / f"baseline_{size}.png"),
    ]
    _run_quietly(cmd, env, lambda line: True)
    return json.loads(json_out.read_text(encoding="utf-8"))


#: A last cell the benchmark appends to its copy of the notebook: only the kernel can read its own
#: CUDA peak memory (the notebook's run JSON need not record it). Prints null on a CPU.
PEAK_TAG = "benchmark: CUDA peak MB"
PEAK_CELL = (
    "import json as _json, torch as _torch\n"
    "_peak = _torch.cuda.is_initialized() and _torch.cuda.max_memory_allocated()\n"
    f"print({PEAK_TAG!r}, _json.dumps(_peak / 2**20 if _peak else None))\n"
)


def _notebook_with_peak_cell(dest: Path) -> Path:
    """Write the notebook with :data:`PEAK_CELL` appended to ``dest``; return ``dest``."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    nb["cells"].append(
        {
            "cell_type": "code",
            "id": "benchmark-cuda-peak",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": PEAK_CELL,
        }
    )
    dest.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return dest


def _cuda_peak_mb(executed: Path) -> float | None:
    """What :data:`PEAK_CELL` printed in the executed notebook (None on a CPU, or if nothing)."""
    cell = json.loads(executed.read_text(encoding="utf-8"))["cells"][-1]
    text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
    for line in text.splitlines():
        if line.startswith(PEAK_TAG):
            return json.loads(line[len(PEAK_TAG) :])
    return None


def run_notebook_process(
    size: int, evals: int, problem: Mapping, device: str, out: Path, env: dict, kernel: str
) -> dict:
    """Run the notebook with papermill (its own process, a fresh kernel); return its run JSON.

    Its ``peak_memory_mb`` is the kernel's CUDA peak on a GPU, else the kernel's peak RSS.
    """
    nb_dir = out / f"nb_{size}"
    nb_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(problem['content_path']).stem}_{Path(problem['style_path']).stem}"
    run_json = nb_dir / f"{stem}.json"
    run_json.unlink(missing_ok=True)  # so that a stale file from an earlier benchmark is never read
    parameters = {
        **problem,
        **NOTEBOOK_FIXED,
        "image_size": size,
        "num_evals": evals,
        "device": device,
        "output_dir": str(nb_dir.resolve()),
    }
    params_file = nb_dir / "parameters.json"  # JSON is YAML, which papermill's -f reads
    params_file.write_text(json.dumps(parameters, indent=1), encoding="utf-8")
    source = _notebook_with_peak_cell(nb_dir / "notebook.ipynb")
    executed = nb_dir / "executed.ipynb"
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(source),
        str(executed),
        "-f",
        str(params_file),
        "-k",
        kernel,
        "--cwd",
        str(ROOT),
        "--no-progress-bar",
        "--log-output",
        "--log-level",
        "INFO",
    ]
    peak_rss = _run_quietly(cmd, env, NOTEBOOK_PROGRESS)
    if not run_json.is_file():
        raise RuntimeError(f"the notebook ran but wrote no {run_json}")
    run = json.loads(run_json.read_text(encoding="utf-8"))
    run.setdefault("device_name", device_name(nst.pick_device(device)))
    run.setdefault("threads", int(env.get("OMP_NUM_THREADS") or 0) or None)
    cuda_peak = _cuda_peak_mb(executed)
    run["peak_memory_mb"] = peak_rss if cuda_peak is None else cuda_peak
    return run


def _free_stem(out: Path, date: str) -> str:
    stem, n = f"benchmark_{date}", 0
    while (out / f"{stem}.json").exists() or (out / f"{stem}.md").exists():
        n += 1
        stem = f"benchmark_{date}-{n}"
    return stem


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(obj):
    """NaN and infinities become ``None``, so that the JSON file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time the official tutorial's algorithm and this "
        "notebook side by side (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[256], help="long sides in px (default 256)"
    )
    parser.add_argument(
        "--evals", type=int, default=300, help="baseline evaluations per size (default 300)"
    )
    parser.add_argument(
        "--notebook-evals", type=int, default=None, help="notebook evaluations (default: --evals)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in both runs (sets OMP_NUM_THREADS); default: PyTorch's default",
    )
    parser.add_argument(
        "--kernel", default="python3", help="Jupyter kernel for the notebook (default python3)"
    )
    args = parser.parse_args(argv)
    if args.evals < 1 or (args.notebook_evals is not None and args.notebook_evals < 1):
        parser.error("--evals and --notebook-evals must be >= 1")
    if any(s < 32 for s in args.sizes):
        parser.error("sizes must be >= 32 px")
    nb_evals = args.notebook_evals or args.evals

    import torch  # here, so that importing this module for its helpers stays cheap

    defaults = notebook_defaults()
    problem = {k: defaults[k] for k in PROBLEM_PARAMETERS}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now().astimezone()
    stem = _free_stem(out, now.strftime("%Y-%m-%d"))
    env = _child_env(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "date": now.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "device": args.device,
        "evals": args.evals,
        "notebook_evals": nb_evals,
        "command": " ".join(sys.argv[1:] if argv is None else argv),
        "problem": problem,
        "notebook_fixed": NOTEBOOK_FIXED,
    }
    entries: list[dict] = []
    print(
        f"Benchmark {now:%Y-%m-%d %H:%M}: sizes {args.sizes}, {args.evals} baseline / "
        f"{nb_evals} notebook evaluations, device {args.device}, PyTorch {torch.__version__}, "
        f"{meta['threads']} threads -> {out}",
        flush=True,
    )
    for size in args.sizes:
        entry: dict = {"size": size, "errors": {}}
        runs = (
            ("baseline", run_baseline_process, (size, args.evals, problem, args.device, out, env)),
            (
                "notebook",
                run_notebook_process,
                (size, nb_evals, problem, args.device, out, env, args.kernel),
            ),
        )
        for side, run, run_args in runs:
            print(f"\n== {size} px: {side} ==", flush=True)
            t0 = time.perf_counter()
            try:
                entry[side] = run(*run_args)
            except (OSError, RuntimeError, ValueError) as exc:
                entry["errors"][side] = str(exc)
                print(f"{side} at {size} px failed: {exc}", file=sys.stderr, flush=True)
            print(f"({side} process took {time.perf_counter() - t0:.0f} s in all)", flush=True)
        if "baseline" in entry or "notebook" in entry:
            entry["summary"] = summarize(entry.get("baseline"), entry.get("notebook"))
        entries.append(entry)
        print("\n" + markdown_section(entry, meta), flush=True)
        # after every size, so that a failure later keeps what is done
        report = _json_safe({"meta": meta, "results": entries})
        _write(out / f"{stem}.json", json.dumps(report, indent=1))
        _write(out / f"{stem}.md", markdown_report(entries, meta))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 1 if any(e["errors"] for e in entries) else 0


if __name__ == "__main__":
    raise SystemExit(main())

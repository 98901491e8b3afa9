"""Everything that needs a CUDA GPU, in one call; see benchmarks/README.md ("On a GPU").

    python benchmarks/gpu_check.py [OUT] [--budget SECONDS]   # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry-run [OUT]            # anywhere: CPU, tiny sizes

Steps: device, tests, main, bench, fast (if benchmarks/fast_benchmark.py exists); each one's
output goes to OUT/<step>.log, a failed step stops none, then OUT/summary.md is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ROOT / "benchmarks" / "fast_benchmark.py"
PROBE = (
    "import json, torch; from benchmarks.measure import device_name; c = torch.cuda."
    "is_available(); print(json.dumps({'torch': torch.__version__, 'cuda': c, "
    "'card': device_name('cuda' if c else 'cpu')}))"
)
DRY_TESTS = ["tests/test_benchmark.py", "-k", "time_to_reach", "-p", "no:cacheprovider"]


def steps(out: Path, dry: bool) -> list[tuple[str, list[str], dict]]:
    """(name, arguments of ``python``, extra environment) of each step."""
    dev = "cpu" if dry else "cuda"
    nb = {
        "sections": "core",
        "device": dev,
        "output_dir": out / "main",
        "overwrite": True,
        **({"image_size": 64, "num_evals": 4, "frame_every": 0} if dry else {}),
    }
    return [
        ("device", ["-c", PROBE], {}),
        ("tests", ["-m", "pytest", "-q", *DRY_TESTS * dry], {"NST_TEST_DEVICE": dev}),
        (
            "main",
            [
                "-m",
                "papermill",
                "style_transfer.ipynb",
                str(out / "main.ipynb"),
                "--cwd",
                str(ROOT),
                "--no-progress-bar",
                "--log-output",
                *(x for k, v in nb.items() for x in ("-p", k, str(v))),
            ],
            {},
        ),
        (
            "bench",
            [
                "benchmarks/run_benchmark.py",
                "--device",
                dev,
                "--sizes",
                *(["64", "--evals", "3"] if dry else ["512", "1024", "--evals", "300"]),
                "--out",
                str(out / "bench"),
            ],
            {},
        ),
        *([("fast", [str(FAST), "--device", dev], {})] if FAST.is_file() and not dry else []),
    ]


def run(name: str, args: list[str], env: dict, out: Path, deadline: float) -> dict:
    """One step, ``python *args`` in ROOT; its process group is killed at the deadline."""
    shown = "python " + ("-c PROBE" if args[0] == "-c" else shlex.join(args))
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = f"killed at the budget ({proc.wait()})"
    print(f"    exit {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
    return {"step": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "cmd": shown}


def summarise(out: Path, done: list[dict], title: str) -> str:
    """The summary (markdown): each step, the tests' result, the main job's times, the reports."""
    log = {s["step"]: (out / f"{s['step']}.log").read_text(encoding="utf-8") for s in done}
    tests = re.findall(r"^=* ?(\d+ (?:passed|failed|errors?)\b.*?) ?=*$", log["tests"], re.M)
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("main/*.json")]
    run = next((r for r in runs if isinstance(r, dict) and r.get("history")), {"history": []})
    t = [0.0] + [float(h["seconds"]) for h in run["history"]]
    ms = 1e3 * statistics.median(b - a for a, b in zip(t, t[1:], strict=False)) if t[1:] else 0
    wall = {s["step"]: s["seconds"] for s in done}
    text = [
        title,
        "",
        "| step | exit | seconds | command |",
        "|---|---|--:|---|",
        *(f"| {s['step']} | {s['rc']} | {s['seconds']} | `{s['cmd']}` |" for s in done),
        "",
        f"- tests: {(tests or ['no result'])[-1]}",
        f"- main job: {wall.get('main')} s from command to end; {len(t) - 1} evaluations in "
        f"{t[-1]:.1f} s, {ms:.1f} ms each (median)",
        *(
            ["- fast_benchmark.py, last lines:", "```", *log["fast"].splitlines()[-15:], "```"]
            if "fast" in log
            else ["- fast_benchmark.py: not run (dry run, or no such file)"]
        ),
        "",
        *(p.read_text(encoding="utf-8") for p in out.glob("bench/benchmark_*.md")),
    ]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="output folder (default: benchmarks/results/gpu_*)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the plumbing")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all steps (540)")
    args = parser.parse_args(argv)
    stamp = dt.datetime.now().astimezone()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"gpu_{stamp:%Y-%m-%d_%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    out, deadline, done, device = out.resolve(), time.monotonic() + args.budget, [], {}
    for name, step_args, env in steps(out, args.dry_run):
        done.append(run(name, step_args, env, out, deadline))
        if name == "device":
            lines = (out / "device.log").read_text(encoding="utf-8").splitlines()
            device = json.loads(lines[-1]) if done[0]["rc"] == 0 and lines else {}
            if not (args.dry_run or device.get("cuda")):
                sys.exit(f"no CUDA GPU here (see {out / 'device.log'}); try --dry-run")
    title = (
        f"# GPU check {stamp:%Y-%m-%d %H:%M %Z}: {device.get('card')}, PyTorch "
        f"{device.get('torch')}{' (dry run)' * args.dry_run}"
    )
    (out / "summary.md").write_text(summarise(out, done, title), encoding="utf-8")
    print((out / "summary.md").read_text(encoding="utf-8"), f"all in {out}", flush=True)
    return 0 if all(s["rc"] == 0 for s in done) else 1


if __name__ == "__main__":
    raise SystemExit(main())

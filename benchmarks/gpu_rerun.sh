#!/usr/bin/env bash
# Second, shorter GPU call: the main job (with the time of each cell) and the precision runs the first call
# could not fit (fp32 run-to-run noise, bf16, out of memory, 2048 px).   run: carry [".whl"], timeout_s ~330
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/mpl NST_HEADLESS=1
mkdir -p /tmp/gif && dpkg-deb -x .whl/gifsicle_*.deb /tmp/gif && export PATH=/tmp/gif/usr/bin:$PATH
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
python3 -m papermill style_transfer.ipynb "$OUT/main.ipynb" -p sections core -p device cuda -p output_dir /tmp/main \
  --no-progress-bar --log-output 2>&1 | grep -E "device:|RunResult|wrote|done in" 
echo "main job wall: $(( $(date +%s) - t0 )) s"
python3 - "$OUT/main.ipynb" <<'PY'
import json, sys
nb = json.load(open(sys.argv[1]))
for i, c in enumerate(nb["cells"]):
    d = c.get("metadata", {}).get("papermill", {}).get("duration") or 0
    if d > 0.25:
        print(f"cell {i:2d} {d:6.2f} s  {''.join(c['source'])[:70]!r}")
print("papermill total", nb["metadata"]["papermill"]["duration"])
PY
cp /tmp/main/dog_starry_night.json "$OUT/" 2>/dev/null
timeout 250 python3 benchmarks/gpu_precision.py --device cuda --sizes 512 --variants fp32 fp32_repeat default bf16 \
  --skip-ceilings --time-budget 210 --big-cap-s 25 --out "$OUT/precision2.json" 2>&1 | tail -45

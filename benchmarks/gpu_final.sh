#!/usr/bin/env bash
# Follow-up GPU calls after gpu_check.sh (run: carry [".whl"]): STEPS picks what runs, in this order:
#   timings    where the main job's seconds go: torch import, CUDA init, the first LBFGS(), GIF encoding
#   main       the main job as shipped, with the time of each cell
#   precision  gpu_precision.py at 512 px: float32 twice, TF32, bf16; out of memory; 2048 px
# The second call of 2026-11-26 ran STEPS="main precision" (timeout_s 330), the third STEPS="timings main" (150).
# A later session (H200, 2026-11-26) ran STEPS="timings main" and then, in the same call, the suite on CUDA:
#   PYTHONPATH=/tmp/site PATH=/tmp/gif/usr/bin:$PATH NST_TEST_DEVICE=cuda python3 -m pytest -q
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
STEPS=${STEPS:-timings main}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/mpl NST_HEADLESS=1
mkdir -p /tmp/gif && dpkg-deb -x .whl/gifsicle_*.deb /tmp/gif && export PATH=/tmp/gif/usr/bin:$PATH
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [[ " $STEPS " == *" timings "* ]]; then
python3 - <<'PY'
import time
t = time.perf_counter(); import torch; print(f"import torch {time.perf_counter() - t:.2f} s")
t = time.perf_counter(); import nst_utils as nst; print(f"import nst_utils (rest) {time.perf_counter() - t:.2f} s")
t = time.perf_counter(); torch.ones(1, device="cuda").sum().item(); print(f"CUDA init {time.perf_counter() - t:.2f} s")
x = torch.zeros(3, device="cuda", requires_grad=True)
t = time.perf_counter(); opt = torch.optim.LBFGS([x]); print(f"first LBFGS() (imports torch._dynamo) {time.perf_counter() - t:.2f} s")
import numpy as np
frames = [np.random.default_rng(i).integers(0, 255, (384, 512, 3), dtype=np.uint8) for i in range(60)]
for size in (256, 384):
    t = time.perf_counter(); nst.save_gif(frames, f"/tmp/t{size}.gif", max_size=size, overwrite=True)
    enc = time.perf_counter() - t
    t = time.perf_counter(); nst.save_gif(frames, f"/tmp/t{size}.gif", max_size=size, overwrite=True, lossy=40)
    print(f"GIF of 60 noise frames at {size} px: encode {enc:.2f} s, with gifsicle -O3 --lossy=40 {time.perf_counter() - t:.2f} s")
t = time.perf_counter(); import matplotlib.pyplot as plt; fig = nst.show_images(frames[:3], ["a", "b", "c"], height=3)
nst.save_figure(fig, "/tmp/fig.png", overwrite=True); print(f"matplotlib import + 3-panel figure saved {time.perf_counter() - t:.2f} s")
PY
fi
if [[ " $STEPS " == *" main "* ]]; then
  t0=$(date +%s)
  python3 -m papermill style_transfer.ipynb "$OUT/main.ipynb" -p sections core -p device cuda -p output_dir /tmp/main \
    --no-progress-bar --log-output 2>&1 | grep -E "device:|RunResult|wrote|done in"
  echo "main job wall (papermill start to end): $(( $(date +%s) - t0 )) s"
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
fi
if [[ " $STEPS " == *" precision "* ]]; then
  timeout 250 python3 benchmarks/gpu_precision.py --device cuda --sizes 512 --variants fp32 fp32_repeat default bf16 \
    --skip-ceilings --time-budget 210 --big-cap-s 25 --out "$OUT/precision2.json" 2>&1 | tail -45
fi

#!/usr/bin/env bash
# Every GPU check of issue 5 in one device call, most valuable first, each step under its own time limit
# (≤ 7 minutes in all; run with timeout_s ≈ 440). Results go to $OUT (at most 8 files, the most a call
# returns); docs/gpu-notes.md says what to read in them.
#   1. CUDA kernel tests (values and all gradients against float64, CUDA-graph decode,            ≤ 100 s
#      compiled training under CUDA graphs)
#   2. benchmarks/gpu.py --fast: the whole model (dense, kron_auto = version 3, kron_v2), then     ≤ 110 s
#      the layer paths against dense
#   3. the training step under torch.compile with CUDA graphs (mode reduce-overhead)             ≤ 120 s
#   4. the training step under plain torch.compile (inductor, no CUDA graphs)                    ≤ 100 s
#   (each compiled variant is a cold inductor build, ~40 s). The block-size sweep is
#   `SWEEP=1 OUT=... bash benchmarks/gpu_session.sh` (≈ 75 s more; run 4 chose today's defaults).
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kronypt-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
timeout 100 python3 -m pytest tests/test_kernels.py -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log"
if [ "${SWEEP:-0}" = 1 ]; then
  timeout 140 python3 benchmarks/sweep.py --budget 120 --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
fi
timeout 110 python3 benchmarks/gpu.py --fast --reps 20 --budget 95 --variants dense,kron_auto,kron_v2 \
  --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
timeout 120 python3 benchmarks/gpu.py --no-layers --compile --compile-mode reduce-overhead \
  --variants kron_auto,dense --budget 70 --json "$OUT/gpu-graphed.json" 2>&1 | tee "$OUT/gpu-graphed.log"
timeout 100 python3 benchmarks/gpu.py --no-layers --compile --variants kron_auto,dense --budget 55 \
  --json "$OUT/gpu-compiled.json" 2>&1 | tee "$OUT/gpu-compiled.log"

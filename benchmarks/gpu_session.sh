#!/usr/bin/env bash
# Every GPU check of issue 5 in one device call, most valuable first, each step under its own time limit
# (≤ 9 minutes in all; run with timeout_s ≈ 560). Results go to $OUT (8 files, the most a call returns);
# docs/gpu-notes.md says what to read in them.
#   1. CUDA kernel tests (values and all gradients against float64, CUDA-graph decode)      ≤ 100 s
#   2. benchmarks/sweep.py: every block-size candidate, per-kernel profile of fwd+bwd       ≤ 140 s
#   3. benchmarks/gpu.py --fast: the whole model (incl. kron_v3), then layer paths vs dense ≤ 170 s
#   4. benchmarks/gpu.py --compile: training step under torch.compile (kron_v3, dense, then  ≤ 120 s
#      kron_auto if time is left: each variant is a cold inductor build)
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kronypt-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
timeout 100 python3 -m pytest tests/test_kernels.py -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log"
timeout 140 python3 benchmarks/sweep.py --budget 120 --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
timeout 170 python3 benchmarks/gpu.py --fast --reps 20 --budget 145 --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
timeout 120 python3 benchmarks/gpu.py --no-layers --compile --variants kron_v3,dense,kron_auto --budget 80 \
  --json "$OUT/gpu-compiled.json" 2>&1 | tee "$OUT/gpu-compiled.log"

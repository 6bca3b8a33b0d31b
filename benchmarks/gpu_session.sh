#!/usr/bin/env bash
# Every GPU check of issue 5 in one device call, most valuable first, each step under its own time limit
# (≈ 8.5 minutes in all on an H100; run with timeout_s ≈ 560). Results go to $OUT; docs/gpu-notes.md says
# what to read in them.
#   1. CUDA kernel tests (values and all gradients against float64, CUDA-graph decode)      ≤ 100 s
#   2. benchmarks/sweep.py: every block-size candidate, per-kernel profile of fwd+bwd       ≤ 130 s
#   3. benchmarks/gpu.py --fast: layer paths vs dense, the whole model (incl. kron_v3)      ≤ 200 s
#   4. benchmarks/gpu.py --compile: the training step under torch.compile, whole model      ≤ 120 s
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kronypt-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
timeout 100 python3 -m pytest tests/test_kernels.py -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log"
timeout 130 python3 benchmarks/sweep.py --budget 110 --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log"
timeout 200 python3 benchmarks/gpu.py --fast --reps 20 --budget 170 --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
timeout 120 python3 benchmarks/gpu.py --no-layers --compile --variants dense,kron_auto,kron_v3 --budget 100 \
  --json "$OUT/gpu-compiled.json" 2>&1 | tee "$OUT/gpu-compiled.log"

#!/usr/bin/env bash
# Every GPU check in one device call (≈ 5 minutes on an H100, as run for docs/gpu-notes.md): CUDA kernel
# tests, the fused-kernel benchmark, the layer benchmark on CUDA (bf16 and fp32) and training throughput.
# Results go to $OUT.
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kronypt-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
timeout 120 python3 -m pytest tests/test_kernels.py -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log"
timeout 230 python3 benchmarks/gpu.py --fast --reps 20 --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
timeout 90 python3 benchmarks/layer.py --quick --device cuda --dtype bfloat16,float32 --tokens 1,8192 \
  --json "$OUT/layer-gpu.json" 2>&1 | tee "$OUT/layer-gpu.log"
timeout 90 python3 benchmarks/train.py --device cuda --json "$OUT/train-gpu.json" 2>&1 | tee "$OUT/train-gpu.log"

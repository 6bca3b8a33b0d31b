#!/usr/bin/env bash
# Every GPU check of the fused kernels in one device call, most valuable first, each step under its own
# time limit: ~330 s on an H100 (timeout_s = 480); `SWEEP=1` adds the block-size sweep (<= 140 s more:
# timeout_s = 600) and runs the benchmarks after it with the sweep's winners (tuned.json, a kernel-configs
# file: `kronypt.kernels.overrides`). Results go to $OUT, 8 files at most: card.txt, cuda-tests.log,
# benchmarks.log (every benchmark's output), gpu.json, gpu-graphed.json, gpu-compiled.json and, with
# SWEEP=1, sweep.json and tuned.json. docs/gpu-notes.md says how to read them.
#   1. CUDA kernel tests (values and all gradients against float64, CUDA-graph decode,            <= 130 s
#      compiled training under CUDA graphs; `kronypt bench` on CUDA)
#   (SWEEP=1: benchmarks/sweep.py, every block-size candidate and a per-kernel profile;           <= 140 s
#    the winners by 5 % go to tuned.json, which steps 2-4 then use)
#   2. benchmarks/gpu.py --fast: the whole model (dense, kron_auto, kron_fused), then the layer     <= 110 s
#      paths against dense
#   3. the training step under torch.compile with CUDA graphs (mode reduce-overhead)             <= 120 s
#   4. the training step under plain torch.compile (inductor, no CUDA graphs)                    <= 100 s
#   (each compiled variant is a cold inductor build, ~35 s)
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kronypt-gpu}
mkdir -p "$OUT"
LOG="$OUT/benchmarks.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
timeout 130 python3 -m pytest tests/test_kernels.py tests/test_bench_cli.py -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log"
if [ "${SWEEP:-0}" = 1 ]; then
  timeout 140 python3 benchmarks/sweep.py --budget 120 --json "$OUT/sweep.json" \
    --write-configs "$OUT/tuned.json" 2>&1 | tee -a "$LOG"
  # the benchmarks below run with the sweep's winners (recorded in their JSON's environment)
  [ -s "$OUT/tuned.json" ] && export KRONYPT_KERNEL_CONFIGS="$OUT/tuned.json"
fi
timeout 110 python3 benchmarks/gpu.py --fast --reps 20 --budget 95 --variants dense,kron_auto,kron_fused \
  --json "$OUT/gpu.json" 2>&1 | tee -a "$LOG"
timeout 120 python3 benchmarks/gpu.py --no-layers --compile --compile-mode reduce-overhead \
  --variants kron_auto,dense --budget 70 --json "$OUT/gpu-graphed.json" 2>&1 | tee -a "$LOG"
timeout 100 python3 benchmarks/gpu.py --no-layers --compile --variants kron_auto,dense --budget 55 \
  --json "$OUT/gpu-compiled.json" 2>&1 | tee -a "$LOG"

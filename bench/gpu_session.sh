#!/usr/bin/env bash
# Every GPU figure of the performance benchmarks in one run (a lent GPU is held for minutes, not hours).
# Logs and the JSON lines go to $OUT (or bench_out/). Usage: bash bench/gpu_session.sh
set -uo pipefail
out=${OUT:-bench_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/device.txt"
# training: eager ours and transformers, then ours under torch.compile with CUDA graphs
timeout 330 python bench/train_step.py --device cuda --compile --compile-mode reduce-overhead 2>&1 \
  | grep -v Warning | tee "$out/train_step.log"
# probing: fp32 (exact), then bf16 at a larger batch, and at 100 regions an image
timeout 60 python bench/probe.py --device cuda 2>&1 | tee "$out/probe_fp32.log"
timeout 60 python bench/probe.py --device cuda --precision bf16 --batch-size 512 2>&1 | tee "$out/probe_bf16.log"
timeout 60 python bench/probe.py --device cuda --precision bf16 --batch-size 256 --regions 100 2>&1 \
  | tee "$out/probe_bf16_r100.log"

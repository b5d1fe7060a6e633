#!/usr/bin/env bash
# The CPU benchmark set behind docs/results/speed.md (reference-tiny, 2 threads); run it on a
# quiet machine (nothing else on the cores), then `uv run python tools/bench/report.py`.
#   bash tools/bench/run_cpu_suite.sh            # ~8 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
RAW=docs/results/raw
B="uv run python tools/bench"
$B/train_step.py --config reference-tiny --batch 32 --precision bf16 --steps 8 --json $RAW/train_bf16.json
$B/train_step.py --config reference-tiny --batch 32 --precision bf16 --steps 8 --no-prediction-loss --json $RAW/train_bf16_mar.json
$B/train_step.py --config reference-tiny --batch 32 --precision fp32 --steps 4 --json $RAW/train_fp32.json
for s in 100 25 10; do
  for c in 1 3; do
    $B/sample.py --config reference-tiny --batch 16 --ar-steps 64 --denoise-steps $s --cfg $c \
      --precision bf16 --json $RAW/sample_bf16_s${s}_cfg${c}.json
  done
done
$B/sample.py --config reference-tiny --batch 16 --ar-steps 64 --denoise-steps 100 --cfg 1 \
  --precision fp32 --json $RAW/sample_fp32_s100_cfg1.json

#!/usr/bin/env bash
# The CPU benchmark set behind docs/results/speed.md (reference-tiny, 2 threads); run it on a
# quiet machine (nothing else on the cores), then `uv run python tools/bench/report.py`.
#   bash tools/bench/run_cpu_suite.sh            # ~20 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
RAW=docs/results/raw
B="uv run python tools/bench"
# Calibration: a plain fp32 forward/backward with glibc's default malloc; its EMA-target
# forward is the same ViT forward the reference timed at 167 ms (report.py: machine factor).
$B/train_step.py --config reference-tiny --batch 32 --precision fp32 --steps 4 --malloc system \
  --json $RAW/calibration_fp32_system_malloc.json
$B/train_step.py --config reference-tiny --batch 32 --precision bf16 --steps 8 --json $RAW/train_bf16.json
$B/train_step.py --config reference-tiny --batch 32 --precision bf16 --steps 8 --no-prediction-loss --json $RAW/train_bf16_mar.json
$B/train_step.py --config reference-tiny --batch 32 --precision fp32 --steps 4 --json $RAW/train_fp32.json
for s in 100 25 10; do
  for c in 1 3; do
    $B/sample.py --config reference-tiny --batch 16 --ar-steps 64 --denoise-steps $s --cfg $c \
      --precision bf16 --json $RAW/sample_bf16_s${s}_cfg${c}.json
  done
done
for s in 100 25; do
  for c in 1 3; do
    $B/sample.py --config reference-tiny --batch 16 --ar-steps 64 --denoise-steps $s --cfg $c \
      --precision bf16 --compile --json $RAW/sample_bf16_compiled_s${s}_cfg${c}.json
  done
done
for c in 1 3; do
  $B/sample.py --config reference-tiny --batch 16 --ar-steps 64 --denoise-steps 10 --cfg $c \
    --head flow --solver heun --precision bf16 --json $RAW/sample_bf16_flow_heun_s10_cfg${c}.json
done
$B/sample.py --config reference-tiny --batch 16 --ar-steps 64 --denoise-steps 100 --cfg 1 \
  --precision fp32 --json $RAW/sample_fp32_s100_cfg1.json
$B/profile_step.py --what train --precision bf16 --out $RAW/profile_train_bf16.txt
$B/profile_step.py --what sample --precision bf16 --denoise-steps 25 --out $RAW/profile_sample_bf16.txt

#!/usr/bin/env bash
# GPU readiness check (issue 18): every CUDA path of djepa in one short run (<= 8 min).
#   tools/gpu_check.sh [--out DIR] [--budget-s 480]   # on a CUDA machine, after `uv sync`
#   tools/gpu_check.sh --dry-run                      # the same checks on the CPU, toy sizes
# Writes DIR/gpu_check.json and DIR/gpu_check.md (DIR: --out, else $OUT/gpu_check, else
# runs/gpu_check/<time>); one "FAIL name: ..." line per failed check; exit 1 if any failed.
# Without CUDA (and without --dry-run) it says so in one line and exits 0.
# GPU_CHECK_PYTHON=/path/to/python skips `uv run` (the test suite uses its own interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
  exec "$GPU_CHECK_PYTHON" tools/gpu_check/run.py "$@"
fi
exec uv run python tools/gpu_check/run.py "$@"

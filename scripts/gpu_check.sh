#!/usr/bin/env bash
# The prepared GPU check (issue 33): a thin wrapper around scripts/gpu_check.py, which
# holds the ranked steps, their timeouts and the per-step output files. How to carry the
# onnxruntime-gpu wheel and the real cells to a lent machine, and the steps' order and
# timeouts: docs/performance.md, "The GPU check".
#
#   device:  bash scripts/gpu_check.sh --cells .gpucells --wheel-sha256 SHA   (OUT is set)
#   here:    PY=python3 bash scripts/gpu_check.sh --dry-run --out /tmp/gpu-dry
set -euo pipefail
PY=${PY:-python3}
exec "$PY" "$(dirname "$0")/gpu_check.py" run "$@"

#!/usr/bin/env bash
# Cross-fitted calibration on any out-of-fold predictions file (docs/calibration.md):
# each listed fold in turn is the test group, the other listed folds calibrate (its
# patients never calibrate what they test). Prints, per test fold: the fitted temperature,
# the test patients' ECE / Brier / log-loss before and after, and what
# --target-sensitivity 0.95 (chosen on the calibration folds) gives on the test patients.
#
#   scripts/calibration_crossfit.sh OOF.csv|OOF_DIR "0 1 2" [OUT_DIR]
#
# OOF_DIR: a `cv run` output folder (its oof-fold-*.csv files are put together first).
# The model file only carries the spec (the logits are the file's; its graph never runs).
set -euo pipefail
cd "$(dirname "$0")/.."
OOF=$1
FOLDS=$2
OUT=${3:-/tmp/leukoedge-crossfit}
MODEL=${MODEL:-leukoedge/models/default.onnx}
LE=${LEUKOEDGE:-leukoedge}  # on PATH
mkdir -p "$OUT"
if [ -d "$OOF" ]; then
  files=("$OOF"/oof-fold-*.csv)
  { head -n 1 "${files[0]}"; for f in "${files[@]}"; do tail -n +2 "$f"; done; } > "$OUT/oof.csv"
  OOF="$OUT/oof.csv"
fi
run() { echo "+ $*" >&2; "$@"; }
echo "| test fold | calibration folds | T | ECE before | ECE after | Brier before | Brier after | log-loss before | log-loss after | sens95: sensitivity [95% CI] | specificity [95% CI] |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for k in $FOLDS; do
  cal=$(echo $FOLDS | tr ' ' '\n' | grep -v "^$k$" | paste -sd, -)
  run $LE calibrate "$MODEL" --from-predictions "$OOF" --folds "$cal" \
      --out "$OUT/t$k.onnx" --overwrite --json > "$OUT/t$k.json" 2>/dev/null
  run $LE calibrate "$MODEL" --from-predictions "$OOF" --folds "$cal" \
      --target-sensitivity 0.95 --out "$OUT/s$k.onnx" --overwrite --json > "$OUT/s$k.json" 2>/dev/null
  run $LE evaluate --from-predictions "$OOF" --folds "$k" --model "$OUT/t$k.onnx" \
      --json --resamples 0 > "$OUT/t$k-test.json" 2>/dev/null
  run $LE evaluate --from-predictions "$OOF" --folds "$k" --model "$OUT/s$k.onnx" \
      --json --resamples 2000 --seed 0 > "$OUT/s$k-test.json" 2>/dev/null
  jq -r --arg k "$k" --arg cal "$cal" --slurpfile t "$OUT/t$k.json" --slurpfile s "$OUT/s$k-test.json" '
    def r: (. * 10000 | round) / 10000;
    def ci(j; n): "\(j.intervals[n].estimate*1000|round/1000) [\(j.intervals[n].low*1000|round/1000), \(j.intervals[n].high*1000|round/1000)]";
    "| \($k) | \($cal) | \($t[0].temperature*1000|round/1000) | \(.calibration.uncalibrated.ece|r) | \(.calibration.ece|r) | \(.calibration.uncalibrated.brier|r) | \(.calibration.brier|r) | \(.calibration.uncalibrated.log_loss|r) | \(.calibration.log_loss|r) | \(ci($s[0]; "sensitivity_all")) | \(ci($s[0]; "specificity_all")) |"' \
    "$OUT/t$k-test.json"
done

#!/usr/bin/env bash
# The calibration experiment of docs/calibration.md, on the out-of-fold predictions of the
# real cells (docs/cv/full/gap-oof.csv: each cell's logit comes from the fold model that
# never saw its patient).
#
#   calibration patients: folds 0-2 of docs/cv/folds.csv; test patients: folds 3-4
#   (the split the issue suggested, fixed before any figure was seen), and then each fold
#   in turn as the test group with the other four as calibration (cross-fitting).
#
# MODEL only carries the spec (the logits are the file's); its graph is never run.
# Usage: scripts/calibration_experiment.sh [MODEL] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-leukoedge/models/default.onnx}
OUT=${2:-/tmp/leukoedge-calibration}
OOF=docs/cv/full/gap-oof.csv
LE=${LEUKOEDGE:-leukoedge}  # on PATH
mkdir -p "$OUT"

run() { echo "+ $*" >&2; "$@"; }

# 1. the temperature alone (threshold: best weighted F1) and the 0.95 operating point
run $LE calibrate "$MODEL" --from-predictions $OOF --folds 0,1,2 \
    --out "$OUT/f1.onnx" --overwrite --json > "$OUT/f1.json"
run $LE calibrate "$MODEL" --from-predictions $OOF --folds 0,1,2 \
    --target-sensitivity 0.95 --out "$OUT/sens95.onnx" --overwrite --json > "$OUT/sens95.json"
# 2. the test patients: raw logits (temperature 1, threshold 0.5), then calibrated
run $LE evaluate --from-predictions $OOF --folds 3,4 --json > "$OUT/test-raw.json"
run $LE evaluate --from-predictions $OOF --folds 3,4 --model "$OUT/f1.onnx" \
    --json > "$OUT/test-f1.json"
run $LE evaluate --from-predictions $OOF --folds 3,4 --model "$OUT/sens95.onnx" \
    --json > "$OUT/test-sens95.json"
run $LE report $OOF --folds 3,4 --model "$OUT/sens95.onnx" --images-root ../shared/data \
    --out "$OUT/report-test-sens95.html" --overwrite
# 3. cross-fitting: each fold the test group once
for k in 0 1 2 3 4; do
  cal=$(echo 0 1 2 3 4 | tr ' ' '\n' | grep -v "^$k$" | paste -sd, -)
  run $LE calibrate "$MODEL" --from-predictions $OOF --folds "$cal" \
      --out "$OUT/cf$k.onnx" --overwrite --json > "$OUT/cf$k.json"
  run $LE evaluate --from-predictions $OOF --folds $k --model "$OUT/cf$k.onnx" \
      --json --resamples 0 > "$OUT/cf$k-test.json"
done

# the figures, as docs/calibration.md shows them
f() { jq -r "$1" "$2"; }
echo
echo "temperature (folds 0-2): $(f '.temperature' "$OUT/f1.json")"
echo "| on the test patients (folds 3-4) | ECE | Brier | log-loss |"
echo "|---|---|---|---|"
for what in "temperature 1:.calibration.uncalibrated" "fitted temperature:.calibration"; do
  label=${what%%:*}; path=${what#*:}
  echo "| $label | $(f "$path.ece*10000|round/10000" "$OUT/test-f1.json") |" \
       "$(f "$path.brier*10000|round/10000" "$OUT/test-f1.json") |" \
       "$(f "$path.log_loss*10000|round/10000" "$OUT/test-f1.json") |"
done
echo
echo "| operating point | threshold P(ALL) | test sensitivity [95% CI] | width | test specificity [95% CI] | width | weighted F1 [95% CI] |"
echo "|---|---|---|---|---|---|---|"
for name in raw f1 sens95; do
  j="$OUT/test-$name.json"
  jq -r --arg n "$name" '
    def r: (. * 1000 | round) / 1000;
    def ci(k): "\(.intervals[k].estimate|r) [\(.intervals[k].low|r), \(.intervals[k].high|r)]";
    "| \($n) | \(.threshold*10000|round/10000) | \(ci("sensitivity_all")) | \(.intervals.sensitivity_all.width|r) | \(ci("specificity_all")) | \(.intervals.specificity_all.width|r) | \(ci("weighted_f1")) |"' "$j"
done
echo
echo "| test fold | calibration folds | temperature | ECE at T=1 | ECE calibrated |"
echo "|---|---|---|---|---|"
for k in 0 1 2 3 4; do
  echo "| $k | others | $(f '.temperature*1000|round/1000' "$OUT/cf$k.json") |" \
       "$(f '.calibration.uncalibrated.ece*10000|round/10000' "$OUT/cf$k-test.json") |" \
       "$(f '.calibration.ece*10000|round/10000' "$OUT/cf$k-test.json") |"
done

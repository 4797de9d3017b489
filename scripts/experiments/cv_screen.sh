#!/usr/bin/env bash
# ONE-OFF (scripts/experiments/): the queue of one recipe screen, kept as the record of how
# docs/accuracy.md's screen was run; not maintained, not tested.
# The recipe screen of docs/accuracy.md: every candidate on folds 0-2 of docs/cv/folds.csv
# at screening settings (64 px, 10 epochs), one after the other; rerun to resume.
# Results: cv-runs/screen-<recipe>/report.md (copied to docs/cv/ when a candidate is done).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${DATA:-../shared/data}"
for r in ${RECIPES:-gap greyworld baseline stain fixed}; do
  leukoedge cv run "$DATA/cnmc-real" "$DATA/cnmc-sample" --folds docs/cv/folds.csv \
    --recipe "$r" --screen --only 0,1,2 --out "cv-runs/screen-$r"
  mkdir -p docs/cv/screen
  cp "cv-runs/screen-$r/report.md" "docs/cv/screen/$r.md"
  cp "cv-runs/screen-$r/report.json" "docs/cv/screen/$r.json"
done

#!/usr/bin/env bash
# This session's CPU queue (docs/accuracy.md): the final model of the shipped recipe, the
# shipped recipe's cross-validation again (fold models for the drift and TTA work, and the
# reproduction check), then the baseline's full cross-validation. Rerun to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
L=.venv/bin/leukoedge
$L cv final "$DATA/cnmc-real" "$DATA/cnmc-sample" --recipe gap --out cv-runs/final-gap \
  --cv-report docs/cv/full/gap.json
$L cv run "$DATA/cnmc-real" "$DATA/cnmc-sample" --folds docs/cv/folds.csv --recipe gap \
  --out cv-runs/full-gap
$L cv run "$DATA/cnmc-real" "$DATA/cnmc-sample" --folds docs/cv/folds.csv --recipe baseline \
  --out cv-runs/full-baseline

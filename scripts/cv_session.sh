#!/usr/bin/env bash
# This session's CPU queue (docs/accuracy.md): the final model of the shipped recipe, the
# shipped recipe's cross-validation again (fold models for the drift and TTA work, and the
# reproduction check), then the baseline's full cross-validation. Rerun to resume.
# CODE=DIR runs the code of another checkout (e.g. a frozen worktree, so that edits in
# this one cannot break a run that takes hours); outputs still go to this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE="$PWD"
DATA="${DATA:-$HERE/../shared/data}"
CODE="${CODE:-$HERE}"
export PYTHONPATH="$CODE:$CODE/plugins${PYTHONPATH:+:$PYTHONPATH}"
L=(.venv/bin/leukoedge)  # not "python -m", which puts this checkout first on sys.path
[ -f cv-runs/final-gap/last.pt ] && grep -q "final model" cv-runs/final-gap/done 2>/dev/null || {
  "${L[@]}" cv final "$DATA/cnmc-real" "$DATA/cnmc-sample" --recipe gap --out cv-runs/final-gap \
    --cv-report docs/cv/full/gap.json
  echo "final model" > cv-runs/final-gap/done; }
for r in ${RECIPES:-gap baseline}; do
  "${L[@]}" cv run "$DATA/cnmc-real" "$DATA/cnmc-sample" --folds "$HERE/docs/cv/folds.csv" \
    --recipe "$r" --out "cv-runs/full-$r"
done

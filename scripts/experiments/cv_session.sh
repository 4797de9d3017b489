#!/usr/bin/env bash
# ONE-OFF (scripts/experiments/): the job queue of one working session, kept as the record of
# how docs/accuracy.md's runs were started; not maintained, not tested.
# This session's CPU queue (docs/accuracy.md), one job after the other; rerun to resume:
# 1. the final model of the shipped recipe (cv final, all 39 patients);
# 2. the shipped recipe's 5-fold cross-validation again (fold models for the drift and TTA
#    work; the reproduction check against docs/cv/full/gap.json);
# 3. ResNet50 from random weights on all 5 folds at screening settings (64 px, 10 epochs);
# 4. the baseline's full 5-fold cross-validation (128 px, inner early stopping: hours).
# CODE=DIR runs the code of another checkout (e.g. a frozen worktree, so that edits in
# this one cannot break a run that takes hours); outputs still go to this checkout.
# WAIT=PID waits for that process to end first.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE="$PWD"
DATA="${DATA:-$HERE/../shared/data}"
CODE="${CODE:-$HERE}"
export PYTHONPATH="$CODE:$CODE/plugins${PYTHONPATH:+:$PYTHONPATH}"
L=("${LEUKOEDGE:-leukoedge}")  # on PATH; not "python -m", which puts this checkout first on sys.path
CELLS=("$DATA/cnmc-real" "$DATA/cnmc-sample")
FOLDS="$HERE/docs/cv/folds.csv"
if [ -n "${WAIT:-}" ]; then
  while kill -0 "$WAIT" 2>/dev/null; do sleep 10; done
fi
if [ ! -f cv-runs/final-gap/done ]; then
  "${L[@]}" cv final "${CELLS[@]}" --recipe gap --out cv-runs/final-gap \
    --cv-report docs/cv/full/gap.json
  echo "final model" > cv-runs/final-gap/done
fi
"${L[@]}" cv run "${CELLS[@]}" --folds "$FOLDS" --recipe gap --out cv-runs/full-gap
"${L[@]}" cv run "${CELLS[@]}" --folds "$FOLDS" --recipe resnet50-random --screen \
  --out cv-runs/screen5-resnet50-random
"${L[@]}" cv run "${CELLS[@]}" --folds "$FOLDS" --recipe baseline --out cv-runs/full-baseline

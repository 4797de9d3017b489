"""The best weighted F1 any model can reach on ``leukoedge.synth`` cells: the trait ceiling.

Usage::

    python scripts/trait_ceiling.py --patients 3000 --cells-per-patient 10
    python scripts/trait_ceiling.py --traits-from bench/data/traits.csv --val-fold 2

A synthetic cell's label reaches its pixels only through its five traits (the patient's
stain, halo and the rendering noise are drawn independently of the class), so no model
that sees pixels can beat the best classifier that sees the true traits. This script
samples traits exactly as the generator does (no images are drawn, so it is fast), fits

* logistic regression on the standardised traits (Bayes-optimal for the linear
  Gaussian part of the trait model), and
* a gradient-boosted tree ensemble (catches any non-linearity: clipping, the Poisson
  nucleoli count),

on one population of patients, and scores both on a second, independent population
(other seeds, other patients): per-cell accuracy and weighted F1, the challenge metric.
It also drops each trait in turn, to show what a model that cannot see that trait loses.

With ``--traits-from traits.csv --val-fold N`` it does the same on the folds of an
existing data set (train on the other folds, score fold N), i.e. the ceiling for that
exact validation set; add ``--test-traits other/traits.csv`` to score another data set
(a test set of new patients) with the same fitted classifiers. Needs scikit-learn
(measurement only, not a leukoedge dependency).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np

from leukoedge.synth import (
    TRAIT_NAMES,
    SynthConfig,
    _cell_rng,
    make_patients,
    sample_traits,
)


def population(seed: int, patients: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Traits and labels of ``patients x cells`` cells, drawn as ``generate`` draws them."""
    cfg = SynthConfig(patients=patients, cells_per_patient=cells, seed=seed)
    x, y = [], []
    for i, patient in enumerate(make_patients(cfg)):
        for c in range(cells):
            t = asdict(sample_traits(_cell_rng(seed, i, c), patient))
            x.append([float(t[n]) for n in TRAIT_NAMES])
            y.append(patient.label)
    return np.asarray(x), np.asarray(y)


def read_traits(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Traits, labels and folds of a ``traits.csv`` written by ``leukoedge synth``."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    x = np.asarray([[float(r[n]) for n in TRAIT_NAMES] for r in rows])
    y = np.asarray([int(r["label"]) for r in rows])
    return x, y, np.asarray([int(r["fold"]) for r in rows])


def split_fold(path: Path, val_fold: int) -> tuple[np.ndarray, ...]:
    x, y, fold = read_traits(path)
    val = fold == val_fold
    if not val.any() or val.all():
        raise SystemExit(f"{path}: fold {val_fold} is empty or holds every cell")
    return x[~val], y[~val], x[val], y[val]


def scores(model: object, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
           yte: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    model.fit(xtr, ytr)  # type: ignore[attr-defined]
    p = model.predict(xte)  # type: ignore[attr-defined]
    return float(accuracy_score(yte, p)), float(f1_score(yte, p, average="weighted"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=3000, help="patients per population")
    ap.add_argument("--cells-per-patient", type=int, default=10)
    ap.add_argument("--seeds", default="101,202", help="fit seed, score seed")
    ap.add_argument("--traits-from", type=Path, help="traits.csv of a generated data set")
    ap.add_argument("--val-fold", type=int, default=2, help="with --traits-from")
    ap.add_argument("--test-traits", type=Path,
                    help="with --traits-from: score this traits.csv instead of the fold")
    args = ap.parse_args()

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if args.traits_from:
        xtr, ytr, xte, yte = split_fold(args.traits_from, args.val_fold)
        where = f"{args.traits_from}, fold {args.val_fold} held out"
        if args.test_traits:
            xte, yte, _ = read_traits(args.test_traits)
            where = (f"fit on {args.traits_from} without fold {args.val_fold}, "
                     f"scored on {args.test_traits}")
    else:
        s_fit, s_score = (int(s) for s in args.seeds.split(","))
        xtr, ytr = population(s_fit, args.patients, args.cells_per_patient)
        xte, yte = population(s_score, args.patients, args.cells_per_patient)
        where = (f"fit on seed {s_fit}, scored on seed {s_score}: "
                 f"{args.patients} patients x {args.cells_per_patient} cells each")
    print(f"{where}; {len(ytr)} cells to fit, {len(yte)} to score "
          f"(ALL share {yte.mean():.3f})")

    def lr() -> object:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    print(f"{'classifier':<42} {'accuracy':>9} {'weighted F1':>12}")
    for name, model in (("logistic regression, all traits", lr()),
                        ("gradient boosting, all traits",
                         HistGradientBoostingClassifier(max_iter=300, random_state=0))):
        acc, f1 = scores(model, xtr, ytr, xte, yte)
        print(f"{name:<42} {acc:>9.4f} {f1:>12.4f}")
    for k, name in enumerate(TRAIT_NAMES):
        keep = [j for j in range(len(TRAIT_NAMES)) if j != k]
        acc, f1 = scores(lr(), xtr[:, keep], ytr, xte[:, keep], yte)
        print(f"{'logistic regression without ' + name:<42} {acc:>9.4f} {f1:>12.4f}")
    se = np.sqrt(0.95 * 0.05 / len(yte))
    print(f"(binomial standard error of a score near 0.95 on {len(yte)} cells: {se:.4f}; "
          "cells of one patient are correlated, so the real error is larger)")


if __name__ == "__main__":
    main()

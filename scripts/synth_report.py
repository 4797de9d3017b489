"""Measure a synthetic data set against the real C-NMC sample and its known difficulty.

Usage::

    python scripts/synth_report.py --patients 72 --cells-per-patient 12 --size 128 --seeds 0,1,2
    python scripts/synth_report.py --patients 12 --cells-per-patient 10 --size 450 --seeds 7

For every seed it generates a data set into a temporary folder and prints

* realism: foreground fraction, mean and std of RGB over foreground pixels,
  synthetic min..max against the real cells' min..max (only meaningful at 450 px);
* oracle: logistic regression on the generator's trait values (traits.csv);
* colour-only: the same classifier on the mean RGB of foreground pixels;
* leak: 1-nearest-neighbour on 16x16 downsampled pixels under an image-level
  random 3-fold split minus the same under the patient split;

all accuracies pooled over the data set's patient folds (train on two folds,
predict the third).  Needs scikit-learn (for the logistic regression only).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

REAL_DIR = ROOT.parent / "shared" / "data" / "cnmc-sample"
STATS = ("fg_fraction", "mean_R", "mean_G", "mean_B", "std_R", "std_G", "std_B")


def cell_stats(rgb: np.ndarray) -> np.ndarray:
    mask = rgb.sum(axis=2) > 0
    fg = rgb[mask].astype(np.float64)
    return np.concatenate([[mask.mean()], fg.mean(axis=0), fg.std(axis=0)])


def fold_cv(x: np.ndarray, y: np.ndarray, folds: np.ndarray, fit_predict) -> float:
    correct = 0
    for f in np.unique(folds):
        test = folds == f
        correct += int((fit_predict(x[~test], y[~test], x[test]) == y[test]).sum())
    return correct / len(y)


def logreg(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        .fit(xtr, ytr)
        .predict(xte)
    )


def nearest_neighbour(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray) -> np.ndarray:
    d = (xte**2).sum(1)[:, None] - 2.0 * xte @ xtr.T + (xtr**2).sum(1)[None, :]
    return ytr[np.argmin(d, axis=1)]


def main() -> None:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from leukoedge.synth import TRAIT_NAMES, SynthConfig, generate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=72)
    ap.add_argument("--cells-per-patient", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()

    real = None
    if REAL_DIR.is_dir():
        files = sorted(REAL_DIR.glob("fold_*/*/*.bmp"))
        real = np.array([cell_stats(np.asarray(Image.open(p).convert("RGB"))) for p in files])
        print(f"real cells: {len(files)} from {REAL_DIR}")

    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = SynthConfig(
            patients=args.patients,
            cells_per_patient=args.cells_per_patient,
            seed=seed,
            size=args.size,
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "synth"
            generate(out, cfg)
            with open(out / "traits.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            images = [np.asarray(Image.open(out / r["path"])) for r in rows]
        y = np.array([int(r["label"]) for r in rows])
        folds = np.array([int(r["fold"]) for r in rows])
        traits = np.array([[float(r[n]) for n in TRAIT_NAMES] for r in rows])
        stats = np.array([cell_stats(a) for a in images])
        pix = np.array(
            [
                np.asarray(
                    Image.fromarray(a).resize((16, 16), Image.Resampling.BILINEAR), float
                ).ravel()
                / 255.0
                for a in images
            ]
        )
        oracle = fold_cv(traits, y, folds, logreg)
        colour = fold_cv(stats[:, 1:4], y, folds, logreg)
        nn_patient = fold_cv(pix, y, folds, nearest_neighbour)
        random_folds = np.random.default_rng(0).permutation(len(y)) % 3
        nn_image = fold_cv(pix, y, random_folds, nearest_neighbour)
        print(
            f"seed {seed}: {len(y)} cells, ALL fraction {y.mean():.3f}, "
            f"majority {max(y.mean(), 1 - y.mean()):.3f} | "
            f"oracle {oracle:.3f} | colour-only {colour:.3f} | "
            f"1-NN 16x16 patient split {nn_patient:.3f}, image split {nn_image:.3f}, "
            f"leak {nn_image - nn_patient:+.3f}"
        )
        if real is not None:
            for j, name in enumerate(STATS):
                inside = np.mean(
                    (stats[:, j] >= real[:, j].min()) & (stats[:, j] <= real[:, j].max())
                )
                print(
                    f"    {name:12s} real {real[:, j].min():8.3f} .. {real[:, j].max():8.3f}"
                    f" (mean {real[:, j].mean():7.3f}) | synth {stats[:, j].min():8.3f} .. "
                    f"{stats[:, j].max():8.3f} (mean {stats[:, j].mean():7.3f})"
                    f" | inside {inside:.3f}"
                )


if __name__ == "__main__":
    main()
